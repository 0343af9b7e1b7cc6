//! The job supervisor: `fetchml supervise --parent PID --grace SECS -- argv...`.
//!
//! The worker does not start a job's program directly but through this small
//! supervisor, which leads the job's process group. It asks the kernel to send
//! it SIGTERM when the worker dies (parent-death signal), and then stops the
//! whole group: SIGTERM, and SIGKILL after the grace period. So a worker killed
//! with `kill -9` does not leave its jobs running while the job's next attempt
//! starts elsewhere: a job runs at most once at a time.
//!
//! Exit status: the program's exit code; if the program was killed by a signal,
//! the supervisor dies of the same signal (SIGTERM is reported as exit 143, the
//! shell convention, because the supervisor itself handles SIGTERM).

use nix::sys::signal::{Signal, killpg, raise};
use nix::unistd::{Pid, getpgrp, getppid};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;
use std::time::Duration;

/// Runs `argv` under supervision; returns the exit code to leave with.
pub fn supervise(parent: u32, grace: Duration, argv: &[String]) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("fetchml supervise: cannot set the parent-death signal: {e}");
        return ExitCode::from(125);
    }
    // The worker may have died before the line above: then nobody would tell us.
    if getppid().as_raw() != parent as i32 {
        return ExitCode::from(125);
    }
    let Some((program, args)) = argv.split_first() else {
        eprintln!("fetchml supervise: no command given");
        return ExitCode::from(125);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fetchml supervise: {e}");
            return ExitCode::from(125);
        }
    };
    runtime.block_on(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("fetchml supervise: cannot handle SIGTERM: {e}");
                return ExitCode::from(125);
            }
        };
        // The child inherits our process group (we lead it; the worker made it).
        let mut child = match tokio::process::Command::new(program).args(args).spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("fetchml: command not found: {program}");
                return ExitCode::from(127);
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("fetchml: permission denied: {program}");
                return ExitCode::from(126);
            }
            Err(e) => {
                eprintln!("fetchml: cannot start {program}: {e}");
                return ExitCode::from(125);
            }
        };
        let status = tokio::select! {
            s = child.wait() => s,
            _ = term.recv() => {
                // Our worker is gone (or asks us to stop): stop the whole group.
                let group = getpgrp();
                let _ = killpg(group, Signal::SIGTERM);
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                child.wait().await
            }
        };
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                (None, Some(15)) => ExitCode::from(143),
                (None, Some(sig)) => {
                    if let Ok(sig) = Signal::try_from(sig) {
                        let _ = raise(sig);
                    }
                    ExitCode::from(u8::try_from(128 + sig).unwrap_or(1))
                }
                (None, None) => ExitCode::from(1),
            },
            Err(e) => {
                eprintln!("fetchml supervise: wait failed: {e}");
                ExitCode::from(125)
            }
        }
    })
}

/// Whether `pid` leads a process group that still has members.
pub fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}
