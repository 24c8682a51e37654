#!/usr/bin/env bash
# Compare strata-host builds side by side, in one `strata-bench compare` run:
# each build serves a strata vdisk from its own flash file in DIR, and the
# first build also serves DIR/bench.img as a raw vdisk, the baseline. After
# the table, each row's strata-host CPU time per I/O.
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
#
# Environment:
#   RAW_EACH=1  every build serves bench.img as a raw vdisk too (rows
#               NAME-raw; the first build's is the baseline), for changes
#               that the raw kind shares
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

# One strata-host process per row, so that each process's CPU time over the
# run is its row's: after the table the script prints CPU per I/O, which
# drifts far less with the machine's speed than IOPS do.
targets=()
names=()
daemons=()
# start_daemon NAME BINARY VDISK-SPEC [ARGS...]: starts BINARY serving one
# vdisk on $workdir/NAME.sock and adds it as target NAME.
start_daemon() {
    local name=$1 binary=$2 spec=$3
    shift 3
    [[ -x $binary ]] || { echo "bench-builds: $binary is not an executable" >&2; exit 1; }
    "$binary" --vdisk "$spec,socket=$workdir/$name.sock,queues=1,cache=writeback" \
        --control-socket "$workdir/control-$name.sock" "$@" >"$workdir/$name.log" 2>&1 &
    pids+=($!)
    daemons+=($!)
    names+=("$name")
    targets+=(--target "$name=vhost-user:$workdir/$name.sock")
    wait_for_socket "$!" "$workdir/$name.sock" "$workdir/$name.log" "$name" || exit 1
}
for build in "${builds[@]}"; do
    name=${build%%=*}
    binary=${build#*=}
    rm -f "$dir/bench-builds-$name.flash"
    start_daemon "$name" "$binary" "name=bench,size=$size" \
        --flash "$dir/bench-builds-$name.flash" --flash-size $((size * 2 + (1 << 30))) \
        --key-dir "$workdir/keys-$name"
    echo "bench-builds: writing $name's strata vdisk once with unique data" >&2
    "$bench" run --target "vhost-user:$workdir/$name.sock" --rw write --bs 256k --iodepth 8 \
        --pattern unique --verify --verify-passes write >/dev/null
done
if [[ -n ${RAW_EACH:-} ]]; then
    for build in "${builds[@]}"; do
        start_daemon "${build%%=*}-raw" "${build#*=}" "name=raw,kind=raw,path=$image"
    done
    baseline=${builds[0]%%=*}-raw
else
    first=${builds[0]}
    start_daemon raw "${first#*=}" "name=raw,kind=raw,path=$image"
    baseline=raw
fi

# cpu_ticks PID: user + system time of the process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
before=()
for pid in "${daemons[@]}"; do before+=("$(cpu_ticks "$pid")"); done

"$bench" compare "${targets[@]}" --baseline "$baseline" "$@" >"$workdir/compare.out" &
pids=("$!" "${pids[@]}")
status=0
wait "${pids[0]}" || status=$?
cat "$workdir/compare.out"
((status == 0)) || exit "$status"

# Each row's I/Os are its IOPS times its measured time (runtime x rounds).
seconds=$(sed -n 's/^workload:.* runtime=\([0-9.]*\)s.*/\1/p' "$workdir/compare.out")
rounds=$(sed -n 's/^rounds: *\([0-9]*\).*/\1/p' "$workdir/compare.out")
if [[ -n $seconds ]]; then
    echo
    echo "strata-host CPU (all threads) per I/O, over the run:"
    for i in "${!daemons[@]}"; do
        ticks=$(($(cpu_ticks "${daemons[$i]}") - before[i]))
        awk -v name="${names[$i]}" -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" \
            -v secs="$seconds" -v rounds="${rounds:-1}" '
            $1 == name && $2 == "workload" {
                printf "  %-10s %6.1f us\n", name, ticks / hz * 1e6 / ($3 * secs * rounds)
            }' "$workdir/compare.out"
    done
fi
