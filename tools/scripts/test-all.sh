#!/usr/bin/env bash
# Installs what is needed and runs every check and test: formatting, clippy,
# then the whole workspace's tests in release (unit, property, libblkio client,
# hostile-frontend and QEMU guest tests) on strata vdisks, the client,
# hostile-frontend, status and guest tests once more with strata-host writing
# through a pool node, and once more on raw vdisks. One build serves all of
# them.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
"$repo/tools/scripts/install-deps.sh"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo build"
cargo build --release --workspace --all-targets
echo "== cargo test (strata vdisks)"
cargo test --release --workspace
echo "== cargo test (strata vdisks on a pool node: client, hostile-frontend, status and guest tests)"
STRATA_TEST_POOL=1 cargo test --release -p strata-host --test blkio_client --test malformed --test status
STRATA_TEST_POOL=1 cargo test --release -p strata-qemu-tests --test guest
echo "== cargo test (raw vdisks: client and hostile-frontend tests)"
STRATA_TEST_KIND=raw cargo test --release -p strata-host --test blkio_client --test malformed
