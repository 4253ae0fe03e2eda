"""task_runner.kind: dask: the smoke config's two directions fine-tune and evaluate on two Dask workers."""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster, get_task_stream
from prefect_stack import smoke_config, task_states

from flows.adapter_pipeline import adapter_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_smoke_config_fans_out_over_two_dask_workers(prefect_api, tiny_base, tmp_path):
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        config = smoke_config(
            tmp_path, tiny_base, ["task_runner.kind=dask", f"task_runner.address={cluster.scheduler_address}"]
        )
        with get_task_stream(client) as stream:
            state = adapter_pipeline(config, return_state=True)
        workers = set(client.scheduler_info()["workers"])

    assert state.is_completed(), state.message
    result = state.result()
    assert sorted(result["directions"]) == ["eng_Latn-hin_Deva", "eng_Latn-tam_Taml"]
    assert all(r["steps"] == 2 and r["sentences"] == 8 for r in result["directions"].values())
    # Each direction's fine-tune ran on its own worker, at the same time.
    trains = [t for t in stream.data if t["key"].startswith("train_adapter_task")]
    assert len(trains) == 2
    assert {t["worker"] for t in trains} == workers and len(workers) == 2
    (start_a, stop_a), (start_b, stop_b) = ((t["startstops"][0]["start"], t["startstops"][-1]["stop"]) for t in trains)
    assert start_a < stop_b and start_b < stop_a
    assert len([t for t in stream.data if t["key"].startswith("evaluate_direction_task")]) == 2
    # The workers reported their task runs to the flow run's Prefect server.
    states = task_states(state.state_details.flow_run_id)
    assert {name: states[name] for name in states if name.startswith(("train-", "evaluate-"))} == {
        f"{step}-{d}": ["Completed"] for step in ("train", "evaluate") for d in config.directions
    }
