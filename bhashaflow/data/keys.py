"""The de-duplication key of a normalised pair: 64 bits of blake2b over its languages and texts."""

from __future__ import annotations

from hashlib import blake2b

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def pair_key(src: str, tgt: str, src_lang: str, tgt_lang: str) -> int:
    """A 64-bit fingerprint of a normalised pair, for exact de-duplication."""
    return _blake2b_64(f"{src_lang}\x1f{tgt_lang}\x1f{src}\x1f{tgt}")


def pair_keys(pairs: pa.Table) -> pa.Array:
    """`pair_key` of every row of a table with the pair columns."""
    joined = pc.binary_join_element_wise(pairs["src_lang"], pairs["tgt_lang"], pairs["src"], pairs["tgt"], "\x1f")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    if not len(joined):
        return pa.array([], pa.uint64())
    # Hash the UTF-8 bytes in place rather than building a str per row and encoding it again.
    _, offsets_buf, data_buf = joined.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, len(joined) + 1, joined.offset * 4).tolist()
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    digests = b"".join(
        [blake2b(data[a:b], digest_size=8).digest() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    )
    return pa.array(np.frombuffer(digests, dtype="<u8"), pa.uint64())


def _blake2b_64(text: str) -> int:
    """The 8-byte blake2b digest of `text`'s UTF-8, read little-endian (as `pair_keys` reads its digests)."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")
