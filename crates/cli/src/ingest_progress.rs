//! Progress: a bar on a terminal, plain log lines every few seconds otherwise.

use indicatif::{ProgressDrawTarget, ProgressStyle};
use sluice_ingest::Progress;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a log line is printed when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl ProgressBar {
    /// `total_bytes`: the size of the input when known (plain files), for percent and ETA.
    pub(crate) fn new(total_bytes: Option<u64>) -> ProgressBar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(total) => {
                    let bar = indicatif::ProgressBar::new(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {percent:>3}% {bytes}/{total_bytes} {msg} ETA {eta}",
                        )
                        .expect("a valid template"),
                    );
                    bar
                }
                None => {
                    let bar = indicatif::ProgressBar::new_spinner();
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {bytes} {msg}")
                            .expect("a valid template"),
                    );
                    bar
                }
            };
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            bar
        });
        let now = Instant::now();
        ProgressBar {
            bar,
            started: now,
            last_log: now,
        }
    }

    pub(crate) fn update(&mut self, progress: &Progress) {
        let Progress {
            records,
            bytes,
            rows_written: written,
            dead_lettered,
        } = *progress;
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = records as f64 / elapsed;
        let message = format!(
            "{records} records ({rate:.0}/s), {written} written, {dead_lettered} dead-lettered"
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(bytes);
                bar.set_message(message);
            }
            None => {
                if self.last_log.elapsed() >= LOG_INTERVAL {
                    self.last_log = Instant::now();
                    eprintln!("ingest: {message}, {bytes} bytes read");
                }
            }
        }
    }

    pub(crate) fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
