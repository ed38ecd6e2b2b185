//! TLS on both legs, with rustls.
//!
//! Towards clients Custos is a TLS server (optionally verifying client
//! certificates, the basis of mTLS identity); towards brokers it is a TLS
//! client that verifies the broker against a configured CA. Errors name the
//! configuration key whose file is wrong.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClientTlsConfig, ServerTlsConfig};

/// A TLS file or setting that could not be used, naming its config key.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct TlsError {
    /// Config key at fault.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

fn tls_err(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        key,
        message: message.into(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(key, format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(key, format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(
            key,
            format!("no certificate in {}", path.display()),
        ));
    }
    Ok(certs)
}

fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        tls_err(
            key,
            format!("no usable private key in {}: {e}", path.display()),
        )
    })
}

fn load_roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots
            .add(cert)
            .map_err(|e| tls_err(key, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Builds the acceptor for client connections.
pub fn acceptor(cfg: &ServerTlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs("listen.tls.cert", &cfg.cert)?;
    let key = load_key("listen.tls.key", &cfg.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("listen.tls", e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots("listen.tls.client_ca", ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = if cfg.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| tls_err("listen.tls.client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        tls_err(
            "listen.tls.key",
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connector to brokers, with the name to verify them against (if fixed).
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// Builds the connector from config.
    pub fn new(cfg: &ClientTlsConfig) -> Result<Self, TlsError> {
        let roots = load_roots("upstream.tls.ca", &cfg.ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("upstream.tls", e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    load_certs("upstream.tls.cert", cert)?,
                    load_key("upstream.tls.key", key)?,
                )
                .map_err(|e| tls_err("upstream.tls.key", e.to_string()))?,
            _ => builder.with_no_client_auth(),
        };
        let server_name = cfg
            .server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_string())
                    .map_err(|e| tls_err("upstream.tls.server_name", e.to_string()))
            })
            .transpose()?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The connector.
    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// The name to verify a broker reached at `host` against.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => ServerName::try_from(host.to_string()).map_err(|e| {
                tls_err(
                    "upstream.tls.server_name",
                    format!("broker host {host:?}: {e}"),
                )
            }),
        }
    }
}
