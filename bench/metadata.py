#!/usr/bin/env python3
"""Metadata workload: create N small files in a fresh directory, stat them, list the directory,
unlink them. Prints one JSON object: per phase the elapsed seconds and operations per second.

    python3 bench/metadata.py DIR [--files N] [--readdir-passes P] [--file-size B]

DIR must exist; the workload runs in a new subdirectory of it and removes it at the end.
Plain os.* calls in tight loops, so the interpreter adds about the same small per-call cost on
every target and the ratios between targets stay meaningful.
"""
import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--readdir-passes", type=int, default=10)
    ap.add_argument("--file-size", type=int, default=128)
    a = ap.parse_args()

    d = os.path.join(a.dir, f"metadata.{os.getpid()}")
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:06d}") for i in range(a.files)]
    data = b"x" * a.file_size
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    res = {}

    t = time.perf_counter()
    for n in names:
        fd = os.open(n, flags, 0o644)
        if data:
            os.write(fd, data)
        os.close(fd)
    el = time.perf_counter() - t
    res["create"] = {"seconds": el, "ops_per_s": a.files / el}

    t = time.perf_counter()
    for n in names:
        os.stat(n)
    el = time.perf_counter() - t
    res["stat"] = {"seconds": el, "ops_per_s": a.files / el}

    t = time.perf_counter()
    for _ in range(a.readdir_passes):
        with os.scandir(d) as it:
            count = sum(1 for _ in it)
        if count != a.files:
            print(f"readdir saw {count} entries, expected {a.files}", file=sys.stderr)
            return 1
    el = time.perf_counter() - t
    # entries listed per second
    res["readdir"] = {"seconds": el, "ops_per_s": a.files * a.readdir_passes / el}

    t = time.perf_counter()
    for n in names:
        os.unlink(n)
    el = time.perf_counter() - t
    res["unlink"] = {"seconds": el, "ops_per_s": a.files / el}
    os.rmdir(d)

    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
