#!/usr/bin/env python3
"""Mixed small-file workload, like unpacking and building a source tree: untar a tarball of many
small files, find + stat every file, read every file, remove the tree. Prints one JSON object:
per phase the elapsed seconds and files per second.

    python3 bench/mixed.py DIR --tarball T.tar [--files N]
    python3 bench/mixed.py --make T.tar [--files N] [--dirs D]    # makes the tarball

The phases run real tools (tar, find, cat, rm) in a new subdirectory of DIR, so each target sees
the same system calls a user's shell would make.
"""
import argparse
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time

PHASES = ["untar", "find+stat", "read", "rm"]


def make(path, files, dirs):
    """A tarball of `files` files in `dirs` directories (two levels deep), sizes log-uniform from
    100 B to 64 KiB like a source tree's, fixed seed so every run unpacks the same tree."""
    rng = random.Random(15)
    blob = os.urandom(1 << 16)
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            d = i % dirs
            name = f"src/d{d // 10:02d}/m{d:03d}/file{i:05d}.c"
            size = int(10 ** rng.uniform(2, 4.8))
            info = tarfile.TarInfo(name)
            info.size = size
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(blob[:size]))


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {p.stderr.decode(errors='replace')[:500]}")
    return p.stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--tarball")
    ap.add_argument("--make")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dirs", type=int, default=100)
    a = ap.parse_args()
    if a.make:
        make(a.make, a.files, a.dirs)
        return 0
    if not a.dir or not a.tarball:
        ap.error("DIR and --tarball are needed (or --make)")

    d = os.path.join(a.dir, f"mixed.{os.getpid()}")
    os.mkdir(d)
    res = {}

    def phase(name, fn):
        t = time.perf_counter()
        fn()
        el = time.perf_counter() - t
        res[name] = {"seconds": el, "ops_per_s": a.files / el}

    phase("untar", lambda: run(["tar", "-xf", a.tarball, "-C", d]))

    def find():
        n = run(["find", d, "-type", "f", "-printf", "%s\n"]).count(b"\n")
        if n != a.files:
            raise SystemExit(f"find saw {n} files under {d}, expected {a.files}")

    phase("find+stat", find)
    phase("read", lambda: run(["sh", "-c", 'find "$1" -type f -exec cat {} + > /dev/null', "sh", d]))
    phase("rm", lambda: run(["rm", "-rf", d]))
    res["total"] = {"seconds": sum(r["seconds"] for r in res.values())}
    res["total"]["ops_per_s"] = a.files / res["total"]["seconds"]
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
