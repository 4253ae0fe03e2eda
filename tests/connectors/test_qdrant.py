"""QdrantConnector against qdrant-client's local mode: on disk, and in memory through `client=`."""

from __future__ import annotations

import socket
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams

from bhashaflow.config import SourceConfig
from bhashaflow.core.settings import Settings
from connectors import SourceError, TransientSourceError, open_connector
from connectors.qdrant import QdrantConnector

COLLECTION = "pairs"
IDS = [10, 20, 30, 40, 50, 60, 70]


def payload(point_id: int | str) -> dict[str, Any]:
    return {"src": f"sentence {point_id}", "tgt": f"वाक्य {point_id}", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}


def upsert(client: QdrantClient, ids: list[int | str], collection: str = COLLECTION) -> None:
    client.upsert(collection, [PointStruct(id=i, vector=[1.0, 0.5], payload=payload(i)) for i in ids])


def fill(client: QdrantClient, ids: list[int | str], collection: str = COLLECTION) -> None:
    client.create_collection(collection, vectors_config=VectorParams(size=2, distance=Distance.COSINE))
    upsert(client, ids, collection)


def qdrant_source(uri: Path | str, collection: str = COLLECTION) -> SourceConfig:
    return SourceConfig(name="vectors", kind="qdrant", uri=str(uri), collection=collection)


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A local-mode Qdrant storage folder holding IDS, written and closed like another process would."""
    path = tmp_path / "qdrant"
    client = QdrantClient(path=str(path))
    fill(client, list(reversed(IDS)))  # inserted out of order: the scroll orders by id
    client.close()
    return path


@pytest.fixture
def memory_client() -> Iterator[QdrantClient]:
    client = QdrantClient(location=":memory:")
    fill(client, list(IDS))
    yield client
    client.close()


def test_scrolls_every_point_in_id_order_with_its_payload(storage: Path) -> None:
    conn = QdrantConnector(qdrant_source(storage), Settings(), page_size=3)
    records = list(conn.iter_records())

    assert conn.name == "vectors"
    assert [r.ref for r in records] == [f"point {i}" for i in IDS]
    assert [r.row for r in records] == [{**payload(i), "_point_id": i} for i in IDS]
    assert [r.position for r in records] == [
        {"offset": None, "skip": 1, "last_id": 10},
        {"offset": None, "skip": 2, "last_id": 20},
        {"offset": None, "skip": 3, "last_id": 30},
        # later pages start at the last point yielded, which they drop
        {"offset": 30, "skip": 2, "last_id": 40},
        {"offset": 30, "skip": 3, "last_id": 50},
        {"offset": 30, "skip": 4, "last_id": 60},
        {"offset": 60, "skip": 2, "last_id": 70},
    ]
    # the connector closed its client: the storage folder is free for another one
    QdrantClient(path=str(storage)).close()


def test_resuming_from_every_position_continues_exactly_after_it(storage: Path) -> None:
    records = list(QdrantConnector(qdrant_source(storage), Settings(), page_size=3).iter_records())
    for i, record in enumerate(records):
        fresh = QdrantConnector(qdrant_source(storage), Settings(), page_size=3)
        assert [r.ref for r in fresh.iter_records(record.position)] == [r.ref for r in records[i + 1 :]]


def test_offset_and_skip_resume_a_position_without_last_id(storage: Path) -> None:
    conn = QdrantConnector(qdrant_source(storage), Settings(), page_size=3)
    assert [r.ref for r in conn.iter_records({"offset": 40, "skip": 2})] == ["point 60", "point 70"]
    assert [r.ref for r in conn.iter_records({"offset": None, "skip": 0})] == [f"point {i}" for i in IDS]


def test_stopping_early_releases_the_storage_folder(storage: Path) -> None:
    records = QdrantConnector(qdrant_source(storage), Settings()).iter_records()
    assert isinstance(records, Generator)
    assert next(records).ref == "point 10"
    records.close()
    QdrantClient(path=str(storage)).close()


def test_resume_after_the_collection_changed_never_repeats_a_point(memory_client: QdrantClient) -> None:
    conn = QdrantConnector(qdrant_source(":memory:"), Settings(), client=memory_client, page_size=3)
    head = []
    for record in conn.iter_records():
        head.append(record)
        if record.ref == "point 50":
            break
    # between runs: the last yielded point and one before it go, points land behind and ahead of it
    memory_client.delete(COLLECTION, points_selector=[50, 40])
    upsert(memory_client, [45, 55])
    resumed = [r.ref for r in conn.iter_records(head[-1].position)]
    assert resumed == ["point 55", "point 60", "point 70"]


def test_changes_while_scrolling(memory_client: QdrantClient) -> None:
    conn = QdrantConnector(qdrant_source(":memory:"), Settings(), client=memory_client, page_size=3)
    seen = []
    for record in conn.iter_records():
        seen.append(record.row["_point_id"] if record.row else None)
        if seen == [10, 20, 30]:
            # the first page is done; the next one starts at 40
            upsert(memory_client, [15])  # behind the cursor: not seen
            upsert(memory_client, [55])  # ahead: seen
            memory_client.delete(COLLECTION, points_selector=[70])  # ahead, deleted: not seen
            memory_client.set_payload(COLLECTION, {"src": "edited"}, points=[60])  # ahead, updated: new payload
        if seen == [10, 20, 30, 40]:
            upsert(memory_client, [45])  # inside the page in hand (40, 50, 55): not seen
            memory_client.delete(COLLECTION, points_selector=[50])  # in the page in hand: still yielded
        if record.ref == "point 60":
            assert record.row is not None and record.row["src"] == "edited"
    assert seen == [10, 20, 30, 40, 50, 55, 60]
    assert len(seen) == len(set(seen))


def test_points_with_uuid_ids_come_after_integer_ids_and_resume(tmp_path: Path) -> None:
    client = QdrantClient(location=":memory:")
    uuids = ["0b7c4a52-97d4-4a55-9d66-3e0a8c6e1f01", "9f3e2d1c-0000-4a55-9d66-3e0a8c6e1f02"]
    fill(client, [uuids[1], 7, uuids[0]])
    conn = QdrantConnector(qdrant_source(":memory:"), Settings(), client=client, page_size=2)
    records = list(conn.iter_records())
    assert [r.ref for r in records] == ["point 7", f"point {uuids[0]}", f"point {uuids[1]}"]
    assert records[1].position == {"offset": None, "skip": 2, "last_id": uuids[0]}
    assert [r.ref for r in conn.iter_records(records[1].position)] == [f"point {uuids[1]}"]


def test_a_point_without_payload_is_a_row_with_only_its_id(memory_client: QdrantClient) -> None:
    memory_client.upsert(COLLECTION, [PointStruct(id=5, vector=[0.1, 0.2])])
    conn = QdrantConnector(qdrant_source(":memory:"), Settings(), client=memory_client)
    assert next(conn.iter_records()).row == {"_point_id": 5}


def test_missing_collection_is_named(storage: Path, memory_client: QdrantClient) -> None:
    on_disk = QdrantConnector(qdrant_source(storage, collection="absent"), Settings())
    with pytest.raises(SourceError, match=r"'vectors': Qdrant collection 'absent' does not exist"):
        next(on_disk.iter_records())
    in_memory = QdrantConnector(qdrant_source(":memory:", collection="absent"), Settings(), client=memory_client)
    with pytest.raises(SourceError, match=r"collection 'absent' does not exist at :memory:$"):
        next(in_memory.iter_records())


def test_memory_uri_without_its_client_explains_why_the_collection_is_missing() -> None:
    conn = QdrantConnector(qdrant_source(":memory:"), Settings())
    with pytest.raises(SourceError, match=r"only visible through the client= that created it"):
        next(conn.iter_records())


def test_missing_storage_folder_is_not_created(tmp_path: Path) -> None:
    conn = QdrantConnector(qdrant_source(tmp_path / "nowhere"), Settings())
    with pytest.raises(SourceError, match=r"local Qdrant storage .*nowhere does not exist"):
        next(conn.iter_records())
    assert not (tmp_path / "nowhere").exists()


def test_a_locked_storage_folder_is_a_source_error(storage: Path) -> None:
    holder = QdrantClient(path=str(storage))
    try:
        with pytest.raises(SourceError, match="already accessed by another instance"):
            next(QdrantConnector(qdrant_source(storage), Settings()).iter_records())
    finally:
        holder.close()


def test_a_position_from_elsewhere_is_refused(storage: Path) -> None:
    conn = QdrantConnector(qdrant_source(storage), Settings())
    with pytest.raises(SourceError, match="does not belong"):
        next(conn.iter_records({"offset": None, "skip": -1}))
    with pytest.raises(SourceError, match="does not belong"):
        next(conn.iter_records({"offset": [1], "skip": 0}))


def test_open_connector_reads_local_storage(storage: Path) -> None:
    conn = open_connector(qdrant_source(storage), Settings(), ["eng_Latn-hin_Deva"])
    assert [r.row["_point_id"] for r in conn.iter_records() if r.row] == IDS


def test_unreachable_server_is_a_transient_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = QdrantConnector(qdrant_source(f"http://127.0.0.1:{port}"), Settings())
    with pytest.raises(TransientSourceError, match=rf"Qdrant http://127.0.0.1:{port} checking collection 'pairs'"):
        next(conn.iter_records())
