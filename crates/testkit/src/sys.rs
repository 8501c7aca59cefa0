//! Small process/OS helpers (no libc).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Effective uid of the current process, from `/proc/self/status`, falling
/// back to `id -u`. `None` if neither works.
pub(crate) fn effective_uid() -> Option<u32> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        if euid.is_some() {
            return euid;
        }
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Whether the current process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// Whether `path` is a regular file with an execute bit set.
pub(crate) fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Looks `name` up on `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// First executable among `candidates`, else `name` on `PATH`.
pub(crate) fn find_program(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| is_executable(p))
        .or_else(|| find_in_path(name))
}

/// Whether every ancestor directory of `path` (and `path` itself) is
/// searchable by "other" users. Ignores group membership and ACLs, so it may
/// give false negatives, never false positives for plain mode bits.
pub(crate) fn traversable_by_others(path: &Path) -> bool {
    path.ancestors().all(|dir| {
        dir.as_os_str().is_empty()
            || dir
                .metadata()
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false)
    })
}

/// Quotes `s` for a POSIX shell (single quotes).
pub(crate) fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Prepares the environment of a PostgreSQL tool invocation: drops every
/// `PG*` variable inherited from the caller (PGHOST, PGSSLMODE, PGDATA, ...)
/// so they cannot redirect the tool, and forces C messages so errors can be
/// matched and read.
pub(crate) fn sanitize_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C").env("LANG", "C");
}

/// Renders a command for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(
        cmd.get_args()
            .map(|a: &OsStr| a.to_string_lossy().into_owned()),
    );
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "'abc'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn uid_is_known() {
        assert!(effective_uid().is_some());
    }
}
