import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.tasks import mnist as mnist_mod
from fedloom.tasks.base import DatasetNotFoundError, DataSplit
from fedloom.tasks.digits import DigitsTask
from fedloom.tasks.mnist import MnistCNN, MnistTask, load_mnist_arrays, read_idx
from fedloom.tasks.registry import client_split, client_test_split, load_task_data
from fedloom.tasks.training import evaluate, make_optimizer, proximal_term, train_local


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    dims = array.shape
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_mnist_cnn_has_mcmahans_parameter_count():
    model = MnistCNN()
    assert sum(p.numel() for p in model.parameters()) == 1_663_370
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_read_idx_plain_and_gzipped(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", images, compress=False)
    write_idx(tmp_path / "b.gz", images, compress=True)
    assert np.array_equal(read_idx(tmp_path / "a"), images)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), images)


def test_mnist_loads_torchvision_raw_idx_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (5, 28, 28)), "y_train": np.arange(5),
        "x_test": rng.integers(0, 256, (2, 28, 28)), "y_test": np.array([3, 4]),
    }
    for key, stem in mnist_mod.IDX_FILES.items():
        write_idx(raw / (stem + ".gz"), arrays[key], compress=True)
    data = MnistTask().load(tmp_path, "mnist")
    assert data.train.x.shape == (5, 1, 28, 28) and data.train.x.dtype == np.float32
    assert data.test.y.tolist() == [3, 4]
    expected = (arrays["x_test"][1, 0, 0] / 255.0 - mnist_mod.MEAN) / mnist_mod.STD
    assert data.test.x[1, 0, 0, 0] == pytest.approx(expected, rel=1e-6)


def test_missing_mnist_names_the_paths_and_does_not_fall_back(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(DatasetNotFoundError) as err:
        load_mnist_arrays(tmp_path)
    message = str(err.value)
    assert f"put mnist.npz in {tmp_path}" in message
    assert str(tmp_path / "MNIST" / "raw") in message and "\n" not in message


def test_real_mnist_npz(shared_data):
    arr = load_mnist_arrays(shared_data)
    assert arr["x_train"].shape == (60000, 28, 28) and arr["x_test"].shape == (10000, 28, 28)
    assert np.bincount(arr["y_test"]).tolist()[:2] == [980, 1135]


def test_digits_split_is_stratified_and_fixed():
    data = load_task_data("digits", "unused", "digits")
    assert len(data.train) == 1437 and len(data.test) == 360
    assert data.train.x.shape[1] == 64 and data.num_classes == 10


def test_client_splits_are_cached_per_process_and_cover_the_test_set():
    a = client_split("digits", "x", "digits", "iid", 4, 0, 1)
    assert a is client_split("digits", "x", "digits", "iid", 4, 0, 1)
    sizes = [len(client_test_split("digits", "x", "digits", 4, i)) for i in range(4)]
    assert sum(sizes) == 360
    with pytest.raises(ValueError, match="partition-id 4 outside"):
        client_split("digits", "x", "digits", "iid", 4, 0, 4)


def test_local_training_lowers_the_loss_on_digits():
    task = DigitsTask()
    data = load_task_data("digits", "unused", "digits")
    torch.manual_seed(0)
    model = task.build_model(data)
    before = evaluate(model, task, data.test)
    train_local(model, task, data.train, epochs=2, batch_size=32, lr=0.05, seed=1)
    after = evaluate(model, task, data.test)
    assert after["loss"] < before["loss"] * 0.5
    assert after["accuracy"] > 0.9


def test_adam_step_is_lr_times_the_gradient_sign():
    # Adam's first step from zero moments is lr * g / (|g| + eps) = lr * sign(g).
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_optimizer([param], "adam", lr=0.1, momentum=0.9)
    param.grad = torch.tensor([3.0, -0.5])
    opt.step()
    assert param.detach().tolist() == pytest.approx([0.9, -1.9])
    assert isinstance(make_optimizer([param], "sgd", lr=0.1, momentum=0.5), torch.optim.SGD)
    with pytest.raises(ValueError, match="invalid optimizer 'lbfgs'; valid: sgd, adam"):
        make_optimizer([param], "lbfgs", lr=0.1, momentum=0.0)


def test_local_training_with_adam_lowers_the_loss_on_digits():
    task = DigitsTask()
    data = load_task_data("digits", "unused", "digits")
    torch.manual_seed(0)
    model = task.build_model(data)
    before = evaluate(model, task, data.test)
    train_local(
        model, task, data.train, epochs=2, batch_size=32, lr=0.003, seed=1, optimizer="adam"
    )
    after = evaluate(model, task, data.test)
    assert after["loss"] < before["loss"] * 0.5


def test_proximal_term_by_hand():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    # ||(1,2) - (0,4)||^2 = 1 + 4 = 5
    assert float(proximal_term(model, [torch.tensor([[0.0, 4.0]])]).detach()) == pytest.approx(5.0)


def test_fedprox_term_pulls_towards_the_global_model():
    task = DigitsTask()
    data = load_task_data("digits", "unused", "digits")
    split = DataSplit(data.train.x[:200], data.train.y[:200])
    drift = []
    for mu in (0.0, 10.0):
        torch.manual_seed(0)
        model = task.build_model(data)
        start = [p.detach().clone() for p in model.parameters()]
        train_local(model, task, split, epochs=3, batch_size=16, lr=0.05, proximal_mu=mu, seed=0)
        drift.append(float(proximal_term(model, start).detach()))
    assert drift[1] < drift[0] * 0.7


def test_local_training_is_reproducible_whatever_the_global_rng_did_before():
    # PointNet's head has dropout, which draws from torch's global RNG; a client's
    # round must not depend on what its Ray actor ran earlier, nor change that RNG.
    from fedloom.tasks.pointcloud import PointCloudTask
    from fedloom.tasks.pointnet import PointNet

    rng = np.random.default_rng(0)
    split = DataSplit(rng.normal(size=(24, 32, 3)).astype(np.float32), rng.integers(0, 3, 24))
    task = PointCloudTask(num_points=32, transforms="none", width=0.125)

    def trained(global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = PointNet(3, transforms="none", width=0.125)
        torch.manual_seed(global_seed)  # whatever ran before in this process
        before = torch.get_rng_state()
        train_local(model, task, split, epochs=1, batch_size=8, lr=0.01, seed=5)
        assert torch.equal(torch.get_rng_state(), before)
        return [p.detach().clone() for p in model.parameters()]

    first, second = trained(1), trained(2)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    torch.manual_seed(0)
    untrained = [p.detach() for p in PointNet(3, transforms="none", width=0.125).parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, untrained, strict=True))  # it did train


def test_epoch_orders_whole_and_fractional():
    from fedloom.tasks.training import epoch_orders

    plain = torch.Generator().manual_seed(3)
    expected = [torch.randperm(10, generator=plain) for _ in range(2)]
    whole = list(epoch_orders(10, 2, torch.Generator().manual_seed(3)))
    assert all(torch.equal(a, b) for a, b in zip(whole, expected))  # as range(epochs) drew them
    parts = list(epoch_orders(10, 2.25, torch.Generator().manual_seed(3)))
    assert [len(p) for p in parts] == [10, 10, 3] and torch.equal(parts[0], expected[0])
    half = list(epoch_orders(7, 0.5, torch.Generator().manual_seed(0)))
    assert [len(p) for p in half] == [4] and len(set(half[0].tolist())) == 4
    with pytest.raises(ValueError, match="invalid epochs=0; valid: > 0"):
        list(epoch_orders(7, 0, torch.Generator()))


def test_half_an_epoch_trains_on_half_the_examples():
    task = DigitsTask()  # its own instance: the registered one is left alone
    data = load_task_data("digits", "", "digits")
    seen = []
    task.augment = lambda x, generator: seen.append(len(x)) or x
    train_local(task.build_model(data), task, data.train.subset(np.arange(100)), epochs=0.5,
                batch_size=16, lr=0.05, seed=1)
    assert sum(seen) == 50 and len(seen) == 4  # batches of 16, 16, 16, 2
