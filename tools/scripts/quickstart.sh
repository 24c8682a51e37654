#!/usr/bin/env bash
# The main job on one box, no configuration: builds Strata, makes a cluster
# (CA and certificates, once), starts a pool node (strata-pool) on loopback,
# and serves a `strata` vdisk (deduplicated, compressed, encrypted) with
# strata-host in the foreground: every write is durable in the pool's NVLOG
# before it completes, and the host's flash file is a cache of the pool.
# Prints the QEMU arguments and the libvirt <disk> XML that attach the vdisk.
# Ctrl-C stops both daemons.
#
# Environment: STRATA_DIR (default /var/lib/strata, or ~/.local/share/strata
# when not root), STRATA_VDISK (default vdisk0), STRATA_SIZE (default 8G),
# STRATA_QUEUES (default 2), STRATA_POOL (pool address, default
# 127.0.0.1:7470), STRATA_NVLOG_QUOTA (default 1G: the host destages to the
# pool's drives and truncates its NVLOG well before that), NO_BUILD=1 to
# skip the build.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$repo/tools/scripts/install-deps.sh"

if [ "$(id -u)" = 0 ]; then default_dir=/var/lib/strata; else default_dir=$HOME/.local/share/strata; fi
dir=${STRATA_DIR:-$default_dir}
name=${STRATA_VDISK:-vdisk0}
size=${STRATA_SIZE:-8G}
queues=${STRATA_QUEUES:-2}
pool_addr=${STRATA_POOL:-127.0.0.1:7470}
quota=${STRATA_NVLOG_QUOTA:-1G}
cluster=$dir/cluster
flash=$dir/flash.img
socket=$dir/$name.sock
mkdir -p "$dir"

if [ -z "${NO_BUILD:-}" ]; then
    (cd "$repo" && cargo build --release -p strata-host -p strata-pool -p strata-tools)
fi
bin=$repo/target/release
host=$bin/strata-host

# The cluster's CA and certificates, made once and kept.
if [ ! -e "$cluster/ca.pem" ]; then
    "$bin/strata" --cluster-dir "$cluster" init
fi
if [ ! -e "$cluster/hosts/host1.pem" ]; then
    "$bin/strata" --cluster-dir "$cluster" host add host1
fi

setsid "$bin/strata-pool" --listen "$pool_addr" --data-dir "$dir/pool" --cluster-dir "$cluster" \
    --nvlog-quota "$quota" 2>"$dir/pool.log" &
pool_pid=$!
trap 'kill "$pool_pid" 2>/dev/null || true; wait "$pool_pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do
    grep -q "listening on" "$dir/pool.log" 2>/dev/null && break
    if ! kill -0 "$pool_pid" 2>/dev/null; then
        echo "quickstart: strata-pool did not start:" >&2
        cat "$dir/pool.log" >&2
        exit 1
    fi
    sleep 0.05
done

# A new vdisk is created with STRATA_SIZE; an existing one must keep its size.
spec="name=$name,size=$size,socket=$socket,queues=$queues"

cat <<MSG

Strata is serving vdisk '$name' ($size) on $socket.
Writes are durable in the pool node's NVLOG ($pool_addr, data in $dir/pool,
log in $dir/pool.log) before they complete; $flash is the host's cache.
Status (dedupe and compression ratios, flash use): $host status --control-socket $dir/strata-host.ctl

Attach it to a QEMU guest (guest RAM must be shared memory):

  qemu-system-x86_64 -m 1G \\
    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\
    -chardev socket,id=$name,path=$socket,reconnect=1 \\
    -device vhost-user-blk-pci,chardev=$name,num-queues=$queues \\
    ...

or in a libvirt domain (with <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>):

  <disk type='vhostuser' device='disk'>
    <driver name='qemu' type='raw' queues='$queues'/>
    <source type='unix' path='$socket'>
      <reconnect enabled='yes' timeout='1'/>
    </source>
    <target dev='vda' bus='virtio'/>
  </disk>

In the guest the disk shows up as /dev/vda with serial '$name'. Ctrl-C stops strata-host and the pool.

MSG
"$host" --flash "$flash" --key-dir "$dir/keys" --control-socket "$dir/strata-host.ctl" \
    --pool "$pool_addr" --cluster-dir "$cluster" --host-name host1 --vdisk "$spec" &
host_pid=$!
trap 'kill "$host_pid" 2>/dev/null || true; wait "$host_pid" 2>/dev/null || true; kill "$pool_pid" 2>/dev/null || true; wait "$pool_pid" 2>/dev/null || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
wait "$host_pid"
