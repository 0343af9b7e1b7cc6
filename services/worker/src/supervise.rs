//! The job supervisor: `fetchml supervise --parent PID --grace SECS -- argv...`.
//!
//! The worker does not start a job's program directly but through this small
//! supervisor, which leads the job's process group. It asks the kernel to send
//! it SIGTERM when the worker dies (parent-death signal), and then stops the
//! whole group: SIGTERM, and SIGKILL after the grace period. So a worker killed
//! with `kill -9` does not leave its jobs running while the job's next attempt
//! starts elsewhere: a job runs at most once at a time.
//!
//! What the program starts outside its group (a daemon: `setsid`, a double
//! fork) is stopped too: the supervisor is a child subreaper, so such a process
//! becomes its child when its own parent exits, and every child left when the
//! program ends is killed. Otherwise it would outlive the attempt, and hold the
//! job's output pipes open, so the worker would wait for their end forever.
//!
//! Exit status: the program's exit code; if the program was killed by a signal,
//! the supervisor dies of the same signal (SIGTERM is reported as exit 143, the
//! shell convention, because the supervisor itself handles SIGTERM).

use nix::sys::signal::{Signal, kill, killpg, raise};
use nix::sys::wait::waitpid;
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
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("fetchml supervise: cannot become a child subreaper: {e}");
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
        kill_the_rest();
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

/// Kills and reaps every child this supervisor still has: what the program
/// left behind, in its group or outside it. A killed child's own children come
/// to this subreaper in turn, so it goes round until none is left (bounded: a
/// fork bomb cannot keep it here).
fn kill_the_rest() {
    let me = std::process::id();
    for _ in 0..100 {
        let children = children_of(me);
        if children.is_empty() {
            return;
        }
        for &pid in &children {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for pid in children {
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid ...`: the command may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    .is_some_and(|ppid| ppid == parent)
            })
        })
        .collect()
}

/// Whether `pid` leads a process group that still has members.
pub fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}
