#!/usr/bin/env bash
# Unpacks QEMU 10 from Debian's bookworm-backports into a cache directory, beside the system's
# QEMU 7.2 (bookworm): nothing is installed. tests/vm/backports.sh makes the suite known to apt.
#
#   tests/vm/qemu10.sh CACHE
#
# Prints QEMU=<binary> and one DATA=<dir> per firmware directory (QEMU's -L) on stdout.
# QEMU 10 from backports links against the same bookworm libraries as 7.2; the check below
# fails if that ever changes.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 CACHE" >&2
    exit 2
fi
dir=$1/qemu-10
say() { printf '[vm-qemu10] %s\n' "$*" >&2; }
. "$(dirname "${BASH_SOURCE[0]}")/backports.sh"
PKGS=(qemu-system-x86 qemu-system-data seabios)

if [ ! -f "$dir/ready" ]; then
    ensure_backports qemu-system-x86
    rm -rf "$dir" && mkdir -p "$dir/dl"
    cd "$dir/dl"
    apt-get download -q "${PKGS[@]/%//bookworm-backports}" >&2 2> >(grep -v 'unsandboxed' >&2)
    for d in *.deb; do dpkg-deb -x "$d" "$dir/root"; done
    cd - >/dev/null
    rm -rf "$dir/dl"
    missing=$(ldd "$dir/root/usr/bin/qemu-system-x86_64" | grep 'not found' || true)
    if [ -n "$missing" ]; then
        say "QEMU 10 needs libraries bookworm does not have: $missing"
        exit 1
    fi
    touch "$dir/ready"
fi
say "$("$dir/root/usr/bin/qemu-system-x86_64" --version | head -1)"
echo "QEMU=$dir/root/usr/bin/qemu-system-x86_64"
echo "DATA=$dir/root/usr/share/qemu"
echo "DATA=$dir/root/usr/share/seabios"
