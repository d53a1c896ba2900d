"""The group network as the CMA keeps it: invites, joins, and the signed roster.

Membership is a set of signed roster events (``add``/``remove``), each
signed by a member; the latest event (by time, then ID) about a node decides
whether it is a member. Every node also signs an ``add`` of itself, so its
key and address travel with the roster to nodes that never met it. Events
are stored once and published in the changes feed, so they spread with the
catalog: within one sync round every member learns every other member.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.store import CmaStore
from priv_network.errors import Conflict, Forbidden, InvalidInput, NotFound, PrivNetworkError
from priv_network.identity import (
    NODE_ID_FILE,
    NodeIdentity,
    PublicIdentity,
    b64u,
    b64u_decode,
    node_id_from_public_key,
    normalize_node_id,
)
from priv_network.interfaces import Peer
from priv_network.peerclient import PeerClient
from priv_network.wire import RosterEvent

log = logging.getLogger(__name__)

INVITE_PREFIX = "pninv1_"
MAX_INVITE_USES = 1000
MAX_INVITE_TTL = 365 * 86400
MAX_CLOCK_AHEAD = 300.0
SEEN_EVERY = 60.0  # seconds: a member's last_seen_at is written at most this often


def join_proof(secret: str, invite_id: str, joiner: str, inviter: str) -> str:
    """Proof of the invite secret, bound to both nodes so it cannot be reused by another joiner."""
    message = f"priv-network join|{invite_id}|{joiner}|{inviter}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def parse_invite(token: str) -> dict[str, str]:
    token = token.strip()
    bad = InvalidInput("not a valid invite token (copy the whole token printed by `priv-network invite`)")
    if not token.startswith(INVITE_PREFIX) or len(token) > 2000:
        raise bad
    try:
        data = json.loads(b64u_decode(token[len(INVITE_PREFIX) :]))
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or set(data) != {"u", "n", "i", "s"}:
        raise bad
    if not all(isinstance(v, str) for v in data.values()):
        raise bad
    if not data["u"].startswith(("http://", "https://")) or len(data["i"]) != 32 or len(data["s"]) < 20:
        raise bad
    try:
        data["n"] = normalize_node_id(data["n"])
    except InvalidInput:
        raise bad from None
    return data


class Network:
    def __init__(
        self,
        *,
        store: CmaStore,
        identity: NodeIdentity,
        name: str,
        url: str,
        notify: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self.identity = identity
        self.node_id = identity.node_id
        self.name = name
        self.url = url
        self._notify = notify
        self._client: PeerClient | None = None
        self._keys: dict[str, bytes] = {}
        # The inviter's key while a join is under way: it polls us as soon as it
        # has said yes, possibly before its answer has been stored here.
        self._provisional: dict[str, bytes] = {}
        self._removed: set[str] = set()
        self._last_keys: dict[str, bytes] = {}  # every member's latest key, removed members' too
        self._peers: dict[str, Peer] = {}
        self._seen_at: dict[str, float] = {}  # when peer_seen last wrote each member's last_seen_at

    def set_client(self, client: PeerClient) -> None:
        self._client = client

    @property
    def client(self) -> PeerClient:
        assert self._client is not None, "Network.set_client() not called"
        return self._client

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        await self._ensure_self_event()
        await self._reload()

    async def _ensure_self_event(self) -> None:
        """Sign an ``add`` of this node (again, if its name or URL changed)."""
        pub = b64u(self.identity.public.public_key)
        for row in reversed(await self._store.roster_events_all()):
            if row["subject"] == self.node_id and row["signer"] == self.node_id:
                body = json.loads(row["body"])
                if (body["name"], body["url"]) == (self.name, self.url) and (
                    body["public_key"] == pub or self.identity.rotated
                ):
                    return
                break
        event = self._sign(
            RosterEvent(
                id=secrets.token_hex(16),
                type="add",
                subject=self.node_id,
                name=self.name,
                url=self.url,
                public_key=pub,
                signer=self.node_id,
                at=time.time(),
            )
        )
        await self._store.add_roster_event(_event_row(event), None)

    async def _reload(self) -> None:
        keys, removed, peers, last = {}, set(), {}, {}
        for row in await self._store.list_members():
            last[row["node_id"]] = b64u_decode(row["public_key"])
            if row["active"]:
                keys[row["node_id"]] = last[row["node_id"]]
                peers[row["node_id"]] = Peer(node_id=row["node_id"], name=row["name"], url=row["url"])
            else:
                removed.add(row["node_id"])
        self._keys, self._removed, self._peers, self._last_keys = keys, removed, peers, last

    def _sign(self, event: RosterEvent) -> RosterEvent:
        sig = b64u(self.identity.sign(event.signing_bytes()))
        return RosterEvent(**{**event.__dict__, "sig": sig})

    # -- lookups ------------------------------------------------------------
    def public_key_for(self, node_id: str) -> bytes | None:
        """Key of an active member (for signature checks); None for anyone else."""
        return self._keys.get(node_id) or self._provisional.get(node_id)

    def is_member(self, node_id: str) -> bool:
        return node_id in self._keys

    def peer(self, node_id: str) -> Peer | None:
        return self._peers.get(node_id)

    async def active_peers(self) -> list[Peer]:
        return list(self._peers.values())

    async def list_members(self) -> list[dict[str, Any]]:
        return await self._store.list_members()

    async def peer_seen(self, node_id: str) -> None:
        """Record that a member made a valid signed request: at most once a minute per member,
        as a broker sends one request per range a player asks for."""
        now = time.time()
        if now - self._seen_at.get(node_id, 0.0) < SEEN_EVERY:
            return
        self._seen_at[node_id] = now
        await self._store.touch_member(node_id, now)

    # -- roster events ------------------------------------------------------
    def _verify_event(self, event: RosterEvent, vouched: bool = True) -> bool | None:
        """True: valid; False: forged (reject the batch); None: signer unknown yet.

        ``vouched``: the events come from a member (its feed, or an inviter's
        join answer). Unvouched events (the unsigned roster announcement) may
        not introduce a stranger by its own signature.
        """
        try:
            sig = b64u_decode(event.sig)
            subject_key = b64u_decode(event.public_key)
        except ValueError:
            return False
        if len(subject_key) != 32:
            return False
        if event.at > time.time() + MAX_CLOCK_AHEAD:
            return None  # dated in the future: not yet (else it could outrank every later event)
        if event.type == "rotate":
            # A node moves to a new key; only its current (old) key may say so.
            if event.signer != event.subject:
                return False
            if event.subject == self.node_id:
                return True  # we made it ourselves (and no longer hold the old key)
            # A removed node's rotation counts too when a member vouches for it (it rejoins with its new key).
            old = self._keys.get(event.subject) or (self._last_keys.get(event.subject) if vouched else None)
            return None if old is None else PublicIdentity.from_public_bytes(old).verify(sig, event.signing_bytes())
        if event.type == "add" and not self._key_belongs(event.subject, subject_key):
            # A node we know nothing of may have rotated its key: its chain has not reached us yet.
            unknown = event.subject != self.node_id and event.subject not in self._last_keys
            return None if unknown else False
        if event.signer == self.node_id:
            key: bytes | None = self.identity.public.public_key
        elif event.signer == event.subject and event.type == "add":
            # A node introducing itself: fine for a node we have not seen removed.
            if event.subject in self._removed:
                return None
            if not vouched and event.subject not in self._keys:
                return None
            key = subject_key
        else:
            key = self._keys.get(event.signer)
        if key is None:
            return None
        return PublicIdentity.from_public_bytes(key).verify(sig, event.signing_bytes())

    def _key_belongs(self, node_id: str, key: bytes) -> bool:
        """Is ``key`` the node's: its fingerprint, or the key it rotated to (as we know it)?"""
        if node_id_from_public_key(key) == node_id:
            return True
        if node_id == self.node_id:
            return key == self.identity.public.public_key
        return self._last_keys.get(node_id) == key

    async def apply_roster_events(self, events: Sequence[RosterEvent], source: str, *, vouched: bool = True) -> int:
        """Verify and store events (from a join answer or a peer's feed); returns members added."""
        pending = [e for e in events if not await self._store.has_roster_event(e.id)]
        added = 0
        progress = True
        while pending and progress:
            progress = False
            later = []
            for event in sorted(pending, key=lambda e: (e.at, e.id)):
                verdict = self._verify_event(event, vouched)
                if verdict is False:
                    raise InvalidInput(f"roster event {event.id} from {source} has a bad signature")
                if verdict is None:
                    later.append(event)
                    continue
                was_member = self.is_member(event.subject)
                member = None
                if event.type == "rotate" and event.subject != self.node_id:
                    known = next((r for r in await self._store.list_members() if r["node_id"] == event.subject), None)
                    member = {
                        "node_id": event.subject,
                        "name": event.name,
                        "url": event.url,
                        "public_key": event.public_key,
                        "active": bool(known["active"]) if known else True,
                        "event_id": event.id,
                        "event_at": event.at,
                    }
                elif event.subject != self.node_id:
                    member = {
                        "node_id": event.subject,
                        "name": event.name,
                        "url": event.url,
                        "public_key": event.public_key,
                        "active": event.type == "add",
                        "event_id": event.id,
                        "event_at": event.at,
                    }
                elif event.type == "remove":
                    log.warning("this node was removed from the group by %s", event.signer)
                await self._store.add_roster_event(_event_row(event), member)
                await self._reload()
                if not was_member and self.is_member(event.subject):
                    added += 1
                    log.info("new member %s (%s) via %s", event.name, event.subject, source)
                progress = True
            pending = later
        if pending:
            log.info("%d roster events from %s wait for their signers to become known", len(pending), source)
        return added

    # -- invites ------------------------------------------------------------
    async def create_invite(self, ttl: float, uses: int) -> str:
        if not 60 <= ttl <= MAX_INVITE_TTL:
            raise InvalidInput("ttl must be between 1 minute and 365 days")
        if not 1 <= uses <= MAX_INVITE_USES:
            raise InvalidInput(f"uses must be between 1 and {MAX_INVITE_USES}")
        invite_id = secrets.token_hex(16)
        secret = secrets.token_urlsafe(24)
        now = time.time()
        await self._store.insert_invite(
            {"id": invite_id, "secret": secret, "created_at": now, "expires_at": now + ttl, "uses_left": uses}
        )
        payload = {"u": self.url, "n": self.node_id, "i": invite_id, "s": secret}
        return INVITE_PREFIX + b64u(json.dumps(payload, separators=(",", ":")).encode())

    async def accept_join(self, body: dict[str, Any], joiner: PublicIdentity) -> dict[str, Any]:
        """An invited node asks to join. Its request signature was checked with ``joiner``'s key."""
        invite_id, proof, node = body.get("invite"), body.get("proof"), body.get("node")
        if not isinstance(invite_id, str) or not isinstance(proof, str) or not isinstance(node, dict):
            raise InvalidInput("join needs invite, proof and node")
        name, url = node.get("name"), node.get("url")
        if not isinstance(name, str) or not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidInput("join needs the node's name and http(s) URL")
        if joiner.node_id == self.node_id:
            raise Conflict("a node cannot join itself")
        now = time.time()
        members = await self._store.list_members()
        removed_at = next((m["event_at"] for m in members if m["node_id"] == joiner.node_id and not m["active"]), None)

        def check(row: dict[str, Any]) -> None:
            expected = join_proof(row["secret"], invite_id, joiner.node_id, self.node_id)
            if not hmac.compare_digest(expected, proof):
                raise Forbidden("the invite was not accepted (wrong or tampered secret)")
            if removed_at is not None and row["created_at"] <= removed_at:
                raise Forbidden("this node was removed from the group; it needs an invite made after its removal")
            if row["expires_at"] < now:
                raise Forbidden("this invite has expired")
            if row["uses_left"] <= 0:
                raise Forbidden("this invite has been used up")

        # A node that rotated its key: the chain that proves the key (checked by the caller with
        # verify_key_chain) goes into the roster before the add, so that every member can check it.
        chain: list[RosterEvent] = []
        if node_id_from_public_key(joiner.public_key) != joiner.node_id:
            chain = [RosterEvent.from_json(e) for e in body.get("key_chain") or []]
        if await self._store.use_invite(invite_id, check) is None:
            raise Forbidden("unknown invite (never made here, or tampered)")
        event = self._sign(
            RosterEvent(
                id=secrets.token_hex(16),
                type="add",
                subject=joiner.node_id,
                name=name[:200],
                url=url[:500],
                public_key=b64u(joiner.public_key),
                signer=self.node_id,
                at=max([now, *(e.at + 0.001 for e in chain)]),  # the latest word about the joiner
            )
        )
        await self.apply_roster_events([*chain, event], self.node_id)
        log.info("%s (%s) joined with an invite", name, joiner.node_id)
        await self._notify()
        return {"events": [e.to_json() for e in await self.roster()]}

    async def roster(self) -> list[RosterEvent]:
        return [_row_event(r) for r in await self._store.roster_events_all()]

    async def join(self, token: str) -> dict[str, Any]:
        """Join the group of the node that made ``token``."""
        invite = parse_invite(token)
        inviter_id = invite["n"]
        if inviter_id == self.node_id:
            raise InvalidInput("this invite was made by this node; use it on the node that should join")
        doc = await self.client.get(invite["u"], "/federation/v1/node", signed=False)
        if not isinstance(doc, dict) or not isinstance(doc.get("public_key"), str):
            raise InvalidInput(f"{invite['u']} did not answer with a node document")
        try:
            key = b64u_decode(doc["public_key"])
        except ValueError:
            raise InvalidInput(f"{invite['u']} sent a malformed public key") from None
        if len(key) != 32 or not verify_key_chain(inviter_id, key, doc.get("key_chain")):
            raise Forbidden(f"the node at {invite['u']} is not the one that made this invite (node ID mismatch)")
        body = {
            "invite": invite["i"],
            "proof": join_proof(invite["s"], invite["i"], self.node_id, inviter_id),
            "node": {"node_id": self.node_id, "name": self.name, "url": self.url},
            "public_key": b64u(self.identity.public.public_key),
            # After a key rotation the key no longer hashes to the node ID: the chain shows it is ours.
            "key_chain": await self.key_chain() if self.identity.rotated else [],
        }
        self._provisional[inviter_id] = key
        try:
            answer = await self.client.post(invite["u"], "/federation/v1/join", body)
        except PrivNetworkError:
            self._provisional.pop(inviter_id, None)
            raise
        if not isinstance(answer, dict) or not isinstance(answer.get("events"), list):
            self._provisional.pop(inviter_id, None)
            raise InvalidInput(f"{invite['u']} answered the join with garbage")
        try:
            events = [RosterEvent.from_json(e) for e in answer["events"]]
            added = await self.apply_roster_events(events, inviter_id)
        finally:
            self._provisional.pop(inviter_id, None)
        if not self.is_member(inviter_id):
            raise InvalidInput("the inviter's answer did not include its own roster entry")
        await self._announce(inviter_id, [e for e in events if e.subject == self.node_id])
        await self._notify()
        return {"inviter": {"node_id": inviter_id, "name": doc.get("name"), "url": invite["u"]}, "members_added": added}

    async def _announce(self, inviter_id: str, events: list[RosterEvent]) -> None:
        """Tell every other member about this node now, rather than at their next poll of the inviter."""
        body = {"events": [e.to_json() for e in events]}

        async def tell(peer: Peer) -> None:
            try:
                await self.client.post(peer.url, "/federation/v1/roster", body)
            except PrivNetworkError as exc:
                log.info("could not announce this node to %s: %s (it will learn via sync)", peer.name, exc.message)

        await asyncio.gather(*(tell(p) for p in self._peers.values() if p.node_id != inviter_id))

    async def key_chain(self) -> list[dict[str, Any]]:
        """How this node's current key follows from its node ID: its first self-introduction, then rotations."""
        chain: list[dict[str, Any]] = []
        for event in await self.roster():
            if event.subject != self.node_id or event.signer != self.node_id:
                continue
            if event.type == "rotate" or (event.type == "add" and not chain):
                chain.append(event.to_json())
        return chain

    async def rotate_key(self, key_path: Path) -> RosterEvent:
        """Replace the signing key; announce it with a rotate event signed by the old key."""
        new_key = Ed25519PrivateKey.generate()
        new_public = new_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        event = self._sign(
            RosterEvent(
                id=secrets.token_hex(16),
                type="rotate",
                subject=self.node_id,
                name=self.name,
                url=self.url,
                public_key=b64u(new_public),
                signer=self.node_id,
                at=time.time(),
            )
        )
        old_pem = self.identity.pem()
        await asyncio.get_running_loop().run_in_executor(None, _write_key, key_path, new_key, self.node_id)
        self.identity.rotate(new_key)
        try:
            await self._store.add_roster_event(_event_row(event), None)
        except Exception:
            await asyncio.get_running_loop().run_in_executor(None, _restore_key, key_path, old_pem)
            raise
        log.info("signing key rotated; peers learn the new key from the rotate event")
        await self._announce("", [event])
        await self._notify()
        return event

    async def remove_member(self, node_id: str) -> RosterEvent:
        node_id = normalize_node_id(node_id)
        if node_id == self.node_id:
            raise InvalidInput("a node cannot remove itself")
        rows = {r["node_id"]: r for r in await self._store.list_members()}
        row = rows.get(node_id)
        if row is None or not row["active"]:
            raise NotFound(f"{node_id} is not a member")
        event = self._sign(
            RosterEvent(
                id=secrets.token_hex(16),
                type="remove",
                subject=node_id,
                name=row["name"],
                url=row["url"],
                public_key=row["public_key"],
                signer=self.node_id,
                at=max(time.time(), row["event_at"] + 0.001),
            )
        )
        await self.apply_roster_events([event], self.node_id)
        await self._notify()
        return event


def _event_row(event: RosterEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "subject": event.subject,
        "type": event.type,
        "signer": event.signer,
        "at": event.at,
        "body": json.dumps({k: v for k, v in event.to_json().items() if k != "sig"}, sort_keys=True),
        "sig": event.sig,
    }


def _row_event(row: dict[str, Any]) -> RosterEvent:
    return RosterEvent(**json.loads(row["body"]), sig=row["sig"])


def _write_key(key_path: Path, key: Ed25519PrivateKey, node_id: str) -> None:
    """Replace the key file atomically and keep the node ID beside it (it no longer follows from the key)."""
    id_file = key_path.parent / NODE_ID_FILE
    if not id_file.exists():
        _atomic_private_write(id_file, (node_id + "\n").encode())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _atomic_private_write(key_path, pem)


def _restore_key(key_path: Path, pem: bytes) -> None:
    _atomic_private_write(key_path, pem)


def _atomic_private_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def verify_key_chain(node_id: str, public_key: bytes, chain: Any) -> bool:
    """Check that ``public_key`` is ``node_id``'s current key: first key hashes to the ID, each rotation signed."""
    if not isinstance(chain, list) or not chain:
        return node_id_from_public_key(public_key) == node_id
    try:
        events = [RosterEvent.from_json(e) for e in chain[:100]]
        first = events[0]
        current = b64u_decode(first.public_key)
        if first.type != "add" or first.subject != node_id or first.signer != node_id:
            return False
        if node_id_from_public_key(current) != node_id:
            return False
        # Every event is signed by the key before it: the first (the node introducing itself) by its own.
        for event in events:
            if event is not first and (event.type != "rotate" or event.subject != node_id):
                return False
            if not PublicIdentity.from_public_bytes(current).verify(b64u_decode(event.sig), event.signing_bytes()):
                return False
            if event is not first:
                current = b64u_decode(event.public_key)
    except (InvalidInput, ValueError):
        return False
    return current == public_key
