//! What the benchmarks read about this machine and their own processes: `/proc` and `wait4`.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A field of `/proc/self/status` given in kB (`VmRSS`, `VmHWM`), in MiB.
pub(crate) fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Bytes this process has passed to write(2)-like calls so far (`wchar` in /proc/self/io).
pub(crate) fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
}

/// "N cores, load average a b c", printed beside every run: the figures of a loaded host
/// are not the figures of an idle one.
pub(crate) fn machine() -> String {
    let load = std::fs::read_to_string(Path::new("/proc/loadavg")).unwrap_or_default();
    format!(
        "{} cores, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Asks the kernel to write its dirty page cache, so runs start alike.
pub(crate) fn sync_disks() {
    rustix::fs::sync();
}

/// Sends SIGTERM to a child process.
pub(crate) fn terminate(child: &Child) -> std::io::Result<()> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("pid {} out of range", child.id())))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    Ok(())
}

/// A finished child: its exit status, wall time and resource use.
pub(crate) struct Finished {
    pub(crate) success: bool,
    pub(crate) wall: Duration,
    pub(crate) cpu_sec: f64,
    pub(crate) peak_rss_mib: f64,
}

/// Waits for `child` (started at `started`) and reads its own resource use with `wait4`.
///
/// `libc` and one `unsafe` call rather than `rustix` or `nix`: neither wraps `wait4`, and
/// `getrusage(RUSAGE_CHILDREN)` reports the largest resident set of all children so far, not
/// this one's.
pub(crate) fn wait_with_usage(child: Child, started: Instant) -> std::io::Result<Finished> {
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    let mut status = 0;
    // SAFETY: both pointers are to live locals; the child is ours and not waited on elsewhere
    // (`child` is dropped without `wait`, which std allows).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    drop(child);
    if reaped != pid {
        return Err(std::io::Error::last_os_error());
    }
    let wall = started.elapsed();
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Ok(Finished {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        wall,
        cpu_sec: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        // Linux reports kibibytes.
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let rss = status_mib("VmRSS").expect("VmRSS on Linux");
        let hwm = status_mib("VmHWM").expect("VmHWM on Linux");
        // Not `hwm >= rss`: the kernel updates the high-water mark lazily (at unmap and exit),
        // so a process that has just grown can read a current RSS above it.
        assert!(rss > 0.0 && hwm > 0.0, "rss {rss} hwm {hwm}");
        assert!(bytes_written().is_some());
        assert!(machine().contains("cores, load average"));
    }

    #[test]
    fn a_childs_usage_and_status() {
        let started = Instant::now();
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        assert!(!wait_with_usage(child, started).unwrap().success);
        let child = std::process::Command::new("true").spawn().unwrap();
        let finished = wait_with_usage(child, started).unwrap();
        assert!(finished.success && finished.peak_rss_mib > 0.0);
    }
}
