#!/usr/bin/env python
"""Sample-level DP on MNIST: test accuracy at a cumulative epsilon of about 1, 3 and 8.

10 clients with iid shares of MNIST train with Opacus DP-SGD; for each target
epsilon the noise is calibrated (``--dp-target-epsilon``) so that a client
taking part in every round ends at or below the target (delta 1e-5). The table
puts the final test accuracy beside published centralised references.

Run from the repository root (benchmarks/compression.py would shadow the package).
Example: python benchmarks/dp.py --rounds 10 --batch-size 500 --lr 2.0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, markdown_table, simulate, write_result

TARGETS = (1.0, 3.0, 8.0)
DELTA = 1e-5
MODEL_NAMES = {
    "dp-cnn": "small tanh CNN of Opacus's MNIST example (26,010 parameters)",
    "mcmahan": "McMahan et al. CNN (1,663,370 parameters)",
}
REFERENCES = (
    "References (centralised, all 60k examples in one data set): Opacus MNIST example "
    "94.6% at epsilon 1.2, 96.8% at 3.0, 97.1% at 7.1; Abadi et al. 2016: 90% at 0.5, "
    "95% at 2, 97% at 8 (delta 1e-5)."
)


def run_target(target: float, args: argparse.Namespace, root: Path) -> dict[str, float]:
    """One DP run calibrated to ``target``; its last metrics row plus timing."""
    run_dir = root / f"eps{target:g}"
    started = time.perf_counter()
    rows = simulate(
        run_dir,
        "--task", "mnist", "--data-dir", str(DATA_DIR), "--num-clients", str(args.clients),
        "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed),
        "--dp", "sample", "--dp-target-epsilon", str(target), "--dp-delta", str(DELTA),
        "--dp-max-grad-norm", str(args.max_grad_norm), "--dp-accountant", args.accountant,
        "--run-config", f"mnist-model={args.mnist_model}",
    )
    per_client = [json.loads(line) for line in (run_dir / "epsilon.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {
        "target": target,
        "epsilon": last["epsilon"],
        "epsilon_mean": last["epsilon_mean"],
        "accuracy": last["accuracy"],
        "clients": len({r["partition_id"] for r in per_client}),
        "minutes": (time.perf_counter() - started) / 60,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--accountant", default="rdp")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--mnist-model", choices=("dp-cnn", "mcmahan"), default="dp-cnn",
                   help="dp-cnn: 26k-parameter tanh CNN (Opacus example); mcmahan: 1.66M CNN")
    p.add_argument("--note", default="", help="extra sentence for the settings paragraph")
    p.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_target(t, args, Path(tmp)) for t in args.targets]
    header = ["target epsilon", "max client epsilon", "mean client epsilon",
              "test accuracy", "minutes"]
    rows = [
        [f"{r['target']:g}", f"{r['epsilon']:.3f}", f"{r['epsilon_mean']:.3f}",
         f"{100 * r['accuracy']:.2f}%", f"{r['minutes']:.1f}"]
        for r in results
    ]
    settings = (
        f"MNIST, {args.clients} clients (iid), {MODEL_NAMES[args.mnist_model]}, DP-SGD (Opacus, "
        f"{args.accountant.upper()} accountant, Poisson sampling, ghost clipping), "
        f"{args.rounds} rounds x {args.local_epochs} local epoch(s), batch {args.batch_size}, "
        f"lr {args.lr}, momentum 0.9, max grad norm {args.max_grad_norm}, delta {DELTA:g}; "
        "noise calibrated per client so that taking part in every round ends at or below "
        "the target. Test accuracy of the final model (no round or run picked on the test set)."
        + (" " + args.note if args.note else "")
    )
    command = (
        f"python benchmarks/dp.py --clients {args.clients} --rounds {args.rounds} "
        f"--local-epochs {args.local_epochs} --batch-size {args.batch_size} --lr {args.lr} "
        f"--max-grad-norm {args.max_grad_norm} --accountant {args.accountant} --seed {args.seed} "
        f"--mnist-model {args.mnist_model} --targets {' '.join(f'{t:g}' for t in args.targets)}"
    )
    text = (
        "# Sample-level DP on MNIST\n\n" + settings + "\n\n" + markdown_table(header, rows)
        + "\n" + REFERENCES + "\n\nCommand: `" + command + "`\n"
    )
    write_result("dp.md", text)


if __name__ == "__main__":
    main()
