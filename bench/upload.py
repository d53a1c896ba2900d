"""Resumable upload: tus 1.0 upload of a 1 GiB file in 8 MiB chunks vs ``cp`` of the same file.

    .venv/bin/python bench/upload.py [--size-mib 1024] [--chunk-mib 8] [--rounds 3]

A real node (``priv-network init`` + ``serve`` on 127.0.0.1, pinned to core
0). The client (this process, pinned to core 1) is plain aiohttp speaking
tus 1.0 as a browser's tus-js-client does: ``POST /api/v1/uploads``
(``Upload-Length``, ``Upload-Metadata`` with the file name and visibility),
then one ``PATCH`` per 8 MiB chunk (``Upload-Offset``,
``application/offset+octet-stream``), one after the other. The server writes
each chunk to the upload's file, hashing it as it goes (BLAKE3 of the whole
file and of each block), and fdatasyncs it before it answers; the last PATCH
also finishes the upload (fsync, rename into the store, probe, database). The
time is from the POST to the last answer. The item is removed after each round
so that every round uploads new content.

Baseline, in the same round: ``cp`` of the same file to the same disk
(bench/out), also pinned to core 1; shown too: ``cp`` followed by an fsync
of the copy (coreutils ``sync FILE``), since the upload makes its bytes
durable. Dirty pages are flushed (``sync``) and the source is read into the
page cache before each run. Goal: cp time / upload time >= 0.5; the node's
RSS (sampled every 20 ms) grows by under 50 MiB during an upload.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    CLIENT_CORE,
    SERVER_CORE,
    MiB,
    RssSampler,
    header,
    install_cleanup,
    machine_line,
    make_random_file,
    median,
    read_through,
    save_result,
    temp_dir,
    verdict,
)
from _fed import FedNode, PySpy, cpu_seconds

GOAL = 0.5
GOAL_RSS_MIB = 50
PROFILE_UNDER = (
    "Uploads._receive",
    "readchunk",
    "data_received",
    "_Spool.add",
    "_write_and_hash",
    "start_writeback",
    "StreamHasher.update",
    "Uploads._complete",
    "adopt_hashed",
    "probe",
    "auth_middleware",
    "update_upload",
    "aiosqlite",
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def tus_upload(node: FedNode, path: Path, chunk: int) -> dict[str, Any]:
    size = path.stat().st_size
    auth = {"Authorization": f"Bearer {node.token}", "Tus-Resumable": "1.0.0"}
    timings: dict[str, Any] = {"patches": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        t0 = time.perf_counter()
        headers = {**auth, "Upload-Length": str(size)}
        headers["Upload-Metadata"] = f"filename {b64(path.name)},visibility {b64('private')}"
        async with session.post(f"{node.url}/api/v1/uploads", headers=headers) as resp:
            if resp.status != 201:
                raise SystemExit(f"create: HTTP {resp.status} {await resp.text()}")
            location = resp.headers["Location"]
        offset, item_id = 0, None
        with open(path, "rb", buffering=0) as fh:
            while offset < size:
                data = fh.read(chunk)
                p0 = time.perf_counter()
                headers = {
                    **auth,
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                }
                async with session.patch(f"{node.url}{location}", data=data, headers=headers) as resp:
                    if resp.status != 204:
                        raise SystemExit(f"PATCH at {offset}: HTTP {resp.status} {await resp.text()}")
                    offset = int(resp.headers["Upload-Offset"])
                    item_id = resp.headers.get("X-Item-Id") or item_id
                timings["patches"].append(time.perf_counter() - p0)
        timings["total"] = time.perf_counter() - t0
        timings["item_id"] = item_id
    return timings


def cp_once(src: Path, dest: Path, *, fsync: bool) -> float:
    t0 = time.perf_counter()
    subprocess.run(["taskset", "-c", CLIENT_CORE, "cp", str(src), str(dest)], check=True)
    if fsync:
        subprocess.run(["sync", str(dest)], check=True)
    elapsed = time.perf_counter() - t0
    dest.unlink()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the uploaded file (default 1024)")
    ap.add_argument("--chunk-mib", type=int, default=8, help="PATCH size (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy upload")
    args = ap.parse_args()
    size, chunk = args.size_mib * MiB, args.chunk_mib * MiB
    if shutil.which("cp") is None or shutil.which("taskset") is None:
        raise SystemExit("cp and taskset are needed (coreutils, util-linux)")

    install_cleanup()
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    print(f"upload benchmark: {args.size_mib} MiB in {args.chunk_mib} MiB PATCHes; node on core {SERVER_CORE}")
    print(f"machine: {machine_line()}", flush=True)
    root = temp_dir("upload-")
    node = FedNode(root, "node", "127.0.0.1", sections={"sync": {"interval": "1h"}, "store": {"min_free": "0"}})
    try:
        node.serve(core=SERVER_CORE)
        src = make_random_file(root / "movie.bin", size)
        header(f"{args.rounds} rounds: tus upload vs cp vs cp + fsync (s)")
        up_t: list[float] = []
        last_t: list[float] = []
        cp_t: list[float] = []
        cps_t: list[float] = []
        growth: list[float] = []
        cpu: list[float] = []
        for r in range(args.rounds):
            order = ["upload", "cp", "cp+fsync"] if r % 2 == 0 else ["cp+fsync", "cp", "upload"]
            for what in order:
                os.sync()
                read_through(src)
                if what == "upload":
                    c0 = cpu_seconds(node.pid)
                    with RssSampler(node.pid) as rss:
                        res = asyncio.run(tus_upload(node, src, chunk))
                    cpu.append(cpu_seconds(node.pid) - c0)
                    growth.append((rss.peak - rss.before) / MiB)
                    up_t.append(res["total"])
                    last_t.append(res["patches"][-1])
                    if not res["item_id"]:
                        raise SystemExit(f"the upload finished without an item\n{node.log_tail()}")
                    node.api("DELETE", f"/api/v1/items/{res['item_id']}")
                elif what == "cp":
                    cp_t.append(cp_once(src, root / "copy.bin", fsync=False))
                else:
                    cps_t.append(cp_once(src, root / "copy.bin", fsync=True))
            print(
                f"  round {r + 1}: upload {up_t[-1]:.2f} s ({args.size_mib / up_t[-1]:.0f} MiB/s; last PATCH, which"
                f" finishes the upload, {last_t[-1]:.2f} s), cp {cp_t[-1]:.2f} s, cp + fsync {cps_t[-1]:.2f} s;"
                f" ratio {cp_t[-1] / up_t[-1]:.2f}; node CPU {cpu[-1]:.2f} s, RSS growth {growth[-1]:.1f} MiB",
                flush=True,
            )
        profile = ""
        if not args.no_profile:
            spy = PySpy(node.pid, root / "pyspy-upload.txt")
            if spy.start():
                res = asyncio.run(tus_upload(node, src, chunk))
                spy.stop()
                node.api("DELETE", f"/api/v1/items/{res['item_id']}")
                profile = spy.summary(top=20, inclusive=PROFILE_UNDER)
                header("py-spy of the node during one more upload")
                print("  " + profile.replace("\n", "\n  "))
        ratio = median([c / u for c, u in zip(cp_t, up_t, strict=True)])
        ratio_sync = median([c / u for c, u in zip(cps_t, up_t, strict=True)])
        ok = ratio >= GOAL
        rss_ok = max(growth) < GOAL_RSS_MIB
        summary = {
            "size_mib": args.size_mib,
            "chunk_mib": args.chunk_mib,
            "upload_s": median(up_t),
            "upload_mib_s": args.size_mib / median(up_t),
            "finish_s": median(last_t),
            "cp_s": median(cp_t),
            "cp_fsync_s": median(cps_t),
            "ratio": ratio,
            "ratio_cp_fsync": ratio_sync,
            "node_cpu_s": median(cpu),
            "rss_growth_mib": max(growth),
            "profile": profile,
            "met": ok,
            "rss_met": rss_ok,
        }
        header("results (medians over rounds)")
        print(
            f"tus upload {median(up_t):.2f} s = {args.size_mib / median(up_t):.0f} MiB/s vs cp {median(cp_t):.2f} s:"
            f" ratio {ratio:.2f}   goal >= {GOAL}: {verdict(ok)}"
        )
        print(
            f"  vs cp + fsync {median(cps_t):.2f} s: ratio {ratio_sync:.2f}; of the upload, the last PATCH"
            f" (fsync, rename, probe) took {median(last_t):.2f} s; node CPU {median(cpu):.2f} s"
        )
        print(
            f"node RSS growth during an upload: {max(growth):.1f} MiB (worst)"
            f"   goal < {GOAL_RSS_MIB} MiB: {verdict(rss_ok)}"
        )
        print(f"saved {save_result('upload', summary)}")
        return 0 if ok and rss_ok else 1
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
