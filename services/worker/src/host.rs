//! What this host offers jobs: GPU ids, CPUs, memory. Settings win; without
//! them, GPUs are those `nvidia-smi` lists (none if it is missing or fails),
//! CPUs the ones this process may use, memory the host's total.

use fetchml_runtime::settings::WorkerSettings;
use std::time::Duration;

pub(crate) struct HostCapacity {
    pub gpus: Vec<String>,
    pub cpus: u32,
    pub memory_mb: u64,
}

pub(crate) async fn capacity(s: &WorkerSettings) -> HostCapacity {
    let gpus = match &s.gpus {
        Some(g) => g.clone(),
        None => nvidia_gpus().await,
    };
    let cpus = s.cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1));
    let memory_mb = s.memory_mb.unwrap_or_else(total_memory_mb);
    HostCapacity { gpus, cpus, memory_mb }
}

/// GPU indices as `nvidia-smi` lists them (the names CUDA_VISIBLE_DEVICES takes).
async fn nvidia_gpus() -> Vec<String> {
    let run = tokio::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Ok(Ok(_)) => {
            tracing::warn!("nvidia-smi failed; offering no GPUs (list them in worker.gpus)");
            Vec::new()
        }
        // Not installed: a CPU-only host.
        Ok(Err(_)) => Vec::new(),
        Err(_) => {
            tracing::warn!("nvidia-smi did not answer in 10 s; offering no GPUs (list them in worker.gpus)");
            Vec::new()
        }
    }
}

fn total_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}
