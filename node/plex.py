"""Import a Plex library through plexapi: movies and shows with their metadata.

plexapi is synchronous (requests): every call to it runs in a worker thread,
never on the event loop. A file is referenced in place when this node can
read it ([plex] mode = "reference", the default) or copied into the store
("copy"); either way it is hashed and probed like any other item. Running
the import again updates changed metadata and adds new items; files whose
size and modification time did not change are not read again, and a file
that changed gives its item the new content in place (same item ID).

Plex keeps genres on a show, not on its episodes: an episode takes its
show's genres, its year when it has none of its own, and its external IDs
under "show_" keys (``show_imdb``, ...), so that they do not pass for the
episode's own. Each show is read once per import, in full (a library
listing carries only the first few genres of each item).
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import requests
from plexapi import exceptions as plex_errors
from plexapi.server import PlexServer

from node.service import ContentManager
from priv_network.errors import Forbidden, InvalidInput, NotFound, PrivNetworkError

log = logging.getLogger(__name__)

PLEX_TIMEOUT = 30
_PLEX_STATUS = re.compile(r"^\((\d{3})\)")


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


def _show_metadata(episode: Any, shows: dict[Any, dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    """What an episode inherits from its show (blocking: one request per show, then cached in ``shows``)."""
    key = getattr(episode, "grandparentRatingKey", None)
    if key is None:
        return {}
    if key not in shows:
        try:
            show = episode.show()
        except (plex_errors.NotFound, plex_errors.BadRequest) as exc:
            title = getattr(episode, "grandparentTitle", None) or key
            why = "not found" if isinstance(exc, plex_errors.NotFound) else "refused"
            notes.append(f"show {title!r} could not be read from Plex ({why}); its episodes have no show genres")
            shows[key] = {}
        else:
            shows[key] = {
                "genres": [g.tag for g in (getattr(show, "genres", None) or []) if getattr(g, "tag", None)],
                "year": getattr(show, "year", None),
                "external_ids": _external_ids(show),
            }
    return shows[key]


def _episode_metadata(episode: Any, show: dict[str, Any]) -> dict[str, Any]:
    meta = _common(episode)
    meta["genres"] = list(dict.fromkeys([*meta["genres"], *show.get("genres", [])]))
    if meta["year"] is None:
        meta["year"] = show.get("year")
    for scheme, value in show.get("external_ids", {}).items():
        meta["external_ids"].setdefault(f"show_{scheme}", value)
    meta.update(
        show=getattr(episode, "grandparentTitle", None),
        season=getattr(episode, "parentIndex", None),
        episode=getattr(episode, "index", None),
    )
    return meta


def _file(video: Any) -> str | None:
    for media in getattr(video, "media", None) or []:
        for part in getattr(media, "parts", None) or []:
            if getattr(part, "file", None):
                return str(part.file)
    return None


def _http_status(exc: Exception) -> str:
    """plexapi's HTTP errors read "(404) not_found; URL <the whole answer>": keep only the status."""
    match = _PLEX_STATUS.match(str(exc))
    return f"HTTP {match.group(1)}" if match else "refused"


def not_plex(url: str, why: str) -> PlexUnreachable:
    return PlexUnreachable(f"{url} does not answer like a Plex server ({why}); check --url")


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
        raise not_plex(url, _http_status(exc)) from None
    except ElementTree.ParseError:
        # An HTML page or JSON (a web server, another service, this node's own port).
        raise not_plex(url, "its answer is not XML") from None
    except (TypeError, AttributeError):
        # Empty or foreign XML: plexapi trips over the missing MediaContainer fields.
        log.debug("the answer of %s is not Plex's", url, exc_info=True)
        raise not_plex(url, "unexpected answer") from None
    if section is not None:
        chosen = [s for s in sections if s.title.casefold() == section.casefold()]
        if not chosen:
            names = ", ".join(repr(s.title) for s in sections) or "none"
            raise NotFound(f"Plex has no section named {section!r} (sections: {names})")
        sections = chosen
    entries: list[PlexEntry] = []
    notes: list[str] = []
    shows: dict[Any, dict[str, Any]] = {}
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
                    meta = _episode_metadata(episode, _show_metadata(episode, shows, notes))
                    entries.append(PlexEntry(path=path, title=episode.title, metadata=meta))
            else:
                notes.append(f"section {sec.title!r} ({sec.type}) skipped: only movie and show sections are imported")
        except plex_errors.Unauthorized:
            raise Forbidden(f"Plex at {url} refused the token (check --token)") from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise PlexUnreachable(f"lost Plex at {url} while reading {sec.title!r}: {type(exc).__name__}") from None
        except (plex_errors.BadRequest, plex_errors.NotFound) as exc:
            raise PlexUnreachable(f"Plex at {url} failed to list {sec.title!r} ({_http_status(exc)})") from None
        except ElementTree.ParseError:
            raise PlexUnreachable(f"Plex at {url} sent an answer that is not XML for {sec.title!r}") from None
    return entries, notes


class PlexImport:
    def __init__(self, *, cma: ContentManager, executor: Executor, mode: str) -> None:
        if mode not in ("reference", "copy"):
            raise InvalidInput("[plex] mode must be reference or copy")
        self._cma = cma
        self._executor = executor
        self.mode = mode
        self._lock = asyncio.Lock()

    async def check_audience(self, visibility: str) -> str:
        return await self._cma.check_audience(visibility)

    async def run(self, url: str, token: str, section: str | None, visibility: str) -> PlexReport:
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("the Plex URL must be the server's http(s) address")
        if not token.strip():
            raise InvalidInput("the Plex token must not be empty")
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
