"""Backups of a node: identity, config, database and (optionally) the store, in one archive.

The archive is a tar file, gzip-compressed as its name says (``.tar.gz``,
``.tgz``; ``.tar`` is not; no other name is taken; with the store, whose
media is already compressed, gzip runs at its fastest level) with ``manifest.json`` listing every
member's sha256, so a corrupted archive is refused before anything is
restored. On SQLite the database is copied with SQLite's online backup API,
which gives a consistent snapshot while the node keeps running. On
PostgreSQL the archive holds identity and config; back the database up with
``pg_dump``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from priv_network.config import CONFIG_FILE, Config
from priv_network.errors import Conflict, InvalidInput, PrivNetworkError
from priv_network.identity import NodeIdentity

FORMAT = 1
NEW_FEED_MARKER = "restored-new-feed"
IDENTITY_FILES = (CONFIG_FILE, "node.key")
OPTIONAL_FILES = ("admin.token", "node.id")
STORE_FOLDERS = ("blobs", "posters")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def backup(config: Config, node_id: str, dest: Path, *, with_store: bool) -> dict[str, Any]:
    """Write the archive to ``dest`` (atomically: a temp file renamed at the end). Blocking."""
    try:
        return _backup(config, node_id, dest, with_store=with_store)
    except OSError as exc:
        raise PrivNetworkError(f"cannot write the backup to {dest}: {exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        raise PrivNetworkError(f"cannot snapshot the database: {exc}") from None


def _backup(config: Config, node_id: str, dest: Path, *, with_store: bool) -> dict[str, Any]:
    dest = dest.expanduser().absolute()
    if not dest.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise InvalidInput(f"{dest.name}: a backup is a tar file; name it .tar.gz or .tgz (compressed) or .tar")
    if dest.exists():
        raise Conflict(f"{dest} already exists; choose a new file name")
    if not dest.parent.is_dir():
        raise InvalidInput(f"{dest.parent} is not a folder")
    if not os.access(dest.parent, os.W_OK):
        raise InvalidInput(f"cannot write to {dest.parent} (permission denied)")
    sqlite_db = config.database_url.startswith("sqlite")
    notes = [] if sqlite_db else ["the database is PostgreSQL: back it up with pg_dump (not in this archive)"]
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pn-backup-") as tmp:
        staging = Path(tmp)
        members: dict[str, Path] = {}
        for name in (*IDENTITY_FILES, *OPTIONAL_FILES):
            src = config.data_dir / name
            if src.exists():
                members[name] = src
        if sqlite_db:
            db_path = Path(config.database_url.split("///", 1)[1])
            snapshot = staging / "node.db"
            source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
            target = sqlite3.connect(snapshot)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
            members["node.db"] = snapshot
        if with_store:
            for folder in STORE_FOLDERS:
                root = config.store_path / folder
                for path in sorted(root.rglob("*")) if root.exists() else []:
                    if path.is_file():
                        members[f"store/{folder}/{path.relative_to(root)}"] = path
        manifest = {
            "format": FORMAT,
            "node_id": node_id,
            "created_at": time.time(),
            "store": with_store,
            "notes": notes,
            "files": {name: _sha256(path) for name, path in members.items()},
        }
        part = staging / "archive.part"
        compress = _compressed(dest, with_store)
        try:
            with (
                tarfile.open(part, "w:gz", compresslevel=1 if with_store else 9)
                if compress
                else tarfile.open(part, "w")
            ) as tar:
                data = json.dumps(manifest, indent=1).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size = len(data)
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
                for name, path in members.items():
                    tar.add(path, arcname=name, recursive=False)
            with open(part, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(part, 0o600)
            os.replace(part, dest)
        except OSError as exc:
            raise PrivNetworkError(f"cannot write the backup: {exc.strerror}") from None
    return {"path": str(dest), "files": len(members), "bytes": dest.stat().st_size, "notes": notes}


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _compressed(dest: Path, with_store: bool) -> bool:
    """gzip, as the file name says: .tar.gz and .tgz yes, .tar no."""
    return dest.name.lower().endswith((".gz", ".tgz"))


def restore(archive: Path, target: Path) -> dict[str, Any]:
    """Bring a node back into an empty folder. Everything is checked before the folder is created."""
    archive = archive.expanduser().absolute()
    target = target.expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise Conflict(f"{target} is not empty; restore needs a new or empty folder")
    if not archive.is_file():
        raise InvalidInput(f"{archive}: no such file")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".pn-restore-") as tmp:
        staging = Path(tmp) / "node"
        staging.mkdir(mode=0o700)
        try:
            with tarfile.open(archive, "r:*") as tar:
                names = tar.getnames()
                if "manifest.json" not in names:
                    raise InvalidInput("not a priv_network backup (no manifest.json)")
                for member in tar.getmembers():
                    if not member.isfile() or member.name.startswith(("/", "..")) or "/../" in member.name:
                        raise InvalidInput(f"the archive has an unsafe entry {member.name!r}; refused")
                tar.extractall(staging, filter="data")
        except tarfile.ReadError:
            raise InvalidInput(f"{archive.name} is not a backup archive (a .tar or .tar.gz file)") from None
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise InvalidInput(f"the archive is corrupted or unreadable: {exc}") from None
        try:
            manifest = json.loads((staging / "manifest.json").read_text())
            files: dict[str, str] = manifest["files"]
        except (ValueError, KeyError, TypeError):
            raise InvalidInput("the archive's manifest is damaged; refused") from None
        if manifest.get("format") != FORMAT:
            raise InvalidInput(f"backup format {manifest.get('format')!r} is not supported")
        for name in IDENTITY_FILES:
            if name not in files:
                raise InvalidInput(f"the archive lacks {name}; refused")
        for name, digest in files.items():
            path = staging / name
            if not path.is_file() or _sha256(path) != digest:
                raise InvalidInput(f"{name} in the archive does not match its checksum; nothing was restored")
        (staging / "manifest.json").unlink()
        # Peers' cursors may be ahead of this (older) database: a new feed ID makes them re-read it.
        (staging / NEW_FEED_MARKER).write_text("restored\n")
        for path in staging.rglob("*"):
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
        identity = NodeIdentity.load(staging / "node.key")
        if identity.node_id != manifest.get("node_id"):
            raise InvalidInput("the archive's key does not match its node ID; refused")
        if target.exists():
            target.rmdir()
        shutil.move(str(staging), str(target))
    return {"node_id": identity.node_id, "path": str(target), "files": len(files), "notes": manifest.get("notes", [])}
