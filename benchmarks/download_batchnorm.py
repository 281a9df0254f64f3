"""What a lossy download does to a trained BatchNorm model, with its running statistics
quantized like the weights (as before) or sent exact (what fedloom sends).

Takes a finished run folder (``model.pt`` and ``config.json``, e.g. the federated run
of ``benchmarks/pointcloud.py --norm batch``), evaluates its model on the test set as
the server holds it (the baseline), then as a client decodes it from each download
codec, ``--draws`` times (qsgd rounds at random).

Usage: python benchmarks/download_batchnorm.py --run-dir RUN [--codecs fp16 qsgd:8 qsgd:4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import DATA_DIR, markdown_table, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="finished run with a BatchNorm model")
    parser.add_argument("--codecs", nargs="+", default=["fp16", "qsgd:8", "qsgd:4"])
    parser.add_argument("--draws", type=int, default=3, help="random roundings per codec")
    parser.add_argument("--output", default="download_batchnorm.md")
    args = parser.parse_args()

    import numpy as np
    import torch

    from fedloom.compression.exact import join_exact, split_exact
    from fedloom.compression.flat import flatten, layout_of, unflatten
    from fedloom.compression.pipeline import decode, encode
    from fedloom.compression.spec import CodecContext, parse_down_spec
    from fedloom.config import parse_run_config
    from fedloom.tasks.registry import get_task, load_task_data
    from fedloom.tasks.training import evaluate

    missing = [name for name in ("config.json", "model.pt") if not (args.run_dir / name).is_file()]
    if missing:
        parser.error(f"--run-dir {args.run_dir} is not a finished run: no {' or '.join(missing)}")
    try:
        chains = {spec: parse_down_spec(spec) for spec in args.codecs}
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(1)
    run_config = json.loads((args.run_dir / "config.json").read_text())["run_config"]
    cfg = parse_run_config(run_config)
    data_dir = cfg.data_dir if Path(cfg.data_dir).exists() else str(DATA_DIR / cfg.dataset)
    task = get_task(cfg.task, cfg.task_options())
    data = load_task_data(cfg.task, data_dir, cfg.dataset, cfg.task_options())
    model = task.build_model(data).eval()
    state = torch.load(args.run_dir / "model.pt")
    ref = {k: v.numpy() for k, v in state.items()}
    coded, exact = split_exact(ref)
    if not exact:
        raise SystemExit(f"{args.run_dir}: the model has no BatchNorm statistics; nothing to compare")

    def accuracy(arrays: dict[str, np.ndarray]) -> float:
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
        return evaluate(model, task, data.test)["accuracy"]

    def lossy(chain, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        payload = encode(chain, flatten(arrays), CodecContext(layout_of(arrays), rng=rng))
        return unflatten(decode(chain, payload, CodecContext(layout_of(arrays))), arrays)

    baseline = accuracy(ref)
    print(f"{args.run_dir}: test accuracy {baseline:.4f} as the server holds it")
    rows = []
    for spec, chain in chains.items():
        quantized, kept = [], []
        for draw in range(args.draws):
            quantized.append(accuracy(lossy(chain, ref, np.random.default_rng(draw))))
            part = lossy(chain, coded, np.random.default_rng(draw))
            kept.append(accuracy(join_exact(ref, part, exact)))
        print(f"{spec}: statistics quantized {quantized}, exact {kept}")
        rows.append([
            f"`{spec}`", f"{baseline:.4f}", ", ".join(f"{a:.4f}" for a in quantized),
            ", ".join(f"{a:.4f}" for a in kept), f"{np.mean(kept) - np.mean(quantized):+.4f}",
        ])
    values = sum(v.size for v in ref.values())
    text = (
        f"# A lossy download of a trained BatchNorm model\n\n"
        f"Model: `{args.run_dir}` ({cfg.task}, {cfg.dataset}, {values:,} values, of them "
        f"{sum(v.size for v in exact.values()):,} BatchNorm statistics); test set of {len(data.test)}. "
        f"Each codec rounds {args.draws} times (seeds 0-{args.draws - 1}); the same draws with the "
        f"statistics quantized like the weights and sent exact.\n\n"
        f"Command: `python benchmarks/download_batchnorm.py --run-dir {args.run_dir} "
        f"--codecs {' '.join(args.codecs)} --draws {args.draws}`\n\n"
        + markdown_table(
            ["download", "exact model", "statistics quantized", "statistics exact", "mean gain"], rows
        )
    )
    write_result(args.output, text)


if __name__ == "__main__":
    main()
