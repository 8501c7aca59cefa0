//! `sluice bench orchestrations --processes N`: N `sluice worker` processes (this binary) run
//! the benchmark's orchestrations and activities on one PostgreSQL store, while the benchmark's
//! own process only starts instances and observes their completions.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest wait for a worker to open the store and start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a worker to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What a worker writes to its `--report` file when it stops.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerReport {
    /// The worker's process id.
    pub pid: u32,
    /// Activity executions it ran.
    pub activity_executions: u64,
    /// PostgreSQL: its writes the store refused because their lease was lost.
    #[serde(default)]
    pub refused_writes: Option<u64>,
}

/// A worker's part of a run, as the benchmark reports it.
#[derive(Debug, Serialize)]
pub(crate) struct ProcessShare {
    pid: u32,
    pub(crate) activity_executions: u64,
    /// Of all the workers' activity executions.
    share: f64,
}

/// How the workers are started.
pub(crate) struct WorkerSpec<'a> {
    pub(crate) url: &'a str,
    pub(crate) schema: &'a str,
    pub(crate) orch_concurrency: usize,
    pub(crate) activity_concurrency: usize,
    pub(crate) activity_ms: u64,
    pub(crate) pg_connections: usize,
}

/// Running workers; dropping them kills any still running.
pub(crate) struct Workers {
    children: Vec<(Child, PathBuf)>,
    /// The reports' directory.
    dir: tempfile::TempDir,
}

impl Workers {
    /// Starts `count` workers and waits until each has opened the store and runs.
    pub(crate) fn start(count: usize, spec: &WorkerSpec<'_>) -> Result<Workers> {
        let exe = std::env::current_exe().context("finding this program to start workers")?;
        let mut workers = Workers {
            children: Vec::new(),
            dir: tempfile::tempdir()?,
        };
        let dir = workers.dir.path().to_path_buf();
        let (ready_tx, ready_rx) = mpsc::channel();
        for index in 0..count {
            let report = dir.join(format!("worker-{index}.json"));
            let mut child = Command::new(&exe)
                .arg("worker")
                .args(["--store", spec.url, "--schema", spec.schema])
                .args(["--orch-concurrency", &spec.orch_concurrency.to_string()])
                .args([
                    "--activity-concurrency",
                    &spec.activity_concurrency.to_string(),
                ])
                .args(["--activity-ms", &spec.activity_ms.to_string()])
                .args(["--pg-connections", &spec.pg_connections.to_string()])
                .arg("--report")
                .arg(&report)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting a worker process")?;
            let stderr = child.stderr.take().expect("piped");
            let ready = ready_tx.clone();
            // Waits for the worker's "running" line, then keeps its standard error drained
            // (and shown, for warnings) so it never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains(": running") {
                        let _ = ready.send(index);
                    } else {
                        eprintln!("worker {index}: {line}");
                    }
                }
            });
            workers.children.push((child, report));
        }
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        for _ in 0..count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if ready_rx.recv_timeout(left).is_err() {
                bail!(
                    "a worker did not start within {} s",
                    START_TIMEOUT.as_secs()
                );
            }
        }
        Ok(workers)
    }

    /// Stops the workers (SIGTERM, then their grace period) and reads what each ran.
    pub(crate) fn stop(mut self) -> Result<Vec<ProcessShare>> {
        for (child, _) in &self.children {
            // A worker that already exited is seen below, with its status.
            if let Err(error) = crate::host::terminate(child) {
                tracing::warn!(%error, pid = child.id(), "cannot signal a worker");
            }
        }
        let mut reports = Vec::new();
        for (child, report) in &mut self.children {
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "worker {} did not stop within {} s",
                        child.id(),
                        STOP_TIMEOUT.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if !status.success() {
                bail!("worker {} exited with {status}", child.id());
            }
            reports.push(read_report(report)?);
        }
        self.children.clear();
        let total: u64 = reports.iter().map(|r| r.activity_executions).sum();
        Ok(reports
            .into_iter()
            .map(|report| ProcessShare {
                pid: report.pid,
                activity_executions: report.activity_executions,
                share: if total == 0 {
                    0.0
                } else {
                    report.activity_executions as f64 / total as f64
                },
            })
            .collect())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_report(path: &Path) -> Result<WorkerReport> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the worker report {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes a worker's report (`sluice worker --report`).
pub fn write_report(path: &Path, report: &WorkerReport) -> Result<()> {
    std::fs::write(path, serde_json::to_string(report)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Prints the workers' shares.
pub(crate) fn print_shares(shares: &[ProcessShare]) {
    let parts: Vec<String> = shares
        .iter()
        .map(|s| format!("pid {} {:.1}%", s.pid, s.share * 100.0))
        .collect();
    println!(
        "  {} worker processes, share of activity executions: {}",
        shares.len(),
        parts.join(", ")
    );
}
