//! Temporary SQLite database paths.

use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// File name of the database inside a [`TempSqlite`] directory.
const DB_FILE_NAME: &str = "test.db";

/// A temporary directory holding the path of a SQLite database file.
///
/// The database file itself is *not* created: [`TempSqlite::path`] points to
/// `<dir>/test.db`, which the code under test opens/creates. Sidecar files
/// (`-wal`, `-shm`, `-journal`) land in the same directory. The whole
/// directory is removed when the value is dropped.
#[derive(Debug)]
pub struct TempSqlite {
    dir: TempDir,
    path: PathBuf,
}

impl TempSqlite {
    /// Creates a fresh temporary directory (under [`std::env::temp_dir`]).
    ///
    /// # Panics
    ///
    /// Panics if the directory cannot be created; use [`TempSqlite::try_new`]
    /// to handle that case.
    pub fn new() -> Self {
        match Self::try_new() {
            Ok(db) => db,
            Err(e) => panic!("TempSqlite: could not create a temporary directory: {e}"),
        }
    }

    /// Creates a fresh temporary directory, returning the I/O error on failure.
    pub fn try_new() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-sqlite-")
            .tempdir()?;
        let path = dir.path().join(DB_FILE_NAME);
        Ok(Self { dir, path })
    }

    /// The database file path (`<dir>/test.db`); the file does not exist yet.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary directory containing the database file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TempSqlite {
    /// Same as [`TempSqlite::new`].
    fn default() -> Self {
        Self::new()
    }
}
