#!/usr/bin/env bash
# Compare, in one `strata-bench compare` run on the same disk: a strata
# vdisk (strata-host's flash store, in IMAGE.flash), strata-host serving the
# backing file as a raw vdisk, qemu-storage-daemon exporting the same file,
# and the file itself through io_uring.
#
# Usage: tools/scripts/bench-compare.sh IMAGE [strata-bench workload flags...]
#
#   IMAGE   backing file. Created if missing (SIZE bytes, default 1G) and
#           then written once end to end with random data, so that reads hit
#           real blocks rather than holes.
#   flags   passed through to `strata-bench compare`, e.g.
#           --rw randread --bs 4k --iodepth 32 --runtime 10 [--json]
#           --rounds N splits the run into N rounds: each round runs every
#           target for --runtime, the order rotating by one target per
#           round, so that drift in the disk's speed does not favour
#           whichever target ran first. The table shows totals over all
#           rounds and each target's lowest and highest per-round IOPS,
#           e.g. --runtime 3 --rounds 5 instead of --runtime 15.
#
# Environment:
#   SIZE=1G         size of a newly created IMAGE (K/M/G suffixes)
#   DAEMON_QUEUES=4 queues both daemons offer (>= the --queues you ask for)
#   BASELINE=file   target the ratios are computed against (strata, raw, qsd or
#                   file), unless --baseline is among the flags
#   NO_BUILD=1      do not run `cargo build --release` first
#   POOL=1          strata-host writes through a strata-pool started for the
#                   run (NVLOG and data in IMAGE.pool); otherwise standalone
#   POOL_QUOTA=SIZE the pool's NVLOG quota (default 1G): with a large one
#                   the NVLOG absorbs a run's writes; with the default the
#                   host destages to the drives while the run writes
#   CACHE=writethrough  the daemons complete a write only once it is
#                   durable: strata and raw vdisks get cache=writethrough and
#                   qsd exports with writethrough=on (the file target is
#                   unchanged: compare writes among the daemons)
#
# The targets are named strata, raw, qsd and file. The strata vdisk is
# written once end to end with unique data before the run (a fresh flash
# store each time, so reads hit real frames). Both daemons are stopped when
# the script exits, however it exits. If strata-host does not start, its row
# shows FAILED with the reason and the others still run.
set -euo pipefail

usage() {
    # The comment block at the top of this file, without the '#'s.
    sed -n '2,/^[^#]/ s/^# \{0,1\}//p' "$0"
    exit 2
}

[[ $# -ge 1 && $1 != -h && $1 != --help ]] || usage
image=$1
shift

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
size=${SIZE:-1G}
queues=${DAEMON_QUEUES:-4}
baseline=${BASELINE:-file}

if [[ -z ${NO_BUILD:-} ]]; then
    (cd "$repo" && cargo build --release -p strata-tools -p strata-host -p strata-pool)
fi
target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-$repo/target}
bench=$target_dir/release/strata-bench
host=$target_dir/release/strata-host
pool=$target_dir/release/strata-pool
strata=$target_dir/release/strata
cache=${CACHE:-writeback}
case $cache in
writeback) qsd_writethrough=off ;;
writethrough) qsd_writethrough=on ;;
*) echo "bench-compare: CACHE=$cache: expected writeback or writethrough" >&2; exit 2 ;;
esac
[[ -x $bench ]] || { echo "bench-compare: $bench not built" >&2; exit 1; }
command -v qemu-storage-daemon >/dev/null ||
    { echo "bench-compare: qemu-storage-daemon not found in PATH" >&2; exit 1; }

if [[ ! -e $image ]]; then
    echo "bench-compare: creating $image ($size) and writing it once with random data" >&2
    truncate -s "$size" "$image"
    bytes=$(stat -c %s "$image")
    dd if=/dev/urandom of="$image" bs=1M count=$((bytes / 1048576)) \
        oflag=direct conv=notrunc status=none
fi
image=$(realpath "$image")

workdir=$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")
pids=()
# shellcheck source=daemons.sh
source "$repo/tools/scripts/daemons.sh"
cleanup() {
    stop_daemons "${pids[@]}"
    rm -rf "$workdir" "$flash" "$pool_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

strata_sock=$workdir/strata.sock
raw_sock=$workdir/raw.sock
qsd_sock=$workdir/qsd.sock
flash=$image.flash
pool_dir=$image.pool
bytes=$(stat -c %s "$image")

pool_args=()
if [[ -n ${POOL:-} ]]; then
    # A pool on the same disk as the image (NVLOG, catalog, six drive
    # directories); the host destages to the drives and truncates the log
    # as it goes.
    rm -rf "$pool_dir"
    "$strata" --cluster-dir "$workdir/cluster" init >/dev/null
    "$strata" --cluster-dir "$workdir/cluster" host add bench >/dev/null
    "$pool" --listen 127.0.0.1:0 --data-dir "$pool_dir" --cluster-dir "$workdir/cluster" \
        --nvlog-quota "${POOL_QUOTA:-1G}" >"$workdir/pool.log" 2>&1 &
    pids+=($!)
    deadline=$((SECONDS + 10))
    until pool_addr=$(sed -n 's/^strata-pool: listening on //p' "$workdir/pool.log") && [[ -n $pool_addr ]]; do
        if ! kill -0 "${pids[-1]}" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "bench-compare: strata-pool did not start:" >&2
            tail -n 20 "$workdir/pool.log" >&2 || true
            exit 1
        fi
        sleep 0.05
    done
    pool_args=(--pool "$pool_addr" --cluster-dir "$workdir/cluster" --host-name bench)
fi

if [[ -x $host ]]; then
    rm -f "$flash"
    "$host" --flash "$flash" --flash-size $((bytes * 2 + (1 << 30))) \
        --key-dir "$workdir/keys" --control-socket "$workdir/control.sock" "${pool_args[@]}" \
        --vdisk "name=bench,size=$bytes,socket=$strata_sock,queues=$queues,cache=$cache" \
        --vdisk "name=raw,kind=raw,path=$image,socket=$raw_sock,queues=$queues,cache=$cache" \
        >"$workdir/strata.log" 2>&1 &
    pids+=($!)
    if wait_for_socket "$!" "$strata_sock" "$workdir/strata.log" strata-host; then
        echo "bench-compare: writing the strata vdisk once with unique data" >&2
        "$bench" run --target "vhost-user:$strata_sock" --rw write --bs 256k --iodepth 8 \
            --pattern unique --verify --verify-passes write >/dev/null
        if [[ -n ${POOL:-} ]]; then
            # The fill wrote every block once with unique data: once a
            # destage covers it, what the host sent (NVLOG batches, then
            # stripe chunks with parity) is what a block costs the network.
            counter() { "$host" status --control-socket "$workdir/control.sock" --json |
                sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" | head -n 1; }
            last=$(counter nvlog_last_record)
            deadline=$((SECONDS + 300))
            until (($(counter nvlog_destaged_through) >= last)) || ((SECONDS >= deadline)); do
                sleep 1
            done
            blocks=$((bytes / 4096))
            nvlog=$(counter nvlog_bytes)
            stripes=$(counter stripe_bytes)
            echo "bench-compare: the fill of $blocks unique 4 KiB blocks sent $nvlog NVLOG bytes and $stripes stripe bytes to the pool:" \
                "$(awk -v n="$nvlog" -v s="$stripes" -v b="$blocks" 'BEGIN { printf "%.1f + %.1f = %.1f bytes per 4 KiB", n / b, s / b, (n + s) / b }')" >&2
        fi
    fi
else
    echo "bench-compare: $host not built; the strata rows will fail" >&2
fi

# locking=off: strata-host has the same file open.
qemu-storage-daemon \
    --blockdev "driver=file,node-name=f,filename=$image,cache.direct=on,aio=io_uring,locking=off" \
    --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$qsd_sock,writable=on,writethrough=$qsd_writethrough,num-queues=$queues" \
    >"$workdir/qsd.log" 2>&1 &
pids+=($!)
wait_for_socket "$!" "$qsd_sock" "$workdir/qsd.log" qemu-storage-daemon || exit 1

extra=()
if [[ " $* " != *" --baseline"* ]]; then
    extra=(--baseline "$baseline")
fi

# In the background so that INT/TERM interrupt `wait` at once (bash defers
# traps while a foreground child runs); cleanup stops it first.
"$bench" compare \
    --target "strata=vhost-user:$strata_sock" \
    --target "raw=vhost-user:$raw_sock" \
    --target "qsd=vhost-user:$qsd_sock" \
    --target "file=file:$image" \
    "${extra[@]}" "$@" &
pids=("$!" "${pids[@]}")
status=0
wait "${pids[0]}" || status=$?
exit "$status"
