"""Users: argon2id password hashes, first-run owner creation, lockout, login history.

After 5 failed logins within 60 s for the same account from the same
address, that pair is locked out for the rest of the minute (a correct
password does not help meanwhile), which stops online guessing without
letting a stranger lock the owner out from everywhere.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from node.service import ContentManager, check_visibility
from node.store import CmaStore
from priv_network.errors import Conflict, Forbidden, InvalidInput, NotFound, PrivNetworkError, Unauthorized
from priv_network.interfaces import Principal

USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
LOCKOUT_ATTEMPTS = 5
LOCKOUT_WINDOW = 60.0
THEMES = ("auto", "light", "dark")


class TooManyAttempts(PrivNetworkError):
    status = 429
    code = "too_many_attempts"


def check_user_name(name: str) -> str:
    if not USER_RE.match(name or ""):
        raise InvalidInput("a user name is 1-32 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


class Users:
    def __init__(self, *, store: CmaStore, cma: ContentManager) -> None:
        self._store = store
        self._cma = cma
        self._hasher = PasswordHasher()
        self._failures: dict[tuple[str, str], deque[float]] = {}

    async def _hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._hasher.hash, password)

    async def _verify(self, stored: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return bool(self._hasher.verify(stored, password))
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.get_running_loop().run_in_executor(None, verify)

    async def has_users(self) -> bool:
        return await self._store.count_users() > 0

    async def create(self, name: str, password: str, *, admin: bool, first_run: bool = False) -> Principal:
        name = check_user_name(name)
        values = {
            "name": name,
            "password_hash": await self._hash(check_password(password)),
            "admin": admin,
            "prefs": "{}",
            "created_at": time.time(),
        }
        if not await self._store.insert_user(values, only_if_none=first_run):
            if first_run:
                raise Conflict("this node already has an owner; log in instead")
            raise Conflict(f"there is already a user named {name!r}")
        return Principal(name=name, admin=admin, token_id="")

    async def login(self, name: str, password: str, address: str) -> Principal:
        key = (name, address)
        now = time.time()
        recent = self._failures.setdefault(key, deque())
        while recent and now - recent[0] > LOCKOUT_WINDOW:
            recent.popleft()
        if len(recent) >= LOCKOUT_ATTEMPTS:
            wait = int(LOCKOUT_WINDOW - (now - recent[0])) + 1
            await self._store.record_login(name, address, False, now)
            raise TooManyAttempts(f"too many failed logins; try again in {wait} s")
        row = await self._store.get_user(name) if USER_RE.match(name or "") else None
        ok = row is not None and await self._verify(row["password_hash"], password or "")
        if row is not None:
            await self._store.record_login(name, address, ok, now)
        if not ok or row is None:
            recent.append(now)
            raise Unauthorized("wrong user name or password")
        self._failures.pop(key, None)
        return Principal(name=name, admin=bool(row["admin"]), token_id="")

    async def prefs(self, name: str) -> dict[str, Any]:
        row = await self._store.get_user(name)
        prefs: dict[str, Any] = {"theme": "auto", "default_visibility": "private"}
        if row is not None:
            prefs.update(json.loads(row["prefs"] or "{}"))
        return prefs

    async def set_prefs(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        if await self._store.get_user(name) is None:
            raise NotFound("only web app users have preferences")
        prefs = await self.prefs(name)
        if "theme" in changes:
            if changes["theme"] not in THEMES:
                raise InvalidInput(f"theme must be one of {', '.join(THEMES)}")
            prefs["theme"] = changes["theme"]
        if "default_visibility" in changes:
            prefs["default_visibility"] = check_visibility(str(changes["default_visibility"]))
        await self._store.update_user(name, {"prefs": json.dumps(prefs)})
        return prefs

    async def create_token(self, name: str, *, admin: bool = False) -> dict[str, Any]:
        """An API token that acts as user ``name``, with that user's rights (and no more).

        ``admin`` may only confirm the user's rights: asking owner rights for a user who is
        not an owner is refused rather than quietly granted or dropped.
        """
        row = await self._store.get_user(check_user_name(name))
        if row is None:
            raise NotFound(f"no user named {name!r}; create it first: `priv-network user add {name} --password-stdin`")
        owner = bool(row["admin"])
        if admin and not owner:
            raise InvalidInput(
                f"{name} is not an owner (admin), so a token acting as {name} cannot have owner rights; "
                "leave out --admin"
            )
        token_id, token = await self._cma.create_token_with_id(name, admin=owner)
        return {"id": token_id, "token": token, "name": name, "user": name, "admin": owner}

    async def create_label_token(self, label: str, *, admin: bool) -> dict[str, Any]:
        """A token for principal ``label``, which need not be a user (scripts, tests, older clients)."""
        token_id, token = await self._cma.create_token_with_id(label, admin=admin)
        return {"id": token_id, "token": token, "name": label, "user": label, "admin": admin}

    async def list_tokens(self) -> list[dict[str, Any]]:
        return await self._cma.list_tokens()

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        return await self._cma.revoke_token(token_id)

    async def history(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        return await self._store.login_history_for(name, limit)

    async def list(self) -> list[dict[str, Any]]:
        return await self._store.list_users()

    async def require_owner(self, principal: Principal) -> None:
        if not principal.admin:
            raise Forbidden("this needs an owner (admin) account")
