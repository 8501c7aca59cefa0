use crate::{OpenOptions, SqliteError, open_connection};
use rusqlite::Connection;
use std::sync::{Arc, Mutex};

/// A small pool of read-only WAL connections, used from blocking tasks.
///
/// Readers never take the write lock, so they never wait for the writer and the writer never
/// waits for them.
#[derive(Clone)]
pub struct ReaderPool {
    options: OpenOptions,
    idle: Arc<Mutex<Vec<Connection>>>,
    idle_max: usize,
}

impl ReaderPool {
    /// A pool keeping at most `idle_max` idle connections (more are opened under load and
    /// closed afterwards).
    pub fn new(options: OpenOptions, idle_max: usize) -> Self {
        Self {
            options,
            idle: Arc::new(Mutex::new(Vec::new())),
            idle_max,
        }
    }

    /// Runs `read` on a reader connection in a blocking task. The outer error is about getting
    /// a connection; the closure's own result comes back as it is.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> Result<T, SqliteError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let connection = pool.checkout()?;
            let result = read(&connection);
            pool.checkin(connection);
            Ok(result)
        })
        .await
        .map_err(|error| SqliteError::ReaderTask(error.to_string()))?
    }

    fn checkout(&self) -> Result<Connection, SqliteError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match idle {
            Some(connection) => Ok(connection),
            None => open_connection(&self.options, true),
        }
    }

    fn checkin(&self, connection: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < self.idle_max {
            idle.push(connection);
        }
    }
}
