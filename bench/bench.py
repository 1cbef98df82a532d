#!/usr/bin/env python3
"""phoenixfs benchmark: the same workloads on (a) a native directory, (b) a phoenixfsd FUSE
mount of it, (c) phoenixfsd with --recovery off; prints a markdown table with ratios to native.

With --transport vhost-user the daemons serve virtio-fs instead, each mounted on the host through
the FUSE-to-virtqueue bridge (examples/vhost_bridge.rs, one request queue), and virtiofsd from
crates.io is measured the same way beside phoenixfsd: the peer comparison without a VM.

Run it through scripts/bench.sh (which builds phoenixfsd and checks for fio). Must run as root
(mounts FUSE). Not a test: numbers depend on the machine and whatever else runs on it.

Workloads (fio, ioengine=psync, direct=0, numjobs=2, time-based):
  seq-read / seq-write    1 MiB blocks, MiB/s
  rand-read / rand-write  4 KiB blocks, IOPS
and a metadata workload (bench/metadata.py): create N small files, stat each, list the
directory (several passes), unlink each; operations per second.

Environment: PHOENIXFSD (daemon binary, default target/<host tuple>/release/phoenixfsd), PHOENIXFSD_ARGS
(extra daemon arguments for both FUSE runs, e.g. "--thread-pool-size 2").
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import contextlib
import subprocess
import sys
import tempfile
import time

def host_tuple():
    """The target tuple cargo builds for (.cargo/config.toml names the host's: outputs are under
    target/<tuple>/)."""
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("host: "))


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

FIO_JOBS = [
    # name, rw, bs, metric
    ("seq-write 1M", "write", "1M", "MiB/s"),
    ("seq-read 1M", "read", "1M", "MiB/s"),
    ("rand-write 4K", "randwrite", "4k", "IOPS"),
    ("rand-read 4K", "randread", "4k", "IOPS"),
]
META_PHASES = ["create", "stat", "readdir", "unlink"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mounted(mnt):
    mnt = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == mnt for line in f)


class Daemon:
    """A daemon serving share at mnt, for the duration of a with-block: phoenixfsd mounting
    /dev/fuse itself, or (bridge given) a vhost-user backend listening on a socket next to mnt,
    mounted through the bridge."""

    def __init__(self, cmd, mnt, logpath, bridge=None):
        self.cmd = cmd
        self.mnt = mnt
        self.logpath = logpath
        self.bridge_cmd = bridge

    @staticmethod
    def fuse(binary, share, mnt, args, logpath):
        return Daemon([binary, "--shared-dir", share, "--mountpoint", mnt, "--log-level", "warn", *args], mnt, logpath)

    @staticmethod
    def vhost(backend, share, mnt, bridge_bin, logpath):
        """backend: a command line to which --shared-dir and --socket-path are added."""
        sock = mnt + ".sock"
        cmd = [*backend, "--shared-dir", share, "--socket-path", sock]
        return Daemon(cmd, mnt, logpath, bridge=[bridge_bin, sock, mnt, "1"])

    def __enter__(self):
        log("starting " + " ".join(shlex.quote(c) for c in self.cmd))
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        self.bridge = None
        if self.bridge_cmd:
            sock = self.bridge_cmd[1]
            deadline = time.time() + 20
            while not os.path.exists(sock):
                if self.proc.poll() is not None or time.time() > deadline:
                    self.proc.kill()
                    raise SystemExit(f"backend did not listen on {sock}; log: {self.logpath}\n"
                                     + open(self.logpath, errors="replace").read()[-3000:])
                time.sleep(0.01)
            self.bridge = subprocess.Popen(self.bridge_cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                           stderr=self.logf)
        deadline = time.time() + 20
        while not mounted(self.mnt):
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited with {self.proc.returncode} before mounting; log: {self.logpath}\n"
                                 + open(self.logpath, errors="replace").read()[-3000:])
            if time.time() > deadline:
                self.proc.kill()
                raise SystemExit(f"daemon did not mount {self.mnt} within 20 s; log: {self.logpath}")
            time.sleep(0.01)
        return self

    def alive(self):
        return self.proc.poll() is None and (self.bridge is None or self.bridge.poll() is None)

    def __exit__(self, *exc):
        if self.bridge is not None and self.bridge.poll() is None:
            self.bridge.send_signal(signal.SIGTERM)
            self.bridge.wait(timeout=60)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log("daemon ignored SIGTERM for 20 s: killing it")
                self.proc.kill()
                self.proc.wait()
        if self.proc.returncode != 0:
            log(f"warning: daemon exited with {self.proc.returncode} (expected 0); log: {self.logpath}")
        if mounted(self.mnt):
            log(f"warning: {self.mnt} still mounted after the daemon exited: lazy unmount")
            subprocess.run(["umount", "-l", self.mnt], check=False)
        self.logf.close()
        return False


def run_fio(directory, rw, bs, args):
    cmd = [
        "fio", "--name=bench", f"--directory={directory}", "--filename_format=fio.$jobnum",
        f"--rw={rw}", f"--bs={bs}", f"--size={args.size}M", f"--numjobs={args.numjobs}",
        "--ioengine=psync", "--direct=0", "--time_based", f"--runtime={args.runtime}",
        "--group_reporting", "--output-format=json",
        # Keep the host page cache warm for every target (fio's default invalidate=1 would send
        # the native reads to the disk while the daemon reads from the host's cache).
        "--invalidate=0",
    ]
    if "write" in rw:
        cmd.append("--end_fsync=1")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        # A target that fails a workload is shown as failed (n/a) rather than ending the run:
        # the other targets' figures are still worth having. The error goes to the log.
        log(f"fio failed ({p.returncode}) on {directory}: {p.stderr.strip()[:500]}")
        return None
    out = p.stdout[p.stdout.index("{"):]  # fio may print notes before the JSON
    job = json.loads(out)["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {"MiB/s": side["bw_bytes"] / (1 << 20), "IOPS": side["iops"]}


def layout(directory, args):
    """Creates the fio files once, natively, at full size (the read jobs reuse them), and reads
    them back so that they are in the host page cache."""
    for j in range(args.numjobs):
        path = os.path.join(directory, f"fio.{j}")
        want = args.size << 20
        if not (os.path.exists(path) and os.path.getsize(path) == want):
            with open(path, "wb") as f:
                block = os.urandom(1 << 20)
                for _ in range(args.size):
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def run_metadata(directory, args):
    cmd = [sys.executable, os.path.join(HERE, "metadata.py"), directory, "--files", str(args.files)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"metadata workload failed: {p.stderr}")
    return json.loads(p.stdout)


def measure(dirs, args, check):
    """Runs every workload on every target, interleaved (workload by workload, target after
    target) so that a burst of load elsewhere on the machine hits all targets alike; with
    --rounds > 1 the median of the rounds is kept."""
    samples = {label: {} for label in dirs}
    for r in range(args.rounds):
        rtag = f" round {r + 1}/{args.rounds}" if args.rounds > 1 else ""
        for name, rw, bs, metric in FIO_JOBS:
            for label, d in dirs.items():
                log(f"fio {name} ({args.runtime}s) on {label}{rtag}")
                r = run_fio(d, rw, bs, args)
                samples[label].setdefault(name, []).append(r[metric] if r else None)
                check()
        for label, d in dirs.items():
            log(f"metadata ({args.files} files) on {label}{rtag}")
            meta = run_metadata(d, args)
            for phase in META_PHASES:
                samples[label].setdefault(f"meta {phase}", []).append(meta[phase]["ops_per_s"])
            check()
    def median(v):
        ok = [x for x in v if x is not None]
        return statistics.median(ok) if ok else None

    return {label: {w: median(v) for w, v in ws.items()} for label, ws in samples.items()}


def fmt(v):
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def table(targets, results):
    rows = []
    units = {name: metric for name, _, _, metric in FIO_JOBS}
    for p in META_PHASES:
        units[f"meta {p}"] = "entries/s" if p == "readdir" else "ops/s"
    head = ["workload", "unit"]
    for label, _ in targets:
        head.append(label)
        if label != "native":
            head.append("ratio")
    rows.append("| " + " | ".join(head) + " |")
    rows.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for w in units:
        cells = [w, units[w]]
        base = results["native"][w]
        for label, _ in targets:
            v = results[label][w]
            cells.append(fmt(v) if v is not None else "failed")
            if label != "native":
                cells.append(f"{v / base:.2f}" if base and v is not None else "n/a")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="also write the table into docs/benchmarks.md")
    ap.add_argument("--runtime", type=int, default=10, help="seconds per fio workload (default 10)")
    ap.add_argument("--size", type=int, default=256, help="MiB per fio job file (default 256)")
    ap.add_argument("--numjobs", type=int, default=2, help="fio jobs (default 2)")
    ap.add_argument("--files", type=int, default=10000, help="files in the metadata workload (default 10000)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything, keep the median (default 1)")
    ap.add_argument("--dir", default=None, help="where to make the native directory (default: a new dir in /var/tmp)")
    ap.add_argument("--transport", choices=["fuse", "vhost-user"], default="fuse",
                    help="serve over /dev/fuse (default) or vhost-user through the bridge, with virtiofsd beside")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts FUSE")
    binary = os.environ.get("PHOENIXFSD") or os.path.join(ROOT, "target", host_tuple(), "release/phoenixfsd")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} is not an executable (build it, or set PHOENIXFSD=path)")
    extra = shlex.split(os.environ.get("PHOENIXFSD_ARGS", ""))
    phoenixfsd = [binary, "--log-level", "warn", *extra]
    if args.transport == "fuse":
        targets = [
            ("native", None),
            ("phoenixfsd", extra),
            ("phoenixfsd --recovery off", extra + ["--recovery", "off"]),
        ]
    else:
        virtiofsd = shutil.which("virtiofsd") or os.path.expanduser("~/.cargo/bin/virtiofsd")
        if not os.access(virtiofsd, os.X_OK):
            raise SystemExit("virtiofsd is missing: run scripts/setup.sh (cargo install virtiofsd)")
        bridge_bin = os.environ.get("VHOST_BRIDGE") or os.path.join(ROOT, "target", host_tuple(), "release/examples/vhost_bridge")
        targets = [
            ("native", None),
            ("virtiofsd", [virtiofsd, "--sandbox", "none", "--seccomp", "none", "--log-level", "error"]),
            ("phoenixfsd", phoenixfsd),
            ("phoenixfsd --recovery off", phoenixfsd + ["--recovery", "off"]),
        ]

    top = tempfile.mkdtemp(prefix="phoenixfs-bench.", dir=args.dir or "/var/tmp")
    os.chmod(top, 0o755)
    share = os.path.join(top, "share")
    os.mkdir(share)
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", share], capture_output=True, text=True).stdout.strip()
    log(f"native directory {share} ({fstype}); daemon {binary} {' '.join(extra)}")
    mnts = []
    ok = False
    try:
        log(f"laying out {args.numjobs} x {args.size} MiB fio files")
        layout(share, args)
        with contextlib.ExitStack() as stack:
            dirs, daemons = {}, []
            for i, (label, dargs) in enumerate(targets):
                if dargs is None:
                    dirs[label] = share
                    continue
                mnt = os.path.join(top, f"mnt{i}")
                os.mkdir(mnt)
                mnts.append(mnt)
                logpath = os.path.join(top, f"daemon{i}.log")
                daemon = (Daemon.fuse(binary, share, mnt, dargs, logpath) if args.transport == "fuse"
                          else Daemon.vhost(dargs, share, mnt, bridge_bin, logpath))
                daemons.append(stack.enter_context(daemon))
                dirs[label] = mnt

            def check():
                for d in daemons:
                    if not d.alive():
                        raise SystemExit(f"daemon died during the workload; log: {d.logpath}\n"
                                         + open(d.logpath, errors="replace").read()[-3000:])

            results = measure(dirs, args, check)
        ok = True
    finally:
        for mnt in mnts:
            if mounted(mnt):
                subprocess.run(["umount", "-l", mnt], check=False)
        if ok:
            shutil.rmtree(top, ignore_errors=True)
        else:
            shutil.rmtree(share, ignore_errors=True)
            log(f"failed: daemon logs kept in {top}")

    fio_ver = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
    conf = (f"fio {args.numjobs} jobs x {args.size} MiB, psync, direct=0, invalidate=0, {args.runtime} s each; "
            f"metadata: {args.files} files of 128 B, 10 readdir passes; targets interleaved per workload"
            + (f"; median of {args.rounds} rounds" if args.rounds > 1 else ""))
    machine = (f"{os.cpu_count()} CPUs, kernel {platform.release()}, native fs {fstype}, {fio_ver}, "
               f"daemon `{os.path.basename(binary)}{(' ' + ' '.join(extra)) if extra else ''}`")
    ratio_note = "ratio = result / native result (higher is better; 1.00 = native speed)"
    if args.transport == "vhost-user":
        conf += ("; each daemon serves vhost-user and is mounted through the FUSE-to-virtqueue bridge "
                 "(examples/vhost_bridge.rs, 1 request queue, one request in flight per queue: virtiofsd "
                 "offers one request queue), so every column pays the same bridge")
    tbl = table(targets, results)
    print(tbl)
    print()
    print(f"{conf}. {ratio_note}.")
    print(f"Machine: {machine}.")

    if args.write:
        cmd = args.command or "scripts/bench.sh --write"
        doc = os.path.join(ROOT, "docs", "benchmarks.md")
        os.makedirs(os.path.dirname(doc), exist_ok=True)
        body = ("Same workloads on a native directory, on a phoenixfsd FUSE mount of it, and on phoenixfsd with "
                "`--recovery off` (the bare engine: what crash-proofing costs is the difference between the two "
                "FUSE columns).\n\n"
                f"Produced by `{cmd}` on {datetime.date.today().isoformat()}.\n\n"
                + tbl + "\n\n"
                f"- Workloads: {conf}.\n- {ratio_note}.\n- Machine: {machine}.\n"
                "- Buffered I/O: the host page cache is warm for every target, and FUSE reads after the first "
                "pass over a file come from the kernel's FUSE page cache, so read ratios mostly show that cache; "
                "without `--writeback` every FUSE write is a request to the daemon.\n"
                "- Numbers from one run on a shared 2-core machine: differences of ~10% are noise.\n")
        if args.transport == "vhost-user":
            body = body.replace(
                "Same workloads on a native directory, on a phoenixfsd FUSE mount of it, and on phoenixfsd with "
                "`--recovery off` (the bare engine: what crash-proofing costs is the difference between the two "
                "FUSE columns).",
                "Same workloads on a native directory and over vhost-user on virtiofsd 1.14 (crates.io), "
                "phoenixfsd, and phoenixfsd `--recovery off`, each driven by the same test frontend "
                "(the peer comparison; what crash-proofing costs is the difference between the last two).")
        write_section(doc, VHOST_SECTION if args.transport == "vhost-user" else THROUGHPUT_SECTION, body)
        log(f"wrote {doc}")


THROUGHPUT_SECTION = "## Throughput against the native directory"
VHOST_SECTION = "## Over vhost-user, against virtiofsd"


def write_section(doc, heading, body):
    """Replaces the `heading` section of `doc` (up to the next '## ' heading), or appends it; the
    rest of the file is left as it is, so each benchmark script owns only its own section."""
    text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == heading), None)
    new = heading + "\n\n" + body.rstrip() + "\n"
    if start is None:
        out = text.rstrip("\n") + "\n\n" + new
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        out = "".join(lines[:start]) + new + ("\n" + tail if tail else "")
    with open(doc, "w") as f:
        f.write(out)


if __name__ == "__main__":
    main()
