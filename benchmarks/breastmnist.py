#!/usr/bin/env python
"""BreastMNIST, 5 clients, FedAvg: federated ACC and AUC beside MedMNIST v2's reference.

(Not named medmnist.py: run as a script, that name would shadow the medmnist package.)

MedMNIST v2 (Yang et al. 2023, Table 3) reports a centralized ResNet-18 at 28 px:
ACC 0.863, AUC 0.901 on the BreastMNIST test split. Here a ResNet-18 with GroupNorm
(or, ``--norm batch``, the reference's BatchNorm, calibrated each round; width
multiplier ``--width``, to fit a 2-core CPU) is trained federated on the
train split (IID over 5 clients) with a fixed schedule chosen before looking at
the test split; the table reports the test metrics of the last round, of the
round with the best validation AUC (the run's ``best.pt``: MedMNIST v2's own
training code keeps the epoch with the best val AUC), of the round with the best
validation ACC, and, for transparency only, of the best round by test ACC
(selection on the test set).

Usage: python benchmarks/breastmnist.py [--rounds 30 --width 0.25 --optimizer sgd --lr 0.01 --weight-decay 0
                                       --lr-schedule cosine --augment --norm group --seeds 42 1 2]
With several seeds each run gets its own file (``<output>_seed<N>.md``) and ``--output``
holds the per-seed last rounds with their mean and standard deviation.
(benchmarks/results/breastmnist.md summarizes the runs in benchmarks/results/breastmnist_runs/.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, markdown_table, optimizer_phrase, simulate, write_result

REFERENCE = {"accuracy": 0.863, "auc": 0.901}
NORM_NAMES = {"group": "GroupNorm", "batch": "BatchNorm (calibrated each round)"}


def run_one(args: argparse.Namespace, seed: int, output: str) -> dict:
    """One federated run at ``seed``: write its per-round table to ``output``; its last round."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = simulate(
            Path(tmp),
            "--task", "medmnist", "--dataset", "breastmnist", "--data-dir", str(DATA_DIR),
            "--num-clients", str(args.clients), "--rounds", str(args.rounds),
            "--local-epochs", str(args.local_epochs), "--lr", str(args.lr),
            "--batch-size", str(args.batch_size), "--partition", "iid", "--seed", str(seed),
            "--run-config", f"model-width={args.width} image-size=28 optimizer={args.optimizer} "
            f"augment-images={str(args.augment).lower()} lr-schedule={args.lr_schedule} best-metric=val_auc "
            f"weight-decay={args.weight_decay} resnet-norm={args.norm}",
        )
        by_val_auc = json.loads((Path(tmp) / "best.json").read_text())["row"]
    minutes = (time.perf_counter() - started) / 60
    last = rows[-1]
    best = max(rows, key=lambda r: r["accuracy"])
    chosen = max(rows, key=lambda r: (r["val_accuracy"], r["val_auc"], r["round"]))
    table = markdown_table(
        ["model", "ACC", "AUC"],
        [
            ["MedMNIST v2 ResNet-18 (28), centralized [reference]", REFERENCE["accuracy"], REFERENCE["auc"]],
            [f"fedloom FedAvg, last round ({last['round']})", f"{last['accuracy']:.3f}", f"{last['auc']:.3f}"],
            [f"fedloom FedAvg, round picked by validation AUC ({by_val_auc['round']}; best.pt)",
             f"{by_val_auc['accuracy']:.3f}", f"{by_val_auc['auc']:.3f}"],
            [f"fedloom FedAvg, round picked by validation ACC ({chosen['round']})",
             f"{chosen['accuracy']:.3f}", f"{chosen['auc']:.3f}"],
            [f"fedloom FedAvg, best round by test ACC ({best['round']}; test-set selection)",
             f"{best['accuracy']:.3f}", f"{best['auc']:.3f}"],
        ],
    )
    curve = markdown_table(
        ["round", "val ACC", "val AUC", "test ACC", "test AUC"],
        [[r["round"], f"{r['val_accuracy']:.3f}", f"{r['val_auc']:.3f}", f"{r['accuracy']:.3f}",
          f"{r['auc']:.3f}"] for r in rows],
    )
    write_result(output, f"# BreastMNIST federated\n\n{setup(args, seed)}; {minutes:.1f} min on this "
                 f"machine\n\n{table}\n## Per round\n\n{curve}")
    return {**last, "seed": seed, "minutes": minutes, "best_round": by_val_auc["round"],
            "best_accuracy": by_val_auc["accuracy"], "best_auc": by_val_auc["auc"]}


def setup(args: argparse.Namespace, seed: int | str) -> str:
    return (
        f"BreastMNIST 28 px (546 train / 78 val / 156 test, {DATA_DIR / 'medmnist' / 'breastmnist.npz'}), "
        f"{args.clients} clients IID, FedAvg, {args.rounds} rounds x {args.local_epochs} local "
        f"epochs, {optimizer_phrase(args.optimizer, args.lr, args.lr_schedule, args.weight_decay)}"
        f", batch {args.batch_size}, seed {seed}, "
        f"ResNet-18 {NORM_NAMES[args.norm]} width x{args.width}"
        + (", train-time flips and shifts (augment-images)" if args.augment else "")
    )


def seed_summary(args: argparse.Namespace, lasts: list[dict]) -> str:
    """Last-round val and test metrics per seed, and the test metrics of the round best.pt
    holds (best val AUC), with their mean and sample standard deviation."""
    keys = ("val_accuracy", "val_auc", "accuracy", "auc", "best_accuracy", "best_auc")
    rows = [[r["seed"], *(f"{r[k]:.3f}" for k in keys), r["best_round"], f"{r['minutes']:.1f}"] for r in lasts]
    for label, fn in (("mean", statistics.mean), ("sd", statistics.stdev)):
        rows.append([label, *(f"{fn([r[k] for r in lasts]):.3f}" for k in keys), "", ""])
    table = markdown_table(
        ["seed", "val ACC", "val AUC", "test ACC", "test AUC", "test ACC (best.pt)", "test AUC (best.pt)",
         "best.pt round", "minutes"],
        rows,
    )
    ref = f"MedMNIST v2 centralized ResNet-18 (28): ACC {REFERENCE['accuracy']}, AUC {REFERENCE['auc']}."
    return (f"# BreastMNIST federated, {len(lasts)} seeds\n\n{setup(args, 'per row')}. Last round of "
            f"each run; best.pt: the round with the best val AUC.\n\n{table}\n{ref}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=0.0, help="local optimizer's L2 penalty (weight-decay)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=float, default=0.25, help="ResNet-18 channel multiplier")
    p.add_argument("--seeds", "--seed", dest="seeds", type=int, nargs="+", default=[42],
                   help="one run per seed (partition, init, batches); with several, a mean/sd summary too")
    p.add_argument("--output", default="breastmnist_runs/latest.md", help="results file in benchmarks/results")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--augment", action="store_true", help="random flips and shifts (augment-images)")
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"))
    p.add_argument("--norm", default="group", choices=tuple(NORM_NAMES),
                   help="the ResNet's normalisation (resnet-norm): GroupNorm or the reference's BatchNorm")
    args = p.parse_args()
    if len(args.seeds) == 1:
        run_one(args, args.seeds[0], args.output)
        return
    stem = args.output.removesuffix(".md")
    lasts = [run_one(args, seed, f"{stem}_seed{seed}.md") for seed in args.seeds]
    write_result(args.output, seed_summary(args, lasts))


if __name__ == "__main__":
    main()
