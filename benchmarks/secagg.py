"""Secure aggregation (SecAgg+) cost beside plaintext FedAvg and --he.

Part 1 (MNIST CNN, 1,663,370 parameters, ``--clients`` clients, one process): one
round's aggregation of the same client updates three ways. Plaintext: float32
ArrayRecords, weighted mean. SecAgg+: fedloom's whole protocol (keys, sealed Shamir
shares, masked uploads, unmasking) between the real server strategy and the real
client handlers over an in-process grid (tests/secagg_harness.py). --he: BFV, one
value per slot (benchmarks/he.py's pipeline). Bytes are those the server counts
(bytes_up / bytes_down per client, keys and shares included); client seconds are per
client, summed over the protocol's stages; the error is against the plaintext mean.

Part 2 (digits MLP, 9,610 parameters): the same SecAgg+ round for 5, 10, 20 and 50
clients: client and server seconds and bytes per client grow with the number of
clients each one agrees masks with and shares its secrets among: all others
(``secagg-neighbours=0``, the default), or SecAgg+'s 2 ceil(log2 n) neighbours.
Both parts run every client in this process, one after the other: on a shared 2-core
machine a Ray simulation of 50 clients measures the scheduler, not the protocol.

Usage: python benchmarks/secagg.py [--clients 10] [--sweep 5,10,20,50]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from common import markdown_table, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the in-process grid

BITS, CLIP = 16, 2.0


def secagg_round(
    start: dict[str, np.ndarray], updates: list[np.ndarray], weights: list[int], neighbours: int = 0
) -> dict[str, float]:
    """One SecAgg+ round over the in-process grid: bytes and seconds per client, server
    seconds and the largest error against the weighted mean."""
    from flwr.supercore.task_identity import TaskIdentity
    from secagg_harness import LocalGrid, build, run_round

    from fedloom.compression.flat import flatten

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    nodes = list(range(1001, 1001 + len(updates)))
    grid = LocalGrid(dict(zip(nodes, updates)), dict(zip(nodes, weights)))
    strategy = build(bits=BITS, clip=CLIP, max_weight=60_000, neighbours=neighbours)
    t0 = time.perf_counter()
    aggregate, _ = run_round(strategy, grid, start)
    total = time.perf_counter() - t0
    assert aggregate is not None
    got = flatten({k: v.numpy() for k, v in aggregate.items()}) - flatten(start)
    expected = sum(w * u.astype(np.float64) for w, u in zip(weights, updates)) / sum(weights)
    n = len(updates)
    return {"up": strategy.stats.bytes_up / n, "down": strategy.stats.bytes_down / n,
            "client": grid.client_seconds / n, "server": total - grid.client_seconds,
            "err": float(np.abs(got - expected).max())}


def mnist_pipeline(num_clients: int) -> tuple[list[list[str]], int]:
    import torch
    from flwr.app import ArrayRecord
    from he import pipeline_he

    from fedloom.compression.flat import flatten, unflatten
    from fedloom.tasks.mnist import MnistCNN

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = MnistCNN().state_dict()
    start = {k: v.numpy().copy() for k, v in base.items()}
    n_params = int(sum(v.numel() for v in base.values()))
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.01, n_params).astype(np.float32) for _ in range(num_clients)]
    weights = [600 + 10 * i for i in range(num_clients)]
    states = [{k: torch.from_numpy(v) for k, v in unflatten(flatten(start) + u, start).items()} for u in updates]

    t0 = time.perf_counter()
    records = [ArrayRecord(s) for s in states]
    t_ser = (time.perf_counter() - t0) / num_clients
    t0 = time.perf_counter()
    total = sum(weights)
    _ = {k: sum(r[k].numpy() * (w / total) for r, w in zip(records, weights)) for k in base}
    plain = {"up": records[0].count_bytes(), "down": records[0].count_bytes(), "client": t_ser,
             "server": time.perf_counter() - t0, "err": 0.0}
    print(f"plaintext: {plain}", flush=True)
    secure = secagg_round(start, updates, weights)
    print(f"SecAgg+: {secure}", flush=True)
    he = pipeline_he(states, weights, base, "bfv", 1)
    he_row = {"up": he["up"], "down": he["down"], "client": he["enc"] + he["dec"], "server": he["agg"],
              "err": float("nan")}
    print(f"--he: {he}", flush=True)
    runs = [plain, secure, he_row]

    def row(label: str, key: str, fmt: str, ratio: bool = True) -> list[str]:
        cells = [label]
        for r in runs:
            cells.append("n/a" if r[key] != r[key] else format(r[key], fmt))
            if r is not plain:
                cells.append(f"{r[key] / plain[key]:.2f}x" if ratio and plain[key] else "")
        return cells

    per_param = ["bytes up per client per parameter"]
    for r in runs:
        per_param += [f"{r['up'] / n_params:.2f}"] + ([""] if r is not plain else [])
    return [
        row("bytes up per client", "up", ",.0f"),
        per_param,
        row("bytes down per client", "down", ",.0f"),
        row("client seconds per client (serialize / mask / encrypt+decrypt)", "client", ".3f"),
        row(f"server seconds, {num_clients} clients (mean / unmask / add)", "server", ".3f"),
        row("max abs error vs plaintext mean (SecAgg+ bound 6.1e-05)", "err", ".1e", ratio=False),
    ], n_params


def digits_sweep(counts: list[int]) -> list[list[object]]:
    import torch

    from fedloom.tasks.registry import get_task, load_task_data

    torch.manual_seed(0)
    data = load_task_data("digits", "data", "digits", None)
    start = {k: v.numpy().copy() for k, v in get_task("digits").build_model(data).state_dict().items()}
    n_params = int(sum(v.size for v in start.values()))
    rows: list[list[object]] = []
    for count in counts:
        rng = np.random.default_rng(count)
        updates = [rng.normal(0, 0.01, n_params).astype(np.float32) for _ in range(count)]
        sparse = 2 * math.ceil(math.log2(count))  # SecAgg+: O(log n) neighbours
        for neighbours in (0, sparse) if sparse < count - 1 else (0,):
            r = secagg_round(start, updates, [1437 // count] * count, neighbours)
            print(f"{count} clients, neighbours {neighbours or 'all'}: {r}", flush=True)
            rows.append([count, neighbours or f"all ({count - 1})", f"{r['client']:.3f}", f"{r['server']:.3f}",
                         f"{r['up']:,.0f}", f"{r['up'] / (4 * n_params + 128):.2f}x", f"{r['down']:,.0f}",
                         f"{r['err']:.1e}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--sweep", default="5,10,20,50")
    args = parser.parse_args()
    mnist, n_params = mnist_pipeline(args.clients)
    sweep = digits_sweep([int(c) for c in args.sweep.split(",")])
    text = (
        f"# Secure aggregation (SecAgg+) beside plaintext and --he\n\n"
        f"SecAgg+: secagg-bits={BITS}, secagg-clip={CLIP}, secagg-threshold=0.6, every client "
        "paired with every other; masks are AES-256-CTR keystreams; keys are Flower's "
        "(SECP384R1, PEM), shares Shamir over 16-byte chunks, sealed with Fernet. --he: BFV, "
        "N=4096, one value per slot (benchmarks/he.py). All clients run in one process, one "
        "after the other, on a shared 2-core machine (load from other jobs: seconds are "
        "indicative; bytes are exact).\n\n"
        f"## MNIST CNN ({n_params:,} parameters), {args.clients} clients, one round's aggregation\n\n"
        + markdown_table(["measure", "plaintext", "SecAgg+", "/ plaintext", "--he (BFV)", "/ plaintext"], mnist)
        + "\n## SecAgg+ against the number of clients, digits MLP (9,610 parameters)\n\n"
        + markdown_table(["clients", "secagg-neighbours", "client seconds (per client)", "server seconds",
                          "bytes up per client", "/ plaintext upload", "bytes down per client",
                          "max abs error"], sweep)
    )
    write_result("secagg.md", text)


if __name__ == "__main__":
    main()
