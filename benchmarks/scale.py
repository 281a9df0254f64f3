"""Population scale: cost of a simulation against the number of clients, and
client-level DP at a large population against a small one.

Part 1: MNIST with ``--num-clients P`` and ``--fraction 100/P`` (100 clients per
round) for each population P: start-up seconds (launch to the start of round 1),
seconds per round (mean of the rounds after the first, which also starts the
actors), peak memory of the whole process tree (driver, Ray's own processes and the
client actors: proportional set sizes from /proc, sampled every 0.5 s and summed,
so shared libraries are counted once), and the sizes of checkpoint.pt and
partitions.json. The baseline is the smallest population, measured in the same
script.

Part 2: ``dp=client`` with the same target epsilon at two populations (default
10,000 and 100) and 100 clients per round: the noise multiplier the budget buys,
final accuracy and epsilon.

Usage: python benchmarks/scale.py [--populations 100 1000 10000 50000] [--rounds 3]
       [--dp-populations 10000 100] [--dp-rounds 100] [--dp-target-epsilon 2]
       [--dp-run-config 'mnist-model=dp-cnn'] [--dp-plot scale_dp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import DATA_DIR, RESULTS, ROOT, markdown_table, write_result



def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(run_dir: Path, args: list[str]) -> dict[str, Any]:
    """``run_sim.py args`` in its own session; wall seconds, start-up seconds, peak tree PSS."""
    cmd = [sys.executable, "run_sim.py", *args, "--run-dir", str(run_dir)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    peak, first_row = 0, None
    while proc.poll() is None:
        peak = max(peak, sum(pss_bytes(p) for p in process_tree(proc.pid)))
        if first_row is None and (run_dir / "metrics.jsonl").is_file():
            first_row = time.monotonic() - start
        time.sleep(0.5)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"run_sim failed ({proc.returncode}): {args}\n{proc.stderr.read()[-2000:] if proc.stderr else ''}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
    return {
        "rows": rows, "wall": wall, "peak": peak,
        "startup": (first_row or wall) - rows[0]["seconds"] - rows[0].get("central_seconds", 0.0),
        "per_round": sum(steady) / len(steady),
        "checkpoint": (run_dir / "checkpoint.pt").stat().st_size,
        "partitions": (run_dir / "partitions.json").stat().st_size,
    }


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def population_table(populations: list[int], per_round: int, rounds: int, data_dir: str, tmp: Path) -> str:
    rows = []
    for p in populations:
        got = run(tmp / f"pop{p}", ["--task", "mnist", "--data-dir", data_dir, "--num-clients", str(p),
                                    "--fraction", f"{min(per_round / p, 1.0):.10g}", "--rounds", str(rounds),
                                    "--seed", "1"])
        print(f"population {p}: {got['wall']:.1f} s, peak {mib(got['peak'])} MiB", flush=True)
        rows.append([f"{p:,}", f"{got['startup']:.1f}", f"{got['per_round']:.1f}", mib(got["peak"]),
                     f"{got['checkpoint'] / 2**20:.2f}", f"{got['partitions'] / 2**10:.0f}",
                     f"{got['rows'][-1]['accuracy']:.4f}", f"{got['wall']:.0f}"])
    return markdown_table(
        ["clients", "start-up s", "s / round", "peak MiB (tree PSS)", "checkpoint MiB",
         "partitions.json KiB", f"accuracy after {rounds}", "wall s"], rows)


def dp_table(populations: list[int], per_round: int, rounds: int, target: float, data_dir: str, tmp: Path,
             run_config: str = "", plot_prefix: str = "") -> str:
    rows, run_dirs = [], []
    for p in populations:
        run_dir = tmp / f"{p:,}-clients".replace(",", "_")
        run_dirs.append(run_dir)
        got = run(run_dir, ["--task", "mnist", "--data-dir", data_dir, "--num-clients", str(p),
                            "--fraction", f"{min(per_round / p, 1.0):.10g}", "--rounds", str(rounds),
                            "--seed", "1", "--dp", "client", "--dp-target-epsilon", str(target),
                            "--dp-clipping-norm", "1.0", *(["--run-config", run_config] if run_config else [])])
        last = got["rows"][-1]
        noise = noise_of(run_dir)
        print(f"dp=client population {p}: accuracy {last['accuracy']:.4f} epsilon {last['epsilon']:.3f}", flush=True)
        rows.append([f"{p:,}", f"{min(per_round, p) / p:.4g}", f"{noise:.3f}", f"{last['accuracy']:.4f}",
                     f"{last['epsilon']:.3f}", f"{got['per_round']:.1f}"])
    table = markdown_table(["clients", "sampling rate q", "noise multiplier z", "final accuracy",
                            "final epsilon", "s / round"], rows)
    if plot_prefix:
        table += "\n" + plot_runs(run_dirs, plot_prefix)
    return table


def plot_runs(run_dirs: list[Path], prefix: str) -> str:
    """Accuracy and epsilon of the runs against the round (fedloom.compare's plots), as
    PNGs beside the results file; the markdown that shows them."""
    from fedloom.api import load_run
    from fedloom.compare import plot_comparison

    runs = [load_run(d) for d in run_dirs]
    names = [d.name.replace("_", ",") for d in run_dirs]
    lines = []
    for metric in ("accuracy", "epsilon"):
        png = plot_comparison(runs, names, metric, RESULTS / f"{prefix}_{metric}.png")
        print(f"plot: {png}", flush=True)
        lines.append(f"![{metric} against the round]({png.name})\n")
    return "\n".join(lines)


def noise_of(run_dir: Path) -> float:
    """The noise multiplier a dp=client run used (its checkpointed client-DP state)."""
    import torch

    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")
    return next(float(s["state"]["noise"]) for s in saved["strategy"] if "noise" in s["state"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="*", default=[100, 1000, 10000, 50000])
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dp-populations", type=int, nargs="*", default=[10000, 100])
    parser.add_argument("--dp-rounds", type=int, default=100)
    parser.add_argument("--dp-target-epsilon", type=float, default=2.0)
    parser.add_argument("--dp-run-config", default="",
                        help="extra run config of the DP runs, e.g. 'mnist-model=dp-cnn'")
    parser.add_argument("--dp-plot", default="scale_dp",
                        help="prefix of the DP part's PNGs in benchmarks/results ('' for none)")
    parser.add_argument("--data-dir", default=str(DATA_DIR))
    parser.add_argument("--out", default="scale.md")
    parser.add_argument("--note", default="", help="a sentence on what ran, for the results file")
    args = parser.parse_args()
    cores = os.cpu_count()
    text = [
        "# Population scale\n",
        f"`python benchmarks/scale.py {' '.join(sys.argv[1:])}` on {platform.machine()}, {cores} cores "
        f"(shared with other jobs while it ran), Python {platform.python_version()}. {args.note}\n",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if args.populations:
            text += [
                f"\n## Cost against the population (MNIST, {args.per_round} clients per round, "
                f"{args.rounds} rounds, FedAvg)\n\n",
                "Start-up: launch to the start of round 1. s / round: mean of rounds 2 on (round 1 "
                "also starts the actors). Peak memory: the proportional set sizes of the whole "
                "process tree (driver, Ray, client actors), sampled every 0.5 s and summed. The "
                f"baseline is the first row ({args.populations[0]:,} clients).\n\n",
                population_table(args.populations, args.per_round, args.rounds, args.data_dir, Path(tmp)),
            ]
        if args.dp_populations:
            text += [
                f"\n## Client-level DP at the same budget (dp=client, target epsilon "
                f"{args.dp_target_epsilon:g} at delta 1e-5, {args.dp_rounds} rounds, {args.per_round} clients "
                f"per round, fixed clipping 1.0{', ' + args.dp_run_config if args.dp_run_config else ''})\n\n",
                "The noise multiplier is the smallest that keeps the run within the target "
                "(Opacus RDP, calibrated for the planned rounds).\n\n",
                dp_table(args.dp_populations, args.per_round, args.dp_rounds, args.dp_target_epsilon,
                         args.data_dir, Path(tmp), args.dp_run_config, args.dp_plot),
            ]
    write_result(args.out, "".join(text))


if __name__ == "__main__":
    main()
