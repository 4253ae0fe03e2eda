"""The service under abuse and faults, on the tiny real model over real HTTP.

- every endpoint fuzzed from the service's own OpenAPI schema (schemathesis), with and without the token:
  no 5xx but the documented 503/504, answers that match the schema, none slower than a bound;
- ten times the queue limit at once against a real server process: 200 or 503 with Retry-After, as many
  admitted as the queue holds, bounded memory, healthy afterwards;
- adapter reloads while clients translate: no failed request, and after the switch only the new version;
- a promoted version corrupted in the registry: the reload is refused (409 naming the version and the
  problem), the previous version keeps serving, /health and a metric say so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import requests
import schemathesis
import uvicorn
import yaml
from _knobs import count
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.config import SchemathesisConfig
from serving_helpers import EN_HI, ENGINES, HI_EN, REPO, TOKEN, make_adapter, register

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.core.settings import Settings
from bhashaflow.registry.store import Registry
from serving.app import create_app
from serving.deps import Service
from serving.engine import adapter_name

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVED = [("eng_Latn", "hin_Deva"), ("hin_Deva", "eng_Latn")]


# --- a tiny base's adapters, configs and servers ----------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """'a' and 'b': two random adapters; 'misfit': b's weights under a config of another rank (loads fail)."""
    root = tmp_path_factory.mktemp("serving-adapters")
    out = {key: make_adapter(tiny_base, root / key, seed) for key, seed in (("a", 1), ("b", 2))}
    misfit = root / "misfit"
    shutil.copytree(out["b"], misfit)
    config = json.loads((misfit / "adapter_config.json").read_text())
    config.update(r=8, lora_alpha=16)  # the weights have rank 4: valid files, refused only when loaded
    (misfit / "adapter_config.json").write_text(json.dumps(config))
    out["misfit"] = misfit
    return out


def _config(tmp_path: Path, base: str, registry: str, *, max_new_tokens: int = 6, **serving: Any) -> PipelineConfig:
    return config_from_dict(
        {
            "directions": [EN_HI, HI_EN],
            "base_model": base,
            "registry": registry,
            "evaluation": {"max_new_tokens": max_new_tokens},  # random weights rarely stop early
            "serving": {"episodes_db": str(tmp_path / "episodes.db"), **serving},
        }
    )


def _registry(tmp_path: Path, base: str, adapters: dict[str, Path]) -> str:
    uri = str(tmp_path / "registry")
    register(uri, EN_HI, adapters["a"], base)
    register(uri, HI_EN, adapters["b"], base)
    return uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, alive: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert alive(), "the server died while starting"
        assert time.monotonic() < deadline, "the server never became ready"
        try:
            if httpx.get(f"{url}/health", headers=AUTH, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


@contextlib.contextmanager
def live_server(config: PipelineConfig) -> Iterator[tuple[str, Service]]:
    """The app under uvicorn in a thread of this process: real HTTP, and its engine in reach of the test."""
    app = create_app(config, Settings(api_token=TOKEN))  # type: ignore[call-arg]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        _wait_healthy(url, thread.is_alive)
        yield url, app.state.service
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the server did not shut down"


_RUN = (
    "import sys\n"
    "from bhashaflow.config import load_config\n"
    "from serving.app import run\n"
    "run(load_config(sys.argv[1]), '127.0.0.1', int(sys.argv[2]))\n"
)


@contextlib.contextmanager
def server_process(tmp_path: Path, config: PipelineConfig) -> Iterator[tuple[str, psutil.Process]]:
    """`serving.app.run` in its own process, as users run it: its memory is its own to measure."""
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = _free_port()
    env = {**os.environ, "BHASHAFLOW_API_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(path), str(port)], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, lambda: proc.poll() is None)
        yield url, psutil.Process(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _translate_body(texts: list[str], src: str = "eng_Latn", tgt: str = "hin_Deva") -> dict[str, Any]:
    return {"texts": texts, "src_lang": src, "tgt_lang": tgt}


def _metrics(url: str) -> dict[str, list[Any]]:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}


def _wait_for(cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what} never held"
        time.sleep(0.02)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# --- fuzzing every endpoint from the OpenAPI schema ---------------------------------------------------------

# Schema checks on every answer. Left out: positive_data_acceptance, because a schema-valid request may
# still be refused for what no schema says (src_lang == tgt_lang, no adapter for the pair, an unknown episode).
SCHEMA_CHECKS = [
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
]
# 413 is how the service refuses texts over its documented maxItems/maxLength.
ST_CONFIG = {"checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "404", "409", "413", "422"]}}}
CALL_TIMEOUT_S = 10.0  # "no hang": every call answers within this (request_timeout_s is 5)
FUZZ_WEIGHTS = {
    "/v1/translate": 3,
    "/v1/feedback": 2,
    "/v1/adapters/reload": 1,
    "/v1/adapters": 1,
    "/health": 1,
    "/metrics": 1,
    "/translate": 2,
    "/suggest": 1,
    "/detect": 1,
    "/languages": 1,
    "/frontend/settings": 1,
}
LIBRE_SERVED = [("en", "hi"), ("hi", "en")]  # SERVED in LibreTranslate's codes

# Header values a client could send: printable latin-1 (what HTTP carries), no leading whitespace (requests
# refuses that, the no-break space included).
_header_text = st.text(
    st.characters(
        codec="latin-1", min_codepoint=0x20, exclude_characters="\x7f" + "".join(map(chr, range(0x80, 0xA0)))
    ),
    max_size=40,
).map(str.lstrip)
AUTH_HEADERS: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just(AUTH),
    st.just(AUTH),  # twice: half the cases carry the token
    st.just({}),
    _header_text.map(lambda t: {"Authorization": f"Bearer {t}"}),
    _header_text.map(lambda t: {"Authorization": t}),
)
EXTRA_QUERY = st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=8), st.text(max_size=20), max_size=3)


@dataclass
class FuzzTally:
    cases: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)


def _check_no_server_error(case: Any, resp: requests.Response) -> str | None:
    """None when the answer is not a 5xx, or is a documented 503 (with Retry-After) or 504."""
    if resp.status_code < 500:
        return None
    documented = str(resp.status_code) in case.operation.responses.status_codes
    if resp.status_code in (503, 504) and documented:
        retry_after = resp.headers.get("Retry-After", "")
        if resp.status_code == 504 or (retry_after.isdigit() and int(retry_after) >= 1):
            return None
    return (
        f"{case.operation.label}: {resp.status_code} {resp.text[:300]} (Retry-After {resp.headers.get('Retry-After')})"
    )


def _answered(url: str) -> Counter[str]:
    """Responses the server counted, by status."""
    out = Counter[str]()
    for sample in _metrics(url)["bhashaflow_requests"]:
        if sample.name == "bhashaflow_requests_total":
            out[sample.labels["status"]] += int(sample.value)
    return out


def _fuzz_operation(
    url: str,
    operation: Any,
    mode: GenerationMode,
    examples: int,
    run_seed: int,
    tally: FuzzTally,
    session: requests.Session,
) -> None:
    path = operation.path
    positive = mode == GenerationMode.POSITIVE

    @hypothesis_seed(run_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        auth=AUTH_HEADERS,
        query=EXTRA_QUERY,
        steer=st.integers(0, 3),
        episode=st.integers(1, 40),
    )
    def one(case: Any, auth: dict[str, str], query: dict[str, str], steer: int, episode: int) -> None:
        # Steer most valid cases onto what is served, so the real engine and episode store are exercised.
        if positive and isinstance(case.body, dict) and steer >= 1:
            if path == "/v1/translate":
                case.body["src_lang"], case.body["tgt_lang"] = SERVED[steer % 2]
            elif path == "/v1/feedback":
                case.body["episode_id"] = episode if steer == 2 else str(episode)
            elif path in ("/translate", "/suggest"):
                case.body["source"], case.body["target"] = LIBRE_SERVED[steer % 2]
        started = time.perf_counter()
        try:
            resp = case.call(base_url=url, session=session, headers=auth, params=query or None, timeout=CALL_TIMEOUT_S)
        except requests.Timeout:
            raise AssertionError(f"{operation.label} hung past {CALL_TIMEOUT_S}s (seed {run_seed})") from None
        tally.latencies.append(time.perf_counter() - started)
        tally.cases += 1
        tally.statuses[(path, resp.status_code)] += 1
        problem = _check_no_server_error(case, resp)
        assert problem is None, f"{problem} (seed {run_seed})"
        case.validate_response(resp, checks=SCHEMA_CHECKS, headers=auth)

    one()


def test_fuzzing_every_endpoint_from_the_openapi_schema(
    tmp_path: Path, tiny_base: str, adapters: dict[str, Path], seed: int, record: Any
) -> None:
    total = count("fuzz_cases", 1000, 10000)
    registry = _registry(tmp_path, tiny_base, adapters)
    tally = FuzzTally()
    server_errors = Counter[str]()
    weight = sum(FUZZ_WEIGHTS.values())
    # Half the cases against an open service (only the admin endpoint checks the token), half against one
    # that requires it everywhere.
    for half, require_auth in enumerate((False, True)):
        # Short texts keep the cases quick; the body limit fits 4 x 40 characters even as \uXXXX escapes.
        config = _config(
            tmp_path,
            tiny_base,
            registry,
            max_texts=4,
            max_chars=40,
            max_body_bytes=4096,
            request_timeout_s=5,
            require_auth=require_auth,
        )
        with live_server(config) as (url, _), requests.Session() as session:
            document = httpx.get(f"{url}/openapi.json", headers=AUTH, timeout=10).json()
            schema = schemathesis.openapi.from_dict(document, config=SchemathesisConfig.from_dict(ST_CONFIG))
            operations = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.path)
            assert {op.path for op in operations} == set(FUZZ_WEIGHTS), "an endpoint is not fuzzed"
            answered_before = _answered(url)  # the 503s of /health while it was loading are not the fuzz's
            for i, operation in enumerate(operations):
                # 5% over the share: hypothesis may end an operation a few cases early.
                share = -(-total * 21 * FUZZ_WEIGHTS[operation.path] // (40 * weight))
                takes_input = bool(operation.body) or any(True for _ in operation.iter_parameters())
                # Negative cases need inputs to break; parameterless GETs vary only headers and the query.
                modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes_input else [GenerationMode.POSITIVE]
                for j, mode in enumerate(modes):
                    run_seed = seed + 100 * half + 10 * i + j
                    _fuzz_operation(url, operation, mode, -(-share // len(modes)), run_seed, tally, session)
            # The server's own count of what it answered agrees: no 5xx; and it is still ready and idle.
            answered = _answered(url) - answered_before
            server_errors.update({status: n for status, n in answered.items() if status.startswith("5")})
            health = httpx.get(f"{url}/health", headers=AUTH, timeout=10)
            assert health.status_code == 200 and health.json()["queue_depth"] == 0, health.text
            assert all(adapter["in_flight"] == 0 for adapter in health.json()["adapters"]), health.text
            after = httpx.post(
                f"{url}/v1/translate", json=_translate_body(["after the fuzz"]), headers=AUTH, timeout=30
            )
            assert after.status_code == 200, after.text

    translated = tally.statuses[("/v1/translate", 200)]
    refused_auth = Counter(path for (path, status), n in tally.statuses.items() for _ in range(n) if status == 401)
    record(
        "OpenAPI fuzz of every endpoint (schemathesis; open and require_auth, with/without token)",
        area="serving",
        tried=tally.cases,
        lost=sum(server_errors.values()),
        operations=len(FUZZ_WEIGHTS),
        translated=translated,
        libre_translated=tally.statuses[("/translate", 200)],
        libre_suggested=tally.statuses[("/suggest", 200)],
        refused_401=sum(refused_auth.values()),
        p99_ms=round(_p(tally.latencies, 0.99) * 1000, 1),
        max_ms=round(max(tally.latencies) * 1000, 1),
    )
    assert tally.cases >= total, f"only {tally.cases} of {total} cases ran (seed {seed})"
    assert not server_errors, f"the server answered 5xx: {dict(server_errors)} (seed {seed})"
    assert translated > 0, dict(tally.statuses)
    assert set(refused_auth) == set(FUZZ_WEIGHTS), f"some endpoint never refused a bad token: {dict(refused_auth)}"


# --- overload at ten times the queue limit -----------------------------------------------------------------

QUEUE_LIMIT = 8
BATCH = 4
# What the server may grow by under the burst: 10x the queue limit in open connections and parsed requests
# (kilobytes each), the queued texts, one batch's activations on a 32-wide model, and allocator slack.
# A queue that did not bound its contents, or per-request state that is never freed, grows past this.
RSS_GROWTH_BOUND_MB = 32.0
RSS_DRIFT_BOUND_MB = 16.0  # from the first round's end to the last's: no creeping growth across rounds


class Burst:
    """One client per text, each connected and waiting at a barrier: `fire()` sends every POST at once."""

    def __init__(self, url: str, texts: list[str]) -> None:
        self.url = url
        self.texts = texts
        self.barrier = threading.Barrier(len(texts) + 1)
        self.results: list[tuple[int, str, str] | BaseException] = [RuntimeError("no answer")] * len(texts)
        self.sent = [0.0] * len(texts)
        self.threads = [threading.Thread(target=self._post, args=(i,), daemon=True) for i in range(len(texts))]
        for thread in self.threads:
            thread.start()
        _wait_for(lambda: self.barrier.n_waiting == len(texts), what="every burst client connected")

    def _post(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            try:
                client.get("/health")  # connect first: the burst is then only the requests
            finally:
                self.barrier.wait()
            self.sent[i] = time.perf_counter()
            try:
                resp = client.post("/v1/translate", json=_translate_body([self.texts[i]]))
                body = resp.json()
                detail = body["adapter"]["version"] if resp.status_code == 200 else str(body.get("detail", ""))
                self.results[i] = (resp.status_code, resp.headers.get("Retry-After", ""), detail)
            except BaseException as exc:  # noqa: BLE001 - a connection error is a finding, reported by answers()
                self.results[i] = exc

    def fire(self) -> float:
        """Release every request; returns how long sending them all took."""
        self.barrier.wait()
        released = time.perf_counter()
        for thread in self.threads:
            thread.join(180)
        return max(self.sent) - released

    def answers(self) -> list[tuple[int, str, str]]:
        """(status, Retry-After, version or error detail) of every request."""
        errors = [r for r in self.results if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} requests got no HTTP answer, e.g. {errors[0]!r}"
        return [r for r in self.results if not isinstance(r, BaseException)]


BLOCKER = " ".join(["blocker"] * 60)


def test_ten_times_the_queue_limit_gets_503_with_retry_after_and_bounded_memory(
    tmp_path: Path, tiny_base: str, adapters: dict[str, Path], seed: int, record: Any
) -> None:
    rounds = count("overload_rounds", 3, 20)
    registry = _registry(tmp_path, tiny_base, adapters)
    # 128 new tokens: a batch (~0.2 s quiet) outlasts the burst's arrival (~20-70 ms). The torch engine: a
    # CTranslate2 batch ends before a poll can see it running.
    config = _config(
        tmp_path,
        tiny_base,
        registry,
        max_new_tokens=128,
        queue_limit=QUEUE_LIMIT,
        max_batch_size=BATCH,
        max_wait_ms=5,
        request_timeout_s=120,
        engine="torch",
    )
    words = "river mountain city rain book friend morning light road market school water".split()
    admitted: list[int] = []
    burst_ms: list[int] = []
    lost: list[str] = []
    with server_process(tmp_path, config) as (url, proc):
        warm = httpx.post(f"{url}/v1/translate", json=_translate_body(["warm up"] * BATCH), timeout=120)
        assert warm.status_code == 200, warm.text
        baseline = proc.memory_info().rss
        peak = [baseline]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        after_round: list[int] = []
        try:
            for r in range(rounds):
                rng = random.Random(seed + r)
                burst = Burst(url, [" ".join(rng.choices(words, k=rng.randint(2, 6))) for _ in range(10 * QUEUE_LIMIT)])
                # Its clients now hold idle connections (uvicorn keeps them 5 s): fire within about a second.
                # A blocker batch keeps the worker busy, so the burst meets a queue that only the limit bounds.
                blocker_s = [0.0]

                def block(timing: list[float] = blocker_s) -> None:
                    started = time.perf_counter()
                    # Sources of 60+ tokens: the batch's bound (2 x longest source + 10) leaves it all 128 tokens.
                    httpx.post(f"{url}/v1/translate", json=_translate_body([BLOCKER] * BATCH), timeout=120)
                    timing[0] = time.perf_counter() - started

                blocker = threading.Thread(target=block)
                blocker.start()

                def running() -> bool:
                    health = httpx.get(f"{url}/health", timeout=10).json()
                    return bool(health["adapters"][0]["in_flight"] >= 1 and health["queue_depth"] == 0)

                _wait_for(running, what="the blocker's batch running")
                sending = burst.fire()
                blocker.join(120)
                answers = burst.answers()
                statuses = Counter(status for status, _, _ in answers)
                where = f"round {r}, seed {seed}: {dict(statuses)}, burst {sending:.3f}s, batch {blocker_s[0]:.3f}s"
                # Lost: any answer but a translation by the served version or a 503 that says when to retry.
                lost += [
                    f"{where}: {status} Retry-After {retry_after!r}: {detail[:200]}"
                    for status, retry_after, detail in answers
                    if not (status == 200 and detail == "v0001")
                    and not (
                        status == 503
                        and retry_after.isdigit()
                        and 1 <= int(retry_after) <= 60
                        and "queue is full" in detail
                    )
                ]
                # The first QUEUE_LIMIT fit; more only as the worker takes batches out while the burst arrives
                # (one batch at most when the blocker's batch outlasts the burst, as it is sized to).
                batches_during = 1 + int(sending / max(blocker_s[0], 1e-3))
                assert QUEUE_LIMIT <= statuses[200] <= QUEUE_LIMIT + BATCH * batches_during, where
                admitted.append(statuses[200])
                burst_ms.append(round(sending * 1000))
                health = httpx.get(f"{url}/health", timeout=10)
                assert health.status_code == 200 and health.json()["queue_depth"] == 0, where
                after_round.append(proc.memory_info().rss)
        finally:
            sampling.set()
            sampler.join(5)
        final = httpx.post(f"{url}/v1/translate", json=_translate_body(["after the storm"]), timeout=120)
    growth_mb = (peak[0] - baseline) / 2**20
    drift_mb = (after_round[-1] - after_round[0]) / 2**20
    record(
        "10x the queue limit at once (real server process)",
        area="serving",
        tried=rounds * 10 * QUEUE_LIMIT,
        lost=len(lost),
        rounds=rounds,
        queue_limit=QUEUE_LIMIT,
        admitted_per_round=admitted,
        refused_503=rounds * 10 * QUEUE_LIMIT - sum(admitted),
        burst_ms_max=max(burst_ms),
        peak_rss_growth_mb=round(growth_mb, 1),
        rss_drift_mb=round(drift_mb, 1),
    )
    assert not lost, lost[:5]
    assert final.status_code == 200, final.text
    assert growth_mb <= RSS_GROWTH_BOUND_MB, f"RSS grew {growth_mb:.1f} MiB under overload (seed {seed})"
    assert drift_mb <= RSS_DRIFT_BOUND_MB, f"RSS crept {drift_mb:.1f} MiB over {rounds} rounds (seed {seed})"


# --- adapter reload while clients translate ---------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    status: int
    version: str


@ENGINES
def test_reloads_under_load_fail_no_request(
    tmp_path: Path, tiny_base: str, adapters: dict[str, Path], seed: int, record: Any, engine: str, cache_dir: Path
) -> None:
    rounds = count("reload_rounds", 3, 20)
    registry = _registry(tmp_path, tiny_base, adapters)
    config = _config(tmp_path, tiny_base, registry, max_batch_size=4, max_wait_ms=2, engine=engine)
    calls: list[Call] = []
    failures: list[str] = []
    stop = threading.Event()

    def client_loop(i: int) -> None:
        rng = random.Random(seed * 31 + i)
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                texts = [f"load {i} text {rng.randint(0, 999)}" for _ in range(rng.randint(1, 3))]
                started = time.perf_counter()
                try:
                    resp = client.post("/v1/translate", json=_translate_body(texts))
                except httpx.HTTPError as exc:
                    failures.append(f"client {i}: {exc!r}")
                    continue
                version = resp.json()["adapter"]["version"] if resp.status_code == 200 else resp.text[:200]
                calls.append(Call(started, time.perf_counter(), resp.status_code, version))

    swaps: list[tuple[str, str, float, float]] = []  # previous, new, reload asked for, reload answered
    with live_server(config) as (url, service):
        workers = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(4)]
        for worker in workers:
            worker.start()
        try:
            for r in range(rounds):
                rng = random.Random(seed + r)
                mark = len(calls)
                _wait_for(lambda m=mark: len(calls) >= m + 8, what="traffic before the reload")
                time.sleep(rng.uniform(0, 0.05))
                new = register(registry, EN_HI, adapters["b" if r % 2 == 0 else "a"], tiny_base)
                asked = time.perf_counter()
                reload = httpx.post(f"{url}/v1/adapters/reload", headers=AUTH, timeout=60)
                answered = time.perf_counter()
                assert reload.status_code == 200, reload.text
                previous = f"v{r + 1:04d}"
                assert reload.json()["swapped"] == [{"direction": EN_HI, "previous": previous, "version": new}]
                swaps.append((previous, new, asked, answered))
                _wait_for(lambda t=answered: sum(c.started > t for c in calls) >= 8, what="traffic after the reload")
        finally:
            stop.set()
            for worker in workers:
                worker.join(60)
        last = swaps[-1][1]
        # Retired versions leave the model once their last request is done.
        _wait_for(
            lambda: service.engine.loaded() == sorted([adapter_name(EN_HI, last), adapter_name(HI_EN, "v0001")]),
            what="only the served versions loaded",
        )
    statuses = Counter(c.status for c in calls)
    record(
        f"adapter reload while 4 clients translate ({engine})",
        area="serving",
        tried=len(calls),
        lost=len(calls) - statuses[200] + len(failures),
        reloads=rounds,
        p99_ms=round(_p([c.ended - c.started for c in calls], 0.99) * 1000, 1),
    )
    assert not failures and set(statuses) == {200}, (failures[:3], dict(statuses), f"seed {seed}")
    bounds = [(asked, answered) for _, _, asked, answered in swaps] + [(float("inf"), float("inf"))]
    for k, (previous, new, asked, answered) in enumerate(swaps):
        # Asked for between the request and the answer of the reload: either version.
        during = {c.version for c in calls if asked < c.started <= answered}
        assert during <= {previous, new}, (previous, new, during, f"seed {seed}")
        # Started after the reload answered and done before the next one was asked for: only the new version.
        after = {c.version for c in calls if answered < c.started and c.ended < bounds[k + 1][0]}
        assert after == {new}, f"after the swap to {new}, requests were served by {after} (seed {seed})"
    first_asked = swaps[0][2] if swaps else float("inf")
    assert {c.version for c in calls if c.ended < first_asked} == {"v0001"}
    assert {c.version for c in calls} <= {"v0001"} | {new for _, new, _, _ in swaps}


# --- corrupted adapters in the registry ---------------------------------------------------------------------


def _flip_byte(vdir: Path, rng: random.Random) -> None:
    path = vdir / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _truncate(vdir: Path, rng: random.Random) -> None:
    path = vdir / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: rng.randrange(path.stat().st_size)])


def _remove_weights(vdir: Path, rng: random.Random) -> None:
    (vdir / "adapter_model.safetensors").unlink()


def _garbage_config(vdir: Path, rng: random.Random) -> None:
    (vdir / "adapter_config.json").write_bytes(b'{"r": 4, "target_modules": [' + rng.randbytes(16))


def _add_pickle(vdir: Path, rng: random.Random) -> None:
    (vdir / "adapter_model.bin").write_bytes(b"\x80\x04\x95" + rng.randbytes(32))


def _edit_manifest(vdir: Path, rng: random.Random) -> None:
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["metrics"] = {"chrf++": 99.9}  # a better score after the fact
    (vdir / "manifest.json").write_text(json.dumps(manifest))


# name -> (the adapter registered and promoted, what then breaks it, what the refusal must say)
CORRUPTIONS: dict[str, tuple[str, Callable[[Path, random.Random], None] | None, str]] = {
    "flipped bit in the weights": ("a", _flip_byte, "adapter_model.safetensors sha256 mismatch"),
    "truncated weights": ("a", _truncate, "adapter_model.safetensors sha256 mismatch"),
    "missing weights": ("a", _remove_weights, "files missing: adapter_model.safetensors"),
    "garbage adapter_config.json": ("a", _garbage_config, "adapter_config.json sha256 mismatch"),
    "pickle weights added": ("a", _add_pickle, "files not in the manifest: adapter_model.bin"),
    "manifest edited after promotion": ("a", _edit_manifest, "manifest changed since it was promoted"),
    # Intact, checksummed files whose weights do not fit their config: only loading can tell.
    "weights that do not fit the config": ("misfit", None, "refused at load: Error(s) in loading"),
}


def _refusals(url: str) -> float:
    samples = _metrics(url).get("bhashaflow_adapter_refusals", [])
    return sum(
        s.value for s in samples if s.name == "bhashaflow_adapter_refusals_total" and s.labels["direction"] == EN_HI
    )


@ENGINES
def test_a_corrupted_adapter_is_refused_and_the_previous_version_keeps_serving(
    tmp_path: Path,
    tiny_base: str,
    adapters: dict[str, Path],
    seed: int,
    record: Any,
    caplog: pytest.LogCaptureFixture,
    engine: str,
    cache_dir: Path,
) -> None:
    caplog.set_level(logging.WARNING, logger="serving.engine")
    registry = _registry(tmp_path, tiny_base, adapters)
    reg = Registry(registry)
    served: list[tuple[str, int, str]] = []  # (corruption, status, version) of requests while it was refused
    refusals = 0
    with live_server(_config(tmp_path, tiny_base, registry, engine=engine)) as (url, service):
        loaded = service.engine.loaded()
        for i, (name, (source, corrupt, needle)) in enumerate(CORRUPTIONS.items()):
            version = register(registry, EN_HI, adapters[source], tiny_base)  # and promoted
            if corrupt is not None:
                corrupt(Path(reg.adapter_uri(EN_HI, version)), random.Random(seed + i))
            before = _refusals(url)
            for attempt in range(2):  # asked again, refused again for the same reason
                reload = httpx.post(f"{url}/v1/adapters/reload", headers=AUTH, timeout=60)
                where = f"{name}, attempt {attempt}, seed {seed}: {reload.text[:500]}"
                assert reload.status_code == 409, where
                body = reload.json()
                assert body["swapped"] == [] and set(body["errors"]) == {EN_HI}, where
                error = body["errors"][EN_HI]
                assert error.startswith(f"{EN_HI}/{version}: ") and needle in error, where
                refusals += 1
                # The previous version keeps serving.
                resp = httpx.post(f"{url}/v1/translate", json=_translate_body([f"still here {attempt}"]), timeout=30)
                served.append((name, resp.status_code, resp.json().get("adapter", {}).get("version", resp.text)))
            # ... and /health, the metrics and the log say why it was not replaced.
            health = httpx.get(f"{url}/health", timeout=10)
            entry = health.json()["adapters"][0]
            assert health.status_code == 200 and health.json()["status"] == "ready", name
            assert (entry["version"], entry["error"]) == ("v0001", error), (name, entry)
            assert _refusals(url) == before + 2, name
            assert any(f"{EN_HI}/{version}" in r.getMessage() for r in caplog.records if "refused" in r.getMessage())
            assert service.engine.loaded() == loaded, f"{name}: the refused version left {service.engine.loaded()}"

        # Promoting the served version again clears the refusal; a sound new version then swaps in.
        reg.promote(EN_HI, "v0001")
        again = httpx.post(f"{url}/v1/adapters/reload", headers=AUTH, timeout=60)
        assert again.status_code == 200 and again.json()["swapped"] == [], again.text
        assert httpx.get(f"{url}/health", timeout=10).json()["adapters"][0]["error"] is None
        sound = register(registry, EN_HI, adapters["b"], tiny_base)
        swap = httpx.post(f"{url}/v1/adapters/reload", headers=AUTH, timeout=60)
        assert swap.status_code == 200 and swap.json()["swapped"][0]["version"] == sound, swap.text
        after = httpx.post(f"{url}/v1/translate", json=_translate_body(["sound"]), timeout=30)
        assert after.json()["adapter"]["version"] == sound

    # At start-up there is no previous version: that direction is refused, the others serve from a clean model.
    register(registry, EN_HI, adapters["misfit"], tiny_base)
    with live_server(_config(tmp_path, tiny_base, registry, engine=engine)) as (url, service):
        entry = httpx.get(f"{url}/health", timeout=10).json()["adapters"][0]
        assert entry["version"] is None and "refused at load" in entry["error"], entry
        assert httpx.post(f"{url}/v1/translate", json=_translate_body(["x"]), timeout=30).status_code == 404
        other = httpx.post(f"{url}/v1/translate", json=_translate_body(["नमस्ते"], "hin_Deva", "eng_Latn"), timeout=30)
        assert other.status_code == 200, other.text
        assert service.engine.loaded() == [adapter_name(HI_EN, "v0001")]
        assert _refusals(url) == 1
    lost = [s for s in served if s[1:] != (200, "v0001")]
    record(
        f"corrupted promoted adapter: reload refused, previous serves ({engine})",
        area="serving",
        tried=refusals,
        lost=len(lost),
        corruptions=len(CORRUPTIONS),
        requests_while_refused=len(served),
    )
    assert not lost, lost
