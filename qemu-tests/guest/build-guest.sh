#!/bin/bash
# Builds (or reuses) the Strata test guest: a Debian kernel plus an initramfs
# with busybox, fio, e2fsprogs, their shared libraries and the kernel modules
# for virtio-pci, virtio-blk and ext4.
#
# Usage: build-guest.sh CACHE_DIR
#
# Everything comes from Debian packages fetched with `apt-get download` and
# unpacked with `dpkg-deb -x`; nothing is installed on the host. The result
# lands in CACHE_DIR/<key>/ where <key> hashes the exact package files (name,
# version, checksum) and this directory's scripts, so a rebuild happens only
# when one of them changes. Working out the package versions takes apt a few
# seconds, so CACHE_DIR/resolved/ remembers the key for the current state of
# apt's lists, dpkg's status and these scripts. The image directory holds:
#
#   vmlinuz          the kernel
#   initramfs.cpio   uncompressed newc cpio; /init is guest/init
#   packages         the .deb files it was made from
#
# The last line on stdout is `GUEST_DIR=<path>`; progress goes to stderr.
# Host needs: apt, dpkg (dpkg-deb), coreutils, findutils, gawk or mawk.
set -euo pipefail

die() {
    echo "build-guest: error: $*" >&2
    exit 1
}
log() { echo "build-guest: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 CACHE_DIR"
mkdir -p "$1" || die "cannot create $1"
cache=$(cd "$1" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for tool in apt-get apt-cache dpkg-deb sha256sum find awk; do
    command -v "$tool" >/dev/null || die "'$tool' not found (the guest is built from Debian packages with apt)"
done

# Fast path: nothing apt or dpkg know has changed since the last resolution.
fingerprint=$( {
    stat -c '%n %s %Y' /var/lib/apt/lists/* /var/lib/dpkg/status /etc/apt/sources.list \
        /etc/apt/sources.list.d/* /etc/apt/preferences /etc/apt/preferences.d/* 2>/dev/null || true
    sha256sum "$here/build-guest.sh" "$here/init"
} | sha256sum | cut -c1-16)
if [ -f "$cache/resolved/$fingerprint" ]; then
    key=$(cat "$cache/resolved/$fingerprint")
    if [ -n "$key" ] && [ -f "$cache/$key/ready" ]; then
        echo "GUEST_DIR=$cache/$key"
        exit 0
    fi
fi

remember_key() {
    mkdir -p "$cache/resolved"
    rm -f "$cache"/resolved/*
    echo "$1" >"$cache/resolved/$fingerprint.tmp.$$"
    mv -f "$cache/resolved/$fingerprint.tmp.$$" "$cache/resolved/$fingerprint"
}

apt_opts=()
if [ "$(id -u)" = 0 ]; then
    # As root apt hands downloads to the _apt user, which cannot write to the
    # work directory; downloading as root is what we want here.
    apt_opts+=(-o APT::Sandbox::User=root)
fi

# Kernel modules to load, in this order (their dependencies are added and
# loaded first). crc32c: ext4 checksums metadata with it.
modules=(crc32c_generic virtio_pci virtio_blk ext4)

# The e2fsprogs programs copied into the guest.
e2fs_progs=(e2fsck mke2fs tune2fs dumpe2fs resize2fs)

# Library packages that fio and e2fsprogs need, found by following
# Depends/Pre-Depends through library packages only (fio's Depends also name
# python3 and init-system-helpers for its helper scripts, which the guest does
# not need). The shared objects actually copied are chosen later by asking
# the dynamic loader, so a few unused packages here only cost download time.
library_closure() {
    local -A seen=()
    local frontier=("$@") next dep
    while [ ${#frontier[@]} -gt 0 ]; do
        next=()
        while read -r dep; do
            case $dep in
            lib* | zlib1g) ;;
            *) continue ;;
            esac
            [ -n "${seen[$dep]:-}" ] && continue
            seen[$dep]=1
            next+=("$dep")
        done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts \
            --no-breaks --no-replaces --no-enhances "${frontier[@]}" |
            awk '$1 ~ /^\|?(Pre)?Depends:$/ && $2 !~ /^</ { sub(/:any$/, "", $2); print $2 }')
        frontier=("${next[@]+"${next[@]}"}")
    done
    printf '%s\n' "${!seen[@]}" | sort
}

resolve_packages() {
    kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
    [ -n "$kernel_pkg" ] || return 1
    mapfile -t libs < <(library_closure fio e2fsprogs)
    packages=("$kernel_pkg" busybox-static fio e2fsprogs "${libs[@]}")
    uris=$(apt-get "${apt_opts[@]}" download --print-uris "${packages[@]}" 2>/dev/null) || return 1
    [ -n "$uris" ]
}

if ! resolve_packages; then
    log "packages not known to apt yet; running apt-get update"
    apt-get update >&2 || die "apt-get update failed"
    resolve_packages || die "cannot resolve the guest packages (linux-image-amd64, busybox-static, fio, e2fsprogs) with apt"
fi

# Key: every package file (name_version_arch.deb and its checksum) plus the
# scripts that turn them into the image.
deb_list=$(awk '{ print $2, $4 }' <<<"$uris" | sort)
key=$( {
    echo "$deb_list"
    sha256sum "$here/build-guest.sh" "$here/init" | awk '{ print $1 }'
} | sha256sum | cut -c1-16)
out=$cache/$key

if [ -f "$out/ready" ]; then
    remember_key "$key"
    echo "GUEST_DIR=$out"
    exit 0
fi

# Leftovers of builds that were killed.
find "$cache" -mindepth 1 -maxdepth 1 -name 'tmp.*' -mmin +120 -exec rm -rf {} + 2>/dev/null || true
work=$(mktemp -d "$cache/tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "building guest image $key (${#packages[@]} packages) in $work"
mkdir -p "$work/debs" "$work/sysroot" "$work/kernel" "$work/out"
(cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download "${packages[@]}" >&2) ||
    die "apt-get download failed"

for deb in "$work"/debs/*.deb; do
    case $(basename "$deb") in
    "${kernel_pkg}"_*) dpkg-deb -x "$deb" "$work/kernel" ;;
    *) dpkg-deb -x "$deb" "$work/sysroot" ;;
    esac
done

sysroot=$work/sysroot
root=$work/rootfs
busybox=$sysroot/bin/busybox
[ -x "$busybox" ] || die "busybox-static did not provide /bin/busybox"

# Merged-/usr layout.
mkdir -p "$root"/usr/{bin,sbin,lib/x86_64-linux-gnu,lib64} \
    "$root"/{dev,proc,sys,tmp,mnt,run,etc/strata,strata}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done

# Programs.
cp "$busybox" "$root/usr/bin/busybox"
cp "$sysroot/usr/bin/fio" "$root/usr/bin/fio"
binaries=("$root/usr/bin/fio")
for p in "${e2fs_progs[@]}"; do
    src=
    for dir in sbin usr/sbin; do
        [ -f "$sysroot/$dir/$p" ] && src=$sysroot/$dir/$p
    done
    [ -n "$src" ] || die "e2fsprogs has no $p"
    cp "$src" "$root/usr/sbin/$p"
    binaries+=("$root/usr/sbin/$p")
done
ln -s mke2fs "$root/usr/sbin/mkfs.ext4"
ln -s e2fsck "$root/usr/sbin/fsck.ext4"
cp "$sysroot/etc/mke2fs.conf" "$root/etc/mke2fs.conf"
ln -s /proc/mounts "$root/etc/mtab"

# Busybox applets for every name not taken by a real program.
while read -r applet; do
    name=${applet##*/}
    case $applet in
    bin/* | usr/bin/*) dest=$root/usr/bin/$name ;;
    sbin/* | usr/sbin/*) dest=$root/usr/sbin/$name ;;
    *) continue ;;
    esac
    [ -e "$root/usr/bin/$name" ] || [ -e "$root/usr/sbin/$name" ] ||
        [ -L "$root/usr/sbin/$name" ] || ln -s /usr/bin/busybox "$dest"
done < <("$busybox" --list-full)

# Shared libraries: ask the packaged dynamic loader what each program loads,
# searching only the unpacked packages, and copy exactly those files.
ldso=$sysroot/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[ -f "$ldso" ] || die "libc6 did not provide $ldso"
libpath=$(find "$sysroot" -name '*.so*' \( -type f -o -type l \) -printf '%h\n' | sort -u | paste -sd:)
libdir=$root/usr/lib/x86_64-linux-gnu
cp -L "$ldso" "$libdir/ld-linux-x86-64.so.2"
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/usr/lib64/ld-linux-x86-64.so.2"
for bin in "${binaries[@]}"; do
    listing=$("$ldso" --library-path "$libpath" --list "$bin") ||
        die "cannot list the libraries of $bin: $listing"
    while read -r soname arrow path _; do
        [ "$arrow" = "=>" ] || continue
        # The program interpreter (copied above) is listed by its path.
        case $soname in */*) continue ;; esac
        [ "$path" != "not" ] || die "$bin needs $soname, which no guest package provides"
        case $path in
        "$sysroot"/*) ;;
        *) die "$bin: $soname resolved outside the guest packages ($path)" ;;
        esac
        [ -e "$libdir/$soname" ] || cp -L "$path" "$libdir/$soname"
    done <<<"$listing"
done
# glibc loads libgcc_s at run time for thread cancellation and unwinding.
for extra in libgcc_s.so.1; do
    src=$(find "$sysroot" -name "$extra" | head -n1)
    [ -z "$src" ] || [ -e "$libdir/$extra" ] || cp -L "$src" "$libdir/$extra"
done

# Kernel and modules. Debian ships no modules.dep (depmod runs at install
# time), so generate one with busybox depmod on the unpacked tree and load the
# modules with insmod in dependency order.
kdir=$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -n "$kdir" ] || die "the kernel package has no /lib/modules/<version>"
kver=$(basename "$kdir")
cp "$work/kernel/boot/vmlinuz-$kver" "$work/out/vmlinuz"
"$busybox" depmod -b "$work/kernel" "$kver" || die "busybox depmod failed"
order=()
add_module() {
    local path=$1 m
    for m in "${order[@]+"${order[@]}"}"; do [ "$m" = "$path" ] && return 0; done
    order+=("$path")
}
for mod in "${modules[@]}"; do
    line=$(awk -v m="$mod" '{ p = $1; sub(/:$/, "", p); n = p; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n);
        gsub(/-/, "_", n); if (n == m) { print; exit } }' "$kdir/modules.dep")
    [ -n "$line" ] || die "kernel $kver has no module $mod (built in? then drop it from the list)"
    read -r -a parts <<<"$line"
    # modules.dep lists a module's dependencies so that the last one must be
    # loaded first.
    for ((i = ${#parts[@]} - 1; i >= 1; i--)); do add_module "${parts[$i]}"; done
    add_module "${parts[0]%:}"
done
mkdir -p "$root/usr/lib/modules/$kver"
: >"$root/etc/strata/modules"
for path in "${order[@]}"; do
    mkdir -p "$root/usr/lib/modules/$kver/$(dirname "$path")"
    cp "$kdir/$path" "$root/usr/lib/modules/$kver/$path"
    echo "/lib/modules/$kver/$path" >>"$root/etc/strata/modules"
done

install -m 0755 "$here/init" "$root/init"
echo "$deb_list" >"$work/out/packages"

# The archive: busybox cpio writes the newc format the kernel wants.
(cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc >"$work/out/initramfs.cpio" 2>/dev/null) ||
    die "cpio failed"
touch "$work/out/ready"

log "kernel $kver, initramfs $(du -h "$work/out/initramfs.cpio" | cut -f1)"
if ! mv -T "$work/out" "$out" 2>/dev/null; then
    # Another build finished first; its result is equivalent.
    [ -f "$out/ready" ] || die "cannot move the image to $out"
fi
# Drop images built from older package versions.
for old in "$cache"/*; do
    [ "$old" = "$out" ] || case $(basename "$old") in
    tmp.* | resolved) ;;
    *) rm -rf "$old" ;;
    esac
done
remember_key "$key"
echo "GUEST_DIR=$out"
