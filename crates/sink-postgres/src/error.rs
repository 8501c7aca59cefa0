//! Classification of PostgreSQL and pool errors into the engine's classes, and the errors of
//! connecting.
//!
//! | SQLSTATE / client error | Class | Code |
//! |---|---|---|
//! | class 08 (connection exception), I/O errors, closed connections, connect failures | transient | `postgres.08xxx` / `postgres.connection` |
//! | 40001 serialization failure, 40P01 deadlock | transient | `postgres.40001`, `postgres.40P01` |
//! | class 53 (insufficient resources: disk full, out of memory, too many connections) | transient | `postgres.53xxx` |
//! | 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now | transient | `postgres.57P0x` |
//! | pool wait timeout | transient | `postgres.pool_timeout` |
//! | class 22 (data exception), class 23 (integrity constraint violation) | row | `postgres.22xxx`, `postgres.23xxx` |
//! | everything else (undefined table, permission denied, syntax, ...) | fatal | `postgres.<sqlstate>` |
//!
//! Codes are `postgres.` followed by the SQLSTATE for every SQLSTATE PostgreSQL 15 defines in
//! the classes above and in classes 0A, 21, 25, 42, 54, 55 and XX; other SQLSTATEs get the
//! code of their class (`postgres.<class>xxx`).
//!
//! Messages are the server's message with its SQLSTATE and DETAIL, cut to
//! [`sluice_sink::MESSAGE_BYTES_MAX`]. No message ever contains the connection URL: the client library's
//! errors do not echo it, and this crate names a server only by [`crate::PostgresSinkOptions::target`]
//! (host, port, database and user, never the password).

use deadpool_postgres::PoolError;
use sluice_sink::BackendError;
use std::error::Error as _;
use tokio_postgres::error::DbError;

macro_rules! codes {
    ($($state:literal)*) => { &[$(concat!("postgres.", $state)),*] };
}

/// `postgres.<SQLSTATE>` for the SQLSTATEs of PostgreSQL 15 in the classes this crate
/// distinguishes.
static CODES: &[&str] = codes!(
    "08000" "08001" "08003" "08004" "08006" "08007" "08P01"
    "0A000" "21000"
    "22000" "22001" "22002" "22003" "22004" "22005" "22007" "22008" "22009" "2200B" "2200C"
    "2200D" "2200F" "2200G" "2200H" "2200L" "2200M" "2200N" "2200S" "2200T" "22010" "22011"
    "22012" "22013" "22014" "22015" "22016" "22018" "22019" "2201B" "2201E" "2201F" "2201G"
    "2201W" "2201X" "22021" "22022" "22023" "22024" "22025" "22026" "22027" "2202E" "2202G"
    "2202H" "22030" "22031" "22032" "22033" "22034" "22035" "22036" "22037" "22038" "22039"
    "2203A" "2203B" "2203C" "2203D" "2203E" "2203F" "2203G" "22P01" "22P02" "22P03" "22P04"
    "22P05" "22P06"
    "23000" "23001" "23502" "23503" "23505" "23514" "23P01"
    "25000" "25001" "25002" "25003" "25004" "25005" "25006" "25007" "25008" "25P01" "25P02"
    "25P03"
    "40000" "40001" "40002" "40003" "40P01"
    "42000" "42501" "42601" "42602" "42611" "42622" "42701" "42702" "42703" "42704" "42710"
    "42712" "42723" "42725" "42803" "42804" "42809" "42830" "42846" "42883" "428C9" "42939"
    "42P01" "42P02" "42P03" "42P04" "42P05" "42P06" "42P07" "42P08" "42P09" "42P10" "42P11"
    "42P12" "42P13" "42P14" "42P15" "42P16" "42P17" "42P18" "42P19" "42P20" "42P21" "42P22"
    "53000" "53100" "53200" "53300" "53400"
    "54000" "54001" "54011" "54023"
    "55000" "55006" "55P02" "55P03" "55P04"
    "57000" "57014" "57P01" "57P02" "57P03" "57P04" "57P05"
    "XX000" "XX001" "XX002"
);

/// The stable code of a SQLSTATE.
pub(crate) fn sqlstate_code(state: &str) -> &'static str {
    if let Some(code) = CODES
        .iter()
        .find(|code| &code["postgres.".len()..] == state)
    {
        return code;
    }
    match state.get(..2).unwrap_or("") {
        "08" => "postgres.08xxx",
        "22" => "postgres.22xxx",
        "23" => "postgres.23xxx",
        "40" => "postgres.40xxx",
        "42" => "postgres.42xxx",
        "53" => "postgres.53xxx",
        "54" => "postgres.54xxx",
        "55" => "postgres.55xxx",
        "57" => "postgres.57xxx",
        _ => "postgres.sqlstate",
    }
}

/// The class of a SQLSTATE (see the module docs).
pub(crate) fn sqlstate_class(state: &str) -> sluice_sink::ErrorClass {
    use sluice_sink::ErrorClass;
    match state {
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" => ErrorClass::Transient,
        _ if state.starts_with("08") || state.starts_with("53") => ErrorClass::Transient,
        _ if state.starts_with("22") || state.starts_with("23") => ErrorClass::Row,
        _ => ErrorClass::Fatal,
    }
}

pub(crate) use sluice_sink::shortened_message as shortened;

fn db_message(db: &DbError) -> String {
    let mut message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(detail) = db.detail() {
        message.push_str("; ");
        message.push_str(detail);
    }
    shortened(message)
}

/// A value this crate could not encode. Values are checked before a COPY starts, so this only
/// surfaces if a check and its encoder disagree; it is the row's fault either way.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct EncodeError(pub(crate) String);

/// The error's text with its causes (the client library puts the useful part in the source).
fn client_message(error: &tokio_postgres::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    shortened(message)
}

/// Whether the client lost the connection (as opposed to the server refusing something).
fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    let text = error.to_string();
    text.starts_with("error connecting to server") || text.starts_with("timeout waiting for server")
}

/// Classifies an error from a statement, a COPY or a connection attempt.
pub(crate) fn classify(error: &tokio_postgres::Error) -> BackendError {
    if let Some(db) = error.as_db_error() {
        let state = db.code().code();
        let code = sqlstate_code(state);
        let message = db_message(db);
        return match sqlstate_class(state) {
            sluice_sink::ErrorClass::Transient => BackendError::Transient { code, message },
            sluice_sink::ErrorClass::Row => BackendError::Row { code, message },
            sluice_sink::ErrorClass::Fatal => BackendError::Fatal { code, message },
        };
    }
    let message = client_message(error);
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<EncodeError>() {
            return BackendError::Row {
                code: "postgres.encode",
                message,
            };
        }
        source = cause.source();
    }
    if is_connection_error(error) {
        BackendError::Transient {
            code: "postgres.connection",
            message,
        }
    } else {
        BackendError::Fatal {
            code: "postgres.client",
            message,
        }
    }
}

/// Whether a failed `COMMIT` may nevertheless have committed: the connection broke (or the
/// server was shut down) before its answer arrived. Any other error is a definite rollback.
pub(crate) fn commit_outcome_unknown(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => {
            let state = db.code().code();
            state.starts_with("08") || matches!(state, "57P01" | "57P02" | "57P03")
        }
        // COMMIT carries no values, so a client-side error means the connection broke.
        None => true,
    }
}

/// Classifies a failure to get a pooled connection.
pub(crate) fn from_pool(error: PoolError) -> BackendError {
    match error {
        PoolError::Timeout(kind) => BackendError::Transient {
            code: "postgres.pool_timeout",
            message: format!("no pooled connection became available in time ({kind:?})"),
        },
        PoolError::Backend(error) => classify(&error),
        PoolError::Closed => BackendError::Fatal {
            code: "postgres.pool_closed",
            message: "the connection pool is closed".into(),
        },
        PoolError::NoRuntimeSpecified => BackendError::Fatal {
            code: "postgres.pool_runtime",
            message: "the connection pool has no runtime for its timeouts".into(),
        },
        PoolError::PostCreateHook(error) => BackendError::Fatal {
            code: "postgres.pool_hook",
            message: shortened(error.to_string()),
        },
    }
}

/// Why a [`crate::PostgresBackend`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The connection URL does not parse. The message never repeats the URL.
    #[error("invalid PostgreSQL connection URL: {message}")]
    InvalidUrl {
        /// What is wrong.
        message: String,
    },
    /// An option is out of range.
    #[error("{option} = {value} is out of range: {rule}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range.
        rule: &'static str,
    },
    /// The pool could not be built.
    #[error("cannot build the connection pool for {target}: {message}")]
    Pool {
        /// The server, without the password.
        target: String,
        /// What failed.
        message: String,
    },
    /// The first connection failed.
    #[error("cannot connect to {target}: {error}")]
    Connect {
        /// The server, without the password.
        target: String,
        /// The classified error.
        error: BackendError,
    },
    /// The connection settings cannot be used, or TLS failed (`postgres.tls`,
    /// `postgres.tls_setup`, `postgres.unsupported`, ...: the shared layer's codes).
    #[error(transparent)]
    Connection(#[from] sluice_postgres::ConnectError),
    /// The server is older than the oldest supported version.
    #[error("{target} runs PostgreSQL {version}; the sink needs PostgreSQL 12 or later")]
    UnsupportedServer {
        /// The server, without the password.
        target: String,
        /// `server_version_num`.
        version: i32,
    },
}

impl PostgresError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            PostgresError::InvalidUrl { .. } => "postgres.invalid_url",
            PostgresError::InvalidOption { .. } => "postgres.invalid_option",
            PostgresError::Pool { .. } => "postgres.pool",
            PostgresError::Connect { error, .. } => error.code(),
            PostgresError::Connection(error) => error.code(),
            PostgresError::UnsupportedServer { .. } => "postgres.unsupported_server",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sink::ErrorClass;

    #[test]
    fn sqlstates_map_to_classes_and_stable_codes() {
        for (state, class) in [
            ("08006", ErrorClass::Transient),
            ("08P01", ErrorClass::Transient),
            ("40001", ErrorClass::Transient),
            ("40P01", ErrorClass::Transient),
            ("53100", ErrorClass::Transient),
            ("53300", ErrorClass::Transient),
            ("57P01", ErrorClass::Transient),
            ("57P02", ErrorClass::Transient),
            ("57P03", ErrorClass::Transient),
            ("22001", ErrorClass::Row),
            ("22P02", ErrorClass::Row),
            ("23505", ErrorClass::Row),
            ("23514", ErrorClass::Row),
            ("42P01", ErrorClass::Fatal),
            ("42501", ErrorClass::Fatal),
            ("57014", ErrorClass::Fatal),
            ("21000", ErrorClass::Fatal),
            ("XX000", ErrorClass::Fatal),
        ] {
            assert_eq!(sqlstate_class(state), class, "{state}");
            assert_eq!(sqlstate_code(state), format!("postgres.{state}"));
        }
        // Unknown codes fall back to their class.
        assert_eq!(sqlstate_code("22ZZZ"), "postgres.22xxx");
        assert_eq!(sqlstate_class("22ZZZ"), ErrorClass::Row);
        assert_eq!(sqlstate_code("P0001"), "postgres.sqlstate");
        assert_eq!(sqlstate_class("P0001"), ErrorClass::Fatal);
        // Every listed code is a well-formed SQLSTATE.
        for code in CODES {
            let state = &code["postgres.".len()..];
            assert_eq!(state.len(), 5, "{code}");
            assert!(state.bytes().all(|b| b.is_ascii_alphanumeric()), "{code}");
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let message = shortened("é".repeat(sluice_sink::MESSAGE_BYTES_MAX));
        assert!(message.len() <= sluice_sink::MESSAGE_BYTES_MAX + 3);
        assert!(message.ends_with("..."));
        assert_eq!(shortened("short".into()), "short");
    }
}
