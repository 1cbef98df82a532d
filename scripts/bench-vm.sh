#!/usr/bin/env bash
# Benchmark (not a test): guest-side throughput and latency of phoenixfsd against virtiofsd in
# the same VM configuration as tests/vm.rs (QEMU, Debian cloud kernel, 1 vCPU, TCG where KVM
# cannot boot). Each round boots one guest per backend, alternating the order; the guest runs
# examples/vm_guest/bench.rs (a create/stat/unlink loop; open-read-close of small files; 1 MiB
# sequential and 4 KiB random writes and reads, buffered and O_DIRECT). Prints a markdown table: medians and the ratio
# phoenixfsd / virtiofsd. About 1 minute per round under TCG. Run as root after scripts/setup.sh.
#
#   scripts/bench-vm.sh [ROUNDS]            (default 3)
#   PHOENIXFS_VM_BENCH_QEMU=10 scripts/bench-vm.sh   # QEMU 10.0 from bookworm-backports
#   PHOENIXFS_VM_BENCH_BASELINE=<phoenixfsd> scripts/bench-vm.sh 5   # that binary in the middle column (before/after)
#   PHOENIXFS_VM_BENCH_QEMU=10 PHOENIXFS_VM_KERNEL=backports PHOENIXFS_VM_SMP=2 scripts/bench-vm.sh
#       # a 6.12 guest with 2 vCPUs: phoenixfsd's device gets a request queue per vCPU
#       # (PHOENIXFS_VM_REQUEST_QUEUES), virtiofsd's its one
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
export PHOENIXFS_VM_BENCH_ROUNDS="${1:-3}"
# Without --features crash-points: the daemon as users run it.
exec cargo test --release --test vm_bench -- --ignored --nocapture
