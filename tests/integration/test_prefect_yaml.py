"""prefect.yaml: every entrypoint imports, every deployment's parameters are a config file of configs/, validated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect_stack import REPO, prefect_yaml

from bhashaflow.config import RLExportFlowConfig, load_config

CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_validates(path: Path):
    config = load_config(path)
    assert config.run_name == path.stem


def test_the_configs_in_prefect_yaml_are_the_files_in_configs():
    copies = prefect_yaml()["definitions"]["configs"]
    files = {p.stem: yaml.safe_load(p.read_text()) for p in CONFIG_FILES}
    for name, copy in copies.items():
        assert copy == files[name], f"prefect.yaml definitions.configs.{name} differs from configs/{name}.yaml"


def test_deployments_and_schedules():
    spec = prefect_yaml()
    deployments = {d["name"]: d for d in spec["deployments"]}
    flows = {name: load_flow_from_entrypoint(str(REPO / d["entrypoint"])).name for name, d in deployments.items()}
    assert flows == {
        "demo": "adapter-pipeline",
        "smoke": "adapter-pipeline",
        "nightly": "adapter-pipeline",
        "manual": "evaluate-adapter",
        "hourly": "export-rl-logs",
        "feedback-loop": "feedback-loop",
    }
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"bhashaflow-local"}
    assert deployments["nightly"]["schedules"] == [{"cron": "0 2 * * *", "timezone": "Asia/Kolkata", "active": False}]
    assert deployments["feedback-loop"]["schedules"] == [
        {"cron": "0 3 * * 0", "timezone": "Asia/Kolkata", "active": False}
    ]
    [hourly] = deployments["hourly"]["schedules"]
    assert (hourly["interval"], hourly["active"]) == (3600, False)
    assert "schedules" not in deployments["smoke"] and "schedules" not in deployments["demo"]


def test_nothing_is_scheduled_until_someone_turns_it_on():
    deployments = prefect_yaml()["deployments"]
    scheduled = {d["name"]: d for d in deployments if d.get("schedules")}
    assert sorted(scheduled) == ["feedback-loop", "hourly", "nightly"]
    for name, d in scheduled.items():
        assert [s.get("active") for s in d["schedules"]] == [False] * len(d["schedules"]), name
        flow = load_flow_from_entrypoint(str(REPO / d["entrypoint"])).name
        # The deployment page shows the description: it says how to turn the schedule on, by UI or CLI.
        assert "Created inactive" in d["description"] and "Schedules toggle" in d["description"], name
        assert f"prefect deployment schedule resume {flow}/{name} <schedule-id>" in d["description"], name
        assert f"prefect deployment schedule ls {flow}/{name}" in d["description"], name


@pytest.mark.parametrize("name", ["demo", "smoke", "nightly", "manual", "feedback-loop"])
def test_entrypoint_imports_and_accepts_its_parameters(name: str):
    deployment = next(d for d in prefect_yaml()["deployments"] if d["name"] == name)
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert isinstance(flow, Flow)
    # What a worker does with the parameters before calling the flow: the config mapping becomes a PipelineConfig.
    params = flow.validate_parameters(deployment["parameters"])
    copies = prefect_yaml()["definitions"]["configs"]
    stem = next(stem for stem, copy in copies.items() if copy == deployment["parameters"]["config"])
    assert params["config"] == load_config(REPO / "configs" / f"{stem}.yaml")


def test_the_export_deployment_takes_only_what_the_export_uses():
    deployment = next(d for d in prefect_yaml()["deployments"] if d["name"] == "hourly")
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    params = flow.validate_parameters(deployment["parameters"])
    # Its run form is the export's own config: the demo's episodes and export settings, no sources or training.
    assert params["config"] == RLExportFlowConfig.of(load_config(REPO / "configs" / "demo.yaml"))
    assert set(RLExportFlowConfig.model_fields) == {"run_name", "serving", "rl_export"}
    schema_fields = set(flow.parameters.definitions["RLExportFlowConfig"]["properties"])
    assert schema_fields == {"run_name", "serving", "rl_export"}
