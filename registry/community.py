"""Comments, views and watch history, as a member's node handles them.

An item's owner is authoritative for its comments and view totals. For a
peer's item, this node writes the comment or view into a durable outbox
(a table) and delivers it to the owner with a signed request; the message
ID is the idempotency key, so retries after a timeout or a restart are
stored once. Until the owner has it (and this node has synced it back),
the author sees the comment marked pending. For this node's own items
the CMA stores them directly. Threads are read from the registry, filled
from every owner's feed, so all nodes show the same thread in the same
order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from priv_network.errors import Forbidden, InvalidInput, NotFound, PrivNetworkError
from priv_network.interfaces import LocalCommunity, PeerDirectory
from priv_network.peerclient import PeerClient
from priv_network.wire import COMMENT_ID_RE, MAX_COMMENT_DEPTH, clean_comment_body
from registry.store import RegistryStore

log = logging.getLogger(__name__)

# An inbox request: at most the owner's limit of messages (node/api.py, MAX_INBOX), and well
# under its 1 MiB request limit (a comment may be 20,000 characters, up to 12 bytes each in JSON).
BATCH = 1000
BATCH_BYTES = 512 * 1024
MESSAGE_OVERHEAD = 80  # {"id": ..., "kind": ..., "payload": ...} around the stored payload
PASS_LIMIT = 10_000  # due messages read per pass
MAX_DELIVERY_PASSES = 50


class CommunityService:
    def __init__(
        self,
        *,
        store: RegistryStore,
        local: LocalCommunity,
        directory: PeerDirectory,
        node_id: str,
        node_name: str,
        view_threshold: float,
        view_window: float,
        max_length: int,
        refresh: Callable[[str], Awaitable[None]],
    ) -> None:
        self._store = store
        self._local = local
        self._directory = directory
        self.node_id = node_id
        self.node_name = node_name
        self.view_threshold = view_threshold
        self.view_window = view_window
        self.max_length = max_length
        self._refresh = refresh
        self._client: PeerClient | None = None
        self._lock = asyncio.Lock()
        self._again = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def set_client(self, client: PeerClient) -> None:
        self._client = client

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _owner(self, item_id: str) -> tuple[str, dict[str, Any]]:
        hit = await self._store.entry_by_item(item_id)
        if hit is None:
            raise NotFound(f"no item {item_id}")
        return str(hit.row["node_id"]), hit.row

    # -- comments -----------------------------------------------------------
    async def thread(self, item_id: str, user: str) -> list[dict[str, Any]]:
        """The item's comments in thread order (replies under their parent), pending ones included."""
        owner, _row = await self._owner(item_id)
        members = {p.node_id for p in await self._directory.active_peers()} | {self.node_id}
        # The outbox first: a delivery finishing in between has refreshed the registry
        # before it leaves the outbox (see _send), so no comment falls between the two.
        queued = await self._store.outbox_all()
        comments = {r["comment_id"]: self._comment_json(r, members) for r in await self._store.thread(owner, item_id)}
        for message in queued:
            if message["node_id"] != owner:
                continue
            payload = json.loads(message["payload"])
            state = "rejected" if message["attempts"] < 0 else "pending"
            if message["kind"] == "comment" and payload.get("item") == item_id and message["id"] not in comments:
                comments[message["id"]] = {
                    "id": message["id"],
                    "item": item_id,
                    "parent": payload.get("parent"),
                    "depth": payload.get("depth", 0),
                    "author": f"{payload['author']}@{self.node_name}",
                    "user": payload["author"],
                    "author_node": self.node_id,
                    "former_member": False,
                    "body": payload["body"],
                    "created_at": message["created_at"],
                    "edited_at": None,
                    "deleted": False,
                    "state": state,
                    "error": message["last_error"] if state == "rejected" else None,
                }
            elif message["kind"] in ("comment_edit", "comment_delete") and payload.get("comment") in comments:
                shown = comments[payload["comment"]]
                shown["state"] = state
                if message["kind"] == "comment_edit":
                    shown["body"] = payload["body"]
                else:
                    shown["deleted"], shown["body"] = True, ""
        return _thread_order(list(comments.values()))

    def _comment_json(self, row: dict[str, Any], members: set[str]) -> dict[str, Any]:
        return {
            "id": row["comment_id"],
            "item": row["item_id"],
            "parent": row["parent_id"],
            "depth": row["depth"],
            "author": f"{row['author']}@{row['author_node_name']}",
            "user": row["author"],
            "author_node": row["author_node"],
            "former_member": row["author_node"] not in members,
            "body": "" if row["deleted"] else row["body"],
            "created_at": row["created_at"],
            "edited_at": row["edited_at"],
            "deleted": bool(row["deleted"]),
            "state": "published",
            "error": None,
        }

    async def post(self, user: str, item_id: str, body: Any, parent_id: str | None) -> dict[str, Any]:
        owner, _row = await self._owner(item_id)
        text = clean_comment_body(body, self.max_length)
        comment_id = secrets.token_hex(16)
        if owner == self.node_id:
            await self._local.add(
                comment_id=comment_id,
                item_id=item_id,
                parent_id=parent_id,
                author=user,
                author_node=self.node_id,
                author_node_name=self.node_name,
                body=text,
                viewer=None,
            )
        else:
            depth = 0
            if parent_id is not None:
                parent = await self._store.comment(parent_id) if COMMENT_ID_RE.match(parent_id) else None
                if parent is None or parent["item_id"] != item_id or parent["node_id"] != owner:
                    raise InvalidInput("a reply must answer a comment on the same item")
                depth = int(parent["depth"]) + 1
                if depth > MAX_COMMENT_DEPTH:
                    raise InvalidInput(f"replies nest at most {MAX_COMMENT_DEPTH} deep; answer a comment higher up")
            payload = {
                "item": item_id,
                "parent": parent_id,
                "depth": depth,
                "author": user,
                "body": text,
                "created_at": time.time(),
            }
            await self._enqueue(comment_id, owner, "comment", payload)
        return next(c for c in await self.thread(item_id, user) if c["id"] == comment_id)

    async def edit(self, user: str, comment_id: str, body: Any) -> dict[str, Any]:
        row = await self._mine(user, comment_id)
        if row["deleted"]:
            # The owner refuses it too; say so now rather than show a rejected edit forever.
            raise InvalidInput("a deleted comment cannot be edited")
        text = clean_comment_body(body, self.max_length)
        if row["node_id"] == self.node_id:
            await self._local.edit(comment_id, text, author=user, author_node=self.node_id)
        else:
            payload = {"comment": comment_id, "author": user, "body": text}
            await self._enqueue(secrets.token_hex(16), row["node_id"], "comment_edit", payload)
        return next(c for c in await self.thread(row["item_id"], user) if c["id"] == comment_id)

    async def delete(self, user: str, comment_id: str, *, admin: bool) -> None:
        row = await self._store.comment(comment_id) if COMMENT_ID_RE.match(comment_id) else None
        if row is None:
            raise NotFound(f"no comment {comment_id[:40]}")
        if row["node_id"] == self.node_id and admin:
            # The owner may delete any comment on its own items.
            await self._local.delete(comment_id, author=None, author_node=None, owner=True)
            return
        await self._mine(user, comment_id)
        if row["node_id"] == self.node_id:
            await self._local.delete(comment_id, author=user, author_node=self.node_id, owner=False)
        else:
            payload = {"comment": comment_id, "author": user}
            await self._enqueue(secrets.token_hex(16), row["node_id"], "comment_delete", payload)

    async def _mine(self, user: str, comment_id: str) -> dict[str, Any]:
        row = await self._store.comment(comment_id) if COMMENT_ID_RE.match(comment_id) else None
        if row is None:
            raise NotFound(f"no comment {comment_id[:40]}")
        if row["author_node"] != self.node_id or row["author"] != user:
            raise Forbidden("only its author can change a comment")
        return row

    # -- views and history --------------------------------------------------
    async def progress(
        self, user: str, item_id: str, position: float, *, watched: bool | None = None
    ) -> dict[str, Any]:
        """Record how far ``user`` got; count a view once past the threshold (once per window)."""
        owner, row = await self._owner(item_id)
        duration = row["duration"]
        if position < 0 or (duration and position > duration + 5):
            raise InvalidInput("position is outside the item")
        now = time.time()
        previous = await self._store.history_get(user, owner, item_id) or {}
        done = bool(watched) if watched is not None else bool(duration and position >= 0.9 * duration)
        threshold = min(self.view_threshold, duration / 2) if duration else self.view_threshold
        counted_at = previous.get("view_counted_at")
        count = position >= threshold and (counted_at is None or now - counted_at >= self.view_window)
        await self._store.history_put(
            {
                "user": user,
                "node_id": owner,
                "item_id": item_id,
                "position": position,
                "duration": duration,
                "watched": done or (bool(previous.get("watched")) and watched is not False),
                "updated_at": now,
                "view_counted_at": now if count else counted_at,
            }
        )
        if count:
            receipt = secrets.token_hex(16)
            if owner == self.node_id:
                await self._local.add_views([(receipt, item_id, now)], viewer=None)
            else:
                await self._enqueue(receipt, owner, "view", {"item": item_id, "at": now})
        return {"item": item_id, "position": position, "watched": done, "view_counted": count}

    async def history(self, user: str, limit: int = 50) -> list[dict[str, Any]]:
        out = []
        for row in await self._store.history_for(user, limit):
            out.append(
                {
                    "id": row["item_id"],
                    "node": row["node_id"],
                    "position": row["position"],
                    "duration": row["duration"],
                    "watched": bool(row["watched"]),
                    "updated_at": row["updated_at"],
                }
            )
        return out

    # -- the outbox -----------------------------------------------------------
    async def _enqueue(self, message_id: str, node_id: str, kind: str, payload: dict[str, Any]) -> None:
        now = time.time()
        await self._store.enqueue(
            {
                "id": message_id,
                "node_id": node_id,
                "kind": kind,
                "payload": json.dumps(payload),
                "created_at": now,
                "attempts": 0,
                "next_attempt_at": now,
            }
        )
        self.deliver_soon(node_id)

    def deliver_soon(self, node_id: str | None = None) -> None:
        if self._client is None:
            return
        task = asyncio.create_task(self.deliver(node_id), name="deliver outbox")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def owner_back(self, node_id: str) -> None:
        await self._store.outbox_reschedule(node_id)
        self.deliver_soon(node_id)

    @staticmethod
    def _backoff(attempts: int) -> float:
        return min(3600.0, 2.0 * 2 ** min(attempts, 20)) * (0.5 + random.random() / 2)

    async def deliver(self, node_id: str | None = None) -> int:
        """Deliver due messages, batched per owner, until nothing is due; returns how many were accepted.

        One delivery runs at a time. A call while one runs (a sync round ending, a
        new comment) does not wait for it: the running one makes another pass, so
        a sync round is never held up by a long delivery.
        """
        assert self._client is not None
        if self._lock.locked():
            self._again = True
            return 0
        delivered = 0
        async with self._lock:
            for _ in range(MAX_DELIVERY_PASSES):  # until nothing is due (bounded, so one run ends)
                self._again = False
                sent = await self._deliver_pass(node_id)
                delivered += sent
                if self._again:
                    node_id = None  # asked for by someone else: every owner
                elif not sent:
                    break
        return delivered

    async def _deliver_pass(self, node_id: str | None) -> int:
        """One pass over what is due now: every owner at once, each owner's messages in order."""
        due = await self._store.outbox_due(time.time(), node_id, limit=PASS_LIMIT)
        if not due:
            return 0
        peers = {p.node_id: p for p in await self._directory.active_peers()}
        by_node: dict[str, list[dict[str, Any]]] = {}
        for message in due:
            by_node.setdefault(message["node_id"], []).append(message)
        sends = []
        for owner, messages in by_node.items():
            peer = peers.get(owner)
            if peer is None:
                for m in messages:
                    await self._store.outbox_rejected(m["id"], "the item's owner is no longer a member")
                continue
            sends.append(self._deliver_to(peer.url, owner, messages))
        done = await asyncio.gather(*sends, return_exceptions=True)  # every owner's run ends first
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        return sum(n for n in done if isinstance(n, int))

    async def _deliver_to(self, url: str, owner: str, messages: list[dict[str, Any]]) -> int:
        """Send one owner its due messages, oldest first, in batches; stop at the first failure.

        Stopping, and holding back all of the owner's messages until one retry time,
        keeps the order (a later message never overtakes one that must be retried,
        so a reply never arrives before its comment) and spares an owner that is
        down or struggling. Accepted messages leave the outbox only after this node
        has read them back from the owner's feed, once for the whole run, so a
        reader never finds a comment in neither.
        """
        accepted: list[str] = []
        for start, end in _batches(messages):
            ok, failed = await self._send(url, owner, messages[start:end])
            accepted += ok
            if failed is not None:
                # Everything left for this owner (in this pass or not) is due again together, in order.
                log.info("delivery to %s failed: %s; will retry", owner, failed)
                until = time.time() + self._backoff(int(messages[start]["attempts"]))
                await self._store.outbox_hold(owner, failed, until)
                break
        if accepted:
            try:
                await self._refresh(owner)
            finally:
                await self._store.outbox_done(accepted)
        return len(accepted)

    async def _send(self, url: str, owner: str, batch: list[dict[str, Any]]) -> tuple[list[str], str | None]:
        """One inbox request; returns the IDs the owner accepted, and why it failed (None: it answered).

        Refusals are recorded here (final); a failed request is left to the caller to retry.
        """
        assert self._client is not None
        ids = [m["id"] for m in batch]
        body = {"messages": [{"id": m["id"], "kind": m["kind"], "payload": json.loads(m["payload"])} for m in batch]}
        try:
            answer = await self._client.post(url, "/federation/v1/inbox", body)
        except InvalidInput as exc:
            for message_id in ids:
                await self._store.outbox_rejected(message_id, exc.message)
            return [], None
        except PrivNetworkError as exc:
            return [], exc.message
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, dict):
            return [], "the owner answered without results"
        ok = [i for i in ids if results.get(i) == "ok"]
        for message_id in ids:
            verdict = results.get(message_id)
            if isinstance(verdict, str) and verdict.startswith("rejected"):
                log.info("owner %s refused message %s: %s", owner, message_id, verdict)
                await self._store.outbox_rejected(message_id, verdict.removeprefix("rejected: "))
        missing = [i for i in ids if i not in results]
        if missing:
            await self._store.outbox_retry(missing, "the owner did not answer for this message", self._backoff)
        return ok, None


def _batches(messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, end) of consecutive batches: at most BATCH messages and about BATCH_BYTES of payload each."""
    out: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, m in enumerate(messages):
        cost = len(m["payload"]) + MESSAGE_OVERHEAD
        if i > start and (i - start >= BATCH or size + cost > BATCH_BYTES):
            out.append((start, i))
            start, size = i, 0
        size += cost
    if start < len(messages):
        out.append((start, len(messages)))
    return out


def _thread_order(comments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Depth-first: each comment followed by its replies, siblings by time then ID."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {c["id"] for c in comments}
    for c in comments:
        parent = c["parent"] if c["parent"] in ids else None
        children.setdefault(parent, []).append(c)
    for group in children.values():
        group.sort(key=lambda c: (c["created_at"], c["id"]))
    out: list[dict[str, Any]] = []
    placed: set[str] = set()

    def walk(roots: list[dict[str, Any]]) -> None:
        # Iterative: parents come from another node's feed, so a chain may be deep.
        stack = list(reversed(roots))
        while stack:
            c = stack.pop()
            if c["id"] in placed:
                continue
            placed.add(c["id"])
            out.append(c)
            stack.extend(reversed(children.get(c["id"], [])))

    walk(children.get(None, []))
    # Comments whose parents loop never reach the top: show them there rather than lose them.
    walk(sorted((c for c in comments if c["id"] not in placed), key=lambda c: (c["created_at"], c["id"])))
    return out
