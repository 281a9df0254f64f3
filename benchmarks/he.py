"""Encrypted aggregation cost for the MNIST CNN (1,663,370 parameters).

Part 1 (pipeline, one process): 10 clients' weights; per round the client-side
encrypt (and plaintext serialize), the server-side aggregate, the client-side
decrypt, bytes up and down per client, and the error against plaintext FedAvg.
Plaintext = FedAvg on float32 arrays. Every HE profile: one fixed-point value
per BFV slot (``he-pack=1``, the default), two (``he-pack=2``), and CKKS
(``he-scheme=ckks``); plus the usual TenSEAL setup as a baseline (CKKS N=8192,
moduli [60, 40, 40], one vector per layer: NVIDIA FLARE's defaults).
Part 2 (simulation): whole MNIST rounds without HE and with each profile, same
seed and clients, steady-state round time as a ratio.

Usage: python benchmarks/he.py [--clients 10] [--sim-clients 4] [--sim-rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, markdown_table, simulate, write_result

#: (label, scheme, values per slot) of every fedloom HE profile measured.
PROFILES = (("BFV, 1 value/slot", "bfv", 1), ("BFV, 2 values/slot", "bfv", 2), ("CKKS, 1 value/slot", "ckks", 1))


def pipeline_baseline(states, weights, base) -> dict[str, float]:
    """The usual TenSEAL CKKS setup (one vector per layer, N=8192), same clients: sizes,
    encrypt and aggregate time (its decryption is the same TenSEAL call, not measured)."""
    from fedloom.privacy import he

    ctx = he.baseline_ckks_context()  # keys once, as provisioning is for fedloom's profiles
    t0 = time.perf_counter()
    uploads = [he.encrypt_layers(ctx, [(v * w).numpy() for v in s.values()]) for s, w in zip(states, weights)]
    t_enc = (time.perf_counter() - t0) / len(states)
    t0 = time.perf_counter()
    agg = he.add_all([he.deserialize(ctx, u, scheme="ckks") for u in uploads])
    t_agg = time.perf_counter() - t0
    return {"up": sum(len(c) for c in uploads[0]), "down": sum(len(c) for c in agg), "enc": t_enc,
            "agg": t_agg, "dec": float("nan"), "err": float("nan")}


def pipeline_he(states, weights, base, scheme: str, values_per_slot: int) -> dict[str, float]:
    """One round of encrypted aggregation with ``values_per_slot`` values per slot."""
    import torch

    from fedloom.client.he_client import decrypt_global, encrypt_local
    from fedloom.privacy import he
    from fedloom.protocol.records import ciphertext_record, record_ciphertexts

    tmp = Path(tempfile.mkdtemp())
    try:
        params = he.provision(tmp / "keys", tmp / "server", clip=8.0, max_weight=60_000, values_per_slot=values_per_slot,
                              scheme=scheme)
        print(f"HE parameters: {params}")
        key = tmp / "keys" / he.SECRET_FILE
        t0 = time.perf_counter()
        uploads = [encrypt_local(s, w, key) for s, w in zip(states, weights)]
        t_enc = (time.perf_counter() - t0) / len(states)
        t0 = time.perf_counter()
        ctx = he.public_context(tmp / "server")
        agg = ciphertext_record(
            he.add_all([he.deserialize(ctx, record_ciphertexts(u), scheme=scheme) for u in uploads])
        )
        t_agg = time.perf_counter() - t0
        t0 = time.perf_counter()
        total = sum(weights)
        decrypted = decrypt_global(agg, total, base, key)
        t_dec = time.perf_counter() - t0
        expected = {k: sum(s[k] * w for s, w in zip(states, weights)) / total for k in base}
        rel = max(float(torch.linalg.norm(decrypted[k] - expected[k]) / torch.linalg.norm(expected[k]))
                  for k in base if torch.linalg.norm(expected[k]) > 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"up": uploads[0].count_bytes(), "down": agg.count_bytes(), "enc": t_enc,
            "agg": t_agg, "dec": t_dec, "err": rel}


def pipeline(num_clients: int) -> list[list[str]]:
    import torch
    from flwr.app import ArrayRecord

    from fedloom.tasks.mnist import MnistCNN

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = MnistCNN().state_dict()
    n_params = sum(v.numel() for v in base.values())
    states = [{k: v + 0.01 * torch.randn_like(v) for k, v in base.items()} for _ in range(num_clients)]
    weights = [600 + 10 * i for i in range(num_clients)]

    t0 = time.perf_counter()
    plain_up = [ArrayRecord(s) for s in states]
    t_ser = (time.perf_counter() - t0) / num_clients
    t0 = time.perf_counter()
    total = sum(weights)
    mean = {k: sum(r[k].numpy() * (w / total) for r, w in zip(plain_up, weights)) for k in base}
    t_plain_agg = time.perf_counter() - t0
    del mean
    plain = {"up": plain_up[0].count_bytes(), "down": plain_up[0].count_bytes(), "enc": t_ser,
             "agg": t_plain_agg, "dec": 0.0, "err": 0.0}
    runs = [pipeline_he(states, weights, base, scheme, v) for _, scheme, v in PROFILES]
    runs.append(pipeline_baseline(states, weights, base))

    def row(label: str, key: str, fmt: str, ratio: bool = True) -> list[str]:
        cells = [label, format(plain[key], fmt)]
        for r in runs:
            if r[key] != r[key]:  # nan: not measured
                cells += ["n/a", ""]
                continue
            cells += [format(r[key], fmt), f"{r[key] / plain[key]:.2f}x" if ratio else ""]
        return cells

    per_param = ["bytes up per parameter", f"{plain['up'] / n_params:.2f}"]
    for r in runs:
        per_param += [f"{r['up'] / n_params:.2f}", ""]
    return [
        row("bytes up per client", "up", ","),
        per_param,
        row("bytes down per client", "down", ","),
        row("client encrypt / serialize (s)", "enc", ".3f"),
        row(f"server aggregate, {num_clients} clients (s)", "agg", ".3f"),
        row("client decrypt (s)", "dec", ".3f", ratio=False),
        row("max relative error vs plaintext FedAvg (per tensor, L2)", "err", ".1e", ratio=False),
    ]


def simulation(clients: int, rounds: int) -> list[list[str]]:
    common = ["--task", "mnist", "--data-dir", str(DATA_DIR), "--num-clients", str(clients),
              "--rounds", str(rounds), "--seed", "11", "--batch-size", "32"]
    runs = [("plaintext", ["--run-config", "fraction-evaluate=1.0"])]
    runs += [(label, ["--he", "--he-scheme", scheme, "--run-config", f"he-pack={v}"]) for label, scheme, v in PROFILES]
    out = {}
    for label, extra in runs:
        with tempfile.TemporaryDirectory() as tmp:
            row = simulate(Path(tmp), *common, *extra)[-1]
            # The plaintext server also evaluates on the central test set; HE servers cannot.
            row["seconds"] -= row.get("central_seconds", 0.0)
            out[label] = row
            print(f"{label}: {row['seconds']:.1f} s in round {rounds} (central evaluation left out)", flush=True)
    plain = out["plaintext"]
    he_runs = [out[label] for label, _, _ in PROFILES]
    secs = [f"round {rounds} seconds (without central evaluation)", f"{plain['seconds']:.1f}"]
    up = ["bytes up (round)", f"{plain['bytes_up']:,}"]
    acc = ["accuracy (federated)", f"{plain['fed_accuracy']:.4f}"]
    for r in he_runs:
        secs += [f"{r['seconds']:.1f}", f"{r['seconds'] / plain['seconds']:.2f}x"]
        up += [f"{r['bytes_up']:,}", f"{r['bytes_up'] / plain['bytes_up']:.2f}x"]
        acc += [f"{r['accuracy']:.4f}", ""]
    return [secs, up, acc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--sim-clients", type=int, default=4)
    parser.add_argument("--sim-rounds", type=int, default=2)
    args = parser.parse_args()
    header = ["measure", "plaintext"]
    for label, _, _ in PROFILES:
        header += [label, "/ plaintext"]
    baseline = "usual TenSEAL CKKS (N=8192, per layer)"
    text = (
        "# Encrypted aggregation, MNIST CNN (1,663,370 parameters)\n\n"
        "TenSEAL, N=4096, 109-bit coefficient modulus (128-bit security), one thread. "
        "BFV 1 value/slot (`he-pack=1`, default): moduli [56, 53], 40-bit plain prime. "
        "BFV 2 values/slot (`he-pack=2`, BatchCrypt-style): moduli [60, 49], 48-bit plain prime, "
        "two 24-bit lanes. CKKS (`he-scheme=ckks`): moduli [60, 49], scale 2^19, 2,048 slots, "
        "fixed-point integers below 2^38 rounded after decryption. Fixed-point clip 8, max weight "
        f"60,000. Baseline ({baseline}): N=8192, moduli [60, 40, 40], scale 2^40, one "
        "public-key encrypted vector per layer (NVIDIA FLARE's defaults; 140 bits of modulus, "
        "128-bit security).\n\n"
        f"## Pipeline, {args.clients} clients\n\n"
        + markdown_table([*header, baseline, "/ plaintext"], pipeline(args.clients))
        + f"\n## Simulation, {args.sim_clients} clients, all per round, 1 local epoch\n\n"
        + markdown_table(header, simulation(args.sim_clients, args.sim_rounds))
    )
    write_result("he.md", text)


if __name__ == "__main__":
    main()
