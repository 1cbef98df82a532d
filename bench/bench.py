#!/usr/bin/env python3
"""phoenixfs benchmark: the same workloads, in one run, on the native directory and on every
file-system daemon mounted on it, interleaved workload by workload; prints markdown tables with
medians (min–max over the rounds) and ratios.

Over /dev/fuse (default): native, libfuse's passthrough_ll (built by scripts/bench.sh from the
examples of Debian's libfuse3-dev), phoenixfsd and phoenixfsd --recovery off.
With --transport vhost-user (or fuse,vhost-user: both in one run) the daemons serve virtio-fs instead, each mounted on the host through
the FUSE-to-virtqueue bridge (examples/vhost_bridge.rs, one request queue carrying one request at
a time), with virtiofsd from crates.io as the peer: the peer comparison without a VM. Two more
phoenixfsd columns vary the bridge: 4 request queues, and 1 queue carrying 4 requests at once.

--backing tmpfs puts the shared directory on a tmpfs of its own (what the FUSE layer costs,
alone); --backing disk on the disk (/var/tmp or --dir); --backing tmpfs,disk both, one table each.

Workloads:
  fio (ioengine=psync, so one request in flight per job), time-based:
    seq 1 MiB and rand 4 KiB read and write, buffered, --numjobs jobs;
    the same with O_DIRECT: 1 MiB with --numjobs jobs, 4 KiB with 1 job (QD1) and with 4 jobs;
  metadata (bench/metadata.py): create, stat, read (open-read-close), readdir, rename, unlink of
    --files small files, with 1 and with 4 processes;
  mixed (bench/mixed.py): untar a tarball of --mixed-files small files, find + stat, read all,
    rm -rf.
CPU: for the workloads with a fixed amount of work (metadata, mixed), the user + system CPU time
of each daemon's processes (/proc/<pid>/stat) across the workload: what the same work costs each
daemon, less disturbed by the machine's load than throughput (phoenixfsd's includes the looking
of --fuse-spin-us).
Memory, after the last workload: each daemon process's RSS and peak RSS (/proc), and phoenixfsd's
state region, live inodes and handles (its control socket).

Run it through scripts/bench.sh (which builds phoenixfsd and passthrough_ll and checks for fio).
Must run as root (mounts FUSE and tmpfs). Not a test: numbers depend on the machine and whatever
else runs on it; the interleaving keeps the ratios meaningful under outside load.

Environment: PHOENIXFSD (daemon binary, default target/<host tuple>/release/phoenixfsd), PHOENIXFSD_ARGS
(extra arguments for every phoenixfsd, e.g. "--writeback"), PASSTHROUGH_LL (its binary),
VHOST_BRIDGE (the bridge binary), PHOENIXFSD_BASELINE (another phoenixfsd build, measured as one
more column "baseline" with a ratio pfs/baseline: a change's before/after in one run),
PHOENIXFSD_BASELINE_ARGS (the baseline's arguments instead of PHOENIXFSD_ARGS: an option's
before/after, e.g. PHOENIXFSD_ARGS=--writeback PHOENIXFSD_BASELINE=<same binary>
PHOENIXFSD_BASELINE_ARGS="").
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import report

def host_tuple():
    """The target tuple cargo builds for (.cargo/config.toml names the host's: outputs are under
    target/<tuple>/)."""
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("host: "))


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name, rw, bs, direct, jobs (None: --numjobs), metric
FIO_JOBS = [
    ("seq-write 1M", "write", "1M", 0, None, "MiB/s"),
    ("seq-read 1M", "read", "1M", 0, None, "MiB/s"),
    ("rand-write 4K", "randwrite", "4k", 0, None, "IOPS"),
    ("rand-read 4K", "randread", "4k", 0, None, "IOPS"),
    ("seq-write 1M direct", "write", "1M", 1, None, "MiB/s"),
    ("seq-read 1M direct", "read", "1M", 1, None, "MiB/s"),
    ("rand-write 4K direct QD1", "randwrite", "4k", 1, 1, "IOPS"),
    ("rand-read 4K direct QD1", "randread", "4k", 1, 1, "IOPS"),
    ("rand-write 4K direct 4 jobs", "randwrite", "4k", 1, 4, "IOPS"),
    ("rand-read 4K direct 4 jobs", "randread", "4k", 1, 4, "IOPS"),
]
META_PHASES = ["create", "stat", "read", "readdir", "rename", "unlink"]
META_THREADS = [1, 4]
MIXED_PHASES = ["untar", "find+stat", "read", "rm", "total"]
FIO_FILES = 4  # the most jobs any fio workload runs


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mounted(mnt):
    mnt = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == mnt for line in f)


class Daemon:
    """A daemon serving share at mnt, for the duration of a with-block: one that mounts /dev/fuse
    itself, or (bridge given) a vhost-user backend listening on a socket next to mnt, mounted
    through the bridge. `control` is phoenixfsd's control socket, if it has one."""

    def __init__(self, cmd, mnt, logpath, bridge=None, control=None, exit_codes=(0,)):
        self.cmd = cmd
        self.exit_codes = exit_codes
        self.mnt = mnt
        self.logpath = logpath
        self.bridge_cmd = bridge
        self.control = control

    @staticmethod
    def phoenixfsd(binary, share, mnt, args, logpath):
        ctl = mnt + ".ctl"
        cmd = [binary, "--shared-dir", share, "--mountpoint", mnt, "--log-level", "warn",
               "--control-socket", ctl, *args]
        return Daemon(cmd, mnt, logpath, control=ctl)

    @staticmethod
    def passthrough_ll(binary, share, mnt, logpath):
        # As phoenixfsd mounts: every user, the kernel checks permissions.
        cmd = [binary, "-f", "-o", f"source={share},allow_other,default_permissions", mnt]
        # libfuse's signal handler stores the signal as the session's error: the example then
        # exits 1 after a SIGTERM.
        return Daemon(cmd, mnt, logpath, exit_codes=(0, 1))

    @staticmethod
    def vhost(backend, share, mnt, bridge_bin, logpath, control=False, queues=1, in_flight=1):
        """backend: a command line to which --shared-dir and --socket-path are added; the bridge
        drives `queues` request queues, each carrying up to `in_flight` requests at once."""
        sock = mnt + ".sock"
        cmd = [*backend, "--shared-dir", share, "--socket-path", sock]
        return Daemon(cmd, mnt, logpath, bridge=[bridge_bin, sock, mnt, str(queues), str(in_flight)],
                      control=sock + ".ctl" if control else None)

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

    def pids(self):
        """The daemon's processes: the one started and every process below it, the bridge left out."""
        bridge = self.bridge.pid if self.bridge else None
        return [pid for pid in [self.proc.pid, *descendants(self.proc.pid)] if pid != bridge]

    def memory(self, binary):
        """RSS and peak RSS of each process of the daemon, and phoenixfsd's own status (state
        region, live inodes, open handles) from its control socket."""
        procs = []
        for pid in self.pids():
            try:
                status = open(f"/proc/{pid}/status").read()
            except OSError:
                continue
            name = re.search(r"^Name:\s*(\S+)", status, re.M).group(1)
            rss = re.search(r"^VmRSS:\s*(\d+)", status, re.M)
            hwm = re.search(r"^VmHWM:\s*(\d+)", status, re.M)
            if rss and hwm:
                procs.append((name, int(rss.group(1)), int(hwm.group(1))))
        st = None
        if self.control:
            p = subprocess.run([binary, "ctl", "--socket", self.control, "status", "--json"],
                               capture_output=True, text=True)
            if p.returncode == 0:
                st = json.loads(p.stdout)
            else:
                log(f"phoenixfsd ctl status on {self.control} failed: {p.stderr.strip()}")
        return {"procs": procs, "status": st}

    def cpu_seconds(self):
        """User and system CPU time the daemon's processes have used so far, every thread
        counted."""
        total = 0
        for pid in self.pids():
            fields = proc_stat(pid)
            if fields:
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return total / os.sysconf("SC_CLK_TCK")

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
        if self.proc.returncode not in self.exit_codes:
            log(f"warning: {self.cmd[0]} exited with {self.proc.returncode} (expected {self.exit_codes[0]}); "
                f"log: {self.logpath}")
        if mounted(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], check=False)
        self.logf.close()
        return False


def proc_stat(pid):
    """/proc/<pid>/stat's fields after the command name (the first is field 3, the state), or
    None if the process is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def descendants(pid):
    """Every process below `pid` (by /proc/*/stat's parent field)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            fields = proc_stat(d)
            if fields:
                parent[int(d)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def run_fio(directory, rw, bs, direct, jobs, args):
    cmd = [
        "fio", "--name=bench", f"--directory={directory}", "--filename_format=fio.$jobnum",
        f"--rw={rw}", f"--bs={bs}", f"--size={args.size}M", f"--numjobs={jobs}",
        "--ioengine=psync", f"--direct={direct}", "--time_based", f"--runtime={int(args.runtime * 1000)}ms",
        "--group_reporting", "--output-format=json",
        # Keep the host page cache warm for every target (fio's default invalidate=1 would send
        # the native reads to the disk while the daemon reads from the host's cache).
        "--invalidate=0",
    ]
    if "write" in rw:
        cmd.append("--end_fsync=1")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        # A target that fails a workload is shown as failed rather than ending the run: the
        # other targets' figures are still worth having. The error goes to the log.
        log(f"fio failed ({p.returncode}) on {directory}: {(p.stderr or p.stdout).strip()[:500]}")
        return None
    out = p.stdout[p.stdout.index("{"):]  # fio may print notes before the JSON
    job = json.loads(out)["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {"MiB/s": side["bw_bytes"] / (1 << 20), "IOPS": side["iops"]}


def layout(directory, args):
    """Creates the fio files once, natively, at full size (the read jobs reuse them), and reads
    them back so that they are in the host page cache."""
    for j in range(FIO_FILES):
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


def run_script(script, directory, extra):
    cmd = [sys.executable, os.path.join(HERE, script), directory, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        log(f"{script} failed on {directory}: {p.stderr.strip()[:500]}")
        return None
    return json.loads(p.stdout)


def workloads(args, tarball):
    """[(title, [(row, unit)], fn(dir) -> {row: value or None})], the order they run in."""
    out = []
    for name, rw, bs, direct, jobs, metric in FIO_JOBS:
        def fio(d, rw=rw, bs=bs, direct=direct, jobs=jobs, metric=metric, name=name):
            r = run_fio(d, rw, bs, direct, jobs or args.numjobs, args)
            return {name: r[metric] if r else None}
        out.append((f"fio {name}", [(name, metric)], fio))
    for t in META_THREADS:
        rows = [(f"meta {p} x{t}", "entries/s" if p == "readdir" else "ops/s") for p in META_PHASES]

        def meta(d, t=t):
            r = run_script("metadata.py", d, ["--files", str(args.files), "--threads", str(t)])
            return {f"meta {p} x{t}": r[p]["ops_per_s"] if r else None for p in META_PHASES}
        out.append((f"metadata ({args.files} files, {t} process{'es' if t > 1 else ''})", rows, meta))
    rows = [(f"mixed {p}", "files/s") for p in MIXED_PHASES]

    def mixed(d):
        r = run_script("mixed.py", d, ["--tarball", tarball, "--files", str(args.mixed_files)])
        return {f"mixed {p}": r[p]["ops_per_s"] if r else None for p in MIXED_PHASES}
    out.append((f"mixed ({args.mixed_files} files: untar, find, read, rm)", rows, mixed))
    if args.only:
        pat = re.compile(args.only)
        out = [w for w in out if pat.search(w[0])]
    return out


def cpu_row(title):
    """The CPU table's row for a workload that does a fixed amount of work (the metadata and mixed
    workloads: so many files), whatever its speed; None for the fio workloads, which run for a
    fixed time."""
    return None if title.startswith("fio") else f"cpu {title}"


def measure(dirs, daemons, work, args, check, progress):
    """Runs every workload on every target, interleaved (workload by workload, target after
    target, and each round's target order rotated) so that a burst of load elsewhere on the
    machine hits all targets alike; keeps every round's value, and for the daemons the CPU time
    each fixed-work workload cost them (`cpu_row`)."""
    samples = {label: {} for label in dirs}
    labels = list(dirs)
    for r in range(args.rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for title, rows, fn in work:
            for label in order:
                progress(f"{title} on {label}, round {r + 1}/{args.rounds}")
                daemon, cpu = daemons.get(label), cpu_row(title)
                cpu0 = daemon.cpu_seconds() if daemon and cpu else None
                got = fn(dirs[label])
                if cpu0 is not None:
                    samples[label].setdefault(cpu, []).append((daemon.cpu_seconds() - cpu0) * 1000)
                for row, _ in rows:
                    samples[label].setdefault(row, []).append(got.get(row))
                check()
    return samples


class Progress:
    def __init__(self, total):
        self.total, self.done, self.t0 = total, 0, time.time()

    def __call__(self, what):
        eta = ""
        if self.done:
            left = (time.time() - self.t0) / self.done * (self.total - self.done)
            eta = f", ~{left / 60:.1f} min left"
        self.done += 1
        log(f"[{self.done}/{self.total}{eta}] {what}")


# The vhost-user comparison's multiqueue column: phoenixfsd through a bridge with this many
# request queues.
MQ_QUEUES = 4
MQ_LABEL = f"phoenixfsd {MQ_QUEUES}q"
# Its in-flight column: phoenixfsd through a bridge whose one request queue carries this many
# requests at once.
IN_FLIGHT = 4
IN_FLIGHT_LABEL = f"phoenixfsd 1q×{IN_FLIGHT}"
IN_FLIGHT_PEER = f"virtiofsd 1q×{IN_FLIGHT}"


def targets_for(transport, binary, extra):
    """[(label, how to start it or None for the native directory)]."""
    if transport == "fuse":
        pll = os.environ.get("PASSTHROUGH_LL") or ""
        if not os.access(pll, os.X_OK):
            raise SystemExit("passthrough_ll is missing: run it through scripts/bench.sh, or set PASSTHROUGH_LL=path")
        targets = [
            ("native", None),
            ("passthrough_ll", lambda s, m, l: Daemon.passthrough_ll(pll, s, m, l)),
            ("phoenixfsd", lambda s, m, l: Daemon.phoenixfsd(binary, s, m, extra, l)),
            ("phoenixfsd off", lambda s, m, l: Daemon.phoenixfsd(binary, s, m, extra + ["--recovery", "off"], l)),
        ]
        base = baseline(extra)
        if base:
            targets.append(("baseline", lambda s, m, l: Daemon.phoenixfsd(base[0], s, m, base[1], l)))
        return targets
    virtiofsd = shutil.which("virtiofsd") or os.path.expanduser("~/.cargo/bin/virtiofsd")
    if not os.access(virtiofsd, os.X_OK):
        raise SystemExit("virtiofsd is missing: run scripts/setup.sh (cargo install virtiofsd)")
    bridge = os.environ.get("VHOST_BRIDGE") or os.path.join(ROOT, "target", host_tuple(), "release/examples/vhost_bridge")
    pfs = [binary, "--log-level", "warn", *extra]
    vfs = [virtiofsd, "--sandbox", "none", "--seccomp", "none", "--log-level", "error"]
    base = baseline(extra)
    base_cols = []
    if base:
        base_cmd = [base[0], "--log-level", "warn", *base[1]]
        base_cols.append(("baseline", lambda s, m, l: Daemon.vhost(base_cmd, s, m, bridge, l, control=True)))
    return [
        ("native", None),
        ("virtiofsd", lambda s, m, l: Daemon.vhost(vfs, s, m, bridge, l)),
        ("phoenixfsd", lambda s, m, l: Daemon.vhost(pfs, s, m, bridge, l, control=True)),
        ("phoenixfsd off", lambda s, m, l: Daemon.vhost(pfs + ["--recovery", "off"], s, m, bridge, l, control=True)),
        # What a guest on Linux 6.10+ gets when QEMU gives the device several request queues
        # (num-request-queues): phoenixfsd serves each on its own thread; virtiofsd offers one.
        (MQ_LABEL, lambda s, m, l: Daemon.vhost(pfs, s, m, bridge, l, control=True, queues=MQ_QUEUES)),
        # What any guest does with its one request queue when several processes wait in
        # syscalls: several requests in flight on it at once.
        (IN_FLIGHT_LABEL, lambda s, m, l: Daemon.vhost(pfs, s, m, bridge, l, control=True, in_flight=IN_FLIGHT)),
        # virtiofsd given the same: it serves them one at a time (its default, no thread pool).
        (IN_FLIGHT_PEER, lambda s, m, l: Daemon.vhost(vfs, s, m, bridge, l, in_flight=IN_FLIGHT)),
    ] + base_cols


def baseline(extra):
    """(binary, arguments) of PHOENIXFSD_BASELINE, another build of the daemon measured beside
    this one (a change's before/after in the same interleaved run), or None."""
    base = os.environ.get("PHOENIXFSD_BASELINE")
    if not base:
        return None
    if not os.access(base, os.X_OK):
        raise SystemExit(f"PHOENIXFSD_BASELINE={base} is not an executable")
    return base, shlex.split(os.environ.get("PHOENIXFSD_BASELINE_ARGS", shlex.join(extra)))


def run_backing(backing, targets, work, args, binary, tarball, progress):
    """Sets up the shared directory on `backing`, mounts every target on it, measures; returns
    (samples, memory, native file system type)."""
    top = tempfile.mkdtemp(prefix=f"phoenixfs-bench.{backing}.", dir=args.dir or "/var/tmp")
    os.chmod(top, 0o755)
    base = top
    if backing == "tmpfs":
        base = os.path.join(top, "tmpfs")
        os.mkdir(base)
        size = FIO_FILES * args.size + 1024
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m,mode=0755", "bench", base], check=True)
    share = os.path.join(base, "share")
    os.mkdir(share)
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", share], capture_output=True,
                            text=True).stdout.strip()
    log(f"backing {backing}: native directory {share} ({fstype})")
    mnts, ok = [], False
    try:
        if any(w[0].startswith("fio") for w in work):
            log(f"laying out {FIO_FILES} x {args.size} MiB fio files")
            layout(share, args)
        with contextlib.ExitStack() as stack:
            dirs, daemons = {}, {}
            for i, (label, start) in enumerate(targets):
                if start is None:
                    dirs[label] = share
                    continue
                mnt = os.path.join(top, f"mnt{i}")
                os.mkdir(mnt)
                mnts.append(mnt)
                daemons[label] = stack.enter_context(start(share, mnt, os.path.join(top, f"daemon{i}.log")))
                dirs[label] = mnt

            def check():
                for label, d in daemons.items():
                    if not d.alive():
                        raise SystemExit(f"{label} died during the workload; log: {d.logpath}\n"
                                         + open(d.logpath, errors="replace").read()[-3000:])

            samples = measure(dirs, daemons, work, args, check, progress)
            memory = {label: d.memory(binary) for label, d in daemons.items()}
        ok = True
    finally:
        for mnt in mnts:
            if mounted(mnt):
                subprocess.run(["umount", "-l", mnt], check=False)
        if ok or backing == "tmpfs":
            shutil.rmtree(share, ignore_errors=True)
        if backing == "tmpfs":
            subprocess.run(["umount", "-l", base], check=False)
        if ok:
            shutil.rmtree(top, ignore_errors=True)
        else:
            log(f"failed: daemon logs kept in {top}")
    return samples, memory, fstype


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="also write the tables into docs/benchmarks.md")
    ap.add_argument("--backing", default="tmpfs", help="tmpfs, disk or tmpfs,disk (default tmpfs)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each figure is their median (default 3)")
    ap.add_argument("--runtime", type=float, default=1.5, help="seconds per fio workload (default 1.5)")
    ap.add_argument("--size", type=int, default=64, help="MiB per fio job file (default 64)")
    ap.add_argument("--numjobs", type=int, default=2, help="fio jobs of the buffered and 1 MiB workloads (default 2)")
    ap.add_argument("--files", type=int, default=4000, help="files in the metadata workload (default 4000)")
    ap.add_argument("--mixed-files", type=int, default=2000, help="files in the mixed workload's tarball (default 2000)")
    ap.add_argument("--only", default=None, help="run only the workloads whose title matches this regex")
    ap.add_argument("--dir", default=None, help="where to make the directories (default /var/tmp)")
    ap.add_argument("--transport", default="fuse",
                    help="fuse (default: /dev/fuse, passthrough_ll as the peer), vhost-user (through the test "
                         "bridge, virtiofsd as the peer) or fuse,vhost-user (both, one after the other)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts FUSE and tmpfs")
    backings = args.backing.split(",")
    if any(b not in ("tmpfs", "disk") for b in backings):
        raise SystemExit(f"--backing {args.backing}: say tmpfs, disk or tmpfs,disk")
    transports = args.transport.split(",")
    if any(t not in ("fuse", "vhost-user") for t in transports):
        raise SystemExit(f"--transport {args.transport}: say fuse, vhost-user or fuse,vhost-user")
    binary = os.environ.get("PHOENIXFSD") or os.path.join(ROOT, "target", host_tuple(), "release/phoenixfsd")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} is not an executable (build it, or set PHOENIXFSD=path)")
    extra = shlex.split(os.environ.get("PHOENIXFSD_ARGS", ""))
    targets = {t: targets_for(t, binary, extra) for t in transports}

    cache = tempfile.mkdtemp(prefix="phoenixfs-bench.tar.")
    tarball = os.path.join(cache, "tree.tar")
    subprocess.run([sys.executable, os.path.join(HERE, "mixed.py"), "--make", tarball, "--files",
                    str(args.mixed_files)], check=True)
    work = workloads(args, tarball)
    progress = Progress(len(backings) * args.rounds * len(work) * sum(len(ts) for ts in targets.values()))
    results = {}
    try:
        for t in transports:
            load_before = os.getloadavg()
            runs = {b: run_backing(b, targets[t], work, args, binary, tarball, progress) for b in backings}
            results[t] = (runs, load_before, os.getloadavg())
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    for t, (runs, load_before, load_after) in results.items():
        out = render(t, targets[t], runs, work, args, binary, extra, load_before, load_after)
        print(out)
        if args.write:
            cmd = args.command or "scripts/bench.sh --write"
            doc = os.path.join(ROOT, "docs", "benchmarks.md")
            heading = VHOST_SECTION if t == "vhost-user" else THROUGHPUT_SECTION
            who = ("virtiofsd 1.14 (crates.io), phoenixfsd and phoenixfsd `--recovery off`, each over vhost-user "
                   "through the same test bridge" if t == "vhost-user" else
                   "libfuse's passthrough_ll (3.14, built from Debian's libfuse3-dev examples, its defaults: "
                   "cache=auto, 1 s timeouts, multi-threaded), phoenixfsd and phoenixfsd `--recovery off` (the "
                   "bare engine: the cost of being crash-proof), each mounted on it")
            body = (f"The same workloads on the native directory and on {who}.\n\n"
                    f"Produced by `{cmd}` on {datetime.date.today().isoformat()} at {time.strftime('%H:%M')} UTC.\n\n"
                    + out)
            report.write_section(doc, heading, body)
            log(f"wrote the {t} tables into {doc}")


def render(transport, targets, runs, work, args, binary, extra, load_before, load_after):
    """One transport's tables (one per backing, with memory) and notes, in markdown."""
    labels = [label for label, _ in targets]
    peer = labels[1]
    rows = [r for _, rs, _ in work for r in rs]
    ratios = [("pfs/native", "phoenixfsd", "native"), (f"pfs/{peer}", "phoenixfsd", peer),
              ("on/off", "phoenixfsd", "phoenixfsd off")]
    if "baseline" in labels:
        ratios.append(("pfs/baseline", "phoenixfsd", "baseline"))
    if MQ_LABEL in labels:
        ratios.append((f"{MQ_QUEUES}q/{peer}", MQ_LABEL, peer))
    if IN_FLIGHT_LABEL in labels:
        ratios.append((f"1q×{IN_FLIGHT}/pfs", IN_FLIGHT_LABEL, "phoenixfsd"))
    if IN_FLIGHT_PEER in labels:
        ratios.append((f"1q×{IN_FLIGHT} pfs/vfsd", IN_FLIGHT_LABEL, IN_FLIGHT_PEER))
    fio_ver = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
    per_inode, per_handle = report.slot_sizes(ROOT)
    sections = []
    cpu_rows = [(cpu_row(title), "ms") for title, _, _ in work if cpu_row(title)]
    daemons = [label for label, start in targets if start is not None]
    cpu_ratios = [(h, num, den) for h, num, den in ratios if num in daemons and den in daemons]
    for b, (samples, memory, fstype) in runs.items():
        tbl = report.table(labels, rows, samples, ratios)
        mem = report.memory_table(memory, per_inode, per_handle)
        section = f"### {transport}, backing: {b} ({fstype})\n\n{tbl}\n\n"
        if cpu_rows:
            cpu = report.table(daemons, cpu_rows, samples, cpu_ratios)
            section += ("Daemon CPU time (user + system, every process and thread of the daemon) for the same "
                        f"work, lower is better:\n\n{cpu}\n\n")
        sections.append(section + f"Memory after the last workload:\n\n{mem}\n")
    conf = (f"fio psync (one request in flight per job), {args.size} MiB per job file, {args.runtime} s per "
            f"workload, invalidate=0, writes end with fsync; buffered and 1 MiB direct with {args.numjobs} jobs; "
            f"metadata: {args.files} files of 128 B (split among the processes), 10 readdir passes; mixed: "
            f"{args.mixed_files} files of 100 B–64 KiB in 100 directories; targets interleaved per workload, "
            f"their order rotated each round; median (min–max) of {args.rounds} round{'s' if args.rounds > 1 else ''}")
    if transport == "vhost-user":
        conf += ("; each daemon serves vhost-user and is mounted through the FUSE-to-virtqueue bridge "
                 "(examples/vhost_bridge.rs, 1 request queue: virtiofsd offers one), so every column but native "
                 "pays the same bridge; the bridge of virtiofsd, phoenixfsd and phoenixfsd off carries one request "
                 "at a time, as in earlier runs, so that their figures stay comparable with those; "
                 f"`{MQ_LABEL}` is phoenixfsd through the bridge with {MQ_QUEUES} request queues (as a guest on "
                 f"Linux 6.10+ uses them when QEMU's `num-request-queues` is {MQ_QUEUES}; virtiofsd offers one): "
                 f"up to {MQ_QUEUES} requests in flight, one per queue; `{IN_FLIGHT_LABEL}` is phoenixfsd through "
                 f"the bridge with 1 request queue carrying up to {IN_FLIGHT} requests at once (one bridge thread "
                 "each, as any guest's driver keeps several in flight on its one queue when several processes "
                 "wait in syscalls), which a workload fills only when it has several requests outstanding "
                 "(several jobs or processes, or the kernel's readahead and writeback); "
                 f"`{IN_FLIGHT_PEER}` is virtiofsd through that same bridge (it serves them one at a time: "
                 "its default, without `--thread-pool-size`)")
    machine = (f"{os.cpu_count()} CPUs, kernel {platform.release()}, {fio_ver}, "
               f"daemon `{os.path.basename(binary)}{(' ' + ' '.join(extra)) if extra else ''}`, "
               f"load average {load_before[0]:.1f} at the start and {load_after[0]:.1f} at the end")
    notes = (f"- Workloads: {conf}.\n"
             "- Ratios from the medians: pfs/native = phoenixfsd / native, "
             f"pfs/{peer} = phoenixfsd / {peer}, on/off = phoenixfsd / phoenixfsd --recovery off "
             "(the cost of being crash-proof)"
             + (f", {MQ_QUEUES}q/{peer} = {MQ_LABEL} / {peer}" if MQ_LABEL in labels else "")
             + (f", 1q×{IN_FLIGHT}/pfs = {IN_FLIGHT_LABEL} / phoenixfsd (what {IN_FLIGHT} requests in flight on "
                "its one queue give phoenixfsd)" if IN_FLIGHT_LABEL in labels else "")
             + (f", 1q×{IN_FLIGHT} pfs/vfsd = {IN_FLIGHT_LABEL} / {IN_FLIGHT_PEER} (both daemons given the "
                "same driver)" if IN_FLIGHT_PEER in labels else "")
             + ". Higher is better for every unit; a ratio marked * is one whose two columns' min–max "
             "ranges do not overlap (every round of one beat every round of the other); unmarked ratios "
             "are not a difference this run can show. In the CPU table a ratio above 1 is the numerator "
             "spending more CPU on the same work (on/off: what being crash-proof costs in CPU; phoenixfsd's "
             "includes its first serving thread's looking before sleeping, `--fuse-spin-us`); CPU time "
             "is counted in clock ticks and includes time the host took from this VM's CPUs, so it is less "
             "noisy than throughput but not free of noise.\n"
             f"- Machine: {machine}. On a shared machine the min–max ranges show what the load did to "
             "single rounds; ratios within the overlap of two columns' ranges are not a difference.\n"
             "- O_DIRECT rows are not like for like: phoenixfsd, as virtiofsd, drops O_DIRECT from the host "
             "open unless `--allow-direct-io` (the application's direct I/O still reaches the daemon request "
             "by request, which then uses the host page cache), so on a disk its direct reads can beat "
             "native; passthrough_ll passes O_DIRECT to the host with unaligned buffers, which ext4 refuses "
             "(EINVAL: failed).\n"
             "- Buffered I/O: the host page cache is warm for every target (invalidate=0), and FUSE reads after "
             "the first pass over a file come from the kernel's FUSE page cache, so read ratios mostly show that "
             "cache; without `--writeback` every FUSE write is a request to the daemon.\n"
             "- Memory: the state region's size is its mapped capacity (sparse: only touched pages are resident, "
             "and counted in the worker's RSS); \"RSS at end\" is after the workloads removed their files, peak "
             "RSS includes the metadata workload's live inodes and the fio buffers.\n")
    return "\n".join(sections) + "\n" + notes


THROUGHPUT_SECTION = "## Throughput against the native directory and passthrough_ll"
VHOST_SECTION = "## Over vhost-user, against virtiofsd"


if __name__ == "__main__":
    main()
