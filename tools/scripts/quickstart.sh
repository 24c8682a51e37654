#!/usr/bin/env bash
# The main job on one box, no configuration: builds Strata, creates a
# `strata` vdisk (deduplicated, compressed, encrypted, in a flash store file
# under STRATA_DIR) and serves it with strata-host in the foreground, printing the QEMU
# arguments and the libvirt <disk> XML that attach it. Ctrl-C stops it.
#
# Environment: STRATA_DIR (default /var/lib/strata, or ~/.local/share/strata
# when not root), STRATA_VDISK (default vdisk0), STRATA_SIZE (default 8G),
# STRATA_QUEUES (default 2), NO_BUILD=1 to skip the build.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$repo/tools/scripts/install-deps.sh"

if [ "$(id -u)" = 0 ]; then default_dir=/var/lib/strata; else default_dir=$HOME/.local/share/strata; fi
dir=${STRATA_DIR:-$default_dir}
name=${STRATA_VDISK:-vdisk0}
size=${STRATA_SIZE:-8G}
queues=${STRATA_QUEUES:-2}
flash=$dir/flash.img
socket=$dir/$name.sock
mkdir -p "$dir"

if [ -z "${NO_BUILD:-}" ]; then
    (cd "$repo" && cargo build --release -p strata-host)
fi
host=$repo/target/release/strata-host

# A new vdisk is created with STRATA_SIZE; an existing one must keep its size.
spec="name=$name,size=$size,socket=$socket,queues=$queues"

cat <<MSG

Strata is serving vdisk '$name' ($size, in the flash store $flash) on $socket.
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

In the guest the disk shows up as /dev/vda with serial '$name'. Ctrl-C stops strata-host.

MSG
exec "$host" --flash "$flash" --key-dir "$dir/keys" --control-socket "$dir/strata-host.ctl" --vdisk "$spec"
