//! Crash loops: a child killed with SIGKILL at seeded random moments and started again.
//!
//! ```no_run
//! use sluice_testkit::crash::{CrashLoop, Ended, Schedule};
//! use std::time::Duration;
//!
//! let mut crashes = CrashLoop::new(10, Schedule::from_env("MY_CRASH_SEED", 1));
//! while crashes.more() {
//!     let delay = Duration::from_millis(crashes.schedule().in_range(50..=500));
//!     let mut child = std::process::Command::new("my-program").spawn().unwrap();
//!     if crashes.kill_after(&mut child, delay) == Ended::Killed {
//!         // Checks between runs.
//!     }
//! }
//! eprintln!("{crashes}");
//! if let Some(status) = crashes.exited() {
//!     assert!(status.success(), "{status}");
//! }
//! ```

use crate::process::{self, Signal};
use std::fmt;
use std::ops::RangeInclusive;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A seeded pseudo-random schedule (splitmix64): the same seed gives the same delays.
#[derive(Clone, Debug)]
pub struct Schedule {
    seed: u64,
    state: u64,
}

impl Schedule {
    /// A schedule from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, state: seed }
    }

    /// A schedule from the seed in the environment variable `var`, else `default`; prints the
    /// seed and how to replay it.
    ///
    /// # Panics
    ///
    /// Panics if `var` is set but is not a `u64`.
    pub fn from_env(var: &str, default: u64) -> Self {
        let seed = match std::env::var(var) {
            Ok(text) => text
                .parse()
                .unwrap_or_else(|_| panic!("{var} is not a u64: {text:?}")),
            Err(_) => default,
        };
        eprintln!("crash schedule: seed {seed} (set {var} to replay)");
        Self::new(seed)
    }

    /// The seed this schedule started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next number below `bound` (which must not be 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// The next number in `range`.
    pub fn in_range(&mut self, range: RangeInclusive<u64>) -> u64 {
        let (start, end) = range.into_inner();
        start + self.below(end - start + 1)
    }
}

/// How one run of a [`CrashLoop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Died of SIGKILL: the loop's, or one the child sent itself.
    Killed,
    /// Exited on its own (or of another signal); the loop runs no more.
    Exited(ExitStatus),
}

/// Counts the kills of a crash loop and stops it at the first run that ends on its own.
///
/// The test writes the loop (`while crashes.more()`), starts each run and checks what it
/// needs between runs; the loop waits, kills and counts.
#[derive(Debug)]
pub struct CrashLoop {
    kills_max: usize,
    kills: usize,
    runs: usize,
    exited: Option<ExitStatus>,
    schedule: Schedule,
    started: Instant,
}

impl CrashLoop {
    /// A loop that ends after `kills` kills, drawing delays from `schedule`.
    pub fn new(kills: usize, schedule: Schedule) -> Self {
        Self {
            kills_max: kills,
            kills: 0,
            runs: 0,
            exited: None,
            schedule,
            started: Instant::now(),
        }
    }

    /// Whether another run is due: fewer kills than asked for and no run exited on its own.
    pub fn more(&self) -> bool {
        self.kills < self.kills_max && self.exited.is_none()
    }

    /// The schedule, for the run's delay and any other choice.
    pub fn schedule(&mut self) -> &mut Schedule {
        &mut self.schedule
    }

    /// Waits up to `delay` for `child` to exit, SIGKILLs it if it still runs, reaps it and
    /// counts the run.
    ///
    /// # Panics
    ///
    /// Panics if the child cannot be polled, killed or reaped.
    pub fn kill_after(&mut self, child: &mut Child, delay: Duration) -> Ended {
        let status = match process::wait_timeout(child, delay).expect("poll the child") {
            Some(status) => status,
            None => {
                child.kill().expect("SIGKILL the child");
                child.wait().expect("reap the child")
            }
        };
        self.count(status)
    }

    /// For a child that kills itself: waits up to `timeout` for it to exit and counts the run;
    /// `None`, counting nothing, if it still runs then.
    ///
    /// # Panics
    ///
    /// Panics if the child cannot be polled.
    pub fn wait(&mut self, child: &mut Child, timeout: Duration) -> Option<Ended> {
        let status = process::wait_timeout(child, timeout).expect("poll the child")?;
        Some(self.count(status))
    }

    fn count(&mut self, status: ExitStatus) -> Ended {
        self.runs += 1;
        if process::died_of(&status, Signal::KILL) {
            self.kills += 1;
            Ended::Killed
        } else {
            self.exited = Some(status);
            Ended::Exited(status)
        }
    }

    /// Kills so far.
    pub fn kills(&self) -> usize {
        self.kills
    }

    /// Runs so far (killed or not).
    pub fn runs(&self) -> usize {
        self.runs
    }

    /// The status of the run that exited on its own, if one did.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.exited
    }

    /// Time since the loop was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl fmt::Display for CrashLoop {
    /// `"<kills> kills, <0 or 1> runs finished before their kill, <seconds> s"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} kills, {} runs finished before their kill, {:.1} s",
            self.kills,
            usize::from(self.exited.is_some()),
            self.elapsed().as_secs_f64()
        )
    }
}

/// SIGKILLs this process after `delay`, from a thread: returns at once, and the caller goes on
/// until the signal lands.
pub fn kill_self_after(delay: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_seed_gives_the_same_schedule() {
        let mut a = Schedule::new(7);
        let mut b = Schedule::new(7);
        let drawn: Vec<u64> = (0..100).map(|_| a.in_range(10..=20)).collect();
        assert_eq!(
            drawn,
            (0..100).map(|_| b.in_range(10..=20)).collect::<Vec<_>>()
        );
        assert!(drawn.iter().all(|d| (10..=20).contains(d)));
        assert!(drawn.contains(&10) && drawn.contains(&20));
        assert_ne!(Schedule::new(0).next_u64(), Schedule::new(1).next_u64());
    }

    #[test]
    fn kills_a_running_child_and_stops_at_one_that_exits() {
        let mut crashes = CrashLoop::new(3, Schedule::new(1));
        let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        assert_eq!(
            crashes.kill_after(&mut sleeper, Duration::from_millis(10)),
            Ended::Killed
        );
        assert!(crashes.more());
        let mut done = Command::new("true").spawn().unwrap();
        let status = done.wait().unwrap();
        // Already reaped: `try_wait` returns the cached status.
        assert_eq!(
            crashes.kill_after(&mut done, Duration::from_secs(60)),
            Ended::Exited(status)
        );
        assert!(!crashes.more());
        assert_eq!((crashes.kills(), crashes.runs()), (1, 2));
        assert!(crashes.exited().unwrap().success());
    }

    #[test]
    fn a_child_that_kills_itself_counts_as_a_kill() {
        let mut crashes = CrashLoop::new(1, Schedule::new(1));
        let mut child = Command::new("sh")
            .args(["-c", "kill -KILL $$"])
            .spawn()
            .unwrap();
        assert_eq!(
            crashes.wait(&mut child, Duration::from_secs(60)),
            Some(Ended::Killed)
        );
        let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        assert_eq!(crashes.wait(&mut sleeper, Duration::from_millis(10)), None);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert_eq!((crashes.kills(), crashes.runs()), (1, 1));
        assert!(!crashes.more());
    }
}
