#!/usr/bin/env bash
# Installs what Strata needs to build, run and test on Debian bookworm:
# QEMU (the guest tests and qemu-storage-daemon for benchmarks), a C++
# compiler (libFuzzer, for the fuzz targets), the tools the test guest is
# built with, and the Rust components the checks use.
# Safe to run again: it installs only what is missing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The list and the reasons for it live in qemu-tests/guest/PACKAGES.
mapfile -t packages < <(grep -v '^\s*\(#\|$\)' "$repo/qemu-tests/guest/PACKAGES")
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
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
