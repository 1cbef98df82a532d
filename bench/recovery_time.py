#!/usr/bin/env python3
"""phoenixfs recovery-time benchmark (not a test): how long a killed worker keeps the mount
waiting, as a function of the number of live inodes the kernel holds.

For each size L: lay out L empty files natively in a fresh share (FILES_PER_DIR per
directory), mount it with `phoenixfsd --recovery on`, and make the kernel look up every file
(readdir + lstat of each through the mount), so that the daemon holds L live inodes (L O_PATH
fds and L inode-table slots). Then, REPEATS times: SIGKILL the worker (the supervisor's child)
and at once issue one request (lstat of a fresh absent name: a LOOKUP no cache can answer);
the time from the kill to that request's reply is the recovery time as an application sees it
(worker restart + recovery scan + fd cleanup + resend + the request itself). The same request
without a kill is measured too, as the floor.

Run it through scripts/bench-recovery.sh (which builds phoenixfsd). Must run as root. For 1M
inodes it raises fs.nr_open (the daemon sets RLIMIT_NOFILE to it) and fs.file-max if they are
too small, and restores them afterwards; the kernel needs ~1.5 GB for 1M cached FUSE inodes.

Environment: PHOENIXFSD (daemon binary, default target/<host tuple>/release/phoenixfsd), PHOENIXFSD_ARGS
(extra daemon arguments, e.g. "--thread-pool-size 2").
"""
import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import stat
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
sys.path.insert(0, HERE)
from bench import Daemon, log, write_section  # noqa: E402  (bench/bench.py: start/stop/mount-wait helpers)

DEFAULT_MAX_INODES = 1 << 22  # phoenixfsd's --max-inodes default
SECTION = "## Recovery time"


def parse_size(s):
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (want e.g. 10000, 10k, 1M)")
    return int(m.group(1)) * {"": 1, "k": 1000, "m": 1000_000}[m.group(2).lower()]


def fmt_size(n):
    if n >= 1000_000 and n % 1000_000 == 0:
        return f"{n // 1000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def proc_stat(pid):
    """(state, ppid, starttime) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    return f[0], int(f[1]), int(f[19])


def comm(pid):
    with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
        return f.read().strip()
    return ""


def supervisor_of(daemon, timeout=10.0):
    """The supervisor of the daemon process `daemon`: itself with --sandbox none, else its child
    (the daemon stays outside the sandbox as the holder); both named pfs-supervisor."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if comm(daemon) == "pfs-supervisor":
            return daemon
        with contextlib.suppress(OSError), open(f"/proc/{daemon}/task/{daemon}/children") as f:
            for p in f.read().split():
                if comm(int(p)) == "pfs-supervisor":
                    return int(p)
        time.sleep(0.002)
    raise SystemExit(f"no pfs-supervisor process under the daemon {daemon}")


def live_children(sup):
    """The supervisor's live workers (its children less the zygote, which clones them)."""
    pids = set()
    try:
        for t in os.listdir(f"/proc/{sup}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{sup}/task/{t}/children") as f:
                pids.update(int(p) for p in f.read().split())
    except OSError:
        pass
    out = []
    for pid in sorted(pids):
        st = proc_stat(pid)
        if st and st[1] == sup and st[0] not in "ZX" and comm(pid) != "pfs-zygote":
            out.append((pid, st[2]))
    return out


def wait_worker(sup, old=None, timeout=5.0):
    """The one live child of the supervisor other than `old` ((pid, starttime))."""
    deadline = time.monotonic() + timeout
    while True:
        kids = [k for k in live_children(sup) if k != old]
        if len(kids) == 1:
            return kids[0]
        if time.monotonic() > deadline:
            what = f"after killing worker {old[0]}" if old else "(is --recovery on implemented?)"
            raise SystemExit(f"no worker child of supervisor {sup} within {timeout} s {what}; live children: {kids}")
        time.sleep(0.0005)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def probe(path):
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    raise SystemExit(f"probe {path} exists?")


@contextlib.contextmanager
def sysctl_at_least(name, want):
    path = "/proc/sys/" + name.replace(".", "/")
    with open(path) as f:
        old = int(f.read())
    if old >= want:
        yield
        return
    log(f"raising {name} from {old} to {want} for this run")
    with open(path, "w") as f:
        f.write(str(want))
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(str(old))
        log(f"restored {name} = {old}")


def uses_fds(extra):
    """Whether the daemon keeps an O_PATH fd per live inode (--inode-file-handles=never)."""
    return any(a in ("--inode-file-handles=never",) for a in extra) or \
        any(a == "--inode-file-handles" and b == "never" for a, b in zip(extra, extra[1:]))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_room(n):
    """None if a daemon started from here can hold n + 1024 fds (raising our own RLIMIT_NOFILE,
    which it inherits, when we may), else why not."""
    need = n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            with sysctl_at_least("fs.nr_open", need + 65536):
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, need + 65536))
        except (OSError, ValueError) as e:
            return (f"needs {need} fds but the hard RLIMIT_NOFILE is {hard} and cannot be raised ({e}; "
                    "no CAP_SYS_RESOURCE?)")
    return None


def layout(share, n, per_dir):
    t = time.monotonic()
    mode = stat.S_IFREG | 0o644
    for d in range((n + per_dir - 1) // per_dir):
        dp = os.path.join(share, f"d{d:04}")
        os.mkdir(dp)
        for i in range(d * per_dir, min(n, (d + 1) * per_dir)):
            os.mknod(os.path.join(dp, f"f{i:07}"), mode)
    log(f"laid out {n} files natively in {time.monotonic() - t:.1f} s")


def look_up_all(mnt):
    """readdir + lstat of every file through the mount: the kernel then holds a lookup on each."""
    t = time.monotonic()
    n = 0
    for d in sorted(os.listdir(mnt)):
        if not d.startswith("d"):
            continue
        with os.scandir(os.path.join(mnt, d)) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                n += 1
    log(f"looked up {n} files through the mount in {time.monotonic() - t:.1f} s")
    return n


def pct(v, p):
    s = sorted(v)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


def ms(x):
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def measure_size(binary, extra, n, args):
    top = tempfile.mkdtemp(prefix="phoenixfs-recovery.", dir=args.dir or "/var/tmp")
    os.chmod(top, 0o755)
    share, mnt = os.path.join(top, "share"), os.path.join(top, "mnt")
    os.mkdir(share)
    os.mkdir(mnt)
    ok = False
    try:
        layout(share, n, args.files_per_dir)
        dargs = ["--recovery", "on"]
        if n + n // 4 + 1024 > DEFAULT_MAX_INODES:
            dargs += ["--max-inodes", str(n + n // 4 + 1024)]
        dargs += extra
        # With file handles (the default) a live inode holds no fd: no limit to raise.
        need_fds = (n + n // 4 + 65536) if uses_fds(extra) else 0
        with sysctl_at_least("fs.nr_open", need_fds), sysctl_at_least("fs.file-max", need_fds + 262144), \
                Daemon.fuse(binary, share, mnt, dargs, os.path.join(top, "daemon.log")) as daemon:
            sup = supervisor_of(daemon.proc.pid)
            worker = None if args.no_kill else wait_worker(sup)
            fds0 = fd_count(sup)
            looked = look_up_all(mnt)
            if looked != n:
                raise SystemExit(f"looked up {looked} files, laid out {n}")
            fds = fd_count(sup)
            rss = (rss_kib(sup), rss_kib(worker[0]) if worker else 0)
            log(f"supervisor {sup}: {fds0} fds before the lookups, {fds} after; RSS supervisor "
                f"{rss[0]} KiB, worker {rss[1]} KiB")
            # The floor: the same request with no kill.
            floor = []
            for i in range(200):
                t0 = time.perf_counter()
                probe(os.path.join(mnt, f".floor-{i}"))
                floor.append(time.perf_counter() - t0)
            times, min_fds = [], fds
            for r in range(0 if args.no_kill else args.repeats):
                time.sleep(args.pause)
                p = os.path.join(mnt, f".probe-{r}")
                t0 = time.perf_counter()
                os.kill(worker[0], signal.SIGKILL)
                probe(p)
                dt = time.perf_counter() - t0
                times.append(dt)
                worker = wait_worker(sup, worker)
                if not daemon.alive():
                    raise SystemExit(f"the supervisor died; log: {daemon.logpath}")
                min_fds = min(min_fds, fd_count(sup))
                log(f"L={fmt_size(n)} run {r + 1}/{args.repeats}: kill -> reply {ms(dt)} (new worker {worker[0]})")
            # With --log-level info the daemon logs what each new worker took over: check that the
            # kernel held every lookup (another process's drop_caches makes it forget).
            with open(daemon.logpath, errors="replace") as f:
                ansi = r"(?:\x1b\[[0-9;]*m)*"
                took = [int(m) for m in re.findall(rf"live_inodes{ansi}={ansi}(\d+)", f.read())]
            if took:
                log(f"live inodes at each takeover: min {min(took)}, max {max(took)}")
                if min(took) < n:
                    log(f"warning: a worker took over {min(took)} live inodes, fewer than L={n}")
            if uses_fds(extra) and min_fds < n:
                log(f"warning: the daemon held only {min_fds} fds at some point, fewer than L={n}: "
                    "the kernel dropped lookups (memory pressure?) and L is not what it claims")
        ok = True
        return {"n": n, "fds": fds, "rss": rss, "floor": statistics.median(floor), "times": times}
    finally:
        if ok or not args.keep:
            t = time.monotonic()
            shutil.rmtree(top, ignore_errors=True)
            log(f"removed {top} in {time.monotonic() - t:.1f} s")
        else:
            log(f"failed: kept {top}")


def table(results):
    rows = ["| live inodes | daemon fds | runs | median | p90 | max | same request, no kill "
            "| RSS supervisor | RSS worker |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "skipped" in r:
            rows.append(f"| {r['n']:,} | skipped: {r['skipped']} | | | | | | | |")
            continue
        t = r["times"]
        cells = [f"{r['n']:,}", f"{r['fds']:,}", str(len(t))]
        cells += [ms(statistics.median(t)), ms(pct(t, 0.9)), ms(max(t))] if t else ["n/a"] * 3
        cells.append(ms(r["floor"]))
        cells += [f"{r['rss'][0] / 1024:,.1f} MiB", f"{r['rss'][1] / 1024:,.1f} MiB"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10k,100k,1M",
                    help="comma-separated numbers of live inodes (default 10k,100k,1M)")
    ap.add_argument("--repeats", type=int, default=7, help="kills per size (default 7)")
    ap.add_argument("--files-per-dir", type=int, default=10000, help="files per directory (default 10000)")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between kills (default 0.5)")
    ap.add_argument("--dir", default=None, help="where to make the share (default: a new dir in /var/tmp)")
    ap.add_argument("--write", action="store_true",
                    help="also write the table into docs/benchmarks.md (its 'Recovery time' section only)")
    ap.add_argument("--keep", action="store_true", help="keep the share and daemon log after a failure")
    ap.add_argument("--no-kill", action="store_true",
                    help="set up and measure the no-kill floor only (checks the setup without recovery)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]

    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts FUSE")
    binary = os.environ.get("PHOENIXFSD") or os.path.join(ROOT, "target", host_tuple(), "release/phoenixfsd")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} is not an executable (build it, or set PHOENIXFSD=path)")
    extra = shlex.split(os.environ.get("PHOENIXFSD_ARGS", ""))

    results = []
    for n in sizes:
        log(f"=== L = {n:,} live inodes")
        why = fd_room(n) if uses_fds(extra) else None
        if why:
            log(f"skipping L = {n:,}: {why}")
            results.append({"n": n, "skipped": why})
            continue
        results.append(measure_size(binary, extra, n, args))

    tbl = table(results)
    conf = (f"{args.repeats} kills per size, {args.pause} s apart; files in directories of "
            f"{args.files_per_dir}; time from SIGKILL of the worker to the reply to one LOOKUP sent right "
            "after it")
    machine = (f"{os.cpu_count()} CPUs, kernel {platform.release()}, "
               f"daemon `{os.path.basename(binary)} --recovery on{(' ' + ' '.join(extra)) if extra else ''}`")
    print(tbl)
    print()
    print(f"{conf}. Machine: {machine}.")

    if args.write:
        cmd = args.command or "scripts/bench-recovery.sh --write"
        body = (
            "How long an application waits when the worker is killed, by the number of live inodes "
            "(files the kernel holds a lookup on: each an inode-table slot in the daemon, kept by file handle "
            "by default, by an O_PATH fd with --inode-file-handles=never). "
            "Measured from `SIGKILL` of the worker to the reply to one request (a LOOKUP of an absent name) "
            "issued right after the kill: worker restart, recovery of the state region, closing of leaked fds, "
            "FUSE_NOTIFY_RESEND, and the request itself. The last column is the same request without a kill.\n\n"
            f"Produced by `{cmd}` on {datetime.date.today().isoformat()}.\n\n"
            f"{tbl}\n\n"
            f"- {conf}.\n- Machine: {machine}.\n"
            "- Numbers from one run on a shared 2-core machine.\n"
        )
        doc = os.path.join(ROOT, "docs", "benchmarks.md")
        write_section(doc, SECTION, body)
        log(f"wrote the '{SECTION[3:]}' section of {doc}")


if __name__ == "__main__":
    main()
