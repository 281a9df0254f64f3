import numpy as np
import pytest

from fedloom.tasks.partition import (
    PartitionSpec,
    dirichlet,
    iid,
    label_counts,
    parse_partition,
    partition_indices,
    shards,
)

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 100 per class


def test_parse_valid_specs():
    assert parse_partition("iid") == PartitionSpec("iid")
    assert parse_partition("dirichlet:0.5") == PartitionSpec("dirichlet", 0.5)
    assert parse_partition("shards:2") == PartitionSpec("shards", 2)
    assert str(parse_partition("Shards:2")) == "shards:2"


@pytest.mark.parametrize("bad", ["", "iid:3", "dirichlet", "dirichlet:0", "dirichlet:-1", "shards:0", "shards:x", "zipf:2"])
def test_parse_rejects_with_valid_choices(bad):
    with pytest.raises(ValueError, match="valid: iid, dirichlet:ALPHA"):
        parse_partition(bad)


def test_iid_is_a_disjoint_cover_of_near_equal_parts():
    parts = iid(103, 10, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(103))


def test_shards_gives_each_client_two_labels():
    # 10 clients x 2 shards of 50 examples; each shard holds a single label.
    parts = shards(LABELS, 10, 2, np.random.default_rng(1))
    assert all(len(p) == 100 for p in parts)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_is_balanced():
    skewed = dirichlet(LABELS, 10, 0.1, np.random.default_rng(2))
    balanced = dirichlet(LABELS, 10, 1000.0, np.random.default_rng(2))
    assert np.array_equal(np.sort(np.concatenate(skewed)), np.arange(1000))

    def top_share(parts):  # mean share of a client's most common label
        return np.mean([np.bincount(LABELS[p]).max() / len(p) for p in parts])

    assert top_share(skewed) > 0.5
    assert top_share(balanced) < 0.2


def test_partitions_are_deterministic_from_the_seed():
    spec = parse_partition("dirichlet:0.5")
    a = partition_indices(spec, LABELS, 5, seed=7)
    b = partition_indices(spec, LABELS, 5, seed=7)
    c = partition_indices(spec, LABELS, 5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_too_many_clients_is_a_clear_error():
    with pytest.raises(ValueError, match="only 1000 training examples"):
        partition_indices(PartitionSpec("iid"), LABELS, 1001, seed=0)
    with pytest.raises(ValueError, match="needs 2000 shards"):
        shards(LABELS, 1000, 2, np.random.default_rng(0))


def test_label_counts():
    labels = np.array([0, 0, 1, 2, 2, 2])
    assert label_counts(labels, [np.array([0, 2]), np.array([1, 3, 4, 5])], 3) == [[1, 1, 0], [1, 0, 3]]
