"""Typed, sectioned configuration, read once at start-up.

The file is ``config.toml`` in the data folder. Every option is declared once
here, with its default and a line of help; ``init`` writes the file from these
declarations and ``docs/config.md`` lists them. Durations ("90s", "5m", "24h")
and sizes ("10GiB") are parsed at load, so the rest of the code only sees
seconds and bytes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from priv_network.errors import ConfigError

CONFIG_FILE = "config.toml"
DATA_ENV = "PRIV_NETWORK_DATA"
DATABASE_URL_ENV = "PRIV_NETWORK_DATABASE_URL"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_HOSTNAME = re.compile(r"^[\w.-]+$")  # letters (IDN too), digits, dots, hyphens
_TOML_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    None: 1,
}


def parse_duration(value: str | int | float) -> float:
    """Parse "90s", "5m", "24h", "7d" (or a number of seconds)."""
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"not a duration: {value!r} (use a number of seconds >= 0)")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"not a duration: {value!r} (use e.g. 90s, 5m, 24h, 7d)")
    match = _DURATION.match(value)
    if not match:
        raise ConfigError(f"not a duration: {value!r} (use e.g. 90s, 5m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: str | int) -> int:
    """Parse "10GiB", "500MB" (or a number of bytes)."""
    if isinstance(value, bool):
        raise ConfigError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"not a size: {value!r} (use a number of bytes >= 0)")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"not a size: {value!r} (use e.g. 500MiB, 10GiB)")
    match = _SIZE.match(value)
    if not match:
        raise ConfigError(f"not a size: {value!r} (use e.g. 500MiB, 10GiB)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_listen(value: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 as [::1]:PORT)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"listen address must be HOST:PORT, got {value!r}")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"listen port must be from 1 to 65535, got {value!r}")
    return host.strip("[]"), int(port)


def check_public_url(value: str) -> str:
    """Check a public URL: http(s)://HOST[:PORT][/PATH], nothing else. Returns it unchanged."""
    shown = value if len(value) <= 100 else value[:100] + "..."
    usage = f"public URL must look like http(s)://HOST[:PORT][/PATH], got {shown!r}"
    if not value or value != value.strip() or any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(usage)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (parsed lazily: a bad port fails only here)
    except ValueError:
        raise ConfigError(usage) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise ConfigError(usage)
    if not parts.netloc.startswith("[") and not _HOSTNAME.match(parts.hostname):
        raise ConfigError(usage)
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ConfigError(f"{usage} (no query or fragment)")
    return value


def _setting(default: Any, help: str, kind: str = "str") -> Any:
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass(frozen=True)
class NodeSection:
    name: str = _setting("node", "Human-readable name of this node, shown to peers.")
    listen: str = _setting("127.0.0.1:8700", "HOST:PORT the node's one HTTP server listens on.")
    url: str = _setting(
        "", "Public URL peers use to reach this node, http(s)://HOST[:PORT][/PATH]; empty means http://LISTEN."
    )

    @property
    def listen_host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_listen(self.listen)[1]

    @property
    def public_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        host, port = parse_listen(self.listen)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{port}"


@dataclass(frozen=True)
class DatabaseSection:
    url: str = _setting(
        "",
        "SQLAlchemy async URL. Empty: SQLite (WAL) at DATA/node.db. "
        f"The environment variable {DATABASE_URL_ENV} overrides it.",
    )


@dataclass(frozen=True)
class StoreSection:
    path: str = _setting("", "Folder of the content store. Empty: DATA/store.")
    block_size: int = _setting(
        1024 * 1024,
        "Block size of the per-item block-hash manifest, in bytes (power of two, 64 KiB-16 MiB).",
        "size",
    )
    min_free: int = _setting(
        256 * 1024 * 1024,
        "Refuse to ingest when the store's disk would have less than this free.",
        "size",
    )
    hash_workers: int = _setting(2, "Threads that hash, copy and probe files during ingest.", "int")
    pin_budget: int = _setting(
        0,
        "Most bytes pinned copies of peers' items may take; the least recently watched go first. 0: no limit.",
        "size",
    )


@dataclass(frozen=True)
class HttpSection:
    shutdown_timeout: float = _setting(
        10.0, "On SIGINT/SIGTERM, how long in-flight requests may take to finish.", "duration"
    )
    admin_token_file: str = _setting("admin.token", "File (relative to DATA) holding the CLI's admin credential.")


@dataclass(frozen=True)
class SyncSection:
    interval: float = _setting(60.0, "How often the manager polls every peer's changes feed.", "duration")
    jitter: float = _setting(0.2, "Random extra delay, as a fraction of the interval.", "float")
    page_size: int = _setting(1000, "Feed entries fetched per request.", "int")
    max_concurrent: int = _setting(8, "Peers polled at the same time.", "int")
    timeout: float = _setting(30.0, "Time limit for one request to a peer.", "duration")
    backoff_min: float = _setting(5.0, "First retry delay after a peer fails.", "duration")
    backoff_max: float = _setting(3600.0, "Longest retry delay for a peer that keeps failing.", "duration")
    at_start: bool = _setting(
        True,
        "Poll every peer a few seconds after start-up: they learn at once that this node is back,"
        " and its view of them is fresh instead of as it was when it stopped.",
        "bool",
    )


@dataclass(frozen=True)
class NetworkSection:
    signature_window: float = _setting(
        60.0, "How old (or how far in the future) a signed request may be; clocks must agree this well.", "duration"
    )


@dataclass(frozen=True)
class UploadsSection:
    max_size: int = _setting(64 * 1024**3, "Largest file a browser upload may be.", "size")
    expiry: float = _setting(24 * 3600.0, "An unfinished upload is swept this long after its last change.", "duration")


@dataclass(frozen=True)
class DownloadsSection:
    workers: int = _setting(2, "Downloads that run at the same time.", "int")
    allow_private: bool = _setting(
        False, "Allow URLs on private, loopback and link-local addresses (off: protects your LAN).", "bool"
    )
    allowed_networks: tuple[str, ...] = _setting(
        (),
        'Addresses or networks downloads may reach even when allow_private is off, e.g. a NAS: `["192.168.1.10/32"]`.',
        "list",
    )
    max_filesize: int = _setting(0, "Refuse downloads larger than this (0: no limit).", "size")
    socket_timeout: float = _setting(30.0, "Network time limit for one read of a download.", "duration")


@dataclass(frozen=True)
class PlexSection:
    mode: str = _setting("reference", "reference: play Plex's files where they are; copy: copy them into the store.")
    url: str = _setting("", "Plex server for scheduled re-imports (empty: only `import-plex` imports).")
    token: str = _setting("", "Plex token for scheduled re-imports.")
    section: str = _setting("", "Only this library section (empty: all movie and show sections).")
    interval: float = _setting(0.0, "Re-import from Plex this often (0: never).", "duration")
    visibility: str = _setting("private", "Visibility of imported items.")


@dataclass(frozen=True)
class FoldersSection:
    paths: tuple[str, ...] = _setting((), "Folders rescanned on a schedule and by `priv-network scan`.", "list")
    interval: float = _setting(900.0, "How often watched folders are rescanned.", "duration")
    visibility: str = _setting("private", "Visibility of items found in watched folders.")


@dataclass(frozen=True)
class CommunitySection:
    view_threshold: float = _setting(30.0, "Playback that counts as a view (or half of a shorter item).", "duration")
    view_window: float = _setting(6 * 3600.0, "A user's views of one item count at most once per this.", "duration")
    comment_max_length: int = _setting(5000, "Longest comment, in characters.", "int")


@dataclass(frozen=True)
class LogSection:
    level: str = _setting("INFO", "Log level: DEBUG, INFO, WARNING or ERROR.")


SECTIONS: dict[str, type] = {
    "node": NodeSection,
    "database": DatabaseSection,
    "store": StoreSection,
    "http": HttpSection,
    "sync": SyncSection,
    "network": NetworkSection,
    "uploads": UploadsSection,
    "downloads": DownloadsSection,
    "plex": PlexSection,
    "folders": FoldersSection,
    "community": CommunitySection,
    "log": LogSection,
}


@dataclass(frozen=True)
class Config:
    data_dir: Path
    node: NodeSection = field(default_factory=NodeSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    store: StoreSection = field(default_factory=StoreSection)
    http: HttpSection = field(default_factory=HttpSection)
    sync: SyncSection = field(default_factory=SyncSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    uploads: UploadsSection = field(default_factory=UploadsSection)
    downloads: DownloadsSection = field(default_factory=DownloadsSection)
    plex: PlexSection = field(default_factory=PlexSection)
    folders: FoldersSection = field(default_factory=FoldersSection)
    community: CommunitySection = field(default_factory=CommunitySection)
    log: LogSection = field(default_factory=LogSection)

    @property
    def database_url(self) -> str:
        env = os.environ.get(DATABASE_URL_ENV)
        if env:
            return env
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.data_dir / 'node.db'}"

    @property
    def store_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_dir / "store"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "node.key"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / self.http.admin_token_file

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "node.lock"


def _convert(section: str, f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.metadata.get("kind", "str")
    where = f"[{section}] {f.name}"
    try:
        if kind == "duration":
            return parse_duration(value)
        if kind == "size":
            return parse_size(value)
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where} must be an integer, got {value!r}")
            return value
        if kind == "list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of strings, got {value!r}")
            return tuple(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where} must be a number, got {value!r}")
            return float(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    except ConfigError as exc:
        if str(exc).startswith("["):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def config_from_dict(data_dir: Path, raw: dict[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        cls = SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"unknown config section [{name}]; known: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, item in value.items():
            if key not in fields:
                raise ConfigError(f"unknown option {key!r} in [{name}]")
            kwargs[key] = _convert(name, fields[key], item)
        sections[name] = cls(**kwargs)
    config = Config(data_dir=data_dir, **sections)
    validate(config)
    return config


def validate(config: Config) -> None:
    parse_listen(config.node.listen)
    if config.node.url:
        try:
            check_public_url(config.node.url)
        except ConfigError as exc:
            raise ConfigError(f"[node] url: {exc}") from None
    bs = config.store.block_size
    if bs < 64 * 1024 or bs > 16 * 1024 * 1024 or bs & (bs - 1):
        raise ConfigError("[store] block_size must be a power of two between 64 KiB and 16 MiB")
    if config.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"[log] level must be DEBUG, INFO, WARNING or ERROR, not {config.log.level!r}")
    if config.plex.mode not in ("reference", "copy"):
        raise ConfigError("[plex] mode must be reference or copy")
    for net in config.downloads.allowed_networks:
        try:
            ipaddress.ip_network(net.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                f"[downloads] allowed_networks: {net!r} is not an address or network (e.g. 192.168.1.10/32)"
            ) from None
    if config.downloads.workers < 1:
        raise ConfigError("[downloads] workers must be at least 1")
    if config.store.hash_workers < 1:
        raise ConfigError("[store] hash_workers must be at least 1")
    if config.sync.interval <= 0 or config.sync.page_size < 1 or config.sync.max_concurrent < 1:
        raise ConfigError("[sync] interval, page_size and max_concurrent must be positive")
    if not 0 < config.sync.backoff_min <= config.sync.backoff_max:
        raise ConfigError("[sync] backoff_min must be positive and at most backoff_max")
    if not 1 <= config.community.comment_max_length <= 20000:
        raise ConfigError("[community] comment_max_length must be between 1 and 20000")
    if config.community.view_threshold <= 0 or config.community.view_window < 0:
        raise ConfigError("[community] view_threshold must be positive and view_window not negative")
    if config.network.signature_window < 5:
        raise ConfigError("[network] signature_window must be at least 5s")


def load_config(data_dir: Path) -> Config:
    path = data_dir / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no node in {data_dir} (missing {CONFIG_FILE}); run `priv-network init --name NAME` first"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return config_from_dict(data_dir, raw)


def _toml_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    # TOML basic strings may not hold raw control characters (tab excepted).
    escaped = _TOML_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


def render_config(overrides: dict[str, dict[str, Any]]) -> str:
    """The config file text: every option, commented with its help."""
    lines = ["# priv_network node configuration. Every option: docs/config.md", ""]
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            lines.append(f"# {f.metadata['help']}")
            value = overrides.get(name, {}).get(f.name, f.default)
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def settings_table() -> list[tuple[str, str, str, str]]:
    """(section, option, default, help) for every option: the source of docs/config.md."""
    rows = []
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((name, f.name, _toml_value(f.default), f.metadata["help"]))
    return rows
