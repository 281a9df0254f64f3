"""One test per use of Flower's internals (fedloom/flower_compat.py): each fails when
the installed Flower no longer has what the patch relies on."""

import inspect
import random

import pytest

from fedloom import flower_compat as compat


def test_the_installed_flower_is_the_one_the_patches_were_written_for():
    compat.check_flower_version()
    with pytest.raises(RuntimeError, match=r"needs flwr==1\.41\.0 .* but flwr 1\.42\.0 is installed"):
        compat.check_flower_version("1.42.0")


def test_sampling_draws_from_the_generator_given():
    from flwr.serverapp.strategy import strategy_utils

    before = strategy_utils.random
    rng = random.Random(7)
    try:
        compat.use_sampling_rng(rng)
        assert strategy_utils.random is rng
        assert "random.sample(" in inspect.getsource(strategy_utils.sample_nodes)  # what it draws with
    finally:
        strategy_utils.random = before


def test_seeded_node_ids_patch_node_registration_and_put_it_back():
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import in_memory_linkstate

    register = vce_api._register_nodes
    assert "generate_rand_int_from_bytes" in inspect.getsource(in_memory_linkstate.InMemoryLinkState.create_node)
    assert list(inspect.signature(in_memory_linkstate.generate_rand_int_from_bytes).parameters)[:2] == [
        "num_bytes", "exclude"]
    with compat.seeded_node_ids(3):
        assert vce_api._register_nodes is not register
    assert vce_api._register_nodes is register


def test_run_simulation_passes_arguments_the_private_runtime_takes():
    from flwr.simulation.run_simulation import _run_simulation

    taken = set(inspect.signature(_run_simulation).parameters)
    passed = {"num_supernodes", "exit_event", "client_app", "server_app", "backend_name",
              "backend_config", "server_app_context", "app_dir", "is_app", "run", "verbose_logging"}
    assert passed <= taken, passed - taken


def test_failure_reason_reads_the_error_text_flower_writes():
    from flwr.server.superlink.fleet.vce import vce_api

    assert """reason = str(type(ex)) + ":<'" + str(ex) + "'>\"""" in inspect.getsource(vce_api)
    ex = ValueError("bad partition")
    assert compat.failure_reason(str(type(ex)) + ":<'" + str(ex) + "'>") == "ValueError: bad partition"


@pytest.mark.parametrize("name", ["_geometric_update", "_add_noise_to_aggregated_arrays"])
def test_the_adaptive_clipping_fixes_override_methods_flower_has(name):
    from flwr.serverapp.strategy import (
        DifferentialPrivacyClientSideAdaptiveClipping,
        DifferentialPrivacyServerSideAdaptiveClipping,
    )

    for flower_cls, fixed in (
        (DifferentialPrivacyServerSideAdaptiveClipping, compat.ServerSideAdaptiveClipping),
        (DifferentialPrivacyClientSideAdaptiveClipping, compat.ClientSideAdaptiveClipping),
    ):
        assert callable(getattr(flower_cls, name, None)), (flower_cls, name)
        assert getattr(fixed, name) is getattr(compat.AndrewEtAlUpdate, name)
