"""A tiny HTTP/1.1 load generator for one file URL (raw non-blocking sockets).

Run by ``bench/stream.py`` under ``taskset`` on its own core; prints one JSON
line. The same client is used for every server so that ratios compare servers,
not clients. Bodies are read with ``recv_into`` into one large scratch buffer
and thrown away, so the client costs little more than the kernel's copy.

Modes:

* ``full``: CONNS keep-alive connections each fetch the whole file again and
  again; the figure is bytes received per second (partial bodies count).
* ``ranges``: CONNS connections each send one ``Range: bytes=A-B`` request of
  RANGE_SIZE bytes at a random offset, wait for the whole 206 body, repeat;
  the figure is completed requests per second.

Every run is bounded by ``--seconds``; a status other than the expected one or
a short body counts as an error (and the benchmark refuses to report).
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import socket
import sys
import time

SCRATCH = bytearray(256 * 1024)
SCRATCH_VIEW = memoryview(SCRATCH)
MAX_HEADER = 64 * 1024


class Conn:
    __slots__ = ("body_left", "header", "sock", "want_status")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.header = bytearray()
        self.body_left = -1  # -1: reading the status line and headers
        self.want_status = 200


def parse_header(raw: bytes) -> tuple[int, int]:
    head = raw.decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = -1
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, length


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["full", "ranges"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--size", type=int, required=True, help="file size in bytes")
    ap.add_argument("--range-size", type=int, default=1024 * 1024)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    auth = f"Authorization: Bearer {args.token}\r\n" if args.token else ""
    base = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nUser-Agent: pn-bench\r\n{auth}"

    def next_request(conn: Conn) -> bytes:
        if args.mode == "full":
            conn.want_status = 200
            return (base + "\r\n").encode()
        start = rng.randrange(0, args.size - args.range_size + 1)
        end = start + args.range_size - 1
        conn.want_status = 206
        return (base + f"Range: bytes={start}-{end}\r\n\r\n").encode()

    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(args.conns):
        s = socket.create_connection(("127.0.0.1", args.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = Conn(s)
        s.sendall(next_request(c))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, c)
        conns.append(c)

    t0 = time.perf_counter()
    measure_from = t0 + args.warmup
    deadline = measure_from + args.seconds
    measuring = False
    done_requests = 0
    body_bytes = 0
    total_requests = 0
    total_bytes = 0
    errors: list[str] = []
    latency_start: dict[int, float] = {id(c): t0 for c in conns}
    latencies: list[float] = []

    while True:
        now = time.perf_counter()
        if not measuring and now >= measure_from:
            measuring = True
            total_requests += done_requests
            total_bytes += body_bytes
            done_requests = 0
            body_bytes = 0
            latencies.clear()
            measure_from = now
        if now >= deadline or len(errors) > 10:
            break
        for key, _ev in sel.select(timeout=0.2):
            c: Conn = key.data
            try:
                n = c.sock.recv_into(SCRATCH_VIEW)
            except BlockingIOError:
                continue
            except OSError as exc:
                errors.append(f"recv: {exc}")
                sel.unregister(c.sock)
                continue
            if n == 0:
                errors.append("server closed the connection")
                sel.unregister(c.sock)
                continue
            if c.body_left < 0:
                c.header += SCRATCH_VIEW[:n]
                end = c.header.find(b"\r\n\r\n")
                if end < 0:
                    if len(c.header) > MAX_HEADER:
                        errors.append("header too long")
                        sel.unregister(c.sock)
                    continue
                status, length = parse_header(bytes(c.header[:end]))
                extra = len(c.header) - end - 4
                c.header.clear()
                if status != c.want_status or length < 0:
                    errors.append(f"unexpected status {status} (content-length {length})")
                    sel.unregister(c.sock)
                    continue
                c.body_left = length - extra
                got = extra
            else:
                c.body_left -= n
                got = n
            body_bytes += got
            if c.body_left < 0:
                errors.append("more bytes than Content-Length")
                sel.unregister(c.sock)
                continue
            if c.body_left == 0:
                done_requests += 1
                t = time.perf_counter()
                latencies.append(t - latency_start[id(c)])
                latency_start[id(c)] = t
                c.body_left = -1
                c.sock.sendall(next_request(c))
    elapsed = time.perf_counter() - measure_from
    sel.close()
    for c in conns:
        c.sock.close()
    latencies.sort()
    total_requests += done_requests
    total_bytes += body_bytes
    out = {
        "mode": args.mode,
        "conns": args.conns,
        "seconds": elapsed,
        "requests": done_requests,
        "total_requests": total_requests,  # warm-up included, to match the server's CPU time
        "total_bytes": total_bytes,
        "bytes": body_bytes,
        "req_per_s": done_requests / elapsed if elapsed > 0 else 0.0,
        "bytes_per_s": body_bytes / elapsed if elapsed > 0 else 0.0,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000 if latencies else None,
        "errors": errors[:5],
        "error_count": len(errors),
    }
    print(json.dumps(out))
    return 0 if not errors else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
