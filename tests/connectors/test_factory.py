"""The connector factory: one constructor per source kind, each taking the model of its kind."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from bhashaflow.config import SOURCE_MODELS, SourceConfig, SourceKind
from bhashaflow.core.records import SourceError
from bhashaflow.core.settings import Settings
from connectors.aligned import AlignedConnector
from connectors.factory import CONNECTORS, open_connector
from connectors.http import HttpConnector
from connectors.rl_logs import RlLogsConnector
from connectors.tmx import TmxConnector

LANGS = {"src": "eng_Latn", "tgt": "hin_Deva"}


def test_every_kind_has_a_constructor_and_a_model() -> None:
    assert set(CONNECTORS) == set(get_args(SourceKind)) == set(SOURCE_MODELS)


@pytest.mark.parametrize("kind", sorted(CONNECTORS))
def test_each_constructor_takes_the_model_of_its_kind(kind: str) -> None:
    build = CONNECTORS[kind]  # type: ignore[index]
    first = next(iter(inspect.signature(build).parameters))
    assert get_type_hints(build)[first] is SOURCE_MODELS[kind]


@pytest.mark.parametrize(
    ("source", "connector"),
    [
        ({"name": "web", "kind": "http", "uri": "http://127.0.0.1:9/pairs.jsonl"}, HttpConnector),
        ({"name": "tm", "kind": "tmx", "uri": "memory.tmx", "langs": LANGS}, TmxConnector),
        ({"name": "opus", "kind": "aligned", "uri": "opus", "langs": LANGS}, AlignedConnector),
        ({"name": "fb", "kind": "rl_logs", "uri": "rl-logs", "trusted_clients": ["*"]}, RlLogsConnector),
    ],
)
def test_open_connector_builds_the_connector_of_the_kind(tmp_path: Path, source: dict, connector: type) -> None:
    # None of these reads anything before iter_records.
    built = open_connector(SourceConfig.model_validate(source), Settings(), ["eng_Latn-hin_Deva"])
    assert type(built) is connector
    assert built.name == source["name"]


def test_a_kind_without_a_constructor_is_a_source_error_naming_source_and_kind() -> None:
    unchecked = SourceConfig.model_construct(name="old", kind="http", uri="x")
    object.__setattr__(unchecked, "kind", "ftp")
    with pytest.raises(SourceError, match="source 'old': unknown kind 'ftp'"):
        open_connector(unchecked, Settings(), [])
