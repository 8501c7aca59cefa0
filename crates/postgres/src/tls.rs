//! TLS with rustls (the ring provider): the `sslmode`, `sslrootcert` and `ssl` connection
//! settings, read out of the URL before the client library parses the rest, and the rustls
//! configuration each mode needs.
//!
//! | `sslmode`     | encrypted                  | certificate checked                      |
//! |---------------|----------------------------|------------------------------------------|
//! | `disable`     | no                         | -                                        |
//! | `prefer`      | if the server offers it    | no (libpq's default, and ours)           |
//! | `require`     | yes                        | no; chain only when `sslrootcert` is set |
//! | `verify-ca`   | yes                        | chain                                    |
//! | `verify-full` | yes                        | chain and host name                      |
//!
//! Asking for TLS without a mode (`sslrootcert=...` or `ssl=true` alone) means `verify-full`.
//! `sslrootcert` names a PEM file of trusted CA certificates, or `system` for the operating
//! system's store, which is also what the checking modes use without it.

use crate::ConnectError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::{Host, SslMode};

/// The `MakeTlsConnect` every Sluice connection uses (whatever the mode: with `disable` it is
/// never asked to connect).
pub type MakeTls = tokio_postgres_rustls::MakeRustlsConnect;

/// The stream of a connection made with [`MakeTls`].
pub type TlsStream =
    <MakeTls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// How a connection uses TLS (the `sslmode` setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without checking its certificate.
    Prefer,
    /// TLS or no connection; the certificate is not checked unless `sslrootcert` is set (then
    /// its chain is, as libpq does).
    Require,
    /// TLS, and the certificate must chain to a trusted CA.
    VerifyCa,
    /// TLS, the certificate must chain to a trusted CA and name the host connected to.
    VerifyFull,
}

impl TlsMode {
    /// The setting's value, as in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<TlsMode, ConnectError> {
        Ok(match value {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(ConnectError::InvalidUrl {
                    message: format!(
                        "sslmode {other:?} is not one of disable, prefer, require, verify-ca, \
                         verify-full"
                    ),
                });
            }
        })
    }
}

/// Where trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCerts {
    /// The operating system's store.
    System,
    /// A PEM file.
    File(PathBuf),
}

/// The TLS settings read out of a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: TlsMode,
    pub(crate) root_certs: Option<RootCerts>,
}

/// Splits the TLS settings off `url` (either form), returning the rest for the client library.
pub(crate) fn split_settings(url: &str) -> Result<(String, TlsSettings), ConnectError> {
    let mut mode = None;
    let mut root_certs = None;
    let mut ssl = None;
    let mut take = |key: &str, value: String| -> Result<bool, ConnectError> {
        match key {
            "sslmode" => mode = Some(TlsMode::parse(&value)?),
            "sslrootcert" => {
                root_certs = Some(if value == "system" {
                    RootCerts::System
                } else {
                    RootCerts::File(PathBuf::from(value))
                })
            }
            "ssl" => {
                ssl = Some(match value.as_str() {
                    "true" | "1" | "on" => true,
                    "false" | "0" | "off" => false,
                    other => {
                        return Err(ConnectError::InvalidUrl {
                            message: format!("ssl {other:?} is not true or false"),
                        });
                    }
                })
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url_form(url, &mut take)?
    } else {
        split_keyword_form(url, &mut take)?
    };
    let mode = match (mode, ssl) {
        (Some(mode), _) => mode,
        (None, Some(false)) => TlsMode::Disable,
        (None, Some(true)) => TlsMode::VerifyFull,
        (None, None) if root_certs.is_some() => TlsMode::VerifyFull,
        (None, None) => TlsMode::Prefer,
    };
    Ok((rest, TlsSettings { mode, root_certs }))
}

type Take<'a> = dyn FnMut(&str, String) -> Result<bool, ConnectError> + 'a;

fn split_url_form(url: &str, take: &mut Take<'_>) -> Result<String, ConnectError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_string());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !take(&percent_decode(key)?, percent_decode(value)?)? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn percent_decode(text: &str) -> Result<String, ConnectError> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let byte = text
                .get(at + 1..at + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| ConnectError::InvalidUrl {
                    message: "a bad percent-encoding in an option".into(),
                })?;
            decoded.push(byte);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| ConnectError::InvalidUrl {
        message: "an option is not UTF-8 once decoded".into(),
    })
}

/// The `key=value` form: `key = value` pairs separated by white space; a value may be quoted
/// with `'`, with `\'` and `\\` inside. Pairs that are not TLS settings are kept as written.
fn split_keyword_form(text: &str, take: &mut Take<'_>) -> Result<String, ConnectError> {
    let unterminated = || ConnectError::InvalidUrl {
        message: "an unterminated quoted value".into(),
    };
    let mut kept = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            // Not a pair: leave it to the client library to reject.
            kept.push(text[start..].to_string());
            break;
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next().ok_or_else(unterminated)? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(chars.next().ok_or_else(unterminated)?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        let end = chars.peek().map_or(text.len(), |&(at, _)| at);
        if !take(&key, value)? {
            kept.push(text[start..end].trim_end().to_string());
        }
    }
    Ok(kept.join(" "))
}

/// Applies `settings` to the client library's configuration and builds the connector.
pub(crate) fn configure(
    settings: &TlsSettings,
    config: &mut tokio_postgres::Config,
) -> Result<MakeTls, ConnectError> {
    let unix_only = !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, Host::Unix(_)));
    let mode = match settings.mode {
        // A Unix socket is local; PostgreSQL does not offer TLS on one.
        TlsMode::Prefer if unix_only => TlsMode::Disable,
        mode if mode != TlsMode::Disable && unix_only => {
            return Err(ConnectError::Unsupported {
                message: format!(
                    "sslmode={} over a Unix socket: PostgreSQL offers no TLS there; use \
                     sslmode=disable or a TCP host",
                    mode.as_str()
                ),
            });
        }
        mode => mode,
    };
    config.ssl_mode(match mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_setup(format!("rustls: {error}")))?;
    let check = match (mode, &settings.root_certs) {
        (TlsMode::Disable | TlsMode::Prefer, _) | (TlsMode::Require, None) => Check::Nothing,
        (TlsMode::Require | TlsMode::VerifyCa, _) => Check::Chain,
        (TlsMode::VerifyFull, _) => Check::ChainAndName,
    };
    let client = match check {
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked { provider }))
            .with_no_client_auth(),
        Check::Chain | Check::ChainAndName => {
            let roots = Arc::new(root_store(settings.root_certs.as_ref())?);
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|error| tls_setup(format!("rustls: {error}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = if check == Check::Chain {
                Arc::new(ChainOnly { inner: verifier })
            } else {
                verifier
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(MakeTls::new(client))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn tls_setup(message: String) -> ConnectError {
    ConnectError::TlsSetup { message }
}

fn root_store(source: Option<&RootCerts>) -> Result<RootCertStore, ConnectError> {
    let mut store = RootCertStore::empty();
    match source {
        Some(RootCerts::File(path)) => {
            let shown = path.display();
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                .map_err(|error| tls_setup(format!("cannot read sslrootcert {shown}: {error}")))?;
            let (added, _) = store.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(tls_setup(format!(
                    "sslrootcert {shown} holds no usable CA certificate"
                )));
            }
        }
        Some(RootCerts::System) | None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(tls_setup(
                    "the system has no trusted CA certificates; name a CA file with \
                     sslrootcert=PATH"
                        .into(),
                ));
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require` without a CA: the handshake's signatures are checked, the
/// certificate is not (encryption against passive eavesdroppers only, as in libpq).
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the host name is not.
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for ChainOnly {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ChainOnly")
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS failure in `error`'s chain, as a sentence with a hint, or `None`.
pub(crate) fn describe_failure(
    error: &(dyn std::error::Error + 'static),
    mode: TlsMode,
) -> Option<String> {
    let mut current = Some(error);
    let mut tls_named = false;
    while let Some(error) = current {
        if let Some(rustls_error) = error.downcast_ref::<rustls::Error>() {
            return Some(explain(rustls_error, mode));
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(rustls_error) = io.get_ref().and_then(|inner| inner.downcast_ref())
        {
            return Some(explain(rustls_error, mode));
        }
        let text = error.to_string();
        if text.contains("server does not support TLS") {
            return Some(format!(
                "the server does not offer TLS, which sslmode={} requires (is ssl on?)",
                mode.as_str()
            ));
        }
        tls_named |= text.contains("TLS");
        current = error.source();
    }
    tls_named.then(|| format!("TLS failed: {}", crate::error_chain(error)))
}

fn explain(error: &rustls::Error, mode: TlsMode) -> String {
    let hint = match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            " (the server's certificate does not name the host connected to; connect by a name \
              it lists)"
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the server's certificate is not signed by a CA in sslrootcert)"
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired) => {
            " (the server's certificate has expired)"
        }
        _ => "",
    };
    format!(
        "TLS handshake failed (sslmode={}): {error}{hint}",
        mode.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsSettings) {
        split_settings(url).unwrap()
    }

    #[test]
    fn settings_come_out_of_the_url_form() {
        let (rest, settings) =
            split("postgres://u:p@h/d?application_name=a&sslmode=verify-ca&sslrootcert=%2Fca.pem");
        assert_eq!(rest, "postgres://u:p@h/d?application_name=a");
        assert_eq!(settings.mode, TlsMode::VerifyCa);
        assert_eq!(
            settings.root_certs,
            Some(RootCerts::File(PathBuf::from("/ca.pem")))
        );
        let (rest, settings) = split("postgresql://h/d");
        assert_eq!(rest, "postgresql://h/d");
        assert_eq!(settings.mode, TlsMode::Prefer);
        assert_eq!(split("postgres://h/d?sslmode=require").0, "postgres://h/d");
    }

    #[test]
    fn settings_come_out_of_the_keyword_form() {
        let (rest, settings) =
            split("host=h  sslrootcert = '/my ca\\'s.pem' user=u password='a b' sslmode=require");
        assert_eq!(rest, "host=h user=u password='a b'");
        assert_eq!(settings.mode, TlsMode::Require);
        assert_eq!(
            settings.root_certs,
            Some(RootCerts::File(PathBuf::from("/my ca's.pem")))
        );
        assert!(split_settings("host=h sslrootcert='x").is_err());
    }

    #[test]
    fn asking_for_tls_without_a_mode_means_verify_full() {
        assert_eq!(split("postgres://h/d?ssl=true").1.mode, TlsMode::VerifyFull);
        assert_eq!(
            split("postgres://h/d?sslrootcert=/ca.pem").1.mode,
            TlsMode::VerifyFull
        );
        assert_eq!(
            split("host=h sslrootcert=system").1.root_certs,
            Some(RootCerts::System)
        );
        assert_eq!(split("postgres://h/d?ssl=false").1.mode, TlsMode::Disable);
        let error = split_settings("postgres://h/d?sslmode=strict").unwrap_err();
        assert_eq!(error.code(), "postgres.invalid_url");
    }
}
