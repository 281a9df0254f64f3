"""Decrypt the final model of an encrypted (``--he``) run with a client's secret key.

The server of an ``--he`` run only ever holds the encrypted weighted sum, so it
saves ``model_encrypted.pt``; whoever holds ``secret.ctx`` (the clients) turns it
into the plaintext ``model.pt`` (a torch state dict) with::

    python -m client.decrypt_model RUN_DIR [--secret-context PATH] [--out PATH]

``--secret-context`` defaults to ``secret.ctx`` in the run's recorded
``he-secret-dir`` (where ``run_sim.py --he`` keeps the simulated clients' key,
outside the results folder); on a deployment, pass the copy on a SuperNode machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fedloom.client.he_client import decrypt_global
from fedloom.privacy import he

ENCRYPTED = "model_encrypted.pt"


def decrypt_run(run_dir: Path, secret: Path | None = None) -> dict[str, torch.Tensor]:
    """The plaintext global model of ``run_dir``; ``ValueError`` says what is missing."""
    path = run_dir / ENCRYPTED
    if not path.is_file():
        raise ValueError(f"{path} not found: is {run_dir} the results folder of an --he run?")
    saved = torch.load(path, weights_only=True, map_location="cpu")  # plain data: no code runs
    if not saved.get("total_weight") or saved.get("ciphertexts") is None:
        raise ValueError(f"{path} holds no aggregate: the run ended before its first round finished")
    if "shapes" not in saved:
        raise ValueError(f"{path} was written by an older fedloom without the model's shapes")
    key = secret or recorded_secret(run_dir, saved["he_dir"])
    if not key.is_file() or not (key.parent / he.PARAMS_FILE).is_file():
        raise ValueError(
            f"{key} (with {he.PARAMS_FILE} beside it) not found; pass --secret-context "
            "with a client's copy of secret.ctx"
        )
    he.check_key_id(he.load_params(key.parent), saved.get("key_id", ""), str(key))
    like = {k: torch.zeros(shape) for k, shape in saved["shapes"].items()}
    from fedloom.protocol.records import ciphertext_record

    weights = saved.get("block_weights") or saved["total_weight"]  # per block with randk
    return decrypt_global(ciphertext_record(saved["ciphertexts"]), weights, like, key)


def recorded_secret(run_dir: Path, he_dir: str) -> Path:
    """``secret.ctx`` in the run's ``he-secret-dir`` (from ``config.json``); runs made before
    that key kept it in their ``he-dir``."""
    try:
        run_config = json.loads((run_dir / "config.json").read_text())["run_config"]
    except (OSError, ValueError, KeyError):
        run_config = {}
    return Path(run_config.get("he-secret-dir") or he_dir) / he.SECRET_FILE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m client.decrypt_model", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="results folder of an --he run")
    p.add_argument("--secret-context", type=Path, help="secret.ctx [default: <he-secret-dir>/secret.ctx of the run]")
    p.add_argument("--out", type=Path, help="where to write the state dict [default: RUN_DIR/model.pt]")
    args = p.parse_args(argv)
    try:
        state = decrypt_run(args.run_dir, args.secret_context)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "model.pt"
    torch.save(state, out)
    print(f"wrote {out} ({sum(v.numel() for v in state.values()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
