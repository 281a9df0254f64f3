"""Helpers shared by the benchmarks: data location, runs, markdown tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA_DIR = Path(os.environ.get("FEDLOOM_DATA", ROOT.parent / "shared" / "data"))


def simulate(run_dir: Path, *args: str) -> list[dict[str, Any]]:
    """Run ``run_sim.py`` as a user would (its own process, from the repo); return its rows.

    A separate process also keeps Ray from handing this folder's sys.path to its workers.
    """
    cmd = [sys.executable, "run_sim.py", *args, "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run_sim failed with status {proc.returncode}: {args}\n{proc.stderr[-2000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def optimizer_phrase(optimizer: str, lr: float, schedule: str, weight_decay: float = 0.0) -> str:
    """How a results file names the local optimizer (momentum 0.9 is run_sim's SGD default)."""
    return (
        f"{optimizer} lr {lr} ({schedule} over the rounds)" + (" momentum 0.9" if optimizer == "sgd" else "")
        + (f" weight decay {weight_decay:g}" if weight_decay else "")
    )


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_result(name: str, text: str) -> Path:
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"written to {path}")
    return path
