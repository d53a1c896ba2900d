"""Node identity: the node ID fingerprint, typo detection, the key file, signatures."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from priv_network.errors import ConfigError, InvalidInput
from priv_network.identity import NodeIdentity, PublicIdentity, node_id_from_public_key, normalize_node_id

B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
NODE_ID = re.compile(r"^[A-Z2-7]{8}-[A-Z2-7]{8}-[A-Z2-7]{8}-[A-Z2-7]{8}$")


def reference_check_char(data: str) -> str:
    """Textbook Luhn mod 32 (weights 2, 1, 2, ... from the right), written independently of the product."""
    total = 0
    for i, ch in enumerate(reversed(data)):
        weighted = B32.index(ch) * (2 if i % 2 == 0 else 1)
        total += weighted // 32 + weighted % 32
    return B32[-total % 32]


def reference_node_id(public_raw: bytes) -> str:
    fingerprint = base64.b32encode(hashlib.sha256(public_raw).digest()).decode()[:28]
    groups = [fingerprint[i : i + 7] for i in range(0, 28, 7)]
    return "-".join(g + reference_check_char(g) for g in groups)


def raw_public(identity: NodeIdentity) -> bytes:
    return identity.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture(scope="module")
def node_ids() -> list[str]:
    return [NodeIdentity.generate().node_id for _ in range(20)]


# -- the node ID ------------------------------------------------------------------


def test_node_id_format(node_ids: list[str]) -> None:
    for node_id in node_ids:
        assert NODE_ID.match(node_id), node_id
        assert normalize_node_id(node_id) == node_id
    assert len(set(node_ids)) == len(node_ids)


def test_node_id_is_derived_from_the_public_key_only() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    first, again = NodeIdentity(key), NodeIdentity(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    assert first.node_id == again.node_id
    raw = raw_public(first)
    assert first.public.public_key == raw
    assert node_id_from_public_key(raw) == first.node_id
    assert PublicIdentity.from_public_bytes(raw) == first.public
    assert first.node_id == reference_node_id(raw)
    other = bytearray(raw)
    other[0] ^= 1
    assert node_id_from_public_key(bytes(other)) != first.node_id


def test_node_id_matches_the_reference_for_many_keys() -> None:
    for _ in range(50):
        raw = os.urandom(32)
        assert node_id_from_public_key(raw) == reference_node_id(raw)


def test_public_identity_needs_a_32_byte_key() -> None:
    for bad in (b"", b"x" * 31, b"x" * 33):
        with pytest.raises(InvalidInput, match="32 bytes"):
            PublicIdentity.from_public_bytes(bad)


@pytest.mark.parametrize(
    "typed",
    [
        str.lower,
        lambda s: s.replace("-", ""),
        lambda s: s.replace("-", "").lower(),
        lambda s: s.replace("-", " "),
        lambda s: f"  {s}\n",
        lambda s: "-".join(s[i : i + 4] for i in range(0, len(s), 4)),
    ],
)
def test_normalize_accepts_the_ways_people_type_it(node_ids: list[str], typed: object) -> None:
    assert callable(typed)
    for node_id in node_ids:
        assert normalize_node_id(typed(node_id)) == node_id


def test_every_single_character_typo_is_caught(node_ids: list[str]) -> None:
    alphabet = B32 + B32.lower() + "01890-_ .é"
    for node_id in node_ids[:5]:
        tried = 0
        for pos, original in enumerate(node_id):
            for ch in alphabet:
                if ch.upper() == original or (ch in " -" and original == "-"):
                    continue
                typo = node_id[:pos] + ch + node_id[pos + 1 :]
                with pytest.raises(InvalidInput) as excinfo:
                    normalize_node_id(typo)
                assert "\n" not in str(excinfo.value)
                tried += 1
        assert tried > 35 * 60


def test_a_typo_is_reported_as_a_typo(node_ids: list[str]) -> None:
    node_id = node_ids[0]
    wrong = B32[(B32.index(node_id[3]) + 1) % 32]
    with pytest.raises(InvalidInput, match="typo"):
        normalize_node_id(node_id[:3] + wrong + node_id[4:])


def test_swapped_neighbours_are_caught_but_for_a_and_7(node_ids: list[str]) -> None:
    compact_ids = [n.replace("-", "") for n in node_ids]
    tried = 0
    for compact in compact_ids:
        for i in range(len(compact) - 1):
            a, b = compact[i], compact[i + 1]
            if a == b or {a, b} == {"A", "7"}:
                continue
            swapped = compact[:i] + b + a + compact[i + 2 :]
            with pytest.raises(InvalidInput):
                normalize_node_id(swapped)
            tried += 1
    assert tried > 20 * 25


@pytest.mark.parametrize("length", [0, 1, 28, 31, 33, 40])
def test_wrong_length_is_refused(node_ids: list[str], length: int) -> None:
    compact = (node_ids[0].replace("-", "") * 2)[:length]
    with pytest.raises(InvalidInput, match="not a node ID") as excinfo:
        normalize_node_id(compact)
    assert "\n" not in str(excinfo.value)


def test_a_group_too_many_or_too_few_is_refused(node_ids: list[str]) -> None:
    groups = node_ids[0].split("-")
    for bad in ("-".join(groups[:3]), "-".join([*groups, groups[0]])):
        with pytest.raises(InvalidInput):
            normalize_node_id(bad)


# -- the key file -------------------------------------------------------------------


def test_key_is_saved_owner_only_and_loads_back(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    path = tmp_path / "node.key"
    old_umask = os.umask(0)
    try:
        identity.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = NodeIdentity.load(path)
    assert loaded.node_id == identity.node_id
    assert loaded.public == identity.public
    assert loaded.public.verify(identity.sign(b"hello"), b"hello")


def test_save_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = NodeIdentity.generate()
    first.save(path)
    with pytest.raises(FileExistsError):
        NodeIdentity.generate().save(path)
    assert NodeIdentity.load(path).node_id == first.node_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610])
def test_load_refuses_a_key_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    NodeIdentity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as excinfo:
        NodeIdentity.load(path)
    assert "\n" not in str(excinfo.value)


def test_load_accepts_an_owner_read_only_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    identity = NodeIdentity.generate()
    identity.save(path)
    path.chmod(0o400)
    assert NodeIdentity.load(path).node_id == identity.node_id


def private_pem(key: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a valid PEM"),
        (b"garbage\x00\xff" * 10, "not a valid PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a valid PEM"),
        (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            "not a valid PEM",
        ),
        (
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
        (private_pem(ec.generate_private_key(ec.SECP256R1())), "not an Ed25519 key"),
        (private_pem(x25519.X25519PrivateKey.generate()), "not an Ed25519 key"),
    ],
    ids=["empty", "garbage", "bad-base64", "public-key", "encrypted", "ecdsa", "x25519"],
)
def test_load_refuses_what_is_not_an_ed25519_private_key(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=reason) as excinfo:
        NodeIdentity.load(path)
    assert "\n" not in str(excinfo.value)


def test_load_of_a_missing_or_unreadable_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the node key"):
        NodeIdentity.load(tmp_path / "missing.key")
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="cannot read the node key"):
        NodeIdentity.load(tmp_path / "dir.key")


# -- signatures ---------------------------------------------------------------------


def test_sign_and_verify() -> None:
    alice, bob = NodeIdentity.generate(), NodeIdentity.generate()
    message = b"GET /federation/v1/catalog"
    signature = alice.sign(message)
    assert len(signature) == 64
    assert alice.public.verify(signature, message)
    assert PublicIdentity.from_public_bytes(alice.public.public_key).verify(signature, message)
    assert not alice.public.verify(signature, message + b"?since=0")
    assert not bob.public.verify(signature, message)
    assert not alice.public.verify(bob.sign(message), message)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not alice.public.verify(tampered, message)
    assert not alice.public.verify(signature[:-1], message)
    assert not alice.public.verify(b"", message)
