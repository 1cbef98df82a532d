//! The guest's pieces and QEMU's command line: the static workload binary
//! (examples/vm_guest), the kernel and initramfs (tests/vm/prepare.sh, cached under
//! target/vm-cache), the accelerator (KVM only where a probe boot works), and the QEMU
//! command that README.md's "Use with QEMU" shows.

#![allow(dead_code)] // tests/vm.rs and tests/vm_bench.rs each use some

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A QEMU: its binary, the arguments it always needs, its version.
pub struct Qemu {
    pub bin: PathBuf,
    /// Firmware directories (`-L`) and such, before every other argument.
    pub args: Vec<String>,
    /// First line of `--version`.
    pub version: String,
}

impl Qemu {
    /// The system's QEMU (bookworm: 7.2), from PATH.
    pub fn system() -> Qemu {
        Qemu::new(PathBuf::from("qemu-system-x86_64"), Vec::new())
    }

    /// QEMU 10 from bookworm-backports, unpacked into `cache` by tests/vm/qemu10.sh; its own
    /// firmware directories first, and no audio (it would try the system QEMU's audio modules).
    pub fn backports(cache: &Path) -> Qemu {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/qemu10.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(cache)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/vm/qemu10.sh");
        assert!(out.status.success(), "tests/vm/qemu10.sh failed: {}", out.status);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = stdout.lines().find_map(|l| l.strip_prefix("QEMU=")).expect("qemu10.sh prints QEMU=");
        let mut args = Vec::new();
        for d in stdout.lines().filter_map(|l| l.strip_prefix("DATA=")) {
            args.extend(["-L".to_string(), d.to_string()]);
        }
        args.extend(["-audio".to_string(), "none".to_string()]);
        Qemu::new(PathBuf::from(bin), args)
    }

    fn new(bin: PathBuf, args: Vec<String>) -> Qemu {
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{bin:?} --version: {e} (scripts/setup.sh installs qemu-system-x86)"));
        let version = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("?").to_string();
        Qemu { bin, args, version }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(&self.args);
        c
    }
}

/// A child process that is killed and reaped when dropped, so a failing test leaves no QEMU or
/// daemon behind.
pub struct Reap(pub Child);

impl std::ops::Deref for Reap {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reap {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What the guest boots.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The cargo target directory this test was built in (…/target/<tuple>/release/deps/vm-… →
/// …/target; .cargo/config.toml names the target, so outputs are under its tuple).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.ancestors().nth(3).expect("the test binary lives in <target>/<profile>/deps");
    if dir.file_name().is_some_and(|n| n == "x86_64-unknown-linux-gnu") {
        return dir.parent().expect("a target directory").to_path_buf();
    }
    dir.to_path_buf()
}

/// Builds examples/vm_guest static (glibc's static build: crt-static) and returns its path.
pub fn build_guest(target: &Path) -> PathBuf {
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let t0 = Instant::now();
    let status = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--target", triple, "--example", "vm_guest"])
        .status()
        .expect("run cargo build --example vm_guest");
    assert!(status.success(), "building the guest workload failed: {status}");
    eprintln!("vm: guest workload built in {:.1} s", t0.elapsed().as_secs_f64());
    target.join(triple).join("release/examples/vm_guest")
}

/// The guest's kernel: Debian's cloud kernel of one suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// bookworm's 6.1: its virtio-fs driver uses one request queue, whatever the device has.
    Bookworm,
    /// bookworm-backports' 6.12: its driver spreads requests over the device's request queues,
    /// one per group of vCPUs.
    Backports,
}

impl Kernel {
    fn suite(self) -> &'static str {
        match self {
            Kernel::Bookworm => "bookworm",
            Kernel::Backports => "bookworm-backports",
        }
    }
}

/// The guest's kernel, vCPUs and virtio-fs request queues (the backend must offer that many:
/// QEMU refuses to start otherwise).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub kernel: Kernel,
    pub vcpus: u32,
    pub request_queues: u32,
}

impl Shape {
    /// bookworm's kernel, 1 vCPU, 1 request queue; `PHOENIXFS_VM_KERNEL=backports` and
    /// `PHOENIXFS_VM_SMP=N` change the first two.
    pub fn from_env() -> Shape {
        let kernel = match std::env::var("PHOENIXFS_VM_KERNEL").as_deref() {
            Ok("backports") => Kernel::Backports,
            _ => Kernel::Bookworm,
        };
        let vcpus = std::env::var("PHOENIXFS_VM_SMP").ok().and_then(|v| v.parse().ok()).filter(|&n| n >= 1);
        Shape { kernel, vcpus: vcpus.unwrap_or(1), request_queues: 1 }
    }
}

/// Runs tests/vm/prepare.sh: `kernel` (downloaded once into `cache`) and a fresh initramfs.
pub fn prepare(cache: &Path, guest_bin: &Path, out_dir: &Path, kernel: Kernel) -> Guest {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm");
    let initrd = out_dir.join("initrd.cpio");
    let out = Command::new("bash")
        .arg(dir.join("prepare.sh"))
        .args([cache, guest_bin, &dir.join("init"), &initrd])
        .arg(kernel.suite())
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/vm/prepare.sh");
    assert!(out.status.success(), "tests/vm/prepare.sh failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kernel = stdout.lines().find_map(|l| l.strip_prefix("KERNEL=")).expect("prepare.sh prints KERNEL=");
    Guest { kernel: PathBuf::from(kernel), initrd }
}

/// No network, no display, the console on stdio, no monitor, and no reboot: a guest that powers
/// off ends QEMU.
const HEADLESS: [&str; 11] =
    ["-nic", "none", "-display", "none", "-vga", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"];

/// The virtio-fs device with `request_queues` request queues; `PHOENIXFS_VM_QUEUE_SIZE` sets its
/// queue size (QEMU's default: 128), `PHOENIXFS_VM_INDIRECT_DESC=off` keeps the driver from
/// negotiating indirect descriptors (QEMU's `indirect_desc` device property) whatever the
/// backend offers.
fn device(request_queues: u32) -> String {
    let mut d = format!("vhost-user-fs-pci,chardev=vfs,tag=share,num-request-queues={request_queues}");
    if let Ok(n) = std::env::var("PHOENIXFS_VM_QUEUE_SIZE") {
        d += &format!(",queue-size={n}");
    }
    if std::env::var("PHOENIXFS_VM_INDIRECT_DESC").is_ok_and(|v| v == "off") {
        d += ",indirect_desc=off";
    }
    d
}

/// QEMU's command line for `guest` on the vhost-user socket `socket` (the guest mounts tag
/// `share`), with `shape`'s vCPUs and request queues; `append` is added to the kernel command
/// line. The console is QEMU's stdout.
pub fn command(q: &Qemu, guest: &Guest, accel: &str, socket: &Path, append: &str, shape: &Shape) -> Command {
    let mut c = q.command();
    c.args(["-accel", accel, "-m", "512M", "-smp", &shape.vcpus.to_string()])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args(["-append", &format!("console=ttyS0 panic=-1 quiet {append}")])
        .arg("-chardev")
        .arg(format!("socket,id=vfs,path={}", socket.display()))
        .args(["-device", &device(shape.request_queues)])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem"])
        .args(HEADLESS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    c
}

/// Calls `each` with every line `from` gives, without its line end (\n or the serial console's
/// \r\n); bytes that are not UTF-8 are replaced, never a reason to stop reading: a reader that
/// stopped would close its end of the pipe under a QEMU still writing to it.
fn each_line(from: impl std::io::Read, mut each: impl FnMut(String)) {
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => each(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The guest's console, line by line, from a reader thread (the channel closes when QEMU's
/// stdout does; the thread drains the pipe after the receiver is gone).
pub fn console(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        each_line(out, |line| {
            let _ = tx.send(line);
        })
    });
    rx
}

/// "kvm" if `PHOENIXFS_VM_ACCEL` says so or a probe boot with KVM reaches the guest's init
/// within 10 s, else "tcg" (nested KVM here cannot boot a stock kernel: QEMU hangs, or fails
/// setting an MSR with `-cpu host`). The answer is printed with its reason, and kept in
/// `cache` for this QEMU (a later run on the same machine skips the probe).
pub fn accel(q: &Qemu, guest: &Guest, cache: &Path) -> &'static str {
    match std::env::var("PHOENIXFS_VM_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    if std::fs::File::options().read(true).write(true).open("/dev/kvm").is_err() {
        eprintln!("vm: no usable /dev/kvm: TCG (software emulation)");
        return "tcg";
    }
    let name: String = q.version.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    let memo = cache.join(format!("kvm-probe-{name}"));
    let key = format!("{} {}\n", q.bin.display(), q.version);
    if let Ok(s) = std::fs::read_to_string(&memo)
        && let Some(a) = s.strip_prefix(&key)
    {
        let a = if a.trim() == "kvm" { "kvm" } else { "tcg" };
        eprintln!("vm: KVM probe result from {}: {a}", memo.display());
        return a;
    }
    let a = probe_kvm(q, guest);
    let _ = std::fs::write(&memo, format!("{key}{a}\n"));
    a
}

fn probe_kvm(q: &Qemu, guest: &Guest) -> &'static str {
    let t0 = Instant::now();
    let mut c = q.command();
    c.args(["-accel", "kvm", "-m", "256M", "-kernel"])
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet vmg.probe"])
        .args(HEADLESS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(mut child) = c.spawn() else { return "tcg" };
    let rx = console(&mut child);
    let booted = loop {
        let left = Duration::from_secs(10).saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("VM-BOOTED") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    if booted {
        eprintln!("vm: KVM probe boot reached init in {:.1} s: KVM", t0.elapsed().as_secs_f64());
        "kvm"
    } else {
        eprintln!(
            "vm: KVM probe boot did not reach init ({:.1} s; nested KVM may not boot a stock kernel): TCG (software emulation)",
            t0.elapsed().as_secs_f64()
        );
        "tcg"
    }
}

/// The workload built, `kernel` and a fresh initramfs (in the returned temporary directory),
/// and the accelerator for `q`.
pub fn prepare_vm(q: &Qemu, kernel: Kernel) -> (Guest, &'static str, tempfile::TempDir) {
    let target = target_dir();
    let guest_bin = build_guest(&target);
    let tmp = tempfile::Builder::new().prefix("phoenixfs-vm").tempdir().unwrap();
    let guest = prepare(&target.join("vm-cache"), &guest_bin, tmp.path(), kernel);
    let accel = accel(q, &guest, &target.join("vm-cache"));
    (guest, accel, tmp)
}

pub fn wait_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the backend did not create {socket:?} within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Collects a child's stderr lines (the result), echoing each with `prefix`.
pub fn collect_stderr(child: &mut std::process::Child, prefix: &'static str) -> JoinHandle<Vec<String>> {
    let err = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        let mut out = Vec::new();
        each_line(err, |line| {
            eprintln!("{prefix}| {line}");
            out.push(line);
        });
        out
    })
}
