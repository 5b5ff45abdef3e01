//! How the S3 endpoint is reached safely: `ca_file` (a private CA added to
//! the HTTPS trust roots), a warning for a plain-`http://` endpoint on
//! another host, and certificate failures told apart from connection
//! trouble (a certificate that does not verify is not retried: it will not
//! verify on the next attempt either).

use std::collections::HashSet;
use std::error::Error as StdError;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use aws_sdk_s3::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::RetryClassifierPriority;
use rustls::pki_types::pem::PemObject as _;

use crate::error::{Error, Result};

/// An HTTPS client that trusts the system's roots and the certificates in
/// `ca_file` (PEM). The file must hold at least one certificate; the error
/// names it otherwise.
pub(super) fn http_client(ca_file: &Path) -> Result<SharedHttpClient> {
    let invalid = |reason: String| {
        Error::Other(format!(
            "repository.ca_file {}: {reason}",
            ca_file.display()
        ))
    };
    let pem = std::fs::read(ca_file).map_err(|e| invalid(format!("cannot be read: {e}")))?;
    let certificates = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("is not a PEM certificate bundle: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(
            "holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)".into(),
        ));
    }
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

/// Whether `endpoint` is plain `http://` to a host other than this one
/// (loopback: 127.0.0.0/8, ::1, `localhost`): requests and data then cross
/// a network unencrypted (the signature protects integrity, not secrecy).
pub fn plaintext_remote(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    if !url.scheme().eq_ignore_ascii_case("http") {
        return false;
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            !(name == "localhost" || name.ends_with(".localhost"))
        }
        None => false,
    }
}

/// Whether `what` is said for the first time in this process: a store is
/// opened again on every reload, and one warning says it.
pub(super) fn first_time(what: String) -> bool {
    static SAID: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SAID.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(what)
}

/// Logs `s3-endpoint-plaintext` once per process and endpoint.
pub(super) fn warn_if_plaintext(endpoint: &str) {
    if plaintext_remote(endpoint) && first_time(format!("plaintext {endpoint}")) {
        tracing::warn!(
            endpoint = %endpoint,
            hint = "use https:// (with repository.ca_file for a private CA), or keep the store on this host",
            "s3-endpoint-plaintext: the S3 endpoint is plain http:// on another host; backups and credentials' signatures cross the network unencrypted"
        );
    }
}

/// The TLS library's certificate complaint somewhere in `e`'s chain,
/// looking inside I/O errors too (whose `source()` skips their payload;
/// hyper-rustls nests the rustls error two I/O errors deep).
pub(super) fn certificate_failure<'a>(
    e: &'a (dyn StdError + 'static),
) -> Option<&'a rustls::Error> {
    if let Some(err @ rustls::Error::InvalidCertificate(_)) = e.downcast_ref::<rustls::Error>() {
        return Some(err);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &(dyn StdError + 'static) = inner;
        if let Some(found) = certificate_failure(inner) {
            return Some(found);
        }
    }
    e.source().and_then(certificate_failure)
}

/// The credentials error in `e`'s chain: the AWS chain found no usable
/// credentials (none set, a file that cannot be read), not a network fault.
pub(super) fn credentials_failure<'a>(
    e: &'a (dyn StdError + 'static),
) -> Option<&'a aws_credential_types::provider::error::CredentialsError> {
    e.downcast_ref()
        .or_else(|| e.source().and_then(credentials_failure))
}

/// Forbids retrying an attempt that failed on the server's certificate.
#[derive(Debug)]
pub(super) struct NoRetryOnBadCertificate;

impl ClassifyRetry for NoRetryOnBadCertificate {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.output_or_error() {
            Some(Err(err)) => match err.as_connector_error() {
                Some(connector) if certificate_failure(connector).is_some() => {
                    RetryAction::RetryForbidden
                }
                _ => RetryAction::NoActionIndicated,
            },
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "refugio: no retry on a bad certificate"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("http://10.0.0.5:3900", true)]
    #[case("http://minio.internal:9000", true)]
    #[case("http://[2001:db8::1]:9000", true)]
    #[case("http://127.0.0.1:3900", false)]
    #[case("http://127.8.9.10", false)]
    #[case("http://[::1]:9000", false)]
    #[case("http://localhost:9000", false)]
    #[case("http://LOCALHOST.:9000", false)]
    #[case("http://s3.localhost:9000", false)]
    #[case("https://minio.internal:9000", false)]
    #[case("HTTP://10.0.0.5", true)]
    #[case("not a url", false)]
    fn plaintext_endpoints_off_this_host(#[case] endpoint: &str, #[case] warned: bool) {
        assert_eq!(plaintext_remote(endpoint), warned, "{endpoint}");
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e = http_client(&missing).expect_err("missing");
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = http_client(&empty).expect_err("no certificate");
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        assert!(e.to_string().contains(&empty.display().to_string()), "{e}");
    }

    #[test]
    fn credentials_failures_are_found_in_a_dispatch_failure() {
        use aws_credential_types::provider::error::CredentialsError;
        use aws_smithy_runtime_api::client::result::{ConnectorError, SdkError};
        let none = CredentialsError::not_loaded("no credentials found in chain");
        let e: SdkError<std::io::Error, ()> =
            SdkError::dispatch_failure(ConnectorError::other(Box::new(none), None));
        assert!(credentials_failure(&e).is_some());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e: SdkError<std::io::Error, ()> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(refused)));
        assert!(credentials_failure(&e).is_none());
    }

    #[test]
    fn certificate_failures_are_found_inside_io_errors() {
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, bad);
        let io = std::io::Error::other(io);
        let wrapped = Error::Source {
            key: "k".into(),
            source: io,
        };
        assert!(certificate_failure(&wrapped).is_some());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(certificate_failure(&refused).is_none());
    }
}
