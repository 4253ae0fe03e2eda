"""What a valid PNG looks like: the signature, an IHDR chunk first (with a correct CRC), IEND last."""

from __future__ import annotations

import struct
import zlib


def assert_png(data: bytes, min_size: int = 100) -> tuple[int, int]:
    """Assert `data` is a PNG of at least `min_size` pixels a side; returns its width and height."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_size and height >= min_size, (width, height)
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data[-8:-4] == b"IEND"
    return width, height
