"""Node-to-node request signatures: RFC 9421 HTTP Message Signatures with Ed25519.

Built on the maintained ``http-message-signatures`` library, which constructs
the signature base and checks RFC 9530 ``Content-Digest``; this module fixes
the profile priv_network uses and adds what the library leaves to callers
(replay protection, destination binding, key lookup):

* covered components: ``@method``, ``@target-uri``, ``@authority`` and
  ``content-digest`` (sha-256 of the body, also for an empty body);
* parameters: ``created``, ``nonce`` (128 random bits), ``keyid`` (the
  sender's node ID), ``alg="ed25519"`` and ``tag="priv-network"``; label ``pn``;
* a receiver rebuilds the target URI from its *own* public URL, so a request
  signed for another node (or replayed at another node) fails verification;
* ``created`` must be within ``window`` seconds of now, and each
  (keyid, nonce) is accepted once; signatures created before the process
  started are refused, so the in-memory nonce cache cannot be bypassed by a
  restart.
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException, InvalidSignature

from priv_network.errors import Unauthorized
from priv_network.identity import NodeIdentity

COVERED = ("@method", "@target-uri", "@authority", "content-digest")
LABEL = "pn"
TAG = "priv-network"
DEFAULT_WINDOW = 60.0
MAX_NONCES = 200_000

KeyLookup = Callable[[str], bytes | None]


class _Headers(MutableMapping[str, str]):
    """Case-insensitive header mapping the library can read and write."""

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, tuple[str, str]] = {}
        for k, v in (items or {}).items():
            self[k] = v

    def __getitem__(self, key: str) -> str:
        return self._data[key.lower()][1]

    def __setitem__(self, key: str, value: str) -> None:
        self._data[key.lower()] = (key, value)

    def __delitem__(self, key: str) -> None:
        del self._data[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._data


class _Message:
    def __init__(self, method: str, url: str, headers: _Headers) -> None:
        self.method = method.upper()
        self.url = url
        self.headers = headers


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, lookup: KeyLookup, private: NodeIdentity | None = None) -> None:
        self._lookup = lookup
        self._private = private

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        raw = self._lookup(key_id)
        return Ed25519PublicKey.from_public_bytes(raw) if raw is not None else None

    def resolve_private_key(self, key_id: str) -> Any:
        assert self._private is not None and key_id == self._private.node_id
        return self._private.private_key


class Signer:
    def __init__(self, identity: NodeIdentity) -> None:
        self.identity = identity
        self._signer = HTTPMessageSigner(
            signature_algorithm=algorithms.ED25519, key_resolver=_Keys(lambda _k: None, identity)
        )

    def sign(self, method: str, url: str, body: bytes = b"") -> dict[str, str]:
        """Headers to add to a request: Content-Digest, Signature-Input, Signature."""
        message = _Message(method, url, _Headers())
        self._signer.sign(
            message,
            key_id=self.identity.node_id,
            created=datetime.datetime.now(datetime.UTC),
            nonce=secrets.token_urlsafe(16),
            label=LABEL,
            tag=TAG,
            covered_component_ids=COVERED,
            body=body,
        )
        return dict(message.headers.items())


class NonceCache:
    """(keyid, nonce) pairs seen within the window; bounded."""

    def __init__(self, ttl: float, max_size: int = MAX_NONCES) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def add(self, key: tuple[str, str], now: float) -> bool:
        """Remember ``key``; False if it was already seen (a replay)."""
        while self._seen:
            oldest_key, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self.max_size:
                break
            del self._seen[oldest_key]
        if key in self._seen:
            return False
        self._seen[key] = now + self.ttl
        return True


class Verifier:
    def __init__(self, lookup: KeyLookup, *, window: float = DEFAULT_WINDOW) -> None:
        self.window = window
        self.started_at = int(time.time())
        self._lookup = lookup
        self._nonces = NonceCache(ttl=2 * window + 10)

    def _verifier(self, lookup: KeyLookup) -> HTTPMessageVerifier:
        verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(lookup))
        verifier.max_clock_skew = datetime.timedelta(seconds=self.window)
        return verifier

    def verify(
        self,
        method: str,
        own_url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        key: bytes | None = None,
    ) -> str:
        """Check a request addressed to ``own_url``; returns the sender's node ID.

        ``key`` verifies against that public key instead of the known peers
        (for a join, where the joiner is not a member yet).
        """
        wanted = {"signature", "signature-input", "content-digest"}
        message = _Message(method, own_url, _Headers({k: v for k, v in headers.items() if k.lower() in wanted}))
        if "signature" not in message.headers or "signature-input" not in message.headers:
            raise Unauthorized("request is not signed")
        lookup: KeyLookup = (lambda _k: key) if key is not None else self._lookup
        try:
            results = self._verifier(lookup).verify(
                message,
                max_age=datetime.timedelta(seconds=self.window),
                expect_tag=TAG,
                expect_label=LABEL,
                require_components=COVERED,
                body=body,
            )
        except (InvalidSignature, HTTPMessageSignaturesException, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200] or (
                "it does not verify (unknown key, altered request, or signed for another node)"
            )
            raise Unauthorized(f"bad signature: {reason}") from None
        params = results[0].parameters
        keyid, nonce, created = params.get("keyid"), params.get("nonce"), params.get("created")
        if not isinstance(keyid, str) or not isinstance(nonce, str) or not isinstance(created, int):
            raise Unauthorized("signature lacks keyid, nonce or created")
        if params.get("alg") != "ed25519":
            raise Unauthorized("signature must declare alg=ed25519")
        if created < self.started_at - 1:
            raise Unauthorized("signature created before this node started; resend")
        if not self._nonces.add((keyid, nonce), time.time()):
            raise Unauthorized("replayed request (nonce already used)")
        return keyid
