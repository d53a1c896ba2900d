"""The pin's write path alone: ``PinWriter`` past the page cache (O_DIRECT) or through it.

    .venv/bin/python bench/pin_write.py [--rounds 6] [--size-mib 1024]

A 1 GiB copy held in memory is handed to ``node.blobs.PinWriter`` block by
block, as the 256 KiB network chunks a pin receives, and committed (every
block checked, the whole-file BLAKE3, fsync, rename): once with whole blocks
written through an O_DIRECT descriptor (what a pin does where the filesystem
allows it), once with everything written through the page cache (what it does
where it does not). The baseline in the same round is a bare loop writing the
same bytes through the page cache with ``os.pwrite`` and no fsync, as ``curl
-o`` does in ``bench/broker.py``. The three take turns in every order; dirty
pages are flushed before each. Prints wall and CPU time (user + system) of
each, the ratio of each ``PinWriter`` variant to the baseline, and the
direct variant's speed as a multiple of the buffered one's.

Why it exists: on this project's virtual machine, memory the kernel frees is
handed back to the host, and a page cache write into pages not touched since
costs up to 2 s of kernel time per GiB; which rounds meet such pages depends
on what ran before. The direct path does not take page cache pages at all.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import MiB, header, machine_line, median, run_main, save_result, temp_dir
from blake3 import blake3

import node.blobs
from node.blobs import BlobStore
from priv_network.manifest import block_hash

BLOCK = 1 * MiB
CHUNK = 256 * 1024


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def through_writer(store: BlobStore, data: bytes, manifest: bytes, content_hash: str, *, direct: bool) -> None:
    real = node.blobs.open_direct
    if not direct:
        node.blobs.open_direct = lambda path, block_size: None
    try:
        writer = store.open_pin(content_hash, manifest, BLOCK, len(data))
    finally:
        node.blobs.open_direct = real
    if direct and writer._direct is None:
        raise SystemExit(f"this filesystem ({store.root}) refuses O_DIRECT: nothing to compare")
    view = memoryview(data)
    for index, at in enumerate(range(0, len(data), BLOCK)):
        end = min(at + BLOCK, len(data))
        parts = [view[c : min(c + CHUNK, end)] for c in range(at, end, CHUNK)]
        if not writer.append(index, parts):
            raise SystemExit(f"block {index} did not match its manifest")
    writer.commit()
    store.blob_path(content_hash).unlink()


def plain_write(path: Path, data: bytes) -> None:
    view = memoryview(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        for at in range(0, len(data), CHUNK):
            os.pwrite(fd, view[at : at + CHUNK], at)
    finally:
        os.close(fd)
    path.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    print(f"pin write path: {args.size_mib} MiB, 1 MiB blocks in 256 KiB chunks, {args.rounds} rounds")
    print(machine_line())
    root = temp_dir("pn-bench-pinwrite-")
    store = BlobStore(root / "store", BLOCK, 0)
    store.prepare()
    data = os.urandom(args.size_mib * MiB)
    manifest = b"".join(block_hash(data[i : i + BLOCK]) for i in range(0, len(data), BLOCK))
    content_hash = blake3(data).hexdigest()
    variants: dict[str, Callable[[], None]] = {
        "direct": lambda: through_writer(store, data, manifest, content_hash, direct=True),
        "buffered": lambda: through_writer(store, data, manifest, content_hash, direct=False),
        "plain": lambda: plain_write(root / "plain.out", data),
    }
    names = list(variants)
    wall: dict[str, list[float]] = {n: [] for n in names}
    used: dict[str, list[float]] = {n: [] for n in names}
    header("rounds (wall s / CPU s)")
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        line = []
        for name in order:
            os.sync()
            c0, t0 = cpu(), time.perf_counter()
            variants[name]()
            wall[name].append(time.perf_counter() - t0)
            used[name].append(cpu() - c0)
            line.append(f"{name} {wall[name][-1]:.2f}/{used[name][-1]:.2f}")
        print(f"  round {r + 1}: " + ", ".join(line), flush=True)
    header("results: medians; ratio = baseline time / variant time, median of rounds")
    result: dict[str, object] = {"size_mib": args.size_mib}
    for name in ("direct", "buffered"):
        ratios = [p / v for p, v in zip(wall["plain"], wall[name], strict=True)]
        spread = f"{min(wall[name]):.2f}-{max(wall[name]):.2f}"
        print(
            f"{name:9} {median(wall[name]):.2f} s (rounds {spread}), CPU {median(used[name]):.2f} s;"
            f" ratio to plain write {median(ratios):.2f}"
        )
        result[name] = {"wall_s": wall[name], "cpu_s": used[name], "ratio": median(ratios)}
    print(f"{'plain':9} {median(wall['plain']):.2f} s, CPU {median(used['plain']):.2f} s (no hashing, no fsync)")
    gain = median([b / d for b, d in zip(wall["buffered"], wall["direct"], strict=True)])
    print(f"direct vs buffered: {gain:.2f}x as fast (median of rounds)")
    result["direct_vs_buffered"] = gain
    result["plain"] = {"wall_s": wall["plain"], "cpu_s": used["plain"]}
    save_result("pin_write", result)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
