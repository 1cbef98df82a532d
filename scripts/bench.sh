#!/usr/bin/env bash
# Benchmark (not a test): fio sequential 1 MiB and random 4 KiB reads and writes plus a metadata
# workload (create/stat/readdir/unlink of 10k files) on the native directory, on a phoenixfsd
# FUSE mount of it, and on phoenixfsd --recovery off; prints a markdown table with ratios to
# native. The targets are mounted together and measured workload by workload, one after another,
# so load elsewhere on the machine hits all alike. Takes ~2.5 minutes (x --rounds). Run as root.
#
#   scripts/bench.sh [--write] [--transport fuse|vhost-user] [--rounds R] [--runtime S] [--size MiB]
#                    [--numjobs N] [--files N] [--dir DIR]
#     --write       also write the table into docs/benchmarks.md, with this command line
#     --transport vhost-user   the daemons serve virtio-fs, mounted through the test bridge
#                   (examples/vhost_bridge.rs), with virtiofsd from crates.io measured beside
#
# Environment: PHOENIXFSD=path (default target/<host tuple>/release/phoenixfsd, built with
# `cargo build --release` when it is the default), PHOENIXFSD_ARGS="extra daemon args".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"

if ! command -v fio >/dev/null; then
    echo "fio is missing: run scripts/setup.sh (or apt-get install -y fio)" >&2
    exit 1
fi
if [ -z "${PHOENIXFSD:-}" ]; then
    echo "[bench] cargo build --release (daemon and the vhost-user bridge)" >&2
    nice -n 10 cargo build --release --bins --example vhost_bridge >&2
    export PHOENIXFSD="$PWD/target/$(rustc -vV | sed -n "s/^host: //p")/release/phoenixfsd"
fi
cmd="scripts/bench.sh${*:+ $*}"
[ -n "${PHOENIXFSD_ARGS:-}" ] && cmd="PHOENIXFSD_ARGS=\"$PHOENIXFSD_ARGS\" $cmd"
exec python3 bench/bench.py --command "$cmd" "$@"
