#!/usr/bin/env bash
# Benchmark (not a test): recovery time of phoenixfsd --recovery on. For each number L of live
# inodes (files the kernel holds a lookup on), SIGKILL the worker several times and measure the
# time from the kill to the reply to one request sent right after it; prints a markdown table
# (median / p90 / max per L, and the same request without a kill). Run as root. The default
# sizes take a few minutes (mostly laying out, looking up and removing 1M files).
#
#   scripts/bench-recovery.sh [--sizes 10k,100k,1M] [--repeats 7] [--pause S] [--dir DIR] [--write] [--no-kill]
#     --write    also write the table into the "Recovery time" section of docs/benchmarks.md
#                (that section only; the rest of the file is kept), with this command line
#     --no-kill  set up and measure the no-kill floor only
#
# Environment: PHOENIXFSD=path (default target/<host tuple>/release/phoenixfsd, built with
# `cargo build --release` when it is the default), PHOENIXFSD_ARGS="extra daemon args".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"

if [ -z "${PHOENIXFSD:-}" ]; then
    echo "[bench-recovery] cargo build --release" >&2
    nice -n 10 cargo build --release >&2
    export PHOENIXFSD="$PWD/target/$(rustc -vV | sed -n "s/^host: //p")/release/phoenixfsd"
fi
cmd="scripts/bench-recovery.sh${*:+ $*}"
[ -n "${PHOENIXFSD_ARGS:-}" ] && cmd="PHOENIXFSD_ARGS=\"$PHOENIXFSD_ARGS\" $cmd"
exec python3 bench/recovery_time.py --command "$cmd" "$@"
