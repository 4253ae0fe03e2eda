from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bhashaflow.config import ConfigError, PipelineConfig, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
BASE = {"directions": ["eng_Latn-hin_Deva"], "sources": [{"name": "f", "kind": "flores", "uri": "data/flores200"}]}


def test_demo_config_loads_with_defaults():
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert config.directions == ["eng_Latn-hin_Deva", "eng_Latn-tam_Taml"]
    assert config.ingest.max_chars == 2000
    assert config.ingest.max_reject_fraction == 0.2
    assert config.sources[0].kind == "flores"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({**BASE, "ingest": {"max_char": 10}}, "ingest.max_char: unknown key"),
        ({**BASE, "workdirr": "x"}, "workdirr: unknown key"),
        ({**BASE, "sources": [{"name": "f", "kind": "flores", "uri": "d", "colection": "x"}]}, "sources.0.colection"),
        ({**BASE, "directions": ["eng_Latn-xxx_Yyyy"]}, "unknown FLORES-200 language code 'xxx_Yyyy'"),
        ({**BASE, "directions": ["eng_Latn_hin_Deva"]}, "directions"),
        ({**BASE, "sources": [{"name": "f", "kind": "ftp", "uri": "d"}]}, "sources.0.kind"),
        ({**BASE, "sources": [{"name": "q", "kind": "qdrant", "uri": ":memory:"}]}, "needs 'collection'"),
        ({**BASE, "sources": [{"name": "f", "kind": "flores", "uri": "d", "split": "devtest"}]}, "devtest"),
        ({**BASE, "ingest": {"max_reject_fraction": 2}}, "ingest.max_reject_fraction"),
    ],
)
def test_config_errors_name_the_key(data, named):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, origin="test.yaml")
    assert named in str(err.value)
    assert str(err.value).startswith("test.yaml: ")


def test_overrides_parse_yaml_and_address_sources_by_name():
    config = config_from_dict(
        BASE,
        [
            "directions=[eng_Latn-hin_Deva, eng_Latn-tam_Taml]",
            "ingest.shard_rows=10",
            "sources.f.uri=elsewhere",
            "training.lora.r=4",
        ],
    )
    assert config.directions == ["eng_Latn-hin_Deva", "eng_Latn-tam_Taml"]
    assert config.ingest.shard_rows == 10
    assert config.sources[0].uri == "elsewhere"
    assert config.training.lora.r == 4


def test_override_of_unknown_key_is_named():
    with pytest.raises(ConfigError, match="ingest.nope: unknown key"):
        config_from_dict(BASE, ["ingest.nope=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        config_from_dict(BASE, ["ingest.shard_rows"])


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_run_id_is_stable_and_follows_training_inputs():
    a = PipelineConfig.model_validate(BASE)
    b = PipelineConfig.model_validate({**BASE, "serving": {"port": 9}})
    c = PipelineConfig.model_validate({**BASE, "ingest": {"max_chars": 10}})
    assert a.resolved_run_id() == b.resolved_run_id()
    assert a.resolved_run_id() != c.resolved_run_id()
    assert a.resolved_run_id().startswith("run-")
    assert PipelineConfig.model_validate({**BASE, "run_id": "fixed"}).run_uri() == "runs/run/fixed"


def test_every_field_is_described():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(PipelineConfig)


def test_run_id_placeholders_take_the_scheduled_time_in_utc():
    nightly = PipelineConfig.model_validate({**BASE, "run_id": "nightly-{date}", "workdir": "s3://b/runs"})
    ist = timezone(timedelta(hours=5, minutes=30))
    # 02:00 in Kolkata is still the previous day in UTC.
    assert nightly.at(datetime(2026, 3, 2, 2, 0, tzinfo=ist)).run_uri() == "s3://b/runs/run/nightly-2026-03-01"
    hourly = PipelineConfig.model_validate({**BASE, "run_id": "h-{datetime}"})
    assert hourly.at(datetime(2026, 3, 2, 7, 5, 9, tzinfo=UTC)).resolved_run_id() == "h-20260302T070509Z"
    # Outside a flow, the current date; a config without placeholders is returned as it is.
    assert nightly.resolved_run_id() == f"nightly-{datetime.now(UTC):%Y-%m-%d}"
    fixed = PipelineConfig.model_validate({**BASE, "run_id": "fixed"})
    assert fixed.at(datetime(2026, 3, 2, tzinfo=UTC)) is fixed


@pytest.mark.parametrize("run_id", ["../x", "a/{date}", "{foo}", "{0}", "{date.year}", "x" * 129])
def test_run_ids_that_are_no_folder_name_are_refused_naming_the_field(run_id):
    with pytest.raises(ConfigError, match="run_id"):
        config_from_dict({**BASE, "run_id": run_id})


def test_an_empty_run_id_means_the_default():
    assert PipelineConfig.model_validate({**BASE, "run_id": ""}).resolved_run_id().startswith("run-")
