#!/usr/bin/env bash
# Installs what building, testing and benchmarking tiervisor needs on a fresh Debian
# machine of this project's kind. Idempotent: installs only what is missing.
set -euo pipefail

pkgs=(libclang-dev clang qemu-system-x86 qemu-utils busybox-static valgrind cpio xz-utils lz4 sqlite3 python3 gcc gzip mawk bzip2 perl diffutils)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# rust-toolchain.toml pins the toolchain and the guest target; make sure both are here.
rustup show active-toolchain >/dev/null
rustup target list --installed | grep -q x86_64-unknown-none || rustup target add x86_64-unknown-none
