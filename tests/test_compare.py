"""python -m fedloom.compare: overlaid plots and a summary table of finished runs."""

import json

import pytest

from fedloom import compare
from fedloom.api import load_run


def fake_run(folder, rows, run_config=None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run_config": run_config or {"task": "digits"}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_cumulative_sums_bytes_per_round():
    assert compare.cumulative([3, 0, 4.5]) == [3, 3, 7.5]


def test_summary_takes_final_and_best_minimising_losses(tmp_path):
    rows = [
        {"round": 1, "accuracy": 0.6, "loss": 0.9, "bytes_up": 100, "seconds": 2.0, "epsilon": 1.5},
        {"round": 2, "accuracy": 0.8, "loss": 0.4, "bytes_up": 50, "seconds": 1.0, "epsilon": 2.5},
        {"round": 3, "accuracy": 0.7, "loss": 0.5, "bytes_up": 50, "seconds": 1.5, "epsilon": 3.0},
    ]
    run = load_run(fake_run(tmp_path / "a", rows))
    acc = compare.summarize(run, "accuracy", "a")
    assert (acc.final, acc.best, acc.best_round) == (0.7, 0.8, 2)
    assert (acc.rounds, acc.bytes_up, acc.epsilon, acc.seconds) == (3, 200, 3.0, 4.5)
    loss = compare.summarize(run, "loss", "a")
    assert (loss.final, loss.best, loss.best_round) == (0.5, 0.4, 2)
    table = compare.format_table("loss", [loss]).splitlines()
    assert table[0].split()[:3] == ["run", "final", "loss"]
    assert table[1].split() == ["a", "0.5000", "0.4000", "(2)", "3", "0.00", "3.00", "4.5"]


def test_bad_input_is_one_line_with_the_valid_choices_and_exit_2(tmp_path, capsys):
    a = fake_run(tmp_path / "a", [{"round": 1, "accuracy": 0.5, "loss": 1.0, "auc": 0.7}])
    b = fake_run(tmp_path / "b", [{"round": 1, "accuracy": 0.6, "loss": 0.9}])
    assert compare.main([str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing is not a fedloom results folder" in err
    # auc is in one run only: not comparable
    assert compare.main([str(a), str(b), "--metric", "auc", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith("unknown metric auc (not in every run); valid: accuracy, loss")
    assert not (tmp_path / "o").exists()
    empty = fake_run(tmp_path / "empty", [])
    assert compare.main([str(empty)]) == 2
    assert "no metrics rows" in capsys.readouterr().err


@pytest.mark.e2e
def test_compare_two_digits_runs(digits_runs, tmp_path, capsys):
    runs_dir, _ = digits_runs
    plain, small = runs_dir / "plain", runs_dir / "qsgd4"
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert compare.main([str(plain), str(small), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "loss.png"]
    assert all((out / name).stat().st_size > 10_000 for name in ("accuracy.png", "loss.png"))
    lines: dict = {}
    for line in printed.splitlines():  # the accuracy table comes first
        if line.startswith(("plain", "qsgd4")):
            lines.setdefault(line.split()[0], line.split())
    runs = {name: load_run(runs_dir / name) for name in ("plain", "qsgd4")}
    for name, run in runs.items():
        first = lines[name]
        assert first[1] == f"{run.rows[-1]['accuracy']:.4f}" and first[4] == "2"
        assert first[5] == f"{sum(r['bytes_up'] for r in run.rows) / 2**20:.2f}"
    # qsgd:4 uploads about 8x fewer bytes than float32
    assert sum(r["bytes_up"] for r in runs["qsgd4"].rows) * 6 < sum(r["bytes_up"] for r in runs["plain"].rows)
