"""Encrypted aggregation cost for the MNIST CNN (1,663,370 parameters).

Part 1 (pipeline, one process): 10 clients' weights; per round the client-side
encrypt (and plaintext serialize), the server-side aggregate, the client-side
decrypt, bytes up and down per client. Plaintext = FedAvg on float32 arrays.
Part 2 (simulation): whole MNIST rounds with and without --he, same seed and
clients, steady-state round time as a ratio.

Usage: python benchmarks/he.py [--clients 10] [--sim-clients 4] [--sim-rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, markdown_table, simulate, write_result


def pipeline(num_clients: int) -> list[list[str]]:
    import torch
    from flwr.app import ArrayRecord

    from client.he_client import decrypt_global, encrypt_local
    from privacy import he
    from strategies.encrypted import record_ciphertexts
    from tasks.mnist import MnistCNN

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = MnistCNN().state_dict()
    n_params = sum(v.numel() for v in base.values())
    states = [{k: v + 0.01 * torch.randn_like(v) for k, v in base.items()} for _ in range(num_clients)]
    weights = [600 + 10 * i for i in range(num_clients)]
    tmp = Path(tempfile.mkdtemp())
    try:
        params = he.provision(tmp / "keys", clip=8.0, max_weight=60_000)
        key = tmp / "keys" / he.SECRET_FILE

        t0 = time.perf_counter()
        plain_up = [ArrayRecord(s) for s in states]
        t_plain_ser = (time.perf_counter() - t0) / num_clients
        t0 = time.perf_counter()
        total = sum(weights)
        mean = {k: sum(r[k].numpy() * (w / total) for r, w in zip(plain_up, weights)) for k in base}
        t_plain_agg = time.perf_counter() - t0
        del mean
        plain_bytes = plain_up[0].count_bytes()

        t0 = time.perf_counter()
        uploads = [encrypt_local(s, w, key) for s, w in zip(states, weights)]
        t_enc = (time.perf_counter() - t0) / num_clients
        he_bytes = uploads[0].count_bytes()
        t0 = time.perf_counter()
        ctx = he.public_context(tmp / "keys")
        summed = he.add_all([he.deserialize(ctx, record_ciphertexts(u)) for u in uploads])
        t_agg = time.perf_counter() - t0
        from strategies.encrypted import ciphertext_record

        agg = ciphertext_record(summed)
        t0 = time.perf_counter()
        decrypted = decrypt_global(agg, total, base, key)
        t_dec = time.perf_counter() - t0
        expected = {k: sum(s[k] * w for s, w in zip(states, weights)) / total for k in base}
        rel = max(float(torch.linalg.norm(decrypted[k] - expected[k]) / torch.linalg.norm(expected[k]))
                  for k in base if torch.linalg.norm(expected[k]) > 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        ["bytes up per client", f"{plain_bytes:,}", f"{he_bytes:,}", f"{he_bytes / plain_bytes:.2f}x"],
        ["bytes up per parameter", f"{plain_bytes / n_params:.2f}", f"{he_bytes / n_params:.2f}", ""],
        ["bytes down per client", f"{plain_bytes:,}", f"{agg.count_bytes():,}", f"{agg.count_bytes() / plain_bytes:.2f}x"],
        ["client encrypt / serialize (s)", f"{t_plain_ser:.3f}", f"{t_enc:.3f}", f"{t_enc / max(t_plain_ser, 1e-9):.0f}x"],
        [f"server aggregate, {num_clients} clients (s)", f"{t_plain_agg:.3f}", f"{t_agg:.3f}", f"{t_agg / t_plain_agg:.1f}x"],
        ["client decrypt (s)", "0", f"{t_dec:.3f}", ""],
        ["max relative error vs plaintext FedAvg", "0", f"{rel:.1e}", ""],
    ]
    print(f"HE parameters: {params}")
    return rows


def simulation(clients: int, rounds: int) -> list[list[str]]:
    common = ["--task", "mnist", "--data-dir", str(DATA_DIR), "--num-clients", str(clients),
              "--rounds", str(rounds), "--seed", "11", "--batch-size", "32"]
    out = {}
    for label, extra in (("plaintext", ["--run-config", "fraction-evaluate=1.0"]), ("HE", ["--he"])):
        with tempfile.TemporaryDirectory() as tmp:
            out[label] = simulate(Path(tmp), *common, *extra)
    plain, enc = out["plaintext"][-1], out["HE"][-1]
    return [
        [f"round {rounds} seconds", f"{plain['seconds']:.1f}", f"{enc['seconds']:.1f}",
         f"{enc['seconds'] / plain['seconds']:.2f}x"],
        ["bytes up (round)", f"{plain['bytes_up']:,}", f"{enc['bytes_up']:,}", f"{enc['bytes_up'] / plain['bytes_up']:.2f}x"],
        ["accuracy (federated)", f"{plain['fed_accuracy']:.4f}", f"{enc['accuracy']:.4f}", ""],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--sim-clients", type=int, default=4)
    parser.add_argument("--sim-rounds", type=int, default=2)
    args = parser.parse_args()
    header = ["measure", "plaintext", "HE (BFV)", "HE / plaintext"]
    text = (
        "# Encrypted aggregation, MNIST CNN (1,663,370 parameters)\n\n"
        "BFV via TenSEAL, N=4096, coefficient moduli [56, 53] (109 bits, 128-bit security), "
        "40-bit plain modulus, one fixed-point weight per slot; one thread.\n\n"
        f"## Pipeline, {args.clients} clients\n\n" + markdown_table(header, pipeline(args.clients))
        + f"\n## Simulation, {args.sim_clients} clients, all per round, 1 local epoch\n\n"
        + markdown_table(header, simulation(args.sim_clients, args.sim_rounds))
    )
    write_result("he.md", text)


if __name__ == "__main__":
    main()
