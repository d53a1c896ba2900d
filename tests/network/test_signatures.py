"""Every node-to-node request is verified before any handler runs.

Each test sends raw requests, signed with ``priv_network.signing.Signer`` as
a member would (or not quite), to a running node's changes feed.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from priv_network import signing
from priv_network.identity import NodeIdentity
from priv_network.signing import Signer
from tests.network.conftest import CATALOG, NetNode, Network, join, signed_request


@pytest.fixture
async def pair(network: Network) -> tuple[NetNode, NetNode]:
    """A and B, members of one group."""
    a = await network.node("alpha")
    b = await network.node("beta")
    await join(a, b)
    return a, b


def assert_refused(status: int, body: bytes, words: str = "") -> None:
    assert status == 401, (status, body)
    error = json.loads(body)["error"]
    assert error["code"] == "unauthorized"
    assert words in error["message"], error["message"]


@contextmanager
def signing_clock(monkeypatch: pytest.MonkeyPatch, offset: float) -> Iterator[None]:
    """Signatures made inside this block carry a ``created`` ``offset`` seconds from now."""
    real = datetime.datetime

    class Shifted(real):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
            return real.now(tz) + datetime.timedelta(seconds=offset)

    with monkeypatch.context() as m:
        m.setattr(
            signing, "datetime", SimpleNamespace(datetime=Shifted, UTC=datetime.UTC, timedelta=datetime.timedelta)
        )
        yield


async def test_valid_member_request_is_accepted(pair: tuple[NetNode, NetNode]) -> None:
    a, b = pair
    status, body = await signed_request(a.session, b.identity, "GET", a.url + CATALOG + "?since=0&limit=10")
    assert status == 200, body
    page = json.loads(body)
    assert page["node"] == a.node_id and page["since"] == 0


async def test_unsigned_request_is_refused(pair: tuple[NetNode, NetNode]) -> None:
    a, _ = pair
    async with a.session.get(a.url + CATALOG) as resp:
        assert_refused(resp.status, await resp.read(), "not signed")
    # Half a signature is no better.
    headers = Signer(pair[1].identity).sign("GET", a.url + CATALOG)
    del headers["Signature"]
    status, body = await signed_request(a.session, pair[1].identity, "GET", a.url + CATALOG, headers=headers)
    assert_refused(status, body, "not signed")


async def test_altered_signature_bytes_are_refused(pair: tuple[NetNode, NetNode]) -> None:
    a, b = pair
    url = a.url + CATALOG
    headers = Signer(b.identity).sign("GET", url)
    label, raw = re.fullmatch(r"(pn=):(.*):", headers["Signature"]).groups()  # type: ignore[union-attr]
    sig = bytearray(base64.b64decode(raw))
    sig[10] ^= 0x01
    altered = {**headers, "Signature": f"{label}:{base64.b64encode(bytes(sig)).decode()}:"}
    assert_refused(*await signed_request(a.session, b.identity, "GET", url, headers=altered))
    # The unaltered headers pass (the refused attempt did not burn the nonce).
    status, body = await signed_request(a.session, b.identity, "GET", url, headers=headers)
    assert status == 200, body


async def test_body_altered_after_signing_is_refused_before_routing(pair: tuple[NetNode, NetNode]) -> None:
    a, b = pair
    url = a.url + CATALOG
    headers = Signer(b.identity).sign("POST", url, b'{"since": 0}')
    status, body = await signed_request(a.session, b.identity, "POST", url, body=b'{"since": 9}', headers=headers)
    assert_refused(status, body, "bad signature")
    # With the body it was signed for, the request passes verification and reaches
    # the router, which has no POST here.
    status, _ = await signed_request(a.session, b.identity, "POST", url, body=b'{"since": 0}', headers=headers)
    assert status == 405


async def test_replayed_request_is_refused(pair: tuple[NetNode, NetNode]) -> None:
    a, b = pair
    url = a.url + CATALOG
    headers = Signer(b.identity).sign("GET", url)
    status, body = await signed_request(a.session, b.identity, "GET", url, headers=headers)
    assert status == 200, body
    assert_refused(*await signed_request(a.session, b.identity, "GET", url, headers=headers), "replayed")


@pytest.mark.parametrize("offset", [-600, 600], ids=["ten-minutes-old", "ten-minutes-ahead"])
async def test_request_created_outside_the_window_is_refused(
    pair: tuple[NetNode, NetNode], monkeypatch: pytest.MonkeyPatch, offset: float
) -> None:
    a, b = pair
    url = a.url + CATALOG
    with signing_clock(monkeypatch, offset):
        headers = Signer(b.identity).sign("GET", url)
    assert_refused(*await signed_request(a.session, b.identity, "GET", url, headers=headers))
    # Within the window (and after the node started) the same clock trick is accepted.
    with signing_clock(monkeypatch, -0.5):
        headers = Signer(b.identity).sign("GET", url)
    status, body = await signed_request(a.session, b.identity, "GET", url, headers=headers)
    assert status == 200, body


async def test_request_signed_before_the_node_restarted_is_refused(
    pair: tuple[NetNode, NetNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart empties the nonce cache, so signatures older than the restart must not pass afterwards."""
    a, b = pair
    url = a.url + CATALOG
    first = Signer(b.identity).sign("GET", url)
    replay = Signer(b.identity).sign("GET", url)
    status, body = await signed_request(a.session, b.identity, "GET", url, headers=first)
    assert status == 200, body
    # The restart happens "a few seconds later": the restarted node's clock reads 5 s ahead when it starts.
    with monkeypatch.context() as m:
        m.setattr(signing, "time", SimpleNamespace(time=lambda: time.time() + 5))
        await a.restart()
    assert_refused(*await signed_request(a.session, b.identity, "GET", url, headers=replay), "before this node started")


async def test_request_signed_for_another_node_is_refused(network: Network, pair: tuple[NetNode, NetNode]) -> None:
    a, b = pair
    c = await network.node("gamma")
    await join(a, c)
    # B signs a request for C's feed and sends it to A instead.
    headers = Signer(b.identity).sign("GET", c.url + CATALOG)
    assert_refused(*await signed_request(a.session, b.identity, "GET", a.url + CATALOG, headers=headers))
    # Sent where it was meant to go, the very same request is fine.
    status, body = await signed_request(a.session, b.identity, "GET", c.url + CATALOG, headers=headers)
    assert status == 200, body
    # The query is covered too.
    headers = Signer(b.identity).sign("GET", a.url + CATALOG + "?since=0")
    status, body = await signed_request(a.session, b.identity, "GET", a.url + CATALOG + "?since=1", headers=headers)
    assert_refused(status, body)


async def test_unknown_key_is_refused(pair: tuple[NetNode, NetNode]) -> None:
    a, _ = pair
    stranger = NodeIdentity.generate()
    assert_refused(*await signed_request(a.session, stranger, "GET", a.url + CATALOG))


async def test_removed_member_is_refused(network: Network, pair: tuple[NetNode, NetNode]) -> None:
    a, b = pair
    status, _ = await signed_request(a.session, b.identity, "GET", a.url + CATALOG)
    assert status == 200
    await a.api("DELETE", f"/api/v1/network/members/{b.node_id}")
    assert_refused(*await signed_request(a.session, b.identity, "GET", a.url + CATALOG))
    async with a.session.get(a.url + f"/federation/v1/content/{'a' * 26}") as resp:
        assert resp.status == 401
    status, _ = await signed_request(a.session, b.identity, "GET", a.url + f"/federation/v1/content/{'a' * 26}")
    assert status == 401
