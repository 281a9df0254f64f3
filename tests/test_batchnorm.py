"""BatchNorm statistics measured by clients and pooled by the server."""

from __future__ import annotations


import numpy as np
import torch

from fedloom.strategies.chain import strategy_chain
from fedloom.config import parse_run_config
from fedloom.strategies.calibration import BatchNormCalibration
from fedloom.strategies.instrumented import chain_of
from fedloom.tasks.base import DataSplit
from fedloom.tasks.batchnorm import batch_norm_layers, batchnorm_sums, pooled_moments
from fedloom.tasks.pointnet import PointNet


def _split(n: int, seed: int) -> DataSplit:
    rng = np.random.default_rng(seed)
    return DataSplit(x=rng.normal(size=(n, 32, 3)).astype(np.float32), y=rng.integers(0, 4, n))


def test_pooled_sums_of_unequal_clients_are_the_moments_of_all_the_data() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 2.0, size=(n, 5)) for n in (7, 40, 2)]
    reports = [{"l.sum": p.sum(0), "l.sumsq": (p * p).sum(0), "l.count": np.array([len(p)])} for p in parts]
    reports.append({"tiny.sum": np.ones(5), "tiny.sumsq": np.ones(5), "tiny.count": np.array([1.0])})
    moments = pooled_moments(reports)
    every = np.concatenate(parts)
    assert set(moments) == {"l"}  # one value is no variance
    np.testing.assert_allclose(moments["l"][0], every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments["l"][1], every.var(0, ddof=1), rtol=1e-10)


def test_measuring_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = PointNet(4, transforms="none", width=0.125, norm="batch").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sums = batchnorm_sums(model, _split(9, 1), batch_size=4)  # batches 4 and 5: no batch of one
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    names = batch_norm_layers(model)
    assert names and {f"{n}.count" for n in names} <= set(sums)
    first = next(iter(names))
    assert sums[f"{first}.count"][0] == 9 * 32  # every point of every shape


def test_calibration_wraps_batchnorm_models_unless_switched_off_or_private() -> None:
    def wrapped(batch_norm: bool = True, **raw: object) -> bool:
        chain = strategy_chain(parse_run_config(raw), 1000, 10, batch_norm=batch_norm)
        return any(isinstance(s, BatchNormCalibration) for s in chain_of(chain))

    assert wrapped()
    assert not wrapped(**{"batchnorm-calibration": False})
    assert not wrapped(dp="client", **{"dp-noise": 1.0})  # the sums would leave un-noised
    assert not wrapped(batch_norm=False)


def test_a_checkpointed_chain_leaves_the_grid_behind() -> None:
    import io

    import torch

    from fedloom.strategies.state import chain_state

    chain = strategy_chain(parse_run_config({}), 1000, 10, batch_norm=True)
    (calibration,) = [s for s in chain_of(chain) if isinstance(s, BatchNormCalibration)]
    calibration._grid, calibration._nodes = lambda: None, [1, 2]  # a grid is not state
    state = chain_state(chain)
    assert {"class": "BatchNormCalibration", "state": {}} in state
    buf = io.BytesIO()
    torch.save(state, buf)  # plain data: loads without unpickling code
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == state


def test_calibration_pools_the_answers_in_an_order_fixed_by_content(task_identity) -> None:
    # float64 sums depend on their order ((1e16 + 1) - 1e16 == 0, (1e16 - 1e16) + 1 == 1);
    # answers arrive in the order clients finish, so they are pooled in content order.
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    from fedloom.protocol.keys import BATCHNORM_SUMS as SUMS_KEY

    class Inner:
        def aggregate_train(self, server_round, replies):
            return ArrayRecord({"bn.running_mean": Array(np.zeros(1, np.float32)),
                                "bn.running_var": Array(np.ones(1, np.float32))}), MetricRecord({})

    class Grid:
        def __init__(self, order: list[int]) -> None:
            self.order = order

        def send_and_receive(self, queries, timeout=None):
            sums = [1e16, 1.0, -1e16]
            answers = [
                Message(RecordDict({SUMS_KEY: ArrayRecord({
                    "bn.sum": Array(np.array([sums[i]])), "bn.sumsq": Array(np.array([0.0])),
                    "bn.count": Array(np.array([1.0]))})}), reply_to=q)
                for i, q in enumerate(queries)
            ]
            return [answers[i] for i in self.order]

    means = set()
    for order in ([0, 1, 2], [1, 0, 2], [2, 0, 1], [0, 2, 1]):
        calibration = BatchNormCalibration(Inner())  # type: ignore[arg-type]
        calibration._grid, calibration._nodes = Grid(order), [11, 12, 13]
        arrays, _ = calibration.aggregate_train(1, [])
        means.add(float(arrays["bn.running_mean"].numpy()[0]))
    assert len(means) == 1  # arrival order changes nothing (it did: 0 and 1/3)
