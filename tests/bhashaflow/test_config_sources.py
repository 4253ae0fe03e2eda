"""One model per source kind: the YAML, the dumps (so run ids) and the messages are those of the one model before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bhashaflow.config import (
    SOURCE_MODELS,
    AlignedSource,
    ConfigError,
    HttpSource,
    PipelineConfig,
    QdrantSource,
    RlLogsSource,
    SourceConfig,
    config_from_dict,
)

LANGS = {"src": "eng_Latn", "tgt": "hin_Deva"}
SOURCES: list[dict[str, Any]] = [
    {"name": "flores-dev", "kind": "flores", "uri": "data/flores200", "split": "dev"},
    {"name": "web", "kind": "http", "uri": "http://127.0.0.1:8000/pairs.jsonl", "format": "jsonl"},
    {"name": "lake", "kind": "s3", "uri": "s3://corpora/indic/*.jsonl.gz", "endpoint_url": "http://127.0.0.1:9000"},
    {
        "name": "opus100",
        "kind": "hf",
        "uri": "Helsinki-NLP/opus-100",
        "subset": "en-hi",
        "split": "train",
        "fields": {"src": "translation.en", "tgt": "translation.hi"},
        "langs": LANGS,
    },
    {"name": "vectors", "kind": "qdrant", "uri": ":memory:", "collection": "pairs"},
    {
        "name": "samanantar",
        "kind": "aligned",
        "uri": "s3://corpora/samanantar/en-hi",
        "pattern": "train.{lang}",
        "langs": LANGS,
    },
    {
        "name": "pair",
        "kind": "aligned",
        "uri": "data/misc",
        "files": {"src": "corpus.en.gz", "tgt": "corpus.hi.gz"},
        "langs": LANGS,
    },
    {"name": "memory", "kind": "tmx", "uri": "s3://corpora/tm/legal.tmx.gz", "langs": LANGS},
    {
        "name": "feedback",
        "kind": "rl_logs",
        "uri": "runs/demo/rl-logs",
        "trusted_clients": ["web"],
        "heldout_share": 0.1,
    },
]
# What the one SourceConfig model of before gave for these sources: their runs must resume under the new models.
RUN_IDS_BEFORE = {
    "flores-dev": "run-6043e64e0b",
    "web": "run-561fc14c87",
    "lake": "run-05d0eba19b",
    "opus100": "run-80930d2029",
    "vectors": "run-46c8d5e1da",
    "samanantar": "run-930a9bc320",
    "pair": "run-548c71bb2e",
    "memory": "run-1b56282588",
    "feedback": "run-9a2d83c431",
}
ALL_RUN_ID_BEFORE = "run-6b41a70a35"
ALWAYS = ["name", "kind", "uri", "split", "format", "fields", "langs", "collection", "endpoint_url", "subset"]


def pipeline(*sources: dict[str, Any], overrides: list[str] | None = None) -> PipelineConfig:
    return config_from_dict({"directions": ["eng_Latn-hin_Deva"], "sources": list(sources)}, overrides, "test.yaml")


def refusal(source: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        pipeline(source)
    return str(err.value)


def test_each_kind_is_validated_by_its_own_model() -> None:
    config = pipeline(*SOURCES)
    assert [type(s) for s in config.sources] == [SOURCE_MODELS[s["kind"]] for s in SOURCES]
    web = SourceConfig(name="web", kind="http", uri="http://x/a.jsonl")
    assert type(web) is HttpSource and not hasattr(web, "collection")
    assert type(SourceConfig.model_validate(SOURCES[4])) is QdrantSource


def test_run_ids_and_dumps_are_those_of_before() -> None:
    assert pipeline(*SOURCES).resolved_run_id() == ALL_RUN_ID_BEFORE
    for source in SOURCES:
        assert pipeline(source).resolved_run_id() == RUN_IDS_BEFORE[source["name"]], source["name"]
    dumped = pipeline(*SOURCES).model_dump(mode="json")["sources"]
    assert [list(d)[:6] for d in dumped] == [ALWAYS[:6]] * len(SOURCES)
    assert list(dumped[0]) == ALWAYS  # a kind without the key dumps it as null, as the one model did
    assert dumped[1]["collection"] is None and dumped[4]["collection"] == "pairs"
    assert list(dumped[5]) == [*ALWAYS[:7], "pattern", *ALWAYS[7:]]
    assert list(dumped[8]) == [*ALWAYS, "trusted_clients", "heldout_share"]  # unset settings stay out


def test_a_dumped_config_loads_back_to_the_same_run() -> None:
    config = pipeline(*SOURCES)
    again = PipelineConfig.model_validate_json(json.dumps(config.model_dump(mode="json")))
    assert again.model_dump(mode="json") == config.model_dump(mode="json")
    assert again.resolved_run_id() == config.resolved_run_id()


def test_the_run_form_shows_a_source_as_one_object_that_every_dump_passes() -> None:
    """Prefect renders a deployment's parameters from the config's JSON schema (the UI's run form) and checks them
    against it (`prefect deployment run --params`). Its form shows a union of objects only as a JSON editor, so a
    source is one object there, with every kind's keys, as before kinds had models; every kind's dump passes it."""
    import jsonschema

    schema = PipelineConfig.model_json_schema()
    assert schema["properties"]["sources"]["items"] == {"$ref": "#/$defs/SourceConfig"}
    form = schema["$defs"]["SourceConfig"]
    assert list(form["properties"]) == [
        *ALWAYS[:7],
        "pattern",
        "files",
        *ALWAYS[7:],
        "trusted_clients",
        "max_length_ratio",
        "reward_margin",
        "heldout_share",
    ]
    assert form["required"] == ["name", "kind", "uri"] and form["properties"]["kind"]["enum"] == list(SOURCE_MODELS)
    assert "(kind qdrant only)" in form["properties"]["collection"]["description"]
    dumped = pipeline(*SOURCES).model_dump(mode="json")
    jsonschema.validate(dumped, schema)
    for path in sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")):
        jsonschema.validate(config_from_dict(yaml.safe_load(path.read_text())).model_dump(mode="json"), schema)
    dumped["sources"][0]["colection"] = "pairs"
    with pytest.raises(jsonschema.ValidationError, match="colection"):
        jsonschema.validate(dumped, schema)


@pytest.mark.parametrize(
    ("source", "named"),
    [
        (
            {"name": "w", "kind": "http", "uri": "u", "split": "train"},
            "source 'w': 'split' applies to kind flores or hf only",
        ),
        (
            {"name": "w", "kind": "hf", "uri": "u", "collection": "c"},
            "source 'w': 'collection' applies to kind qdrant only",
        ),
        (
            {"name": "w", "kind": "hf", "uri": "u", "endpoint_url": "e"},
            "source 'w': 'endpoint_url' applies to kind s3 or aligned or tmx or rl_logs only",
        ),
        (
            {"name": "w", "kind": "qdrant", "uri": "u", "collection": "c", "subset": "s"},
            "'subset' applies to kind hf only",
        ),
        (
            {"name": "t", "kind": "tmx", "uri": "u", "langs": LANGS, "format": "jsonl"},
            "source 't': 'fields' and 'format' do not apply to kind tmx",
        ),
        (
            {"name": "r", "kind": "rl_logs", "uri": "u", "trusted_clients": ["*"], "langs": LANGS},
            "source 'r': 'fields' and 'langs' do not apply to kind rl_logs",
        ),
    ],
)
def test_a_key_of_another_kind_is_refused_naming_key_source_and_kinds(source: dict[str, Any], named: str) -> None:
    message = refusal(source)
    assert message.startswith("test.yaml: sources.0") and named in message


def test_errors_inside_a_kind_are_located_by_their_key() -> None:
    rl = {"name": "r", "kind": "rl_logs", "uri": "u", "trusted_clients": ["*"]}
    assert refusal({**rl, "heldout_share": 1}) == "test.yaml: sources.0.heldout_share: Input should be less than 1"
    assert refusal({**rl, "colection": "x"}) == "test.yaml: sources.0.colection: unknown key"
    bad_lang = {"name": "a", "kind": "aligned", "uri": "u", "langs": {"src": "xx", "tgt": "hin_Deva"}}
    assert "test.yaml: sources.0.langs.src: Value error, unknown FLORES-200 language code 'xx'" == refusal(bad_lang)
    assert (
        refusal({"name": "q", "kind": "qdrant"})
        == "test.yaml: sources.0: Value error, source 'q': kind qdrant needs 'collection'"
    )


def test_a_missing_or_unknown_kind_is_an_error_of_the_kind_key_listing_the_kinds() -> None:
    assert refusal({"name": "f", "kind": "ftp", "uri": "d"}) == (
        "test.yaml: sources.0.kind: Input should be "
        "'flores', 'http', 's3', 'hf', 'qdrant', 'aligned', 'tmx' or 'rl_logs'"
    )
    assert refusal({"name": "f", "uri": "d"}) == "test.yaml: sources.0.kind: Field required"


def test_null_means_unset_as_before() -> None:
    config = pipeline({"name": "w", "kind": "http", "uri": "u"}, overrides=["sources.w.split=null"])
    assert config.resolved_run_id() == pipeline({"name": "w", "kind": "http", "uri": "u"}).resolved_run_id()
    rl = {"name": "r", "kind": "rl_logs", "uri": "u", "trusted_clients": ["*"]}
    nulls = pipeline({**rl, "heldout_share": None, "max_length_ratio": None})
    assert nulls.resolved_run_id() == pipeline(rl).resolved_run_id()


def test_rl_logs_settings_are_their_defaults_until_set() -> None:
    source = RlLogsSource(name="r", kind="rl_logs", uri="u", trusted_clients=["*"])
    assert (source.max_length_ratio, source.reward_margin, source.heldout_share) == (3.0, 1.0, 0.1)
    assert (source.length_ratio_limit, source.reward_pair_margin, source.heldout_fraction) == (3.0, 1.0, 0.1)
    assert "heldout_share" not in source.model_dump()
    assert source.model_copy(update={"heldout_share": 0.2}).model_dump()["heldout_share"] == 0.2


def test_overrides_reach_the_keys_of_a_kind() -> None:
    config = pipeline(
        *SOURCES[4:6], overrides=["sources.vectors.collection=other", "sources.samanantar.pattern=x.{lang}"]
    )
    vectors, samanantar = config.sources
    assert isinstance(vectors, QdrantSource) and vectors.collection == "other"
    assert isinstance(samanantar, AlignedSource) and samanantar.pattern == "x.{lang}"
    with pytest.raises(ConfigError, match=r"sources\.0: .*'collection' applies to kind qdrant only"):
        pipeline(SOURCES[1], overrides=["sources.web.collection=c"])


def test_every_kind_model_field_is_described() -> None:
    for model in SOURCE_MODELS.values():
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
