"""Logging with request IDs, and metrics in the Prometheus text format.

Every log line is one event: time, level, logger, ``req=`` (the request it
belongs to, when it does) and the message; federation lines name the peer.
Tokens and secrets are never put in log messages.

Metrics are counters kept in this process (requests by method and status
class, sync rounds, failed polls) plus gauges read when ``/metrics`` is
scraped (items, queue sizes, bytes per peer) from callbacks the composition
root registers.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Awaitable, Callable

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
FORMAT = "%(asctime)s %(levelname)s %(name)s req=%(request_id)s %(message)s"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("aiohttp.access", "apscheduler", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


Gauges = Callable[[], Awaitable[list[tuple[str, dict[str, str], float]]]]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


class Metrics:
    HELP = {
        "priv_network_http_requests_total": "HTTP requests answered, by method and status class.",
        "priv_network_sync_rounds_total": "Sync rounds run.",
        "priv_network_sync_failures_total": "Polls of a peer that failed (each one backs the peer off).",
    }

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: list[Gauges] = []

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0) + n

    def add_gauges(self, source: Gauges) -> None:
        self._gauges.append(source)

    async def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()
        for (name, pairs), count in sorted(self.counters.items()):
            if name not in seen:
                seen.add(name)
                lines.append(f"# HELP {name} {self.HELP.get(name, name)}")
                lines.append(f"# TYPE {name} counter")
            lines.append(f"{name}{_labels(dict(pairs))} {_number(count)}")
        for source in self._gauges:
            for gauge, labels, value in await source():
                if gauge not in seen:
                    seen.add(gauge)
                    lines.append(f"# TYPE {gauge} gauge")
                lines.append(f"{gauge}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"
