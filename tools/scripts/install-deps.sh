#!/usr/bin/env bash
# Installs what Strata needs to build, run and test on Debian bookworm:
# QEMU (the guest tests and qemu-storage-daemon for benchmarks), the tools the
# test guest is built with, and the Rust components the checks use.
# Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(
    qemu-system-x86      # qemu-system-x86_64 for the guest tests
    qemu-utils           # qemu-img; qemu-storage-daemon comes with QEMU
    fio                  # benchmarks on the host
    e2fsprogs
    cpio
    xz-utils
    zstd
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v qemu-storage-daemon >/dev/null; then
    missing+=(qemu-system-common)
fi
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "install-deps: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
if command -v rustup >/dev/null; then
    rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi
