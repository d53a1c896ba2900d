"""HTTP plumbing shared by every part: the error mapper, authentication, helpers.

One error mapper: a ``PrivNetworkError`` becomes its status with a JSON body
(``{"error": {"code", "message"}}``) under ``/api`` and ``/federation``, or a
short HTML page elsewhere. Anything else is logged with its traceback and
answered with a generic 500 that reveals nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from priv_network.errors import BadRequest, Forbidden, InvalidInput, PrivNetworkError, Unauthorized
from priv_network.interfaces import Principal
from priv_network.keys import AUTHENTICATOR, FEDERATION_GATE, METRICS, PEER, PRINCIPAL, REQUEST_ID, SESSION_COOKIE
from priv_network.observability import REQUEST_ID as REQUEST_ID_VAR

log = logging.getLogger("priv_network.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ResponseT = TypeVar("ResponseT", bound=web.StreamResponse)

# Federation endpoints anyone may call: the public identity document, and the
# join request (signed too, but with the joiner's own key, checked by its handler).
# Roster announcements need no request signature either: every event in them
# is signed by a member and checked on its own.
UNSIGNED_FEDERATION = ("/federation/v1/node", "/federation/v1/join", "/federation/v1/roster")
_KEYID = re.compile(r'keyid="([^"]{1,64})"')
MAX_JSON_BODY = 1024 * 1024


def _is_machine_path(path: str) -> bool:
    return path.startswith(("/api/", "/federation/"))


def error_response(request: web.Request, status: int, code: str, message: str) -> web.Response:
    if _is_machine_path(request.path) or "application/json" in request.headers.get("Accept", ""):
        body = {"error": {"code": code, "message": message}}
        return add_security_headers(web.json_response(body, status=status))
    page = (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{status} · priv_network</title>"
        f"<link rel=stylesheet href=/static/style.css><main class=error><h1>{status}</h1><p>{html.escape(message)}</p>"
        "<p><a href=/>Back to the start page</a></p></main></html>"
    )
    # Built outside security_headers_middleware (which an exception skips), so the headers are added here.
    return add_security_headers(web.Response(text=page, status=status, content_type="text/html"))


def ended_early(request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
    """A response whose client left while the handler was sending it (a seek, a closed player).

    Raised out of a handler, the ``ConnectionError`` would be logged by aiohttp as an
    error with a traceback. The handler returns this instead: the connection is closed
    (its body is short, so it cannot carry another response) and aiohttp finishes the
    response quietly.
    """
    response.force_close()
    if request.transport is not None:
        request.transport.close()
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = "".join(c for c in request.headers.get("X-Request-Id", "")[:64] if c.isalnum() or c in "-_")
    # Ids only correlate log lines: no secrecy needed, so no getrandom syscall per request.
    request[REQUEST_ID] = request_id or f"{random.getrandbits(48):012x}"
    REQUEST_ID_VAR.set(request[REQUEST_ID])
    started = time.monotonic()
    response = await _mapped(request, handler)
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.inc("priv_network_http_requests_total", method=request.method, status=f"{response.status // 100}xx")
    log.debug(
        "%s %s -> %d in %.1f ms", request.method, request.path, response.status, (time.monotonic() - started) * 1000
    )
    return response


async def _mapped(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PrivNetworkError as exc:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return error_response(request, exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.empty_body is False:
            message = exc.reason if exc.text in (None, f"{exc.status}: {exc.reason}") else (exc.text or exc.reason)
            resp = error_response(request, exc.status, exc.reason.lower().replace(" ", "_"), message)
            for name in ("Allow", "Location"):
                if name in exc.headers:
                    resp.headers[name] = exc.headers[name]
            return resp
        raise
    except (ConnectionError, TimeoutError):  # the client left; not the node's error
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request[REQUEST_ID])
        return error_response(request, 500, "internal", "internal error; the node's log has the details")


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer TOKEN'")
    return token.strip()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve who is calling (Bearer token or session cookie) before any handler runs."""
    authenticator = request.app[AUTHENTICATOR]
    token = bearer_token(request)
    principal: Principal | None = None
    if token is not None:
        principal = await authenticator.authenticate(token)
        if principal is None:
            raise Unauthorized("invalid or expired token")
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            principal = await authenticator.authenticate(cookie)
            if principal is not None and request.method not in SAFE_METHODS:
                await _check_csrf(request, cookie)
    if principal is not None:
        request[PRINCIPAL] = principal
    elif request.path.startswith("/api/"):
        raise Unauthorized("authentication required: send 'Authorization: Bearer TOKEN' or log in")
    return await handler(request)


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def csrf_token(session: str) -> str:
    """The CSRF token of a session: derived from the (HttpOnly) cookie, so another site cannot know it."""
    return hashlib.sha256(f"priv-network csrf|{session}".encode()).hexdigest()[:32]


async def _check_csrf(request: web.Request, session: str) -> None:
    """A state-changing request carried by the session cookie must prove it came from our own pages."""
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if sent is None or not hmac.compare_digest(sent, csrf_token(session)):
        raise Forbidden("missing or wrong CSRF token; reload the page and try again")


def principal_of(request: web.Request) -> Principal:
    principal = request.get(PRINCIPAL)
    if principal is None:
        raise Unauthorized("authentication required")
    return principal


def require_admin(request: web.Request) -> Principal:
    principal = principal_of(request)
    if not principal.admin:
        raise Forbidden("this needs an owner (admin) account")
    return principal


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (read once and cached, so signatures can cover the same bytes)."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise BadRequest("request body too large")
    raw = await request.read()
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    return data


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be between {lo} and {hi}")
    return value


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return add_security_headers(await handler(request))


def add_security_headers(response: ResponseT) -> ResponseT:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.content_type == "text/html":
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; media-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
    return response


@web.middleware
async def federation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Verify every signed federation request before any handler runs.

    Handlers get the authenticated peer's node ID as ``request[PEER]``; they
    never look at signature headers themselves.
    """
    if request.path.startswith("/federation/") and request.path not in UNSIGNED_FEDERATION:
        gate = request.app[FEDERATION_GATE]
        body = await request.read()
        try:
            peer = gate.verify(request.method, gate.own_url + request.raw_path, request.headers, body)
        except Unauthorized as exc:
            claimed = _KEYID.search(request.headers.get("Signature-Input", ""))
            log.warning(
                "refused %s %s from %s (%s): %s",
                request.method,
                request.path,
                claimed.group(1) if claimed else "an unsigned sender",
                request.remote,
                exc.message,
            )
            raise
        request[PEER] = peer
        await gate.peer_seen(peer)
    return await handler(request)


def peer_of(request: web.Request) -> str:
    peer = request.get(PEER)
    if peer is None:
        raise Unauthorized("request is not signed")
    return peer


# Media types a browser may render inline from our origin. Anything else (HTML,
# SVG, scripts, unknown) is sent as a download, so a file in the store can
# never run as a page of the node.
INLINE_TYPES = ("video/", "audio/", "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "text/plain")


def content_headers(mime: str) -> dict[str, str]:
    """Headers for serving stored content: safe type, no sniffing, sandboxed if opened as a page."""
    inline = mime.startswith(INLINE_TYPES)
    headers = {
        "Content-Type": mime if inline else "application/octet-stream",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'; media-src 'self'; img-src 'self'",
    }
    if not inline:
        headers["Content-Disposition"] = "attachment"
    return headers
