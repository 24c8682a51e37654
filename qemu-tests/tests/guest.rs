//! Guest-level tests: a Debian kernel under QEMU (TCG) doing real I/O on
//! vhost-user-blk disks served by `strata-host`.
//!
//! Needs `target/release/strata-host` (`cargo build --release -p
//! strata-host`), `qemu-system-x86_64` and apt access for the guest image.
//! Nothing here is skipped: a missing piece fails the test with a message.
//! `STRATA_QEMU_TESTS_SERVER=qemu-storage-daemon` runs the same tests against
//! qemu-storage-daemon, which is how the harness itself is checked.

use anyhow::{ensure, Context, Result};
use strata_qemu_tests::{Cue, DiskSpec, GuestImage, GuestOutcome, Server};

const MIB: u64 = 1 << 20;

fn image() -> Result<&'static GuestImage> {
    GuestImage::shared()
}

/// Shell lines that check /sys/block/$dev: the serial the guest reads (from
/// VIRTIO_BLK_T_GET_ID) and the size in 512-byte sectors.
fn check_disk(dev: &str, serial: &str, size: u64) -> String {
    let sectors = size / 512;
    format!(
        r#"
serial=$(cat /sys/block/{dev}/serial)
echo "{dev} serial: '$serial'"
if [ "$serial" != '{serial}' ]; then echo "FAIL: {dev} serial is '$serial', expected '{serial}'"; exit 1; fi
sectors=$(cat /sys/block/{dev}/size)
if [ "$sectors" != {sectors} ]; then echo "FAIL: {dev} has $sectors sectors, expected {sectors}"; exit 1; fi
"#
    )
}

/// Checks fio's console output: exit code 0, no verify or I/O errors, and
/// that `bytes` were both written and read back (the read phase is the
/// verification, since the job itself only writes).
fn check_fio_output(out: &GuestOutcome, bytes: u64) -> Result<()> {
    let console = &out.console;
    let context = || format!("guest console:\n{console}");
    ensure!(
        console.lines().any(|l| l.trim() == "FIO-EXIT 0"),
        "fio did not exit with 0\n{}",
        context()
    );
    // fio's verification failures read "verify: bad magic header ...",
    // "crc32c: verify failed at file ..."; I/O errors "fio: io_u error ...".
    let bad = |l: &&str| {
        let l = l.trim_start();
        l.starts_with("verify:")
            || l.contains("verify failed")
            || l.contains("bad magic")
            || l.contains("io_u error")
    };
    if let Some(line) = console.lines().find(bad) {
        anyhow::bail!("fio reported an error: {line}\n{}", context());
    }
    ensure!(
        console.contains("err= 0:"),
        "no `err= 0:` job status from fio\n{}",
        context()
    );
    let io = format!("io={}MiB", format_mib(bytes));
    for dir in ["READ:", "WRITE:"] {
        let line = console
            .lines()
            .find(|l| l.trim_start().starts_with(dir))
            .with_context(|| format!("no {dir} summary from fio\n{}", context()))?;
        ensure!(
            line.contains(&io),
            "fio {dir} summary does not show {io}: {line}\n{}",
            context()
        );
    }
    Ok(())
}

/// fio prints sizes like `64.0MiB`.
fn format_mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB as f64)
}

#[test]
fn fio_randwrite_verify() -> Result<()> {
    let size = 64 * MIB;
    let image = image()?;
    let mut server = Server::start_from_env(&[DiskSpec::new("fio-verify", size)])?;
    let serial = server.kind().expected_serial("fio-verify");
    let script = format!(
        r#"set -e
{check}
rc=0
fio --name=randwrite --eta=never --filename=/dev/vda --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --iodepth=16 --size={size} \
    --verify=crc32c --verify_fatal=1 --do_verify=1 || rc=$?
echo "FIO-EXIT $rc"
exit $rc
"#,
        check = check_disk("vda", &serial, size)
    );
    let vm = server.vm();
    let out = server.run_guest(&vm, image, &script)?;
    check_fio_output(&out, size)?;
    eprintln!("fio_randwrite_verify: guest ran {:?}", out.elapsed);
    Ok(())
}

#[test]
fn ext4_mkfs_fsck_files_survive_remount() -> Result<()> {
    let size = 128 * MIB;
    let image = image()?;
    let mut server = Server::start_from_env(&[DiskSpec::new("ext4-files", size)])?;
    let serial = server.kind().expected_serial("ext4-files");
    let script = format!(
        r#"set -e
{check}
dev=/dev/vda
mkfs.ext4 -F -q $dev
e2fsck -fn $dev
mount -t ext4 $dev /mnt

# Files with known content: edge sizes, a larger one, many small ones.
mkdir -p /tmp/src/sub/deeper
head -c 1 /dev/urandom >/tmp/src/one-byte
head -c 4095 /dev/urandom >/tmp/src/block-minus-1
head -c 4096 /dev/urandom >/tmp/src/block
head -c 1048583 /dev/urandom >/tmp/src/mib-plus-7
head -c 8388608 /dev/urandom >/tmp/src/sub/eight-mib
: >/tmp/src/empty
i=0
while [ $i -lt 300 ]; do
    echo "small file $i" >/tmp/src/sub/deeper/f$i
    i=$((i + 1))
done
(cd /tmp/src && find . -type f | sort | xargs sha256sum) >/tmp/sums
echo "SUMS-BEFORE $(sha256sum </tmp/sums | cut -d' ' -f1) $(wc -l </tmp/sums)"

cp -a /tmp/src/. /mnt/
sync
umount /mnt
echo 3 >/proc/sys/vm/drop_caches
e2fsck -fn $dev

mount -t ext4 $dev /mnt
(cd /mnt && find . -path ./lost+found -prune -o -type f -print | sort | xargs sha256sum) >/tmp/sums-after
echo "SUMS-AFTER $(sha256sum </tmp/sums-after | cut -d' ' -f1) $(wc -l </tmp/sums-after)"
for f in $(cd /tmp/src && find . -type f); do
    cmp /tmp/src/$f /mnt/$f
done
cmp /tmp/sums /tmp/sums-after
umount /mnt
e2fsck -fn $dev
echo EXT4-FILES-OK
"#,
        check = check_disk("vda", &serial, size)
    );
    let vm = server.vm();
    let out = server.run_guest(&vm, image, &script)?;
    let console = &out.console;
    let sums = |tag: &str| {
        console
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .map(str::to_string)
            .with_context(|| format!("no {tag} line\n{console}"))
    };
    let before = sums("SUMS-BEFORE ")?;
    let after = sums("SUMS-AFTER ")?;
    ensure!(
        before == after,
        "file checksums changed: before {before}, after {after}\n{console}"
    );
    ensure!(before.ends_with(" 306"), "expected 306 files, got {before}");
    ensure!(
        console.lines().any(|l| l == "EXT4-FILES-OK"),
        "script did not finish\n{console}"
    );
    eprintln!(
        "ext4_mkfs_fsck_files_survive_remount: guest ran {:?}",
        out.elapsed
    );
    Ok(())
}

#[test]
fn fio_verify_two_queues_two_cpus() -> Result<()> {
    let size = 64 * MIB;
    let half = size / 2;
    let image = image()?;
    let mut server = Server::start_from_env(&[DiskSpec::new("mq-verify", size).queues(2)])?;
    let serial = server.kind().expected_serial("mq-verify");
    // One job pinned to each vCPU, on separate halves of the disk; blk-mq
    // maps each CPU to its own hardware queue, so both virtqueues carry I/O,
    // which the per-queue interrupt counts confirm.
    let script = format!(
        r#"set -e
{check}
queues=$(ls /sys/block/vda/mq | wc -l)
echo "vda hardware queues: $queues"
[ "$queues" = 2 ] || {{ echo "FAIL: expected 2 hardware queues"; exit 1; }}
for q in 0 1; do echo "queue $q cpus: $(cat /sys/block/vda/mq/$q/cpu_list)"; done
cat >/tmp/mq.fio <<EOF
[global]
filename=/dev/vda
ioengine=libaio
direct=1
rw=randwrite
bs=4k
iodepth=16
size={half}
verify=crc32c
verify_fatal=1
do_verify=1
group_reporting=1

[cpu0]
cpus_allowed=0
offset=0

[cpu1]
cpus_allowed=1
offset={half}
EOF
rc=0
fio --eta=never /tmp/mq.fio || rc=$?
echo "FIO-EXIT $rc"
[ $rc = 0 ] || exit $rc
# Each virtqueue has its own MSI-X vector (virtioN-req.Q); its count is
# the completions signalled on that queue.
cat /proc/interrupts
for q in 0 1; do
    n=$(awk -v q="req.$q" -v cpus="$(nproc)" '$NF ~ ("^virtio[0-9]+-" q "$") {{
        for (i = 2; i <= cpus + 1; i++) s += $i }} END {{ print s + 0 }}' /proc/interrupts)
    echo "queue $q interrupts: $n"
    [ "$n" -gt 0 ] || {{ echo "FAIL: queue $q carried no I/O"; exit 1; }}
done
"#,
        check = check_disk("vda", &serial, size)
    );
    let vm = server.vm().cpus(2);
    let out = server.run_guest(&vm, image, &script)?;
    check_fio_output(&out, size)?;
    eprintln!(
        "fio_verify_two_queues_two_cpus: guest ran {:?}",
        out.elapsed
    );
    Ok(())
}

/// SeaBIOS reads each disk (sector 0, for EDD) with its own virtio-blk driver
/// before Linux starts; the other tests switch that off to test Linux's
/// driver alone. Real VMs booting from a vhost-user disk depend on it.
#[test]
fn firmware_disk_io_then_linux() -> Result<()> {
    let size = 64 * MIB;
    let image = image()?;
    let mut server = Server::start_from_env(&[DiskSpec::new("bios-probe", size)])?;
    let serial = server.kind().expected_serial("bios-probe");
    let script = format!(
        r#"set -e
{check}
head -c 1048576 /dev/urandom >/tmp/data
dd if=/tmp/data of=/dev/vda bs=64k oflag=direct 2>/dev/null
dd if=/dev/vda of=/tmp/back bs=64k count=16 iflag=direct 2>/dev/null
cmp /tmp/data /tmp/back
echo BIOS-PROBE-OK
"#,
        check = check_disk("vda", &serial, size)
    );
    // A guest that hangs in the firmware never prints anything; fail sooner.
    let vm = server
        .vm()
        .bios_disk_io(true)
        .timeout(std::time::Duration::from_secs(60));
    let out = server.run_guest(&vm, image, &script)?;
    ensure!(
        out.console.lines().any(|l| l == "BIOS-PROBE-OK"),
        "script did not finish\n{}",
        out.console
    );
    eprintln!("firmware_disk_io_then_linux: guest ran {:?}", out.elapsed);
    Ok(())
}

/// The server dies (kill -9) while the guest reads and writes with several
/// requests in flight, and a new one takes its place on the same socket:
/// with a pool, a fresh strata-host on an empty flash. QEMU reconnects
/// (`reconnect=1`), the guest's I/O carries on without an error (the
/// requests in flight at the kill are sent again to the new server), and
/// everything the guest wrote reads back byte for byte.
#[test]
fn guest_io_carries_on_across_a_host_kill_9() -> Result<()> {
    const CUE: &str = "REPLACE-THE-HOST-NOW";
    let size = 64 * MIB;
    let image = image()?;
    let mut server = Server::start_from_env(&[DiskSpec::new("survivor", size)])?;
    let serial = server.kind().expected_serial("survivor");
    // 16 MiB before the cue, flushed (on a writeback vdisk only a FLUSH
    // makes writes durable; without it a kill may rightly lose the last of
    // them). Then, at once: four writers, each writing its
    // own quarter of another 16 MiB four times over, and two readers
    // checking the first 16 MiB twice, all with direct I/O. So when the
    // server dies there are reads and writes in flight together, finishing
    // out of order, and the replacement must take up exactly the ones not
    // yet completed.
    let script = format!(
        r#"set -e
{check}
head -c 16777216 /dev/urandom >/tmp/before
head -c 16777216 /dev/urandom >/tmp/during
dd if=/tmp/before of=/dev/vda bs=64k oflag=direct conv=fsync 2>/dev/null
echo {CUE}
pids=""
for w in 0 1 2 3; do
    (for pass in 1 2 3 4; do
        dd if=/tmp/during of=/dev/vda bs=64k skip=$((w * 64)) seek=$((256 + w * 64)) count=64 oflag=direct 2>/dev/null
    done) &
    pids="$pids $!"
done
for r in 0 1; do
    (for pass in 1 2; do
        dd if=/dev/vda of=/tmp/check.$r bs=64k count=256 iflag=direct 2>/dev/null
        cmp /tmp/check.$r /tmp/before
    done) &
    pids="$pids $!"
done
for pid in $pids; do
    wait $pid
done
dd if=/dev/vda of=/tmp/before.back bs=64k count=256 iflag=direct 2>/dev/null
dd if=/dev/vda of=/tmp/during.back bs=64k skip=256 count=256 iflag=direct 2>/dev/null
cmp /tmp/before /tmp/before.back
cmp /tmp/during /tmp/during.back
echo CARRIED-ON-OK
"#,
        check = check_disk("vda", &serial, size)
    );
    let vm = server.vm().reconnect(true);
    let mut replacements = 0;
    let outcome = vm.run_with_cue(
        image,
        &script,
        Cue {
            line: CUE,
            action: &mut || {
                replacements += 1;
                server.replace_host()
            },
        },
    );
    let out = outcome
        .and_then(GuestOutcome::require_pass)
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", server.log()))?;
    server.check_running()?;
    ensure!(
        replacements == 1,
        "the host was replaced {replacements} times"
    );
    ensure!(
        out.console.lines().any(|l| l == "CARRIED-ON-OK"),
        "script did not finish\n{}",
        out.console
    );
    eprintln!(
        "guest_io_carries_on_across_a_host_kill_9: guest ran {:?}",
        out.elapsed
    );
    Ok(())
}
