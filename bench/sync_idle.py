"""Idle sync round: one node polls 20 peers that have nothing new.

    .venv/bin/python bench/sync_idle.py [--peers 20] [--rounds 10] [--cold-rounds 3]

The polling node P is a real node (``priv-network serve`` on 127.0.0.2,
pinned to core 0). Its 20 peers are complete node apps
(``priv_network.server.create_app``) served together by one helper process,
bench/_peer_farm.py, pinned to core 1: 20 real nodes would need ~2 GB and
would fight over 2 cores for nothing (they only answer P's requests). Each
peer listens on its own 127.0.0.x address and publishes a byte-counting TCP
proxy in front of it as its URL, so every byte of P's requests and of the
answers is counted (HTTP headers and bodies; not TCP/IP overhead). All nodes
run with ``[sync] interval = 1h``: nothing polls but the benchmark's rounds.
The peers join P's group with one invite (``uses = 20``); the benchmark
waits until P's rounds find no change anywhere.

A round is ``POST /api/v1/sync`` on P (what ``priv-network sync`` sends):
P's own feed, then one signed ``GET /federation/v1/catalog`` per peer, each
answered with an empty page, then the after-round hooks (pins, outbox). With
nothing new anywhere the registry writes once for the whole round (the last
sync time of every source) and reads no source state.
Measured per round: CPU time of P's process (user + system, every thread,
from /proc), bytes on the wire per peer, wall time. Warm rounds run back to
back (keep-alive connections reused); cold rounds wait 16 s first, past
aiohttp's 15 s client keep-alive, so every poll opens a new connection, as
a scheduled round every 60 s does. Goals: under 100 ms CPU per round, under
2 KiB per peer.

Signatures, in this process: ``priv_network.signing.Signer.sign`` and
``Verifier.verify`` (RFC 9421 via http-message-signatures: signature base,
Content-Digest, nonce cache) per request, next to a raw Ed25519 sign and
verify (cryptography) of a message of the same size; ratio = product / raw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from _common import (
    BENCH,
    PYTHON,
    header,
    install_cleanup,
    machine_line,
    median,
    save_result,
    spawn,
    stop,
    taskset,
    temp_dir,
    verdict,
)
from _fed import FedNode, PySpy, cpu_seconds, free_port_on, http_json, wait_for
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from priv_network.identity import NodeIdentity
from priv_network.signing import Signer, Verifier

GOAL_CPU_MS = 100.0
GOAL_BYTES = 2048
POLLER_CORE, FARM_CORE = "0", "1"
KEEPALIVE_WAIT = 16.0
PROFILE_UNDER = (
    "sync_all",
    "Signer.sign",
    "request_json",
    "fetch_changes",
    "FeedPage.from_json",
    "apply_page",
    "mark_synced",
    "reconcile_sources",
    "sync_source",
    "get_source",
    "active_peers",
    "reconcile (registry",
    "deliver (registry",
    "auth_middleware",
    "aiosqlite",
)


def signature_costs(n: int) -> dict[str, float]:
    """Per-request sign/verify through priv_network.signing vs raw Ed25519, in microseconds (medians of 5)."""
    ident = NodeIdentity.generate()
    pub = ident.public.public_key
    url = "http://127.0.0.3:40123/federation/v1/catalog?since=1234&limit=1000"
    signer = Signer(ident)
    sign_t, verify_t, raw_sign_t, raw_verify_t = [], [], [], []
    for _ in range(5):
        verifier = Verifier(lambda k: pub if k == ident.node_id else None, window=60)
        t0 = time.perf_counter()
        signed = [signer.sign("GET", url, b"") for _ in range(n)]
        sign_t.append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for headers in signed:
            assert verifier.verify("GET", url, headers, b"") == ident.node_id
        verify_t.append((time.perf_counter() - t0) / n)
        # the raw primitive on a message the size of the signature base
        base = (
            f'"@method": GET\n"@target-uri": {url}\n"@authority": 127.0.0.3:40123\n'
            f'"content-digest": {signed[0]["Content-Digest"]}\n'
            f'"@signature-params": {signed[0]["Signature-Input"].split("=", 1)[1]}'
        ).encode()
        key = Ed25519PrivateKey.generate()
        public = key.public_key()
        t0 = time.perf_counter()
        sigs = [key.sign(base) for _ in range(n)]
        raw_sign_t.append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for sig in sigs:
            public.verify(sig, base)
        raw_verify_t.append((time.perf_counter() - t0) / n)
    return {
        "sign_us": median(sign_t) * 1e6,
        "verify_us": median(verify_t) * 1e6,
        "raw_sign_us": median(raw_sign_t) * 1e6,
        "raw_verify_us": median(raw_verify_t) * 1e6,
        "base_bytes": len(base),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=20, help="peers polled (default 20)")
    ap.add_argument("--rounds", type=int, default=10, help="warm rounds, back to back (default 10)")
    ap.add_argument("--cold-rounds", type=int, default=3, help="rounds after 16 s of quiet (default 3)")
    ap.add_argument("--signatures", type=int, default=2000, help="requests signed/verified per repeat (default 2000)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy rounds")
    args = ap.parse_args()
    args.peers = max(1, min(args.peers, 200))

    install_cleanup()
    print(f"idle sync round benchmark: {args.peers} peers (one helper process), poller on core {POLLER_CORE}")
    print(f"machine: {machine_line()}", flush=True)
    root = temp_dir("sync-idle-")
    poller = FedNode(root, "poller", "127.0.0.2", sections={"sync": {"interval": "1h"}, "store": {"min_free": "0"}})
    farm: Any = None
    try:
        poller.serve(core=POLLER_CORE)
        ctl_port = free_port_on("127.0.0.1")
        ready = root / "farm.json"
        farm = spawn(
            taskset(
                FARM_CORE,
                [
                    PYTHON,
                    str(BENCH / "_peer_farm.py"),
                    f"--root={root / 'farm'}",
                    f"--count={args.peers}",
                    f"--ready={ready}",
                    f"--ctl-port={ctl_port}",
                ],
            ),
            log=root / "farm.log",
        )
        wait_for(lambda: ready.exists() or farm.poll() is not None, timeout=300, what="peer farm start", interval=0.5)
        if farm.poll() is not None:
            raise SystemExit("peer farm failed:\n" + (root / "farm.log").read_text()[-3000:])
        peers: list[dict[str, Any]] = json.loads(ready.read_text())
        ctl = f"http://127.0.0.1:{ctl_port}"

        header(f"setting up: {args.peers} peers join the poller's group")
        t0 = time.perf_counter()
        invite = poller.invite(uses=args.peers)
        for p in peers:
            http_json(p["direct_url"] + "/api/v1/network/join", method="POST", token=p["token"], body={"token": invite})
        wait_for(lambda: len(poller.peers()) >= args.peers, timeout=120, what="joins")
        quiet = 0

        def settled() -> bool:
            nonlocal quiet
            changed = poller.sync()
            busy = any(v != 0 for k, v in changed.items() if k != poller.node_id)
            quiet = 0 if busy else quiet + 1
            return quiet >= 2

        wait_for(settled, timeout=180, what="quiet rounds", interval=1.0)

        def farm_quiet() -> bool:
            # new members poll every member they learn of, one after the other: wait until that is over
            http_json(ctl + "/reset", method="POST")
            time.sleep(3.0)
            return sum(c["up"] + c["down"] for c in http_json(ctl + "/counters").values()) == 0

        wait_for(farm_quiet, timeout=300, what="peers done polling each other", interval=0)
        print(f"joined and settled in {time.perf_counter() - t0:.0f} s")

        def one_round() -> dict[str, Any]:
            http_json(ctl + "/reset", method="POST")
            c0 = cpu_seconds(poller.pid)
            w0 = time.perf_counter()
            result = poller.api("POST", "/api/v1/sync")["changed"]
            wall = time.perf_counter() - w0
            cpu = cpu_seconds(poller.pid) - c0
            counts = http_json(ctl + "/counters")
            errors = [v for v in result.values() if isinstance(v, str)]
            changed = sum(v for k, v in result.items() if isinstance(v, int) and k != poller.node_id)
            per_peer = [c["up"] + c["down"] for c in counts.values()]
            return {
                "cpu_ms": cpu * 1000,
                "wall_ms": wall * 1000,
                "bytes_per_peer": sum(per_peer) / len(per_peer),
                "max_bytes_per_peer": max(per_peer),
                "up_per_peer": sum(c["up"] for c in counts.values()) / len(per_peer),
                "down_per_peer": sum(c["down"] for c in counts.values()) / len(per_peer),
                "conns": sum(c["conns"] for c in counts.values()),
                "errors": errors,
                "changed": changed,
            }

        results: dict[str, list[dict[str, Any]]] = {"warm": [], "cold": []}
        header(f"{args.rounds} warm rounds (back to back) and {args.cold_rounds} cold rounds (after 16 s of quiet)")
        one_round()  # warm-up
        for kind, count in (("warm", args.rounds), ("cold", args.cold_rounds)):
            for i in range(count):
                if kind == "cold":
                    time.sleep(KEEPALIVE_WAIT)
                r = one_round()
                results[kind].append(r)
                print(
                    f"  {kind} {i + 1}: CPU {r['cpu_ms']:.0f} ms, wall {r['wall_ms']:.0f} ms,"
                    f" {r['bytes_per_peer']:.0f} B/peer (request {r['up_per_peer']:.0f}, answer"
                    f" {r['down_per_peer']:.0f}), {r['conns']} new connections, {r['changed']} changes"
                    + (f", ERRORS {r['errors'][:2]}" if r["errors"] else ""),
                    flush=True,
                )

        profile = ""
        if not args.no_profile:
            spy = PySpy(poller.pid, root / "pyspy-poller.txt", rate=500)
            if spy.start():
                for _ in range(10):
                    one_round()
                spy.stop()
                profile = spy.summary(top=20, inclusive=PROFILE_UNDER)
                header("py-spy of the poller over 10 more warm rounds (not in the figures above)")
                print("  " + profile.replace("\n", "\n  "))

        header(f"signatures: {args.signatures} requests signed and verified, median of 5 repeats")
        sig = signature_costs(args.signatures)
        print(
            f"  priv_network.signing: sign {sig['sign_us']:.0f} us, verify {sig['verify_us']:.0f} us per request;"
            f" raw Ed25519 ({sig['base_bytes']} B message): sign {sig['raw_sign_us']:.0f} us,"
            f" verify {sig['raw_verify_us']:.0f} us"
        )

        summary: dict[str, Any] = {"peers": args.peers, "signatures": sig, "profile": profile}
        ok = True
        header("results (medians over rounds)")
        for kind in ("warm", "cold"):
            rs = results[kind]
            if not rs:
                continue
            cpu, wire = median([r["cpu_ms"] for r in rs]), median([r["bytes_per_peer"] for r in rs])
            cpu_ok, wire_ok = cpu < GOAL_CPU_MS, wire < GOAL_BYTES
            ok = ok and cpu_ok and wire_ok and not any(r["errors"] for r in rs)
            summary[kind] = {
                "cpu_ms": cpu,
                "cpu_ms_per_peer": cpu / args.peers,
                "wall_ms": median([r["wall_ms"] for r in rs]),
                "bytes_per_peer": wire,
                "max_bytes_per_peer": max(r["max_bytes_per_peer"] for r in rs),
                "request_bytes": median([r["up_per_peer"] for r in rs]),
                "answer_bytes": median([r["down_per_peer"] for r in rs]),
                "rounds": rs,
                "cpu_met": cpu_ok,
                "bytes_met": wire_ok,
            }
            s = summary[kind]
            print(
                f"{kind} round, {args.peers} peers: CPU {cpu:.0f} ms ({cpu / args.peers:.1f} ms/peer),"
                f" wall {s['wall_ms']:.0f} ms   goal < {GOAL_CPU_MS:g} ms: {verdict(cpu_ok)}"
            )
            print(
                f"{kind} round: {wire:.0f} B/peer on the wire (request {s['request_bytes']:.0f} B,"
                f" answer {s['answer_bytes']:.0f} B)   goal < {GOAL_BYTES} B: {verdict(wire_ok)}"
            )
        ratio_v = sig["verify_us"] / sig["raw_verify_us"]
        ratio_s = sig["sign_us"] / sig["raw_sign_us"]
        summary["verify_ratio_to_raw"] = ratio_v
        summary["sign_ratio_to_raw"] = ratio_s
        print(
            f"signature verification {sig['verify_us']:.0f} us/request = {ratio_v:.1f}x a raw Ed25519 verify"
            f" ({sig['raw_verify_us']:.0f} us); signing {sig['sign_us']:.0f} us = {ratio_s:.1f}x raw"
            f" ({sig['raw_sign_us']:.0f} us)"
        )
        print(f"saved {save_result('sync_idle', summary)}")
        return 0 if ok else 1
    finally:
        if farm is not None:
            stop(farm)
        poller.stop()


if __name__ == "__main__":
    sys.exit(main())
