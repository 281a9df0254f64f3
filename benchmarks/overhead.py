"""Simulation overhead: one round in fedloom vs the same training in plain PyTorch.

For each task, the same clients (partitions), data, model init, local epochs and
batch size are trained (1) as a fedloom simulation (Flower simulation engine, Ray
actors with 1 CPU and 1 torch thread each) and (2) back to back in this one plain
PyTorch process (1 torch thread), followed by the same FedAvg and central test.
Round 2 of the simulation is the steady state (round 1 also starts the actors); the
plain round is timed after one warm-up round, so both are steady state.

Usage: python benchmarks/overhead.py [--tasks digits mnist] [--num-clients 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, markdown_table, simulate, write_result


def plain_round(task_name: str, data_dir: str, num_clients: int, batch_size: int, seed: int) -> float:
    """Seconds for one FedAvg round with every client trained sequentially in-process."""
    import torch

    from fedloom.config import parse_run_config
    from fedloom.tasks.registry import client_split, get_task, load_task_data
    from fedloom.tasks.training import evaluate, train_local

    cfg = parse_run_config({"task": task_name, "data-dir": data_dir, "batch-size": batch_size, "seed": seed})
    task = get_task(task_name)
    data = load_task_data(task_name, data_dir, cfg.dataset)
    splits = [client_split(task_name, data_dir, cfg.dataset, cfg.partition, num_clients, seed, i)
              for i in range(num_clients)]
    torch.manual_seed(seed)
    global_model = task.build_model(data)
    start = time.perf_counter()
    states, sizes = [], []
    for pid, split in enumerate(splits):
        model = task.build_model(data)
        model.load_state_dict(global_model.state_dict())
        train_local(model, task, split, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                    lr=cfg.lr, momentum=cfg.momentum, seed=pid)
        states.append(model.state_dict())
        sizes.append(len(split))
    total = sum(sizes)
    global_model.load_state_dict(
        {k: sum(s[k] * (n / total) for s, n in zip(states, sizes)) for k in states[0]}
    )
    evaluate(global_model, task, data.test)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "mnist"])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for task in args.tasks:
        data_dir = str(DATA_DIR)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            sim = simulate(Path(tmp), "--task", task, "--data-dir", data_dir, "--rounds", "2",
                           "--num-clients", str(args.num_clients), "--batch-size", str(args.batch_size))
            total = time.perf_counter() - t0
        plain_round(task, data_dir, args.num_clients, args.batch_size, seed=42)  # warm-up
        plain = plain_round(task, data_dir, args.num_clients, args.batch_size, seed=42)
        steady = sim[1]["seconds"]
        rows.append([task, args.num_clients, f"{plain:.2f}", f"{steady:.2f}", f"{steady / plain:.2f}x",
                     f"{sim[0]['seconds']:.2f}", f"{total:.1f}"])
    header = ["task", "clients", "plain PyTorch round (s)", "fedloom round 2 (s)",
              "ratio", "fedloom round 1 incl. actor start (s)", "whole 2-round run (s)"]
    text = (
        f"# Simulation overhead\n\nMachine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}; 1 local epoch, batch {args.batch_size}, iid partitions, "
        "Ray actors with num_cpus=1 and one torch thread; plain baseline: one process, "
        "one torch thread, clients trained back to back, then FedAvg and the central test.\n\n"
        + markdown_table(header, rows)
    )
    write_result("overhead.md", text)


if __name__ == "__main__":
    main()
