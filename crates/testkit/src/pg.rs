//! Throwaway PostgreSQL clusters.

use std::fmt;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::Signal;
use crate::sys;

/// Environment variable naming a directory holding `initdb` and `pg_ctl`.
const PG_BIN_ENV: &str = "SLUICE_PG_BIN";
/// Environment variable that turns "PostgreSQL unavailable" into a failure.
const REQUIRE_ENV: &str = "SLUICE_REQUIRE_POSTGRES";
/// Preferred binary directory (Debian/Ubuntu PostgreSQL 15).
const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Parent of the versioned Debian/Ubuntu binary directories.
const PG_LIB_ROOT: &str = "/usr/lib/postgresql";
/// OS account the server runs as when the test process is root.
const SERVER_USER: &str = "postgres";
/// Superuser role created by initdb (`-U`).
const SUPERUSER: &str = "postgres";
/// Address the server listens on.
const HOST: &str = "127.0.0.1";
/// How many ports to try when the picked one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Seconds `pg_ctl` waits for start/stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Longest temp base directory we use: the socket path
/// `<base>/sluice-pg-XXXXXX/sock/.s.PGSQL.NNNNN` (base + 37 bytes) must fit
/// in `sun_path` (108 bytes including the NUL).
const MAX_TEMP_BASE_LEN: usize = 64;
/// Server settings passed with `pg_ctl -o` (in addition to port/socket dir).
/// `fsync` stays on: durability is under test.
const SERVER_SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "max_connections=100",
    "max_prepared_transactions=64",
    "shared_buffers=128MB",
];

/// PostgreSQL cannot be used in this environment (binaries missing, the
/// server user is missing, `initdb` or the server start failed, ...).
///
/// Returned by [`PgCluster::start`]; [`pg_or_skip`] turns it into a skip.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct PgUnavailable {
    reason: String,
}

impl PgUnavailable {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Human-readable explanation of why PostgreSQL is unavailable.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl From<PgError> for PgUnavailable {
    fn from(e: PgError) -> Self {
        Self::new(e.to_string())
    }
}

/// Failure of an operation on a running [`PgCluster`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// A program could not be spawned, or an I/O operation around it failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (including the program, if any).
        what: String,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A program ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        /// The command line that failed.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (or stdout when stderr was empty), trimmed.
        output: String,
    },
    /// A database name was rejected before being sent to the server.
    #[error(
        "invalid database name {0:?}: use 1-63 ASCII letters, digits, '_' or '-', not starting with a digit or '-'"
    )]
    InvalidDatabaseName(String),
    /// A role name was rejected before being sent to the server.
    #[error("invalid role name {0:?}: use 1-63 lower-case ASCII letters or '_'")]
    InvalidRoleName(String),
}

/// The PostgreSQL programs a cluster is driven with.
#[derive(Debug, Clone)]
struct Binaries {
    bin_dir: PathBuf,
    initdb: PathBuf,
    pg_ctl: PathBuf,
    psql: PathBuf,
}

impl Binaries {
    /// `SLUICE_PG_BIN`, else `/usr/lib/postgresql/15/bin`, else the newest
    /// `/usr/lib/postgresql/*/bin`, else `initdb` on `PATH`.
    fn find() -> Result<Self, PgUnavailable> {
        let bin_dir = if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
            let dir = PathBuf::from(dir);
            if !has_server_tools(&dir) {
                return Err(PgUnavailable::new(format!(
                    "{PG_BIN_ENV}={} does not contain executable initdb and pg_ctl",
                    dir.display()
                )));
            }
            dir
        } else if has_server_tools(Path::new(PG15_BIN)) {
            PathBuf::from(PG15_BIN)
        } else if let Some(dir) = newest_versioned_bin_dir() {
            dir
        } else if let Some(dir) = sys::find_in_path("initdb")
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| has_server_tools(d))
        {
            dir
        } else {
            return Err(PgUnavailable::new(format!(
                "initdb/pg_ctl not found (looked in ${PG_BIN_ENV}, {PG15_BIN}, {PG_LIB_ROOT}/*/bin, PATH)"
            )));
        };
        let in_dir = bin_dir.join("psql");
        let psql = if sys::is_executable(&in_dir) {
            in_dir
        } else {
            sys::find_program("psql", &["/usr/bin/psql"]).ok_or_else(|| {
                PgUnavailable::new(format!(
                    "psql not found (looked in {}, /usr/bin, PATH)",
                    bin_dir.display()
                ))
            })?
        };
        Ok(Self {
            initdb: bin_dir.join("initdb"),
            pg_ctl: bin_dir.join("pg_ctl"),
            psql,
            bin_dir,
        })
    }
}

fn has_server_tools(dir: &Path) -> bool {
    sys::is_executable(&dir.join("initdb")) && sys::is_executable(&dir.join("pg_ctl"))
}

/// Newest `/usr/lib/postgresql/<version>/bin` that has the server tools.
fn newest_versioned_bin_dir() -> Option<PathBuf> {
    fs::read_dir(PG_LIB_ROOT)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let version: Vec<u32> = name
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_server_tools(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// How server-side commands (initdb, pg_ctl) are launched. PostgreSQL refuses
/// to run as root, so a root test process delegates to the `postgres` user.
#[derive(Debug, Clone)]
enum Launcher {
    /// Run directly as the current (non-root) user.
    Direct,
    /// `runuser -u postgres -- <cmd>`.
    Runuser(PathBuf),
    /// `su postgres -s /bin/sh -c '<cmd>'`.
    Su(PathBuf),
}

impl Launcher {
    fn detect() -> Result<Self, PgUnavailable> {
        if !sys::is_root() {
            return Ok(Self::Direct);
        }
        // Check the account exists, for a clear reason instead of a runuser error.
        if let Ok(out) = Command::new("id").arg("-u").arg(SERVER_USER).output()
            && !out.status.success()
        {
            return Err(PgUnavailable::new(format!(
                "running as root but there is no `{SERVER_USER}` user to run the server as"
            )));
        }
        if let Some(runuser) = sys::find_program("runuser", &["/usr/sbin/runuser", "/sbin/runuser"])
        {
            Ok(Self::Runuser(runuser))
        } else if let Some(su) = sys::find_program("su", &["/usr/bin/su", "/bin/su"]) {
            Ok(Self::Su(su))
        } else {
            Err(PgUnavailable::new(
                "running as root but neither runuser nor su was found to switch to the postgres user",
            ))
        }
    }

    fn switches_user(&self) -> bool {
        !matches!(self, Self::Direct)
    }

    /// Builds the command running `program args...` as the server user, in
    /// `cwd` (which the server user must be able to enter).
    fn command(&self, program: &Path, args: &[String], cwd: &Path) -> Command {
        let mut cmd = match self {
            Self::Direct => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Self::Runuser(runuser) => {
                let mut c = Command::new(runuser);
                c.args(["-u", SERVER_USER, "--"]).arg(program).args(args);
                c
            }
            Self::Su(su) => {
                let mut script = format!("exec {}", sys::shell_quote(&program.to_string_lossy()));
                for arg in args {
                    script.push(' ');
                    script.push_str(&sys::shell_quote(arg));
                }
                let mut c = Command::new(su);
                c.args([SERVER_USER, "-s", "/bin/sh", "-c"]).arg(script);
                c
            }
        };
        cmd.current_dir(cwd);
        sys::sanitize_env(&mut cmd);
        cmd
    }
}

/// Runs `cmd` to completion with stdin closed; returns stdout on success.
fn run(cmd: &mut Command) -> Result<String, PgError> {
    cmd.stdin(Stdio::null());
    let command = sys::describe(cmd);
    let out = cmd.output().map_err(|source| PgError::Io {
        what: format!("could not run `{command}`"),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let output = if stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        stderr
    };
    Err(PgError::Failed {
        command,
        status: out.status,
        output,
    })
}

fn io_err(what: impl fmt::Display) -> impl FnOnce(io::Error) -> PgError {
    move |source| PgError::Io {
        what: what.to_string(),
        source,
    }
}

/// Picks a currently free loopback port (it may be taken again by the time
/// the server binds it; callers retry).
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((HOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Directory the cluster's temp dir is created in: [`std::env::temp_dir`] if
/// suitable, else `/tmp`. Suitable means short enough for the Unix socket
/// path and, when the server runs as another user, searchable by it.
fn temp_base(switches_user: bool) -> PathBuf {
    let base = std::env::temp_dir();
    let short = base.as_os_str().len() <= MAX_TEMP_BASE_LEN;
    if short && (!switches_user || sys::traversable_by_others(&base)) {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// A throwaway PostgreSQL cluster listening on `127.0.0.1:<free port>`.
///
/// Created with `initdb -U postgres -A trust` in a fresh temporary directory,
/// so the `postgres` superuser connects without a password. Runs with
/// `max_prepared_transactions=64`, `max_connections=100`,
/// `shared_buffers=128MB` and `fsync` left on. When the test process is root
/// the server runs as the `postgres` OS user.
///
/// Dropping the value stops the server (`pg_ctl stop -m immediate`, falling
/// back to signalling the postmaster) and deletes the directory. Drop also
/// runs when a test panics; it does not run if the process is killed or
/// exits via `std::process::exit`, or if the cluster is kept in a `static`.
#[derive(Debug)]
pub struct PgCluster {
    /// Removed by `TempDir`'s own drop, which runs after `Drop::drop` has
    /// stopped the server.
    dir: TempDir,
    bins: Binaries,
    launcher: Launcher,
    port: u16,
    /// Server settings beyond [`SERVER_SETTINGS`] (`ssl=on` and its files).
    settings: Vec<String>,
}

/// The certificate files of a cluster started with [`PgCluster::start_with_tls`], all PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// Another CA, which signed nothing the server uses.
    pub other_ca: PathBuf,
    /// The host name the server's certificate names (`localhost`; not `127.0.0.1`).
    pub host_name: &'static str,
}

impl PgCluster {
    /// Initializes and starts a new cluster.
    ///
    /// Takes a couple of seconds (mostly `initdb`). Fails with
    /// [`PgUnavailable`] if the binaries or the server user are missing or
    /// the cluster cannot be initialized or started; the reason includes the
    /// failing command's output or the tail of the server log.
    pub fn start() -> Result<Self, PgUnavailable> {
        Self::start_with(Vec::new(), |_| Ok(()))
    }

    /// Starts a cluster with `ssl=on` and a certificate for `localhost` signed by a CA made
    /// for it (with `openssl` from the system). The cluster also accepts plain connections.
    pub fn start_with_tls() -> Result<(Self, TlsFiles), PgUnavailable> {
        let mut files = None;
        let settings = vec![
            "ssl=on".to_owned(),
            "ssl_cert_file=server.crt".to_owned(),
            "ssl_key_file=server.key".to_owned(),
        ];
        let cluster = Self::start_with(settings, |cluster| {
            files = Some(cluster.make_certificates()?);
            Ok(())
        })?;
        let files = files.expect("made before the server starts");
        Ok((cluster, files))
    }

    /// Adds a login role with a password that must be given (SCRAM over TCP; every other
    /// role keeps trust authentication), and reloads the server's configuration.
    pub fn add_password_role(&self, role: &str, password: &str) -> Result<(), PgError> {
        let valid = !role.is_empty()
            && role.len() <= 63
            && role.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !valid {
            return Err(PgError::InvalidRoleName(role.to_owned()));
        }
        self.psql(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN PASSWORD '{}'",
            password.replace('\'', "''")
        ))?;
        let hba = self.data_dir().join("pg_hba.conf");
        let existing = fs::read_to_string(&hba)
            .map_err(io_err(format!("could not read {}", hba.display())))?;
        let line = format!(
            "host all {role} 127.0.0.1/32 scram-sha-256\nhost all {role} ::1/128 scram-sha-256\n"
        );
        fs::write(&hba, format!("{line}{existing}"))
            .map_err(io_err(format!("could not write {}", hba.display())))?;
        self.psql("SELECT pg_reload_conf()")?;
        // The postmaster rereads pg_hba.conf on SIGHUP, asynchronously.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    fn make_certificates(&self) -> Result<TlsFiles, PgError> {
        let dir = self.dir.path().join("tls");
        fs::create_dir(&dir).map_err(io_err(format!("could not create {}", dir.display())))?;
        let openssl = |args: &[&str]| -> Result<(), PgError> {
            run(Command::new("openssl").args(args).current_dir(&dir)).map(|_| ())
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=sluice test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ])?;
        }
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(io_err("could not write server.ext"))?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ])?;
        let data = self.data_dir();
        for name in ["server.crt", "server.key"] {
            let to = data.join(name);
            fs::copy(dir.join(name), &to).map_err(io_err(format!("could not copy {name}")))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
                .map_err(io_err(format!("could not chmod {name}")))?;
            if self.launcher.switches_user() {
                run(Command::new("chown")
                    .arg(format!("{SERVER_USER}:"))
                    .arg(&to))?;
            }
        }
        Ok(TlsFiles {
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            host_name: "localhost",
        })
    }

    fn start_with(
        settings: Vec<String>,
        before_start: impl FnOnce(&Self) -> Result<(), PgError>,
    ) -> Result<Self, PgUnavailable> {
        let bins = Binaries::find()?;
        let launcher = Launcher::detect()?;
        let base = temp_base(launcher.switches_user());
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir_in(&base)
            .map_err(|e| {
                PgUnavailable::new(format!(
                    "could not create a temporary directory in {}: {e}",
                    base.display()
                ))
            })?;
        // From here on, dropping `cluster` stops any server and removes `dir`.
        let cluster = Self {
            dir,
            bins,
            launcher,
            port: 0,
            settings,
        };
        let root = cluster.dir.path();
        if root.to_str().is_none() {
            return Err(PgUnavailable::new(format!(
                "temporary directory path is not UTF-8: {}",
                root.display()
            )));
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("could not chmod {}", root.display())))?;
        let sock = cluster.socket_dir();
        fs::create_dir(&sock).map_err(io_err(format!("could not create {}", sock.display())))?;
        if cluster.launcher.switches_user() {
            run(Command::new("chown")
                .args(["-R", &format!("{SERVER_USER}:")])
                .arg(root))?;
        }
        cluster.initdb()?;
        before_start(&cluster)?;
        cluster.start_on_free_port()
    }

    fn initdb(&self) -> Result<(), PgError> {
        let args = [
            "-D".to_owned(),
            self.data_dir_str(),
            "-U".to_owned(),
            SUPERUSER.to_owned(),
            "-A".to_owned(),
            "trust".to_owned(),
            "--no-sync".to_owned(),
            "-E".to_owned(),
            "UTF8".to_owned(),
            // Deterministic collation and English server messages.
            "--locale=C".to_owned(),
        ];
        run(&mut self
            .launcher
            .command(&self.bins.initdb, &args, self.dir.path()))?;
        Ok(())
    }

    fn start_on_free_port(mut self) -> Result<Self, PgUnavailable> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port().map_err(|e| {
                PgUnavailable::new(format!("could not pick a free loopback port: {e}"))
            })?;
            self.port = port;
            let log_before = self.log_len();
            match self.pg_ctl_start() {
                Ok(()) => return Ok(self),
                Err(e) => {
                    // pg_ctl may have timed out with a server still coming up.
                    self.stop_server();
                    let log = self.log_since(log_before);
                    let reason = format!("{e}\nserver log:\n{}", tail(&log, 20));
                    if !log.contains("Address already in use") {
                        return Err(PgUnavailable::new(reason));
                    }
                    last_error = Some(reason);
                }
            }
        }
        Err(PgUnavailable::new(format!(
            "no free port after {PORT_ATTEMPTS} attempts; last error: {}",
            last_error.unwrap_or_default()
        )))
    }

    fn pg_ctl_start(&self) -> Result<(), PgError> {
        let mut options = format!(
            "-p {} -k {}",
            self.port,
            sys::shell_quote(&self.socket_dir().to_string_lossy())
        );
        for setting in SERVER_SETTINGS
            .iter()
            .copied()
            .chain(self.settings.iter().map(String::as_str))
        {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let args = [
            "-D".to_owned(),
            self.data_dir_str(),
            "-l".to_owned(),
            self.log_path().to_string_lossy().into_owned(),
            "-w".to_owned(),
            "-t".to_owned(),
            PG_CTL_TIMEOUT_SECS.to_owned(),
            "-o".to_owned(),
            options,
            "start".to_owned(),
        ];
        run(&mut self
            .launcher
            .command(&self.bins.pg_ctl, &args, self.dir.path()))?;
        Ok(())
    }

    fn pg_ctl_stop(&self) -> Result<(), PgError> {
        let args = [
            "-D".to_owned(),
            self.data_dir_str(),
            "-m".to_owned(),
            "immediate".to_owned(),
            "-w".to_owned(),
            "-t".to_owned(),
            PG_CTL_TIMEOUT_SECS.to_owned(),
            "stop".to_owned(),
        ];
        run(&mut self
            .launcher
            .command(&self.bins.pg_ctl, &args, self.dir.path()))?;
        Ok(())
    }

    /// Best-effort immediate stop; never panics. Falls back to sending
    /// SIGQUIT (immediate shutdown) to the postmaster if pg_ctl fails.
    fn stop_server(&self) {
        let pid_file = self.data_dir().join("postmaster.pid");
        if !pid_file.exists() {
            return;
        }
        let Err(e) = self.pg_ctl_stop() else {
            return;
        };
        eprintln!("sluice-testkit: pg_ctl stop failed: {e}");
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = pid {
            let _ = crate::process::signal_pid(pid, Signal::QUIT);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Simulates a crash and recovery: stops the server with
    /// `pg_ctl stop -m immediate` (no shutdown checkpoint, so the restart
    /// replays WAL) and starts it again on the same port. Prepared
    /// transactions and committed data survive; sessions are dropped.
    pub fn crash_and_restart(&self) -> Result<(), PgError> {
        self.pg_ctl_stop()?;
        self.pg_ctl_start()
    }

    /// TCP port the server listens on (loopback only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// Superuser role name: `"postgres"` (trust authentication, no password).
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// Connection URL of the default `postgres` database:
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Connection URL of `database` on this cluster (the name is inserted
    /// verbatim; names accepted by [`PgCluster::create_database`] need no
    /// escaping).
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{database}", self.port)
    }

    /// Creates database `name` and returns its connection URL.
    ///
    /// `name` must be 1-63 ASCII letters, digits, `_` or `-`, not starting
    /// with a digit or `-`; it is quoted, so case is preserved.
    pub fn create_database(&self, name: &str) -> Result<String, PgError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && !name.starts_with(|c: char| c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(PgError::InvalidDatabaseName(name.to_owned()));
        }
        self.psql(&format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url_for(name))
    }

    /// Runs `sql` against the `postgres` database; see [`PgCluster::psql_in`].
    pub fn psql(&self, sql: &str) -> Result<String, PgError> {
        self.psql_in("postgres", sql)
    }

    /// Runs `sql` with `psql -X -q -At -v ON_ERROR_STOP=1` against `database`
    /// and returns its stdout without the trailing newline.
    ///
    /// `sql` is run as a script file: it may hold several statements, each
    /// run in its own transaction unless wrapped in `BEGIN`/`COMMIT`
    /// (so `CREATE DATABASE` works); execution stops at the first error.
    /// Output is unaligned, tuples only (`|`-separated columns, one row per
    /// line), and command tags are suppressed, so `SHOW x` yields just the
    /// value.
    pub fn psql_in(&self, database: &str, sql: &str) -> Result<String, PgError> {
        let script = tempfile::Builder::new()
            .prefix("psql-")
            .suffix(".sql")
            .tempfile_in(self.dir.path())
            .map_err(io_err("could not create a psql script file"))?;
        fs::write(script.path(), sql).map_err(io_err(format!(
            "could not write {}",
            script.path().display()
        )))?;
        let mut cmd = Command::new(&self.bins.psql);
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url_for(database))
            .arg("-f")
            .arg(script.path());
        sys::sanitize_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        let out = run(&mut cmd)?;
        Ok(out.strip_suffix('\n').unwrap_or(&out).to_owned())
    }

    /// The cluster's temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`<dir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The Unix socket directory (`<dir>/sock`).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The server log file (`<dir>/log`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The directory `initdb`/`pg_ctl` were taken from.
    pub fn bin_dir(&self) -> &Path {
        &self.bins.bin_dir
    }

    /// Current contents of the server log (empty if unreadable), for
    /// diagnosing test failures.
    pub fn server_log(&self) -> String {
        self.log_since(0)
    }

    fn data_dir_str(&self) -> String {
        self.data_dir().to_string_lossy().into_owned()
    }

    fn log_len(&self) -> u64 {
        fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_server();
        // `self.dir` (a TempDir) is removed right after this returns, even
        // if stopping failed.
    }
}

/// Last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether tests must fail (rather than skip) when PostgreSQL is unavailable:
/// `SLUICE_REQUIRE_POSTGRES` is `1` or `true` (case-insensitive).
pub fn require_postgres() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| {
        let v = v.trim();
        v == "1" || v.eq_ignore_ascii_case("true")
    })
}

/// Starts a [`PgCluster`] for test suite `suite`, or skips.
///
/// On failure: if [`require_postgres`] is true, panics with the reason;
/// otherwise prints `SKIPPED <suite>: PostgreSQL not available (<reason>)` to
/// stderr and returns `None`, and the caller should return early.
///
/// # Panics
///
/// When PostgreSQL is unavailable and `SLUICE_REQUIRE_POSTGRES` is set.
pub fn pg_or_skip(suite: &str) -> Option<PgCluster> {
    or_skip(suite, PgCluster::start())
}

/// [`pg_or_skip`] for a cluster with TLS ([`PgCluster::start_with_tls`]).
pub fn pg_tls_or_skip(suite: &str) -> Option<(PgCluster, TlsFiles)> {
    or_skip(suite, PgCluster::start_with_tls())
}

fn or_skip<T>(suite: &str, started: Result<T, PgUnavailable>) -> Option<T> {
    match started {
        Ok(cluster) => Some(cluster),
        Err(e) if require_postgres() => {
            panic!("{suite}: PostgreSQL required ({REQUIRE_ENV} is set) but not available: {e}")
        }
        Err(e) => {
            // Straight to the stderr handle: libtest captures `eprintln!` of passing tests,
            // and a skip must be visible in a plain `cargo test` run.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {suite}: PostgreSQL not available ({e})"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `echo` through `launcher` and checks user and argument quoting.
    fn check_launcher(launcher: &Launcher) {
        let args = [
            "-c".to_owned(),
            "id -un; printf '%s\\n' \"$1\"".to_owned(),
            "sh".to_owned(),
            "it's a $HOME \"x\"".to_owned(),
        ];
        let out = run(&mut launcher.command(Path::new("/bin/sh"), &args, Path::new("/"))).unwrap();
        assert_eq!(out, format!("{SERVER_USER}\nit's a $HOME \"x\"\n"));
    }

    #[test]
    fn su_and_runuser_launchers_switch_user() {
        if !sys::is_root() || Launcher::detect().is_err() {
            eprintln!("SKIPPED launcher test: not root or no postgres user");
            return;
        }
        if let Some(su) = sys::find_program("su", &["/usr/bin/su", "/bin/su"]) {
            check_launcher(&Launcher::Su(su));
        }
        if let Some(runuser) = sys::find_program("runuser", &["/usr/sbin/runuser"]) {
            check_launcher(&Launcher::Runuser(runuser));
        }
    }

    #[test]
    fn newest_version_dir_parses() {
        // Must not panic whatever /usr/lib/postgresql holds.
        let _ = newest_versioned_bin_dir();
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
