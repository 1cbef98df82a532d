#!/usr/bin/env bash
# Benchmark (not a test): one command, every peer side by side in one run. fio sequential 1 MiB
# and random 4 KiB reads and writes (buffered and O_DIRECT, 1 and several jobs), a metadata
# workload (create/stat/read/readdir/rename/unlink, 1 and 4 processes) and a mixed small-file workload
# (untar, find, read, rm) on the native directory, on libfuse's passthrough_ll, on phoenixfsd and
# on phoenixfsd --recovery off, all mounted on it; prints markdown tables with medians (min-max)
# and ratios, and the daemons' memory. Targets are measured workload by workload, one after
# another, so load elsewhere on the machine hits all alike. The defaults take ~5 minutes (one
# backing, 3 rounds); bench/bench.py --help says what each option does. Run as root.
#
#   scripts/bench.sh [--write] [--transport fuse|vhost-user|fuse,vhost-user] [--backing tmpfs|disk|tmpfs,disk]
#                    [--rounds R] [--runtime S] [--size MiB] [--numjobs N] [--files N]
#                    [--mixed-files N] [--only REGEX] [--dir DIR]
#     --write       also write the tables into docs/benchmarks.md, with this command line
#     --backing     the shared directory on a tmpfs of its own (the FUSE cost alone; default),
#                   on the disk, or both (one table each)
#     --transport vm   inside a real guest (QEMU, TCG): phoenixfsd, phoenixfsd --recovery off and
#                   virtiofsd, each serving the guest's virtio-fs share (scripts/bench-vm.sh; --rounds
#                   R; its table is printed, not written)
#     --transport vhost-user   the daemons serve virtio-fs, mounted through the test bridge
#                   (examples/vhost_bridge.rs), with virtiofsd from crates.io as the peer;
#                   fuse,vhost-user runs both, one after the other (one table per transport and
#                   backing: the full comparison is `--transport fuse,vhost-user --backing tmpfs,disk`)
#
# passthrough_ll is built with gcc from /usr/share/doc/libfuse3-dev/examples into
# ${XDG_CACHE_HOME:-~/.cache}/phoenixfs-bench (libfuse3-dev, fuse3, pkg-config, gcc installed
# with apt-get when missing).
# Environment: PHOENIXFSD=path (default target/<host tuple>/release/phoenixfsd, built with
# `cargo build --release` when it is the default), PHOENIXFSD_ARGS="extra daemon args",
# PASSTHROUGH_LL=path (skips the build), PHOENIXFSD_BASELINE=path (another phoenixfsd build as one
# more column: a change's before/after in one run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"

# Inside a VM: another harness (tests/vm_bench.rs), with its own guest-side workloads.
transport="" rounds=3 prev=""
for a in "$@"; do
    case "$prev" in --transport) transport="$a" ;; --rounds) rounds="$a" ;; esac
    prev="$a"
done
if [ "$transport" = vm ]; then
    exec scripts/bench-vm.sh "$rounds"
fi
if ! command -v fio >/dev/null; then
    echo "fio is missing: run scripts/setup.sh (or apt-get install -y fio)" >&2
    exit 1
fi
if [ -z "${PHOENIXFSD:-}" ]; then
    echo "[bench] cargo build --release (daemon and the vhost-user bridge)" >&2
    nice -n 10 cargo build --release --bins --example vhost_bridge >&2
    out="${CARGO_TARGET_DIR:-$PWD/target}/$(rustc -vV | sed -n "s/^host: //p")/release"
    export PHOENIXFSD="$out/phoenixfsd"
    export VHOST_BRIDGE="${VHOST_BRIDGE:-$out/examples/vhost_bridge}"
fi
if [ -z "${PASSTHROUGH_LL:-}" ]; then
    src=/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c
    if [ ! -f "$src" ] || ! command -v pkg-config >/dev/null || ! command -v gcc >/dev/null; then
        echo "[bench] apt-get install -y libfuse3-dev fuse3 pkg-config gcc (to build passthrough_ll)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libfuse3-dev fuse3 pkg-config gcc >&2
    fi
    cache="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/phoenixfs-bench"
    mkdir -p "$cache"
    export PASSTHROUGH_LL="$cache/passthrough_ll"
    if [ ! -x "$PASSTHROUGH_LL" ] || [ "$src" -nt "$PASSTHROUGH_LL" ]; then
        echo "[bench] building passthrough_ll from $src" >&2
        # shellcheck disable=SC2046 # pkg-config's words are separate arguments
        gcc -O2 -Wall "$src" $(pkg-config --cflags --libs fuse3) -o "$PASSTHROUGH_LL"
    fi
fi
cmd="scripts/bench.sh${*:+ $*}"
[ -n "${PHOENIXFSD_ARGS:-}" ] && cmd="PHOENIXFSD_ARGS=\"$PHOENIXFSD_ARGS\" $cmd"
exec python3 bench/bench.py --command "$cmd" "$@"
