#!/usr/bin/env python
"""Compression benchmark: accuracy and upload bytes of each codec against ``none``.

MNIST, 10 clients, Dirichlet(0.5) label skew, the same rounds and seed for every
codec. Each codec runs as its own simulation (``run_sim.py`` in a subprocess);
the table reports the final central accuracy and the total ``bytes_up`` summed
from ``metrics.jsonl``, both as ratios against the ``none`` run of the same
invocation. Writes ``benchmarks/results/compression.md`` and prints it.

Example: python benchmarks/compression.py --rounds 10 --codecs none fp16 qsgd:8 lowrank:4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, RESULTS, markdown_table, simulate

#: Default codecs: every codec alone, then the chains that reach the 100x goal. The whole
#: benchmark takes about 45 minutes on 2 idle cores at 10 rounds.
CODECS = (
    "none", "fp16", "qsgd:8", "qsgd:4", "topk:0.01", "randk:0.1", "lowrank:4",
    "topk:0.02+qsgd:4", "topk:0.01+qsgd:4",
)


def run_codec(codec: str, args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    """Run one simulation; return final accuracy, total upload bytes and wall time."""
    started = time.perf_counter()
    rows = simulate(
        run_dir, "--task", "mnist", "--data-dir", str(args.data_dir), "--num-clients", "10",
        "--partition", "dirichlet:0.5", "--rounds", str(args.rounds), "--seed", str(args.seed),
        "--batch-size", str(args.batch_size), "--compression", codec,
    )
    return {
        "accuracy": float(rows[-1]["accuracy"]),
        "bytes_up": float(sum(r["bytes_up"] for r in rows)),
        "seconds": time.perf_counter() - started,
    }


def table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    base = results["none"]
    rows = [
        [f"`{codec}`", f"{r['accuracy']:.4f}", f"{100 * (r['accuracy'] - base['accuracy']):+.2f}",
         f"{int(r['bytes_up']):,}", f"{base['bytes_up'] / r['bytes_up']:.1f}", f"{r['seconds']:.0f}"]
        for codec, r in results.items()
    ]
    header = ["codec", "final accuracy", "Δ accuracy (points)", "upload bytes", "upload reduction (x)",
              "wall time (s)"]
    return (
        f"MNIST, 10 clients, Dirichlet(0.5), {args.rounds} rounds, seed {args.seed}, "
        f"batch size {args.batch_size}, FedAvg; ratios against `none` from the same run.\n\n"
        + markdown_table(header, rows)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument(
        "--codecs", nargs="+", default=list(CODECS), help="specs; none is always run first"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "compression.md")
    args = p.parse_args(argv)
    codecs = ["none", *(c for c in args.codecs if c != "none")]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for codec in codecs:
            run_dir = Path(tmp) / codec.replace(":", "_").replace("+", "-")
            results[codec] = run_codec(codec, args, run_dir)
            print(f"{codec}: {results[codec]}", file=sys.stderr, flush=True)
    text = f"# Compression benchmark\n\n{table(results, args)}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
