"""Node identity: the Ed25519 key pair and the node ID derived from it.

The node ID is a fingerprint of the public key, in the spirit of Syncthing's
device IDs but shorter: the first 140 bits of SHA-256(public key) as 28
base32 characters, in four groups of seven, each group followed by a Luhn
mod-32 check character, groups joined by dashes::

    MFRGGZD-XXXXXXX-XXXXXXX-XXXXXXX   (each group + 1 check char: 8 chars)

A typo in any single character, or two swapped neighbours (but for the pair
A/7, Luhn's analogue of 0/9), is caught by the check characters before
anything is looked up.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from priv_network.errors import ConfigError, InvalidInput

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_GROUPS = 4
_GROUP_LEN = 7
_NODE_ID_RE = re.compile(r"^[A-Z2-7]{32}$")


def _luhn32(chars: str) -> str:
    """Luhn mod N check character over base32.

    Weights run from the right, starting at 2, as in the textbook algorithm.
    (Syncthing's luhnBase32 starts at 1 from the left: with 7 characters the
    last one then has weight 1, like the check character, so swapping those
    two always passes the check.)
    """
    factor = 2
    total = 0
    n = len(_B32)
    for ch in reversed(chars):
        addend = factor * _B32.index(ch)
        factor = 1 if factor == 2 else 2
        addend = addend // n + addend % n
        total += addend
    return _B32[(n - total % n) % n]


def node_id_from_public_key(public_raw: bytes) -> str:
    digest = hashlib.sha256(public_raw).digest()
    b32 = base64.b32encode(digest).decode("ascii")[: _GROUPS * _GROUP_LEN]
    groups = []
    for i in range(_GROUPS):
        part = b32[i * _GROUP_LEN : (i + 1) * _GROUP_LEN]
        groups.append(part + _luhn32(part))
    return "-".join(groups)


def normalize_node_id(text: str) -> str:
    """Canonical form of a typed node ID, or InvalidInput with a clear message."""
    compact = re.sub(r"[\s-]", "", text).upper()
    if not _NODE_ID_RE.match(compact):
        raise InvalidInput(f"not a node ID: {text!r} (expected 4 dash-separated groups of 8 base32 characters)")
    groups = [compact[i * 8 : (i + 1) * 8] for i in range(_GROUPS)]
    for group in groups:
        if _luhn32(group[:_GROUP_LEN]) != group[_GROUP_LEN]:
            raise InvalidInput(f"node ID {text!r} has a typo (check character mismatch)")
    return "-".join(groups)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PublicIdentity:
    node_id: str
    public_key: bytes

    @classmethod
    def from_public_bytes(cls, raw: bytes) -> PublicIdentity:
        if len(raw) != 32:
            raise InvalidInput("an Ed25519 public key is 32 bytes")
        return cls(node_id_from_public_key(raw), raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except InvalidSignature:
            return False
        return True


NODE_ID_FILE = "node.id"


class NodeIdentity:
    """The node's private key; signs for it. Never leaves this object.

    The node ID is the fingerprint of the node's first key. After a key
    rotation it stays the same (kept in ``node.id`` beside the key), and the
    current key no longer hashes to it: peers learn the new key from a
    rotate event signed by the old one.
    """

    def __init__(self, private_key: Ed25519PrivateKey, node_id: str | None = None) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicIdentity(node_id or node_id_from_public_key(raw), raw)

    @property
    def rotated(self) -> bool:
        return self.public.node_id != node_id_from_public_key(self.public.public_key)

    def rotate(self, new_key: Ed25519PrivateKey) -> None:
        """Sign with ``new_key`` from now on, under the same node ID."""
        raw = new_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._key = new_key
        self.public = PublicIdentity(self.public.node_id, raw)

    def pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def node_id(self) -> str:
        return self.public.node_id

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(Ed25519PrivateKey.generate())

    def save(self, path: Path) -> None:
        """Write the key in PEM (PKCS#8), created owner-only (0600) from the start."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())

    @classmethod
    def load(cls, path: Path) -> NodeIdentity:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the node key {path}: {exc.strerror}") from None
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"the node key {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigError(f"the node key {path} is not a valid PEM private key") from None
        except TypeError:  # cryptography's way of saying "encrypted, and no password given"
            raise ConfigError(f"the node key {path} is encrypted; the node needs it unencrypted") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"the node key {path} is not an Ed25519 key")
        id_file = path.parent / NODE_ID_FILE
        node_id = None
        if id_file.exists():
            try:
                node_id = normalize_node_id(id_file.read_text(encoding="utf-8").strip())
            except (OSError, InvalidInput):
                raise ConfigError(f"{id_file} does not hold a node ID") from None
        return cls(key, node_id)
