//! Getting a JSON Web Key Set: from a file, or by HTTP(S) GET.
//!
//! The fetch is deliberately small: one HTTP/1.0 GET (so the server answers
//! with a plain body, never chunked), no redirects, a size cap and a time
//! limit, over rustls for `https`. That is all a JWKS endpoint needs, and it
//! avoids pulling a full HTTP client into a security gateway. Plain `http` is
//! accepted only for loopback hosts (tests, local sidecars): keys fetched in
//! the clear from elsewhere could be replaced by anyone on the path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Why a key set could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read JWKS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The document is not a JWKS.
    #[error("JWKS from {source_name} is not a valid key set: {message}")]
    Parse {
        /// File path or URL.
        source_name: String,
        /// Why.
        message: String,
    },
    /// The URL is not one Custos fetches from.
    #[error("JWKS URL `{url}`: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The fetch failed (connect, TLS, timeout, HTTP status, size).
    #[error("cannot fetch JWKS from {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The CA file for the JWKS server is unusable.
    #[error("JWKS CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A parsed `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    /// Whether TLS is used.
    pub https: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    original: String,
}

impl std::fmt::Display for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.original)
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl JwksUrl {
    /// Parses and checks a JWKS URL.
    pub fn parse(url: &str) -> Result<Self, JwksError> {
        let bad = |reason: &str| JwksError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("must start with https:// (or http:// for loopback)"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| bad("unclosed `[` in host"))?;
            let port = v6[end + 1..].strip_prefix(':');
            (&v6[..end], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if https => 443,
            None => 80,
        };
        if !https && !is_loopback(host) {
            return Err(bad(
                "plain http is only allowed to a loopback host; use https",
            ));
        }
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad("whitespace in path"));
        }
        Ok(Self {
            https,
            host: host.to_string(),
            port,
            path: path.to_string(),
            original: url.to_string(),
        })
    }
}

/// Parses a JWKS document.
pub fn parse_jwks(text: &[u8], source_name: &str) -> Result<JwkSet, JwksError> {
    serde_json::from_slice(text).map_err(|e| JwksError::Parse {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })
}

/// Reads a JWKS file.
pub fn load_file(path: &Path) -> Result<JwkSet, JwksError> {
    let text = std::fs::read(path).map_err(|source| JwksError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_jwks(&text, &path.display().to_string())
}

/// TLS settings for fetching over https.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, JwksError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_err = |reason: String| JwksError::Ca {
                path: path.to_path_buf(),
                reason,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_err(format!("bad PEM: {e}")))?;
            if certs.is_empty() {
                return Err(ca_err("no certificate in the file".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ca_err(format!("unusable CA certificate: {e}")))?;
            }
        }
        None => {
            // The platform's trust store, as a browser would use for an IdP.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JwksError::Fetch {
            url: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Fetches and parses a JWKS over HTTP(S), within `timeout`.
pub async fn fetch(
    url: &JwksUrl,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<JwkSet, JwksError> {
    let fetch_err = |reason: String| JwksError::Fetch {
        url: url.to_string(),
        reason,
    };
    let body = tokio::time::timeout(timeout, get(url, tls))
        .await
        .map_err(|_| fetch_err(format!("no answer within {} ms", timeout.as_millis())))?
        .map_err(fetch_err)?;
    parse_jwks(&body, &url.to_string())
}

async fn get(url: &JwksUrl, tls: &Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if url.https {
        let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(stream, url).await
    } else {
        exchange(tcp, url).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    url: &JwksUrl,
) -> Result<Vec<u8>, String> {
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json, application/jwk-set+json\r\nUser-Agent: custos\r\nConnection: close\r\n\r\n",
        url.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    // Headers plus the largest body, plus one byte to detect overflow.
    let limit = (MAX_JWKS_BYTES + 16 * 1024 + 1) as u64;
    let read = (&mut stream).take(limit).read_to_end(&mut response).await;
    // Servers often close TLS without close_notify after a `Connection:
    // close` answer; what was read is still usable when complete.
    if let Err(e) = read {
        if response.is_empty() {
            return Err(format!("receive: {e}"));
        }
    }
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<Vec<u8>, String> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete HTTP response")?;
    let head = std::str::from_utf8(&response[..head_end]).map_err(|_| "non-UTF-8 HTTP headers")?;
    let body = &response[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad HTTP status line {status_line:?}"))?;
    if status != 200 {
        return Err(format!("HTTP status {status} (redirects are not followed)"));
    }
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(format!("unsupported Transfer-Encoding {value}"));
        }
    }
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("key set larger than {MAX_JWKS_BYTES} bytes"));
    }
    match content_length {
        Some(n) if body.len() < n => {
            Err("connection closed before the whole key set arrived".into())
        }
        Some(n) => Ok(body[..n].to_vec()),
        None => Ok(body.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rules() {
        let u = JwksUrl::parse("https://idp.example.com/.well-known/jwks.json").expect("https");
        assert_eq!(
            (u.https, u.host.as_str(), u.port),
            (true, "idp.example.com", 443)
        );
        assert_eq!(u.path, "/.well-known/jwks.json");
        let u = JwksUrl::parse("http://127.0.0.1:8080").expect("loopback http");
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        let u = JwksUrl::parse("http://[::1]:9/k").expect("v6");
        assert_eq!(u.host, "::1");
        for bad in [
            "http://idp.example.com/jwks",
            "ftp://x/",
            "https://user:pw@idp/",
            "https://:443/",
            "https://idp:port/",
        ] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn response_parsing() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}xx").expect("ok"),
            b"{}"
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\n\r\n{}").expect("ok"),
            b"{}"
        );
        assert!(parse_response(b"HTTP/1.1 302 Found\r\nLocation: x\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}")
                .is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[tokio::test]
    async fn fetches_over_https_with_configured_ca() {
        use rustls::pki_types::PrivateKeyDer;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/auth/testdata");
        let cert_path = PathBuf::from(format!("{dir}/jwks-server.pem"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("pem");
        let key = PrivateKeyDer::from_pem_file(format!("{dir}/jwks-server.key.pem")).expect("key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            // Two connections: one with the right CA, one with the system store.
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.expect("accept");
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = vec![0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}")
                    .await;
                let _ = s.shutdown().await;
            }
        });
        let url = JwksUrl::parse(&format!("https://127.0.0.1:{port}/jwks")).expect("url");
        let tls = tls_config(Some(&cert_path)).expect("tls");
        let set = fetch(&url, &tls, Duration::from_secs(5))
            .await
            .expect("https fetch");
        assert!(set.keys.is_empty());
        // The system trust store does not know this self-signed server.
        let tls = tls_config(None).expect("tls");
        let e = fetch(&url, &tls, Duration::from_secs(5))
            .await
            .expect_err("untrusted server");
        assert!(e.to_string().contains("TLS"), "{e}");
    }

    #[tokio::test]
    async fn fetches_over_loopback_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.expect("read");
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = br#"{"keys":[]}"#;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await.expect("write");
            s.write_all(body).await.expect("write");
            req
        });
        let url = JwksUrl::parse(&format!("http://127.0.0.1:{port}/jwks")).expect("url");
        let tls = tls_config(None).expect("tls");
        let set = fetch(&url, &tls, Duration::from_secs(5))
            .await
            .expect("fetch");
        assert!(set.keys.is_empty());
        let req = server.await.expect("server");
        assert!(req.starts_with("GET /jwks HTTP/1.0\r\n"), "{req}");
    }
}
