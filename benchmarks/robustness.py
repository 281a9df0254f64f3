"""Robust aggregation under attack: final MNIST accuracy per strategy.

15 clients (iid), 20% of them (3) send poisoned updates every round; every strategy
runs with the same seed, rounds and attackers. A clean FedAvg run is the baseline.
Bulyan needs n >= 4f + 3 clients, hence 15 clients for f = 3.

Usage: python benchmarks/robustness.py [--rounds 3] [--attack sign-flip]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, markdown_table, simulate, write_result

from fedloom.client.attacks import attackers
from fedloom.strategies.registry import min_replies

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "bulyan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attack", default="sign-flip")
    parser.add_argument("--num-clients", type=int, default=15)
    parser.add_argument("--attack-fraction", type=float, default=0.2)
    args = parser.parse_args()
    f = len(attackers(args.num_clients, args.attack_fraction, seed=0))  # ceil(n * fraction)
    short = [s for s in STRATEGIES if min_replies(s, f) > args.num_clients]
    if short:  # refuse before the first run, not after five finished ones
        parser.error(
            f"--num-clients {args.num_clients} with {f} attackers is too few for "
            + ", ".join(f"{s} (needs >= {min_replies(s, f)})" for s in short)
        )
    common = ["--task", "mnist", "--data-dir", str(DATA_DIR), "--num-clients", str(args.num_clients),
              "--rounds", str(args.rounds), "--batch-size", "32", "--seed", "7"]
    runs = [("fedavg (no attack)", "fedavg", [])] + [
        (s, s, ["--attack", args.attack, "--attack-fraction", str(args.attack_fraction)]) for s in STRATEGIES
    ]
    rows = []
    clean = None
    for label, strategy, attack in runs:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            metrics = simulate(Path(tmp), *common, *attack, "--strategy", strategy, "--run-config",
                               f"num-malicious={f} trimmed-beta=0.2")
            seconds = time.perf_counter() - t0
        acc = metrics[-1]["accuracy"]
        clean = acc if clean is None else clean
        rows.append([label, f"{acc:.4f}", f"{acc - clean:+.4f}", f"{seconds:.0f}"])
    text = (
        f"# Robustness: {args.attack}, {f} of {args.num_clients} clients attacking\n\n"
        f"MNIST CNN, iid, {args.rounds} rounds, 1 local epoch, batch 32, seed 7; attackers send "
        f"`{args.attack}` updates (attack-scale 4, see client/attacks.py) every round; "
        f"Krum/Bulyan assume f={f}, trimmed mean cuts 20% per side.\n\n"
        + markdown_table(["strategy", "final accuracy", "vs clean FedAvg", "run seconds"], rows)
    )
    write_result("robustness.md", text)


if __name__ == "__main__":
    main()
