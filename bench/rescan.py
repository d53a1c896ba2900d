"""Rescan of an unchanged watched folder of 10,000 files.

    .venv/bin/python bench/rescan.py [--files 10000] [--rescans 3] [--no-profile]

A real node (``priv-network init`` + ``serve`` on 127.0.0.1, pinned to core
0) with the folder in ``[folders] paths`` (visibility private). The folder
is empty when the node starts (the scheduled scan at start-up finds
nothing; a first ``POST /api/v1/scan`` waits for it), then 10,000 small
files (1-4 KiB, 100 sub-folders) are written. ``POST /api/v1/scan`` (what
``priv-network scan`` sends) ingests them all, once (timed, for reference);
then the unchanged folder is scanned again ``--rescans`` times: goal, the
median rescan under 5 s.

Baseline, in the same run: what any rescan must do at least, a Python
``os.walk`` + ``stat`` of every file of the folder (cache warm, like the
rescan's). Ratio = walk time / rescan time. Unless ``--no-profile``, one more
rescan is sampled with py-spy (PyPI) in the node to say where the time goes.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

from _common import SERVER_CORE, header, install_cleanup, machine_line, median, save_result, temp_dir, verdict
from _fed import FedNode, PySpy

GOAL_S = 5.0
PROFILE_UNDER = (
    "ingest_paths",
    "_collect",
    "source_files_for",
    "items_by_hashes",
    "ContentManager._info",
    "forget_missing_files",
    "source_files_under",
    "exists",
    "run_in_executor",
    "json_response",
    "aiosqlite",
)


def walk_stat(folder: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            os.stat(os.path.join(dirpath, name))
            n += 1
    return time.perf_counter() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="files in the watched folder (default 10,000)")
    ap.add_argument("--rescans", type=int, default=3, help="timed rescans of the unchanged folder (default 3)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy rescan")
    args = ap.parse_args()

    install_cleanup()
    print(f"rescan benchmark: {args.files:,} files in a watched folder; node on core {SERVER_CORE}")
    print(f"machine: {machine_line()}", flush=True)
    root = temp_dir("rescan-")
    folder = root / "watched"
    folder.mkdir()
    sections = {
        "sync": {"interval": "1h"},
        "store": {"min_free": "0"},
        "folders": {"paths": [str(folder)], "visibility": "private"},
    }
    node = FedNode(root, "node", "127.0.0.1", sections=sections)
    try:
        node.serve(core=SERVER_CORE)
        node.api("POST", "/api/v1/scan")  # waits for the scheduled scan of the (empty) folder
        rng = random.Random(3)
        for i in range(args.files):
            sub = folder / f"d{i // 100:03d}"
            sub.mkdir(exist_ok=True)
            (sub / f"clip {i:05d}.bin").write_bytes(rng.randbytes(rng.randrange(1024, 4096)))
        os.sync()

        header(f"first scan: ingest {args.files:,} files")
        t0 = time.perf_counter()
        first = node.api("POST", "/api/v1/scan", timeout=3600)
        first_s = time.perf_counter() - t0
        print(
            f"  {first_s:.1f} s: {first['added']} added, {first['unchanged']} unchanged, {len(first['failed'])} failed"
        )
        if first["added"] != args.files:
            raise SystemExit(f"expected {args.files} added: {first}")

        header(f"rescans of the unchanged folder ({args.rescans}) and the os.walk + stat baseline")
        rescans: list[float] = []
        walks: list[float] = []
        for r in range(args.rescans):
            w, n = walk_stat(folder)
            walks.append(w)
            t0 = time.perf_counter()
            again = node.api("POST", "/api/v1/scan", timeout=3600)
            rescans.append(time.perf_counter() - t0)
            assert again["unchanged"] == args.files and again["added"] == 0 and again["removed"] == 0, again
            print(f"  rescan {r + 1}: {rescans[-1]:.2f} s; walk + stat of {n:,} files {w:.3f} s", flush=True)

        profile = ""
        if not args.no_profile:
            spy = PySpy(node.pid, root / "pyspy-rescan.txt", rate=200)
            if spy.start():
                node.api("POST", "/api/v1/scan", timeout=3600)
                spy.stop()
                profile = spy.summary(top=20, inclusive=PROFILE_UNDER)

        ratio = median(walks) / median(rescans)
        ok = median(rescans) < GOAL_S
        summary = {
            "files": args.files,
            "first_scan_s": first_s,
            "rescan_s": median(rescans),
            "rescans": rescans,
            "walk_stat_s": median(walks),
            "ratio": ratio,
            "profile": profile,
            "goal_s": GOAL_S,
            "met": ok,
        }
        if profile:
            header("py-spy of the node during one more rescan")
            print("  " + profile.replace("\n", "\n  "))
        header("results")
        print(
            f"rescan of {args.files:,} unchanged files: {median(rescans):.2f} s (median of {args.rescans})"
            f"   goal < {GOAL_S:g} s: {verdict(ok)}"
        )
        print(
            f"baseline os.walk + stat {median(walks):.3f} s: ratio {ratio:.3f}; first scan (ingest) {first_s:.1f} s"
            f" = {first_s / args.files * 1000:.1f} ms per file"
        )
        print(f"saved {save_result('rescan', summary)}")
        return 0 if ok else 1
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
