"""Point-cloud task: ModelNet loaders (npz, OFF, HDF5), geometry, PointNet, metrics, e2e."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.tasks.base import DataSplit, DatasetNotFoundError, TaskData
from fedloom.tasks.metrics import mean_class_accuracy, overall_accuracy
from fedloom.tasks.modelnet import (
    load_hdf5_release,
    load_modelnet,
    load_npz,
    load_off_tree,
    normalize_unit_sphere,
    read_off,
    sample_surface,
    subsample,
    y_up_to_z_up,
)
from fedloom.tasks.pointcloud import PointCloudTask, augment_batch, rotate_about_z
from fedloom.tasks.pointnet import PointNet
from fedloom.tasks.registry import get_task

from conftest import SHARED_DATA as DATA

SMALL = DATA / "modelnet10" / "modelnet10_1024_small.npz"

# A unit square in the z = 0 plane made of two triangles, plus a quad on x = 0.
SQUARE_OFF = """OFF
6 3 0
0 0 0
1 0 0
1 1 0
0 1 0
0 0 1
0 1 1
3 0 1 2
3 0 2 3
4 0 3 5 4
"""


def needs_small() -> None:
    if not SMALL.is_file() and os.environ.get("CI") != "true":
        pytest.skip(f"{SMALL} not present")


def small_data_dir(tmp_path: Path) -> Path:
    """A data dir whose modelnet10_1024.npz is the small file."""
    (tmp_path / "modelnet10_1024.npz").symlink_to(SMALL)
    return tmp_path


# -- geometry ------------------------------------------------------------------------------


def test_normalize_unit_sphere_centres_and_scales() -> None:
    cloud = np.array([[[1.0, 1, 1], [3, 1, 1], [2, 3, 1]]])  # centroid (2, 5/3, 1)
    out = normalize_unit_sphere(cloud)
    assert np.allclose(out.mean(axis=1), 0, atol=1e-6)
    assert np.linalg.norm(out, axis=2).max() == pytest.approx(1.0)
    # the farthest point is (2, 3, 1): distance 4/3 from the centroid
    assert out[0, 2] == pytest.approx(np.array([0, 1, 0]))


def test_read_off_triangulates_and_accepts_glued_header(tmp_path: Path) -> None:
    path = tmp_path / "m.off"
    path.write_text(SQUARE_OFF.replace("OFF\n6 3 0", "OFF6 3 0"))
    vertices, faces = read_off(path)
    assert vertices.shape == (6, 3) and faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 5], [0, 5, 4]]
    (tmp_path / "bad.off").write_text("PLY\n")
    with pytest.raises(ValueError, match="not an OFF file"):
        read_off(tmp_path / "bad.off")


def test_surface_sampling_is_area_weighted_and_on_the_surface() -> None:
    vertices = np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]], float)
    # a 2x1 rectangle in z = 0 (area 2) and a 1x1 square in x = 0 (area 1)
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 5], [0, 5, 4]])
    pts = sample_surface(vertices, faces, 30_000, np.random.default_rng(0))
    on_floor = np.isclose(pts[:, 2], 0)
    on_wall = np.isclose(pts[:, 0], 0)
    assert np.all(on_floor | on_wall)
    assert on_floor.mean() == pytest.approx(2 / 3, abs=0.01)
    floor = pts[on_floor & ~on_wall]
    assert floor[:, 0].mean() == pytest.approx(1.0, abs=0.02)  # uniform over [0, 2]
    assert floor[:, 1].mean() == pytest.approx(0.5, abs=0.02)


def test_off_tree_loader(tmp_path: Path) -> None:
    for cls in ("chair", "bed"):
        for split in ("train", "test"):
            (tmp_path / cls / split).mkdir(parents=True)
            (tmp_path / cls / split / f"{cls}_0001.off").write_text(SQUARE_OFF)
    clouds = load_off_tree(tmp_path, 64)
    assert clouds.class_names == ("bed", "chair")
    assert clouds.x_train.shape == (2, 64, 3) and clouds.y_test.tolist() == [0, 1]
    assert np.linalg.norm(clouds.x_train, axis=2).max() == pytest.approx(1.0)


def test_modelnet_from_meshes_writes_an_npz_cache(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / "ModelNet10" / "sofa" / split).mkdir(parents=True)
        (tmp_path / "ModelNet10" / "sofa" / split / "s.off").write_text(SQUARE_OFF)
    first = load_modelnet(tmp_path, "modelnet10", 32)
    assert (tmp_path / "modelnet10_32.npz").is_file()
    again = load_modelnet(tmp_path, "modelnet10", 32)
    assert np.allclose(first.x_train, again.x_train) and again.class_names == ("sofa",)


def test_hdf5_release_loader(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("ply_data_train0.h5", 3), ("ply_data_train1.h5", 2), ("ply_data_test0.h5", 2)):
        with h5py.File(folder / name, "w") as f:
            f["data"] = rng.normal(size=(n, 16, 3)).astype(np.float32)
            f["label"] = np.arange(n, dtype=np.uint8).reshape(n, 1)
    (folder / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    clouds = load_hdf5_release(folder, 8)
    assert clouds.x_train.shape == (5, 8, 3) and clouds.y_train.tolist() == [0, 1, 2, 0, 1]
    assert clouds.class_names == ("airplane", "bathtub", "bed")
    assert np.linalg.norm(clouds.x_test, axis=2).max(axis=1) == pytest.approx([1.0, 1.0])
    via_search = load_modelnet(tmp_path, "modelnet40", 8)
    assert via_search.x_test.shape == (2, 8, 3)


def test_y_up_becomes_z_up_by_a_rotation() -> None:
    assert y_up_to_z_up(np.array([1.0, 2.0, 3.0])).tolist() == [1.0, -3.0, 2.0]


def test_subsample_checks_the_point_count() -> None:
    clouds = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)
    assert subsample(clouds, 4).shape == (2, 4, 3)
    with pytest.raises(ValueError, match="num-points 11 exceeds the 10"):
        subsample(clouds, 11)


# -- npz and errors ----------------------------------------------------------------------------


def test_small_npz_loads_normalised() -> None:
    needs_small()
    clouds = load_npz(SMALL, 512)
    assert clouds.x_train.shape == (400, 512, 3) and clouds.x_test.shape == (150, 512, 3)
    assert len(clouds.class_names) == 10 and clouds.class_names[0] == "bathtub"
    assert np.allclose(clouds.x_train.mean(axis=1), 0, atol=1e-5)
    assert np.linalg.norm(clouds.x_train, axis=2).max(axis=1) == pytest.approx(np.ones(400))


def test_task_loads_through_the_search_order(tmp_path: Path) -> None:
    needs_small()
    data = PointCloudTask(num_points=256).load(small_data_dir(tmp_path), "modelnet10")
    assert data.train.x.shape == (400, 256, 3) and data.num_classes == 10


def test_missing_data_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(dataset: str, data_dir: Path) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr("fedloom.tasks.modelnet._download_meshes", offline)
    with pytest.raises(DatasetNotFoundError) as err:
        load_modelnet(tmp_path, "modelnet10", 1024)
    message = str(err.value)
    assert f"modelnet10_1024.npz in {tmp_path}" in message and "ModelNet10" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="modelnet10, modelnet40"):
        PointCloudTask().resolve_dataset("shapenet")


# -- augmentation ------------------------------------------------------------------------------


def test_rotation_about_z_keeps_height_and_norm() -> None:
    pts = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 2.0, -1.0]]])
    out = rotate_about_z(pts, torch.tensor([torch.pi / 2]))
    assert torch.allclose(out, torch.tensor([[[0.0, 1.0, 0.5], [-2.0, 0.0, -1.0]]]), atol=1e-6)


def test_augment_batch_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    pts = torch.from_numpy(normalize_unit_sphere(np.random.default_rng(0).normal(size=(8, 64, 3))))
    out = augment_batch(pts, gen, scale_range=(1.0, 1.0), jitter_sigma=0.0)
    assert torch.allclose(out[..., 2], pts[..., 2], atol=1e-6)  # z untouched by z-rotation
    assert torch.allclose(out.norm(dim=2), pts.norm(dim=2), atol=1e-5)
    jittered = augment_batch(pts, gen, scale_range=(1.0, 1.0), jitter_sigma=1.0, jitter_clip=0.05)
    radial = (jittered.norm(dim=2) - pts.norm(dim=2)).abs()
    assert radial.max() <= 0.05 * 3**0.5 + 1e-5
    still = augment_batch(pts, gen, max_angle=0.0, scale_range=(1.0, 1.0), jitter_sigma=0.0)
    assert torch.allclose(still, pts)


def test_rotation_range_comes_from_the_run_config() -> None:
    from fedloom.config import parse_run_config

    cfg = parse_run_config({"task": "pointcloud", "augment-rotation": 15})
    assert PointCloudTask().configure(cfg.task_options()).rotation == 15.0
    with pytest.raises(ValueError, match="augment-rotation=200.0; valid: 0 <= degrees <= 180"):
        parse_run_config({"augment-rotation": 200})
    with pytest.raises(ValueError, match="augment-rotation"):
        PointCloudTask(rotation=-1)


# -- model and metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("transforms", ["none", "input", "feature", "both"])
def test_pointnet_output_shape(transforms: str) -> None:
    model = PointNet(10, transforms=transforms, width=0.25)
    assert model(torch.randn(3, 128, 3)).shape == (3, 10)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_pointnet_is_opacus_compatible_and_rejects_bad_transforms() -> None:
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(PointNet(10, width=0.25), strict=False) == []
    with pytest.raises(ValueError, match="none, input, feature, both"):
        PointNet(10, transforms="spatial")


def test_batchnorm_pointnet_keeps_float_running_statistics() -> None:
    from fedloom.tasks.batchnorm import BatchNorm

    model = PointNet(10, transforms="both", width=0.25, norm="batch")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert {v.dtype for v in state.values()} == {torch.float32}  # no int64 step counter to average
    assert sum(k.endswith("running_var") for k in state) == sum(isinstance(m, BatchNorm) for m in model.modules()) > 0
    x = torch.randn(4, 64, 3) * 3
    model.train()
    model(x)
    moved = model.state_dict()
    assert any(not torch.equal(moved[k], state[k]) for k in state if k.endswith("running_mean"))
    model.eval()  # running statistics: each example's output alone is the batch's
    assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)
    # Same statistics as torch's BatchNorm1d (training normalises with the batch's).
    reference, ours = torch.nn.BatchNorm1d(6), BatchNorm(6)
    y = torch.randn(5, 6, 7)
    assert torch.allclose(reference(y), ours(y), atol=1e-6)
    assert torch.allclose(reference.running_var, ours.running_var, atol=1e-6)
    with pytest.raises(ValueError, match="invalid pointnet-norm 'layer'; valid: group, batch"):
        PointNet(10, norm="layer")


def test_batchnorm_training_never_sees_a_batch_of_one() -> None:
    from fedloom.tasks.batches import batch_bounds
    from fedloom.tasks.training import train_local

    assert batch_bounds(17, 8, min_size=2) == [(0, 8), (8, 17)]  # 17 = 8 + 8 + 1: the 1 joins
    assert batch_bounds(17, 8) == [(0, 8), (8, 16), (16, 17)]  # without BatchNorm: as before
    assert batch_bounds(16, 8, min_size=2) == [(0, 8), (8, 16)]
    task = PointCloudTask(num_points=32, transforms="none", width=0.125, rotation=0, norm="batch")
    x = np.random.default_rng(0).normal(size=(17, 32, 3)).astype(np.float32)
    y = np.arange(17, dtype=np.int64) % 3
    model = PointNet(3, transforms="none", width=0.125, norm="batch")
    loss = train_local(model, task, DataSplit(x, y), epochs=1, batch_size=8, lr=1e-3, optimizer="adam")
    assert np.isfinite(loss)
    with pytest.raises(ValueError, match="BatchNorm layers need batches of 2 or more examples"):
        train_local(model, task, DataSplit(x[:1], y[:1]), epochs=1, batch_size=8, lr=1e-3)


def test_pointnet_norm_comes_from_the_run_config_and_batchnorm_refuses_dp_sgd() -> None:
    from fedloom.config import parse_run_config
    from fedloom.tasks.batchnorm import BatchNorm

    cfg = parse_run_config({"task": "pointcloud", "pointnet-norm": "batch"})
    model = get_task("pointcloud", cfg.task_options()).build_model(
        TaskData(DataSplit(np.zeros((1, 8, 3), np.float32), np.zeros(1, np.int64)),
                 DataSplit(np.zeros((1, 8, 3), np.float32), np.zeros(1, np.int64)), num_classes=10))
    assert any(isinstance(m, BatchNorm) for m in model.modules())
    with pytest.raises(ValueError, match="invalid pointnet-norm='instance'; valid: group, batch"):
        parse_run_config({"task": "pointcloud", "pointnet-norm": "instance"})
    with pytest.raises(ValueError, match="pointnet-norm=batch does not work with dp=sample.*valid with dp=sample: group"):
        parse_run_config({"task": "pointcloud", "pointnet-norm": "batch", "dp": "sample", "dp-noise": 1.0})


def test_overall_and_mean_class_accuracy() -> None:
    y = np.array([0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 0])
    assert overall_accuracy(pred, y) == pytest.approx(4 / 6)
    assert mean_class_accuracy(pred, y, 4) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)  # class 3 absent
    out = PointCloudTask().metrics(torch.eye(3)[pred], torch.from_numpy(y))
    assert out == {"accuracy": pytest.approx(4 / 6), "mean_class_accuracy": pytest.approx(13 / 18)}
