# Sourced by tests/vm/qemu10.sh and tests/vm/prepare.sh: makes apt able to download from
# Debian's bookworm-backports (QEMU 10, the 6.12 cloud kernel). Adds the suite to apt's sources
# (a file of its own) if no source names it yet and updates the package lists once if apt does
# not know the suite yet; only Debian's archive is used. Expects a `say` function.
ensure_backports() {
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "adding bookworm-backports to apt's sources (/etc/apt/sources.list.d/bookworm-backports.list)"
        echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/bookworm-backports.list
    fi
    # Not grep -q: it would leave apt-cache writing into a closed pipe (pipefail: a failure).
    if ! apt-cache policy "$1" | grep bookworm-backports >/dev/null; then
        say "apt-get update"
        apt-get update -q >&2
    fi
}
