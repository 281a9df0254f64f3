"""Federated AUC and mean class accuracy: from the clients' summed counts, equal to
the metric on the whole test set, where the mean of per-client values is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedloom.client.app import evaluation_metrics
from fedloom.protocol.keys import STATISTIC_PREFIX
from fedloom.protocol.records import remove_statistics
from fedloom.strategies.instrumented import InstrumentedStrategy
from fedloom.tasks.base import TaskOptions
from fedloom.tasks.medmnist import MedMnistTask, one_vs_rest_log_odds
from fedloom.tasks.metrics import MULTI_CLASS, MULTI_LABEL, class_counts, mean_class_accuracy, medmnist_auc, pooled_auc
from fedloom.tasks.pointcloud import PointCloudTask


def test_pooled_auc_is_medmnists_auc_and_leaves_out_undefined_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    scores = rng.random((300, 3))
    targets = [(y == k).astype(int) for k in range(3)]
    assert pooled_auc(targets, [scores[:, k] for k in range(3)]) == pytest.approx(
        medmnist_auc(y, scores, MULTI_CLASS), abs=1e-15
    )
    # A class absent from the targets has no AUC and is left out of the mean.
    assert pooled_auc([*targets, np.zeros(300, int)], [*(scores[:, k] for k in range(3)), scores[:, 0]]) == (
        pytest.approx(medmnist_auc(y, scores, MULTI_CLASS), abs=1e-15)
    )


def test_a_clients_auc_statistics_do_not_say_which_example_scored_what():
    task = MedMnistTask().configure(TaskOptions())
    logits = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 0.5]])
    stats = task.metric_statistics(logits, torch.tensor([1, 0, 1]))
    assert stats["auc_log_odds.1"].tolist() == pytest.approx([-1.0, 0.5, 2.0])
    assert stats["auc_positive.1"].tolist() == [0, 1, 1]
    assert stats["auc_log_odds.0"].tolist() == pytest.approx([-2.0, -0.5, 1.0])


def test_one_vs_rest_log_odds_stay_finite_where_softmax_saturates():
    logits = torch.tensor([[0.0, 1.0, -1.0], [40.0, 0.0, 0.0]])
    p = torch.softmax(logits.double(), dim=1)
    expected = torch.log(p / (1 - p))
    lo = one_vs_rest_log_odds(logits)
    assert torch.allclose(lo[0], expected[0], atol=1e-9)
    assert torch.isfinite(lo).all() and lo[1, 0] == pytest.approx(40 - np.log(2), abs=1e-9)


def test_class_counts():
    correct, total = class_counts(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 4)
    assert correct.tolist() == [1, 1, 1, 0] and total.tolist() == [1, 1, 2, 0]


def replies(task, logits, labels, shares):
    """Evaluation replies of clients holding ``shares`` of the test set."""
    out = []
    for node, part in enumerate(shares, start=1):
        metrics = evaluation_metrics(task, logits[part], labels[part], 0.0, statistics=True)
        instruction = Message(
            content=RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type="evaluate"
        )
        out.append(Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=instruction))
    return out


def sorted_logits(num, num_classes, rng, multi_label=False):
    """Labels sorted by class (as ModelNet's test set is), and logits that know them a bit."""
    if multi_label:
        labels = torch.from_numpy((rng.random((num, num_classes)) < 0.3).astype(np.float32))
        labels = labels[torch.argsort(labels[:, 0], stable=True)]
        return labels * 1.5 + torch.from_numpy(rng.normal(size=(num, num_classes)).astype(np.float32)), labels
    labels = torch.from_numpy(np.sort(rng.integers(0, num_classes, num)))
    logits = torch.from_numpy(rng.normal(size=(num, num_classes)).astype(np.float32))
    logits[torch.arange(num), labels] += 1.2
    return logits, labels


def aggregated(task, logits, labels, num_clients):
    shares = np.array_split(np.arange(len(labels)), num_clients)  # contiguous: one or two classes each
    strategy = InstrumentedStrategy(FedAvg(), finish_metrics=task.metrics_from_statistics)
    metrics = strategy.aggregate_evaluate(1, replies(task, logits, labels, shares))
    plain = replies(task, logits, labels, shares)
    remove_statistics(m.content for m in plain)  # lists of unequal length do not average
    naive = FedAvg().aggregate_evaluate(1, plain)
    assert not any(k.startswith(STATISTIC_PREFIX) for k in metrics)
    return metrics, naive


def test_federated_mean_class_accuracy_is_the_test_sets(task_identity):
    rng = np.random.default_rng(1)
    logits, labels = sorted_logits(908, 10, rng)
    task = PointCloudTask().configure(TaskOptions())
    central = task.metrics(logits, labels)
    metrics, naive = aggregated(task, logits, labels, 10)
    assert metrics["mean_class_accuracy"] == pytest.approx(central["mean_class_accuracy"], abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(central["accuracy"], abs=1e-12)
    # The mean of the clients' values, what Flower's averaging gives, is another number.
    assert abs(naive["mean_class_accuracy"] - central["mean_class_accuracy"]) > 0.02


@pytest.mark.parametrize(("num_classes", "task_type"), [(2, MULTI_CLASS), (9, MULTI_CLASS), (14, MULTI_LABEL)])
def test_federated_auc_is_the_test_sets(num_classes, task_type, task_identity):
    rng = np.random.default_rng(num_classes)
    # 601 examples: shares of 51 and 50, so the statistics' lists differ in length.
    logits, labels = sorted_logits(601, num_classes, rng, multi_label=task_type == MULTI_LABEL)
    task = MedMnistTask().configure(TaskOptions())
    scores = torch.sigmoid(logits) if task_type == MULTI_LABEL else torch.softmax(logits, dim=1)
    central = medmnist_auc(labels.numpy(), scores.numpy(), task_type)
    metrics, naive = aggregated(task, logits, labels, 12)
    assert metrics["auc"] == pytest.approx(central, abs=1e-9)
    if task_type != MULTI_LABEL:  # class-pure shares: their own AUC is undefined (NaN)
        assert np.isnan(naive["auc"])


def test_multilabel_accuracy_counts_a_score_at_the_threshold_as_positive():
    # MedMNIST's getACC: score < 0.5 -> 0, else 1. A zero logit (an untrained head) is 0.5.
    from fedloom.tasks.metrics import medmnist_accuracy

    y = np.array([[1, 0], [1, 1]], np.float32)
    assert medmnist_accuracy(y, np.full((2, 2), 0.5), MULTI_LABEL) == pytest.approx(0.75)
    assert mean_class_accuracy(np.array([0, 0]), np.array([0, 1]), 2) == pytest.approx(0.5)


def test_more_clients_than_test_examples_is_refused_under_federated_evaluation(capsys, tmp_path):
    from fedloom import run_sim
    from conftest import require_data

    data = require_data("medmnist/breastmnist.npz").parents[1]
    argv = ["--task", "medmnist", "--dataset", "breastmnist", "--data-dir", str(data), "--num-clients", "200",
            "--run-dir", str(tmp_path / "run")]
    assert run_sim.main([*argv, "--run-config", "fraction-evaluate=0.5"]) == 2
    err = capsys.readouterr().err
    assert "--num-clients 200 exceeds the 156 test examples" in err and err.count("\n") == 1


def test_partition_label_counts_of_multilabel_data_count_each_labels_positives():
    from fedloom.tasks.partition import label_counts

    y = np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]], np.float32)
    assert label_counts(y, [np.array([0, 1]), np.array([2, 3])], 3) == [[1, 2, 0], [0, 0, 1]]
