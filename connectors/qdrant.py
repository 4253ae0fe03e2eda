"""Pairs stored as point payloads of a Qdrant collection, scrolled page by page in point-id order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from bhashaflow.config import QdrantSource
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.redact import install_log_filter, redact_uri
from bhashaflow.core.settings import Settings
from connectors.base import SourceError, TransientSourceError

PAGE_SIZE = 256

PointId = int | str


def _plain_id(point_id: object) -> PointId:
    """A point id as positions store it (JSON): an int, or a UUID as its string."""
    return point_id if isinstance(point_id, int | str) else str(point_id)


class QdrantConnector:
    """Every point of `source.collection`; a point's payload plus `"_point_id"` is the row, `"point <id>"` its ref.

    `source.uri` is a server URL (`http(s)://...`, authenticated with QDRANT_API_KEY), a local-mode storage
    directory, or `:memory:`; an in-process collection (`:memory:`) is reachable only through the `client=` that
    made it.

    Points are scrolled in id order, a page at a time, each page starting right after the last point yielded.
    The position is `{"offset": id the page started at (None: the first page), "skip": points of that page
    already handled, "last_id": id of the point just yielded}`; resuming scrolls from `last_id` and drops it
    (`offset`/`skip` are the fallback for a position without `last_id`).

    Changes while scrolling: each scroll request reads the next `page_size` points after the last point yielded,
    as the collection is at that moment, so within one read, resumed reads included:
    - every point present for the whole read is yielded exactly once, and ids come in increasing order;
    - a point inserted, updated or deleted after the page in hand (a higher id than its last point) is seen as
      it is when its page is fetched: yielded with its new payload, or not at all when deleted;
    - changes up to the page in hand's last id are not seen: a point of the page in hand is yielded as it was
      when fetched, even if deleted or updated since, and one inserted behind that id is left to a fresh run;
    - the read ends with the request that found no point after the last one yielded.
    """

    def __init__(
        self,
        source: QdrantSource,
        settings: Settings,
        client: QdrantClient | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        """Args:
        source: a `qdrant` source naming the collection.
        settings: supplies the API key for server URLs.
        client: an open client to read through instead of one built from `source.uri` (it is not closed).
        page_size: points fetched per scroll request.
        """
        if not source.collection:
            raise SourceError(f"source {source.name!r}: kind qdrant needs 'collection'")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.name = source.name
        self.collection: str = source.collection
        self.location = source.uri or settings.qdrant_url or ""
        self.settings = settings
        self.client = client
        self.page_size = page_size

    def _open(self) -> QdrantClient:
        location = self.location
        if not location:
            raise SourceError(f"source {self.name!r}: no Qdrant location (set uri to a URL, a path or :memory:)")
        try:
            if location.startswith(("http://", "https://")):
                install_log_filter("httpx")  # the client logs each request's URL through httpx: mask credentials
                key = self.settings.qdrant_api_key
                return QdrantClient(
                    url=location,
                    api_key=key.get_secret_value() if key else None,
                    timeout=30,
                    check_compatibility=False,  # the version probe is one more request that can fail offline
                )
            if location == ":memory:":
                return QdrantClient(location=":memory:")
            path = Path(location).expanduser()
            # local mode would create an empty storage at a mistyped path; reading needs an existing one
            if not path.is_dir():
                raise SourceError(f"source {self.name!r}: local Qdrant storage {path} does not exist")
            return QdrantClient(path=str(path))
        except RuntimeError as exc:  # local mode: the storage folder is locked by another client
            raise SourceError(
                f"source {self.name!r}: cannot open Qdrant storage {redact_uri(location)}: {exc}"
            ) from None

    def _fail(self, exc: Exception, doing: str) -> SourceError:
        if isinstance(exc, ResponseHandlingException) or (
            isinstance(exc, UnexpectedResponse) and (exc.status_code or 0) >= 500
        ):
            return TransientSourceError(f"source {self.name!r}: Qdrant {redact_uri(self.location)} {doing}: {exc}")
        return SourceError(f"source {self.name!r}: Qdrant {redact_uri(self.location)} {doing}: {exc}")

    def _resume(self, start: Position | None) -> tuple[PointId | None, int, PointId | None]:
        """(page offset, points of it to skip, id to drop) from a position."""
        if start is None:
            return None, 0, None
        offset, skip, last_id = start.get("offset"), start.get("skip", 0), start.get("last_id")
        valid_id = (type(offset) is int or isinstance(offset, str) or offset is None) and (
            type(last_id) is int or isinstance(last_id, str) or last_id is None
        )
        if not valid_id or type(skip) is not int or skip < 0:
            raise SourceError(f"source {self.name!r}: position {start!r} does not belong to this Qdrant source")
        if last_id is not None:
            return last_id, 0, last_id
        return offset, skip, None

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield the collection's points after `start`, each with its payload as the row."""
        offset, skip, drop_id = self._resume(start)
        client = self.client if self.client is not None else self._open()
        try:
            try:
                exists = client.collection_exists(self.collection)
            except Exception as exc:  # noqa: BLE001 - unreachable server, refused key
                raise self._fail(exc, f"checking collection {self.collection!r}") from exc
            if not exists:
                hint = " (a :memory: collection is only visible through the client= that created it)"
                raise SourceError(
                    f"source {self.name!r}: Qdrant collection {self.collection!r} does not exist at {self.location}"
                    + (hint if self.location == ":memory:" and self.client is None else "")
                )
            while True:
                page_start = offset
                try:
                    points, next_offset = client.scroll(
                        self.collection,
                        limit=self.page_size + skip + (drop_id is not None),
                        offset=page_start,
                        with_payload=True,
                        with_vectors=False,
                    )
                except Exception as exc:  # noqa: BLE001 - network or server failure mid-scroll
                    raise self._fail(exc, f"scrolling {self.collection!r} from {page_start!r}") from exc
                if drop_id is not None and points and _plain_id(points[0].id) == drop_id:
                    # scrolling from the last yielded id returns that point first (when it still exists)
                    skip += 1
                drop_id = None
                for index in range(skip, len(points)):
                    point = points[index]
                    point_id = _plain_id(point.id)
                    yield RawRecord(
                        position={"offset": page_start, "skip": index + 1, "last_id": point_id},
                        ref=f"point {point_id}",
                        row={**(point.payload or {}), "_point_id": point_id},
                    )
                if next_offset is None:
                    return
                # From the last point yielded rather than from `next_offset`, which was fixed when this page was
                # fetched: a point inserted between the two since then is still read. A full page always
                # yields at least one point, so the cursor moves.
                offset = drop_id = _plain_id(points[-1].id)
                skip = 0
        finally:
            if self.client is None:
                client.close()  # releases local mode's lock on its storage folder
