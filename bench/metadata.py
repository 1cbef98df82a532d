#!/usr/bin/env python3
"""Metadata workload: create N small files, stat them, read them (open, read, close: as a build
reads its headers), list their directory, rename them, unlink them. Prints one JSON object: per
phase the elapsed seconds and operations per second.

    python3 bench/metadata.py DIR [--files N] [--threads T] [--readdir-passes P] [--file-size B]

DIR must exist; the workload runs in a new subdirectory of it and removes it at the end.
With --threads T, T processes (not Python threads: no interpreter lock between them) each work
on N/T files in a directory of their own; every phase starts for all of them at once (a
barrier) and lasts until the last one is done, so ops/s = N / that wall time.
Plain os.* calls in tight loops, so the interpreter adds about the same small per-call cost on
every target and the ratios between targets stay meaningful.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time

PHASES = ["create", "stat", "read", "readdir", "rename", "unlink"]


def worker(d, files, a, barrier, out):
    """Runs every phase on `files` files in `d`, waiting at `barrier` before each; puts the
    per-phase (start, end) times, or an error string, into `out`."""
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:06d}") for i in range(files)]
    renamed = [os.path.join(d, f"r{i:06d}") for i in range(files)]
    data = b"x" * a.file_size
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    times = {}
    try:
        barrier.wait()
        t = time.perf_counter()
        for n in names:
            fd = os.open(n, flags, 0o644)
            if data:
                os.write(fd, data)
            os.close(fd)
        times["create"] = (t, time.perf_counter())

        barrier.wait()
        t = time.perf_counter()
        for n in names:
            os.stat(n)
        times["stat"] = (t, time.perf_counter())

        barrier.wait()
        t = time.perf_counter()
        for n in names:
            fd = os.open(n, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
        times["read"] = (t, time.perf_counter())

        barrier.wait()
        t = time.perf_counter()
        for _ in range(a.readdir_passes):
            with os.scandir(d) as it:
                count = sum(1 for _ in it)
            if count != files:
                raise RuntimeError(f"readdir of {d} saw {count} entries, expected {files}")
        times["readdir"] = (t, time.perf_counter())

        barrier.wait()
        t = time.perf_counter()
        for old, new in zip(names, renamed):
            os.rename(old, new)
        times["rename"] = (t, time.perf_counter())

        barrier.wait()
        t = time.perf_counter()
        for n in renamed:
            os.unlink(n)
        times["unlink"] = (t, time.perf_counter())
        os.rmdir(d)
        out.put(times)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the run
        barrier.abort()
        out.put(f"{type(e).__name__}: {e}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--readdir-passes", type=int, default=10)
    ap.add_argument("--file-size", type=int, default=128)
    a = ap.parse_args()

    top = os.path.join(a.dir, f"metadata.{os.getpid()}")
    os.mkdir(top)
    per = a.files // a.threads
    barrier = mp.Barrier(a.threads)
    out = mp.Queue()
    procs = [mp.Process(target=worker, args=(os.path.join(top, f"t{i}"), per, a, barrier, out))
             for i in range(a.threads)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        print(f"metadata workload in {top} failed: {errors[0]}", file=sys.stderr)
        return 1
    os.rmdir(top)

    total = per * a.threads
    res = {}
    for phase in PHASES:
        start = min(r[phase][0] for r in results)
        end = max(r[phase][1] for r in results)
        el = end - start
        ops = total * a.readdir_passes if phase == "readdir" else total  # readdir: entries listed
        res[phase] = {"seconds": el, "ops_per_s": ops / el}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
