#!/usr/bin/env bash
# Run one strata-bench workload against TARGET and report what the disk
# under DIR saw meanwhile: reads per second, bytes per read, the mean number
# of requests in the disk (from /proc/diskstats' weighted time) and, by
# Little's law, the disk's time per read. Tells a daemon that feeds the disk
# too few requests from one whose requests cost the disk more.
#
# Usage: tools/scripts/disk-queue.sh DIR TARGET [strata-bench run flags...]
#
#   DIR     a path on the disk to watch (e.g. where the flash file is)
#   TARGET  a strata-bench target, e.g. vhost-user:/run/strata/bench.sock
#   flags   default: --rw randread --bs 4k --iodepth 32
#
# The workload runs for 7 s; the disk is sampled over 4 s of the middle.
set -euo pipefail

[[ $# -ge 2 && $1 != -h && $1 != --help ]] || { sed -n '2,/^[^#]/ s/^# \{0,1\}//p' "$0"; exit 2; }
dir=$1 target=$2
shift 2
[[ $# -gt 0 ]] || set -- --rw randread --bs 4k --iodepth 32

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench=$repo/target/release/strata-bench
[[ -x $bench ]] || { echo "disk-queue: $bench not built (cargo build --release -p strata-tools)" >&2; exit 1; }
source_dev=$(df --output=source "$dir" | tail -n 1)
disk=$(lsblk -no PKNAME "$source_dev" 2>/dev/null || true)
[[ -n $disk ]] || disk=$(basename "$source_dev")
grep -q " $disk " /proc/diskstats || { echo "disk-queue: $disk (under $dir) is not in /proc/diskstats" >&2; exit 1; }

# Reads completed, sectors read, weighted milliseconds in the disk.
sample() { awk -v d="$disk" '$3 == d { print $4, $6, $14 }' /proc/diskstats; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$bench" run --target "$target" --runtime 7 "$@" >"$out" 2>&1 &
run=$!
sleep 2
read -r reads0 sectors0 weighted0 < <(sample)
start=$(date +%s%N)
sleep 4
read -r reads1 sectors1 weighted1 < <(sample)
end=$(date +%s%N)
wait "$run" || { cat "$out" >&2; exit 1; }

awk -v r=$((reads1 - reads0)) -v s=$((sectors1 - sectors0)) -v w=$((weighted1 - weighted0)) \
    -v ms=$(((end - start) / 1000000)) -v disk="$disk" 'BEGIN {
    if (r == 0) { print "disk-queue: no reads reached " disk; exit 1 }
    iops = r * 1000 / ms; depth = w / ms
    printf "disk %s: %.0f reads/s, %.0f bytes/read, %.1f in the disk on average, %.0f us per read\n",
        disk, iops, s * 512 / r, depth, depth / iops * 1e6 }'
awk '$1 == "workload" { print "client: " $3 " IOPS" }' "$out"
