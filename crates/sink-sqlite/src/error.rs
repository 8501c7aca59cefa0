//! Classification of SQLite errors into the engine's classes.

use rusqlite::ErrorCode;
use sluice_sink::BackendError;
use sluice_sqlite::WriteError;

use sluice_sink::shortened_message as shortened;

/// Classifies an error from a statement.
pub(crate) fn classify(error: rusqlite::Error) -> BackendError {
    let message = shortened(error.to_string());
    let code = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => failure.code,
        rusqlite::Error::SqlInputError { error, .. } => error.code,
        // A value rusqlite could not convert is the row's fault.
        rusqlite::Error::ToSqlConversionFailure(_) => {
            return BackendError::Row {
                code: "sqlite.conversion",
                message,
            };
        }
        _ => {
            return BackendError::Fatal {
                code: "sqlite.client",
                message,
            };
        }
    };
    match code {
        // NOT NULL, UNIQUE, CHECK, FOREIGN KEY and STRICT datatype violations.
        ErrorCode::ConstraintViolation => BackendError::Row {
            code: "sqlite.constraint",
            message,
        },
        // A text or blob over SQLITE_MAX_LENGTH.
        ErrorCode::TooBig => BackendError::Row {
            code: "sqlite.too_big",
            message,
        },
        ErrorCode::TypeMismatch => BackendError::Row {
            code: "sqlite.mismatch",
            message,
        },
        // The writer waits out other processes' locks itself; if one still surfaces, waiting
        // more is the remedy.
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => BackendError::Transient {
            code: "sqlite.busy",
            message,
        },
        ErrorCode::OutOfMemory => BackendError::Transient {
            code: "sqlite.nomem",
            message,
        },
        ErrorCode::DiskFull => BackendError::Transient {
            code: "sqlite.full",
            message,
        },
        ErrorCode::SystemIoFailure => BackendError::Transient {
            code: "sqlite.ioerr",
            message,
        },
        ErrorCode::SchemaChanged => BackendError::Transient {
            code: "sqlite.schema_changed",
            message,
        },
        ErrorCode::ReadOnly => BackendError::Fatal {
            code: "sqlite.readonly",
            message,
        },
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => BackendError::Fatal {
            code: "sqlite.corrupt",
            message,
        },
        _ => BackendError::Fatal {
            code: "sqlite.error",
            message,
        },
    }
}

/// Classifies the outcome of a group-commit write.
pub(crate) fn from_write_error(error: WriteError<BackendError>) -> BackendError {
    match error {
        WriteError::Job(error) => error,
        // BEGIN or COMMIT failed and the transaction was rolled back: nothing of the batch is
        // written, so trying again is safe.
        WriteError::Transaction(message) => BackendError::Transient {
            code: "sqlite.transaction",
            message,
        },
        WriteError::Panicked(message) => BackendError::Fatal {
            code: "sqlite.panicked",
            message,
        },
        WriteError::Closed => BackendError::Fatal {
            code: "sqlite.writer_closed",
            message: "the SQLite writer thread has stopped".into(),
        },
    }
}
