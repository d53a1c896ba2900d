"""HTTP Range parsing for brokered streams (RFC 9110 section 14): every branch of parse_range."""

from __future__ import annotations

import pytest

from priv_network.errors import RangeNotSatisfiable
from priv_network.ranges import ByteRange, parse_range

SIZE = 1000
ETAG = '"abc123"'


def whole(size: int = SIZE) -> ByteRange:
    return ByteRange(0, size, partial=False)


def test_no_header_is_the_whole_representation() -> None:
    assert parse_range(None, SIZE) == whole()
    # A validator alone (no Range) changes nothing.
    assert parse_range(None, SIZE, if_range=ETAG, etag=ETAG) == whole()


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=0-499", 0, 500),
        ("bytes=500-999", 500, 1000),
        ("bytes=999-999", 999, 1000),
        ("bytes=10-", 10, 1000),  # open-ended
        ("bytes=0-", 0, 1000),
        ("bytes=900-5000", 900, 1000),  # last past the end: clamped
        ("bytes=0-99999999999999999999999", 0, 1000),
        ("bytes=-1", 999, 1000),  # suffix
        ("bytes=-100", 900, 1000),
        ("bytes=-1000", 0, 1000),
        ("bytes=-5000", 0, 1000),  # suffix longer than the file: all of it
        ("  bytes=5-9  ", 5, 10),  # surrounding whitespace
    ],
)
def test_satisfiable_ranges(header: str, start: int, stop: int) -> None:
    rng = parse_range(header, SIZE)
    assert rng == ByteRange(start, stop, partial=True)
    assert rng.length == stop - start


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=abc",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=0-1,5-6",  # several ranges: ignored, not half-honoured
        "bytes=0-1, 5-6",
        "items=0-10",  # another unit
        "bites=0-10",
        "bytes=+1-2",
        "bytes=-1-2",
        "bytes=0x10-0x20",
        "bytes = 5-9",  # no spaces around "=" (RFC 9110 section 14.1), as aiohttp's parser for local files
        "bytes =5-9",
        "bytes= 5-9",
        "bytes=5 - 9",
        "bytes=\u0661-\u0662",  # non-ASCII digits match \d in Python but are not HTTP digits
    ],
)
def test_malformed_ranges_are_ignored(header: str) -> None:
    assert parse_range(header, SIZE) == whole()


def test_last_before_first_is_invalid_and_ignored() -> None:
    assert parse_range("bytes=500-499", SIZE) == whole()
    assert parse_range("bytes=5000-10", SIZE) == whole()


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1000", "bytes=1000-2000", "bytes=5000-"])
def test_range_starting_at_or_past_the_end_is_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, SIZE)
    assert info.value.status == 416
    assert "past the end" in info.value.message
    assert str(SIZE) in info.value.message


def test_zero_suffix_is_unsatisfiable() -> None:
    with pytest.raises(RangeNotSatisfiable, match="empty"):
        parse_range("bytes=-0", SIZE)


def test_empty_representation() -> None:
    assert parse_range(None, 0) == whole(0)
    assert parse_range("garbage", 0) == whole(0)
    with pytest.raises(RangeNotSatisfiable, match="empty"):
        parse_range("bytes=-10", 0)
    with pytest.raises(RangeNotSatisfiable, match="past the end"):
        parse_range("bytes=0-", 0)


def test_if_range_matching_the_etag_honours_the_range() -> None:
    assert parse_range("bytes=10-19", SIZE, if_range=ETAG, etag=ETAG) == ByteRange(10, 20, partial=True)
    assert parse_range("bytes=10-19", SIZE, if_range=f"  {ETAG} ", etag=ETAG) == ByteRange(10, 20, partial=True)


@pytest.mark.parametrize(
    "validator",
    [
        '"stale"',
        f"W/{ETAG}",  # a weak tag never matches (strong comparison)
        ETAG.strip('"'),  # unquoted
        "Wed, 21 Oct 2015 07:28:00 GMT",  # a date: we have no Last-Modified to compare with
        "",
    ],
)
def test_if_range_not_matching_sends_the_whole_representation(validator: str) -> None:
    assert parse_range("bytes=10-19", SIZE, if_range=validator, etag=ETAG) == whole()


def test_stale_if_range_wins_over_an_unsatisfiable_range() -> None:
    """If-Range is evaluated first (RFC 9110 section 13.2.2): a stale validator means 200, not 416."""
    assert parse_range("bytes=5000-", SIZE, if_range='"stale"', etag=ETAG) == whole()
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=5000-", SIZE, if_range=ETAG, etag=ETAG)


@pytest.mark.parametrize(
    ("rng", "size", "expected"),
    [
        (ByteRange(0, 1, partial=True), 1000, "bytes 0-0/1000"),
        (ByteRange(0, 1000, partial=True), 1000, "bytes 0-999/1000"),
        (ByteRange(900, 1000, partial=True), 1000, "bytes 900-999/1000"),
        (ByteRange(65536, 131072, partial=True), 3 * 2**20, "bytes 65536-131071/3145728"),
    ],
)
def test_content_range(rng: ByteRange, size: int, expected: str) -> None:
    assert rng.content_range(size) == expected


def test_length() -> None:
    assert ByteRange(10, 20, partial=True).length == 10
    assert ByteRange(0, 0, partial=False).length == 0
