#!/usr/bin/env bash
# Prepares what tests/vm.rs boots: a Debian cloud kernel and an initramfs holding busybox, the
# virtio-fs modules and the guest workload. Nothing is installed on the host (nothing goes to
# /boot); the kernel is unpacked into a cache directory and reused by later runs.
#
#   tests/vm/prepare.sh CACHE GUEST_BIN INIT OUT_INITRD [SUITE]
#
# CACHE       cache directory (tests/vm.rs uses target/vm-cache); the kernel goes to CACHE/kernel
#             (CACHE/kernel-SUITE for another suite)
# GUEST_BIN   the static guest workload binary (examples/vm_guest), put in as /vm_guest
# INIT        the guest's /init script (tests/vm/init)
# OUT_INITRD  the initramfs to write (newc cpio, uncompressed)
# SUITE       where the kernel comes from: bookworm (default: 6.1, whose virtio-fs driver uses one
#             request queue) or bookworm-backports (6.12: one request queue per group of CPUs)
#
# Prints KERNEL=<path of vmlinuz> and KERNEL_VERSION=<uname -r of the guest> on stdout.
# Needs: apt-get (Debian's archive reachable the first time), dpkg-deb, cpio, busybox-static
# (scripts/setup.sh installs them).
set -euo pipefail

if [ $# -ne 4 ] && [ $# -ne 5 ]; then
    echo "usage: $0 CACHE GUEST_BIN INIT OUT_INITRD [bookworm|bookworm-backports]" >&2
    exit 2
fi
cache=$1 guest=$2 init=$3 out=$4 suite=${5:-bookworm}
say() { printf '[vm-prepare] %s\n' "$*" >&2; }
case "$suite" in
    bookworm) kdir=$cache/kernel from="" ;;
    bookworm-backports)
        kdir=$cache/kernel-$suite from=/$suite
        . "$(dirname "${BASH_SOURCE[0]}")/backports.sh"
        ;;
    *) say "unknown suite $suite (bookworm or bookworm-backports)"; exit 2 ;;
esac

# The modules the guest loads, each after what it depends on (from each module's own
# `depends=` in .modinfo: the package ships no modules.dep and depmod may not be installed).
WANTED=(virtio_pci virtiofs)

# ---- the kernel: linux-image-cloud-amd64 names the versioned package ---------------------
if [ ! -f "$kdir/ready" ]; then
    if [ -n "$from" ]; then ensure_backports linux-image-cloud-amd64; fi
    rm -rf "$kdir" && mkdir -p "$kdir/dl"
    cd "$kdir/dl"
    # apt-get download runs as _apt where it can; a root-owned cache dir makes it warn only.
    # Stale package lists name versions the archive no longer has: update once and try again.
    download() {
        if ! apt-get download -q "$1" >&2 2>/dev/null; then
            say "apt-get download $1 failed: apt-get update, then again"
            apt-get update -q >&2
            apt-get download -q "$1" >&2
        fi
    }
    download "linux-image-cloud-amd64$from"
    meta=$(ls linux-image-cloud-amd64_*.deb)
    versioned=$(dpkg-deb -f "$meta" Depends | grep -o 'linux-image-[0-9][^ ,]*-cloud-amd64' | head -1)
    [ -n "$versioned" ] || { say "cannot find the versioned kernel package in $meta"; exit 1; }
    say "downloading $versioned (named by $meta)"
    download "$versioned$from"
    dpkg-deb -x "$versioned"_*.deb "$kdir/root"
    cd - >/dev/null
    rm -rf "$kdir/dl"
    touch "$kdir/ready"
fi
vmlinuz=$(ls "$kdir"/root/boot/vmlinuz-*)
kver=${vmlinuz##*/vmlinuz-}
moddir=$kdir/root/lib/modules/$kver

# ---- modules in dependency order ----------------------------------------------------------
declare -A seen=()
order=()
ko_of() { find "$moddir/kernel" -name "$1.ko" -print -quit; }
visit() {
    local m=$1 f deps d
    [ -n "${seen[$m]:-}" ] && return
    seen[$m]=1
    f=$(ko_of "$m")
    if [ -z "$f" ]; then
        # Built in (modules.builtin) needs no loading; anything else is missing.
        if grep -q "/$m.ko\$" "$moddir/modules.builtin"; then return; fi
        say "module $m not found in $moddir"
        exit 1
    fi
    deps=$(tr '\0' '\n' < "$f" | sed -n 's/^depends=//p' | tr ',' ' ')
    for d in $deps; do visit "$d"; done
    order+=("$m")
}
for m in "${WANTED[@]}"; do visit "$m"; done

# ---- the initramfs --------------------------------------------------------------------------
# ldd says "not a dynamic executable" for a static binary, "statically linked" for a static PIE.
is_static() {
    local out
    out=$(ldd "$1" 2>&1 || true)
    [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]]
}
busybox=/bin/busybox
if ! is_static "$busybox"; then
    say "$busybox is not static (install busybox-static)"
    exit 1
fi
if ! is_static "$guest"; then
    say "$guest is not static (build it with -C target-feature=+crt-static)"
    exit 1
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,mnt,modules}
cp "$busybox" "$stage/bin/busybox"
cp "$init" "$stage/init"
chmod 755 "$stage/init"
cp "$guest" "$stage/vm_guest"
for m in "${order[@]}"; do
    cp "$(ko_of "$m")" "$stage/modules/$m.ko"
done
printf '%s\n' "${order[@]}" > "$stage/modules/order"
(cd "$stage" && find . -print0 | cpio --null --quiet -o -H newc) > "$out"
say "kernel $kver; modules: ${order[*]}; initramfs $(du -h "$out" | cut -f1)"
echo "KERNEL=$vmlinuz"
echo "KERNEL_VERSION=$kver"
