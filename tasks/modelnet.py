"""ModelNet10/40 loaders: prepared npz, official OFF meshes, the HDF5 release.

Every loader returns z-up clouds of ``num_points`` points per shape, each
centred and scaled into the unit sphere, with the official train/test split.
Search order in ``data_dir`` and ``data_dir/<dataset>``:

1. ``<dataset>_<P>.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``
   (optional ``class_names``), the smallest ``P >= num_points``;
2. the official meshes ``ModelNet10/<class>/{train,test}/*.off`` (points sampled
   uniformly on the surface, area-weighted); the sample is cached as
   ``<dataset>_<num_points>.npz`` next to the meshes when that folder is writable;
3. ModelNet40 only: ``modelnet40_ply_hdf5_2048/ply_data_{train,test}*.h5``
   (y-up in that release, rotated to z-up here).

When none is there, the official mesh archive is downloaded when online.
"""

from __future__ import annotations

import io
import re
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DatasetNotFoundError

DATASETS = ("modelnet10", "modelnet40")
MESH_DIRS = {"modelnet10": "ModelNet10", "modelnet40": "ModelNet40"}
HDF5_DIR = "modelnet40_ply_hdf5_2048"
MESH_URLS = {
    "modelnet10": "http://vision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip",
    "modelnet40": "http://modelnet.cs.princeton.edu/ModelNet40.zip",
}
SUBSAMPLE_SEED = 0
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class PointClouds:
    """Normalised float32 clouds (N, P, 3), int64 labels, and the class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


# -- pure geometry ----------------------------------------------------------------


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre each cloud (..., P, 3) at its centroid and scale its farthest point to radius 1."""
    centred = points - points.mean(axis=-2, keepdims=True)
    radius = np.linalg.norm(centred, axis=-1).max(axis=-1)[..., None, None]
    return (centred / np.where(radius > 0, radius, 1.0)).astype(np.float32)


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of each triangle (F, 3) of ``vertices`` (V, 3)."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, num_points: int, rng: np.random.Generator
) -> np.ndarray:
    """``num_points`` points uniform on the mesh surface.

    A triangle is chosen with probability proportional to its area, then a point
    uniform inside it from the square-root barycentric formula (Osada et al. 2002).
    """
    areas = triangle_areas(vertices, faces)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("mesh has no surface area to sample from")
    tri = rng.choice(len(faces), size=num_points, p=areas / total)
    r1 = np.sqrt(rng.random(num_points))[:, None]
    r2 = rng.random(num_points)[:, None]
    a, b, c = (vertices[faces[tri, i]] for i in range(3))
    return ((1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c).astype(np.float32)


def subsample(clouds: np.ndarray, num_points: int, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """A fixed random subset of ``num_points`` points of every cloud (N, P, 3)."""
    available = clouds.shape[1]
    if num_points > available:
        raise ValueError(f"num-points {num_points} exceeds the {available} points per shape")
    if num_points == available:
        return clouds
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(available, num_points, replace=False) for _ in range(len(clouds))])
    return np.take_along_axis(clouds, idx[:, :, None], axis=1)


def y_up_to_z_up(points: np.ndarray) -> np.ndarray:
    """Rotate by +90 degrees about x: (x, y, z) -> (x, -z, y), so old y becomes z."""
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1)


# -- OFF meshes ---------------------------------------------------------------------


def read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangles (F, 3) int64 of an OFF file.

    Polygons are fan-triangulated. Accepts ModelNet's malformed first line where
    the counts follow ``OFF`` without a newline (e.g. ``OFF490 518 0``).
    """
    tokens = path.read_text().split()
    if not tokens or not tokens[0].startswith("OFF"):
        raise ValueError(f"{path} is not an OFF file")
    head = tokens[0][3:]
    rest = ([head] if head else []) + tokens[1:]
    try:
        n_v, n_f = int(rest[0]), int(rest[1])
        values = rest[3:]
        vertices = np.asarray(values[: 3 * n_v], dtype=np.float64).reshape(n_v, 3)
        pos, triangles = 3 * n_v, []
        for _ in range(n_f):
            k = int(values[pos])
            poly = [int(v) for v in values[pos + 1 : pos + 1 + k]]
            triangles += [(poly[0], poly[i], poly[i + 1]) for i in range(1, k - 1)]
            pos += 1 + k
    except (IndexError, ValueError):
        raise ValueError(f"{path}: malformed OFF file") from None
    faces = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0 or faces.max(initial=0) >= n_v:
        raise ValueError(f"{path}: no valid faces")
    return vertices, faces


def load_off_tree(root: Path, num_points: int, seed: int = SUBSAMPLE_SEED) -> PointClouds:
    """Sample every mesh of ``root/<class>/{train,test}/*.off``; classes in sorted order."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} holds no class folders")
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, name in enumerate(classes):
            for off in sorted((root / name / split).glob("*.off")):
                vertices, faces = read_off(off)
                xs.append(sample_surface(vertices, faces, num_points, rng))
                ys.append(label)
        if not xs:
            raise ValueError(f"{root} holds no {split} meshes (<class>/{split}/*.off)")
        out[split] = [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    return PointClouds(
        normalize_unit_sphere(out["train"][0]), out["train"][1],
        normalize_unit_sphere(out["test"][0]), out["test"][1], tuple(classes),
    )


# -- npz and HDF5 -------------------------------------------------------------------


def load_npz(path: Path, num_points: int) -> PointClouds:
    """Prepared npz (``x_train`` (N, P, 3), ``y_train``, ``x_test``, ``y_test``, opt. ``class_names``)."""
    with np.load(path) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}")
        x_tr, x_te = f["x_train"], f["x_test"]
        y_tr, y_te = f["y_train"].astype(np.int64).reshape(-1), f["y_test"].astype(np.int64).reshape(-1)
        num_classes = int(max(y_tr.max(), y_te.max())) + 1
        names = tuple(str(n) for n in f["class_names"]) if "class_names" in f else tuple(
            str(i) for i in range(num_classes)
        )
    for key, x in (("x_train", x_tr), ("x_test", x_te)):
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"{path}: {key} has shape {x.shape}, expected (N, P, 3)")
    return PointClouds(
        normalize_unit_sphere(subsample(x_tr.astype(np.float32), num_points)), y_tr,
        normalize_unit_sphere(subsample(x_te.astype(np.float32), num_points)), y_te, names,
    )


def load_hdf5_release(folder: Path, num_points: int) -> PointClouds:
    """``ply_data_{train,test}*.h5`` (``data`` (N, 2048, 3), ``label`` (N, 1)); opt. ``shape_names.txt``."""
    import h5py

    out = {}
    for split in ("train", "test"):
        files = sorted(folder.glob(f"ply_data_{split}*.h5"))
        if not files:
            raise ValueError(f"{folder} holds no ply_data_{split}*.h5")
        xs, ys = [], []
        for path in files:
            with h5py.File(path, "r") as f:
                xs.append(np.asarray(f["data"], dtype=np.float32))
                ys.append(np.asarray(f["label"], dtype=np.int64).reshape(-1))
        x = normalize_unit_sphere(y_up_to_z_up(subsample(np.concatenate(xs), num_points)))
        out[split] = (x, np.concatenate(ys))
    names_file = folder / "shape_names.txt"
    num_classes = int(max(out["train"][1].max(), out["test"][1].max())) + 1
    names = (
        tuple(names_file.read_text().split()) if names_file.is_file()
        else tuple(str(i) for i in range(num_classes))
    )
    return PointClouds(*out["train"], *out["test"], names)


# -- finding and downloading ------------------------------------------------------------


def find_npz(folders: list[Path], dataset: str, num_points: int) -> Path | None:
    """The ``<dataset>_<P>.npz`` with the smallest ``P >= num_points``."""
    pattern = re.compile(rf"{dataset}_(\d+)\.npz", re.IGNORECASE)
    found = []
    for folder in folders:
        for path in folder.glob("*.npz") if folder.is_dir() else ():
            match = pattern.fullmatch(path.name)
            if match and int(match.group(1)) >= num_points:
                found.append((int(match.group(1)), path))
    return min(found)[1] if found else None


def _save_cache(clouds: PointClouds, path: Path) -> None:
    try:
        buf = io.BytesIO()
        np.savez(buf, x_train=clouds.x_train, y_train=clouds.y_train, x_test=clouds.x_test,
                 y_test=clouds.y_test, class_names=np.asarray(clouds.class_names))
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(buf.getvalue())
        tmp.rename(path)
    except OSError:
        pass  # a read-only data folder: sample again next time


def _download_meshes(dataset: str, data_dir: Path) -> None:
    with urllib.request.urlopen(MESH_URLS[dataset], timeout=DOWNLOAD_TIMEOUT_S) as response:
        archive = response.read()
    data_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        zf.extractall(data_dir)


def load_modelnet(data_dir: Path, dataset: str, num_points: int) -> PointClouds:
    """Load ``dataset`` (modelnet10 or modelnet40) from the first source found."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if num_points < 1:
        raise ValueError(f"invalid num-points {num_points}; valid: >= 1")
    folders = [data_dir, data_dir / dataset]
    npz = find_npz(folders, dataset, num_points)
    if npz is not None:
        return load_npz(npz, num_points)
    for folder in folders:
        meshes = folder / MESH_DIRS[dataset]
        if meshes.is_dir():
            clouds = load_off_tree(meshes, num_points)
            _save_cache(clouds, folder / f"{dataset}_{num_points}.npz")
            return clouds
    if dataset == "modelnet40":
        for folder in folders:
            if (folder / HDF5_DIR).is_dir():
                return load_hdf5_release(folder / HDF5_DIR, num_points)
    try:
        _download_meshes(dataset, data_dir)
        if not (data_dir / MESH_DIRS[dataset]).is_dir():
            raise OSError(f"the archive holds no {MESH_DIRS[dataset]}/ folder")
    except (OSError, zipfile.BadZipFile) as exc:
        hdf5 = f", or the HDF5 release in {data_dir / HDF5_DIR}" if dataset == "modelnet40" else ""
        raise DatasetNotFoundError(
            f"{dataset} not found: put {dataset}_{num_points}.npz in {data_dir}, or the meshes "
            f"in {data_dir / MESH_DIRS[dataset]}/<class>/{{train,test}}/*.off{hdf5} "
            f"(download failed: {exc})"
        ) from None
    return load_modelnet(data_dir, dataset, num_points)
