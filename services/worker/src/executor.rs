//! Executors run one attempt of a job. They sit behind one trait so the worker
//! does not care whether a job is a real process or a built-in used by tests and
//! benchmarks.

use crate::secrets::Secrets;
use fetchml_events::JobId;
use fetchml_events::job::{ExecutorKind, FailureClass, JobSpec, Outcome};
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of a job's output.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
}

/// Longest log line kept; the rest is cut (and marked) so one runaway line
/// cannot exceed the stream's message size.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// What an executor is asked to run.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub job_id: JobId,
    pub attempt: u32,
    pub spec: JobSpec,
    /// The directory jobs run in; `spec.working_dir` is relative to it.
    pub job_root: PathBuf,
    pub kill_grace: Duration,
    /// The values of `spec.secrets` on this host: for the process
    /// environment only, and redacted from its output.
    pub secrets: Secrets,
    /// The GPU device ids this attempt was given: the process sees exactly
    /// these (`CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES`), and none if
    /// empty, so two jobs on one box never share a device by accident.
    pub gpus: Vec<String>,
}

impl ExecRequest {
    /// The device variables of the attempt's environment.
    pub fn device_env(&self) -> [(&'static str, String); 2] {
        let list = self.gpus.join(",");
        // `void` is NVIDIA's container toolkit's "no GPU"; an empty
        // CUDA_VISIBLE_DEVICES hides every device from CUDA.
        let nvidia = if list.is_empty() { "void".to_owned() } else { list.clone() };
        [("CUDA_VISIBLE_DEVICES", list), ("NVIDIA_VISIBLE_DEVICES", nvidia)]
    }
}

/// What an executor may use while it runs.
pub struct ExecIo {
    pub logs: mpsc::Sender<LogLine>,
    /// Cancelled when the job is cancelled or the worker must stop at once.
    pub cancel: CancellationToken,
}

pub trait Executor: Send + Sync {
    fn run<'a>(&'a self, req: &'a ExecRequest, io: ExecIo) -> BoxFuture<'a, Outcome>;
}

/// Picks the executor a spec asks for.
pub fn for_spec(kind: ExecutorKind) -> &'static dyn Executor {
    match kind {
        ExecutorKind::Process => &ProcessExecutor,
        ExecutorKind::Noop => &NoopExecutor,
        ExecutorKind::Sleep => &SleepExecutor,
        ExecutorKind::Fail => &FailExecutor,
        ExecutorKind::Podman => &PodmanExecutor,
    }
}

fn failed(class: FailureClass, exit_code: Option<i32>, signal: Option<i32>, reason: impl Into<String>) -> Outcome {
    Outcome::Failed { exit_code, signal, class, reason: reason.into() }
}

/// Succeeds at once.
pub struct NoopExecutor;
impl Executor for NoopExecutor {
    fn run<'a>(&'a self, _req: &'a ExecRequest, _io: ExecIo) -> BoxFuture<'a, Outcome> {
        Box::pin(async { Outcome::Succeeded })
    }
}

/// Sleeps `command[0]` milliseconds (default 1000), honouring cancel. The
/// argument is read by the rule the api checked at submit
/// ([`JobSpec::sleep_ms`]); a job stored before that check with a bad one
/// fails as the job's own fault instead of succeeding at once.
pub struct SleepExecutor;
impl Executor for SleepExecutor {
    fn run<'a>(&'a self, req: &'a ExecRequest, io: ExecIo) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let ms = match req.spec.sleep_ms() {
                Ok(ms) => ms,
                Err(e) => return failed(FailureClass::Code, None, None, e.to_string()),
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Outcome::Succeeded,
                _ = io.cancel.cancelled() => failed(FailureClass::Unknown, None, None, "cancelled"),
            }
        })
    }
}

/// Fails at once with exit code `command[0]` (1-255, default 1; see
/// [`JobSpec::fail_exit_code`]).
pub struct FailExecutor;
impl Executor for FailExecutor {
    fn run<'a>(&'a self, req: &'a ExecRequest, _io: ExecIo) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let code = match req.spec.fail_exit_code() {
                Ok(c) => c,
                Err(e) => return failed(FailureClass::Code, None, None, e.to_string()),
            };
            failed(FailureClass::Code, Some(code), None, format!("exit status {code}"))
        })
    }
}

/// Runs argv as a child process in its own process group, so that cancel and
/// timeout reach every process it started.
pub struct ProcessExecutor;

impl Executor for ProcessExecutor {
    fn run<'a>(&'a self, req: &'a ExecRequest, io: ExecIo) -> BoxFuture<'a, Outcome> {
        Box::pin(run_process(req, io))
    }
}

/// Runs `command` in a container (`podman run --rm --init`), under the same
/// supervision as a process. The container is named after the job and attempt,
/// so that a cancel or timeout can remove it even if the podman client is gone.
pub struct PodmanExecutor;

impl PodmanExecutor {
    fn container_name(req: &ExecRequest) -> String {
        format!("fetchml-{}-{}", req.job_id, req.attempt)
    }

    /// The podman command line for `req`.
    pub fn argv(req: &ExecRequest) -> Vec<String> {
        let spec = &req.spec;
        let mut argv: Vec<String> = ["podman", "run", "--rm", "--init", "--name"].map(String::from).to_vec();
        argv.push(Self::container_name(req));
        for (k, v) in &spec.env {
            argv.push("--env".into());
            argv.push(format!("{k}={v}"));
        }
        // By name only: podman takes the value from its own environment, so
        // a secret never appears on a command line (`ps` shows those).
        for name in req.secrets.names() {
            argv.push("--env".into());
            argv.push(name.to_owned());
        }
        argv.push("--env".into());
        argv.push(format!("FETCHML_JOB_ID={}", req.job_id));
        argv.push("--env".into());
        argv.push(format!("FETCHML_ATTEMPT={}", req.attempt));
        for (k, v) in req.device_env() {
            argv.push("--env".into());
            argv.push(format!("{k}={v}"));
        }
        // The container sees the attempt's GPUs (CDI names) and no others.
        for g in &req.gpus {
            argv.push(format!("--device=nvidia.com/gpu={g}"));
        }
        if let Some(c) = spec.resources.cpus {
            argv.push(format!("--cpus={c}"));
        }
        if let Some(m) = spec.resources.memory_mb {
            argv.push(format!("--memory={m}m"));
        }
        argv.push(spec.image.clone().unwrap_or_default());
        if spec.shell {
            argv.extend(["/bin/sh".into(), "-c".into(), spec.command.join(" ")]);
        } else {
            argv.extend(spec.command.iter().cloned());
        }
        argv
    }
}

impl Executor for PodmanExecutor {
    fn run<'a>(&'a self, req: &'a ExecRequest, io: ExecIo) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let mut inner = req.clone();
            inner.spec.command = Self::argv(req);
            inner.spec.shell = false;
            inner.spec.env.clear();
            let outcome = run_process(&inner, io).await;
            if outcome != Outcome::Succeeded {
                // Stopping the client does not always stop the container.
                let _ = Command::new("podman")
                    .args(["rm", "--force", "--ignore", &Self::container_name(req)])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
            outcome
        })
    }
}

/// Why a job's working directory could not be prepared. Whose fault it is
/// decides the failure class, and so whether the attempt is retried.
#[derive(Debug, thiserror::Error)]
pub enum WorkingDirError {
    /// The worker's own job root is unusable: the machine's problem.
    #[error("job root {root}: {source}")]
    Root { root: PathBuf, source: std::io::Error },
    /// The job's `working_dir` leads out of the job root (through a symlink;
    /// `..` and absolute paths are refused at submit): the job's own doing,
    /// and the same on every worker, so retrying cannot help.
    #[error("working dir {rel} leaves the job root")]
    Escapes { rel: String },
    /// A part of `working_dir` exists and is not a directory.
    #[error("working dir {rel}: {part} is not a directory")]
    NotADirectory { rel: String, part: String },
    /// Creating or resolving a part failed for another reason.
    #[error("working dir {rel}: {source}")]
    Io { rel: String, source: std::io::Error },
}

impl WorkingDirError {
    pub fn class(&self) -> FailureClass {
        match self {
            WorkingDirError::Escapes { .. } | WorkingDirError::NotADirectory { .. } => FailureClass::Code,
            WorkingDirError::Root { .. } | WorkingDirError::Io { .. } => FailureClass::Infrastructure,
        }
    }
}

/// Resolves the working directory inside the job root, creating what is
/// missing one part at a time. Each part that exists is resolved (symlinks
/// followed) and must still be inside the root before anything is created
/// under it, so a symlink out of the root is refused and never written
/// through. (A job that swaps a part for a symlink while this runs is not
/// stopped here: jobs sharing a root trust each other that far.)
pub fn working_dir(root: &Path, rel: Option<&str>) -> Result<PathBuf, WorkingDirError> {
    let root_err = |source| WorkingDirError::Root { root: root.to_owned(), source };
    std::fs::create_dir_all(root).map_err(root_err)?;
    let root = root.canonicalize().map_err(root_err)?;
    let Some(rel) = rel else { return Ok(root) };
    let io = |source| WorkingDirError::Io { rel: rel.to_owned(), source };
    let mut dir = root.clone();
    for part in Path::new(rel).components() {
        let next = match part {
            std::path::Component::Normal(p) => dir.join(p),
            std::path::Component::CurDir => continue,
            // Refused at submit; a spec stored before that is still refused.
            _ => return Err(WorkingDirError::Escapes { rel: rel.to_owned() }),
        };
        match std::fs::symlink_metadata(&next) {
            Ok(_) => {
                let resolved = next.canonicalize().map_err(io)?;
                if !resolved.starts_with(&root) {
                    return Err(WorkingDirError::Escapes { rel: rel.to_owned() });
                }
                if !resolved.is_dir() {
                    let part = next.strip_prefix(&root).unwrap_or(&next).display().to_string();
                    return Err(WorkingDirError::NotADirectory { rel: rel.to_owned(), part });
                }
                dir = resolved;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&next) {
                Ok(()) => dir = next,
                // Another attempt created it meanwhile: resolve it next round.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let resolved = next.canonicalize().map_err(io)?;
                    if !resolved.starts_with(&root) {
                        return Err(WorkingDirError::Escapes { rel: rel.to_owned() });
                    }
                    dir = resolved;
                }
                Err(e) => return Err(io(e)),
            },
            Err(e) => return Err(io(e)),
        }
    }
    Ok(dir)
}

/// The program that runs a job's argv under supervision (see [`crate::supervise`]):
/// this process's own executable when it is the `fetchml` binary.
fn supervisor() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    (exe.file_name()? == "fetchml").then_some(exe)
}

async fn run_process(req: &ExecRequest, io: ExecIo) -> Outcome {
    // Blocking file-system calls, off the worker's thread: a job root on a
    // network mount can stall, and the worker runs all its tasks on one thread.
    let (root, rel) = (req.job_root.clone(), req.spec.working_dir.clone());
    let cwd = match tokio::task::spawn_blocking(move || working_dir(&root, rel.as_deref())).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return failed(e.class(), None, None, e.to_string()),
        Err(e) => {
            return failed(FailureClass::Infrastructure, None, None, format!("preparing the working directory: {e}"));
        }
    };
    let argv: Vec<String> = if req.spec.shell {
        vec!["/bin/sh".into(), "-c".into(), req.spec.command.join(" ")]
    } else {
        req.spec.command.clone()
    };
    if argv.is_empty() {
        return failed(FailureClass::Code, None, None, "empty command");
    }
    let supervised = supervisor();
    let mut cmd = match &supervised {
        Some(exe) => {
            let mut c = Command::new(exe);
            c.arg("supervise")
                .arg("--parent")
                .arg(std::process::id().to_string())
                .arg("--grace")
                .arg(req.kill_grace.as_secs().max(1).to_string())
                .arg("--")
                .args(&argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    cmd.envs(&req.spec.env)
        .envs(req.secrets.env())
        .env("FETCHML_JOB_ID", req.job_id.to_string())
        .env("FETCHML_ATTEMPT", req.attempt.to_string())
        .envs(req.device_env())
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return failed(FailureClass::Code, None, None, format!("command not found: {}", argv[0]));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return failed(FailureClass::Code, None, None, format!("permission denied: {}", argv[0]));
        }
        Err(e) => return failed(FailureClass::Infrastructure, None, None, format!("cannot start: {e}")),
    };
    // With process_group(0) the child's pid is its process group id.
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
    let redact = &req.secrets;
    let out = child.stdout.take().map(|s| tokio::spawn(forward(s, LogStream::Stdout, io.logs.clone(), redact.clone())));
    let err = child.stderr.take().map(|s| tokio::spawn(forward(s, LogStream::Stderr, io.logs.clone(), redact.clone())));
    let timeout = req.spec.timeout_secs.map(Duration::from_secs);
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    enum Ended {
        Exited(std::io::Result<std::process::ExitStatus>),
        Cancelled,
        TimedOut,
    }
    let ended = tokio::select! {
        s = child.wait() => Ended::Exited(s),
        _ = io.cancel.cancelled() => Ended::Cancelled,
        _ = deadline => Ended::TimedOut,
    };
    let outcome = match ended {
        Ended::Exited(Ok(status)) if supervised.is_some() && status.code() == Some(127) => {
            failed(FailureClass::Code, None, None, format!("command not found: {}", argv[0]))
        }
        Ended::Exited(Ok(status)) if supervised.is_some() && status.code() == Some(126) => {
            failed(FailureClass::Code, None, None, format!("permission denied: {}", argv[0]))
        }
        Ended::Exited(Ok(status)) => classify(status),
        Ended::Exited(Err(e)) => failed(FailureClass::Infrastructure, None, None, format!("wait failed: {e}")),
        Ended::Cancelled => {
            stop_group(&mut child, pgid, req.kill_grace).await;
            failed(FailureClass::Unknown, None, None, "cancelled")
        }
        Ended::TimedOut => {
            stop_group(&mut child, pgid, req.kill_grace).await;
            failed(FailureClass::Resource, None, None, "timed out")
        }
    };
    // Whatever the group left running now must not outlive the attempt.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    for task in [out, err].into_iter().flatten() {
        let _ = task.await;
    }
    outcome
}

fn classify(status: std::process::ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Succeeded,
        (Some(code), _) => failed(FailureClass::Code, Some(code), None, format!("exit status {code}")),
        (None, Some(sig)) => failed(FailureClass::Infrastructure, None, Some(sig), format!("killed by signal {sig}")),
        (None, None) => failed(FailureClass::Unknown, None, None, "ended without status"),
    }
}

/// SIGTERM to the whole group, then SIGKILL after the grace period.
async fn stop_group(child: &mut tokio::process::Child, pgid: Option<Pid>, grace: Duration) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
}

async fn forward(pipe: impl AsyncRead + Unpin, stream: LogStream, logs: mpsc::Sender<LogLine>, secrets: Secrets) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        let mut line = secrets.redact(&String::from_utf8_lossy(&buf)).into_owned();
        if line.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" …[truncated]");
        }
        // A closed receiver means nobody forwards logs any more; keep draining
        // the pipe so the child never blocks on a full pipe.
        let _ = logs.send(LogLine { stream, line }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fetchml_events::job::JobSpec;

    /// Defect 14: a symlink out of the job root was an `infrastructure`
    /// failure (retried three times, then dead-lettered); it is the job's own.
    #[test]
    fn a_symlink_out_of_the_job_root_is_the_jobs_fault_and_nothing_is_created_through_it() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        for rel in ["out", "out/sub", "./out/a/b"] {
            let e = working_dir(root.path(), Some(rel)).unwrap_err();
            assert!(matches!(e, WorkingDirError::Escapes { .. }), "{rel}: {e}");
            assert_eq!(e.class(), FailureClass::Code);
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing created outside the root");
        std::fs::write(root.path().join("file"), b"x").unwrap();
        let e = working_dir(root.path(), Some("file/sub")).unwrap_err();
        assert_eq!(e.class(), FailureClass::Code, "{e}");
        // Inside the root, a symlink that stays inside is fine.
        std::os::unix::fs::symlink(root.path().join("a"), root.path().join("link")).unwrap();
        let d = working_dir(root.path(), Some("a/b")).unwrap();
        assert!(d.is_dir() && d.ends_with("a/b"));
        assert_eq!(working_dir(root.path(), Some("link/b")).unwrap(), d);
    }

    #[test]
    fn podman_runs_the_argv_in_a_named_container_without_a_shell() {
        let mut spec = JobSpec::command(["python", "train.py", "a; b"]);
        spec.executor = ExecutorKind::Podman;
        spec.image = Some("docker.io/library/python:3.12".into());
        spec.resources.memory_mb = Some(512);
        let req = ExecRequest {
            job_id: JobId::new(),
            attempt: 2,
            spec,
            job_root: PathBuf::from("/tmp"),
            kill_grace: Duration::from_secs(1),
            secrets: Secrets::new(vec![("HF_TOKEN".into(), "hf_abcdefghijklmnop".into())]),
            gpus: vec!["1".into()],
        };
        let argv = PodmanExecutor::argv(&req);
        assert!(argv.windows(2).any(|w| w == ["--env", "HF_TOKEN"]), "{argv:?}");
        assert!(!argv.iter().any(|a| a.contains("hf_abcdefghijklmnop")), "{argv:?}");
        assert_eq!(&argv[..5], ["podman", "run", "--rm", "--init", "--name"]);
        assert!(argv.iter().any(|a| a == "--device=nvidia.com/gpu=1"), "{argv:?}");
        assert!(argv.windows(2).any(|w| w == ["--env", "CUDA_VISIBLE_DEVICES=1"]), "{argv:?}");
        assert_eq!(argv[5], format!("fetchml-{}-2", req.job_id));
        assert!(argv.contains(&"--memory=512m".to_string()));
        assert_eq!(&argv[argv.len() - 4..], ["docker.io/library/python:3.12", "python", "train.py", "a; b"]);
    }
}
