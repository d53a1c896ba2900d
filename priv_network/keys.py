"""Typed keys for everything stored on the app or a request, declared in one place."""

from __future__ import annotations

from aiohttp import web

from priv_network.config import Config
from priv_network.interfaces import Authenticator, FederationGate, Principal
from priv_network.observability import Metrics

CONFIG = web.AppKey("config", Config)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
FEDERATION_GATE = web.AppKey("federation_gate", FederationGate)
METRICS = web.AppKey("metrics", Metrics)
PRINCIPAL = web.RequestKey("principal", Principal)
PEER = web.RequestKey("peer", str)
REQUEST_ID = web.RequestKey("request_id", str)

SESSION_COOKIE = "pn_session"
