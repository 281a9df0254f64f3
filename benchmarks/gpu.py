"""Clients on a GPU: McMahan et al.'s MNIST setting, and round time against clients per GPU.

Part 1 runs the MNIST CNN setting of McMahan et al. 2017 (100 clients, C=0.1, E=5, B=10,
IID) and reports the first round reaching 99% test accuracy (the paper: 20 rounds) and
seconds per round. Part 2 runs the same clients for a few rounds at 1, 4, 8 and 16
clients per GPU (``--client-gpus 1/k``) and reports seconds per round against the 1-per-GPU
baseline of the same script, with the GPU's mean utilization and peak memory in use,
sampled every 0.5 s by ``nvidia-smi``.

Needs CUDA and nvidia-smi; ``--dry-run`` runs the same code on the CPU with tiny settings
(to check the script, not to measure). Usage:
    python benchmarks/gpu.py --data-dir ../shared/data [--rounds 30] [--share-rounds 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from common import DATA_DIR, markdown_table, simulate, write_result

MCMAHAN = ["--task", "mnist", "--num-clients", "100", "--fraction", "0.1", "--local-epochs", "5",
           "--batch-size", "10", "--partition", "iid"]
TINY = ["--task", "digits", "--num-clients", "4", "--fraction", "0.5", "--local-epochs", "1"]


class GpuSampler:
    """Mean utilization (%) and peak memory in use (MiB) of GPU 0 while it runs."""

    def __init__(self, enabled: bool) -> None:
        self.util: list[float] = []
        self.memory: list[float] = []
        self._proc: subprocess.Popen[str] | None = None
        self._enabled = enabled

    def __enter__(self) -> GpuSampler:
        if self._enabled:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, text=True,
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            util, mem = (float(v) for v in line.split(","))
            self.util.append(util)
            self.memory.append(mem)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._reader.join(timeout=5)

    def summary(self) -> tuple[str, str]:
        if not self.util:
            return "n/a", "n/a"
        return f"{statistics.fmean(self.util):.0f}", f"{max(self.memory) / 1024:.1f}"


def steady_seconds(rows: list[dict[str, Any]]) -> float:
    """Median seconds per round after the first (which also starts the actors)."""
    later = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
    return statistics.median(later)


def run(out: Path, name: str, args: list[str], sample: bool) -> tuple[list[dict[str, Any]], GpuSampler]:
    with GpuSampler(sample) as gpu:
        rows = simulate(out / name, *args)
    return rows, gpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DATA_DIR))
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the McMahan run")
    parser.add_argument("--share-rounds", type=int, default=4, help="rounds per clients-per-GPU setting")
    parser.add_argument("--per-gpu", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--dry-run", action="store_true", help="CPU, digits, tiny: checks the script only")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        sys.exit("benchmarks/gpu.py: error: needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "--dry-run checks the script on the CPU")
    sample = cuda and shutil.which("nvidia-smi") is not None
    base = TINY if args.dry_run else [*MCMAHAN, "--data-dir", args.data_dir]
    device = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows, gpu = run(out, "mcmahan", [*base, "--rounds", str(args.rounds)], sample)
        first99 = next((r["round"] for r in rows if r["accuracy"] >= 0.99), None)
        util, mem = gpu.summary()
        part1 = markdown_table(
            ["rounds run", "first round at 99%", "McMahan et al.", "final accuracy",
             "round 1 s", "s/round after", "GPU util %", "GPU GiB used"],
            [[len(rows), first99 or "not reached", 20, f"{rows[-1]['accuracy']:.4f}",
              f"{rows[0]['seconds']:.1f}", f"{steady_seconds(rows):.1f}", util, mem]],
        )
        table = []
        baseline = None
        for k in args.per_gpu:
            rows, gpu = run(out, f"per-gpu-{k}", [*base, "--rounds", str(args.share_rounds),
                                                  "--client-gpus", f"{1 / k:.6f}" if cuda else "0"], sample)
            seconds = steady_seconds(rows)
            baseline = baseline or seconds
            util, mem = gpu.summary()
            peak = max((r.get("gpu_memory_mib") or 0) for r in rows)
            table.append([k, f"{seconds:.2f}", f"{baseline / seconds:.2f}x", util, mem,
                          f"{peak:.0f}" if peak else "n/a"])
        part2 = markdown_table(
            ["clients per GPU", "s/round (median after round 1)", "speed vs 1 per GPU",
             "GPU util %", "GPU GiB used", "peak MiB per client"],
            table,
        )
    setting = " ".join(base)
    text = (
        f"# Clients on a GPU\n\nDevice: {device}. Setting: `{setting}`.\n\n"
        f"## McMahan et al.'s MNIST setting\n\n{part1}\n"
        f"## Round time against clients per GPU ({args.share_rounds} rounds each)\n\n{part2}"
    )
    write_result("gpu_dry_run.md" if args.dry_run else "gpu.md", text)


if __name__ == "__main__":
    main()
