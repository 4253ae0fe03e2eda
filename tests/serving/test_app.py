"""The service through its HTTP interface (TestClient), on a tiny real model and a real registry."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import EN_BN, EN_HI, ENGINES, HI_EN, TOKEN, Serve, register, serving_config, wait_ready

from bhashaflow.core.settings import Settings
from bhashaflow.episodes.store import EpisodeStore
from bhashaflow.registry.store import Registry
from serving.app import create_app
from serving.deps import Service

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _body(*texts: str, src: str = "eng_Latn", tgt: str = "hin_Deva") -> dict[str, Any]:
    return {"texts": list(texts), "src_lang": src, "tgt_lang": tgt}


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def _hold_worker(client: TestClient) -> threading.Event:
    """Keep the generation threads busy until the event is set, so requests pile up in the queue."""
    release = threading.Event()
    batcher = _service(client).engine.batcher
    for _ in range(batcher.workers):  # a worker busy with one of these takes no other work
        batcher.call_in_worker(lambda: release.wait(30))
    return release


def _wait_for(cond: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def _metric_samples(client: TestClient) -> dict[str, list[Any]]:
    text = client.get("/metrics", headers=AUTH).text
    return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}


@ENGINES
def test_translate_returns_translations_episodes_and_script_checks(serve: Serve, tmp_path: Path) -> None:
    client = serve()
    resp = client.post("/v1/translate", json=_body("Hello world.", "How are you?", ""))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"translations", "adapter", "episode_ids", "script_valid"}
    assert len(body["translations"]) == 3 and all(isinstance(t, str) for t in body["translations"])
    assert body["translations"][2] == ""  # nothing to translate
    assert body["adapter"] == {"direction": EN_HI, "version": "v0001"}
    assert body["episode_ids"] == [1, 2, 3]
    assert len(body["script_valid"]) == 3 and body["script_valid"][2] is True

    with EpisodeStore(tmp_path / "episodes.db") as store:
        ep = store.get(2)
    assert (ep.input, ep.output, ep.direction, ep.adapter_version) == (
        "How are you?",
        body["translations"][1],
        EN_HI,
        "v0001",
    )
    assert ep.base_model == _service(client).config.base_model and ep.latency_ms > 0

    other = client.post("/v1/translate", json=_body("नमस्ते", src="hin_Deva", tgt="eng_Latn")).json()
    assert other["adapter"] == {"direction": HI_EN, "version": "v0001"} and other["episode_ids"] == [4]


@ENGINES
def test_health_and_adapters_describe_what_is_served(serve: Serve, engine: str) -> None:
    client = serve()
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["ready"], body["device"], body["queue_depth"]) == ("ready", True, "cpu", 0)
    assert body["memory"]["rss_bytes"] > 0
    versions = {a["direction"]: a["version"] for a in body["adapters"]}
    assert versions == {EN_HI: "v0001", HI_EN: "v0001", EN_BN: None}
    adapters = client.get("/v1/adapters").json()["adapters"]
    assert [a["direction"] for a in adapters] == [EN_HI, HI_EN, EN_BN]
    assert adapters[2]["error"] == "no promoted adapter in the registry"
    assert [a["engine"] for a in adapters] == [engine, engine, None]


def test_feedback_round_trip(serve: Serve, tmp_path: Path) -> None:
    client = serve()
    ids = client.post("/v1/translate", json=_body("one", "two")).json()["episode_ids"]
    first = client.post("/v1/feedback", json={"episode_id": ids[0], "reward": 0.5, "correction": "एक"})
    assert first.status_code == 200
    assert {k: first.json()[k] for k in ("episode_id", "reward", "correction")} == {
        "episode_id": ids[0],
        "reward": 0.5,
        "correction": "एक",
    }
    again = client.post("/v1/feedback", json={"episode_id": str(ids[0]), "reward": -1})  # string form, replaces
    assert again.status_code == 200 and again.json()["correction"] is None
    with EpisodeStore(tmp_path / "episodes.db") as store:
        ep, untouched = store.get(ids[0]), store.get(ids[1])
    assert (ep.reward, ep.correction, ep.feedback_seq) == (-1.0, None, 2)
    assert untouched.reward is None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"texts": ["hi"], "src_lang": "xx_Yyyy", "tgt_lang": "hin_Deva"}, "unknown FLORES-200 language code"),
        ({"texts": ["hi"], "src_lang": "eng_Latn", "tgt_lang": "eng_Latn"}, "same language"),
        ({"texts": [], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}, "texts"),
        ({"texts": "hi", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}, "texts"),
        ({"texts": [1, 2], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}, "texts.0"),
        ({"texts": ["hi"], "src_lang": "eng_Latn"}, "tgt_lang"),
        ({"texts": ["hi"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva", "beam": 4}, "beam: unknown field"),
        ([1, 2, 3], "body"),
        (None, "body"),
    ],
)
def test_malformed_translate_bodies_get_422_with_a_readable_message(serve: Serve, body: Any, needle: str) -> None:
    client = serve()
    resp = client.post("/v1/translate", json=body)
    assert resp.status_code == 422, resp.text
    assert needle in resp.json()["detail"]


def test_invalid_json_and_lone_surrogates_get_422(serve: Serve) -> None:
    client = serve()
    for raw in (
        b"{not json",
        b'{"texts": ["\\ud800"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}',
        b"\xff\xfe",
        b"\x80",
        b'{"texts": ["\xc3"]}',
        b"",
    ):
        resp = client.post("/v1/translate", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 422, (raw, resp.text)
        assert resp.json()["detail"]


def test_directions_without_a_promoted_adapter_get_404(serve: Serve) -> None:
    client = serve()
    for src, tgt in (("eng_Latn", "ben_Beng"), ("eng_Latn", "tam_Taml")):
        resp = client.post("/v1/translate", json=_body("hi", src=src, tgt=tgt))
        assert resp.status_code == 404
        assert resp.json() == {"detail": f"no promoted adapter is served for {src}-{tgt}"}


def test_size_limits_get_413(serve: Serve) -> None:
    client = serve(max_texts=3, max_chars=20, max_body_bytes=2000)
    too_many = client.post("/v1/translate", json=_body("a", "b", "c", "d"))
    assert too_many.status_code == 413 and too_many.json()["detail"] == "4 texts in one request; at most 3 are allowed"
    too_long = client.post("/v1/translate", json=_body("ok", "x" * 21))
    assert too_long.status_code == 413 and "texts[1] has 21 characters" in too_long.json()["detail"]
    big = client.post("/v1/translate", json=_body("y" * 3000))
    assert big.status_code == 413 and big.json()["detail"] == "request body over 2000 bytes"

    def chunks() -> Any:
        yield b'{"texts": ["'
        for _ in range(50):
            yield b"z" * 100
        yield b'"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}'

    chunked = client.post("/v1/translate", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    ids = client.post("/v1/translate", json=_body("ok")).json()["episode_ids"]
    long_fix = client.post("/v1/feedback", json={"episode_id": ids[0], "reward": 1, "correction": "c" * 21})
    assert long_fix.status_code == 413


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"episode_id": 999, "reward": 0.1}, 404),
        ({"episode_id": "999", "reward": 0.1}, 404),
        ({"episode_id": "9" * 25, "reward": 0.1}, 404),
        ({"episode_id": 0, "reward": 0.1}, 404),
        ({"episode_id": -5, "reward": 0.1}, 404),
        ({"episode_id": "abc", "reward": 0.1}, 422),
        ({"episode_id": 1.0, "reward": 0.1}, 422),
        ({"episode_id": 1, "reward": 1.5}, 422),
        ({"episode_id": 1, "reward": "0.5"}, 422),
        ({"episode_id": 1, "reward": True}, 422),
        ({"episode_id": 1}, 422),
        ({"episode_id": 1, "reward": 0.1, "correction": 5}, 422),
    ],
)
def test_feedback_errors(serve: Serve, body: dict[str, Any], status: int) -> None:
    client = serve()
    client.post("/v1/translate", json=_body("one"))
    resp = client.post("/v1/feedback", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["detail"]


def test_nan_reward_is_refused(serve: Serve) -> None:
    client = serve()
    client.post("/v1/translate", json=_body("one"))
    resp = client.post(
        "/v1/feedback", content=b'{"episode_id": 1, "reward": NaN}', headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422


def test_a_full_queue_answers_503_with_retry_after(serve: Serve) -> None:
    client = serve(queue_limit=4, max_wait_ms=0)
    release = _hold_worker(client)
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(client.post, "/v1/translate", json=_body("a", "b", "c"))
        _wait_for(lambda: _service(client).engine.batcher.queue_depth == 3)
        refused = client.post("/v1/translate", json=_body("d", "e"))
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert "queue is full" in refused.json()["detail"]
        release.set()
        assert waiting.result(30).status_code == 200
    assert client.post("/v1/translate", json=_body("d", "e")).status_code == 200


def test_a_request_past_its_deadline_gets_504_and_frees_its_slot(serve: Serve) -> None:
    client = serve(request_timeout_s=0.3, queue_limit=4)
    release = _hold_worker(client)
    try:
        late = client.post("/v1/translate", json=_body("a", "b", "c"))
        assert late.status_code == 504 and "0.3s" in late.json()["detail"]
        assert _service(client).engine.batcher.queue_depth == 0
        release.set()
        assert client.post("/v1/translate", json=_body("a", "b", "c", "d")).status_code == 200
    finally:
        release.set()
    assert client.get("/health").json()["adapters"][0]["in_flight"] == 0


@ENGINES
def test_concurrent_requests_are_batched(serve: Serve) -> None:
    client = serve(max_batch_size=8, max_wait_ms=0)
    release = _hold_worker(client)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.post, "/v1/translate", json=_body(f"sentence {i}")) for i in range(8)]
        _wait_for(lambda: _service(client).engine.batcher.queue_depth == 8)
        release.set()
        responses = [f.result(30) for f in futures]
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.json()["episode_ids"][0] for r in responses) == list(range(1, 9))
    samples = _metric_samples(client)["bhashaflow_batch_size"]
    count = next(s.value for s in samples if s.name == "bhashaflow_batch_size_count")
    total = next(s.value for s in samples if s.name == "bhashaflow_batch_size_sum")
    singles = next(s.value for s in samples if s.name == "bhashaflow_batch_size_bucket" and s.labels["le"] == "1.0")
    assert (count, total, singles) == (1.0, 8.0, 0.0)  # one generate call carried all eight


def test_metrics_count_requests_by_status_and_show_queue_depth(serve: Serve) -> None:
    client = serve()
    client.post("/v1/translate", json=_body("hi"))
    client.post("/v1/translate", json=_body("hi", src="eng_Latn", tgt="ben_Beng"))
    client.post("/v1/translate", json={"bad": 1})
    samples = _metric_samples(client)
    counts = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in samples["bhashaflow_requests"]
        if s.name == "bhashaflow_requests_total"
    }
    assert counts[("/v1/translate", "200")] == 1 and counts[("/v1/translate", "404")] == 1
    assert counts[("/v1/translate", "422")] == 1
    assert samples["bhashaflow_queue_depth"][0].value == 0
    latency = [s for s in samples["bhashaflow_request_latency_seconds"] if s.name.endswith("_count")]
    assert any(s.labels["route"] == "/v1/translate" and s.value == 3 for s in latency)


def test_each_app_has_its_own_metrics_registry(serve: Serve) -> None:
    first, second = serve(), serve()
    first.post("/v1/translate", json=_body("hi"))
    counts = [
        sum(
            s.value
            for s in _metric_samples(c)["bhashaflow_requests"]
            if s.name == "bhashaflow_requests_total" and s.labels["route"] == "/v1/translate"
        )
        for c in (first, second)
    ]
    assert counts == [1, 0]


def test_reload_needs_the_admin_token(serve: Serve) -> None:
    client = serve()
    assert client.post("/v1/adapters/reload").status_code == 401
    wrong = client.post("/v1/adapters/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/v1/adapters/reload", headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    ok = client.post("/v1/adapters/reload", headers=AUTH)
    assert ok.status_code == 200 and ok.json()["swapped"] == [] and ok.json()["errors"] == {}


def test_reload_is_refused_when_no_token_is_configured(serve: Serve) -> None:
    client = serve(token=None)
    resp = client.post("/v1/adapters/reload", headers={"Authorization": "Bearer anything"})
    assert resp.status_code == 401 and "BHASHAFLOW_API_TOKEN" in resp.json()["detail"]


def test_require_auth_guards_every_endpoint(serve: Serve) -> None:
    client = serve(require_auth=True)
    for method, path, body in (
        ("POST", "/v1/translate", _body("hi")),
        ("POST", "/v1/feedback", {"episode_id": 1, "reward": 0}),
        ("GET", "/health", None),
        ("GET", "/v1/adapters", None),
        ("GET", "/metrics", None),
    ):
        assert client.request(method, path, json=body).status_code == 401, path
    assert client.post("/v1/translate", json=_body("hi"), headers=AUTH).status_code == 200
    assert client.get("/metrics", headers=AUTH).status_code == 200


def test_require_auth_without_a_token_is_a_config_error(tmp_path: Path, tiny_base: str, registry: str) -> None:
    from bhashaflow.config import ConfigError

    config = serving_config(tmp_path, tiny_base, registry, require_auth=True)
    with pytest.raises(ConfigError, match="BHASHAFLOW_API_TOKEN"):
        create_app(config, Settings(api_token=None))  # type: ignore[call-arg]


@ENGINES
def test_reload_under_load_loses_no_request(
    serve: Serve, registry: str, tiny_base: str, adapters: dict[str, Path]
) -> None:
    client = serve(max_batch_size=4, max_wait_ms=2)
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def hammer(i: int) -> None:
        while not stop.is_set():
            resp = client.post("/v1/translate", json=_body(f"load {i}", "more text"))
            seen.append((resp.status_code, resp.json().get("adapter", {}).get("version", resp.text)))

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(hammer, i) for i in range(4)]
        _wait_for(lambda: len(seen) >= 8)
        assert register(registry, EN_HI, adapters["b"], tiny_base) == "v0002"
        reload = client.post("/v1/adapters/reload", headers=AUTH)
        count_at_reload = len(seen)
        _wait_for(lambda: len(seen) >= count_at_reload + 8)
        stop.set()
        for w in workers:
            w.result(30)
    assert reload.status_code == 200
    assert reload.json()["swapped"] == [{"direction": EN_HI, "previous": "v0001", "version": "v0002"}]
    assert {status for status, _ in seen} == {200}
    versions = [v for _, v in seen]
    assert versions[0] == "v0001" and versions[-1] == "v0002"
    assert client.post("/v1/translate", json=_body("after")).json()["adapter"]["version"] == "v0002"
    engine = _service(client).engine
    _wait_for(lambda: "eng_Latn__hin_Deva__v0001" not in engine.loaded())  # the old version was removed
    assert engine.loaded() == ["eng_Latn__hin_Deva__v0002", "hin_Deva__eng_Latn__v0001"]
    assert sorted(engine.lm.adapters) == (engine.loaded() if engine.config.serving.engine == "torch" else [])


@ENGINES
def test_a_tampered_promoted_version_is_refused_with_409_and_the_served_one_stays(
    serve: Serve, registry: str, tiny_base: str, adapters: dict[str, Path], engine: str
) -> None:
    client = serve()
    version = register(registry, EN_HI, adapters["b"], tiny_base)
    weights = Path(Registry(registry).adapter_uri(EN_HI, version)) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    reload = client.post("/v1/adapters/reload", headers=AUTH)
    assert reload.status_code == 409 and reload.json()["swapped"] == []
    error = reload.json()["errors"][EN_HI]
    assert error.startswith(f"{EN_HI}/{version}: adapter_model.safetensors sha256 mismatch")
    assert client.post("/v1/translate", json=_body("still")).json()["adapter"]["version"] == "v0001"
    assert client.get("/health").json()["adapters"][0] | {"loaded_at": None} == {
        "direction": EN_HI,
        "version": "v0001",
        "manifest_sha256": Registry(registry).verify(EN_HI, "v0001").manifest_sha256,
        "loaded_at": None,
        "in_flight": 0,
        "engine": engine,
        "error": error,
    }
    refusals = _metric_samples(client)["bhashaflow_adapter_refusals"]
    assert [(s.labels["direction"], s.value) for s in refusals if s.name.endswith("_total")] == [(EN_HI, 1.0)]
    # Promoting the served version again clears the refusal.
    Registry(registry).promote(EN_HI, "v0001")
    again = client.post("/v1/adapters/reload", headers=AUTH)
    assert again.status_code == 200 and again.json()["errors"] == {}
    assert client.get("/health").json()["adapters"][0]["error"] is None


def test_the_openapi_schema_documents_error_bodies_and_this_deployments_limits(serve: Serve) -> None:
    schema = serve(max_texts=3, max_chars=20).get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components  # FastAPI's list-shaped 422 is not what the service sends
    texts = components["TranslateRequest"]["properties"]["texts"]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (3, 20)
    assert "hin_Deva" in components["TranslateRequest"]["properties"]["src_lang"]["enum"]
    translate = schema["paths"]["/v1/translate"]["post"]["responses"]
    assert translate["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationErrorResponse")
    assert set(translate["503"]["headers"]) == {"Retry-After"}
    assert all("401" in op["responses"] for path in schema["paths"].values() for op in path.values())
    assert set(schema["paths"]["/v1/adapters/reload"]["post"]["responses"]) >= {"200", "401", "409", "503"}


@ENGINES
def test_the_registry_is_polled_for_newly_promoted_adapters(
    serve: Serve, registry: str, tiny_base: str, adapters: dict[str, Path]
) -> None:
    client = serve(reload_poll_s=0.1)
    register(registry, EN_BN, adapters["b"], tiny_base)  # promoted for a direction that had none
    _wait_for(lambda: client.get("/v1/adapters").json()["adapters"][2]["version"] == "v0001")
    resp = client.post("/v1/translate", json=_body("hello", tgt="ben_Beng"))
    assert resp.status_code == 200 and resp.json()["adapter"] == {"direction": EN_BN, "version": "v0001"}


@pytest.mark.parametrize(
    ("base", "revision", "needle"),
    [
        ("some/other-base", None, "was trained on 'some/other-base'"),
        (None, "sha256:0000", "was trained on revision 'sha256:0000' of the base"),
    ],
)
def test_an_adapter_trained_on_another_base_is_refused(
    serve: Serve,
    registry: str,
    tiny_base: str,
    adapters: dict[str, Path],
    base: str | None,
    revision: str | None,
    needle: str,
) -> None:
    register(registry, EN_BN, adapters["b"], base or tiny_base, revision=revision)
    client = serve()
    entry = client.get("/v1/adapters").json()["adapters"][2]
    assert entry["version"] is None and needle in entry["error"]
    assert client.post("/v1/translate", json=_body("x", tgt="ben_Beng")).status_code == 404


def test_an_adapter_registered_with_the_served_base_revision_is_loaded(
    serve: Serve, registry: str, tiny_base: str, adapters: dict[str, Path]
) -> None:
    content_hash = json.loads((Path(tiny_base) / "bhashaflow_base.json").read_text())["content_hash"]
    register(registry, EN_BN, adapters["b"], tiny_base, revision=content_hash)
    client = serve()
    assert client.get("/v1/adapters").json()["adapters"][2]["version"] == "v0001"


def test_a_base_that_cannot_load_reports_failed(tmp_path: Path, registry: str) -> None:
    config = serving_config(tmp_path, str(tmp_path / "no-such-base"), registry)
    with TestClient(create_app(config, Settings()), raise_server_exceptions=False) as client:
        _wait_for(lambda: client.get("/health").json()["status"] != "loading")
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert health.headers["Retry-After"] == "5"
        assert "could not load base model" in health.json()["error"]
        resp = client.post("/v1/translate", json=_body("hi"))
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"


def test_unknown_routes_and_methods_answer_json(serve: Serve) -> None:
    client = serve()
    assert client.get("/nope").json() == {"detail": "Not Found"}
    resp = client.get("/v1/translate")
    assert resp.status_code == 405 and resp.json() == {"detail": "Method Not Allowed"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
translate_like = st.fixed_dictionaries(
    {},
    optional={
        "texts": st.lists(st.text(max_size=40), max_size=5) | json_values,
        "src_lang": st.sampled_from(["eng_Latn", "hin_Deva", "xx", ""]) | json_values,
        "tgt_lang": st.sampled_from(["hin_Deva", "eng_Latn", "ben_Beng"]) | json_values,
        "episode_id": st.integers() | st.text(max_size=25) | json_values,
        "reward": st.floats() | json_values,
        "correction": st.text(max_size=40) | json_values,
    },
)


def test_arbitrary_bodies_never_get_a_500(serve: Serve) -> None:
    client = serve(max_texts=4, max_chars=30)
    client.post("/v1/translate", json=_body("seed"))

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    @given(body=translate_like | json_values, raw=st.binary(max_size=60))
    def check(body: Any, raw: bytes) -> None:
        for path in ("/v1/translate", "/v1/feedback"):
            payload = json.dumps(body, allow_nan=True).encode()
            for content in (payload, raw):
                resp = client.post(path, content=content, headers={"Content-Type": "application/json"})
                assert resp.status_code in (200, 404, 413, 422), (path, content, resp.status_code, resp.text)
                assert isinstance(resp.json()["detail"] if resp.status_code != 200 else resp.json(), (str, dict))

    check()


def test_service_stays_ready_after_the_app_stops_and_starts_again(
    tmp_path: Path, tiny_base: str, registry: str
) -> None:
    config = serving_config(tmp_path, tiny_base, registry)
    for expected_id in (1, 2):
        with TestClient(create_app(config, Settings())) as client:
            wait_ready(client)
            assert client.post("/v1/translate", json=_body("again")).json()["episode_ids"] == [expected_id]


def test_a_batch_that_runs_out_of_memory_is_split_and_only_the_text_that_fails_alone_gets_503(serve: Serve) -> None:
    from bhashaflow.core.memory import AllocationCap

    client = serve(max_batch_size=8, max_wait_ms=0)
    batcher = _service(client).engine.batcher
    cap = AllocationCap(None)
    batcher.call_in_worker(cap.__enter__).result(10)  # dispatch modes act in the thread that entered them
    try:
        long_text = " ".join(["The committee will meet again next week to discuss the budget."] * 12)
        assert client.post("/v1/translate", json=_body(long_text)).status_code == 200
        long_alone, cap.largest = cap.largest, 0
        assert client.post("/v1/translate", json=_body("Hello world.", "How are you?")).status_code == 200
        assert cap.largest * 3 < long_alone
        cap.max_bytes = long_alone - 1  # the long text does not fit even alone; the short ones fit together

        release = _hold_worker(client)
        shorts = [_body("Hello world.", "How are you?"), _body("Good morning."), _body("See you soon.")]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.post, "/v1/translate", json=body) for body in shorts]
            futures.insert(1, pool.submit(client.post, "/v1/translate", json=_body(long_text)))
            _wait_for(lambda: batcher.queue_depth == 5)
            release.set()
            responses = [f.result(60) for f in futures]
    finally:
        batcher.call_in_worker(lambda: cap.__exit__(None, None, None)).result(10)
    assert [r.status_code for r in responses] == [200, 503, 200, 200]
    assert int(responses[1].headers["Retry-After"]) >= 1 and "out of device memory" in responses[1].json()["detail"]
    assert [len(r.json()["translations"]) for r in responses if r.status_code == 200] == [2, 1, 1]
    samples = _metric_samples(client)["bhashaflow_out_of_memory"]
    counted = {s.labels["outcome"]: s.value for s in samples if s.name == "bhashaflow_out_of_memory_total"}
    assert counted["refused"] == 1 and counted["split"] >= 1
    assert client.post("/v1/translate", json=_body("Hello world.")).status_code == 200  # the service goes on


def test_a_direction_the_base_has_no_tag_for_is_a_clear_422(
    tmp_path: Path, tiny_base: str, registry: str, adapters: dict[str, Path], cache_dir: Path
) -> None:
    """The base was built without Tamil: an adapter promoted for en-ta cannot be told its target, never a 500."""
    from serving_helpers import Clients

    from bhashaflow.core.settings import Settings

    register(registry, "eng_Latn-tam_Taml", adapters["b"], tiny_base)
    config = serving_config(tmp_path, tiny_base, registry)
    config = config.model_copy(update={"directions": [*config.directions, "eng_Latn-tam_Taml"]})
    clients = Clients()
    try:
        client = clients.start(config, Settings(api_token=TOKEN))  # type: ignore[call-arg]
        resp = client.post("/v1/translate", json=_body("hello", tgt="tam_Taml"), headers=AUTH)
        assert resp.status_code == 422, resp.text
        assert "no tag for tam_Taml" in resp.text and "eng_Latn-tam_Taml" in resp.text
        assert client.post("/v1/translate", json=_body("hello"), headers=AUTH).status_code == 200
    finally:
        clients.close()
