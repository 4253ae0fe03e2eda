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
