"""The LibreTranslate endpoints, tested against LibreTranslate's documented API over real HTTP: the service under
uvicorn on 127.0.0.1, httpx with JSON and form bodies, and the real `libretranslatepy` client (urllib, form bodies).
A suggestion arrives as a correction in an RL-log export and is counted by the `rl_logs` source."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import uvicorn
from fastapi.testclient import TestClient
from libretranslatepy import LibreTranslateAPI
from serving_helpers import EN_HI, HI_EN, Serve, register, serving_config
from tiny_models import dev_lines

from bhashaflow.config import config_from_dict
from bhashaflow.core.languages import LANGUAGES, script_fraction
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import stage_source, write_shards
from bhashaflow.episodes.export import export_rl_logs
from bhashaflow.episodes.store import EpisodeStore
from connectors.factory import open_connector
from connectors.langtags import flores_code
from connectors.sinks import open_sink
from serving.app import create_app
from serving.auth import hash_key
from serving.routes.libretranslate import detect_by_script, html_pieces, libre_code

KEYS = {  # name -> (key, scopes)
    "web": ("bf_web-key-of-the-libretranslate-test", ["translate", "feedback"]),
    "reader": ("bf_reader-key-of-the-libretranslate-test", ["translate"]),
    "rater": ("bf_rater-key-of-the-libretranslate-test", ["feedback"]),
}
EN, HI = dev_lines("eng_Latn", 12), dev_lines("hin_Deva", 12)


def _key(name: str) -> str:
    return KEYS[name][0]


def _bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_key(name)}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Libre:
    """The running service: its URL and its episodes database."""

    def __init__(self, url: str, db: Path) -> None:
        self.url, self.db = url, db

    def episodes(self) -> list[Any]:
        with EpisodeStore(self.db) as store:
            return store.episodes_after("all", 0, 10_000)


@pytest.fixture(scope="module")
def libre(tiny_base: str, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libre]:
    """The service under uvicorn (a thread of this process) with require_auth and three keys; en-hi and hi-en
    served, en-bn configured without an adapter."""
    folder = tmp_path_factory.mktemp("libre")
    registry = str(folder / "registry")
    register(registry, EN_HI, adapters["a"], tiny_base)
    register(registry, HI_EN, adapters["c"], tiny_base)
    config = serving_config(
        folder, tiny_base, registry, require_auth=True, feedback_per_minute=0, max_texts=4, max_chars=300
    )
    entries = [{"name": n, "scopes": scopes, "sha256": hash_key(k)} for n, (k, scopes) in KEYS.items()]
    app = create_app(config, Settings(api_keys=json.dumps(entries), api_token=None))  # type: ignore[call-arg]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="libre-service", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert thread.is_alive() and time.monotonic() < deadline, "the service never became ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", headers=_bearer("web"), timeout=5).status_code == 200:
                    break
            time.sleep(0.05)
        yield Libre(url, folder / "episodes.db")
    finally:
        server.should_exit = True
        thread.join(30)


def _v1_translation(libre: Libre, text: str, src: str = "eng_Latn", tgt: str = "hin_Deva") -> str:
    resp = httpx.post(
        f"{libre.url}/v1/translate",
        json={"texts": [text], "src_lang": src, "tgt_lang": tgt},
        headers=_bearer("web"),
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["translations"][0])


# --- translate -----------------------------------------------------------------------------------------------------


def test_translate_a_string_and_a_list_with_json_and_form_bodies_and_the_key_in_body_or_header(libre: Libre) -> None:
    before = len(libre.episodes())
    with httpx.Client(base_url=libre.url, timeout=60) as http:
        one = http.post("/translate", json={"q": EN[0], "source": "en", "target": "hi", "api_key": _key("web")})
        assert one.status_code == 200, one.text
        assert one.json() == {"translatedText": _v1_translation(libre, EN[0])}  # the same adapter, the same output

        listed = http.post("/translate", json={"q": EN[1:3], "source": "en", "target": "hi"}, headers=_bearer("web"))
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"translatedText": [_v1_translation(libre, EN[1]), _v1_translation(libre, EN[2])]}

        form = http.post("/translate", data={"q": EN[3], "source": "en", "target": "hi", "api_key": _key("reader")})
        assert form.status_code == 200, form.text
        assert form.json() == {"translatedText": _v1_translation(libre, EN[3])}
        query = http.post(f"/translate?api_key={_key('reader')}", data={"q": EN[3], "source": "en", "target": "hi"})
        assert query.json() == form.json()  # the key in the query string, as LibreTranslate reads it too
        back = http.post("/translate", data={"q": HI[0], "source": "hi", "target": "en"}, headers=_bearer("reader"))
        assert back.status_code == 200 and isinstance(back.json()["translatedText"], str)

    # Every text an episode of its client, in its direction (the /v1 translations above are episodes too).
    mine = [(e.client, e.direction, e.input) for e in libre.episodes()[before:]]
    assert ("web", EN_HI, EN[0]) in mine and ("web", EN_HI, EN[1]) in mine and ("web", EN_HI, EN[2]) in mine
    assert ("reader", EN_HI, EN[3]) in mine and ("reader", HI_EN, HI[0]) in mine


def test_the_libretranslatepy_client_translates_lists_languages_and_detects(libre: Libre) -> None:
    client = LibreTranslateAPI(libre.url, api_key=_key("web"))
    assert client.translate(EN[4], "en", "hi") == _v1_translation(libre, EN[4])
    assert client.languages() == [
        {"code": "en", "name": "English", "targets": ["hi"]},
        {"code": "hi", "name": "Hindi", "targets": ["en"]},
    ]
    assert client.detect(HI[1]) == [{"confidence": 100.0, "language": "hi"}]
    assert client.detect(EN[1]) == [{"confidence": 100.0, "language": "en"}]
    with pytest.raises(urllib.error.HTTPError) as refused:
        LibreTranslateAPI(libre.url).translate(EN[4], "en", "hi")  # no key, on a service that requires one
    assert refused.value.code == 401
    assert "error" in json.loads(refused.value.read())


def test_source_auto_is_detected_by_script(libre: Libre) -> None:
    with httpx.Client(base_url=libre.url, timeout=60, headers=_bearer("web")) as http:
        resp = http.post("/translate", json={"q": HI[2], "source": "auto", "target": "en"})
        share = round(script_fraction(HI[2], "hin_Deva") * 100, 1)  # this line holds a few Latin letters too
        assert 50 < share < 100
        assert resp.status_code == 200, resp.text
        assert resp.json() == {
            "translatedText": _v1_translation(libre, HI[2], "hin_Deva", "eng_Latn"),
            "detectedLanguage": {"confidence": share, "language": "hi"},
        }
        listed = http.post(
            "/translate", json={"q": [EN[5], EN[6]], "source": "auto", "target": "hi", "alternatives": 2}
        )
        assert listed.status_code == 200, listed.text
        assert listed.json()["detectedLanguage"] == [{"confidence": 100.0, "language": "en"}] * 2
        assert listed.json()["alternatives"] == [[], []]
        # Tamil script: no served language is written in it.
        tamil = http.post("/translate", json={"q": dev_lines("tam_Taml", 1)[0], "source": "auto", "target": "hi"})
        assert tamil.status_code == 400 and "no served language" in tamil.json()["error"]


def test_html_keeps_the_tags_and_translates_the_text_between_them(libre: Libre) -> None:
    markup = f'<p class="x">{EN[7][:30]} <b>{EN[8][:20]}</b></p>\n<!-- a comment --><script>var a = "<b>";</script>'
    resp = httpx.post(
        f"{libre.url}/translate",
        json={"q": markup, "source": "en", "target": "hi", "format": "html"},
        headers=_bearer("web"),
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    out = resp.json()["translatedText"]
    tags = re.compile(r"<!--.*?-->|<[^>]*>", re.DOTALL)
    assert tags.findall(out) == tags.findall(markup)  # every tag, comment and script kept, in order
    assert 'var a = "' in out
    translated = [_v1_translation(libre, EN[7][:30]), _v1_translation(libre, EN[8][:20])]
    expected = (
        f'<p class="x">{translated[0]} <b>{translated[1]}</b></p>\n<!-- a comment --><script>var a = "<b>";</script>'
    )
    assert out == expected.replace(translated[0], translated[0].replace("&", "&amp;").replace("<", "&lt;"))


def test_html_pieces_and_language_codes() -> None:
    assert html_pieces("<a href='x'>Hi &amp; bye</a> <br/>") == [
        (False, "<a href='x'>"),
        (True, "Hi &amp; bye"),
        (False, "</a>"),
        (False, " "),
        (False, "<br/>"),
    ]
    assert html_pieces("<style>p {}</style>ok") == [
        (False, "<style>"),
        (False, "p {}"),
        (False, "</style>"),
        (True, "ok"),
    ]
    assert (libre_code("hin_Deva"), libre_code("kas_Deva"), libre_code("zho_Hant"), libre_code("awa_Deva")) == (
        "hi",
        "ks-Deva",
        "zh-Hant",
        "awa",
    )
    assert all(flores_code(libre_code(code)) == code for code in LANGUAGES)  # every code read back
    assert len({libre_code(code) for code in LANGUAGES}) == len(LANGUAGES)
    assert detect_by_script(HI[0], ["hin_Deva", "eng_Latn"]) == ("hin_Deva", 100.0)
    with pytest.raises(Exception, match="Hindi \\(hi\\), Marathi \\(mr\\)") as ambiguous:
        detect_by_script(HI[0], ["hin_Deva", "mar_Deva", "eng_Latn"])
    assert getattr(ambiguous.value, "status_code", None) == 400
    with pytest.raises(Exception, match="no letters"):
        detect_by_script("12 + 3 = 15", ["eng_Latn"])


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "form", "message"),
    [
        ({"q": "x", "source": "xx", "target": "hi"}, False, "xx is not supported"),
        ({"q": "x", "source": "en", "target": "klingon"}, True, "klingon is not supported"),
        ({"source": "en", "target": "hi"}, True, "Invalid request: missing q parameter"),
        ({"q": "x", "target": "hi"}, False, "Invalid request: missing source parameter"),
        (
            {"q": "x", "source": "en", "target": "bn"},
            False,
            "Bengali (bn) is not available as a target language from English (en)",
        ),
        (
            {"q": "x", "source": "en", "target": "en"},
            False,
            "English (en) is not available as a target language from English (en)",
        ),
        ({"q": "x", "source": "en", "target": "hi", "format": "pdf"}, False, "Invalid request: format"),
        ({"q": "x", "source": "auto", "target": "ta"}, False, "Tamil (ta) is not available as a target language"),
        ({"q": "x", "source": "en", "target": "../../hi"}, False, "../../hi is not supported"),
        ({"q": "x", "source": "en", "target": "hin_Deva/.."}, False, "hin_Deva/.. is not supported"),
        ({"q": "x", "source": "eng_Latn-hin_Deva", "target": "hi"}, False, "eng_Latn-hin_Deva is not supported"),
        ({"q": "x", "source": "en", "target": "hi", "alternatives": "many"}, True, "Invalid request: alternatives"),
        ({"q": ["a", 5], "source": "en", "target": "hi"}, False, "Invalid request: q"),
        (
            {"q": "x" * 301, "source": "en", "target": "hi"},
            False,
            "Invalid request: request (301) exceeds text limit (300)",
        ),
        (
            {"q": ["a"] * 5, "source": "en", "target": "hi"},
            False,
            "Invalid request: request (5) exceeds text limit (4)",
        ),
    ],
)
def test_bad_input_is_a_400_with_an_error(libre: Libre, body: dict[str, Any], form: bool, message: str) -> None:
    sent = {"data": body} if form else {"json": body}
    resp = httpx.post(f"{libre.url}/translate", headers=_bearer("web"), timeout=60, **sent)  # type: ignore[arg-type]
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith(message), resp.json()


def test_malformed_bodies_and_keys_are_answered_in_libretranslates_form(libre: Libre) -> None:
    with httpx.Client(base_url=libre.url, timeout=60) as http:
        broken = http.post(
            "/translate", content=b'{"q": "x",', headers={**_bearer("web"), "Content-Type": "application/json"}
        )
        assert (broken.status_code, broken.json()) == (400, {"error": "Invalid JSON format"})
        surrogate = http.post(
            "/translate",
            content=b'{"q": "\\ud800", "source": "en", "target": "hi"}',
            headers={**_bearer("web"), "Content-Type": "application/json"},
        )
        assert surrogate.status_code == 400 and "lone surrogate" in surrogate.json()["error"], surrogate.text
        nested = http.post(
            "/translate", content=b"[" * 100_000, headers={**_bearer("web"), "Content-Type": "application/json"}
        )
        assert (nested.status_code, nested.json()) == (400, {"error": "Invalid JSON format"})
        listed = http.post("/translate", json=["q"], headers=_bearer("web"))
        assert listed.status_code == 400 and listed.json()["error"].startswith("Invalid JSON format")
        body = {"q": "x", "source": "en", "target": "hi"}
        none = http.post("/translate", json=body)
        assert none.status_code == 401 and set(none.json()) == {"error"}
        unknown = http.post("/translate", json={**body, "api_key": "bf_nobody"})
        assert unknown.status_code == 401 and "api_key" in unknown.json()["error"]
        no_scope = http.post("/translate", json={**body, "api_key": _key("rater")})
        assert no_scope.status_code == 403, no_scope.text
        assert no_scope.json()["missing_scope"] == "translate" and "'translate' scope" in no_scope.json()["error"]
        no_feedback = http.post(
            "/suggest", data={"q": "x", "s": "y", "source": "en", "target": "hi"}, headers=_bearer("reader")
        )
        assert no_feedback.status_code == 403 and no_feedback.json()["missing_scope"] == "feedback"
        for path in ("/languages", "/frontend/settings"):
            assert http.get(path).status_code == 401  # require_auth: every endpoint needs a known key
        assert http.post("/detect", json={"q": "x"}).status_code == 401


# --- detect, languages, settings, the schema -----------------------------------------------------------------------


def test_detect_languages_settings_and_the_openapi_schema(libre: Libre) -> None:
    with httpx.Client(base_url=libre.url, timeout=60, headers=_bearer("reader")) as http:
        assert http.post("/detect", data={"q": HI[3]}).json() == [{"confidence": 100.0, "language": "hi"}]
        missing = http.post("/detect", json={})
        assert (missing.status_code, missing.json()) == (400, {"error": "Invalid request: missing q parameter"})
        assert http.get("/languages").json() == [
            {"code": "en", "name": "English", "targets": ["hi"]},
            {"code": "hi", "name": "Hindi", "targets": ["en"]},
        ]
        assert http.get("/frontend/settings").json() == {
            "charLimit": 300,
            "frontendTimeout": 500,
            "apiKeys": True,
            "keyRequired": True,
            "suggestions": True,
            "filesTranslation": False,
            "supportedFilesFormat": [],
            "language": {"source": {"code": "en", "name": "English"}, "target": {"code": "hi", "name": "Hindi"}},
        }
        paths = http.get("/openapi.json").json()["paths"]
    for path in ("/translate", "/detect", "/suggest"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
        assert "400" in paths[path]["post"]["responses"]
    assert {"/languages", "/frontend/settings"} <= set(paths)
    translate = paths["/translate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"q", "source", "target", "format", "api_key"} <= set(translate["properties"])


# --- suggest -------------------------------------------------------------------------------------------------------


def _suggest(libre: Libre, q: str, s: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{libre.url}/suggest", data={"q": q, "s": s, "source": "en", "target": "hi", **extra}, timeout=60
    )


def test_a_suggestion_corrects_the_clients_latest_episode_of_that_text_or_a_new_one(libre: Libre) -> None:
    text = EN[9]
    for _ in range(2):
        assert (
            httpx.post(
                f"{libre.url}/translate",
                json={"q": text, "source": "en", "target": "hi"},
                headers=_bearer("web"),
                timeout=60,
            ).status_code
            == 200
        )
    other = httpx.post(
        f"{libre.url}/translate",
        json={"q": text, "source": "en", "target": "hi"},
        headers=_bearer("reader"),
        timeout=60,
    )  # another client's later episode of the same text
    assert other.status_code == 200
    resp = _suggest(libre, text, HI[9], api_key=_key("web"))
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    of_text = [e for e in libre.episodes() if e.input == text]
    web = [e for e in of_text if e.client == "web"]
    assert [e.correction for e in web] == [None, HI[9]]  # the latest of the two
    assert (web[1].reward, web[1].feedback_client) == (-0.5, "web")
    assert all(e.correction is None for e in of_text if e.client == "reader")

    # No episode of this text yet: it is translated now, and the suggestion corrects that new episode.
    before = len(libre.episodes())
    assert _suggest(libre, EN[10], HI[10], api_key=_key("rater")).json() == {"success": True}
    new = libre.episodes()[before:]
    assert [(e.client, e.input, e.correction, e.feedback_client) for e in new] == [("rater", EN[10], HI[10], "rater")]
    assert new[0].output == _v1_translation(libre, EN[10])

    bad = _suggest(libre, EN[10], "", api_key=_key("web"))
    assert (bad.status_code, bad.json()) == (400, {"error": "Invalid request: missing s parameter"})


def test_suggestions_are_rate_limited_and_an_open_service_serves_mastodons_calls_anonymously(serve: Serve) -> None:
    client = serve(token=None, feedback_per_minute=1, feedback_burst=1)
    body = {"q": "Good morning.", "s": HI[0], "source": "en", "target": "hi"}
    first = client.post("/suggest", json=body)
    assert (first.status_code, first.json()) == (200, {"success": True})
    second = client.post("/suggest", json=body)
    assert second.status_code == 429, second.text
    assert "feedback rate limit" in second.json()["error"] and int(second.headers["Retry-After"]) >= 1
    translated = client.post("/translate", data={"q": "Good morning.", "source": "en", "target": "hi"})
    assert translated.status_code == 200 and isinstance(translated.json()["translatedText"], str)
    # Mastodon's calls: GET /languages saying application/json with no body; html texts as a list, api_key null.
    languages = client.get("/languages", headers={"Content-Type": "application/json"})
    assert languages.status_code == 200 and [lang["code"] for lang in languages.json()] == ["en", "hi"]
    toots = client.post(
        "/translate",
        json={
            "q": ["<p>Good morning.</p>", "<p>Hello <a href='#'>there</a></p>"],
            "source": "auto",
            "target": "hi",
            "format": "html",
            "api_key": None,
        },
    )
    assert toots.status_code == 200, toots.text
    assert [re.sub(r">[^<]*<", "><", t) for t in toots.json()["translatedText"]] == [
        "<p></p>",
        "<p><a href='#'></a></p>",
    ]
    assert toots.json()["detectedLanguage"] == [{"confidence": 100.0, "language": "en"}] * 2


def test_a_suggestion_arrives_as_a_correction_in_an_rl_log_export_and_is_counted_by_rl_logs(
    libre: Libre, tmp_path: Path
) -> None:
    q = EN[11]
    resp = httpx.post(
        f"{libre.url}/translate", data={"q": q, "source": "en", "target": "hi", "api_key": _key("web")}, timeout=60
    )
    served = resp.json()["translatedText"]
    assert _suggest(libre, q, HI[11], api_key=_key("web")).json() == {"success": True}

    target = str(tmp_path / "rl-logs")
    source = {"name": "feedback", "kind": "rl_logs", "uri": target, "trusted_clients": ["web"], "heldout_share": 0}
    config = config_from_dict(
        {
            "directions": [EN_HI],
            "serving": {"episodes_db": str(libre.db)},
            "rl_export": {"target": target, "only_with_feedback": True},
            "sources": [source],
        }
    )
    exported = export_rl_logs(config, Settings(), sink=open_sink(target, Settings()))
    records = [json.loads(line) for part in sorted(Path(target).iterdir()) for line in part.read_text().splitlines()]
    assert len(records) == exported["exported"]
    mine = [r for r in records if r["prompt"] == q]
    assert [(r["response"], r["correction"], r["reward"], r["feedback_client"]) for r in mine] == [
        (served, HI[11], -0.5, "web")
    ]

    run = tmp_path / "run"
    staged = stage_source(
        config, config.sources[0], open_connector(config.sources[0], Settings(), config.directions), str(run)
    )
    manifest = write_shards(config, [staged], str(run))
    counted = manifest["sources"]["feedback"]
    assert counted["read"] == len(records)
    # Every correction is counted: the trusted client's kept as pairs, the others' skipped as untrusted.
    corrected = [r for r in records if r["correction"]]
    trusted = {r["prompt"] for r in corrected if r["feedback_client"] == "web"}
    assert q in trusted
    assert counted["accepted"] + counted["duplicates"] == len(trusted)
    untrusted = sum(r["feedback_client"] != "web" for r in corrected)
    assert counted["skipped_by_reason"].get("untrusted_client", 0) == untrusted
    triplets = []
    for shard in manifest["directions"][EN_HI]["preferences"]["shards"]:
        table = pq.read_table(run / shard["path"])
        triplets += list(zip(*(table.column(c).to_pylist() for c in ("src", "tgt", "rejected")), strict=True))
    assert (q, HI[11], served) in triplets


def test_a_service_that_is_not_ready_answers_503_with_retry_after(tmp_path: Path, registry: str) -> None:
    config = serving_config(tmp_path, str(tmp_path / "no-such-base"), registry)
    with TestClient(create_app(config, Settings()), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for resp in (
            client.post("/translate", json={"q": "hi", "source": "en", "target": "hi"}),
            client.post("/translate", data={"q": "hi", "source": "auto", "target": "hi"}),
            client.get("/languages"),
            client.post("/detect", data={"q": "hi"}),
            client.post("/suggest", json={"q": "hi", "s": "x", "source": "en", "target": "hi"}),
        ):
            assert resp.status_code == 503 and resp.headers["Retry-After"] == "5", resp.text
            assert resp.json() == {"error": "the service is failed"}
