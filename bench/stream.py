"""Streaming benchmark: GET /api/v1/items/{id}/content of a real node vs nginx.

    .venv/bin/python bench/stream.py [--rounds 5] [--seconds 3]

Sets up a real node (``priv-network init``, ``serve`` pinned to core 0,
``add`` of a 1 GiB file), and nginx (Debian ``nginx-light``: one worker,
sendfile on, its own config in a temp folder, pinned to core 0) serving the
node's stored blob at the same URL. A bare aiohttp ``FileResponse`` server
(also core 0) is measured too, to split the gap into "aiohttp" and "node".
The client (bench/_loader.py, raw sockets) runs on core 1 and is the same for
every server. Servers take turns within each round; every figure is the
median over rounds, and the ratio is the median of the per-round ratios.

Figures and goals:

* full file, one stream (GiB/s): node / nginx >= 0.85
* random 1 MiB ranges, 32 concurrent clients (requests/s): node / nginx >= 0.8
* node RSS growth while 32 clients stream the whole file: < 100 MiB

Besides the rates, every figure is also given per second of server CPU
(psutil), which the machine's other load disturbs much less.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from _common import (
    BENCH,
    CLIENT_CORE,
    HOST,
    PYTHON,
    SERVER_CORE,
    GiB,
    MiB,
    Node,
    RssSampler,
    free_port,
    header,
    machine_line,
    make_random_file,
    median,
    read_through,
    run,
    run_main,
    save_result,
    spawn,
    stop,
    taskset,
    temp_dir,
    verdict,
    wait_http,
)

GOAL_FULL = 0.85
GOAL_RANGES = 0.8
GOAL_RSS_MIB = 100

NGINX_CONF = """\
user root;
worker_processes 1;
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    default_type application/octet-stream;
    server {{
        listen {host}:{port};
        location = /healthz {{ return 200 "ok"; }}
        location ~ ^/api/v1/items/[^/]+/content$ {{
            alias {blob};
        }}
    }}
}}
"""


def start_nginx(root: Path, blob: Path) -> tuple[Any, int]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        raise SystemExit("nginx is missing: apt-get install nginx-light")
    conf_dir = root / "nginx"
    conf_dir.mkdir()
    port = free_port()
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=conf_dir, host=HOST, port=port, blob=blob))
    cmd = [nginx, "-p", str(conf_dir), "-c", str(conf), "-e", str(conf_dir / "error.log")]
    proc = spawn(taskset(SERVER_CORE, cmd), log=conf_dir / "stdout.log")
    wait_http(port, "/healthz", proc)
    return proc, port


@dataclass
class Server:
    name: str
    port: int
    token: str
    path: str
    pid: int


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process and its children (nginx: master and worker)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def load(srv: Server, mode: str, *, conns: int, seconds: float, warmup: float, size: int, seed: int) -> dict[str, Any]:
    cmd = taskset(
        CLIENT_CORE,
        [
            PYTHON,
            str(BENCH / "_loader.py"),
            f"--mode={mode}",
            f"--port={srv.port}",
            f"--path={srv.path}",
            f"--token={srv.token}",
            f"--conns={conns}",
            f"--seconds={seconds}",
            f"--warmup={warmup}",
            f"--size={size}",
            f"--seed={seed}",
        ],
    )
    try:
        out = run(cmd, timeout=seconds + warmup + 60)
    except RuntimeError as exc:
        alive = psutil.pid_exists(srv.pid) and psutil.Process(srv.pid).status() != psutil.STATUS_ZOMBIE
        why = "" if alive else f" (the {srv.name} server, pid {srv.pid}, is gone: stopped from outside?)"
        raise SystemExit(f"load client failed against {srv.name}{why}: {exc}") from None
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the streamed file (default 1024)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each server runs once per round (default 5)")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run (default 3)")
    ap.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run (default 0.5)")
    ap.add_argument("--conns", type=int, default=32, help="concurrent clients for ranges and memory (default 32)")
    ap.add_argument("--memory-seconds", type=float, default=8.0, help="length of the memory run (default 8)")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare aiohttp reference server")
    args = ap.parse_args()
    # Default settings give the documented figures: bench/out/NAME.json.
    standard = vars(args) == vars(ap.parse_args([]))
    args.rounds = max(1, min(args.rounds, 50))
    args.seconds = max(0.5, min(args.seconds, 60.0))
    args.memory_seconds = max(1.0, min(args.memory_seconds, 120.0))
    size = args.size_mib * MiB

    print(f"stream benchmark: {args.size_mib} MiB file, servers on core {SERVER_CORE}, client on core {CLIENT_CORE}")
    print(f"machine: {machine_line()}", flush=True)
    root = temp_dir("stream-")
    procs: list[Any] = []
    try:
        src = make_random_file(root / "media.bin", size)
        node = Node(root / "node")
        procs.append(node.serve(core=SERVER_CORE))
        item = node.add(src)[0]
        blob = node.blob_path(item["content_hash"])
        assert node.proc is not None
        servers = [Server("node", node.port, node.token, item["content_url"], node.proc.pid)]

        src.unlink()
        read_through(blob)

        nginx_proc, nginx_port = start_nginx(root, blob)
        procs.append(nginx_proc)
        servers.insert(0, Server("nginx", nginx_port, "", item["content_url"], nginx_proc.pid))
        if not args.no_bare:
            bare_port = free_port()
            bare = spawn(
                taskset(SERVER_CORE, [PYTHON, str(BENCH / "_bare_server.py"), str(bare_port), str(blob)]),
                log=root / "bare.log",
            )
            procs.append(bare)
            wait_http(bare_port, "/healthz", bare)
            servers.insert(1, Server("bare aiohttp", bare_port, "", item["content_url"], bare.pid))

        # -- memory: 32 concurrent full-file clients on a node that has only ingested so far
        header(f"memory: node RSS while {args.conns} clients stream the whole file ({args.memory_seconds:g} s)")
        node_srv = next(s for s in servers if s.name == "node")
        load(node_srv, "ranges", conns=1, seconds=0.5, warmup=0, size=size, seed=0)  # load lazy code paths
        with RssSampler(node.proc.pid) as rss:
            mem_run = load(node_srv, "full", conns=args.conns, seconds=args.memory_seconds, warmup=0, size=size, seed=0)
        growth_mib = (rss.peak - rss.before) / MiB
        mem_ok = growth_mib < GOAL_RSS_MIB
        print(
            f"RSS before {rss.before / MiB:.1f} MiB, peak {rss.peak / MiB:.1f} MiB ({rss.samples} samples), "
            f"growth {growth_mib:.1f} MiB; {args.conns} clients got {mem_run['bytes_per_s'] / GiB:.2f} GiB/s in total"
        )
        print(f"goal: growth < {GOAL_RSS_MIB} MiB: {verdict(mem_ok)}", flush=True)

        # -- throughput: servers take turns within each round (rotating who goes first)
        # rate: GiB/s or req/s as the client saw it; eff: the same per second of server CPU,
        # which other load on the machine disturbs much less.
        rate: dict[str, dict[str, list[float]]] = {"full": {}, "ranges": {}}
        eff: dict[str, dict[str, list[float]]] = {"full": {}, "ranges": {}}
        for mode, conns, unit in (("full", 1, "GiB/s"), ("ranges", args.conns, "req/s")):
            what = "full file, one stream" if mode == "full" else f"random 1 MiB ranges, {conns} concurrent clients"
            header(f"{what} ({unit}, {args.rounds} rounds of {args.seconds:g} s)")
            for r in range(args.rounds):
                k = r % len(servers)
                line = []
                for srv in servers[k:] + servers[:k]:
                    cpu0 = cpu_seconds(srv.pid)
                    res = load(srv, mode, conns=conns, seconds=args.seconds, warmup=args.warmup, size=size, seed=r + 1)
                    cpu = max(cpu_seconds(srv.pid) - cpu0, 1e-6)
                    if mode == "full":
                        value, per_cpu = res["bytes_per_s"] / GiB, res["total_bytes"] / GiB / cpu
                        line.append(f"{srv.name} {value:.2f}")
                    else:
                        value, per_cpu = res["req_per_s"], res["total_requests"] / cpu
                        line.append(f"{srv.name} {value:.0f}")
                    rate[mode].setdefault(srv.name, []).append(value)
                    eff[mode].setdefault(srv.name, []).append(per_cpu)
                print(f"  round {r + 1}: " + ", ".join(line), flush=True)

        # -- report
        summary: dict[str, Any] = {"size_mib": args.size_mib, "rounds": args.rounds, "seconds": args.seconds}
        header("results: medians over rounds; ratio = median of the per-round ratios to nginx")
        goals = {"full": GOAL_FULL, "ranges": GOAL_RANGES}
        all_ok = mem_ok
        for mode in ("full", "ranges"):
            unit, cpu_unit = ("GiB/s", "GiB/CPU-s") if mode == "full" else ("req/s", "req/CPU-s")
            base, base_eff = rate[mode]["nginx"], eff[mode]["nginx"]
            summary[mode] = {}
            for srv in servers:
                vals, effs = rate[mode][srv.name], eff[mode][srv.name]
                ratio = median([v / b for v, b in zip(vals, base, strict=True)])
                eff_ratio = median([v / b for v, b in zip(effs, base_eff, strict=True)])
                summary[mode][srv.name] = {
                    "median": median(vals),
                    "values": vals,
                    "ratio_to_nginx": ratio,
                    "per_cpu_second": median(effs),
                    "per_cpu_ratio_to_nginx": eff_ratio,
                }
                fmt = "{:7.2f}" if mode == "full" else "{:7.0f}"
                extra = ""
                if srv.name == "node":
                    ok = ratio >= goals[mode]
                    all_ok = all_ok and ok
                    extra = f"   goal >= {goals[mode]}: {verdict(ok)}"
                print(
                    f"{mode:6} {srv.name:30} {fmt.format(median(vals))} {unit}  ratio {ratio:.2f}"
                    f"  | {fmt.format(median(effs))} {cpu_unit}  ratio {eff_ratio:.2f}{extra}"
                )
        summary["memory"] = {
            "before_mib": rss.before / MiB,
            "peak_mib": rss.peak / MiB,
            "growth_mib": growth_mib,
            "goal_mib": GOAL_RSS_MIB,
            "met": mem_ok,
        }
        print(
            f"memory node RSS growth {growth_mib:.1f} MiB with {args.conns} full-file clients"
            f"   goal < {GOAL_RSS_MIB} MiB: {verdict(mem_ok)}"
        )
        print(f"saved {save_result('stream' if standard else 'stream-custom', summary)}")
        return 0 if all_ok else 1
    finally:
        for proc in reversed(procs):
            stop(proc, signal.SIGTERM if "nginx" in str(proc.args) else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(run_main(main))
