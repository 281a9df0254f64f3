#!/usr/bin/env python
"""Sample-level DP on MNIST: test accuracy at a cumulative epsilon of about 1, 3 and 8
(``--noise-cost``: the cost of the CSPRNG noise against torch's generator instead).

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
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import DATA_DIR, markdown_table, simulate, write_result

from fedloom.privacy.accounting import ClientAccount
from fedloom.privacy.dp import SampleDPSettings, device_generator, make_dp_ready, train_private
from fedloom.privacy.secure_noise import SecureGaussian
from fedloom.tasks.mnist import MODELS
from fedloom.tasks.registry import get_task, load_task_data

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


def median_seconds(fn: Callable[[], object], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def step_noise(params: list[torch.Tensor], draw: Callable[[torch.Tensor], torch.Tensor]) -> None:
    for p in params:
        draw(p)


def dp_round(seeded: bool, device: str) -> float:
    data = load_task_data("digits", "", "", None)
    task = get_task("digits")
    settings = SampleDPSettings(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, accountant="rdp",
                                target_epsilon=0.0, planned_rounds=1, seeded_noise=seeded)
    model = make_dp_ready(task.build_model(data))
    t0 = time.perf_counter()
    train_private(model, task, data.train, settings=settings, account=ClientAccount("rdp", 1e-5),
                  epochs=1, batch_size=64, lr=0.1, momentum=0.0, seed=1, device=device)
    return time.perf_counter() - t0


def noise_cost(args: argparse.Namespace) -> None:
    """``--noise-cost``: DP noise from the OS's CSPRNG (the default) against torch's
    Mersenne Twister (Opacus outside secure_mode, and dp-seeded-noise), measured together.

    For each MNIST model, one DP-SGD step's noise (one Gaussian per parameter, drawn
    tensor by tensor on the device); then one whole DP-SGD round of a digits client
    with each source. Writes benchmarks/results/dp_noise_<device>.md.
    """
    torch.set_num_threads(args.threads)
    device = args.device
    generator = device_generator(device, 0)
    secure = SecureGaussian()
    old = lambda ref: torch.normal(0.0, 1.0, ref.shape, device=ref.device, generator=generator)  # noqa: E731
    new = lambda ref: secure.noise_like(1.0, ref)  # noqa: E731
    rows = []
    for name, cls in MODELS.items():
        params = [q.detach().to(device) for q in cls().parameters()]
        count = sum(q.numel() for q in params)
        t_old = median_seconds(lambda p=params: step_noise(p, old), args.repeats, device)
        t_new = median_seconds(lambda p=params: step_noise(p, new), args.repeats, device)
        rows.append([f"noise of one step, MNIST {name} ({count:,} parameters)",
                     f"{1e3 * t_old:.2f} ms", f"{1e3 * t_new:.2f} ms", f"{t_new / t_old:.1f}x"])
    r_old = statistics.median(dp_round(True, device) for _ in range(3))
    r_new = statistics.median(dp_round(False, device) for _ in range(3))
    rows.append(["one DP-SGD round, digits client (1,437 examples, batch 64, 23 steps)",
                 f"{r_old:.2f} s", f"{r_new:.2f} s", f"{r_new / r_old:.2f}x"])
    header = ["what", "torch generator (old, dp-seeded-noise)", "OS CSPRNG (default)", "ratio"]
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {args.threads} torch thread(s)"
    text = (
        "# DP noise: OS CSPRNG against torch's generator\n\n"
        f"Device: {device} ({name}); median of {args.repeats} timings (rounds: of 3). The CSPRNG "
        "reads 8 bytes of os.urandom per Gaussian (53-bit uniforms, Box-Muller in float64 on the "
        "device) and sums 4 Gaussians per noise value as Opacus's secure_mode does.\n\n"
        + markdown_table(header, rows)
        + f"\nCommand: `python benchmarks/dp.py --noise-cost --device {device} --threads {args.threads}`\n"
    )
    write_result(f"dp_noise_{device}.md", text)



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
    p.add_argument("--noise-cost", action="store_true",
                   help="instead: time the CSPRNG noise against torch's generator (dp_noise_<device>.md)")
    p.add_argument("--repeats", type=int, default=9, help="--noise-cost: timings per measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="--noise-cost: where the noise is drawn")
    p.add_argument("--threads", type=int, default=1, help="--noise-cost: torch threads (clients use 1)")
    args = p.parse_args()
    if args.noise_cost:
        noise_cost(args)
        return
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
