"""A ServerApp with Flower's stock FedAvg, as Flower's quickstart templates write it; it
evaluates the global model centrally each round and writes the result to ``out-dir``.
No fedloom imports."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .task import Net, load_data, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    model = Net()
    initial = ArrayRecord(model.state_dict())
    x, y = load_data()

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(model, x, y)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=float(config["fraction-evaluate"]))
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=int(config["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(config["learning-rate"])}), evaluate_fn=central,
    )
    final = result.arrays.to_torch_state_dict()
    out = {
        "central": {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()},
        "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "federated": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        "changed": any(not (final[k] == v).all().item() for k, v in initial.to_torch_state_dict().items()),
    }
    Path(config["out-dir"]).mkdir(parents=True, exist_ok=True)
    (Path(config["out-dir"]) / "result.json").write_text(json.dumps(out, default=str))
