"""What a client actor needs from its machine: its device, its GPU share, its peak memory.

``gpu_share`` is pure arithmetic so that it can be checked without a GPU; the launcher
(``run_sim.py``) feeds it the GPUs Ray will see and the task's memory estimate.
"""

from __future__ import annotations

import math
import os
import socket
import sys

import torch
from flwr.app import ConfigRecord

from fedloom.protocol.keys import HOSTNAME_KEY, RAY_NODE_KEY

#: More actors than this on one GPU gain nothing: each holds its own CUDA context
#: (~0.5 GiB) and the kernels of small models already overlap at this count.
MAX_CLIENTS_PER_GPU = 32
#: Share of a GPU's memory that ``auto`` packs clients into (the rest is headroom).
MEMORY_HEADROOM = 0.9


def deterministic_cuda() -> None:
    """Seeded runs repeat on a GPU as on the CPU: deterministic cuDNN and cuBLAS kernels.

    Called once per client process, before its first CUDA call (cuBLAS reads its
    workspace setting then). Ops without a deterministic CUDA kernel warn, not fail.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def gpu_share(
    *, num_clients: int, num_gpus: int, gpu_memory_gib: float, client_memory_gib: float
) -> float:
    """Ray's ``num_gpus`` per client actor for ``--client-gpus auto``.

    As many clients share a GPU as its memory holds at ``client_memory_gib`` each (the
    task's estimate, CUDA context included), at most :data:`MAX_CLIENTS_PER_GPU`; with
    fewer clients than that, they are spread over the GPUs. 0 without a GPU.
    """
    if num_gpus <= 0:
        return 0.0
    if client_memory_gib <= 0 or gpu_memory_gib <= 0:
        raise ValueError(f"invalid GPU memory: client {client_memory_gib} GiB, GPU {gpu_memory_gib} GiB")
    fits = math.floor(MEMORY_HEADROOM * gpu_memory_gib / client_memory_gib)
    per_gpu = max(1, min(fits, MAX_CLIENTS_PER_GPU))
    spread = num_gpus / max(num_clients, 1)
    return min(1.0, max(spread, 1.0 / per_gpu))


def check_gpu_share(value: float) -> float:
    """A hand-set ``--client-gpus``: Ray takes a fraction up to 1 or a whole number of GPUs."""
    if value < 0 or math.isnan(value) or (value > 1 and not float(value).is_integer()):
        raise ValueError(
            f"invalid --client-gpus {value:g}; valid: auto, a fraction in [0, 1] "
            "(clients sharing one GPU) or a whole number of GPUs per client"
        )
    return value


def reset_peak_memory(device: str) -> None:
    """Start measuring this round's peak GPU memory (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_metrics(device: str) -> dict[str, float]:
    """``gpu_memory_mib``: peak GPU memory torch allocated since :func:`reset_peak_memory`
    (empty on the CPU), so the summary can show what a client needs."""
    if not device.startswith("cuda"):
        return {}
    return {"gpu_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20}


def node_report() -> ConfigRecord:
    """Where this client runs: its Ray node id (empty outside a Ray worker) and hostname."""
    ray = sys.modules.get("ray")  # a Ray actor has it imported; nothing else needs it
    node_id = ""
    if ray is not None and ray.is_initialized():
        node_id = ray.get_runtime_context().get_node_id()
    return ConfigRecord({RAY_NODE_KEY: node_id, HOSTNAME_KEY: socket.gethostname()})
