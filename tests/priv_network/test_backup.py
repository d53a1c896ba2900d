"""Backup, wipe, restore: the same node comes back; bad archives are refused before anything is written."""

from __future__ import annotations

import os
import shutil
import signal
import tarfile
import time
import urllib.request
from pathlib import Path

from tests.conftest import Cli, free_port


def wait_healthy(port: int, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("node did not start")


def _gzipped(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def test_backup_wipe_restore_keeps_identity_and_items(cli: Cli, media_dir: Path, tmp_path: Path) -> None:
    if "PRIV_NETWORK_DATABASE_URL" in cli.env:
        # On PostgreSQL the archive holds identity and config only (pg_dump covers the database).
        cli.env = {k: v for k, v in cli.env.items() if k != "PRIV_NETWORK_DATABASE_URL"}
    port = free_port()
    init = cli.run("init", "--name", "alice", "--listen", f"127.0.0.1:{port}")
    assert init.returncode == 0, init.stderr
    node_id = init.stdout.strip()
    server = cli.popen("serve")
    try:
        wait_healthy(port)
        assert cli.run("add", str(media_dir)).returncode == 0
        archive = tmp_path / "alice.tar.gz"
        result = cli.run("backup", str(archive))
        assert result.returncode == 0, result.stderr
        again = cli.run("backup", str(archive))
        assert again.returncode == 1 and "already exists" in again.stderr
        unwritable = cli.run("backup", "/proc/nope/alice.tar.gz")
        assert unwritable.returncode == 1 and len(unwritable.stderr.strip().splitlines()) == 1
        # The name says the format: a name that says another one is refused, nothing written.
        zipped = cli.run("backup", str(tmp_path / "alice.zip"))
        assert zipped.returncode == 1 and "name it .tar.gz" in zipped.stderr
        assert not (tmp_path / "alice.zip").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    # offline backup too (the node is stopped: the CLI takes the folder's lock itself)
    offline = cli.run("backup", str(tmp_path / "offline.tar"), "--store")
    assert offline.returncode == 0, offline.stderr
    # The name says whether it is compressed: .tar is not, .tar.gz is, with or without the store.
    assert not _gzipped(tmp_path / "offline.tar") and _gzipped(archive)
    zipped = cli.run("backup", str(tmp_path / "offline-store.tar.gz"), "--store")
    assert zipped.returncode == 0, zipped.stderr
    assert _gzipped(tmp_path / "offline-store.tar.gz")
    with tarfile.open(tmp_path / "offline-store.tar.gz", "r:gz") as tar:
        assert any(name.startswith("store/") for name in tar.getnames())

    shutil.rmtree(cli.data)
    restored = cli.run("restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.strip() == node_id
    assert (cli.data / "node.key").stat().st_mode & 0o777 == 0o600
    for path in cli.data.rglob("*"):  # everything restored is the owner's only
        assert path.stat().st_mode & 0o077 == 0, path
    server = cli.popen("serve")
    try:
        wait_healthy(port)
        search = cli.run("search", "spider", "--json")
        assert search.returncode == 0 and "Spider-Man" in search.stdout
        status = cli.run("status", "--json")
        assert node_id in status.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)

    busy = cli.run("restore", str(archive))
    assert busy.returncode == 1 and "not empty" in busy.stderr


def test_corrupted_archive_is_refused_before_anything_is_written(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(os.urandom(2048))
    result = cli.run("restore", str(bad))
    assert result.returncode == 1 and "bad.tar.gz is not a backup archive" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not cli.data.exists()

    # a well-formed archive whose member does not match its checksum
    good_dir = tmp_path / "parts"
    good_dir.mkdir()
    (good_dir / "manifest.json").write_text(
        '{"format": 1, "node_id": "X", "files": {"config.toml": "00", "node.key": "00"}}'
    )
    (good_dir / "config.toml").write_text("[node]\nname='x'\n")
    (good_dir / "node.key").write_text("not a key")
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(tampered, "w") as tar:
        for name in ("manifest.json", "config.toml", "node.key"):
            tar.add(good_dir / name, arcname=name)
    result = cli.run("restore", str(tampered))
    assert result.returncode == 1 and "checksum" in result.stderr
    assert not cli.data.exists()
