"""Client resources: GPU shares for Ray and the peak GPU memory a client reports."""

from __future__ import annotations

import pytest
import torch

from fedloom.client.resources import (
    MAX_CLIENTS_PER_GPU,
    check_gpu_share,
    gpu_share,
    peak_memory_metrics,
    reset_peak_memory,
)
from fedloom.tasks.registry import get_task


def test_auto_packs_clients_by_memory():
    # 141 GiB * 0.9 / 1.1 GiB = 115 fit, capped at 32 clients per GPU.
    assert gpu_share(num_clients=100, num_gpus=1, gpu_memory_gib=141, client_memory_gib=1.1) == 1 / 32
    # 16 GiB * 0.9 / 1.5 GiB = 9.6: 9 clients per GPU.
    assert gpu_share(num_clients=100, num_gpus=1, gpu_memory_gib=16, client_memory_gib=1.5) == 1 / 9


def test_auto_spreads_few_clients_over_the_gpus():
    assert gpu_share(num_clients=4, num_gpus=2, gpu_memory_gib=80, client_memory_gib=1.0) == 0.5
    assert gpu_share(num_clients=1, num_gpus=1, gpu_memory_gib=80, client_memory_gib=1.0) == 1.0


def test_a_client_bigger_than_the_gpu_gets_a_whole_gpu_and_no_gpu_gets_nothing():
    assert gpu_share(num_clients=10, num_gpus=1, gpu_memory_gib=8, client_memory_gib=20) == 1.0
    assert gpu_share(num_clients=10, num_gpus=0, gpu_memory_gib=0, client_memory_gib=1.0) == 0.0
    assert MAX_CLIENTS_PER_GPU == 32


@pytest.mark.parametrize("share", [0.0, 0.125, 1.0, 2.0])
def test_hand_set_shares_ray_accepts(share):
    assert check_gpu_share(share) == share


@pytest.mark.parametrize("share", [-0.5, 1.5, float("nan")])
def test_hand_set_shares_ray_refuses_name_the_valid_ones(share):
    with pytest.raises(ValueError, match=r"valid: auto, a fraction in \[0, 1\]"):
        check_gpu_share(share)


def test_every_task_estimates_its_gpu_memory_and_medmnist_grows_with_the_pixels():
    from fedloom.tasks.base import TaskOptions

    for name in ("digits", "mnist", "medmnist", "pointcloud"):
        assert get_task(name).gpu_memory_gib() > 0
    small = get_task("medmnist", TaskOptions(image_size=28)).gpu_memory_gib()
    large = get_task("medmnist", TaskOptions(image_size=224)).gpu_memory_gib()
    assert large > 4 * small


def test_no_gpu_memory_is_reported_from_the_cpu():
    reset_peak_memory("cpu")
    assert peak_memory_metrics("cpu") == {}


@pytest.mark.cuda
def test_peak_gpu_memory_is_measured_from_the_reset():
    reset_peak_memory("cuda")
    x = torch.ones(64, 2**20, device="cuda")  # 256 MiB
    mib = peak_memory_metrics("cuda")["gpu_memory_mib"]
    del x
    assert 256 <= mib < 300


def test_client_processes_ask_for_deterministic_kernels(monkeypatch):
    from fedloom.client.resources import deterministic_cuda

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        deterministic_cuda()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic = False
