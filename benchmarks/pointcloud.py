#!/usr/bin/env python
"""ModelNet10 PointNet: federated (10 clients, Dirichlet 0.5) beside centralized training.

Both runs train the same model (PointNet with GroupNorm, or BatchNorm with ``--norm batch``;
same width, points and transforms) with the same optimizer and augmentation for the same number of
epochs over the data: ``--rounds`` federated rounds of ``--local-epochs`` each,
and ``--rounds`` x ``--local-epochs`` centralized epochs. The optimizer restarts every federated round
(as for every FedAvg client) and, to match, every ``--local-epochs`` of centralized training (with
``--local-epochs 0.5``, every half epoch: a fresh random half of the training set, like each client's). Data: ``modelnet10_1024.npz`` (3,991 train / 908 test
shapes, official split). Reported: overall accuracy (OA) and mean class
accuracy of the last round / epoch on the test split (no test-set selection).

Usage: python benchmarks/pointcloud.py [--rounds 60 --points 512 --width 0.5 --lr-schedule cosine --batch-size 8]
(defaults: the README run, about 18 minutes on 2 idle cores). ``--freeze-classifier``:
FedBABU, both runs keep the classifier at the random init the server draws
(``--output pointcloud_fedbabu.md``); ``--partition iid``: no label skew.
``--norm batch --freeze-classifier --output pointcloud_batchnorm.md``: the README's best row at 512 points;
add ``--points 1024 --output pointcloud_batchnorm_1024.md`` for 1024 points (about 70 minutes), and
``--weight-decay 1e-4 --output pointcloud_batchnorm_1024_wd.md`` to that (Adam's L2 penalty), and
``--logit-adjustment 1 --output pointcloud_batchnorm_1024_wd_la.md`` to that for the balanced softmax (both runs:
the loss shifts the logits by the log label prior, each client's own in the federated run).
With ``--norm batch`` the federated run calibrates the BatchNorm statistics every round
(``batchnorm-calibration``, the default; ``--run-config batchnorm-calibration=false`` averages
them instead); the centralized run keeps torch's running averages.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import DATA_DIR, markdown_table, optimizer_phrase, simulate, write_result


def norm_phrase(args: argparse.Namespace) -> str:
    """The norm layers, and for BatchNorm what the federated run does with their statistics
    (read from ``--run-config`` as run_sim reads it: ``=false``, ``=no`` and ``=0`` alike)."""
    from fedloom.run_sim import parse_overrides
    from fedloom.config import parse_run_config

    if args.norm == "group":
        return "GroupNorm"
    if not parse_run_config(parse_overrides(args.run_config)).batchnorm_calibration:
        return "BatchNorm, federated: running statistics averaged"
    return "BatchNorm, federated: running statistics calibrated on the clients each round"


def centralized(args: argparse.Namespace, data_dir: Path) -> list[dict[str, float]]:
    """Train the same model on the whole train split; test metrics after each epoch."""
    from fedloom.tasks.base import TaskOptions
    from fedloom.tasks.head import freeze_classifier
    from fedloom.tasks.registry import get_task, load_task_data
    from fedloom.tasks.training import evaluate, scheduled_lr, train_local

    torch.set_num_threads(2)
    options = TaskOptions(
        num_points=args.points, pointnet_transforms=args.transforms, model_width=args.width,
        augment_rotation=args.rotation, pointnet_norm=args.norm,
    )
    task = get_task("pointcloud", options)
    data = load_task_data("pointcloud", str(data_dir), "modelnet10", options)
    torch.manual_seed(args.seed)
    model = task.build_model(data)
    if args.freeze_classifier:  # as the server does: same random head, never trained
        freeze_classifier(model, reinit=True)
    rows = []
    for epoch in range(1, args.rounds + 1):
        lr = scheduled_lr(args.lr, args.lr_schedule, epoch, args.rounds)
        train_local(
            model, task, data.train, epochs=args.local_epochs, batch_size=args.batch_size, lr=lr,
            seed=epoch, optimizer=args.optimizer, weight_decay=args.weight_decay,
            logit_adjustment=args.logit_adjustment,
        )
        rows.append({"epoch": epoch * args.local_epochs, **evaluate(model, task, data.test)})
        print(f"centralized epoch {epoch}: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--optimizer", default="adam", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="both runs: the local optimizer's L2 penalty (weight-decay), e.g. 1e-4")
    p.add_argument("--logit-adjustment", type=float, default=0.0,
                   help="both runs: the loss adds tau * log(label prior) to the logits (logit-adjustment); "
                   "federated: each client's prior, centralized: the train split's")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rotation", type=float, default=0.0,
                   help="max train-time rotation about the up axis, degrees (180 = any)")
    p.add_argument("--points", type=int, default=512)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--transforms", default="none")
    p.add_argument("--norm", default="group", choices=("group", "batch"),
                   help="PointNet's normalisation (pointnet-norm): GroupNorm or the paper's BatchNorm")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--local-epochs", type=float, default=1,
                   help="per round; 0.5 = a fresh random half of each client's data per round")
    p.add_argument("--strategy", default="fedavg", help="any --strategy of run_sim.py")
    p.add_argument("--partition", default="dirichlet:0.5", help="any --partition of run_sim.py")
    p.add_argument("--freeze-classifier", action="store_true",
                   help="FedBABU: both runs keep the classifier at its random init (freeze-classifier)")
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"))
    p.add_argument("--run-config", default="",
                   help="extra run-config pairs for the federated run, e.g. 'server-momentum=0.9'")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", default="pointcloud.md", help="results file in benchmarks/results")
    args = p.parse_args()
    data_dir = DATA_DIR / "modelnet10"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fed = simulate(
            Path(tmp),
            "--task", "pointcloud", "--dataset", "modelnet10", "--data-dir", str(data_dir),
            "--num-clients", str(args.clients), "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs),
            "--strategy", args.strategy,
            "--lr", str(args.lr), "--batch-size", str(args.batch_size), "--partition", args.partition,
            "--seed", str(args.seed),
            "--run-config",
            f"num-points={args.points} model-width={args.width} pointnet-transforms={args.transforms}"
            f" pointnet-norm={args.norm}"
            f" optimizer={args.optimizer} augment-rotation={args.rotation} lr-schedule={args.lr_schedule}"
            f" weight-decay={args.weight_decay} logit-adjustment={args.logit_adjustment}"
            + (" freeze-classifier=true" if args.freeze_classifier else "")
            + (f" {args.run_config}" if args.run_config else ""),
        )
    t1 = time.perf_counter()
    cen = centralized(args, data_dir)
    t2 = time.perf_counter()
    epochs = args.rounds * args.local_epochs
    setup = (
        f"ModelNet10 ({data_dir / 'modelnet10_1024.npz'}, 3,991 train / 908 test), {args.points} "
        f"points per shape, PointNet ({norm_phrase(args)}) "
        f"width x{args.width}, transforms={args.transforms}; "
        f"{optimizer_phrase(args.optimizer, args.lr, args.lr_schedule, args.weight_decay)}"
        f", batch {args.batch_size}, augmentation: rotation about z within +-{args.rotation:g} deg, "
        f"scale 0.8-1.25, jitter 0.01"
        + (", classifier frozen at its random init in both runs (freeze-classifier)" if args.freeze_classifier else "")
        + (f", logit adjustment tau {args.logit_adjustment:g} in both runs (federated: each client's label "
           "prior; centralized: the train split's)" if args.logit_adjustment else "")
        + f". Federated: {args.clients} clients, {args.partition}, {args.strategy}"
        + (f" ({args.run_config})" if args.run_config else "")
        + ", "
        f"{args.rounds} rounds x {args.local_epochs:g} local epoch(s) ({(t1 - t0) / 60:.1f} min). "
        f"Centralized: {epochs:g} epochs "
        f"({(t2 - t1) / 60:.1f} min)."
    )
    table = markdown_table(
        ["training", "epochs", "OA", "mean class acc"],
        [
            # four digits: on 908 test shapes one shape is 0.0011, so 0.900 could still be below 0.90
            ["federated (last round)", f"{epochs:g}", f"{fed[-1]['accuracy']:.4f}",
             f"{fed[-1]['mean_class_accuracy']:.4f}"],
            ["centralized (last epoch)", f"{epochs:g}", f"{cen[-1]['accuracy']:.4f}",
             f"{cen[-1]['mean_class_accuracy']:.4f}"],
        ],
    )
    curve = markdown_table(
        ["round (centralized: after as many epochs)", "federated OA", "centralized OA"],
        [[f["round"], f"{f['accuracy']:.3f}", f"{c['accuracy']:.3f}"] for f, c in zip(fed, cen)],
    )
    write_result(args.output, f"# ModelNet10 PointNet\n\n{setup}\n\n{table}\n## Per round\n\n{curve}")


if __name__ == "__main__":
    main()
