"""A fake Plex Media Server that plexapi (4.18) accepts: an aiohttp app on port 0.

It answers the few endpoints an import reads, in Plex's XML:

    GET /                                  the server (machineIdentifier, version, ...)
    GET /library                           the library root
    GET /library/sections                  one <Directory> per section, with its <Location>
    GET /library/sections/{id}/all         the section's items (type=1 movies, type=4 episodes),
                                           paged by X-Plex-Container-Start/-Size, with totalSize
    GET /library/metadata/{ratingKey}      one item or show in full (plexapi reloads a partial
                                           object when an attribute it reads is missing, and
                                           Episode.show() reads the show here)

Every request must carry the right X-Plex-Token (else 401, as Plex does) and
is recorded, so tests can see what plexapi asked for. The library is plain
data a test can change between imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from aiohttp import web
from aiohttp.test_utils import TestServer

MACHINE_ID = "fakeplex0123456789abcdef"


@dataclass
class Movie:
    rating_key: int
    title: str
    file: str
    size: int
    year: int | None = None
    duration_ms: int | None = None
    summary: str = ""
    genres: list[str] = field(default_factory=list)
    guids: list[str] = field(default_factory=list)


@dataclass
class Episode(Movie):
    show: str = ""  # the title of a Show in the section's shows (else a show the fake does not know)
    season: int = 1
    episode: int = 1


@dataclass
class Show:
    """A show, as Plex keeps it: genres live here, not on its episodes."""

    rating_key: int
    title: str
    year: int | None = None
    summary: str = ""
    genres: list[str] = field(default_factory=list)
    guids: list[str] = field(default_factory=list)


@dataclass
class Section:
    key: int
    title: str
    type: str  # movie, show, artist
    location: str
    items: list[Movie] = field(default_factory=list)
    shows: list[Show] = field(default_factory=list)

    def show_key(self, episode: Episode) -> int:
        """The episode's grandparentRatingKey: its show's, or one of its own for a show the fake lacks."""
        for show in self.shows:
            if show.title == episode.show:
                return show.rating_key
        return episode.rating_key + 1000


@dataclass
class FakePlex:
    token: str
    sections: list[Section] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    gone: set[int] = field(default_factory=set)  # rating keys answered 404 (deleted in Plex meanwhile)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def section(self, title: str) -> Section:
        return next(s for s in self.sections if s.title == title)

    def item(self, rating_key: int) -> Movie:
        return next(i for s in self.sections for i in s.items if i.rating_key == rating_key)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    # -- the HTTP side --------------------------------------------------------
    def app(self) -> web.Application:
        @web.middleware
        async def check_token(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append((request.path_qs, dict(request.headers)))
            token = request.headers.get("X-Plex-Token") or request.query.get("X-Plex-Token")
            if token != self.token:
                return web.Response(status=401, text="<html><h1>401 Unauthorized</h1></html>")
            return await handler(request)

        app = web.Application(middlewares=[check_token])
        app.router.add_get("/", self.identity)
        app.router.add_get("/library", self.library)
        app.router.add_get("/library/sections", self.list_sections)
        app.router.add_get("/library/sections/{key}/all", self.section_items)
        app.router.add_get("/library/metadata/{key}", self.metadata)
        return app

    async def start(self) -> None:
        self.server = TestServer(self.app(), host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    @staticmethod
    def _xml(root: Element) -> web.Response:
        body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root)
        return web.Response(body=body, content_type="text/xml", charset="utf-8")

    async def identity(self, request: web.Request) -> web.Response:
        return self._xml(
            Element(
                "MediaContainer",
                size="0",
                friendlyName="Fake Plex",
                machineIdentifier=MACHINE_ID,
                version="1.40.2.8395-c67dce28e",
                platform="Linux",
                platformVersion="6.1",
                myPlex="0",
                multiuser="1",
                transcoderActiveVideoSessions="0",
                updatedAt="1700000000",
            )
        )

    async def library(self, request: web.Request) -> web.Response:
        root = Element(
            "MediaContainer",
            size="1",
            allowSync="0",
            identifier="com.plexapp.plugins.library",
            mediaTagPrefix="/system/bundle/media/flags/",
            mediaTagVersion="1700000000",
            title1="Plex Library",
        )
        SubElement(root, "Directory", key="sections", title="Library Sections")
        return self._xml(root)

    async def list_sections(self, request: web.Request) -> web.Response:
        root = Element("MediaContainer", size=str(len(self.sections)), allowSync="0", title1="Plex Library")
        for s in self.sections:
            agent = {"movie": "tv.plex.agents.movie", "show": "tv.plex.agents.series"}.get(
                s.type, "tv.plex.agents.music"
            )
            directory = SubElement(
                root,
                "Directory",
                allowSync="1",
                key=str(s.key),
                type=s.type,
                title=s.title,
                agent=agent,
                scanner="Plex Movie" if s.type == "movie" else "Plex TV Series",
                language="en-US",
                uuid=f"section-{s.key}",
                updatedAt="1700000000",
                createdAt="1700000000",
                scannedAt="1700000000",
                content="1",
                directory="1",
                refreshing="0",
            )
            SubElement(directory, "Location", id=str(s.key), path=s.location)
        return self._xml(root)

    def _find_section(self, key: str) -> Section:
        for s in self.sections:
            if str(s.key) == key:
                return s
        raise web.HTTPNotFound()

    async def section_items(self, request: web.Request) -> web.Response:
        section = self._find_section(request.match_info["key"])
        wanted = request.query.get("type")
        if section.type == "show" and wanted != "4":
            raise web.HTTPBadRequest(text="this fake serves a show section's episodes only (type=4)")
        items = list(section.items)
        start = int(request.headers.get("X-Plex-Container-Start", request.query.get("X-Plex-Container-Start", "0")))
        size = int(request.headers.get("X-Plex-Container-Size", request.query.get("X-Plex-Container-Size", "100")))
        page = items[start : start + size]
        root = Element(
            "MediaContainer",
            size=str(len(page)),
            totalSize=str(len(items)),
            offset=str(start),
            allowSync="1",
            librarySectionID=str(section.key),
            librarySectionTitle=section.title,
            librarySectionUUID=f"section-{section.key}",
        )
        for item in page:
            self._video(root, section, item)
        return self._xml(root)

    async def metadata(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key in {str(k) for k in self.gone}:
            raise web.HTTPNotFound()
        for section in self.sections:
            root = Element(
                "MediaContainer", size="1", librarySectionID=str(section.key), librarySectionTitle=section.title
            )
            for item in section.items:
                if str(item.rating_key) == key:
                    self._video(root, section, item)
                    return self._xml(root)
            for show in section.shows:
                if str(show.rating_key) == key:
                    self._show(root, section, show)
                    return self._xml(root)
        raise web.HTTPNotFound()

    @staticmethod
    def _show(root: Element, section: Section, show: Show) -> None:
        episodes = [i for i in section.items if isinstance(i, Episode) and i.show == show.title]
        attrs = {
            "ratingKey": str(show.rating_key),
            "key": f"/library/metadata/{show.rating_key}/children",
            "guid": f"plex://show/{show.rating_key:024x}",
            "type": "show",
            "title": show.title,
            "summary": show.summary,
            "index": "1",
            "librarySectionID": str(section.key),
            "librarySectionTitle": section.title,
            "leafCount": str(len(episodes)),
            "childCount": str(len({e.season for e in episodes})),
            "addedAt": "1700000000",
            "updatedAt": "1700000000",
        }
        if show.year is not None:
            attrs["year"] = str(show.year)
        directory = SubElement(root, "Directory", attrs)
        for genre in show.genres:
            SubElement(directory, "Genre", tag=genre)
        for guid in show.guids:
            SubElement(directory, "Guid", id=guid)

    @staticmethod
    def _video(root: Element, section: Section, item: Movie) -> None:
        attrs = {
            "ratingKey": str(item.rating_key),
            "key": f"/library/metadata/{item.rating_key}",
            "guid": f"plex://movie/{item.rating_key:024x}",
            "type": "movie",
            "title": item.title,
            "summary": item.summary,
            "librarySectionID": str(section.key),
            "librarySectionTitle": section.title,
            "addedAt": "1700000000",
            "updatedAt": "1700000000",
        }
        if item.year is not None:
            attrs["year"] = str(item.year)
        if item.duration_ms is not None:
            attrs["duration"] = str(item.duration_ms)
        if isinstance(item, Episode):
            attrs.update(
                type="episode",
                guid=f"plex://episode/{item.rating_key:024x}",
                grandparentTitle=item.show,
                grandparentRatingKey=str(section.show_key(item)),
                grandparentKey=f"/library/metadata/{section.show_key(item)}",
                parentTitle=f"Season {item.season}",
                parentIndex=str(item.season),
                parentRatingKey=str(item.rating_key + 2000),
                parentKey=f"/library/metadata/{item.rating_key + 2000}",
                index=str(item.episode),
            )
        video = SubElement(root, "Video", attrs)
        media = SubElement(
            video,
            "Media",
            id=str(item.rating_key * 10),
            duration=str(item.duration_ms or 0),
            container="mp4",
            videoCodec="h264",
            audioCodec="aac",
        )
        SubElement(
            media,
            "Part",
            id=str(item.rating_key * 100),
            key=f"/library/parts/{item.rating_key * 100}/file.mp4",
            file=item.file,
            size=str(item.size),
            container="mp4",
            duration=str(item.duration_ms or 0),
        )
        for genre in item.genres:
            SubElement(video, "Genre", tag=genre)
        for guid in item.guids:
            SubElement(video, "Guid", id=guid)
