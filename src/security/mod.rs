//! Confinement: the sandbox, seccomp filters and capabilities (DESIGN §8; docs/design.md
//! "Security"). The supervisor enters the sandbox and confines itself after start-up (the
//! mount, the socket and the region exist), before serving; each worker narrows further first
//! thing, before recovery; the holder (holder.rs) keeps only what its three duties need.

pub mod caps;
pub mod sandbox;
pub mod seccomp;
#[cfg(target_arch = "x86_64")]
mod syscall_names_x86_64;
pub mod userns;

use std::sync::atomic::AtomicU32;

use crate::cli::SeccompAction;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Caps(#[from] caps::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
}

/// How the daemon confines itself, chosen at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub seccomp: SeccompAction,
    /// A worker's capabilities (virtiofsd's set changed by `--modcaps`).
    pub worker_caps: caps::Caps,
    /// FUSE passthrough may be used (`--fuse-passthrough` auto or always, over /dev/fuse): a
    /// worker keeps CAP_SYS_ADMIN *permitted*, not effective, and a serving thread raises it for
    /// the one FUSE_DEV_IOC_BACKING_OPEN/CLOSE ioctl that needs it (fs/creds.rs `BackingAdmin`).
    pub backing_admin: bool,
}

/// The supervisor, after start-up and before serving (`serves_itself`: `--recovery off`), in
/// two steps around the zygote's clone (zygote.rs): its capabilities first (`policy.worker_caps`
/// becomes what the workers can really have: what this process had); then, once the zygote
/// exists, `install_supervisor_filter`.
pub fn restrict_supervisor_caps(policy: &mut Policy, serves_itself: bool) -> Result<caps::Caps, Error> {
    let (effective, worker) = caps::restrict_supervisor(policy.worker_caps, serves_itself)?;
    policy.worker_caps = worker;
    Ok(effective)
}

/// The supervisor's own filter (`SUPERVISOR`; with `--recovery off`, `WORKER ∪ SUPERVISOR`).
pub fn install_supervisor_filter(
    policy: &Policy,
    effective: caps::Caps,
    serves_itself: bool,
    violation: &'static AtomicU32,
) -> Result<(), Error> {
    let role = if serves_itself { seccomp::Role::Alone } else { seccomp::Role::Supervisor };
    seccomp::install(role, policy.seccomp, violation)?;
    tracing::info!(seccomp = ?policy.seccomp, capabilities = ?effective.names(), "confined");
    Ok(())
}

/// A worker, first thing after its clone (single-threaded): its capabilities, and `WORKER`
/// over the zygote's wider filter (after this it can install no other: `WORKER` refuses
/// seccomp).
pub fn confine_worker(policy: &Policy, violation: &'static AtomicU32) -> Result<(), Error> {
    caps::restrict_worker(policy.worker_caps, policy.backing_admin)?;
    seccomp::install(seccomp::Role::Worker, policy.seccomp, violation)?;
    Ok(())
}

/// The zygote (zygote.rs), first thing: its filter (`WORKER ∪ SUPERVISOR ∪ UPGRADE`: what every
/// process a live upgrade's new binary makes needs), which every worker it clones inherits and
/// narrows. A zygote of a binary that a live upgrade started is under that filter already
/// (inherited through the exec) and installs none again, so filters do not pile up upgrade
/// after upgrade. Its capabilities stay as the supervisor left them (permitted: the worker's
/// set), so each worker can take the worker's set as its own.
pub fn confine_zygote(policy: &Policy, violation: &'static AtomicU32) -> Result<(), Error> {
    if crate::sys::process::has_seccomp_filter() {
        seccomp::install_handler(policy.seccomp, violation)?;
        return Ok(());
    }
    seccomp::install(seccomp::Role::Zygote, policy.seccomp, violation)?;
    Ok(())
}

/// The holder, after its fd sweep: the supervisor's capability (sys_admin, for the unmount)
/// and nothing else, and its own short list of system calls.
pub fn confine_holder(mode: SeccompAction, violation: &'static AtomicU32) -> Result<(), Error> {
    caps::restrict_holder()?;
    seccomp::install(seccomp::Role::Holder, mode, violation)?;
    Ok(())
}
