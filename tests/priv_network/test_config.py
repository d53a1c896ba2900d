"""Configuration: value syntax, strict sections, the rendered file, load errors, docs/config.md."""

from __future__ import annotations

import dataclasses
import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from priv_network.config import (
    CONFIG_FILE,
    DATABASE_URL_ENV,
    SECTIONS,
    Config,
    config_from_dict,
    load_config,
    parse_duration,
    parse_listen,
    parse_size,
    render_config,
    settings_table,
)
from priv_network.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def one_line_error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# -- value syntax ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("24h", 86400),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),
        ("500ms", 0.5),
        ("1.5h", 5400),
        (" 10 s ", 10),
        ("42", 42),
        ("0", 0),
        (30, 30),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    "value", ["", "soon", "5x", "m5", "-5s", "5 minutes", "1e3s", "5s5", True, False, -1, float("inf"), [1], {"s": 1}]
)
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ConfigError, match="not a duration") as excinfo:
        parse_duration(value)
    one_line_error(excinfo)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10GiB", 10 * 1024**3),
        ("500MB", 500 * 1000**2),
        ("1kib", 1024),
        ("1KB", 1000),
        ("2 TiB", 2 * 1024**4),
        ("1.5MiB", 1536 * 1024),
        ("7B", 7),
        ("123", 123),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_accepts(text: str | int, size: int) -> None:
    assert parse_size(text) == size
    assert isinstance(parse_size(text), int)


@pytest.mark.parametrize("value", ["", "big", "10XB", "10 G", "-1", "GiB", "1,5GiB", True, -1, 1.5, [1]])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ConfigError, match="not a size") as excinfo:
        parse_size(value)
    one_line_error(excinfo)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8700", "127.0.0.1", 8700),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:8700", "::1", 8700),
        ("node.example:1", "node.example", 1),
    ],
)
def test_parse_listen_accepts(text: str, host: str, port: int) -> None:
    assert parse_listen(text) == (host, port)


@pytest.mark.parametrize("text", ["", "8700", ":8700", "host:", "host:http", "host:-1", "h: 1"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT") as excinfo:
        parse_listen(text)
    one_line_error(excinfo)


@pytest.mark.parametrize("text", ["host:0", "host:65536", "[::1]:70000"])
def test_parse_listen_names_a_port_out_of_range(text: str) -> None:
    with pytest.raises(ConfigError, match="port must be from 1 to 65535") as excinfo:
        parse_listen(text)
    one_line_error(excinfo)


# -- config_from_dict ----------------------------------------------------------


def test_empty_dict_gives_every_default(tmp_path: Path) -> None:
    config = config_from_dict(tmp_path, {})
    assert config == Config(data_dir=tmp_path)
    assert config.sync.interval == 60.0
    assert config.store.min_free == 256 * 1024 * 1024


def test_values_are_converted_at_load(tmp_path: Path) -> None:
    config = config_from_dict(
        tmp_path,
        {
            "store": {"min_free": "1GiB", "block_size": "256KiB", "hash_workers": 4},
            "sync": {"interval": "5m", "jitter": 1, "page_size": 10},
            "http": {"shutdown_timeout": "1500ms"},
            "log": {"level": "debug"},
        },
    )
    assert config.store.min_free == 1024**3
    assert config.store.block_size == 256 * 1024
    assert config.sync.interval == 300.0
    assert config.sync.jitter == 1.0 and isinstance(config.sync.jitter, float)
    assert config.http.shutdown_timeout == 1.5


@pytest.mark.parametrize(
    ("raw", "must_name"),
    [
        ({"nodes": {"name": "x"}}, "[nodes]"),
        ({"node": "alice"}, "[node]"),
        ({"node": {"nmae": "x"}}, "'nmae'"),
        ({"sync": {"interval": "5m", "intervall": "5m"}}, "'intervall'"),
        ({"node": {"name": 5}}, "[node] name"),
        ({"node": {"listen": 8700}}, "[node] listen"),
        ({"database": {"url": ["sqlite://"]}}, "[database] url"),
        ({"store": {"hash_workers": "2"}}, "[store] hash_workers"),
        ({"store": {"hash_workers": True}}, "[store] hash_workers"),
        ({"store": {"hash_workers": 2.0}}, "[store] hash_workers"),
        ({"store": {"min_free": "lots"}}, "[store] min_free"),
        ({"store": {"min_free": 1.5}}, "[store] min_free"),
        ({"store": {"min_free": -1}}, "[store] min_free"),
        ({"store": {"block_size": {"a": 1}}}, "[store] block_size"),
        ({"sync": {"jitter": "a bit"}}, "[sync] jitter"),
        ({"sync": {"jitter": False}}, "[sync] jitter"),
        ({"sync": {"interval": "soon"}}, "[sync] interval"),
        ({"sync": {"interval": [60]}}, "[sync] interval"),
        ({"sync": {"interval": -60}}, "[sync] interval"),
        ({"sync": {"interval": float("nan")}}, "[sync] interval"),
        ({"http": {"shutdown_timeout": "10 minutes"}}, "[http] shutdown_timeout"),
        ({"log": {"level": 10}}, "[log] level"),
    ],
)
def test_bad_config_is_one_line_naming_the_option(tmp_path: Path, raw: dict[str, Any], must_name: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(tmp_path, raw)
    assert must_name in one_line_error(excinfo)


@pytest.mark.parametrize(
    ("raw", "must_name"),
    [
        ({"node": {"listen": "nowhere"}}, "HOST:PORT"),
        ({"store": {"block_size": "1000KiB"}}, "[store] block_size"),
        ({"store": {"block_size": "32KiB"}}, "[store] block_size"),
        ({"store": {"block_size": "32MiB"}}, "[store] block_size"),
        ({"store": {"hash_workers": 0}}, "[store] hash_workers"),
        ({"sync": {"interval": 0}}, "[sync] interval"),
        ({"sync": {"page_size": 0}}, "page_size"),
        ({"log": {"level": "LOUD"}}, "[log] level"),
        ({"node": {"url": "notaurl"}}, "[node] url"),
        ({"node": {"url": "media.example.org"}}, "[node] url"),
        ({"node": {"url": "ftp://media.example.org"}}, "[node] url"),
        ({"node": {"url": "http://"}}, "[node] url"),
        ({"node": {"url": "http://[::1"}}, "[node] url"),
        ({"node": {"url": "http://media.example.org:99999"}}, "[node] url"),
        ({"node": {"url": "http://media.example.org:port"}}, "[node] url"),
        ({"node": {"url": "https://user:pw@media.example.org"}}, "[node] url"),
        ({"node": {"url": "https://media.example.org/?a=1"}}, "[node] url"),
        ({"node": {"url": "https://media.example.org/#top"}}, "[node] url"),
        ({"node": {"url": "https://media example.org"}}, "[node] url"),
        ({"node": {"url": " https://media.example.org"}}, "[node] url"),
        ({"node": {"url": "https://media.example.org/\n"}}, "[node] url"),
        ({"downloads": {"allowed_networks": ["nas.local"]}}, "[downloads] allowed_networks"),
        ({"downloads": {"allowed_networks": ["192.168.1.300/32"]}}, "[downloads] allowed_networks"),
        ({"downloads": {"allowed_networks": "192.168.1.0/24"}}, "[downloads] allowed_networks"),
    ],
)
def test_values_out_of_range_are_refused(tmp_path: Path, raw: dict[str, Any], must_name: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(tmp_path, raw)
    assert must_name in one_line_error(excinfo)


def test_unknown_section_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(tmp_path, {"registry": {}})
    message = one_line_error(excinfo)
    for name in SECTIONS:
        assert name in message


# -- the rendered file ---------------------------------------------------------


def test_rendered_defaults_round_trip_every_option(tmp_path: Path) -> None:
    text = render_config({})
    raw = tomllib.loads(text)
    assert set(raw) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert set(raw[name]) == {f.name for f in dataclasses.fields(cls)}, name
        for f in dataclasses.fields(cls):
            assert f"# {f.metadata['help']}" in text
    config = config_from_dict(tmp_path, raw)
    assert config == Config(data_dir=tmp_path)
    for name, cls in SECTIONS.items():
        assert getattr(config, name) == cls()


def test_rendered_overrides_round_trip(tmp_path: Path) -> None:
    overrides: dict[str, dict[str, Any]] = {
        "node": {"name": 'Bob\'s "den" \\ 🎬', "listen": "0.0.0.0:9000", "url": "https://bob.example/"},
        "store": {"min_free": 0, "hash_workers": 3},
        "sync": {"interval": 15.0},
    }
    config = config_from_dict(tmp_path, tomllib.loads(render_config(overrides)))
    assert config.node.name == 'Bob\'s "den" \\ 🎬'
    assert config.node.listen == "0.0.0.0:9000"
    assert (config.store.min_free, config.store.hash_workers, config.sync.interval) == (0, 3, 15.0)


@settings(max_examples=100, deadline=None)
@given(name=st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
def test_any_name_survives_the_config_file(name: str) -> None:
    raw = tomllib.loads(render_config({"node": {"name": name, "url": name}}))
    assert raw["node"]["name"] == name
    assert raw["node"]["url"] == name


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(render_config({"node": {"name": "carol", "listen": "127.0.0.1:9999"}}))
    config = load_config(tmp_path)
    assert (config.data_dir, config.node.name, config.node.listen_port) == (tmp_path, "carol", 9999)


def test_load_config_on_missing_folder_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path / "nowhere")
    message = one_line_error(excinfo)
    assert "nowhere" in message and "init" in message


def test_load_config_on_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("[node]\nname = alice\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path)
    message = one_line_error(excinfo)
    assert "not valid TOML" in message and "line 2" in message


def test_load_config_on_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_bytes(b'[node]\nname = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="cannot read") as excinfo:
        load_config(tmp_path)
    one_line_error(excinfo)
    (tmp_path / CONFIG_FILE).unlink()
    (tmp_path / CONFIG_FILE).mkdir()
    with pytest.raises(ConfigError, match="cannot read") as excinfo:
        load_config(tmp_path)
    one_line_error(excinfo)


def test_load_config_reports_bad_values_in_the_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("[store]\nmin_free = 2.5\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path)
    assert "[store] min_free" in one_line_error(excinfo)


# -- derived values -------------------------------------------------------------


def test_database_url_default_and_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    assert config_from_dict(tmp_path, {}).database_url == f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
    configured = config_from_dict(tmp_path, {"database": {"url": "postgresql+asyncpg://h/from-file"}})
    assert configured.database_url == "postgresql+asyncpg://h/from-file"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+asyncpg://h/from-env")
    assert configured.database_url == "postgresql+asyncpg://h/from-env"
    assert config_from_dict(tmp_path, {}).database_url == "postgresql+asyncpg://h/from-env"
    monkeypatch.setenv(DATABASE_URL_ENV, "")
    assert configured.database_url == "postgresql+asyncpg://h/from-file"


def test_paths_live_in_the_data_folder(tmp_path: Path) -> None:
    config = config_from_dict(tmp_path, {})
    assert config.store_path == tmp_path / "store"
    assert config.key_path.parent == tmp_path
    assert config.admin_token_path == tmp_path / "admin.token"
    elsewhere = config_from_dict(tmp_path, {"store": {"path": "/srv/media-store"}})
    assert elsewhere.store_path == Path("/srv/media-store")


@pytest.mark.parametrize(
    ("node", "public_url"),
    [
        ({"listen": "127.0.0.1:8700"}, "http://127.0.0.1:8700"),
        ({"listen": "192.168.1.5:80"}, "http://192.168.1.5:80"),
        ({"listen": "0.0.0.0:9000"}, "http://127.0.0.1:9000"),
        ({"listen": "[::1]:8700"}, "http://[::1]:8700"),
        ({"listen": "media.lan:8700"}, "http://media.lan:8700"),
        ({"listen": "0.0.0.0:9000", "url": "https://media.example.org/"}, "https://media.example.org"),
        ({"url": "https://media.example.org/node//"}, "https://media.example.org/node"),
        ({"url": "http://[2001:db8::1]:8443/pn"}, "http://[2001:db8::1]:8443/pn"),
        ({"url": "https://bücher.example"}, "https://bücher.example"),
    ],
)
def test_public_url(tmp_path: Path, node: dict[str, str], public_url: str) -> None:
    config = config_from_dict(tmp_path, {"node": node})
    assert config.node.public_url == public_url


# -- docs/config.md ----------------------------------------------------------------


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_doc", REPO / "scripts" / "gen_config_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_config_md_is_up_to_date() -> None:
    expected = load_generator().render()
    current = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert current == expected, "docs/config.md is out of date: run .venv/bin/python scripts/gen_config_doc.py"


def test_generated_doc_lists_every_option_and_the_environment() -> None:
    text = load_generator().render()
    for section, option, default, help_text in settings_table():
        assert f"## [{section}]" in text
        assert f"| `{option}` | `{default}` |" in text
        assert help_text.split(".")[0] in text
    for needle in ("config.toml", "PRIV_NETWORK_DATA", DATABASE_URL_ENV, "90s", "24h", "MiB", "GiB"):
        assert needle in text
