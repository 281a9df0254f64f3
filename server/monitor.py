"""Per-round bookkeeping: central evaluation, metrics rows, checkpoints, progress."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fedloom.strategies.instrumented import InstrumentedStrategy
from fedloom.tasks.base import DataSplit, Task, TaskData
from fedloom.tasks.training import compute_device, evaluate

from .best import BestRound
from fedloom.strategies.state import chain_state

from .checkpoint import CHECKPOINT, checkpoint_payload
from .privacy import ledger_of, privacy_row, record_release
from .progress import RunProgress
from .results import NODES, ResultsFolder, atomic_write_bytes
from .tracking import TensorBoardLog


class RoundMonitor:
    """Flower calls :meth:`evaluate_fn` after every round; this writes its row."""

    def __init__(
        self,
        *,
        task: Task,
        data: TaskData,
        model: torch.nn.Module,
        strategy: InstrumentedStrategy,
        results: ResultsFolder,
        progress: RunProgress,
        total_rounds: int,
        on_first_round: Any = None,
        central: bool = True,
        initial_arrays: ArrayRecord | None = None,
        best: BestRound | None = None,
        tracking: TensorBoardLog | None = None,
    ) -> None:
        self.task, self.data, self.model = task, data, model
        self.strategy, self.results, self.progress = strategy, results, progress
        self.total_rounds = total_rounds
        self.on_first_round = on_first_round
        self.initial: dict[str, float] = {}
        self.central = central  # False under HE: the server cannot read the model
        self.last_arrays = initial_arrays if initial_arrays is not None else ArrayRecord(model.state_dict())
        self.last_round = 0
        self.privacy = ledger_of(strategy)  # None unless the run is differentially private
        self.best = best
        self.tracking = tracking  # tensorboard=true: the same row as TensorBoard scalars
        strategy.on_model_out = self.model_out

    def model_out(self, server_round: int) -> None:
        """Federated evaluation is about to send round ``server_round``'s model."""
        record_release(self.strategy, self.results.path, server_round)

    def central_metrics(self, arrays: ArrayRecord) -> dict[str, float]:
        """Test metrics, plus ``val_*`` ones when the data set has a validation split
        (MedMNIST's), for picking a round without looking at the test set."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluate(self.model, self.task, self.data.test, device=compute_device())
        val = self.data.info.get("val")
        if isinstance(val, DataSplit) and len(val):
            metrics.update({f"val_{k}": v for k, v in evaluate(self.model, self.task, val, device=compute_device()).items()})
        return metrics

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        offset = self.strategy.round_offset
        plain = self.central or (server_round == 0 and not offset)
        fed = self.strategy.stats.evaluate_metrics
        t0 = time.perf_counter()
        metrics = self.central_metrics(arrays) if plain else {
            k: fed[k] for k in fed if k not in ("num-examples",)
        }
        central_seconds = time.perf_counter() - t0 if plain else 0.0
        if server_round == 0 and offset:
            self.progress.console.print(f"resumed after round {offset}")
            return _record(metrics)
        server_round += offset
        if server_round == 0:
            self.initial = metrics
            self.progress.console.print(
                f"initial model: accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}"
            )
            return _record(metrics)
        stats = self.strategy.stats
        row: dict[str, Any] = {"round": server_round, **metrics}
        row["train_loss"] = stats.train_metrics.get("train_loss")
        if "gpu_memory_mib" in stats.train_metrics:  # clients on CUDA: their mean peak
            row["gpu_memory_mib"] = stats.train_metrics["gpu_memory_mib"]
        row.update({f"fed_{k}": v for k, v in stats.evaluate_metrics.items()})
        row.update(
            num_clients=stats.num_clients,
            failures=stats.failures,
            rejected=stats.rejected,
            bytes_up=stats.bytes_up,
            bytes_down=stats.bytes_down,
            record_bytes_up=stats.record_bytes_up,
            record_bytes_down=stats.record_bytes_down,
            seconds=round(time.perf_counter() - stats.started, 3),
            central_seconds=round(central_seconds, 3),
        )
        if self.privacy is not None:
            row.update(privacy_row(self.privacy, self.results.path))
        self.last_arrays, self.last_round = arrays, server_round
        self.results.add_row(row)
        if self.tracking is not None:
            self.tracking.add_row(row)
        self.checkpoint(server_round)
        if self.best is not None:  # after the checkpoint: best.* never runs ahead of it
            self.best.offer(row, arrays)
        if server_round == 1 and self.on_first_round is not None:
            self.on_first_round()
        self.report_failures(server_round)
        self.results.add_lines(NODES, server_round, [  # on a Ray cluster: where each client ran
            {"node_id": node, "partition_id": self.strategy.partitions.get(node, (None,))[0], **where}
            for node, where in sorted(self.strategy.ran_on.items())
        ])
        self.progress.round_done(row, self.total_rounds)
        return _record(metrics)

    def report_failures(self, server_round: int) -> None:
        """One console line per failed reply of the round, and its failures.jsonl lines."""
        failed = self.strategy.stats.failed
        for f in failed:
            self.progress.console.print(
                f"round {server_round}: node {f['node_id']}"
                + (f" (partition {f['partition_id']})" if "partition_id" in f else "")
                + f" failed in {f['phase']}: {f['reason']}",
                soft_wrap=True, markup=False, highlight=False,
            )
        self.results.add_failures(server_round, failed)

    def checkpoint(self, server_round: int) -> None:
        """Atomically replace ``checkpoint.pt`` with the state after ``server_round``."""
        payload = checkpoint_payload(
            server_round=server_round,
            arrays={k: v.numpy() for k, v in self.last_arrays.items()},
            strategy=chain_state(self.strategy.inner),
            rows=self.results.rows,
            best=self.best.state_dict() if self.best is not None else None,
        )
        atomic_write_bytes(self.results.path / CHECKPOINT, payload)


def _record(metrics: Mapping[str, float]) -> MetricRecord:
    values: dict[str, int | float | list[int] | list[float]] = dict(metrics)
    return MetricRecord(values)


def connected_nodes(grid: Grid) -> int:
    return len(list(grid.get_node_ids()))
