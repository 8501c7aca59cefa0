//! Throwaway NATS servers with JetStream.

use std::io::{self, BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use crate::sys;

/// Environment variable that turns "nats-server unavailable" into a failure.
const REQUIRE_ENV: &str = "SLUICE_REQUIRE_NATS";
/// Where Debian's `nats-server` package installs the binary.
const DEBIAN_BINARY: &str = "/usr/bin/nats-server";
/// Address the server listens on.
const HOST: &str = "127.0.0.1";
/// How many ports to try when the picked one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// How long the server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The line the server logs once it accepts clients (JetStream included).
const READY_LINE: &str = "Server is ready";
/// Log lines kept to explain a failed start.
const LOG_LINES_KEPT: usize = 20;

/// `nats-server` cannot be used here (binary missing, or it did not start).
///
/// Returned by [`NatsServer::start`]; [`nats_or_skip`] turns it into a skip.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct NatsUnavailable {
    reason: String,
}

impl NatsUnavailable {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Human-readable explanation of why the server is unavailable.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A throwaway `nats-server -js` on `127.0.0.1:<free port>`, its JetStream store in a fresh
/// temporary directory. Dropping the value kills the server and deletes the directory (also
/// when a test panics; not when the test process is killed).
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    /// Removed after `Drop::drop` killed the server.
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a server, trying a few ports if the picked one is taken meanwhile.
    pub fn start() -> Result<NatsServer, NatsUnavailable> {
        let binary = sys::find_program("nats-server", &[DEBIAN_BINARY]).ok_or_else(|| {
            NatsUnavailable::new(format!(
                "nats-server not found (looked in {DEBIAN_BINARY} and PATH; Debian package nats-server)"
            ))
        })?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-nats-")
            .tempdir()
            .map_err(|error| NatsUnavailable::new(format!("creating a temp dir: {error}")))?;
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()
                .map_err(|error| NatsUnavailable::new(format!("picking a port: {error}")))?;
            match start_on(&binary, dir.path().join("store"), port) {
                Ok(child) => {
                    return Ok(NatsServer {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                Err(reason) => last = reason,
            }
        }
        Err(NatsUnavailable::new(format!(
            "nats-server did not start after {PORT_ATTEMPTS} attempts: {last}"
        )))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{HOST}:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on `port` and waits for its ready line; on failure kills it and returns
/// the last lines it logged.
fn start_on(binary: &std::path::Path, store: PathBuf, port: u16) -> Result<Child, String> {
    let mut child = Command::new(binary)
        .arg("-js")
        .args(["-a", HOST, "-p", &port.to_string()])
        .arg("-sd")
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("running {}: {error}", binary.display()))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (sender, receiver) = mpsc::channel();
    // Reads the log to its end (the server's), so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                // Nobody listens any more: keep draining.
                continue;
            }
        }
    });
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let mut log = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => {
                let ready = line.contains(READY_LINE);
                log.push(line);
                if log.len() > LOG_LINES_KEPT {
                    log.remove(0);
                }
                if ready {
                    return Ok(child);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no {READY_LINE:?} within {READY_TIMEOUT:?} or it exited; its log:\n{}",
                    log.join("\n")
                ));
            }
        }
    }
}

fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((HOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether tests must fail (rather than skip) when `nats-server` is unavailable:
/// `SLUICE_REQUIRE_NATS` is `1` or `true` (case-insensitive).
pub fn require_nats() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| {
        let v = v.trim();
        v == "1" || v.eq_ignore_ascii_case("true")
    })
}

/// Starts a [`NatsServer`] for test suite `suite`, or skips.
///
/// On failure: if [`require_nats`] is true, panics with the reason; otherwise prints
/// `SKIPPED <suite>: nats-server not available (<reason>)` to stderr and returns `None`, and
/// the caller should return early.
///
/// # Panics
///
/// When the server is unavailable and `SLUICE_REQUIRE_NATS` is set.
pub fn nats_or_skip(suite: &str) -> Option<NatsServer> {
    match NatsServer::start() {
        Ok(server) => Some(server),
        Err(error) if require_nats() => {
            panic!(
                "{suite}: nats-server required ({REQUIRE_ENV} is set) but not available: {error}"
            )
        }
        Err(error) => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {suite}: nats-server not available ({error})"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn starts_and_speaks_the_protocol() {
        let Some(server) = nats_or_skip("testkit nats") else {
            return;
        };
        let mut stream = TcpStream::connect((HOST, server.port())).unwrap();
        let mut info = [0u8; 4];
        stream.read_exact(&mut info).unwrap();
        assert_eq!(&info, b"INFO");
        stream.write_all(b"CONNECT {}\r\nPING\r\n").unwrap();
        let mut rest = Vec::new();
        let mut byte = [0u8; 1];
        while !rest.ends_with(b"PONG\r\n") {
            stream.read_exact(&mut byte).unwrap();
            rest.push(byte[0]);
        }
        assert!(server.url().starts_with("nats://127.0.0.1:"));
    }
}
