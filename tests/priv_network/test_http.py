"""The one error mapper and the auth middleware, on a tiny app built from the project's middlewares."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from priv_network import errors
from priv_network.errors import PrivNetworkError
from priv_network.http import auth_middleware, error_middleware, principal_of, security_headers_middleware
from priv_network.interfaces import Principal
from priv_network.keys import AUTHENTICATOR

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

GOOD_TOKEN = "pn_good"
SECRET = "db password is hunter2 at /srv/secret/path"


class FakeAuthenticator:
    async def authenticate(self, token: str) -> Principal | None:
        return Principal(name="owner", admin=True, token_id="t1") if token == GOOD_TOKEN else None

    async def create_session(self, principal: Principal) -> str:
        return GOOD_TOKEN

    async def end_session(self, token: str) -> None:
        return None


def all_errors() -> Iterator[type[PrivNetworkError]]:
    todo: list[type[PrivNetworkError]] = [PrivNetworkError]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


ERRORS = sorted({cls for cls in all_errors() if cls.__module__ == errors.__name__}, key=lambda c: c.__name__)


def build_app() -> web.Application:
    """The error, security-header and auth middlewares in the composition root's order; handlers that misbehave."""
    app = web.Application(middlewares=[error_middleware, security_headers_middleware, auth_middleware])
    app[AUTHENTICATOR] = FakeAuthenticator()

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(SECRET)

    async def key_error(request: web.Request) -> web.Response:
        return web.json_response({}[request.match_info["name"]])

    async def raise_named(request: web.Request) -> web.Response:
        cls = {c.__name__: c for c in ERRORS}[request.match_info["name"]]
        raise cls("something went\nwrong   here")

    async def http_exception(request: web.Request) -> web.Response:
        raise web.HTTPBadRequest(text="the widget is bent")

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"who": principal_of(request).name})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    for prefix in ("/api/v1", "/federation/v1", "/page"):
        app.router.add_get(f"{prefix}/boom", boom)
        app.router.add_get(f"{prefix}/key/{{name}}", key_error)
        app.router.add_get(f"{prefix}/raise/{{name}}", raise_named)
    app.router.add_get("/api/v1/bent", http_exception)
    app.router.add_get("/api/v1/ok", ok)
    app.router.add_get("/healthz", healthz)
    return app


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(build_app())


AUTH = {"Authorization": f"Bearer {GOOD_TOKEN}"}


async def test_unknown_exception_is_a_generic_500_and_the_traceback_only_in_the_log(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="priv_network.http"):
        async with client.get("/api/v1/boom", headers={**AUTH, "X-Request-Id": "req-42"}) as resp:
            assert resp.status == 500
            assert resp.content_type == "application/json"
            text = await resp.text()
            data = await resp.json()
    assert data == {"error": {"code": "internal", "message": data["error"]["message"]}}
    for leak in (SECRET, "hunter2", "RuntimeError", "Traceback", 'File "', "test_http.py"):
        assert leak not in text
    assert "log" in data["error"]["message"]
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "req-42" in record.getMessage() and "/api/v1/boom" in record.getMessage()
    assert SECRET in caplog.text and "Traceback" in caplog.text


async def test_unknown_exception_on_a_page_is_a_generic_html_500(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="priv_network.http"):
        async with client.get("/page/key/missing", headers=AUTH) as resp:
            assert resp.status == 500
            assert resp.content_type == "text/html"
            text = await resp.text()
    assert "KeyError" not in text and "missing" not in text and "Traceback" not in text
    assert "500" in text
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
async def test_every_error_maps_to_its_status_and_code(
    client: Client, cls: type[PrivNetworkError], caplog: pytest.LogCaptureFixture
) -> None:
    for prefix in ("/api/v1", "/federation/v1"):
        with caplog.at_level(logging.WARNING, logger="priv_network.http"):
            async with client.get(f"{prefix}/raise/{cls.__name__}", headers=AUTH) as resp:
                assert resp.status == cls.status
                assert resp.content_type == "application/json"
                data = await resp.json()
        assert data == {"error": {"code": cls.code, "message": "something went wrong here"}}
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # Server-side failures are logged (without a traceback: they are expected), client errors are not.
    logged = [r for r in caplog.records if cls.__name__ in r.getMessage() or "something went" in r.getMessage()]
    assert bool(logged) == (cls.status >= 500)
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("cls", [errors.NotFound, errors.InvalidInput, errors.Forbidden], ids=lambda c: c.__name__)
async def test_errors_on_pages_are_html_unless_json_is_asked_for(client: Client, cls: type[PrivNetworkError]) -> None:
    async with client.get(f"/page/raise/{cls.__name__}", headers=AUTH) as resp:
        assert resp.status == cls.status
        assert resp.content_type == "text/html"
        text = await resp.text()
    assert "something went wrong here" in text
    assert text.lstrip().lower().startswith("<!doctype html>")
    async with client.get(f"/page/raise/{cls.__name__}", headers={**AUTH, "Accept": "application/json"}) as resp:
        assert resp.status == cls.status
        assert (await resp.json())["error"]["code"] == cls.code


async def test_aiohttp_http_exceptions_are_mapped_too(client: Client) -> None:
    async with client.get("/api/v1/bent", headers=AUTH) as resp:
        assert resp.status == 400
        data = await resp.json()
    assert data["error"]["message"] == "the widget is bent"
    async with client.get("/api/v1/no-such-route", headers=AUTH) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with client.get("/no-such-page") as resp:
        assert resp.status == 404
        assert resp.content_type == "text/html"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_405_with_allow(client: Client, method: str) -> None:
    async with client.request(method, "/api/v1/ok", headers=AUTH) as resp:
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
        assert "Traceback" not in await resp.text()
    async with client.request(method, "/healthz") as resp:
        assert resp.status == 405


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer pn_wrong"}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer"}],
)
async def test_api_needs_a_valid_bearer_token(client: Client, headers: dict[str, str]) -> None:
    async with client.get("/api/v1/ok", headers=headers) as resp:
        assert resp.status == 401
        data = await resp.json()
    assert data["error"]["code"] == "unauthorized"
    async with client.get("/api/v1/ok", headers=AUTH) as resp:
        assert resp.status == 200
        assert await resp.json() == {"who": "owner"}
    async with client.get("/api/v1/ok", cookies={"pn_session": GOOD_TOKEN}) as resp:
        assert resp.status == 200


async def test_public_paths_need_no_credentials(client: Client) -> None:
    async with client.get("/healthz") as resp:
        assert resp.status == 200
        body: Any = await resp.json()
    assert body == {"status": "ok"}
