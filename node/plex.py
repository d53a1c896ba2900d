"""Import a Plex library through plexapi: movies and shows with their metadata.

plexapi is synchronous (requests): every call to it runs in a worker thread,
never on the event loop. A file is referenced in place when this node can
read it ([plex] mode = "reference", the default) or copied into the store
("copy"); either way it is hashed and probed like any other item. Running
the import again updates changed metadata and adds new items; files whose
size and modification time did not change are not read again.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from plexapi import exceptions as plex_errors
from plexapi.server import PlexServer

from node.service import ContentManager
from priv_network.errors import Forbidden, InvalidInput, NotFound, PrivNetworkError

log = logging.getLogger(__name__)

PLEX_TIMEOUT = 30


class PlexUnreachable(PrivNetworkError):
    status = 502
    code = "plex_unreachable"


@dataclass
class PlexEntry:
    path: str
    title: str
    metadata: dict[str, Any]


@dataclass
class PlexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "notes": self.notes,
        }


def _external_ids(video: Any) -> dict[str, str]:
    ids = {}
    for guid in getattr(video, "guids", None) or []:
        scheme, _, value = str(getattr(guid, "id", "")).partition("://")
        if scheme and value:
            ids[scheme] = value
    return ids


def _common(video: Any) -> dict[str, Any]:
    duration = getattr(video, "duration", None)
    return {
        "description": getattr(video, "summary", None),
        "year": getattr(video, "year", None),
        "genres": [g.tag for g in (getattr(video, "genres", None) or []) if getattr(g, "tag", None)],
        "duration": duration / 1000 if isinstance(duration, int | float) else None,
        "external_ids": _external_ids(video),
    }


def _file(video: Any) -> str | None:
    for media in getattr(video, "media", None) or []:
        for part in getattr(media, "parts", None) or []:
            if getattr(part, "file", None):
                return str(part.file)
    return None


def fetch_library(url: str, token: str, section: str | None) -> tuple[list[PlexEntry], list[str]]:
    """Read the Plex library (blocking: run in a thread). Returns entries and notes."""
    try:
        server = PlexServer(url, token, timeout=PLEX_TIMEOUT)
        sections = server.library.sections()
    except plex_errors.Unauthorized:
        raise Forbidden(f"Plex at {url} refused the token (check --token)") from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise PlexUnreachable(f"cannot reach Plex at {url}: {type(exc).__name__}") from None
    except (plex_errors.BadRequest, plex_errors.NotFound) as exc:
        raise PlexUnreachable(f"{url} does not answer like a Plex server: {exc}") from None
    if section is not None:
        chosen = [s for s in sections if s.title.casefold() == section.casefold()]
        if not chosen:
            names = ", ".join(repr(s.title) for s in sections) or "none"
            raise NotFound(f"Plex has no section named {section!r} (sections: {names})")
        sections = chosen
    entries: list[PlexEntry] = []
    notes: list[str] = []
    for sec in sections:
        try:
            if sec.type == "movie":
                for video in sec.all():
                    path = _file(video)
                    if path is None:
                        notes.append(f"{video.title!r} has no media file; skipped")
                        continue
                    entries.append(PlexEntry(path=path, title=video.title, metadata=_common(video)))
            elif sec.type == "show":
                for episode in sec.searchEpisodes():
                    path = _file(episode)
                    if path is None:
                        notes.append(f"{episode.title!r} has no media file; skipped")
                        continue
                    meta = _common(episode)
                    meta.update(
                        show=getattr(episode, "grandparentTitle", None),
                        season=getattr(episode, "parentIndex", None),
                        episode=getattr(episode, "index", None),
                    )
                    entries.append(PlexEntry(path=path, title=episode.title, metadata=meta))
            else:
                notes.append(f"section {sec.title!r} ({sec.type}) skipped: only movie and show sections are imported")
        except plex_errors.Unauthorized:
            raise Forbidden(f"Plex at {url} refused the token (check --token)") from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise PlexUnreachable(f"lost Plex at {url} while reading {sec.title!r}: {type(exc).__name__}") from None
    return entries, notes


class PlexImport:
    def __init__(self, *, cma: ContentManager, executor: Executor, mode: str) -> None:
        if mode not in ("reference", "copy"):
            raise InvalidInput("[plex] mode must be reference or copy")
        self._cma = cma
        self._executor = executor
        self.mode = mode
        self._lock = asyncio.Lock()

    async def run(self, url: str, token: str, section: str | None, visibility: str) -> PlexReport:
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("--url must be the Plex server's http(s) address")
        if not token.strip():
            raise InvalidInput("--token must not be empty")
        async with self._lock:
            loop = asyncio.get_running_loop()
            entries, notes = await loop.run_in_executor(self._executor, fetch_library, url, token, section)
            report = PlexReport(notes=notes)
            for entry in entries:
                try:
                    item, what = await self._cma.ingest_file(
                        Path(entry.path),
                        title=entry.title,
                        visibility=visibility,
                        source="plex",
                        metadata=entry.metadata,
                        reference=self.mode == "reference",
                    )
                except PrivNetworkError as exc:
                    report.failed.append((entry.path, exc.message))
                    continue
                if what == "added":
                    report.added.append(item.id)
                elif what == "updated":
                    report.updated.append(item.id)
                else:
                    report.unchanged += 1
            log.info(
                "Plex import from %s: %d added, %d updated, %d unchanged, %d failed",
                url,
                len(report.added),
                len(report.updated),
                report.unchanged,
                len(report.failed),
            )
            return report
