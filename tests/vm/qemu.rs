//! The guest's pieces and QEMU's command line: the static workload binary
//! (examples/vm_guest), the kernel and initramfs (tests/vm/prepare.sh, cached under
//! target/vm-cache), the accelerator (KVM only where a probe boot works), and the QEMU
//! command that README.md's "Use with QEMU" shows.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// The QEMU to run: `PHOENIXFS_VM_QEMU` (default `qemu-system-x86_64` from PATH), with
/// `PHOENIXFS_VM_QEMU_LIB` as LD_LIBRARY_PATH (a QEMU unpacked beside the system's).
pub struct Qemu {
    pub bin: PathBuf,
    pub lib: Option<PathBuf>,
    /// First line of `--version`.
    pub version: String,
}

impl Qemu {
    pub fn from_env() -> Qemu {
        let bin = PathBuf::from(std::env::var("PHOENIXFS_VM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()));
        let lib = std::env::var_os("PHOENIXFS_VM_QEMU_LIB").map(PathBuf::from);
        let mut q = Qemu { bin, lib, version: String::new() };
        let out = q
            .command()
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{:?} --version: {e} (scripts/setup.sh installs qemu-system-x86)", q.bin));
        q.version = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("?").to_string();
        q
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        if let Some(lib) = &self.lib {
            c.env("LD_LIBRARY_PATH", lib);
        }
        c
    }
}

/// What the guest boots.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The cargo target directory this test was built in (…/target/release/deps/vm-… → …/target).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("the test binary lives in <target>/<profile>/deps").to_path_buf()
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

/// Runs tests/vm/prepare.sh: the kernel (downloaded once into `cache`) and a fresh initramfs.
pub fn prepare(cache: &Path, guest_bin: &Path, out_dir: &Path) -> Guest {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm");
    let initrd = out_dir.join("initrd.cpio");
    let out = Command::new("bash")
        .arg(dir.join("prepare.sh"))
        .args([cache, guest_bin, &dir.join("init"), &initrd])
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/vm/prepare.sh");
    assert!(out.status.success(), "tests/vm/prepare.sh failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kernel = stdout.lines().find_map(|l| l.strip_prefix("KERNEL=")).expect("prepare.sh prints KERNEL=");
    Guest { kernel: PathBuf::from(kernel), initrd }
}

/// QEMU's command line for `guest` on the vhost-user socket `socket` (the guest mounts tag
/// `share`); `append` is added to the kernel command line. The console is QEMU's stdout.
pub fn command(q: &Qemu, guest: &Guest, accel: &str, socket: &Path, append: &str) -> Command {
    let mut c = q.command();
    c.args(["-accel", accel, "-m", "512M", "-smp", "1"])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args(["-append", &format!("console=ttyS0 panic=-1 quiet {append}")])
        .arg("-chardev")
        .arg(format!("socket,id=vfs,path={}", socket.display()))
        .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=share"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem"])
        .args(["-display", "none", "-vga", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    c
}

/// The guest's console, line by line, from a reader thread (the channel closes when QEMU's
/// stdout does).
pub fn console(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // The serial console ends lines with \r\n.
            if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
                break;
            }
        }
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
    let memo = cache.join("kvm-probe");
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
        .args(["-display", "none", "-vga", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"])
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
