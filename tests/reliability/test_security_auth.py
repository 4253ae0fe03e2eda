"""Abuse of the service's front door: bearer tokens, request bodies over the limit, and paths from requests.

Everything runs against the real app (TestClient, lifespan included) on a tiny real model and a real registry;
the chunked-body case runs a real uvicorn server and talks to it over a socket.
"""

from __future__ import annotations

import base64
import hmac
import json
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from _knobs import count
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from serving_helpers import EN_HI, Clients, make_adapter, register, serving_config

import serving.deps
from bhashaflow.core.settings import Settings
from serving.app import create_app
from serving.deps import Service, require_admin
from serving.routes import adapters, feedback, ops, translate

TOKEN = "s3cret-token"  # what serving_helpers.wait_ready sends
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OUTSIDE = "outside-the-registry-7d1f"  # content of a file planted next to the registry


@pytest.fixture(scope="module")
def adapter_dir(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_base, tmp_path_factory.mktemp("security-adapter") / "a", seed=1)


@pytest.fixture
def registry(tmp_path: Path, tiny_base: str, adapter_dir: Path) -> str:
    uri = str(tmp_path / "registry")
    register(uri, EN_HI, adapter_dir, tiny_base)
    (tmp_path / "secret.txt").write_text(OUTSIDE)  # what a traversal out of the registry would find
    return uri


Start = Callable[..., TestClient]


@pytest.fixture
def start(tmp_path: Path, tiny_base: str, registry: str) -> Iterator[Start]:
    clients = Clients()

    def _start(*, token: str | None = TOKEN, **serving: Any) -> TestClient:
        config = serving_config(tmp_path, tiny_base, registry, **serving)
        # wait_ready sends the right token; with no token configured (or a different one) it cannot poll.
        wait = token == TOKEN or not serving.get("require_auth")
        return clients.start(config, Settings(api_token=token), wait=wait)  # type: ignore[call-arg]

    yield _start
    clients.close()


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


Endpoint = tuple[str, str]  # (method, path)


def _endpoints(client: TestClient) -> list[Endpoint]:
    """Every operation the app documents (its OpenAPI paths)."""
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return sorted((method.upper(), path) for path, ops in paths.items() for method in ops)


def _admin_endpoints() -> list[Endpoint]:
    """Operations whose dependencies include require_admin, found in the routers themselves."""

    def walk(dependant: Any) -> Iterator[Any]:
        for dep in dependant.dependencies:
            yield dep.call
            yield from walk(dep)

    out = []
    for router in (adapters.router, feedback.router, ops.router, translate.router):
        for route in router.routes:
            if isinstance(route, APIRoute) and require_admin in set(walk(route.dependant)):
                out += [(method, route.path) for method in route.methods]
    return sorted(out)


# The LibreTranslate endpoints' bodies (serving/routes/libretranslate.py).
LIBRE_BODIES: dict[str, dict[str, str]] = {
    "/translate": {"q": "hi", "source": "en", "target": "hi"},
    "/suggest": {"q": "hi", "s": "नमस्ते", "source": "en", "target": "hi"},
    "/detect": {"q": "hi"},
}


def _call(client: TestClient, endpoint: Endpoint, headers: dict[str, str], query: str = "") -> Any:
    method, path = endpoint
    body = None
    if method == "POST":
        body = (
            {"texts": ["hi"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
            if "translate" in path
            else ({"episode_id": 1, "reward": 0.5} if "feedback" in path else None)
        )
        body = LIBRE_BODIES.get(path, body)
    return client.request(method, path + query, json=body, headers=headers)


def _bad_credentials() -> list[tuple[str, dict[str, str], str]]:
    """(what, headers, query string) that must all be refused."""
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    return [
        ("no header", {}, ""),
        ("empty header", {"Authorization": ""}, ""),
        ("empty bearer", {"Authorization": "Bearer "}, ""),
        ("wrong token", {"Authorization": "Bearer nope"}, ""),
        ("prefix added", {"Authorization": f"Bearer x{TOKEN}"}, ""),
        ("suffix added", {"Authorization": f"Bearer {TOKEN}x"}, ""),
        ("last char dropped", {"Authorization": f"Bearer {TOKEN[:-1]}"}, ""),
        ("first char dropped", {"Authorization": f"Bearer {TOKEN[1:]}"}, ""),
        ("upper case", {"Authorization": f"Bearer {TOKEN.upper()}"}, ""),
        ("two tokens", {"Authorization": f"Bearer {TOKEN}, Bearer {TOKEN}"}, ""),
        ("no scheme", {"Authorization": TOKEN}, ""),
        ("basic scheme", {"Authorization": f"Basic {basic}"}, ""),
        ("basic with the token", {"Authorization": f"Basic {TOKEN}"}, ""),
        ("token scheme", {"Authorization": f"Token {TOKEN}"}, ""),
        ("api key header", {"X-API-Key": TOKEN}, ""),
        ("query token", {}, f"?token={TOKEN}"),
        ("query access_token", {}, f"?access_token={TOKEN}"),
        ("cookie", {"Cookie": f"token={TOKEN}"}, ""),
    ]


def _mutate(rng: random.Random, token: str) -> str:
    """A random near-miss of the token: one edit, a case flip, a prefix or suffix, or a truncation."""
    kind = rng.choice(["flip", "insert", "delete", "case", "prefix", "suffix", "truncate", "repeat"])
    i = rng.randrange(len(token))
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~+/="
    if kind == "flip":
        out = token[:i] + rng.choice([c for c in alphabet if c != token[i]]) + token[i + 1 :]
    elif kind == "insert":
        out = token[:i] + rng.choice(alphabet) + token[i:]
    elif kind == "delete":
        out = token[:i] + token[i + 1 :]
    elif kind == "case":
        out = token.swapcase() if rng.random() < 0.5 else token[:i] + token[i].swapcase() + token[i + 1 :]
    elif kind == "prefix":
        out = "".join(rng.choices(alphabet, k=rng.randint(1, 4))) + token
    elif kind == "suffix":
        out = token + "".join(rng.choices(alphabet, k=rng.randint(1, 4)))
    elif kind == "truncate":
        out = token[: rng.randrange(len(token))]
    else:
        out = token * 2
    return out if out != token else token + "x"


def test_admin_and_guarded_endpoints_refuse_every_bad_credential(start: Start, seed: int, record: Any) -> None:
    """Admin endpoints (and every endpoint under require_auth) refuse bad credentials; the route never runs."""
    client = start(require_auth=True)
    routes = _endpoints(client)
    admin = _admin_endpoints()
    assert admin == [("POST", "/v1/adapters/reload")]
    assert len(routes) >= 6 and set(admin) <= set(routes)
    reloads = _count_calls(_service(client).engine, "reload")
    tried = refused = 0
    for route in routes:
        for what, headers, query in _bad_credentials():
            resp = _call(client, route, headers, query)
            tried += 1
            assert resp.status_code == 401, (route, what, resp.status_code, resp.text)
            assert resp.headers["WWW-Authenticate"] == "Bearer", (route, what)
            assert TOKEN not in resp.text, (route, what)
            refused += 1
    # Random near-misses of the token on the admin endpoint and one guarded endpoint.
    n = count("auth_mutations", 200, 2000)
    for i in range(n):
        rng = random.Random(seed + i)
        guess = _mutate(rng, TOKEN)
        for route in (admin[0], rng.choice(routes)):
            resp = _call(client, route, {"Authorization": f"Bearer {guess}"})
            tried += 1
            assert resp.status_code == 401, f"seed {seed} run {i}: {guess!r} on {route} got {resp.status_code}"
            refused += 1
    assert reloads() == 0, "the reload route ran for a refused request"
    # The right token still opens every endpoint (so the refusals above are about the token, not the route).
    for route in routes:
        assert _call(client, route, AUTH).status_code in (200, 404), route
    assert reloads() == 1
    record(
        "auth: bad bearer tokens refused",
        area="security",
        tried=tried,
        lost=tried - refused,
        routes=len(routes),
        mutations=n,
    )


def test_admin_is_refused_when_no_token_or_an_empty_one_is_configured(start: Start) -> None:
    for configured in (None, "", "   "):
        client = start(token=configured)
        reloads = _count_calls(_service(client).engine, "reload")
        for what, headers, query in [
            *_bad_credentials(),
            ("the empty string", {"Authorization": "Bearer"}, ""),
            ("blank", {"Authorization": "Bearer    "}, ""),
        ]:
            resp = client.post("/v1/adapters/reload" + query, headers=headers)
            assert resp.status_code == 401, (configured, what, resp.text)
            assert "none is configured" in resp.json()["detail"], (configured, what)
        assert reloads() == 0
    assert Settings(api_token="").api_token is None  # type: ignore[call-arg]
    assert Settings(api_token="  ").api_token is None  # type: ignore[call-arg]


def test_the_token_check_goes_through_compare_digest(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing-safe: the given and the expected token meet only inside hmac.compare_digest."""
    client = start()
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(serving.deps.hmac, "compare_digest", spy)
    for given in ("nope", f"{TOKEN}x", TOKEN[:-1], TOKEN.upper(), TOKEN):
        calls.clear()
        status = client.post("/v1/adapters/reload", headers={"Authorization": f"Bearer {given}"}).status_code
        assert status == (200 if given == TOKEN else 401), given
        assert calls == [(given.encode(), TOKEN.encode())], given


def _count_calls(obj: Any, name: str) -> Callable[[], int]:
    """Wrap obj.name (calling through) and return a function that says how often it was called."""
    real = getattr(obj, name)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    setattr(obj, name, wrapper)
    return lambda: calls[0]


# -- request bodies over the limit -----------------------------------------------------------------------------


LIMIT = 2000


def _episodes(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "episodes.db") as db:
        return int(db.execute("select count(*) from episodes").fetchone()[0])


def _route_hits(service: Service) -> dict[str, int]:
    """Requests the metrics saw per route template ('unmatched': refused before routing)."""
    out: dict[str, int] = {}
    for metric in service.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                route = sample.labels["route"]
                out[route] = out.get(route, 0) + int(sample.value)
    return out


def _oversized(rng: random.Random, size: int) -> bytes:
    kind = rng.choice(["valid", "malformed", "binary", "nested"])
    if kind == "valid":
        body = json.dumps({"texts": ["x" * size], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}).encode()
    elif kind == "malformed":
        body = b'{"texts": ["' + b"y" * size  # never closed: a parser would answer 422
    elif kind == "binary":
        body = rng.randbytes(size)
    else:
        body = b"[" * size  # a parser bomb if it ever reached json.loads
    return body


def test_bodies_over_the_limit_are_refused_before_parsing(start: Start, tmp_path: Path, seed: int, record: Any) -> None:
    client = start(max_body_bytes=LIMIT, max_chars=100_000)
    n = count("body_runs", 50, 500)
    refused = 0
    for i in range(n):
        rng = random.Random(seed + i)
        size = rng.choice([LIMIT + 1, LIMIT + rng.randint(2, 100), rng.randint(LIMIT + 1, 50 * LIMIT)])
        body = _oversized(rng, size)
        assert len(body) > LIMIT
        path = rng.choice(["/v1/translate", "/v1/feedback", "/v1/adapters/reload"])
        if rng.random() < 0.5:
            resp = client.post(path, content=body, headers={"Content-Type": "application/json", **AUTH})
        else:  # streamed: no Content-Length, the middleware counts the bytes as they come
            pieces = [body[j : j + 512] for j in range(0, len(body), 512)]
            resp = client.post(path, content=iter(pieces), headers={"Content-Type": "application/json", **AUTH})
        assert resp.status_code == 413, f"seed {seed} run {i}: {len(body)} bytes to {path}: {resp.status_code}"
        assert resp.json() == {"detail": f"request body over {LIMIT} bytes"}
        refused += 1
    hits = _route_hits(_service(client))
    assert set(hits) - {"/health"} == {"unmatched"}, hits  # no route (and so no parser) saw any of them
    assert hits["unmatched"] == n
    assert _episodes(tmp_path) == 0
    # At the limit a malformed body reaches the parser (422) and a valid one is translated: the 413s were the size.
    at_limit = b'{"texts": ["' + b"z" * (LIMIT - 12)
    assert len(at_limit) == LIMIT
    assert (
        client.post("/v1/translate", content=at_limit, headers={"Content-Type": "application/json"}).status_code == 422
    )
    ok = json.dumps({"texts": ["hello"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}).encode()
    assert (
        client.post("/v1/translate", content=ok.ljust(LIMIT), headers={"Content-Type": "application/json"}).status_code
        == 200
    )
    assert _episodes(tmp_path) == 1
    record(
        "body limit: oversized bodies refused before parsing",
        area="security",
        tried=n,
        lost=n - refused,
        limit_bytes=LIMIT,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(
    tmp_path: Path, tiny_base: str, registry: str
) -> None:
    """Over a real socket: the 413 comes while the client is still sending, and nothing was parsed or stored."""
    config = serving_config(tmp_path, tiny_base, registry, max_body_bytes=LIMIT)
    app = create_app(config, Settings(api_token=TOKEN))  # type: ignore[call-arg]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        for path in ("/v1/translate", "/v1/feedback"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n".encode()
                )
                chunk = b'{"texts": ["' + b"w" * LIMIT  # malformed and over the limit; the body never ends
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                # No terminating chunk is ever sent: the answer must come without the server waiting for one.
                answer = b""
                while b"}" not in answer and (data := sock.recv(65536)):
                    answer += data
            answer_text = answer.decode("latin-1")
            assert answer_text.startswith("HTTP/1.1 413"), answer_text[:200]
            assert f'"request body over {LIMIT} bytes"' in answer_text
        service: Service = app.state.service
        # The metrics middleware counts a response once it has been sent: give the last one a moment.
        deadline = time.monotonic() + 10
        while (hits := _route_hits(service)) != {"unmatched": 2} and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hits == {"unmatched": 2}, hits  # no route (and so no parser) saw either request
        assert _episodes(tmp_path) == 0
    finally:
        server.should_exit = True
        thread.join(30)


# -- paths from requests -----------------------------------------------------------------------------------------


EVIL = [
    "../../secret.txt",
    "..",
    "../",
    "/etc/passwd",
    "/" + "x" * 5000,
    "..%2f..%2fsecret.txt",
    "%2e%2e%2fsecret.txt",
    "%2e%2e",
    "eng_Latn\x00",
    "eng_Latn/../hin_Deva",
    "eng_Latn-hin_Deva/versions/../../secret.txt",
    "..\\..\\secret.txt",
    "v0001/../../../secret.txt",
    "~/.ssh/id_rsa",
    "file:///etc/passwd",
    "eng_Latn" + "A" * 10_000,
    "\u2025/secret.txt",
]


def _evil(rng: random.Random) -> str:
    parts = [
        rng.choice(
            [
                "..",
                "%2e%2e",
                ".%2e",
                "%252e%252e",
                "...",
                "v0001",
                EN_HI,
                "versions",
                "secret.txt",
                "PROMOTED",
                "manifest.json",
                "",
                "\x00",
                "%00",
            ]
        )
        for _ in range(rng.randint(1, 6))
    ]
    sep = rng.choice(["/", "\\", "%2f", "%5c", "//"])
    evil = rng.choice(["", "/"]) + sep.join(parts)
    return evil if evil.strip("/") else evil + ".."


def test_paths_in_requests_never_reach_outside_the_registry(
    start: Start, tmp_path: Path, seed: int, record: Any
) -> None:
    """Direction, adapter and version values in bodies and URLs get 4xx; nothing outside the registry is served."""
    client = start()
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    api_paths = {path for _, path in _endpoints(client)}
    n = count("request_path_runs", 100, 1000)
    tried = leaked = 0
    for i in range(n + len(EVIL)):
        rng = random.Random(seed + i)
        evil = EVIL[i] if i < len(EVIL) else _evil(rng)
        attempts = [
            ("POST", "/v1/translate", {"texts": ["hi"], "src_lang": evil, "tgt_lang": "hin_Deva"}),
            ("POST", "/v1/translate", {"texts": ["hi"], "src_lang": "eng_Latn", "tgt_lang": evil}),
            (
                "POST",
                "/v1/translate",
                {
                    "texts": ["hi"],
                    "src_lang": "eng_Latn",
                    "tgt_lang": "hin_Deva",
                    rng.choice(["adapter", "version", "direction", "path"]): evil,
                },
            ),
            ("POST", "/v1/feedback", {"episode_id": evil, "reward": 0.5}),
            ("POST", "/translate", {"q": "hi", "source": evil, "target": "hi"}),
            ("POST", "/suggest", {"q": "hi", "s": "x", "source": "en", "target": evil}),
            ("GET", "/v1/adapters/" + quote(evil, safe="/%"), None),
            ("POST", "/v1/adapters/reload/" + quote(evil, safe="/%"), None),
            ("GET", "/" + quote(evil.lstrip("/"), safe="/%"), None),
        ]
        for method, path, body in attempts:
            resp = client.request(method, path, json=body, headers=AUTH, follow_redirects=False)
            tried += 1
            status = resp.status_code
            if body is None and (status < 400 or status == 405):
                # A URL whose dot segments the client removed ("/v1/adapters//.." is "/v1/adapters/") may name
                # a real endpoint (or redirect to one): fine, as long as that is all it reached.
                ok = resp.request.url.path.rstrip("/") in api_paths and status < 500
            else:
                ok = 400 <= status < 500
            ok = ok and OUTSIDE not in resp.text and "root:" not in resp.text
            leaked += not ok
            assert ok, (
                f"seed {seed} run {i}: {method} {path[:80]!r} {str(body)[:80]} -> {resp.status_code} {resp.text[:200]}"
            )
    assert client.get("/v1/adapters", headers=AUTH).json()["adapters"][0]["version"] == "v0001"
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith("episodes.db")] == []
    record(
        "paths: traversal in request fields and URLs",
        area="security",
        tried=tried,
        lost=leaked,
        evil_values=n + len(EVIL),
    )
