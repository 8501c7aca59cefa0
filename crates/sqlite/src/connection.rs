use crate::SqliteError;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::time::Duration;

/// The oldest SQLite allowed: 3.51.3 fixed WAL corruption when two connections checkpoint at
/// the same time.
pub const SQLITE_VERSION_MIN: i32 = 3_051_003;

/// Where the database lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A file (WAL mode unless [`OpenOptions::journal`] says otherwise; readers get their own
    /// connections).
    File(PathBuf),
    /// Private to the writer's connection; gone when the writer stops.
    Memory,
}

/// How a file database keeps its transactions atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Journal {
    /// Write-ahead log (the default): readers read the last committed state while the writer
    /// writes; a transaction's pages are written to the WAL, then copied into the database
    /// after the commit (by the checkpointer).
    #[default]
    Wal,
    /// Rollback journal (`journal_mode = TRUNCATE`): a transaction's pages go to the database
    /// file once, and the journal keeps the original content of the pages it changes. No copy
    /// after the commit, so one very large transaction (a sink's exactly-once checkpoint)
    /// costs far less; but a commit, and a large transaction spilling to the file, lock every
    /// reader of the file out until it ends. For a database nothing reads while it fills.
    Rollback,
}

impl Journal {
    fn pragma_value(self) -> &'static str {
        match self {
            Journal::Wal => "wal",
            Journal::Rollback => "truncate",
        }
    }
}

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged (the default).
    #[default]
    Full,
    /// Commits are acknowledged before the WAL is synced: a power loss (not a process crash) may
    /// lose the last commits.
    Normal,
}

impl Synchronous {
    fn pragma_value(self) -> i64 {
        match self {
            Synchronous::Full => 2,
            Synchronous::Normal => 1,
        }
    }
}

/// Options shared by the writer and readers.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Where.
    pub location: Location,
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// How long a connection waits for a lock held by another process before SQLite reports
    /// busy (the writer then retries; callers never see it).
    pub busy_timeout_ms: u64,
    /// Page size of a database created by this open; an existing database keeps its own.
    /// Every commit writes each page it changed in full, so small rows in small transactions
    /// write less with small pages.
    pub page_size_bytes: u32,
    /// WAL length, in pages, from which the writer checkpoints in its own thread (copying only
    /// what the background checkpointer has not copied yet), so that its next transaction
    /// starts the WAL over. Below it, checkpoints run on their own thread (see
    /// `checkpointer`). Default: 65,536 pages (256 MiB with 4 KiB pages).
    pub wal_pages_max: u32,
    /// The journal of a file database. Default: [`Journal::Wal`].
    pub journal: Journal,
}

impl OpenOptions {
    /// Durable defaults for a location.
    pub fn new(location: Location) -> Self {
        Self {
            location,
            synchronous: Synchronous::Full,
            busy_timeout_ms: 5_000,
            page_size_bytes: 4096,
            wal_pages_max: 65_536,
            journal: Journal::Wal,
        }
    }
}

/// Fails when the linked SQLite is too old.
pub fn check_library_version() -> Result<(), SqliteError> {
    let found = rusqlite::version_number();
    if found < SQLITE_VERSION_MIN {
        return Err(SqliteError::VersionTooOld {
            found: rusqlite::version().to_string(),
            required: "3.51.3".to_string(),
        });
    }
    Ok(())
}

/// Opens a connection, applies the PRAGMAs and reads each back: a value that did not take is
/// an error, not a silent downgrade.
pub fn open_connection(options: &OpenOptions, read_only: bool) -> Result<Connection, SqliteError> {
    check_library_version()?;
    let connection = match &options.location {
        Location::File(path) => {
            let flags = if read_only {
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
            } else {
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
            };
            Connection::open_with_flags(path, flags)?
        }
        Location::Memory => Connection::open_in_memory()?,
    };
    connection.busy_timeout(Duration::from_millis(options.busy_timeout_ms))?;
    // Without the query planner stability guarantee, SQLite marks parameters whose bound value
    // the planner looked at (LIMIT ?, ranges), and rusqlite's statement cache clears bindings
    // whenever a statement is returned to it, so every cached statement was re-prepared
    // (parsed and planned again) on every use: 11% of all CPU in the orchestration benchmark.
    let stable = connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    expect_pragma("enable_qpsg", "true", &stable.to_string())?;
    connection.set_prepared_statement_cache_capacity(128);
    if !read_only {
        let pages: i64 = connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        if pages == 0 {
            connection.pragma_update(None, "page_size", options.page_size_bytes)?;
            let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            expect_pragma(
                "page_size",
                &options.page_size_bytes.to_string(),
                &page_size.to_string(),
            )?;
        }
        if let Location::File(_) = options.location {
            let wanted = options.journal.pragma_value();
            let mode: String =
                connection.query_row(&format!("PRAGMA journal_mode = {wanted}"), [], |row| {
                    row.get(0)
                })?;
            expect_pragma("journal_mode", wanted, &mode.to_lowercase())?;
        }
        connection.pragma_update(None, "synchronous", options.synchronous.pragma_value())?;
        let synchronous: i64 = connection.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
        expect_pragma(
            "synchronous",
            &options.synchronous.pragma_value().to_string(),
            &synchronous.to_string(),
        )?;
    }
    connection.pragma_update(None, "foreign_keys", "ON")?;
    let foreign_keys: i64 = connection.query_row("PRAGMA foreign_keys", [], |row| row.get(0))?;
    expect_pragma("foreign_keys", "1", &foreign_keys.to_string())?;
    Ok(connection)
}

fn expect_pragma(pragma: &'static str, wanted: &str, actual: &str) -> Result<(), SqliteError> {
    if wanted == actual {
        Ok(())
    } else {
        Err(SqliteError::PragmaNotApplied {
            pragma,
            wanted: wanted.to_string(),
            actual: actual.to_string(),
        })
    }
}
