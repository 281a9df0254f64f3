"""Every use fedloom makes of Flower's private internals, in one place, for one version.

Flower's public API does not cover these; each is checked against the installed Flower
by :func:`check_flower_version` at start-up (run_sim.py, the ServerApp) and has its own
test in ``tests/test_flower_compat.py``. Moving to another Flower version means
re-checking each function here and then :data:`FLOWER_VERSION`.
"""

from __future__ import annotations

import math
import random
import re
import threading
from logging import INFO
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from queue import Queue
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.supercore.differential_privacy import compute_stdv

from fedloom.privacy.secure_noise import SecureGaussian

#: The Flower release whose internals this module was written against.
FLOWER_VERSION = "1.41.0"


def check_flower_version(installed: str | None = None) -> None:
    """``RuntimeError`` naming both versions unless Flower ``FLOWER_VERSION`` is installed."""
    found = installed if installed is not None else metadata.version("flwr")
    if found != FLOWER_VERSION:
        raise RuntimeError(
            f"fedloom needs flwr=={FLOWER_VERSION} (it patches internals of that release: "
            f"fedloom/flower_compat.py), but flwr {found} is installed; "
            f'run: pip install "flwr[simulation]=={FLOWER_VERSION}"'
        )


# -- sampling: Flower's sample_nodes draws from its module's `random` ---------------------

def use_sampling_rng(rng: random.Random) -> None:
    """Make Flower's ``strategy_utils.sample_nodes`` draw from ``rng`` instead of the
    module-level ``random`` that other threads of the process share."""
    from flwr.serverapp.strategy import strategy_utils

    strategy_utils.random = rng  # type: ignore[assignment]


def sampling_uniform() -> Callable[[], float]:
    """Uniform draws in [0, 1) from the generator Flower's ``sample_nodes`` uses (the run's
    sampler after :func:`use_sampling_rng`): reproducible client draws with seeded noise."""
    from flwr.serverapp.strategy import strategy_utils

    return strategy_utils.random.random


# -- simulation: node IDs and the simulation runtime --------------------------------------

@contextmanager
def seeded_node_ids(seed: int) -> Iterator[None]:
    """Register the simulated nodes under IDs drawn from ``seed``, not ``os.urandom``.

    The server samples a round's clients among the node IDs with a seeded generator
    (``server/sampling.py``), and node i holds partition i; with random IDs the same
    seed picked other partitions on every run. Only node registration draws from the
    seeded stream (Flower's ``vce_api._register_nodes`` and the link state's
    ``generate_rand_int_from_bytes``).
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import in_memory_linkstate

    register, draw = vce_api._register_nodes, in_memory_linkstate.generate_rand_int_from_bytes
    rng = random.Random(f"fedloom-node-ids-{seed}")

    def seeded_draw(num_bytes: int, exclude: set[int] | None = None) -> int:
        while (value := rng.getrandbits(8 * num_bytes)) in (exclude or ()):
            pass
        return value

    def register_seeded(*args: Any, **kwargs: Any) -> Any:
        in_memory_linkstate.generate_rand_int_from_bytes = seeded_draw
        try:
            return register(*args, **kwargs)
        finally:
            in_memory_linkstate.generate_rand_int_from_bytes = draw

    vce_api._register_nodes = register_seeded
    try:
        yield
    finally:
        vce_api._register_nodes = register


def run_simulation(
    *, run_config: dict[str, Any], num_supernodes: int, client_app: Any, server_app: Any,
    backend_config: dict[str, Any], app_dir: str, verbose: bool,
) -> None:
    """Flower's simulation runtime on a run whose ``override_config`` is ``run_config``
    (``flwr.simulation.run_simulation`` takes no run config; its private
    ``_run_simulation`` does, with the run set up as the public function would)."""
    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.override_config = dict(run_config)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    # What flwr.simulation.run_simulation does for a run it creates itself.
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config)
    )
    _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config,
        server_app_context=context,
        app_dir=app_dir,
        is_app=True,  # clients fuse pyproject defaults with run.override_config
        run=run,
        verbose_logging=verbose,
    )


# -- simulation at population scale: no work per registered node that never trains ------
#
# Flower's vce_api registers every simulated node with its own Context, and
# 1. fused each node's run config from pyproject.toml separately (one parse and one
#    ~100-key copy per node: 10,000 at 10,000 clients); memoized_fuse parses it once and
#    every node's context holds the same read-only mapping (a node that trains gets its
#    own copy back from its actor, as before);
# 2. polled for instructions by asking the link state for each registered node in turn,
#    every 0.1 s, each ask scanning every stored message: O(population x messages) per
#    sweep, all round long, under the lock the server sends with. deliver_pending reads
#    the stored messages once per sweep and asks only nodes that have one waiting, in
#    registration order.

#: Flower's own functions, while :func:`population_scale` replaces them.
_ORIGINAL: dict[str, Any] = {}


class SharedConfig(dict):
    """A run config every node's context holds as one object: Flower copies the fused
    config into each node's ``Context`` (``.copy()``), which here returns the same dict.
    Nothing writes to it (Flower refuses a client's change to ``run_config``)."""

    def copy(self) -> SharedConfig:  # type: ignore[override]
        return self


def memoized_fuse(fuse: Callable[..., Any]) -> Callable[..., Any]:
    """``fuse(app_path, override)`` computed once per (path, override mapping), as one
    :class:`SharedConfig`."""
    cache: dict[tuple[str, int], SharedConfig] = {}

    def once(app_path: Any, override: Any) -> SharedConfig:
        key = (str(app_path), id(override))
        if key not in cache:
            cache[key] = SharedConfig(fuse(app_path, override))
        return cache[key]

    return once


def deliver_pending(state: Any, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """Flower's ``vce_api.add_messages_to_queue``, asking only nodes with a message waiting."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if store is None or lock is None:  # not the in-memory link state: Flower's own loop
        return _ORIGINAL["add_messages_to_queue"](state, queue, nodes_mapping, f_stop)
    while not f_stop.is_set():
        with lock:
            waiting = {m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""}
        for node_id in sorted(waiting & nodes_mapping.keys(), key=nodes_mapping.__getitem__):
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        f_stop.wait(0.1)
    return None


@contextmanager
def population_scale() -> Iterator[None]:
    """Both patches for the duration of a simulation."""
    from flwr.compat.client import run_info_store
    from flwr.server.superlink.fleet.vce import vce_api

    _ORIGINAL["add_messages_to_queue"] = vce_api.add_messages_to_queue
    fuse = run_info_store.get_fused_config_from_dir
    run_info_store.get_fused_config_from_dir = memoized_fuse(fuse)
    vce_api.add_messages_to_queue = deliver_pending
    try:
        yield
    finally:
        run_info_store.get_fused_config_from_dir = fuse
        vce_api.add_messages_to_queue = _ORIGINAL["add_messages_to_queue"]


# -- error replies: Flower's error text ---------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: How Flower writes an error reply's reason: ``<class 'Type'>:<'message'>``.
_REASON = re.compile(r"<class '([\w.() ]+)'>:<'(.*)'>", flags=re.DOTALL)
#: Where Python chains a client's exception to the one the simulation raised from it.
_CAUSE = "\n\nThe above exception was the direct cause of the following exception:"


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def failure_reason(reason: str) -> str:
    """A failed reply's Flower error reason on one line: ``Type: message``.

    Flower writes ``<class 'Type'>:<'message'>``. In a simulation the type is Ray's
    task error and the message the client's traceback, whose exception line (the last
    one before Python's "direct cause" note) is what the client raised."""
    reason = strip_ansi(reason)
    match = _REASON.fullmatch(reason)
    if match:
        kind, text = match.group(1).rsplit(".", 1)[-1], match.group(2)
        if _CAUSE in text:
            lines = [ln for ln in text.split(_CAUSE)[0].splitlines() if ln.strip()]
            text = lines[-1].strip() if lines else text
            head, sep, tail = text.partition(": ")
            reason = f"{head.rsplit('.', 1)[-1]}: {tail}" if sep and " " not in head else text
        elif kind == "ClientAppException" and "occurred. Message: " in text:
            reason = text.split("occurred. Message: ", 1)[1]
        else:
            reason = f"{kind}: {text}"
    return " ".join(reason.split())


# -- sampling for client-level DP's population ---------------------------------------------

def sample_nodes(grid: Any, min_available_nodes: int, sample_size: int) -> tuple[list[int], list[int]]:
    """Flower's ``strategy_utils.sample_nodes``: wait for ``min_available_nodes``, then
    (sampled IDs, all IDs)."""
    from flwr.serverapp.strategy.strategy_utils import sample_nodes as flower_sample_nodes

    return flower_sample_nodes(grid, min_available_nodes, sample_size)


# -- adaptive clipping: private methods of Flower's DP wrappers -----------------------------

class AndrewEtAlUpdate:
    """Two fixes to Flower 1.41's adaptive clipping wrappers (Andrew et al. 2021), made by
    overriding their private ``_geometric_update`` and ``_add_noise_to_aggregated_arrays``.

    1. The paper moves the norm by the fraction of updates that were *not* clipped,
       ``C <- C * exp(-lr * (unclipped - target))``: many small updates shrink it.
       Flower passes the clipped fraction, so the norm moved the wrong way (all
       updates clipped made it shrink further). ``target_clipped_quantile`` is
       therefore the target unclipped quantile (default 0.5 either way).
    2. Flower updates the norm before it noises the round's release, so the noise
       was sized for next round's norm, not the one that clipped this round (too
       little noise while the norm shrinks). The noise uses the clipping norm.
    """

    clipping_norm: float
    clip_norm_lr: float
    target_clipped_quantile: float
    _round_norm: float

    def _geometric_update(self, clipped_fraction: float) -> None:
        self._round_norm = self.clipping_norm
        unclipped = 1.0 - clipped_fraction
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (unclipped - self.target_clipped_quantile))

    def _add_noise_to_aggregated_arrays(self, aggregated: Any) -> Any:
        next_norm = self.clipping_norm
        self.clipping_norm = self.__dict__.get("_round_norm", next_norm)  # none before the first update
        try:
            return super()._add_noise_to_aggregated_arrays(aggregated)  # type: ignore[misc]
        finally:
            self.clipping_norm = next_norm


# -- DP noise from the OS's CSPRNG: private methods of Flower's DP wrappers ------------------

class SecureNoise:
    """Flower 1.41's DP wrappers draw their noise from numpy's global Mersenne Twister
    (private ``_add_noise_to_aggregated_arrays`` and, when adaptive, ``_noisy_fraction``);
    this draws it from the OS's CSPRNG (:class:`~fedloom.privacy.secure_noise.SecureGaussian`),
    unless ``seeded_noise`` asks for the run seed's reproducible (and predictable) stream."""

    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int
    clipped_count_stddev: float
    seeded_noise: bool = False

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        if self.seeded_noise:
            return super()._add_noise_to_aggregated_arrays(aggregated)  # type: ignore[misc]
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        source = SecureGaussian()
        noised = {}
        for key, array in aggregated.items():
            values = array.numpy()
            noised[key] = Array(values + source.numpy_noise(std, values.shape, values.dtype))
        log(INFO, "aggregate_fit: central DP noise with %.4f stdev added (CSPRNG)", std)
        return ArrayRecord(noised)

    def _noisy_fraction(self, count: int, total: int) -> float:
        if self.seeded_noise:
            return super()._noisy_fraction(count, total)  # type: ignore[misc]
        noise = SecureGaussian().numpy_noise(self.clipped_count_stddev, (1,), np.dtype(np.float64))
        return float(count + noise[0]) / float(total)


class ServerSideFixedClipping(SecureNoise, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping with :class:`SecureNoise`."""


class ClientSideFixedClipping(SecureNoise, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping with :class:`SecureNoise`."""


class ServerSideAdaptiveClipping(AndrewEtAlUpdate, SecureNoise, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping with :class:`AndrewEtAlUpdate`'s fixes and
    :class:`SecureNoise`."""


class ClientSideAdaptiveClipping(AndrewEtAlUpdate, SecureNoise, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping with :class:`AndrewEtAlUpdate`'s fixes and
    :class:`SecureNoise`."""
