#!/usr/bin/env bash
# The project's single test command (CI runs it through .ci/run on a fresh Debian bookworm
# machine, as root, with CI=true and no stdin):
#   1. scripts/setup.sh   - Debian packages (fuse3, fio, ...), pjdfstest 0.2.2, dummy users
#   2. cargo fmt --check, cargo clippy -D warnings
#   3. cargo build --release --features crash-points, and scripts/build-previous.sh (the last
#      build of the previous state-region layout, from this repository's history, for the live
#      upgrades across layout versions); cargo test (all unit and integration tests:
#      pjdfstest, the differential suite, hostile requests, crash points, the random-kill soak,
#      vhost-user protocol and crash tests, and the two fuzz campaigns of about a minute each)
#   4. the real VM (tests/vm.rs, its own step and timeout): QEMU 7.2 and 10.0 guests run a
#      checked workload on a phoenixfsd virtio-fs share while the worker is SIGKILLed 150 times
#      each (on QEMU 10 also a 6.12 guest with 2 vCPUs on 2 request queues), and the same guest
#      on virtiofsd killed once; then tests/vm_migration.rs: the guest live-migrated between two
#      QEMU 10.0 processes, each with its own phoenixfsd; about 5 minutes under TCG in all (the
#      first run downloads two kernel packages of 27 and 34 MB and 12 MB of QEMU 10)
#   5. the real-syscall suites again over vhost-user (PHOENIXFS_TEST_TRANSPORT=vhost-user: the
#      test's FUSE-to-virtqueue bridge carries every request to phoenixfsd's vhost-user backend)
# Exits non-zero on any failure.
#
# Test binaries run one after another; tests inside one binary run in parallel (each FUSE test
# mounts its own temporary share). tests/pjdfstest.rs is its own binary and serializes its runs,
# so pjdfstest never competes with other FUSE tests for the 2 cores.
# Extra arguments go to the test harness, e.g. `bash scripts/test.sh --nocapture`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Bound a hung FUSE test well inside CI's limit rather than letting it eat the whole run.
TEST_TIMEOUT="${TEST_TIMEOUT:-1500}"

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
t0=$(date +%s)

step "scripts/setup.sh"
bash scripts/setup.sh

step "cargo fmt --check; cargo clippy -D warnings"
cargo fmt --check
cargo clippy --release --all-targets --features crash-points -- -D warnings

step "cargo build --release"
cargo build --release --features crash-points
# The VM test's guest workload, static (tests/vm.rs builds it too; here its build time is not
# counted against the test timeout).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu --example vm_guest

step "the previous state layout's build (scripts/build-previous.sh: live upgrades across layouts)"
bash scripts/build-previous.sh

# Daemons run with the default --seccomp kill and --sandbox namespace unless PHOENIXFS_TEST_SECCOMP
# or PHOENIXFS_TEST_SANDBOX names another mode.
seccomp_mode="kill (the default)"
[ -n "${PHOENIXFS_TEST_SECCOMP:-}" ] && seccomp_mode="$PHOENIXFS_TEST_SECCOMP (PHOENIXFS_TEST_SECCOMP)"
sandbox_mode="namespace (the default)"
[ -n "${PHOENIXFS_TEST_SANDBOX:-}" ] && sandbox_mode="$PHOENIXFS_TEST_SANDBOX (PHOENIXFS_TEST_SANDBOX)"
seccomp_mode="$seccomp_mode, --sandbox $sandbox_mode"
# Every test step's output also goes to a log, so the end of the run can name what failed (CI
# shows the last part of the output, and --show-output makes the passing tests' output long).
log="$(mktemp /tmp/phoenixfs-test-log.XXXXXX)"
step "cargo test --release (timeout ${TEST_TIMEOUT}s; phoenixfsd runs with --seccomp $seccomp_mode)"
rc=0
timeout --kill-after=30 "$TEST_TIMEOUT" cargo test --release --features crash-points --no-fail-fast -- --show-output \
    --skip test_vm_ "$@" 2>&1 | tee -a "$log" || rc=$?

step "real VM: tests/vm.rs, tests/vm_migration.rs (timeout ${VM_TIMEOUT:=900}s; phoenixfsd runs with --seccomp $seccomp_mode)"
timeout --kill-after=30 "$VM_TIMEOUT" cargo test --release --features crash-points --test vm --test vm_migration -- --show-output "$@" 2>&1 \
    | tee -a "$log" || rc=$((rc ? rc : $?))

step "compare and pjdfstest over vhost-user (--seccomp $seccomp_mode)"
timeout --kill-after=30 "$TEST_TIMEOUT" env PHOENIXFS_TEST_TRANSPORT=vhost-user \
    cargo test --release --features crash-points --no-fail-fast --test compare --test pjdfstest -- --show-output "$@" 2>&1 \
    | tee -a "$log" || rc=$((rc ? rc : $?))
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "error: cargo test did not finish within ${TEST_TIMEOUT}s (a FUSE test hung?)" >&2
    # A hung daemon leaves its mount behind; detach any test mounts so the machine stays usable.
    grep -o ' /tmp/phoenixfs-test[^ ]*' /proc/self/mountinfo 2>/dev/null | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
fi

if [ "$rc" -ne 0 ]; then
    step "what failed (from $log)"
    grep -E -e '^test .* \.\.\. FAILED$' -e '^error: ' -e '^test result: FAILED' "$log" | head -40 || true
    # Each panic with its message (the line after).
    grep -E -A1 "^thread '.*'.* panicked at" "$log" | head -40 || true
    # The last lines each failed test printed (its captured output, which names the processes
    # it ran: a QEMU or daemon that died shows there).
    grep -E '^test .* \.\.\. FAILED$' "$log" | awk '{print $2}' | sort -u | head -5 | while read -r name; do
        printf '\n--- the last 40 lines %s printed\n' "$name"
        awk -v want="---- $name stdout ----" '
            $0 == want { on = 1; n = 0; next }
            on && (/^---- .* stdout ----$/ || /^failures:$/) { on = 0 }
            on { buf[n++ % 40] = $0 }
            END { for (i = (n > 40 ? n - 40 : 0); i < n; i++) print buf[i % 40] }' "$log" | cut -c1-400
    done
fi

step "done in $(( $(date +%s) - t0 )) s (cargo test exit code $rc)"
exit "$rc"
