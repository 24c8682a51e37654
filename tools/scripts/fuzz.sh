#!/usr/bin/env bash
# Runs every cargo-fuzz target of the workspace for SECONDS each (default
# 60), one after another, and stops at the first target that fails (a
# crashing input is left under that fuzz crate's artifacts/). Installs
# cargo-fuzz if it is missing. Uses a nightly toolchain with AddressSanitizer
# when rustup has one, and the stable toolchain without a sanitizer
# otherwise (coverage-guided either way).
set -euo pipefail

seconds=${1:-60}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if grep -q '^nightly' <<<"$(rustup toolchain list 2>/dev/null)"; then
    toolchain=(+nightly)
    sanitizer=address
else
    toolchain=()
    sanitizer=none
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for dir in common/fuzz pool-node/fuzz vhost-backend/fuzz; do
    # On its own line, so that a failing `cargo fuzz list` stops the script.
    targets=$(cargo "${toolchain[@]}" fuzz list --fuzz-dir "$dir")
    for target in $targets; do
        echo "== $dir $target (${seconds}s, sanitizer $sanitizer)"
        if ! cargo "${toolchain[@]}" fuzz run --fuzz-dir "$dir" --sanitizer "$sanitizer" "$target" -- \
            -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
            tail -n 40 "$log"
            echo "!! $target failed; a crashing input is under $dir/artifacts/$target" >&2
            exit 1
        fi
        grep -E '^Done' "$log" || true
    done
done
echo "== every target ran ${seconds}s without a crash"
