//! Child processes: signals through `kill(2)`, waiting with a timeout, output in a log file.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

/// How often [`wait_timeout`] looks whether the child has exited.
const POLL: Duration = Duration::from_millis(2);

/// Sends `signal` to `child`. The child must not have been waited for yet: after that its pid
/// may belong to another process.
pub fn signal(child: &Child, signal: Signal) -> io::Result<()> {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), signal)?;
    Ok(())
}

/// Sends `signal` to the process `pid`.
pub(crate) fn signal_pid(pid: i32, signal: Signal) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("pid {pid}")))?;
    rustix::process::kill_process(pid, signal)?;
    Ok(())
}

/// Waits at most `timeout` for `child` to exit: its status, or `None` while it still runs.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Whether `status` is that of a process ended by `signal`.
pub fn died_of(status: &ExitStatus, signal: Signal) -> bool {
    status.signal() == Some(signal.as_raw())
}

/// A child whose stdout and stderr go to a log file; SIGKILLed and reaped on drop, so that a
/// failing assertion leaves no process behind.
#[derive(Debug)]
pub struct LoggedChild {
    child: Child,
    log: PathBuf,
}

impl LoggedChild {
    /// Spawns `command` with stdin from `/dev/null` and stdout and stderr appended to `log`
    /// (created if missing).
    ///
    /// # Panics
    ///
    /// Panics if the log cannot be opened or the command cannot be spawned.
    pub fn spawn(command: &mut Command, log: impl Into<PathBuf>) -> Self {
        let log = log.into();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open the log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log's handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
        Self { child, log }
    }

    /// The child process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything in the log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// [`wait_timeout`] on the child.
    ///
    /// # Panics
    ///
    /// Panics if the child's status cannot be read.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout).expect("wait for the child")
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_ends_a_child_and_its_status_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = LoggedChild::spawn(
            Command::new("sleep").arg("60"),
            dir.path().join("sleep.log"),
        );
        assert_eq!(child.wait_timeout(Duration::from_millis(20)), None);
        signal(child.child(), Signal::TERM).unwrap();
        let status = child.wait_timeout(Duration::from_secs(60)).unwrap();
        assert!(died_of(&status, Signal::TERM), "{status}");
        assert!(!died_of(&status, Signal::KILL));
    }

    #[test]
    fn the_log_holds_stdout_and_stderr_appended() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        for word in ["one", "two"] {
            let script = format!("echo {word}; echo {word}-err >&2");
            let mut child = LoggedChild::spawn(Command::new("sh").args(["-c", &script]), &log);
            let status = child.wait_timeout(Duration::from_secs(60)).unwrap();
            assert!(status.success());
        }
        let child = LoggedChild::spawn(&mut Command::new("true"), &log);
        assert_eq!(child.log(), "one\none-err\ntwo\ntwo-err\n");
        assert_eq!(child.log_tail(2), "two\ntwo-err");
    }

    #[test]
    fn signal_pid_refuses_a_pid_that_is_not_positive() {
        assert!(signal_pid(0, Signal::TERM).is_err());
    }
}
