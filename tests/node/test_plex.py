"""Import from Plex through plexapi, against a fake Plex server on 127.0.0.1 (tests/node/fake_plex.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plexapi.base
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node import blobs as blobs_module
from tests.conftest import Cli, NodeFactory, RunningNode, free_port
from tests.media import make_video
from tests.node.fake_plex import Episode, FakePlex, Movie, Section, Show
from tests.priv_network.test_cli import Servers, ok, one_line_error

TOKEN = "plex-secret-token"


@dataclass
class Plex:
    fake: FakePlex
    media: Path

    def body(self, **extra: Any) -> dict[str, Any]:
        return {"url": self.fake.url, "token": TOKEN, **extra}


def _video(path: Path, seconds: float, width: int, audio: bool = True) -> tuple[str, int]:
    make_video(path, seconds=seconds, width=width, height=width * 3 // 4, audio=audio)
    return str(path), path.stat().st_size


@pytest.fixture
async def plex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Plex]:
    """Three movies and two episodes of one show as real files, and a music section; pages of two items."""
    monkeypatch.setattr(plexapi.base, "X_PLEX_CONTAINER_SIZE", 2)  # so three movies take two pages
    movies, shows = tmp_path / "plex" / "Movies", tmp_path / "plex" / "TV Shows" / "Night Garden" / "Season 01"
    movies.mkdir(parents=True)
    shows.mkdir(parents=True)
    arrival = _video(movies / "Arrival (2016).mp4", 2, 160)
    blade = _video(movies / "Blade Runner (1982).mp4", 1, 96, audio=False)
    heat = _video(movies / "Heat (1995).mp4", 1, 128)
    ep1 = _video(shows / "Night Garden - s01e01.mp4", 1, 112)
    ep2 = _video(shows / "Night Garden - s01e02.mp4", 1.5, 112)
    fake = FakePlex(token=TOKEN)
    fake.sections = [
        Section(
            1,
            "Movies",
            "movie",
            str(movies),
            [
                Movie(
                    10,
                    "Arrival",
                    *arrival,
                    year=2016,
                    duration_ms=2000,
                    summary="A linguist meets visitors.",
                    genres=["Science Fiction", "Drama"],
                    guids=["imdb://tt2543164", "tmdb://329865", "tvdb://123"],
                ),
                Movie(11, "Blade Runner", *blade, year=1982, duration_ms=1000, summary="Replicants.", genres=["Noir"]),
                Movie(12, "Heat", *heat, year=1995, duration_ms=1000, summary="A heist.", genres=["Crime", "Drama"]),
            ],
        ),
        Section(
            2,
            "TV Shows",
            "show",
            str(tmp_path / "plex" / "TV Shows"),
            [
                Episode(
                    20,
                    "The Long Night",
                    *ep1,
                    year=2021,
                    duration_ms=1000,
                    summary="It begins.",
                    guids=["tvdb://7001"],
                    show="Night Garden",
                    season=1,
                    episode=1,
                ),
                Episode(
                    21,
                    "Morning Frost",
                    *ep2,
                    duration_ms=1500,
                    summary="It goes on.",
                    show="Night Garden",
                    season=1,
                    episode=2,
                ),
            ],
            shows=[
                Show(
                    30,
                    "Night Garden",
                    year=2019,
                    summary="A garden at night.",
                    genres=["Fantasy", "Mystery", "Family"],
                    guids=["imdb://tt9000001", "tvdb://555"],
                )
            ],
        ),
        Section(3, "Music", "artist", str(tmp_path / "plex" / "Music")),
    ]
    await fake.start()
    yield Plex(fake=fake, media=tmp_path / "plex")
    await fake.close()


async def import_plex(node: RunningNode, body: dict[str, Any], expect: int = 200) -> dict[str, Any]:
    async with node.client.post("/api/v1/import/plex", json=body, headers=node.auth) as resp:
        data = await resp.json()
        assert resp.status == expect, data
        return data


async def items_by_title(node: RunningNode) -> dict[str, dict[str, Any]]:
    return {i["title"]: i for i in (await node.api("GET", "/api/v1/items"))["items"]}


def blob_files(node: RunningNode) -> list[Path]:
    return [p for p in (node.config.store_path / "blobs").rglob("*") if p.is_file()]


async def content(node: RunningNode, item: dict[str, Any]) -> bytes:
    async with node.client.get(item["content_url"], headers=node.auth) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_import_references_files_with_their_metadata(node: RunningNode, plex: Plex) -> None:
    report = await import_plex(node, plex.body())
    assert len(report["added"]) == 5
    assert (report["updated"], report["unchanged"], report["failed"]) == ([], 0, [])
    assert report["notes"] == ["section 'Music' (artist) skipped: only movie and show sections are imported"]
    # The three movies came in two pages of two.
    starts = [h.get("X-Plex-Container-Start") for p, h in plex.fake.requests if p.startswith("/library/sections/1/all")]
    assert starts == ["0", "2"]

    items = await items_by_title(node)
    assert set(items) == {"Arrival", "Blade Runner", "Heat", "The Long Night", "Morning Frost"}
    arrival = items["Arrival"]
    assert arrival["source"] == "plex"
    assert arrival["kind"] == "video"
    assert arrival["year"] == 2016
    assert arrival["description"] == "A linguist meets visitors."
    assert arrival["genres"] == ["Science Fiction", "Drama"]
    assert arrival["external_ids"] == {"imdb": "tt2543164", "tmdb": "329865", "tvdb": "123"}
    assert arrival["duration"] == pytest.approx(2.0, abs=0.2)
    assert arrival["show"] is None and arrival["season"] is None
    episode = items["Morning Frost"]
    assert (episode["show"], episode["season"], episode["episode"]) == ("Night Garden", 1, 2)
    assert episode["source"] == "plex"
    assert episode["duration"] == pytest.approx(1.5, abs=0.2)
    assert episode["description"] == "It goes on."  # its own, not the show's

    # Episodes carry no genres in Plex: they take their show's (all of them), and its year when
    # they have none; the show's external IDs come under show_ keys, next to the episode's own.
    first = items["The Long Night"]
    assert first["genres"] == episode["genres"] == ["Fantasy", "Mystery", "Family"]
    assert (first["year"], episode["year"]) == (2021, 2019)
    assert first["external_ids"] == {"tvdb": "7001", "show_imdb": "tt9000001", "show_tvdb": "555"}
    assert episode["external_ids"] == {"show_imdb": "tt9000001", "show_tvdb": "555"}
    # The show was read once, not once per episode.
    assert len([p for p in plex.fake.paths() if p.startswith("/library/metadata/30?")]) == 1

    # Reference mode: played where they are, nothing copied into the store.
    assert blob_files(node) == []
    source = plex.media / "Movies" / "Arrival (2016).mp4"
    assert await content(node, arrival) == source.read_bytes()
    async with node.client.get(arrival["content_url"], headers={**node.auth, "Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert await resp.read() == source.read_bytes()[10:20]
    for path, headers in plex.fake.requests:
        assert headers.get("X-Plex-Token") == TOKEN, path


async def test_reimport_adds_and_updates_only_what_changed(
    node: RunningNode, plex: Plex, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await import_plex(node, plex.body())
    assert len(first["added"]) == 5
    reads: list[Path] = []
    original = blobs_module.BlobStore.hash_in_place
    monkeypatch.setattr(blobs_module.BlobStore, "hash_in_place", lambda self, p: reads.append(p) or original(self, p))

    again = await import_plex(node, plex.body())
    assert (again["added"], again["updated"], again["unchanged"], again["failed"]) == ([], [], 5, [])
    assert reads == []  # unchanged files are not read again

    heat = plex.fake.item(12)
    heat.title = "Heat (Director's Cut)"
    heat.genres = ["Crime", "Thriller"]
    before = await items_by_title(node)
    changed = await import_plex(node, plex.body())
    assert changed["updated"] == [before["Heat"]["id"]]
    assert (changed["added"], changed["unchanged"]) == ([], 4)
    assert reads == []
    after = await items_by_title(node)
    assert "Heat" not in after
    assert after["Heat (Director's Cut)"]["genres"] == ["Crime", "Thriller"]
    assert after["Heat (Director's Cut)"]["id"] == before["Heat"]["id"]

    path, size = _video(plex.media / "Movies" / "Ran (1985).mp4", 1, 144)
    plex.fake.section("Movies").items.append(Movie(13, "Ran", path, size, year=1985, genres=["War"]))
    more = await import_plex(node, plex.body())
    assert len(more["added"]) == 1
    assert (more["updated"], more["unchanged"]) == ([], 5)
    assert reads == [Path(path)]
    ran = (await items_by_title(node))["Ran"]
    assert ran["id"] == more["added"][0]
    assert (ran["year"], ran["genres"]) == (1985, ["War"])


async def test_episodes_of_a_show_plex_cannot_read_are_imported_with_a_note(node: RunningNode, plex: Plex) -> None:
    plex.fake.gone.add(30)  # the show, deleted in Plex while its episodes are listed
    report = await import_plex(node, plex.body(section="TV Shows"))
    assert len(report["added"]) == 2
    assert len(report["notes"]) == 1
    assert report["notes"] == [
        "show 'Night Garden' could not be read from Plex (not found); its episodes have no show genres"
    ]
    first = (await items_by_title(node))["The Long Night"]
    assert (first["genres"], first["year"], first["external_ids"]) == ([], 2021, {"tvdb": "7001"})


async def test_reimport_follows_a_changed_file_in_place(
    node: RunningNode, plex: Plex, monkeypatch: pytest.MonkeyPatch
) -> None:
    await import_plex(node, plex.body(section="Movies"))
    before = (await items_by_title(node))["Heat"]
    await node.api("POST", f"/api/v1/items/{before['id']}/comments", json={"body": "seen it"})
    reads: list[Path] = []
    original = blobs_module.BlobStore.hash_in_place
    monkeypatch.setattr(blobs_module.BlobStore, "hash_in_place", lambda self, p: reads.append(p) or original(self, p))

    source = plex.media / "Movies" / "Heat (1995).mp4"
    _video(source, 2, 176)  # Plex's file was replaced (a better copy)
    plex.fake.item(12).size = source.stat().st_size
    report = await import_plex(node, plex.body(section="Movies"))
    assert (report["added"], report["updated"], report["unchanged"]) == ([], [before["id"]], 2)
    assert reads == [source]
    after = (await items_by_title(node))["Heat"]
    assert after["id"] == before["id"]
    assert after["content_hash"] != before["content_hash"]
    assert after["width"] == 176 and after["size"] == source.stat().st_size
    assert await content(node, after) == source.read_bytes()
    comments = await node.api("GET", f"/api/v1/items/{before['id']}/comments")
    assert [c["body"] for c in comments["comments"]] == ["seen it"]
    assert len((await node.api("GET", "/api/v1/items"))["items"]) == 3
    assert blob_files(node) == []  # still referenced in place

    again = await import_plex(node, plex.body(section="Movies"))
    assert (again["added"], again["updated"], again["unchanged"]) == ([], [], 3)
    assert reads == [source]  # the new size and time were recorded: not read a second time


async def test_copy_mode_copies_files_into_the_store(node_factory: NodeFactory, plex: Plex) -> None:
    node = await node_factory(plex={"mode": "copy"})
    report = await import_plex(node, plex.body(section="Movies"))
    assert len(report["added"]) == 3
    assert len(blob_files(node)) == 3
    arrival = (await items_by_title(node))["Arrival"]
    source = plex.media / "Movies" / "Arrival (2016).mp4"
    data = source.read_bytes()
    source.unlink()  # the copy plays without Plex's file
    assert hashlib.sha256(await content(node, arrival)).digest() == hashlib.sha256(data).digest()


async def test_wrong_token_is_a_clear_403(node: RunningNode, plex: Plex) -> None:
    data = await import_plex(node, {"url": plex.fake.url, "token": "not-the-token"}, expect=403)
    message = data["error"]["message"]
    assert "refused the token" in message
    assert "not-the-token" not in message and "\n" not in message
    assert plex.fake.requests  # it did ask Plex
    assert (await node.api("GET", "/api/v1/items"))["items"] == []


async def test_unreachable_server_is_a_clear_502(node: RunningNode) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    data = await import_plex(node, {"url": url, "token": TOKEN}, expect=502)
    assert data["error"]["code"] == "plex_unreachable"
    assert data["error"]["message"].startswith(f"cannot reach Plex at {url}")
    assert "\n" not in data["error"]["message"]


async def test_something_else_than_plex_is_a_clear_502(node: RunningNode, plex: Plex) -> None:
    data = await import_plex(node, {"url": plex.fake.url + "/nowhere", "token": TOKEN}, expect=502)
    assert "does not answer like a Plex server" in data["error"]["message"]


NOT_FOUND_PAGE = (
    "<html><head><title>404 Not Found</title></head><body>" + "<p>nothing here</p>" * 200 + "</body></html>"
)


@pytest.fixture
async def not_plex() -> AsyncIterator[str]:
    """A web server that is not Plex: HTML, JSON, an empty or foreign XML answer, an HTML 404 or 500."""
    answers = {
        "html": web.Response(
            text="<!DOCTYPE html><html><meta charset=utf-8><p>Directory listing", content_type="text/html"
        ),
        "json": web.json_response({"status": "ok"}),
        "empty": web.Response(text=""),
        "rss": web.Response(text="<rss><channel/></rss>", content_type="text/xml"),
        "404": web.Response(text=NOT_FOUND_PAGE, status=404, content_type="text/html"),
        "500": web.Response(text=NOT_FOUND_PAGE, status=500, content_type="text/html"),
    }

    async def answer(request: web.Request) -> web.Response:
        template = answers[request.match_info["kind"]]
        return web.Response(body=template.body, status=template.status, content_type=template.content_type)

    app = web.Application()
    app.router.add_get("/{kind}/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("html", "its answer is not XML"),
        ("json", "its answer is not XML"),
        ("empty", "unexpected answer"),
        ("rss", "unexpected answer"),
        ("404", "HTTP 404"),
        ("500", "HTTP 500"),
    ],
)
async def test_a_web_server_that_is_not_plex_is_one_short_line(
    node: RunningNode, not_plex: str, kind: str, why: str
) -> None:
    url = f"{not_plex}/{kind}"
    data = await import_plex(node, {"url": url, "token": TOKEN}, expect=502)
    assert data["error"]["code"] == "plex_unreachable"
    assert data["error"]["message"] == f"{url} does not answer like a Plex server ({why}); check --url"


async def test_this_nodes_own_url_is_not_plex(node: RunningNode) -> None:
    """The typical wrong-port mistake: the node's own address."""
    url = str(node.client.make_url("")).rstrip("/")
    data = await import_plex(node, {"url": url, "token": TOKEN}, expect=502)
    assert "does not answer like a Plex server" in data["error"]["message"]


async def test_unreadable_file_is_listed_and_the_rest_imported(node: RunningNode, plex: Plex) -> None:
    (plex.media / "Movies" / "Blade Runner (1982).mp4").unlink()
    report = await import_plex(node, plex.body())
    assert len(report["added"]) == 4
    assert [Path(f["path"]).name for f in report["failed"]] == ["Blade Runner (1982).mp4"]
    assert "No such file" in report["failed"][0]["error"]
    assert "Blade Runner" not in await items_by_title(node)


async def test_section_filter(node: RunningNode, plex: Plex) -> None:
    report = await import_plex(node, plex.body(section="tv shows"))
    assert len(report["added"]) == 2
    assert report["notes"] == []
    assert set(await items_by_title(node)) == {"The Long Night", "Morning Frost"}
    assert not [p for p in plex.fake.paths() if p.startswith("/library/sections/1/")]

    data = await import_plex(node, plex.body(section="Cartoons"), expect=404)
    assert "Cartoons" in data["error"]["message"]
    assert "'Movies', 'TV Shows', 'Music'" in data["error"]["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"url": "ftp://127.0.0.1:1", "token": TOKEN}, "http"),
        ({"url": "http://127.0.0.1:1", "token": "  "}, "token"),
        ({"url": "http://127.0.0.1:1"}, "token"),
        ({"url": "http://127.0.0.1:1", "token": TOKEN, "section": 3}, "section"),
        ({"url": "http://127.0.0.1:1", "token": TOKEN, "visibility": "world"}, "visibility"),
    ],
)
async def test_bad_requests_are_400(node: RunningNode, body: dict[str, Any], words: str) -> None:
    data = await import_plex(node, body, expect=400)
    assert words in data["error"]["message"]


async def test_search_finds_imported_items(node: RunningNode, plex: Plex) -> None:
    await import_plex(node, plex.body())

    async def search(**params: str) -> list[str]:
        data = await node.api("GET", "/api/v1/search", params=params)
        return sorted(h["title"] for h in data["results"])

    assert await search(q="night garden") == ["Morning Frost", "The Long Night"]
    assert await search(q="garden", year="2016") == []
    assert await search(q="", genre="Drama") == ["Arrival", "Heat"]
    assert await search(q="", genre="drama", year="1995") == ["Heat"]
    assert await search(q="", year="1982") == ["Blade Runner"]
    assert await search(q="", source="plex", genre="Noir") == ["Blade Runner"]
    assert await search(q="", genre="mystery") == ["Morning Frost", "The Long Night"]
    assert await search(q="", year="2019") == ["Morning Frost"]
    hit = (await node.api("GET", "/api/v1/search", params={"q": "frost"}))["results"][0]
    assert (hit["show"], hit["season"], hit["episode"], hit["source"]) == ("Night Garden", 1, 2, "plex")


@pytest.mark.slow
async def test_cli_import_plex(cli: Cli, plex: Plex) -> None:
    """`priv-network import-plex` against a running node: a wrong token is one line and exit 1."""
    port = free_port()
    ok(await asyncio.to_thread(cli.run, "init", "--name", "alice", "--listen", f"127.0.0.1:{port}"))
    servers = Servers(cli)
    try:
        await asyncio.to_thread(servers.start, port)
        wrong = await asyncio.to_thread(cli.run, "import-plex", "--url", plex.fake.url, "--token", "nope")
        assert "refused the token" in one_line_error(wrong, 1)
        right = await asyncio.to_thread(
            cli.run, "import-plex", "--url", plex.fake.url, "--token", TOKEN, "--section", "TV Shows"
        )
        assert ok(right) == "2 added, 0 updated, 0 unchanged, 0 failed\n"
        assert right.stderr == ""
    finally:
        await asyncio.to_thread(servers.cleanup)
