"""Brokered streaming and pinning of a 1 GiB file: owner -> broker -> client, with verification.

    .venv/bin/python bench/broker.py [--size-mib 1024] [--rounds 5] [--pin-rounds 3] [--no-profile]
                                     [--only memory|full|ranges|pin|seek ...]

Two real nodes (``priv-network init`` + ``serve``, both on 127.0.0.1, each
on its own port, as bench/_loader.py speaks to 127.0.0.1): the owner O
(pinned to core 1) holds a 1 GiB file of random bytes (``add``, visibility
``network``); the broker B (pinned to core 0) joined
O's group and synced its catalog. Both run with ``[sync] interval = 1h``.

Streaming: the load client of bench/stream.py (bench/_loader.py, raw
sockets, core 1) requests ``GET /api/v1/items/{id}/content`` from B with B's
token (brokered: B fetches whole 1 MiB blocks from O with signed range
requests, checks each block's BLAKE3 against O's manifest, trims, relays),
and, as the baseline in the same round, the same URL from O with O's token
(O sends its own file with sendfile). Rounds alternate who goes first; the
ratio is the median of per-round ratios. Figures: full file, one stream
(GiB/s), goal brokered / direct >= 0.5; random 1 MiB ranges, 32 concurrent
clients (requests/s), shown as a ratio too. CPU seconds of O and B per run
are recorded to say where the time goes, and (unless ``--no-profile``) one
extra brokered run of each kind is sampled with py-spy (PyPI) in B.

Memory: B's RSS (sampled every 20 ms) while 32 clients each stream the whole
file through it for 8 s; goal: growth under 150 MiB.

Pinning: ``POST /api/v1/pins`` on B (what ``priv-network pin ID`` sends),
then ``GET /api/v1/pins`` every 50 ms until the pin is complete (B fetches
every block from O, checks it, writes it, checks the whole file), against
``curl`` downloading the same file from O's content URL with O's admin token
into a file on the same disk, in the same round (dirty pages flushed with
sync before each; the pin is removed again after each round). Goal: curl
time / pin time >= 0.7.

Seeking: time to first byte of ``GET .../content`` with ``Range: bytes=N-``
for N in the middle half of the file, each on a new connection (what a
player's seek costs at worst), through B and, as the baseline in the same
round, straight from O. The first seek through B, right after it synced the
catalog and before anything else asked for the item (so it also fetches the
manifest), is reported on its own. Goal: every seek through B under 100 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH,
    CLIENT_CORE,
    PYTHON,
    GiB,
    MiB,
    RssSampler,
    header,
    install_cleanup,
    machine_line,
    make_random_file,
    median,
    read_through,
    run,
    save_result,
    taskset,
    temp_dir,
    verdict,
)
from _fed import FedNode, PySpy, cpu_seconds, wait_for

GOAL_FULL = 0.5
GOAL_RSS_MIB = 150
GOAL_PIN = 0.7
GOAL_SEEK_MS = 100.0
PARTS = ("memory", "full", "ranges", "pin", "seek")
OWNER_CORE, BROKER_CORE = "1", "0"
PROFILE_UNDER = (
    "_relay",
    "BlockReader.read",
    "StreamResponse.write",
    "write (aiohttp",
    "Broker.stream",
    "remote_item",
    "Broker.manifest",
    "local_file",
    "Traffic.add",
    "Signer.sign",
)
PIN_PROFILE_UNDER = (
    "Pinner._copy",
    "BlockReader.read",
    "Pinner._write",
    "Pins.write_block",
    "PinWriter.append",
    "update_pin",
    "PinWriter.commit",
    "PinWriter._check_prefix",
    "aiosqlite",
)


def load(node: FedNode, path: str, mode: str, *, conns: int, seconds: float, size: int, seed: int) -> dict[str, Any]:
    import json

    cmd = taskset(
        CLIENT_CORE,
        [
            PYTHON,
            str(BENCH / "_loader.py"),
            f"--mode={mode}",
            f"--port={node.port}",
            f"--path={path}",
            f"--token={node.token}",
            f"--conns={conns}",
            f"--seconds={seconds}",
            "--warmup=0.5",
            f"--size={size}",
            f"--seed={seed}",
        ],
    )
    out = run(cmd, timeout=seconds + 120)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["error_count"]:
        raise SystemExit(f"load client errors against {node.name}: {result['errors']}\n{node.log_tail()}")
    return result


def first_byte_ms(node: FedNode, path: str, offset: int) -> float:
    """Milliseconds from sending ``GET path`` with ``Range: bytes=offset-`` to the first body byte (new connection)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {node.host}:{node.port}\r\nAuthorization: Bearer {node.token}\r\n"
        f"Range: bytes={offset}-\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((node.host, node.port), timeout=10) as sock:
        t0 = time.perf_counter()
        sock.sendall(request)
        got = b""
        while (end := got.find(b"\r\n\r\n")) < 0 or len(got) <= end + 4:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit(f"{node.name} closed the connection before the first byte: {got[:200]!r}")
            got += chunk
        elapsed = (time.perf_counter() - t0) * 1000
    if not got.startswith(b"HTTP/1.1 206"):
        status = got.split(b"\r\n", 1)[0]
        raise SystemExit(f"{node.name} answered a seek with {status!r}")
    return elapsed


def pin_once(broker: FedNode, item_id: str) -> float:
    t0 = time.perf_counter()
    pin = broker.api("POST", "/api/v1/pins", {"id": item_id})
    while pin["state"] != "complete":
        if pin["state"] == "paused":
            raise SystemExit(f"pin paused: {pin['error']}\n{broker.log_tail()}")
        time.sleep(0.05)
        pin = next(p for p in broker.get("/api/v1/pins")["pins"] if p["id"] == item_id)
    elapsed = time.perf_counter() - t0
    broker.api("DELETE", f"/api/v1/pins/{item_id}")
    return elapsed


def curl_once(owner: FedNode, item_id: str, dest: Path) -> float:
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is missing: apt-get install curl")
    cmd = [curl, "-sS", "--fail", "-o", str(dest), "-H", f"Authorization: Bearer {owner.token}"]
    cmd.append(f"{owner.url}/api/v1/items/{item_id}/content")
    t0 = time.perf_counter()
    subprocess.run(taskset(BROKER_CORE, cmd), check=True)
    elapsed = time.perf_counter() - t0
    dest.unlink()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the file (default 1024)")
    ap.add_argument("--rounds", type=int, default=5, help="streaming rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run (default 3)")
    ap.add_argument("--conns", type=int, default=32, help="concurrent clients for ranges and memory (default 32)")
    ap.add_argument("--memory-seconds", type=float, default=8.0, help="length of the memory run (default 8)")
    ap.add_argument("--pin-rounds", type=int, default=3, help="pin-vs-curl rounds (default 3)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    ap.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable; default: all of " + ", ".join(PARTS) + ")",
    )
    args = ap.parse_args()
    size = args.size_mib * MiB
    parts = set(args.only or PARTS)

    install_cleanup()
    print(f"broker benchmark: {args.size_mib} MiB; broker on core {BROKER_CORE}, owner and client on core {OWNER_CORE}")
    print(f"machine: {machine_line()}", flush=True)
    root = temp_dir("broker-")
    quiet = {"sync": {"interval": "1h"}, "store": {"min_free": "0"}}
    # both on 127.0.0.1 (own ports): bench/_loader.py speaks to 127.0.0.1
    owner = FedNode(root, "owner", "127.0.0.1", sections=quiet)
    broker = FedNode(root, "broker", "127.0.0.1", sections=quiet)
    try:
        owner.serve(core=OWNER_CORE)
        broker.serve(core=BROKER_CORE)
        src = make_random_file(root / "media.bin", size)
        item = owner.api("POST", "/api/v1/items", {"paths": [str(src)], "visibility": "network"})["added"][0]
        src.unlink()
        item_id, path = item["id"], item["content_url"]
        blob = owner.data / "store" / "blobs" / item["content_hash"][:2] / item["content_hash"][2:4]
        blob = blob / item["content_hash"]
        broker.join(owner.invite())
        wait_for(lambda: any(h["id"] == item_id for h in broker.search("media")), timeout=60, what="broker sees it")
        read_through(blob)
        seeks = random.Random(7)
        first_seek = first_byte_ms(broker, path, seeks.randrange(size // 4, size * 3 // 4)) if "seek" in parts else 0.0
        load(broker, path, "ranges", conns=1, seconds=0.5, size=size, seed=0)  # fetches the manifest once

        # -- memory
        mem_ok, growth = True, 0.0
        if "memory" in parts:
            header(f"memory: broker RSS while {args.conns} clients stream the whole file ({args.memory_seconds:g} s)")
            with RssSampler(broker.pid) as rss:
                mem = load(broker, path, "full", conns=args.conns, seconds=args.memory_seconds, size=size, seed=0)
            growth = (rss.peak - rss.before) / MiB
            mem_ok = growth < GOAL_RSS_MIB
            print(
                f"RSS before {rss.before / MiB:.0f} MiB, peak {rss.peak / MiB:.0f} MiB, growth {growth:.1f} MiB;"
                f" {args.conns} clients got {mem['bytes_per_s'] / GiB:.2f} GiB/s in total"
                f"   goal < {GOAL_RSS_MIB} MiB: {verdict(mem_ok)}",
                flush=True,
            )

        servers = {"direct": owner, "brokered": broker}

        # -- streaming, direct vs brokered, alternating
        rate: dict[str, dict[str, list[float]]] = {"full": {}, "ranges": {}}
        cpu: dict[str, dict[str, list[dict[str, float]]]] = {"full": {}, "ranges": {}}
        modes = [m for m in (("full", 1, "GiB/s"), ("ranges", args.conns, "req/s")) if m[0] in parts]
        for mode, conns, unit in modes:
            what = "full file, one stream" if mode == "full" else f"random 1 MiB ranges, {conns} concurrent clients"
            header(f"{what} ({unit}, {args.rounds} rounds of {args.seconds:g} s)")
            for r in range(args.rounds):
                order = ["direct", "brokered"] if r % 2 == 0 else ["brokered", "direct"]
                line = []
                for name in order:
                    node = servers[name]
                    c0 = {n.name: cpu_seconds(n.pid) for n in (owner, broker)}
                    res = load(node, path, mode, conns=conns, seconds=args.seconds, size=size, seed=r + 1)
                    used = {k: cpu_seconds(n.pid) - c0[k] for k, n in (("owner", owner), ("broker", broker))}
                    value = res["bytes_per_s"] / GiB if mode == "full" else res["req_per_s"]
                    rate[mode].setdefault(name, []).append(value)
                    total = res["total_bytes"] / GiB if mode == "full" else res["total_requests"]
                    per = {k: v / max(total, 1e-9) for k, v in used.items()}  # CPU s per GiB or per request
                    cpu[mode].setdefault(name, []).append(per)
                    line.append(f"{name} {value:.2f}" if mode == "full" else f"{name} {value:.0f}")
                print(f"  round {r + 1}: " + ", ".join(line), flush=True)

        profiles: dict[str, str] = {}
        if not args.no_profile:
            for mode, conns, _unit in modes:
                spy = PySpy(broker.pid, root / f"pyspy-broker-{mode}.txt")
                if not spy.start():
                    print("(py-spy not available: .venv/bin/pip install py-spy)")
                    break
                load(broker, path, mode, conns=conns, seconds=args.seconds, size=size, seed=99)
                spy.stop()
                profiles[mode] = spy.summary(top=20, inclusive=PROFILE_UNDER)

        # -- seeking: time to first byte, brokered vs direct, alternating
        ttfb: dict[str, list[float]] = {"direct": [], "brokered": []}
        if "seek" in parts:
            header(f"seeks into the middle of the file: time to first byte (ms), {args.rounds} rounds of 20")
            print(f"  first seek through the broker (fetches the manifest too): {first_seek:.1f} ms")
            for r in range(args.rounds):
                for name in ("direct", "brokered") if r % 2 == 0 else ("brokered", "direct"):
                    for _ in range(20):
                        offset = seeks.randrange(size // 4, size * 3 // 4)
                        ttfb[name].append(first_byte_ms(servers[name], path, offset))
                last = {k: v[-20:] for k, v in ttfb.items()}
                print(
                    f"  round {r + 1}: brokered median {median(last['brokered']):.1f} max {max(last['brokered']):.1f},"
                    f" direct median {median(last['direct']):.1f} max {max(last['direct']):.1f}",
                    flush=True,
                )

        # -- pinning vs curl
        pin_t: list[float] = []
        pin_cpu: list[float] = []
        curl_t: list[float] = []
        if "pin" in parts:
            header(f"pinning the file on the broker vs curl from the owner ({args.pin_rounds} rounds, s)")
            for r in range(args.pin_rounds):
                for what in ("curl", "pin") if r % 2 == 0 else ("pin", "curl"):
                    os.sync()
                    read_through(blob)
                    if what == "curl":
                        curl_t.append(curl_once(owner, item_id, root / "curl.out"))
                    else:
                        c0 = cpu_seconds(broker.pid)
                        pin_t.append(pin_once(broker, item_id))
                        pin_cpu.append(cpu_seconds(broker.pid) - c0)
                print(
                    f"  round {r + 1}: pin {pin_t[-1]:.2f} s ({args.size_mib / pin_t[-1]:.0f} MiB/s),"
                    f" curl {curl_t[-1]:.2f} s ({args.size_mib / curl_t[-1]:.0f} MiB/s),"
                    f" ratio {curl_t[-1] / pin_t[-1]:.2f}; broker CPU during the pin {pin_cpu[-1]:.2f} s",
                    flush=True,
                )
            if not args.no_profile:
                spy = PySpy(broker.pid, root / "pyspy-broker-pin.txt")
                if spy.start():
                    pin_once(broker, item_id)
                    spy.stop()
                    profiles["pin"] = spy.summary(top=20, inclusive=PIN_PROFILE_UNDER)

        # -- report
        header("results: medians over rounds; ratio = median of per-round ratios")
        summary: dict[str, Any] = {"size_mib": args.size_mib}
        ok = mem_ok
        for mode, _conns, unit in modes:
            d, b = rate[mode]["direct"], rate[mode]["brokered"]
            ratio = median([x / y for x, y in zip(b, d, strict=True)])
            per_unit = "GiB" if mode == "full" else "request"
            scale = 1.0 if mode == "full" else 1000.0
            cpu_b = {k: median([c[k] for c in cpu[mode]["brokered"]]) * scale for k in ("owner", "broker")}
            cpu_d = {k: median([c[k] for c in cpu[mode]["direct"]]) * scale for k in ("owner", "broker")}
            summary[mode] = {
                "direct": median(d),
                "brokered": median(b),
                "ratio": ratio,
                "rounds": [x / y for x, y in zip(b, d, strict=True)],
                "cpu_brokered": cpu_b,
                "cpu_direct_owner": cpu_d["owner"],
            }
            cpu_txt = (
                f"CPU per {per_unit}: brokered = broker {cpu_b['broker']:.2f} + owner {cpu_b['owner']:.2f},"
                f" direct = owner {cpu_d['owner']:.2f} {'s' if mode == 'full' else 'ms'}"
            )
            extra = ""
            if mode == "full":
                full_ok = ratio >= GOAL_FULL
                ok = ok and full_ok
                summary[mode]["met"] = full_ok
                extra = f"   goal >= {GOAL_FULL}: {verdict(full_ok)}"
            print(
                f"{mode:6} direct {median(d):7.2f} {unit}, brokered {median(b):7.2f} {unit}: ratio {ratio:.2f}{extra}"
            )
            print(f"       {cpu_txt}")
        if "memory" in parts:
            summary["memory"] = {"before_mib": rss.before / MiB, "peak_mib": rss.peak / MiB, "growth_mib": growth}
            summary["memory"]["met"] = mem_ok
            print(
                f"memory broker RSS growth {growth:.1f} MiB with {args.conns} full-file clients"
                f"   goal < {GOAL_RSS_MIB} MiB: {verdict(mem_ok)}"
            )
        if "pin" in parts:
            pin_ratio = median([c / p for c, p in zip(curl_t, pin_t, strict=True)])
            pin_ok = pin_ratio >= GOAL_PIN
            ok = ok and pin_ok
            summary["pin"] = {
                "pin_s": median(pin_t),
                "curl_s": median(curl_t),
                "pin_mib_s": args.size_mib / median(pin_t),
                "pin_cpu_s": median(pin_cpu),
                "curl_mib_s": args.size_mib / median(curl_t),
                "ratio": pin_ratio,
                "rounds": [c / p for c, p in zip(curl_t, pin_t, strict=True)],
                "met": pin_ok,
            }
            print(
                f"pin    {median(pin_t):.2f} s ({args.size_mib / median(pin_t):.0f} MiB/s)"
                f" vs curl {median(curl_t):.2f} s ({args.size_mib / median(curl_t):.0f} MiB/s): ratio {pin_ratio:.2f}"
                f"   goal >= {GOAL_PIN}: {verdict(pin_ok)}; broker CPU per pin {median(pin_cpu):.2f} s"
            )
        if "seek" in parts:
            worst = max([first_seek, *ttfb["brokered"]])
            seek_ok = worst < GOAL_SEEK_MS
            ok = ok and seek_ok
            b, d = sorted(ttfb["brokered"]), sorted(ttfb["direct"])
            p95 = {k: v[int(len(v) * 0.95) - 1] for k, v in (("brokered", b), ("direct", d))}
            summary["seek"] = {
                "first_ms": first_seek,
                "brokered_ms": {"median": median(b), "p95": p95["brokered"], "max": b[-1]},
                "direct_ms": {"median": median(d), "p95": p95["direct"], "max": d[-1]},
                "met": seek_ok,
            }
            print(
                f"seek   first byte through the broker: first {first_seek:.1f} ms, then median {median(b):.1f},"
                f" p95 {p95['brokered']:.1f}, max {b[-1]:.1f} ms; direct median {median(d):.1f}, max {d[-1]:.1f} ms"
                f"   goal < {GOAL_SEEK_MS:.0f} ms: {verdict(seek_ok)}"
            )
        summary["profiles"] = profiles
        for mode, text in profiles.items():
            what = "one pin" if mode == "pin" else f"a brokered {mode} run"
            print(f"\npy-spy of the broker, {what}:\n  " + text.replace("\n", "\n  "))
        print(f"saved {save_result('broker', summary)}")
        return 0 if ok else 1
    finally:
        broker.stop()
        owner.stop()


if __name__ == "__main__":
    sys.exit(main())
