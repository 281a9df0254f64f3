"""Where each client ran: asked for by the server on a Ray cluster, answered by the client.

With ``ray-address`` set, the server's train config carries :data:`REPORT_NODE_KEY`;
a client that finds it adds a :data:`NODE_RECORD` ConfigRecord to its reply (the Ray
node of the actor that ran it, and that node's hostname). It is a config record, not a
metric, so no strategy ever averages it; without the key a client sends nothing extra.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from fedloom.protocol.keys import HOSTNAME_KEY, NODE_RECORD, RAY_NODE_KEY


def ray_cluster_nodes() -> list[dict[str, Any]] | None:
    """The alive nodes of the Ray cluster this process is connected to (node id,
    address, hostname, CPUs), or ``None`` when it is not connected to one."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return [
        {"node_id": n["NodeID"], "address": n["NodeManagerAddress"],
         "hostname": n.get("NodeManagerHostname", ""), "cpus": n["Resources"].get("CPU", 0)}
        for n in ray.nodes() if n["Alive"]
    ]


def reported_nodes(replies: Iterable[Message]) -> dict[int, dict[str, Any]]:
    """Flower node id -> ``{"ray_node_id", "hostname"}`` of each reply that answers."""
    out = {}
    for msg in replies:
        if msg.has_error() or NODE_RECORD not in msg.content.config_records:
            continue
        record = msg.content.config_records[NODE_RECORD]
        out[msg.metadata.src_node_id] = {
            "ray_node_id": str(record.get(RAY_NODE_KEY, "")), "hostname": str(record.get(HOSTNAME_KEY, "")),
        }
    return out
