"""Convergence: an item added on one of 10 nodes, until search finds it on all the others.

    .venv/bin/python bench/convergence.py [--nodes 10] [--trials 8] [--interval 5s]

Ten real nodes (``priv-network init`` + ``serve``, one process each, on
127.0.0.2 ... 127.0.0.11, not pinned: ten processes share the 2 cores), all
with ``[sync] interval = 5s`` (jitter at its default, 0.2: APScheduler adds
up to 1 s to each round). Node 0 invites the nine others (``invite --uses 9``
/ ``join``); the roster spreads with the feeds, and the benchmark waits until
every node has polled every other.

Each trial adds a small file with a unique title word on one node (a
different node each trial) through ``POST /api/v1/items`` (what
``priv-network add`` sends), visibility ``network``. From the moment the add
has answered, one thread per other node sends ``GET /api/v1/search?q=WORD``
every 100 ms and records when the item first appears. Nobody triggers a
sync: every node polls the changed node on its own schedule, so the wait is
the time to that node's next round (uniform over about one interval) plus
the poll itself. Reported: the distribution of the per-node times over all
trials, and per trial the time until the last node finds it. Goal: within
one interval + 2 s (7 s) on every node. The baseline is the schedule itself:
the expected wait if a round were instant (half an interval on average,
interval + jitter at worst).
"""

from __future__ import annotations

import argparse
import secrets
import string
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import header, install_cleanup, machine_line, median, save_result, temp_dir, verdict
from _fed import FedNode, all_peers_synced, wait_for

from priv_network.config import parse_duration

POLL = 0.1


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def unique_word() -> str:
    return "zq" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))


def watch(node: FedNode, word: str, t0: float, timeout: float, out: dict[str, float]) -> None:
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            if any(word in h["title"] for h in node.search(word, limit=5)):
                out[node.name] = time.perf_counter() - t0
                return
        except Exception:
            pass
        time.sleep(max(0.0, POLL - (time.perf_counter() - started)))
    out[node.name] = float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10, help="nodes (default 10)")
    ap.add_argument("--trials", type=int, default=8, help="items added, one per trial (default 8)")
    ap.add_argument("--interval", default="5s", help="[sync] interval of every node (default 5s)")
    args = ap.parse_args()
    args.nodes = max(2, min(args.nodes, 60))
    interval = parse_duration(args.interval)
    goal = interval + 2.0
    jitter = max(1, int(interval * 0.2))

    install_cleanup()
    print(f"convergence benchmark: {args.nodes} nodes, [sync] interval {interval:g} s, {args.trials} trials")
    print(f"machine: {machine_line()}", flush=True)
    root = temp_dir("convergence-")
    files = root / "files"
    files.mkdir()
    sections = {"sync": {"interval": args.interval}, "store": {"min_free": "0"}}
    nodes: list[FedNode] = []
    try:
        header(f"setting up {args.nodes} nodes and one group")
        t_setup = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            nodes = list(
                pool.map(lambda i: FedNode(root, f"n{i:02d}", f"127.0.0.{i + 2}", sections=sections), range(args.nodes))
            )
            list(pool.map(lambda n: n.serve(), nodes))
        invite = nodes[0].invite(uses=args.nodes - 1)
        for n in nodes[1:]:
            n.join(invite)
        wait_for(
            lambda: all(all_peers_synced(n, args.nodes - 1) for n in nodes),
            timeout=180,
            what="every node polled every other",
            interval=1.0,
        )
        time.sleep(2 * interval)  # a couple of ordinary rounds
        print(f"group of {args.nodes} ready in {time.perf_counter() - t_setup:.0f} s")

        header(
            f"{args.trials} trials: add on one node, search on the {args.nodes - 1} others every {POLL * 1000:.0f} ms"
        )
        trials: list[dict[str, Any]] = []
        for t in range(args.trials):
            origin = nodes[t % len(nodes)]
            word = unique_word()
            path = files / f"probe {word}.bin"
            path.write_bytes(f"{word}\n{secrets.token_hex(32)}\n".encode())
            a0 = time.perf_counter()
            report = origin.api("POST", "/api/v1/items", {"paths": [str(path)], "visibility": "network"})
            t0 = time.perf_counter()
            assert report["added"], report
            found: dict[str, float] = {}
            threads = [
                threading.Thread(target=watch, args=(n, word, t0, goal + 20, found)) for n in nodes if n is not origin
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            times = sorted(found.values())
            trials.append({"origin": origin.name, "add_s": t0 - a0, "times": found, "last": times[-1]})
            print(
                f"  trial {t + 1} (added on {origin.name} in {t0 - a0:.2f} s): found after "
                + ", ".join(f"{x:.1f}" for x in times)
                + f" s; last {times[-1]:.1f} s",
                flush=True,
            )
            time.sleep(1.0)

        every = [x for tr in trials for x in tr["times"].values()]
        lasts = [tr["last"] for tr in trials]
        ok = max(lasts) <= goal
        summary = {
            "nodes": args.nodes,
            "interval_s": interval,
            "jitter_s": jitter,
            "goal_s": goal,
            "trials": trials,
            "per_node_p50_s": pct(every, 50),
            "per_node_p95_s": pct(every, 95),
            "per_node_max_s": max(every),
            "last_node_median_s": median(lasts),
            "last_node_max_s": max(lasts),
            "schedule_mean_s": (interval + jitter / 2) / 2,
            "schedule_max_s": interval + jitter,
            "met": ok,
        }
        header("results")
        print(
            f"per node ({len(every)} samples): p50 {summary['per_node_p50_s']:.1f} s,"
            f" p95 {summary['per_node_p95_s']:.1f} s, max {summary['per_node_max_s']:.1f} s"
            f" (baseline, the schedule alone: mean {summary['schedule_mean_s']:.1f} s, worst {interval + jitter:g} s;"
            f" ratio p50 / mean {summary['per_node_p50_s'] / summary['schedule_mean_s']:.2f})"
        )
        print(
            f"until the last node finds it: median {median(lasts):.1f} s, max {max(lasts):.1f} s"
            f"   goal <= {goal:g} s on every trial: {verdict(ok)}"
        )
        hist = [0] * (int(max(x for x in every if x != float("inf")) if every else 0) + 2)
        for x in every:
            if x != float("inf"):
                hist[int(x)] += 1
        print("distribution (s: count): " + ", ".join(f"{i}-{i + 1}: {c}" for i, c in enumerate(hist) if c))
        print(f"saved {save_result('convergence', summary)}")
        return 0 if ok else 1
    finally:
        for n in reversed(nodes):
            n.stop()


if __name__ == "__main__":
    sys.exit(main())
