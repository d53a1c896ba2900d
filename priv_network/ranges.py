"""HTTP Range (RFC 9110 section 14) for responses we build ourselves.

Local files go through aiohttp's FileResponse (sendfile); brokered and
verified streams need the same rules computed by hand: one byte range is
honoured; anything malformed, another unit, or several ranges is ignored
(the whole representation is sent with 200, as RFC 9110 allows); a
well-formed range that starts at or past the end is unsatisfiable (416).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from priv_network.errors import RangeNotSatisfiable

# As aiohttp parses a local file's Range (so both answer alike): no spaces around
# "=" (RFC 9110 section 14.1), and ASCII digits only (int() takes any script's).
_SINGLE = re.compile(r"^\s*bytes=(?:(\d+)-(\d*)|-(\d+))\s*$", re.ASCII)


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive
    partial: bool

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


def parse_range(header: str | None, size: int, *, if_range: str | None = None, etag: str = "") -> ByteRange:
    """The range to send for ``header``; raises RangeNotSatisfiable (416)."""
    whole = ByteRange(0, size, partial=False)
    if header is None:
        return whole
    if if_range is not None and if_range.strip() != etag:
        return whole
    match = _SINGLE.match(header)
    if not match:
        return whole
    first, last, suffix = match.groups()
    if suffix is not None:
        n = int(suffix)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {header.strip()} is empty")
        return ByteRange(max(0, size - n), size, partial=True)
    start = int(first)
    stop = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        return whole  # syntactically invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at {start}, past the end ({size} bytes)")
    return ByteRange(start, stop, partial=True)
