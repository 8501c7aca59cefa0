//! WAL checkpoints off the writer thread.
//!
//! In WAL mode every committed page is written twice: into the WAL at commit, and later into
//! the database file by a checkpoint. SQLite's automatic checkpoint runs in the committing
//! connection, right after the commit, so on the group-commit writer it took the one thread that
//! bounds every write (about 30% of that thread in the sink's exactly-once benchmark: copying
//! pages and syncing the database file). Here the writer's connection only *asks*: a WAL hook
//! wakes a checkpointer thread, which runs `PASSIVE` checkpoints on a connection of its own
//! while the writer goes on. `PASSIVE` never waits for and never blocks the writer or readers.
//!
//! A WAL is only reset (written again from its start) by a writer beginning a transaction
//! after a checkpoint has copied every frame. Under a steady stream the background checkpoint
//! may never finish between one commit and the next begin, so the WAL would only grow: once it
//! holds `OpenOptions::wal_pages_max` pages the writer checkpoints in its own thread as SQLite
//! would (`PASSIVE`, so only the frames the background has not copied yet), and its next
//! transaction resets the WAL. The WAL therefore stays under that length plus one transaction.
//! A transaction larger than a third of it (an exactly-once checkpoint of a fast sink) leaves
//! the writer about a third of its checkpoint work.

use crate::{OpenOptions, SqliteError, open_connection};
use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// WAL pages after a commit from which the checkpointer is woken (SQLite's automatic
/// checkpoint threshold).
pub const WAL_CHECKPOINT_PAGES: c_int = 1_000;

#[derive(Default)]
struct State {
    /// A checkpoint was asked for since the last one started.
    requested: bool,
    stop: bool,
}

#[derive(Default)]
struct Signal {
    state: Mutex<State>,
    wake: Condvar,
    /// Background checkpoints run.
    runs: AtomicU64,
}

impl Signal {
    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        self.wake.notify_one();
    }
}

/// The checkpointer thread of one database file; stopped (after a checkpoint in progress) when
/// dropped.
pub(crate) struct Checkpointer {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens the checkpointer's connection and starts its thread, and installs the WAL hook on
    /// `writer` (replacing SQLite's automatic checkpoint there).
    pub(crate) fn start(
        options: &OpenOptions,
        writer: &mut Connection,
    ) -> Result<Checkpointer, SqliteError> {
        let connection = open_connection(options, false)?;
        let signal = Arc::new(Signal::default());
        let thread = {
            let signal = signal.clone();
            std::thread::Builder::new()
                .name("sluice-sqlite-ckpt".into())
                .spawn(move || run(&connection, &signal))
                .map_err(SqliteError::Spawn)?
        };
        let hook_signal = signal.clone();
        let backstop = c_int::try_from(options.wal_pages_max).unwrap_or(c_int::MAX);
        writer.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
            if pages >= backstop {
                // Busy (the background checkpoint holds the checkpoint lock) is fine: the
                // next commit tries again.
                if let Err(error) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    tracing::debug!(%error, pages, "writer-side WAL checkpoint did not run");
                }
            } else if pages >= WAL_CHECKPOINT_PAGES {
                hook_signal.update(|state| state.requested = true);
            }
            // An error here would make the committed statement report one.
            Ok(())
        }))?;
        Ok(Checkpointer {
            signal,
            thread: Some(thread),
        })
    }
}

fn run(connection: &Connection, signal: &Signal) {
    loop {
        {
            let mut state = signal.state.lock().unwrap_or_else(|e| e.into_inner());
            while !state.requested && !state.stop {
                state = signal.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.stop {
                return;
            }
            state.requested = false;
        }
        signal.runs.fetch_add(1, Ordering::Relaxed);
        match connection.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((log, copied)) => tracing::trace!(log, copied, "WAL checkpoint"),
            Err(error) => tracing::debug!(%error, "background WAL checkpoint failed"),
        }
    }
}

impl Checkpointer {
    /// Background checkpoints run so far.
    #[cfg(test)]
    fn runs(&self) -> u64 {
        self.signal.runs.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.update(|state| state.stop = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Location, open_connection};

    fn wal_frames(connection: &Connection) -> i64 {
        connection
            .wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)
            .map(|(log, _)| i64::from(log))
            .unwrap()
    }

    #[test]
    fn the_wal_is_checkpointed_in_the_background_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let options = OpenOptions {
            wal_pages_max: 8_000,
            ..OpenOptions::new(Location::File(dir.path().join("db.sqlite")))
        };
        let mut writer = open_connection(&options, false).unwrap();
        writer.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let checkpointer = Checkpointer::start(&options, &mut writer).unwrap();
        let blob = vec![7u8; 3_000];
        // 40 transactions of 1,000 pages or so each: far beyond the backstop in total.
        for _ in 0..40 {
            writer.execute_batch("BEGIN").unwrap();
            for _ in 0..1_000 {
                writer
                    .execute("INSERT INTO t VALUES (?1)", [&blob])
                    .unwrap();
            }
            writer.execute_batch("COMMIT").unwrap();
        }
        assert!(checkpointer.runs() > 0, "no background checkpoint ran");
        drop(checkpointer);
        let frames = wal_frames(&writer);
        assert!(
            frames < i64::from(options.wal_pages_max) + 2_000,
            "the WAL holds {frames} frames"
        );
        let count: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 40_000);
        let check: String = writer
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
