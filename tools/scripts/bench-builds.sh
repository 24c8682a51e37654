#!/usr/bin/env bash
# Compare strata-host builds side by side, in one `strata-bench compare` run:
# each build serves a strata vdisk from its own flash file in DIR, and the
# first build also serves DIR/bench.img as a raw vdisk, the baseline.
#
# Usage: tools/scripts/bench-builds.sh DIR NAME=BINARY [NAME=BINARY...] -- [strata-bench compare flags...]
#
#   DIR     where the flash files go, and where bench.img is (created, 2 GiB
#           of random data, if missing). A RAM-backed DIR such as /dev/shm
#           takes the disk out of the figures, but on tmpfs io_uring hands
#           every read to kernel worker threads, which share the cores
#           (docs/BENCHMARKS.md, eighth session).
#   NAME=BINARY  a strata-host build and the name of its row, e.g.
#           before=/var/tmp/strata-host.before after=target/release/strata-host
#   flags   e.g. --rw randread --bs 4k --iodepth 32 --runtime 3 --rounds 6
#
# Each strata vdisk is written once end to end with unique data before the
# run. Rounds rotate the order of the targets, so drift in the machine's
# speed does not favour one build (see docs/BENCHMARKS.md, "Noise").
set -euo pipefail

usage() {
    sed -n '2,/^[^#]/ s/^# \{0,1\}//p' "$0"
    exit 2
}

[[ $# -ge 2 && $1 != -h && $1 != --help ]] || usage
dir=$(realpath "$1")
shift
builds=()
while [[ $# -gt 0 && $1 != -- ]]; do
    [[ $1 == *=* ]] || usage
    builds+=("$1")
    shift
done
[[ ${#builds[@]} -ge 1 ]] || usage
[[ $# -gt 0 ]] && shift

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench=$repo/target/release/strata-bench
[[ -x $bench ]] || { echo "bench-builds: $bench not built (cargo build --release -p strata-tools)" >&2; exit 1; }
size=$((2 << 30))
image=$dir/bench.img
if [[ ! -e $image ]]; then
    echo "bench-builds: creating $image and writing it once with random data" >&2
    dd if=/dev/urandom of="$image" bs=1M count=$((size >> 20)) oflag=direct status=none
fi

workdir=$(mktemp -d "${TMPDIR:-/tmp}/bench-builds.XXXXXX")
pids=()
# shellcheck source=daemons.sh
source "$repo/tools/scripts/daemons.sh"
cleanup() {
    stop_daemons "${pids[@]}"
    rm -rf "$workdir"
    for build in "${builds[@]}"; do
        rm -f "$dir/bench-builds-${build%%=*}.flash"
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

targets=()
raw=(--vdisk "name=raw,kind=raw,path=$image,socket=$workdir/raw.sock,queues=1,cache=writeback")
for build in "${builds[@]}"; do
    name=${build%%=*}
    binary=${build#*=}
    [[ -x $binary ]] || { echo "bench-builds: $binary is not an executable" >&2; exit 1; }
    sock=$workdir/$name.sock
    rm -f "$dir/bench-builds-$name.flash"
    "$binary" --flash "$dir/bench-builds-$name.flash" --flash-size $((size * 2 + (1 << 30))) \
        --key-dir "$workdir/keys-$name" --control-socket "$workdir/control-$name.sock" \
        --vdisk "name=bench,size=$size,socket=$sock,queues=1,cache=writeback" "${raw[@]}" \
        >"$workdir/$name.log" 2>&1 &
    pids+=($!)
    raw=()
    wait_for_socket "${pids[-1]}" "$sock" "$workdir/$name.log" "$name" || exit 1
    echo "bench-builds: writing $name's strata vdisk once with unique data" >&2
    "$bench" run --target "vhost-user:$sock" --rw write --bs 256k --iodepth 8 \
        --pattern unique --verify --verify-passes write >/dev/null
    targets+=(--target "$name=vhost-user:$sock")
done

"$bench" compare "${targets[@]}" --target "raw=vhost-user:$workdir/raw.sock" --baseline raw "$@" &
pids=("$!" "${pids[@]}")
status=0
wait "${pids[0]}" || status=$?
exit "$status"
