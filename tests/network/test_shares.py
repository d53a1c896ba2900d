"""Share links: an owner hands an outsider a signed, expiring, use-limited download link.

The outsider needs no account: the link alone opens the download. A link
that is expired, altered, revoked or used up is refused with 403 and a short
HTML page that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import re
import secrets
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

import node.shares
from priv_network import commands
from priv_network.client import AdminClient
from priv_network.errors import Forbidden, PrivNetworkError
from tests.network.conftest import NetNode, Network, eventually, group, write_file
from tests.network.test_stream import hang_up, served_like_serve, server_errors


async def share(owner: NetNode, item_id: str, **body: Any) -> dict[str, Any]:
    reply = await owner.call("POST", "/api/v1/shares", json={"id": item_id, **body})
    assert reply.status == 201, reply
    return dict(reply.data)


async def download(
    url: str, headers: dict[str, str] | None = None, *, session: aiohttp.ClientSession | None = None
) -> tuple[int, Any, bytes]:
    """As an outsider: no token, no cookie (a fresh session unless one is given)."""
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.get(url, headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()


def assert_refused(status: int, headers: Any, body: bytes, reason: str) -> None:
    assert status == 403, (status, body[:300])
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "<h1>403</h1>" in page
    assert reason in page, page
    assert len(body) < 2000  # a short page, no traceback or item data


async def shares_by_id(owner: NetNode) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in (await owner.api("GET", "/api/v1/shares"))["shares"]}


@pytest.fixture
async def owner(network: Network, tmp_path: Path) -> tuple[NetNode, dict[str, Any], bytes]:
    a = await network.node("alpha")
    data = secrets.token_bytes(1024 * 1024 + 333)
    item = (await a.add(write_file(tmp_path, "Wedding Video.bin", data)))[0]
    return a, item, data


async def test_share_link_downloads_and_resumes(owner: tuple[NetNode, dict[str, Any], bytes]) -> None:
    a, item, data = owner
    link = await share(a, item["id"], ttl="2h", downloads=2)
    assert re.fullmatch(re.escape(a.url) + r"/s/[0-9a-f]{24}\.[A-Za-z0-9_-]+", link["url"]), link["url"]
    assert (link["item_id"], link["max_downloads"], link["downloads"], link["state"]) == (item["id"], 2, 0, "active")
    assert link["title"] == "Wedding Video"
    assert time.time() + 7100 < link["expires_at"] <= time.time() + 7200

    # The download starts, and is cut after a first piece.
    async with aiohttp.ClientSession() as outsider:
        async with outsider.get(link["url"]) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Disposition"] == 'attachment; filename="Wedding Video.bin"'
            assert resp.headers["Cache-Control"] == "no-store"
            assert int(resp.headers["Content-Length"]) == len(data)
            got = await resp.content.readexactly(100_000)
            resp.close()
        # It resumes with a Range from where it stopped.
        status, headers, rest = await download(link["url"], {"Range": f"bytes={len(got)}-"}, session=outsider)
        assert status == 206
        assert headers["Content-Range"] == f"bytes {len(got)}-{len(data) - 1}/{len(data)}"
        assert got + rest == data
        # A range in the middle works too: the two downloads' bytes are not all sent yet.
        status, _headers, body = await download(link["url"], {"Range": "bytes=500000-500099"}, session=outsider)
        assert (status, body) == (206, data[500000:500100])

        listed = (await shares_by_id(a))[link["id"]]
        assert (listed["downloads"], listed["state"], listed["title"]) == (2, "active", "Wedding Video")
        assert listed["url"] == link["url"]

        # What is left is less than a whole download: the link says how much...
        left = listed["bytes_left"]
        assert 0 < left < len(data), listed
        # ...refuses a whole download up front (no status and length it could not keep to)...
        assert_refused(*await download(link["url"], session=outsider), "not enough for this request")
        assert (await shares_by_id(a))[link["id"]]["bytes_left"] == left
        # ...still finishes an interrupted download with what is left...
        status, _headers, body = await download(link["url"], {"Range": f"bytes={len(data) - left}-"}, session=outsider)
        assert (status, body) == (206, data[len(data) - left :])
        # ...and from then on everything is refused, ranges too.
        assert_refused(*await download(link["url"], session=outsider), "used up")
        assert_refused(*await download(link["url"], {"Range": "bytes=1-"}, session=outsider), "used up")
        listed = (await shares_by_id(a))[link["id"]]
        assert (listed["downloads"], listed["state"]) == (2, "used up")

        # Bytes sent through the link are counted under its name, once sent. (The
        # outsider's session stays open meanwhile: a test server cancels a handler
        # whose client has gone, and with it the counting after the send.)
        async def counted() -> bool:
            traffic = (await a.api("GET", "/api/v1/status"))["traffic"]
            sent = traffic.get(f"share:{link['id']}", {}).get("sent", 0)
            return bool(sent >= len(rest) + 100)

        await eventually(counted, what="the link's traffic to be counted")

    # Without a limit, a link can be downloaded again and again.
    free = await share(a, item["id"], ttl="1h")
    for _ in range(3):
        status, _headers, body = await download(free["url"])
        assert (status, body) == (200, data)
    assert (await shares_by_id(a))[free["id"]]["downloads"] == 3


async def test_ranges_cannot_outrun_the_download_limit(owner: tuple[NetNode, dict[str, Any], bytes]) -> None:
    """The acceptance run's bypass: after the one download, `Range: bytes=1-` got 206 again and again."""
    a, item, data = owner
    link = await share(a, item["id"], downloads=1)
    status, _headers, body = await download(link["url"])
    assert (status, body) == (200, data)
    assert (await shares_by_id(a))[link["id"]]["state"] == "used up"
    for header in ("bytes=1-", "bytes=1-", "bytes=-100", "bytes=10-20", "bytes=0-"):
        assert_refused(*await download(link["url"], {"Range": header}), "used up")
    assert_refused(*await download(link["url"]), "used up")
    # HEAD sends no bytes, but a used-up link answers nothing else either.
    async with aiohttp.ClientSession() as outsider, outsider.head(link["url"]) as resp:
        assert resp.status == 403
    assert (await shares_by_id(a))[link["id"]]["downloads"] == 1

    # Two downloads: the second may be ranges only; once both are sent, the next range is refused.
    two = await share(a, item["id"], downloads=2)
    assert (await download(two["url"]))[2] == data
    for header, part in (("bytes=0-499999", data[:500000]), ("bytes=500000-", data[500000:])):
        status, _headers, body = await download(two["url"], {"Range": header})
        assert (status, body) == (206, part)
    assert_refused(*await download(two["url"], {"Range": "bytes=1-"}), "used up")
    assert (await shares_by_id(a))[two["id"]]["downloads"] == 2


async def test_a_download_manager_gets_one_copy_in_pieces(owner: tuple[NetNode, dict[str, Any], bytes]) -> None:
    """A probe of the first byte, then parallel pieces: one download, all of it."""
    a, item, data = owner
    link = await share(a, item["id"], downloads=1)
    status, headers, first = await download(link["url"], {"Range": "bytes=0-0"})
    assert (status, first, headers["Content-Range"]) == (206, data[:1], f"bytes 0-0/{len(data)}")
    bounds = [0, 300_000, 600_000, 900_000, len(data)]
    async with aiohttp.ClientSession() as manager:
        pieces = await asyncio.gather(
            *(
                download(link["url"], {"Range": f"bytes={lo}-{hi - 1}"}, session=manager)
                for lo, hi in itertools.pairwise(bounds)
            )
        )
    assert [p[0] for p in pieces] == [206] * 4
    assert b"".join(p[2] for p in pieces) == data
    listed = (await shares_by_id(a))[link["id"]]
    assert (listed["downloads"], listed["state"]) == (1, "used up")
    assert_refused(*await download(link["url"], {"Range": "bytes=0-0"}), "used up")


async def test_expired_link(owner: tuple[NetNode, dict[str, Any], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    a, item, data = owner
    link = await share(a, item["id"], ttl="1m")
    status, _headers, body = await download(link["url"])
    assert (status, body) == (200, data)

    # Two minutes later (the link's own clock only).
    real = time.time
    monkeypatch.setattr(node.shares, "time", SimpleNamespace(time=lambda: real() + 120))
    assert_refused(*await download(link["url"]), "expired")
    assert_refused(*await download(link["url"], {"Range": "bytes=10-"}), "expired")
    assert (await shares_by_id(a))[link["id"]]["state"] == "expired"


async def test_altered_links(owner: tuple[NetNode, dict[str, Any], bytes]) -> None:
    a, item, _data = owner
    link = await share(a, item["id"])
    base, token = link["url"].rsplit("/", 1)
    share_id, sig = token.split(".")

    flipped = sig[:20] + ("A" if sig[20] != "A" else "B") + sig[21:]
    assert_refused(*await download(f"{base}/{share_id}.{flipped}"), "altered")
    assert_refused(*await download(f"{base}/{share_id}.{sig[:-10]}"), "altered")
    assert_refused(*await download(f"{base}/{share_id}.%%%%"), "altered")
    assert_refused(*await download(f"{base}/{share_id}"), "altered")
    # Another share's ID under this signature, or an ID that does not exist.
    other = await share(a, item["id"])
    assert_refused(*await download(f"{base}/{other['id']}.{sig}"), "altered")
    assert_refused(*await download(f"{base}/{'0' * 24}.{sig}"), "not valid")
    assert_refused(*await download(f"{base}/garbage"), "not valid")
    # The real link still works.
    status, _headers, _body = await download(link["url"])
    assert status == 200


async def test_revoked_link(owner: tuple[NetNode, dict[str, Any], bytes]) -> None:
    a, item, _data = owner
    link = await share(a, item["id"])
    kept = await share(a, item["id"])
    assert (await a.api("DELETE", f"/api/v1/shares/{link['id']}")) == {"revoked": link["id"]}
    assert_refused(*await download(link["url"]), "revoked")
    assert_refused(*await download(link["url"], {"Range": "bytes=5-"}), "revoked")
    assert (await shares_by_id(a))[link["id"]]["state"] == "revoked"
    # Other links of the same item are not affected.
    assert (await download(kept["url"]))[0] == 200
    reply = await a.call("DELETE", f"/api/v1/shares/{'f' * 24}")
    assert reply.status == 404


async def test_deleted_item_ends_its_links(owner: tuple[NetNode, dict[str, Any], bytes]) -> None:
    a, item, _data = owner
    link = await share(a, item["id"])
    await a.api("DELETE", f"/api/v1/items/{item['id']}")
    assert_refused(*await download(link["url"]), "not valid")
    assert link["id"] not in await shares_by_id(a)


async def test_only_the_owner_shares_and_input_is_checked(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    await group(a, b)
    item = (await a.add(write_file(tmp_path, "Film.bin")))[0]
    await b.sync()
    assert [h["id"] for h in await b.search("film")] == [item["id"]]

    # A peer's item this node knows is named as such, with its owner.
    reply = await b.call("POST", "/api/v1/shares", json={"id": item["id"]})
    assert (reply.status, reply.data["error"]["code"]) == (403, "not_owner"), reply
    assert reply.message == f"{item['id']} belongs to alpha: only its owner can share it"
    # The same once B holds a copy (a pin), and through the CLI: one line, exit code 1.
    await b.api("POST", "/api/v1/pins", json={"id": item["id"]})

    async def pinned() -> bool:
        return [p["state"] for p in (await b.api("GET", "/api/v1/pins"))["pins"]] == ["complete"]

    await eventually(pinned, what="B's pin to complete")
    args = commands.build_parser().parse_args(["share", item["id"]])
    async with AdminClient(b.url, b.token) as client:
        with pytest.raises(PrivNetworkError) as refused:
            await args.remote(client, args, io.StringIO())
    assert refused.value.message == f"{item['id']} belongs to alpha: only its owner can share it"
    assert isinstance(refused.value, Forbidden)  # `priv-network share` prints it as one line and exits 1
    # An item nobody here knows of.
    unknown = "a" * 26
    reply = await b.call("POST", "/api/v1/shares", json={"id": unknown})
    assert reply.status == 404, reply
    assert reply.message == f"no item {unknown} on this node (only an item's owner can share it)"
    assert (await b.api("GET", "/api/v1/shares")) == {"shares": []}

    for body, words in (
        ({"id": item["id"], "ttl": "10s"}, "between 1 minute and 365 days"),
        ({"id": item["id"], "ttl": "400d"}, "between 1 minute and 365 days"),
        ({"id": item["id"], "ttl": "soon"}, "ttl must be a duration"),
        ({"id": item["id"], "downloads": 0}, "downloads must be between 1 and 1000000"),
        ({"id": item["id"], "downloads": "3"}, "whole number"),
        ({"id": item["id"], "downloads": True}, "whole number"),
        ({}, "id must be an item ID"),
    ):
        reply = await a.call("POST", "/api/v1/shares", json=body)
        assert (reply.status, reply.data["error"]["code"]) == (400, "invalid_input"), (body, reply)
        assert words in reply.message, (body, reply.message)

    # Managing links needs the owner's credential.
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{a.url}/api/v1/shares", json={"id": item["id"]}) as resp:
            assert resp.status == 401
        async with session.get(f"{a.url}/api/v1/shares") as resp:
            assert resp.status == 401


async def test_a_link_whose_client_hangs_up(network: Network, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A download stopped half-way (the browser's Cancel, a lost connection) is normal: no error in
    the owner's log, the bytes that went out are counted, and the download can resume."""
    a = await network.node("alpha")
    size = 24 * 1024 * 1024  # more than the socket buffers hold: the owner is mid-send when the client goes
    data = secrets.token_bytes(size)
    item = (await a.add(write_file(tmp_path, "Big Film.bin", data)))[0]
    link = await share(a, item["id"], downloads=2)

    async def sent() -> int:
        traffic = (await a.api("GET", "/api/v1/status"))["traffic"]
        return int(traffic.get(f"share:{link['id']}", {}).get("sent", 0))

    async with served_like_serve(a):
        caplog.clear()
        assert await hang_up(link["url"], {}, read=100_000) == 200

        async def settled() -> bool:
            return bool(server_errors(caplog)) or await sent() > 100_000

        await eventually(settled, what="the owner to count what it sent before the client hung up")
        assert server_errors(caplog) == []
        assert 100_000 < await sent() < size
        # The link is still good for the rest.
        status, _headers, rest = await download(link["url"], {"Range": "bytes=100000-"})
        assert (status, rest) == (206, data[100_000:])
        assert server_errors(caplog) == []


async def test_head_of_a_link_sends_and_uses_nothing(owner: tuple[NetNode, dict[str, Any], bytes]) -> None:
    a, item, data = owner
    link = await share(a, item["id"], downloads=1)
    async with aiohttp.ClientSession() as outsider:
        for _ in range(5):
            async with outsider.head(link["url"]) as resp:
                assert resp.status == 200
                assert int(resp.headers["Content-Length"]) == len(data)
                assert await resp.read() == b""
    listed = (await shares_by_id(a))[link["id"]]
    assert (listed["downloads"], listed["state"]) == (0, "active")

    # The one download is whole, and is all that the link's traffic shows.
    status, _headers, body = await download(link["url"])
    assert (status, body) == (200, data)

    async def counted() -> bool:
        traffic = (await a.api("GET", "/api/v1/status"))["traffic"]
        return bool(traffic.get(f"share:{link['id']}", {}).get("sent", 0) > 0)

    await eventually(counted, what="the download to be counted")
    assert (await a.api("GET", "/api/v1/status"))["traffic"][f"share:{link['id']}"]["sent"] == len(data)
    assert (await shares_by_id(a))[link["id"]]["downloads"] == 1


async def test_a_download_is_saved_under_the_items_title(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha")
    plain = (await a.add(write_file(tmp_path, "holiday.mkv"), title="Summer 2024"))[0]
    fancy = (await a.add(write_file(tmp_path, "x.mp4"), title='Été "à" Zürich/Genève'))[0]
    bare = (await a.add(write_file(tmp_path, "notes"), title="Notes"))[0]
    expected = {
        plain["id"]: 'attachment; filename="Summer 2024.mkv"',
        fancy["id"]: 'attachment; filename="Ete _a_ Zurich_Geneve.mp4"; '
        "filename*=UTF-8''%C3%89t%C3%A9%20_%C3%A0_%20Z%C3%BCrich_Gen%C3%A8ve.mp4",
        bare["id"]: 'attachment; filename="Notes"',
    }
    for item_id, disposition in expected.items():
        link = await share(a, item_id)
        async with aiohttp.ClientSession() as outsider, outsider.head(link["url"]) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Disposition"] == disposition  # a download, even of a video type
