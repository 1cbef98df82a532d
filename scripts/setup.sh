#!/usr/bin/env bash
# Installs what phoenixfs's tests and benchmarks need on a fresh Debian bookworm machine.
# Run as root; idempotent (a second run only checks); needs no stdin (CI=true).
#
#   - Debian packages: fuse3 (fusermount3, /etc/fuse.conf), fio, attr, acl, pkg-config,
#     libfuse3-dev, libacl1-dev (pjdfstest links libacl), libseccomp-dev + libcap-ng-dev
#     (a later virtiofsd build), python3 (bench helpers), psmisc, util-linux;
#     qemu-system-x86, busybox-static, cpio for the VM test (tests/vm.rs: its kernel,
#     linux-image-cloud-amd64, is fetched with `apt-get download` by tests/vm/prepare.sh when
#     the test first runs, unpacked under target/vm-cache, never installed).
#   - pjdfstest 0.2.2 (the Rust rewrite) via `cargo install --locked`, unless already there.
#   - The dummy users pjdfstest switches to: `nobody` (with its own primary group, Debian's
#     `nogroup`) and `tests` (with group `tests`).
#   - uidmap (newuidmap/newgidmap) and the unprivileged user the user-namespace tests run
#     phoenixfsd as (tests/userns.rs): `pfs-userns`, with host ids 300000-365535 of its own in
#     /etc/subuid and /etc/subgid.
set -euo pipefail

PJDFSTEST_VERSION=0.2.2
export DEBIAN_FRONTEND=noninteractive

say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "[setup] error: run as root (installs packages, creates users, mounts FUSE)" >&2
    exit 1
fi

# ---- Debian packages --------------------------------------------------------------------
PKGS=(fuse3 libfuse3-dev fio attr acl libacl1-dev pkg-config libseccomp-dev libcap-ng-dev
      python3 psmisc util-linux gcc qemu-system-x86 busybox-static cpio
      systemd   # systemd-socket-activate: the packaged unit's socket activation (tests/options.rs)
      uidmap)   # newuidmap/newgidmap: --uid-map/--gid-map of an unprivileged daemon (tests/userns.rs)
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get update"
    apt-get update -q
    say "apt-get install -y ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "Debian packages already installed: ${PKGS[*]}"
fi

# ---- FUSE ---------------------------------------------------------------------------------
if [ ! -e /dev/fuse ]; then
    say "/dev/fuse missing: trying modprobe fuse"
    modprobe fuse 2>/dev/null || true
fi
if [ ! -e /dev/fuse ]; then
    echo "[setup] error: /dev/fuse does not exist; FUSE tests cannot run on this machine" >&2
    exit 1
fi
# allow_other is fine for root without this, but non-root helpers (fusermount3) need it.
if [ -f /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
    say "enabling user_allow_other in /etc/fuse.conf"
    echo user_allow_other >> /etc/fuse.conf
fi

# ---- tools from crates.io: pjdfstest, and virtiofsd (the peer the vhost-user test frontend is
# checked against) ---------------------------------------------------------------------------
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"

# cargo_install NAME VERSION: installs NAME at VERSION unless `NAME --version` already says so.
cargo_install() {
    local name=$1 version=$2
    if [ "$("$name" --version 2>/dev/null | head -1)" = "$name $version" ]; then
        say "$name $version already installed at $(command -v "$name")"
        return
    fi
    say "cargo install $name --version $version --locked (takes a few minutes on 2 cores)"
    local start
    start=$(date +%s)
    # From / : cargo reads .cargo/config.toml from the current directory, and ours (static
    # builds for phoenixfsd) is not for these tools.
    (cd / && nice -n 10 cargo install "$name" --version "$version" --locked --force)
    say "$name installed in $(( $(date +%s) - start )) s: $(command -v "$name")"
}
cargo_install pjdfstest "$PJDFSTEST_VERSION"
cargo_install virtiofsd 1.14.0

# ---- users and groups for pjdfstest ------------------------------------------------------
# pjdfstest's default [dummy_auth] is the users `nobody` and `tests`, each with the group of
# its primary gid (on Debian: nobody -> nogroup). Both must exist; their groups must exist.
if ! getent group nogroup >/dev/null; then
    say "creating group nogroup"
    groupadd --system nogroup
fi
if ! getent passwd nobody >/dev/null; then
    say "creating user nobody"
    useradd --system --gid nogroup --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nobody
fi
if ! getent group tests >/dev/null; then
    say "creating group tests"
    groupadd --system tests
fi
if ! getent passwd tests >/dev/null; then
    say "creating user tests"
    useradd --system --gid tests --no-create-home --home-dir / \
        --shell /usr/sbin/nologin --comment "Dummy User for pjdfstest" tests
fi
say "users: $(id nobody); $(id tests)"

# ---- the unprivileged user of tests/userns.rs, with subordinate ids for its --uid-map ------
USERNS_USER=pfs-userns
USERNS_BASE=300000
if ! getent passwd "$USERNS_USER" >/dev/null; then
    say "creating user $USERNS_USER"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "phoenixfs user-namespace tests" "$USERNS_USER"
fi
for f in /etc/subuid /etc/subgid; do
    if ! grep -q "^$USERNS_USER:" "$f" 2>/dev/null; then
        say "giving $USERNS_USER ids $USERNS_BASE-$((USERNS_BASE + 65535)) in $f"
        echo "$USERNS_USER:$USERNS_BASE:65536" >> "$f"
    fi
done
say "user-namespace user: $(id "$USERNS_USER"); $(grep -h "^$USERNS_USER:" /etc/subuid /etc/subgid | tr '\n' ' ')"
say "done"
