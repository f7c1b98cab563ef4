#!/usr/bin/env bash
# Fetches one pinned Debian cloud kernel and builds a busybox initramfs for it.
#
#   resources/scripts/fetch-linux.sh OUTDIR
#
# Produces OUTDIR/vmlinuz (the bzImage), OUTDIR/vmlinux (the same kernel uncompressed, an
# ELF with a PVH entry note) and OUTDIR/initramfs.cpio.gz, whose /init mounts
# proc, sys and devtmpfs, prints the marker line below and reboots (with `reboot=k` on the
# kernel command line that is an i8042 reset, which ends the VM). Idempotent: the .deb is
# cached in OUTDIR/cache and nothing is rebuilt when the outputs are newer than their inputs.
set -euo pipefail

# Pinned so that every machine boots the same kernel. This ABI is in bookworm's main
# archive (not only bookworm-security, whose older versions disappear sooner).
KERNEL_PKG=linux-image-6.1.0-50-cloud-amd64-unsigned
KERNEL_VERSION=6.1.176-1
# What the integration test and the docs look for; keep them in sync (tests/linux.rs).
INIT_MARKER="tiervisor-init: hello from init"

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$1
cache=$out/cache
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
cache=$out/cache
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

deb=$cache/${KERNEL_PKG}_${KERNEL_VERSION}_amd64.deb
if [ ! -s "$deb" ]; then
    echo "fetch-linux: downloading $KERNEL_PKG=$KERNEL_VERSION"
    # apt-get download writes into the current directory; do it in a scratch directory
    # so a failed download never leaves a partial .deb under the cached name.
    tmp=$(mktemp -d "$cache/dl.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    download() {
        # apt warns that it runs unsandboxed as root when _apt cannot write here; harmless.
        (cd "$tmp" && apt-get download -q "$KERNEL_PKG=$KERNEL_VERSION") 2>&1 |
            grep -v 'Download is performed unsandboxed' || true
    }
    download
    if ! ls "$tmp"/*.deb >/dev/null 2>&1; then
        # Package lists may be stale or missing on a fresh machine.
        apt-get update -qq
        download
    fi
    got=$(ls "$tmp"/*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$got" ]; then
        echo "fetch-linux: could not download $KERNEL_PKG=$KERNEL_VERSION from Debian;" \
            "check 'apt-cache policy $KERNEL_PKG' and update KERNEL_VERSION in $0" >&2
        exit 1
    fi
    mv "$got" "$deb"
fi

if [ ! -s "$out/vmlinuz" ] || [ "$deb" -nt "$out/vmlinuz" ]; then
    # Only the bzImage is needed, not the ~100 MB of modules: pull that one member out.
    dpkg-deb --fsys-tarfile "$deb" | tar -x -O --wildcards './boot/vmlinuz-*' >"$out/vmlinuz.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    echo "fetch-linux: $out/vmlinuz ($KERNEL_PKG $KERNEL_VERSION)"
fi

need_pkg() { # need_pkg PACKAGE: install it if it is missing (setup.sh lists it too)
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

# The same kernel uncompressed: the ELF inside the bzImage, which carries a PVH entry
# note. On a host without VT-x/SVM (PVM) the bzImage's decompressor runs under
# instruction emulation for minutes before the kernel prints a line; the ELF skips it.
if [ ! -s "$out/vmlinux" ] || [ "$out/vmlinuz" -nt "$out/vmlinux" ]; then
    # Boot protocol header: setup_sects at 0x1f1, payload_offset/_length at 0x248/0x24c
    # (the payload offset counts from the protected-mode code after the setup sectors).
    read -r payload_start payload_len < <(python3 - "$out/vmlinuz" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read(0x250)
setup_sects = d[0x1f1] or 4
off, length = struct.unpack_from("<II", d, 0x248)
print((setup_sects + 1) * 512 + off, length)
PY
    )
    payload() { dd if="$out/vmlinuz" iflag=skip_bytes,count_bytes skip="$payload_start" count="$1" bs=1M status=none; }
    magic=$(payload 6 | od -An -tx1 | tr -d ' \n')
    case $magic in
        02214c18*) need_pkg lz4; decompress=(lz4 -dc) ;;
        28b52ffd*) need_pkg zstd; decompress=(zstd -dcq) ;;
        fd377a585a00) need_pkg xz-utils; decompress=(xz -dcq) ;;
        1f8b*) decompress=(gzip -dcq) ;;
        *) echo "fetch-linux: unknown bzImage payload compression (magic $magic)" >&2; exit 1 ;;
    esac
    # Decompressors stop at the end of their stream; the size word Linux appends after
    # it is ignored (lz4 and gzip warn about trailing bytes, hence 2>/dev/null).
    payload "$payload_len" | "${decompress[@]}" 2>/dev/null >"$out/vmlinux.tmp" || true
    if [ "$(head -c 4 "$out/vmlinux.tmp" | od -An -tx1 | tr -d ' \n')" != 7f454c46 ]; then
        echo "fetch-linux: could not extract the ELF kernel from $out/vmlinuz" >&2
        exit 1
    fi
    mv "$out/vmlinux.tmp" "$out/vmlinux"
    echo "fetch-linux: $out/vmlinux (the same kernel, uncompressed, PVH entry)"
fi

busybox=/bin/busybox
if [ ! -x "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
    need_pkg busybox-static
fi

initrd=$out/initramfs.cpio.gz
if [ ! -s "$initrd" ] || [ "$busybox" -nt "$initrd" ] || [ "$script" -nt "$initrd" ]; then
    root=$(mktemp -d "$cache/initramfs.XXXXXX")
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc}
    cp "$busybox" "$root/bin/busybox"
    for applet in sh mount echo cat reboot poweroff sleep uname; do
        ln -s busybox "$root/bin/$applet"
    done
    cat >"$root/init" <<EOF
#!/bin/sh
# tiervisor test initramfs: prove that the kernel reached user space, then end the VM.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "$INIT_MARKER (\$(uname -r), \$(grep -c ^processor /proc/cpuinfo) cpus)"
# -f: no init to signal; with reboot=k the kernel resets through the i8042.
reboot -f
EOF
    chmod 755 "$root/init"
    # A fixed mtime and owner make the archive reproducible.
    find "$root" -exec touch -h -d @0 {} +
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$root"
    echo "fetch-linux: $initrd"
fi
