"""The episodes database: durable ids, feedback, export bookkeeping."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from bhashaflow.episodes.store import MAX_EPISODE_ID, EpisodeStore, ForeignEpisode, NewEpisode, UnknownEpisode


def _episode(text: str = "hello", out: str = "नमस्ते") -> NewEpisode:
    return NewEpisode(
        direction="eng_Latn-hin_Deva",
        src_lang="eng_Latn",
        tgt_lang="hin_Deva",
        adapter_version="v0001",
        base_model="builtin:tiny-seq2seq",
        input=text,
        output=out,
        latency_ms=12.5,
        script_valid=True,
    )


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    with EpisodeStore(tmp_path / "sub" / "episodes.db") as s:
        yield s


def test_record_assigns_increasing_ids_and_keeps_every_field(store: EpisodeStore) -> None:
    ids = store.record([_episode("a", "अ"), _episode("b", "ब")])
    assert ids == [1, 2]
    assert store.record([_episode("c")]) == [3]
    ep = store.get(2)
    assert (ep.id, ep.input, ep.output, ep.direction, ep.adapter_version) == (2, "b", "ब", "eng_Latn-hin_Deva", "v0001")
    assert (ep.latency_ms, ep.script_valid, ep.reward, ep.correction, ep.feedback_seq) == (12.5, True, None, None, None)
    assert ep.created_at.endswith("Z") and ep.created_at[:2] == "20"
    assert store.count() == 3


def test_database_is_in_wal_mode_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "episodes.db"
    with EpisodeStore(path) as s:
        s.record([_episode("kept")])
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with EpisodeStore(path) as s:
        assert s.get(1).input == "kept"
        assert s.record([_episode()]) == [2]


def test_ids_are_never_reused_after_a_delete(tmp_path: Path) -> None:
    path = tmp_path / "episodes.db"
    with EpisodeStore(path) as s:
        s.record([_episode(), _episode()])
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM episodes WHERE id = 2")
    with EpisodeStore(path) as s:
        assert s.record([_episode()]) == [3]


def test_feedback_attaches_and_a_second_one_replaces_the_first(store: EpisodeStore) -> None:
    store.record([_episode(), _episode()])
    first = store.attach_feedback(1, 0.5, "सही")
    assert (first.reward, first.correction, first.feedback_seq) == (0.5, "सही", 1)
    assert first.feedback_at is not None
    store.attach_feedback(2, -1.0)
    second = store.attach_feedback(1, 1.0)
    assert (second.reward, second.correction, second.feedback_seq) == (1.0, None, 3)
    assert store.get(2).feedback_seq == 2


@pytest.mark.parametrize("reward", [1.01, -1.5, float("nan"), float("inf")])
def test_feedback_refuses_rewards_outside_the_range(store: EpisodeStore, reward: float) -> None:
    store.record([_episode()])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        store.attach_feedback(1, reward)
    assert store.get(1).reward is None


@pytest.mark.parametrize("episode_id", [0, -3, 2, MAX_EPISODE_ID, 2**70])
def test_unknown_ids_raise_unknown_episode(store: EpisodeStore, episode_id: int) -> None:
    store.record([_episode()])
    with pytest.raises(UnknownEpisode):
        store.attach_feedback(episode_id, 0.0)
    with pytest.raises(UnknownEpisode):
        store.get(episode_id)


def test_concurrent_writers_get_distinct_ids(store: EpisodeStore) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def write() -> None:
        for _ in range(20):
            ids = store.record([_episode(), _episode()])
            with lock:
                got.extend(ids)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 161))


def test_export_parts_advance_the_watermark_only_when_finished(store: EpisodeStore) -> None:
    store.record([_episode() for _ in range(5)])
    assert store.export_watermark("t", "all") == 0
    assert [e.id for e in store.episodes_after("all", 0, 3)] == [1, 2, 3]
    part = store.begin_export_part("t", "all", 1, 3, "episodes-1-3.jsonl")
    assert store.pending_export_part("t", "all") == part
    assert store.export_watermark("t", "all") == 0
    store.finish_export_part(part)
    assert store.pending_export_part("t", "all") is None
    assert store.export_watermark("t", "all") == 3
    assert store.export_watermark("other-target", "all") == 0
    assert [e.id for e in store.episodes_after("all", 3, 10)] == [4, 5]
    assert [e.id for e in store.episodes_between("all", 2, 4)] == [2, 3, 4]


def test_feedback_mode_orders_by_when_feedback_arrived(store: EpisodeStore) -> None:
    store.record([_episode() for _ in range(4)])
    store.attach_feedback(3, 1.0)
    store.attach_feedback(1, -1.0)
    assert [(e.id, e.feedback_seq) for e in store.episodes_after("feedback", 0, 10)] == [(3, 1), (1, 2)]
    assert [e.id for e in store.episodes_after("feedback", 1, 10)] == [1]


# --- who asked, who rated ------------------------------------------------------------------------------------


def test_episodes_record_the_requesting_client_and_feedback_the_rating_one(store: EpisodeStore) -> None:
    ids = store.record([_episode(), NewEpisode(**{**_fields(_episode()), "client": "web"})])
    assert [store.get(i).client for i in ids] == ["anonymous", "web"]
    assert store.get(ids[1]).feedback_client is None
    rated = store.attach_feedback(ids[1], 1.0, client="web", requested_by="web")
    assert (rated.client, rated.feedback_client, rated.feedback_seq) == ("web", "web", 1)
    by_admin = store.attach_feedback(ids[1], -0.5, client="ops")  # requested_by None: any episode
    assert (by_admin.client, by_admin.feedback_client, by_admin.reward) == ("web", "ops", -0.5)


def test_feedback_on_another_clients_episode_raises_and_changes_nothing(store: EpisodeStore) -> None:
    (mine,) = store.record([NewEpisode(**{**_fields(_episode()), "client": "web"})])
    for other in ("annotator", "anonymous", "Web"):
        with pytest.raises(ForeignEpisode):
            store.attach_feedback(mine, 1.0, "x", client=other, requested_by=other)
    ep = store.get(mine)
    assert (ep.reward, ep.correction, ep.feedback_client, ep.feedback_seq) == (None, None, None, None)
    with pytest.raises(UnknownEpisode):  # an unknown id stays a 404, whoever asks
        store.attach_feedback(mine + 1, 1.0, client="web", requested_by="web")


OLD_SCHEMA = """
CREATE TABLE episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, direction TEXT NOT NULL,
    src_lang TEXT NOT NULL, tgt_lang TEXT NOT NULL, adapter_version TEXT NOT NULL, base_model TEXT NOT NULL,
    input TEXT NOT NULL, output TEXT NOT NULL, latency_ms REAL NOT NULL, script_valid INTEGER NOT NULL,
    reward REAL, correction TEXT, feedback_at TEXT, feedback_seq INTEGER
);
CREATE UNIQUE INDEX episodes_feedback_seq ON episodes (feedback_seq);
INSERT INTO episodes (created_at, direction, src_lang, tgt_lang, adapter_version, base_model, input, output,
                      latency_ms, script_valid, reward, correction, feedback_at, feedback_seq)
VALUES ('2025-01-31T12:00:00.000Z', 'eng_Latn-hin_Deva', 'eng_Latn', 'hin_Deva', 'v0001', 'b', 'old', 'पुराना',
        3.0, 1, 0.5, NULL, '2025-01-31T12:00:01.000Z', 1),
       ('2025-01-31T12:00:00.000Z', 'eng_Latn-hin_Deva', 'eng_Latn', 'hin_Deva', 'v0001', 'b', 'old2', 'x',
        3.0, 0, NULL, NULL, NULL, NULL);
"""


def make_old_database(path: Path) -> None:
    """An episodes database as the version before named clients wrote it."""
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)


def test_an_old_database_is_migrated_in_place_once_even_when_opened_at_once(tmp_path: Path) -> None:
    path = tmp_path / "episodes.db"
    make_old_database(path)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_it() -> None:
        barrier.wait()
        try:
            EpisodeStore(path).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(episodes)")]
    assert columns[-2:] == ["client", "feedback_client"] and len(columns) == 17
    with EpisodeStore(path) as store:
        old = store.get(1)
        assert (old.input, old.reward, old.feedback_seq, old.client, old.feedback_client) == ("old", 0.5, 1, None, None)
        # Nobody recorded who asked for an old episode: only an admin (requested_by None) may rate it.
        with pytest.raises(ForeignEpisode):
            store.attach_feedback(2, 1.0, client="web", requested_by="web")
        assert store.attach_feedback(2, 1.0, client="ops").feedback_client == "ops"
        assert store.record([_episode()]) == [3]
        assert store.get(3).client == "anonymous"


def _fields(ep: NewEpisode) -> dict[str, object]:
    return {name: getattr(ep, name) for name in NewEpisode.__dataclass_fields__}


def test_latest_episode_is_the_newest_of_that_client_direction_and_text(store: EpisodeStore) -> None:
    web = replace(_episode("hello"), client="web")
    first, second = store.record([web, web])
    others = store.record(
        [
            replace(web, client="app"),
            replace(web, input="hello!"),
            replace(web, direction="hin_Deva-eng_Latn", src_lang="hin_Deva", tgt_lang="eng_Latn"),
        ]
    )
    latest = store.latest_episode("web", "eng_Latn-hin_Deva", "hello")
    assert (
        latest is not None and (latest.id, latest.client, latest.input) == (second, "web", "hello") and first < second
    )
    assert [
        store.latest_episode(*key).id
        for key in (
            ("app", "eng_Latn-hin_Deva", "hello"),  # type: ignore[union-attr]
            ("web", "eng_Latn-hin_Deva", "hello!"),
            ("web", "hin_Deva-eng_Latn", "hello"),
        )
    ] == others
    assert store.latest_episode("web", "eng_Latn-hin_Deva", "Hello") is None  # the text exactly
    assert store.latest_episode("nobody", "eng_Latn-hin_Deva", "hello") is None
