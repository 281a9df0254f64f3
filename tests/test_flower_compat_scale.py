"""Flower's simulation runtime does no start-up or per-round work for clients that never train."""

from __future__ import annotations

import threading
from queue import Queue
from unittest.mock import Mock

from flwr.compat.client import run_info_store
from flwr.server.superlink.fleet.vce import vce_api
from flwr.supercore.run import Run

from fedloom.run_sim import APP_DIR
from fedloom.flower_compat import deliver_pending, population_scale


def test_node_contexts_share_one_parse_of_the_run_config(monkeypatch):
    parses = []
    real = run_info_store.get_fused_config_from_dir
    monkeypatch.setattr(run_info_store, "get_fused_config_from_dir",
                        lambda path, override: parses.append(path) or real(path, override))
    run = Run.create_empty(run_id=7)
    run.override_config = {"seed": 3}
    mapping = {1000 + i: i for i in range(500)}
    with population_scale():
        stores = vce_api._register_node_info_stores(mapping, run, app_dir=str(APP_DIR))
    assert len(parses) == 1  # Flower parsed pyproject.toml once per node: 500 times
    configs = [stores[n].retrieve_context(run_id=7).run_config for n in mapping]
    assert configs[0]["seed"] == 3 and all(c is configs[0] for c in configs)
    assert run_info_store.get_fused_config_from_dir is not real  # still patched by the test...
    assert vce_api.add_messages_to_queue is not deliver_pending  # ...but the context manager undid its own


class FakeState:
    """The in-memory link state's two fields deliver_pending reads, and its ask."""

    def __init__(self, waiting: dict[str, int]) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = {
            mid: Mock(metadata=Mock(dst_node_id=node, delivered_at="")) for mid, node in waiting.items()
        }
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int) -> list:
        self.asked.append(node_id)
        found = [m for m in self.message_ins_store.values()
                 if m.metadata.dst_node_id == node_id and m.metadata.delivered_at == ""][:limit]
        for m in found:
            m.metadata.delivered_at = "now"
        return found


def test_only_nodes_with_a_message_waiting_are_asked():
    state = FakeState({"a": 30, "b": 10, "c": 20})
    mapping = {n: n for n in range(10_000)}  # 10,000 registered nodes, 3 with a message
    queue: Queue = Queue()
    stop = threading.Event()
    thread = threading.Thread(target=deliver_pending, args=(state, queue, mapping, stop))
    thread.start()
    got = [queue.get(timeout=10).metadata.dst_node_id for _ in range(3)]
    stop.set()
    thread.join(timeout=10)
    assert got == [10, 20, 30]  # in the nodes' registration order
    assert state.asked == [10, 20, 30]  # Flower's loop asked all 10,000 nodes every 0.1 s


def test_partitions_json_writes_a_line_per_client_and_reads_back_the_same(tmp_path):
    import json

    from fedloom.server.results import ResultsFolder

    record = {"partition": "iid", "seed": 1, "num_partitions": 10_000,
              "clients": [{"partition_id": i, "size": 6, "label_counts": [1, 0, 2, 0, 1, 0, 0, 1, 1, 0]}
                          for i in range(10_000)], "nodes": []}
    results = ResultsFolder(tmp_path)
    results.write_json("partitions.json", record, per_line=("clients", "nodes"))
    text = (tmp_path / "partitions.json").read_text()
    assert json.loads(text) == record
    assert len(text.splitlines()) == 10_000 + 8
    indented = len(json.dumps(record, indent=2))
    assert len(text) < indented / 2  # 15 lines per client before
