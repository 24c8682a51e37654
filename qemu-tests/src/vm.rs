//! One QEMU run of the test guest.

use crate::{CpioWriter, GuestImage};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::hash_map::RandomState;
use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The guest's init prints `RESULT_MARKER <token> rc=<code>` on the serial
/// console when the test script has finished.
pub const RESULT_MARKER: &str = "STRATA-GUEST-RESULT";

/// How often a run with a [`Cue`] looks at the console.
const CUE_POLL: Duration = Duration::from_millis(50);

/// Guests run one at a time per process: the test machines have few cores and
/// TCG is CPU-bound, so parallel guests would only make every run slower and
/// the deadlines less meaningful.
static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A vhost-user-blk disk attached to the guest.
#[derive(Debug, Clone)]
pub struct VmDisk {
    /// The server's unix socket.
    pub socket: PathBuf,
    /// `num-queues` for the `vhost-user-blk-pci` device.
    pub queues: u16,
}

/// Settings for a guest run; [`Vm::run`] boots it.
#[derive(Debug, Clone)]
pub struct Vm {
    cpus: u32,
    memory_mib: u32,
    timeout: Duration,
    accel: String,
    bios_disk_io: bool,
    reconnect: bool,
    disks: Vec<VmDisk>,
}

/// Something to do on the host while the guest runs, once the guest prints
/// a line: see [`Vm::run_with_cue`].
pub struct Cue<'a> {
    /// The whole console line that triggers it.
    pub line: &'a str,
    /// What to do; an error ends the run (the guest is killed).
    pub action: &'a mut dyn FnMut() -> Result<()>,
}

/// What a finished guest run produced.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    /// The serial console, with `\r` removed.
    pub console: String,
    /// QEMU's own stderr (warnings, vhost-user errors).
    pub qemu_stderr: String,
    /// Exit code of the test script (0 = pass). The init uses 124-126 for its
    /// own failures: no disks, failed `insmod`, missing script.
    pub exit_code: i32,
    /// Wall time from starting QEMU to its exit.
    pub elapsed: Duration,
}

impl GuestOutcome {
    /// Whether the test script exited with 0.
    pub fn passed(&self) -> bool {
        self.exit_code == 0
    }

    /// `Ok(self)` if the script passed, otherwise an error carrying the
    /// console log.
    pub fn require_pass(self) -> Result<Self> {
        if self.passed() {
            return Ok(self);
        }
        bail!(
            "guest test script failed with exit code {}\n{}",
            self.exit_code,
            format_logs(&self.console, &self.qemu_stderr)
        )
    }
}

impl Default for Vm {
    fn default() -> Self {
        Self::new()
    }
}

impl Vm {
    /// One vCPU, 512 MiB, no disks, a 120 s deadline, TCG acceleration, no
    /// disk I/O by the firmware.
    ///
    /// TCG because `/dev/kvm` on the project's machines is a nested
    /// "kvm-pvm" module under which stock kernels hang. Set
    /// `STRATA_QEMU_ACCEL=kvm` to use KVM where it is known to work.
    pub fn new() -> Self {
        Self {
            cpus: 1,
            memory_mib: 512,
            timeout: Duration::from_secs(120),
            accel: std::env::var("STRATA_QEMU_ACCEL").unwrap_or_else(|_| "tcg".to_string()),
            bios_disk_io: false,
            reconnect: false,
            disks: Vec::new(),
        }
    }

    /// Sets the number of vCPUs (`-smp`).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Sets guest memory in MiB (shared memfd, as vhost-user needs).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets the deadline for the whole run, boot included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the firmware does I/O on the disks before Linux runs.
    ///
    /// Off by default: the kernel gets `edd=off`, so the only driver that
    /// touches the disks is Linux's virtio-blk. On, the kernel's real-mode
    /// setup code asks the BIOS about every disk (EDD probing), which reads
    /// sector 0 of each through SeaBIOS's own virtio-blk driver: a different
    /// driver (no event index, requests in low memory, set up before the
    /// memory map settles) that real VMs booting from the disk also use.
    pub fn bios_disk_io(mut self, on: bool) -> Self {
        self.bios_disk_io = on;
        self
    }

    /// Whether QEMU reconnects to a disk's socket when its server goes
    /// away (`reconnect=1` on the chardev), as a VM that should outlive a
    /// strata-host restart is started.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// Attaches a vhost-user-blk disk; the guest sees disks as `vda`, `vdb`,
    /// ... in the order they were added.
    pub fn disk(mut self, socket: impl Into<PathBuf>, queues: u16) -> Self {
        self.disks.push(VmDisk {
            socket: socket.into(),
            queues,
        });
        self
    }

    /// The QEMU command line (without the binary) for the given kernel and
    /// initrd.
    pub fn qemu_args(&self, kernel: &Path, initrd: &Path) -> Vec<String> {
        let mem = format!("{}M", self.memory_mib);
        // `no_timer_check`: at boot Linux counts timer ticks over a short
        // busy wait to decide whether the IO-APIC routes the timer; under
        // TCG on a loaded host the ticks arrive late, and the check ends
        // in "IO-APIC + timer doesn't work!" and a panic before any test
        // code runs.
        let mut cmdline = "console=ttyS0 panic=-1 quiet no_timer_check".to_string();
        if !self.bios_disk_io {
            cmdline.push_str(" edd=off");
        }
        let mut args: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-machine",
            "pc",
            "-accel",
            &self.accel,
            "-cpu",
            "max",
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &mem,
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-numa",
            "node,memdev=mem",
            "-serial",
            "stdio",
            "-kernel",
            &kernel.to_string_lossy(),
            "-initrd",
            &initrd.to_string_lossy(),
            "-append",
            &cmdline,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (i, d) in self.disks.iter().enumerate() {
            args.push("-chardev".into());
            let reconnect = if self.reconnect { ",reconnect=1" } else { "" };
            args.push(format!(
                "socket,id=d{i},path={}{reconnect}",
                d.socket.display()
            ));
            args.push("-device".into());
            args.push(format!(
                "vhost-user-blk-pci,chardev=d{i},num-queues={}",
                d.queues
            ));
        }
        args
    }

    /// Boots the guest, runs `script` (a busybox `sh` script; start it with
    /// `set -e` to fail on the first failing command) and returns once QEMU
    /// has exited.
    ///
    /// `Err` means the run itself failed: QEMU missing or crashing, the
    /// deadline passed (the guest is killed), or no result marker. The
    /// script's exit code is in [`GuestOutcome::exit_code`]; use
    /// [`GuestOutcome::require_pass`] to turn a non-zero code into an error.
    pub fn run(&self, image: &GuestImage, script: &str) -> Result<GuestOutcome> {
        self.run_watching(image, script, None)
    }

    /// [`Vm::run`], doing `cue.action` on the host as soon as the guest
    /// prints `cue.line` (the guest carries on meanwhile). It is an error
    /// if the guest finishes before the action ran.
    pub fn run_with_cue(
        &self,
        image: &GuestImage,
        script: &str,
        cue: Cue<'_>,
    ) -> Result<GuestOutcome> {
        self.run_watching(image, script, Some(cue))
    }

    fn run_watching(
        &self,
        image: &GuestImage,
        script: &str,
        mut cue: Option<Cue<'_>>,
    ) -> Result<GuestOutcome> {
        let qemu = crate::find_program(
            "STRATA_QEMU_BIN",
            "qemu-system-x86_64",
            "install it with `apt-get install -y qemu-system-x86`",
        )?;
        let _turn = ONE_GUEST_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = crate::scratch_dir("vm-")?;
        let token = new_token();
        let initrd = dir.path().join("initrd.cpio");
        write_initrd(image, &initrd, script, &token, self.disks.len())?;

        let args = self.qemu_args(&image.kernel, &initrd);
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut child = Command::new(&qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", qemu.display()))?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let (eof_tx, eof_rx) = mpsc::channel();
        let stdout_thread = child.stdout.take().map(|out| {
            let console = Arc::clone(&console);
            let echo = std::env::var_os("STRATA_QEMU_TESTS_ECHO").is_some_and(|v| v == "1");
            thread::spawn(move || {
                pump(out, &console, echo);
                // The receiver may be gone if the run already gave up.
                let _ = eof_tx.send(());
            })
        });
        let stderr_thread = child.stderr.take().map(|mut err| {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf);
                buf
            })
        });

        // QEMU's stdout is the serial console; it closes when QEMU exits.
        // Until then, look for the cue's line now and then.
        let mut cue_failed = None;
        let finished = stdout_thread.is_some()
            && loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let wait = if cue.is_some() {
                    left.min(CUE_POLL)
                } else {
                    left
                };
                match eof_rx.recv_timeout(wait) {
                    Ok(()) => break true,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break false,
                    Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => break false,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                let seen = cue.as_ref().is_some_and(|c| {
                    let bytes = console.lock().unwrap_or_else(|p| p.into_inner());
                    clean_console(&bytes).lines().any(|l| l == c.line)
                });
                if seen {
                    if let Some(c) = cue.take() {
                        if let Err(e) = (c.action)() {
                            cue_failed = Some(e.context(format!("on the cue {:?}", c.line)));
                            break false;
                        }
                    }
                }
            };
        let waited = if finished {
            wait_until(&mut child, deadline)
        } else {
            Ok(None)
        };
        let status = match &waited {
            Ok(Some(status)) => Some(*status),
            _ => {
                // Ignore errors: the process may have exited just now.
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        };
        if let Some(t) = stdout_thread {
            let _ = t.join();
        }
        let qemu_stderr = stderr_thread
            .and_then(|t| t.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let elapsed = started.elapsed();
        let console = {
            let bytes = console.lock().unwrap_or_else(|p| p.into_inner());
            clean_console(&bytes)
        };

        if let Some(e) = cue_failed {
            return Err(e.context(format_logs(&console, &qemu_stderr)));
        }
        if let Some(c) = cue {
            bail!(
                "the guest finished before the action on its cue {:?} ran\n{}",
                c.line,
                format_logs(&console, &qemu_stderr)
            );
        }
        if let Err(e) = waited {
            return Err(e.context(format_logs(&console, &qemu_stderr)));
        }
        let Some(status) = status else {
            bail!(
                "guest did not finish within {:?} and was killed\n{}",
                self.timeout,
                format_logs(&console, &qemu_stderr)
            );
        };
        match parse_result(&console, &token) {
            Some(exit_code) => Ok(GuestOutcome {
                console,
                qemu_stderr,
                exit_code,
                elapsed,
            }),
            None => Err(anyhow!(
                "QEMU exited ({status}) after {elapsed:?} without a guest result marker\n\
                 command: {} {}\n{}",
                qemu.display(),
                args.join(" "),
                format_logs(&console, &qemu_stderr)
            )),
        }
    }
}

/// Copies the guest console into `console` until EOF, optionally echoing it.
fn pump(mut out: impl Read, console: &Mutex<Vec<u8>>, echo: bool) {
    let mut buf = [0u8; 8192];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if echo {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                console
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Waits for `child` to exit, giving up at `deadline` (returns `None`).
/// Called once QEMU has closed its stdout, i.e. when it is exiting.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Writes the base initramfs followed by a small archive with the test.
fn write_initrd(
    image: &GuestImage,
    initrd: &Path,
    script: &str,
    token: &str,
    disks: usize,
) -> Result<()> {
    std::fs::copy(&image.initramfs, initrd).with_context(|| {
        format!(
            "cannot copy {} to {}",
            image.initramfs.display(),
            initrd.display()
        )
    })?;
    let mut cpio = CpioWriter::new();
    cpio.dir("strata", 0o755)?
        .file("strata/test.sh", 0o755, script.as_bytes())?
        .file("strata/token", 0o644, format!("{token}\n").as_bytes())?
        .file("strata/disks", 0o644, format!("{disks}\n").as_bytes())?;
    let archive = cpio.finish()?;
    let mut f = OpenOptions::new()
        .append(true)
        .open(initrd)
        .with_context(|| format!("cannot open {}", initrd.display()))?;
    let len = f.metadata()?.len();
    if len % 4 != 0 {
        bail!(
            "{} is {len} bytes, not a multiple of 4",
            image.initramfs.display()
        );
    }
    f.write_all(&archive)
        .and_then(|()| f.sync_data())
        .with_context(|| format!("cannot write {}", initrd.display()))?;
    Ok(())
}

/// A token unique to this run, so that the result marker cannot come from an
/// earlier run or from text the test printed itself.
fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    format!("{:016x}", h.finish())
}

/// Removes carriage returns (the serial console ends lines with `\r\n`).
fn clean_console(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

/// Finds `RESULT_MARKER <token> rc=<n>` at the start of a line.
fn parse_result(console: &str, token: &str) -> Option<i32> {
    let prefix = format!("{RESULT_MARKER} {token} rc=");
    console.lines().find_map(|line| {
        let rest = line.strip_prefix(&prefix)?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() || rest.len() != digits.len() {
            return None;
        }
        digits.parse().ok()
    })
}

fn format_logs(console: &str, qemu_stderr: &str) -> String {
    let mut s = format!("----- guest console -----\n{console}\n----- end of console -----");
    if !qemu_stderr.trim().is_empty() {
        s.push_str(&format!(
            "\n----- QEMU stderr -----\n{qemu_stderr}\n----- end of QEMU stderr -----"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_marker_needs_token_and_whole_line() {
        let c = "boot\nSTRATA-GUEST-RESULT abc rc=0\n";
        assert_eq!(parse_result(c, "abc"), Some(0));
        assert_eq!(parse_result(c, "abd"), None);
        assert_eq!(
            parse_result("STRATA-GUEST-RESULT abc rc=3\n", "abc"),
            Some(3)
        );
        assert_eq!(
            parse_result("x STRATA-GUEST-RESULT abc rc=0\n", "abc"),
            None
        );
        assert_eq!(
            parse_result("STRATA-GUEST-RESULT abc rc=0[ 1.0] oops\n", "abc"),
            None
        );
        assert_eq!(parse_result("STRATA-GUEST-RESULT abc rc=\n", "abc"), None);
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn qemu_args_have_disks() {
        let vm = Vm::new().cpus(2).disk("/s0", 1).disk("/s1", 2);
        let a = vm.qemu_args(Path::new("/k"), Path::new("/i")).join(" ");
        assert!(a.contains("-chardev socket,id=d0,path=/s0"));
        assert!(a.contains("-device vhost-user-blk-pci,chardev=d1,num-queues=2"));
        assert!(a.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(a.contains("-smp 2"));
        assert!(a.contains(" edd=off"));
        assert!(a.contains(" no_timer_check"));
        let b = vm
            .bios_disk_io(true)
            .qemu_args(Path::new("/k"), Path::new("/i"));
        assert!(!b.join(" ").contains("edd=off"));
    }
}
