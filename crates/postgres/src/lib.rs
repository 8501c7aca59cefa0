//! What Sluice's PostgreSQL users (the orchestration store and the sink's backend) share:
//! parsing a connection URL once, naming the server without its password, keeping secrets out
//! of messages, TLS with rustls ([`tls`]: `sslmode`, `sslrootcert`), and building the
//! deadpool-postgres pool.
//!
//! ```
//! use sluice_postgres::ConnectOptions;
//!
//! let options = ConnectOptions::parse("postgres://app:s3cret@db.internal:5433/orders").unwrap();
//! assert_eq!(options.target(), "app@db.internal:5433/orders");
//! assert_eq!(
//!     options.redact("password authentication failed: s3cret"),
//!     "password authentication failed: <redacted>"
//! );
//! assert!(ConnectOptions::parse("postgres://app@db/orders?sslmode=bogus").is_err());
//! ```
#![warn(missing_docs)]

pub mod tls;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};
use std::fmt;
use std::time::Duration;
use tls::{MakeTls, TlsMode};
use tokio_postgres::config::Host;

/// The oldest supported server (`server_version_num`).
pub const SERVER_VERSION_MIN: i32 = 120_000;

/// Errors of connecting, with stable codes. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL could not be parsed.
    #[error("invalid PostgreSQL URL: {message}")]
    InvalidUrl {
        /// Why, redacted.
        message: String,
    },
    /// The URL asks for something not supported.
    #[error("unsupported PostgreSQL connection setting: {message}")]
    Unsupported {
        /// What.
        message: String,
    },
    /// The pool could not be built.
    #[error("cannot build a connection pool for {target}: {message}")]
    Pool {
        /// The server, without the password.
        target: String,
        /// Why, redacted.
        message: String,
    },
    /// Connecting or the first query failed.
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// The server, without the password.
        target: String,
        /// Why, redacted.
        message: String,
    },
    /// The TLS settings cannot be used (a CA file that cannot be read, no trusted CA).
    #[error("cannot set up TLS: {message}")]
    TlsSetup {
        /// Why.
        message: String,
    },
    /// The TLS handshake failed or the server offers no TLS where it is required.
    #[error("cannot connect to {target}: {message}")]
    Tls {
        /// The server, without the password.
        target: String,
        /// Why, with a hint.
        message: String,
    },
    /// The server is older than [`SERVER_VERSION_MIN`].
    #[error("{target} runs PostgreSQL {version}; Sluice needs 12 or later")]
    UnsupportedServer {
        /// The server.
        target: String,
        /// Its `server_version_num`.
        version: i32,
    },
}

impl ConnectError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            ConnectError::InvalidUrl { .. } => "postgres.invalid_url",
            ConnectError::Unsupported { .. } => "postgres.unsupported",
            ConnectError::Pool { .. } => "postgres.pool",
            ConnectError::Connect { .. } => "postgres.connect",
            ConnectError::TlsSetup { .. } => "postgres.tls_setup",
            ConnectError::Tls { .. } => "postgres.tls",
            ConnectError::UnsupportedServer { .. } => "postgres.unsupported_server",
        }
    }
}

/// A parsed connection URL (`postgres://user:password@host:port/database?options` or the
/// `key=value` form). The password lives only in the client library's configuration, whose
/// `Debug` output redacts it; [`ConnectOptions::target`] names the server in messages. The TLS
/// settings (`sslmode`, `sslrootcert`, `ssl`) are read by this crate ([`tls`]); a CA file is
/// read when the URL is parsed, so a bad one is reported before anything connects.
#[derive(Clone)]
pub struct ConnectOptions {
    config: tokio_postgres::Config,
    target: String,
    secrets: Vec<String>,
    tls_mode: TlsMode,
    make_tls: MakeTls,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ConnectOptions")
            .field("target", &self.target)
            .field("tls_mode", &self.tls_mode)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Parses a URL. Errors never repeat the URL or its password.
    pub fn parse(url: &str) -> Result<ConnectOptions, ConnectError> {
        let redacted = |error: ConnectError| match error {
            ConnectError::InvalidUrl { message } => ConnectError::InvalidUrl {
                message: redact_in(&message, &secrets_of(url)),
            },
            other => other,
        };
        let (rest, tls_settings) = tls::split_settings(url).map_err(redacted)?;
        let mut config: tokio_postgres::Config =
            rest.parse()
                .map_err(|error: tokio_postgres::Error| ConnectError::InvalidUrl {
                    message: redact_in(&error_chain(&error), &secrets_of(url)),
                })?;
        let make_tls = tls::configure(&tls_settings, &mut config)?;
        let mut secrets = secrets_of(url);
        if let Some(password) = config.get_password() {
            secrets.push(String::from_utf8_lossy(password).into_owned());
        }
        secrets.retain(|secret| !secret.is_empty());
        Ok(ConnectOptions {
            target: describe(&config),
            config,
            secrets,
            tls_mode: tls_settings.mode,
            make_tls,
        })
    }

    /// How connections use TLS.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls_mode
    }

    /// The TLS connector for [`ConnectOptions::config`]`.connect(..)` (also with `disable`).
    pub fn tls(&self) -> MakeTls {
        self.make_tls.clone()
    }

    /// Opens one connection outside any pool (a LISTEN connection, say). The connection
    /// must be polled (spawned) for the client to work.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tls::TlsStream>,
        ),
        ConnectError,
    > {
        self.config
            .connect(self.tls())
            .await
            .map_err(|error| self.connect_failure(&error))
    }

    /// A failure to connect as an error: [`ConnectError::Tls`] (with a hint) when TLS failed,
    /// else [`ConnectError::Connect`]; redacted.
    pub fn connect_failure(&self, error: &(dyn std::error::Error + 'static)) -> ConnectError {
        match tls::describe_failure(error, self.tls_mode) {
            Some(message) => ConnectError::Tls {
                target: self.target.clone(),
                message: self.redact(&message),
            },
            None => ConnectError::Connect {
                target: self.target.clone(),
                message: self.redact(&error_chain(error)),
            },
        }
    }

    /// The server as `user@host:port/database`, without the password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The client library's configuration (with the password).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// `message` with anything that may be this URL's password replaced by `<redacted>`.
    pub fn redact(&self, message: &str) -> String {
        redact_in(message, &self.secrets)
    }

    /// A database error as text: the error and its causes, redacted.
    pub fn describe_error(&self, error: &tokio_postgres::Error) -> String {
        self.redact(&error_chain(error))
    }
}

/// How the pool is built.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Connections at most.
    pub connections_max: usize,
    /// Longest wait for a connection, opening one included.
    pub acquire_timeout: Duration,
    /// Longest wait to open one connection, unless the URL sets `connect_timeout`.
    pub connect_timeout: Duration,
    /// `application_name`, unless the URL sets one.
    pub application_name: &'static str,
    /// Server settings for every pooled connection, as `(name, value)`, sent at connect (the
    /// `options` startup parameter, before any the URL gives, so the URL's win). Names and
    /// values are the caller's constants.
    pub session_settings: &'static [(&'static str, &'static str)],
}

/// Builds a LIFO pool (the most recently returned connection first, so connections the load
/// does not need go idle) and opens one connection to check the server version.
pub async fn connect_pool(
    options: &ConnectOptions,
    pool: &PoolOptions,
) -> Result<Pool, ConnectError> {
    let built = build_pool(options, pool)?;
    let client = built.get().await.map_err(|error| match &error {
        deadpool_postgres::PoolError::Backend(backend) => options.connect_failure(backend),
        other => ConnectError::Connect {
            target: options.target.clone(),
            message: options.redact(&pool_error_chain(other)),
        },
    })?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(|error| ConnectError::Connect {
            target: options.target.clone(),
            message: options.describe_error(&error),
        })?
        .get(0);
    if version < SERVER_VERSION_MIN {
        return Err(ConnectError::UnsupportedServer {
            target: options.target.clone(),
            version,
        });
    }
    Ok(built)
}

/// Builds the pool of [`connect_pool`] without opening a connection.
pub fn build_pool(options: &ConnectOptions, pool: &PoolOptions) -> Result<Pool, ConnectError> {
    let mut config = options.config.clone();
    if config.get_application_name().is_none() {
        config.application_name(pool.application_name);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(pool.connect_timeout);
    }
    if !pool.session_settings.is_empty() {
        let mut startup = String::new();
        for (name, value) in pool.session_settings {
            startup.push_str(&format!("-c {name}={value} "));
        }
        startup.push_str(config.get_options().unwrap_or_default());
        config.options(startup.trim_end());
    }
    let manager = Manager::from_config(
        config,
        options.tls(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pool.connections_max)
        .wait_timeout(Some(pool.acquire_timeout))
        .create_timeout(Some(pool.acquire_timeout))
        .recycle_timeout(Some(pool.acquire_timeout))
        .queue_mode(QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|error| ConnectError::Pool {
            target: options.target.clone(),
            message: options.redact(&error.to_string()),
        })
}

/// A pool error and its causes.
pub fn pool_error_chain(error: &deadpool_postgres::PoolError) -> String {
    error_chain(error)
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `user@host:port/database` of a configuration (first host and port).
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(default user)");
    let database = config.get_dbname().unwrap_or("(default database)");
    format!("{user}@{host}:{port}/{database}")
}

/// What in a URL may be a password: the userinfo's, and `password=` options.
fn secrets_of(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_string());
        }
    }
    for part in url.split(['?', '&', ' ']) {
        if let Some(password) = part.strip_prefix("password=") {
            secrets.push(password.trim_matches('\'').to_string());
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    secrets
}

fn redact_in(message: &str, secrets: &[String]) -> String {
    let mut message = message.to_string();
    for secret in secrets {
        message = message.replace(secret.as_str(), "<redacted>");
    }
    message
}

/// Removes anything that may be `url`'s password from `message`.
pub fn redact(message: &str, url: &str) -> String {
    redact_in(message, &secrets_of(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_targets_errors_and_debug() {
        let options =
            ConnectOptions::parse("postgres://ann:s3cret@db.example:5433/orders").unwrap();
        assert_eq!(options.target(), "ann@db.example:5433/orders");
        assert!(!format!("{options:?}").contains("s3cret"));
        assert_eq!(
            options.redact("auth failed for s3cret"),
            "auth failed for <redacted>"
        );
        let keyword = ConnectOptions::parse("host=h user=u password=hunter2 dbname=d").unwrap();
        assert_eq!(keyword.redact("x hunter2 y"), "x <redacted> y");
        let error = ConnectOptions::parse("postgres://u:pw0rd@h:notaport/d").unwrap_err();
        assert_eq!(error.code(), "postgres.invalid_url");
        assert!(!error.to_string().contains("pw0rd"), "{error}");
    }

    #[test]
    fn tls_settings_are_checked_when_parsed() {
        let options = ConnectOptions::parse("postgres://u@h/d?sslmode=require").unwrap();
        assert_eq!(options.tls_mode(), TlsMode::Require);
        let missing = ConnectOptions::parse("postgres://u:pw@h/d?sslrootcert=/nonexistent/ca.pem")
            .unwrap_err();
        assert_eq!(missing.code(), "postgres.tls_setup");
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );
        let unix = ConnectOptions::parse("host=/tmp sslmode=require").unwrap_err();
        assert_eq!(unix.code(), "postgres.unsupported");
        ConnectOptions::parse("host=/tmp user=u").unwrap();
        let bad = ConnectOptions::parse("postgres://u:pw0rd@h/d?sslmode=pw0rd").unwrap_err();
        assert!(!bad.to_string().contains("pw0rd"), "{bad}");
    }
}
