//! The client side of SASL, for Custos's own login to the brokers.
//!
//! Custos authenticates to the upstream cluster with its own credentials
//! (PLAIN or SCRAM-SHA-256/512). [`SaslClient`] produces the bytes Kafka
//! expects in successive SaslAuthenticate requests and checks the broker's
//! answers; for SCRAM that includes verifying the broker's server signature,
//! so a broker that does not know the password is detected.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::credentials::{ScramMechanism, MAX_ITERATIONS, MIN_ITERATIONS};
use super::scram::{encode_saslname, random_nonce, valid_nonce, ScramError};

/// What to do after a client step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Send these bytes in the next SaslAuthenticate request.
    Send(Vec<u8>),
    /// Authentication is complete and the server is verified.
    Done,
}

/// A client mechanism with the credentials to use.
#[derive(Debug)]
pub enum SaslClient {
    /// SASL PLAIN.
    Plain(PlainClient),
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(ScramClient),
}

/// Why the client side of SASL failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The mechanism is not one Custos can log in with.
    #[error(
        "unsupported upstream SASL mechanism `{0}` (use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
    )]
    UnsupportedMechanism(String),
    /// A SCRAM protocol or verification failure.
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// The server sent data after PLAIN, which expects none.
    #[error("unexpected server data after SASL PLAIN")]
    UnexpectedPlainResponse,
    /// A step after the exchange had finished.
    #[error("SASL client exchange already finished")]
    Finished,
}

impl SaslClient {
    /// A client for `mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub fn new(mechanism: &str, username: &str, password: &str) -> Result<Self, ClientError> {
        if mechanism == "PLAIN" {
            return Ok(Self::Plain(PlainClient::new(username, password)));
        }
        let m = ScramMechanism::from_name(mechanism)
            .ok_or_else(|| ClientError::UnsupportedMechanism(mechanism.to_string()))?;
        Ok(Self::Scram(ScramClient::new(m, username, password)?))
    }

    /// The SASL mechanism name for SaslHandshake.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Self::Plain(_) => "PLAIN",
            Self::Scram(s) => s.mechanism.name(),
        }
    }

    /// The first SaslAuthenticate payload.
    pub fn initial(&mut self) -> Result<Vec<u8>, ClientError> {
        match self {
            Self::Plain(p) => p.initial(),
            Self::Scram(s) => s.client_first(),
        }
    }

    /// Handles the server's answer to the previous payload.
    pub fn step(&mut self, server_message: &[u8]) -> Result<ClientStep, ClientError> {
        match self {
            Self::Plain(p) => p.step(server_message),
            Self::Scram(s) => s.step(server_message),
        }
    }
}

/// The client side of SASL PLAIN.
pub struct PlainClient {
    username: String,
    password: Zeroizing<String>,
    sent: bool,
}

impl fmt::Debug for PlainClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainClient")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl PlainClient {
    /// A PLAIN client for these credentials.
    pub fn new(username: &str, password: &str) -> Self {
        Self {
            username: username.to_string(),
            password: Zeroizing::new(password.to_string()),
            sent: false,
        }
    }

    /// The one PLAIN message.
    pub fn initial(&mut self) -> Result<Vec<u8>, ClientError> {
        if self.sent {
            return Err(ClientError::Finished);
        }
        self.sent = true;
        Ok(super::plain::encode(&self.username, &self.password).to_vec())
    }

    /// PLAIN succeeds with an empty server answer.
    pub fn step(&mut self, server_message: &[u8]) -> Result<ClientStep, ClientError> {
        if !self.sent {
            return Err(ClientError::Finished);
        }
        if server_message.is_empty() {
            Ok(ClientStep::Done)
        } else {
            Err(ClientError::UnexpectedPlainResponse)
        }
    }
}

enum ScramClientState {
    Initial,
    FirstSent {
        client_first_bare: String,
    },
    FinalSent {
        expected_server_signature: Zeroizing<Vec<u8>>,
    },
    Finished,
}

/// The client side of SCRAM-SHA-256/512.
pub struct ScramClient {
    mechanism: ScramMechanism,
    username: String,
    password: Zeroizing<String>,
    nonce: String,
    state: ScramClientState,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn cmalformed(reason: &str) -> ScramError {
    ScramError::Malformed {
        message: "server message",
        reason: reason.to_string(),
    }
}

impl ScramClient {
    /// A SCRAM client with a fresh random nonce.
    pub fn new(
        mechanism: ScramMechanism,
        username: &str,
        password: &str,
    ) -> Result<Self, ScramError> {
        Ok(Self::with_nonce(
            mechanism,
            username,
            password,
            random_nonce()?,
        ))
    }

    /// A SCRAM client with a given nonce (for test vectors).
    pub(crate) fn with_nonce(
        mechanism: ScramMechanism,
        username: &str,
        password: &str,
        nonce: String,
    ) -> Self {
        Self {
            mechanism,
            username: username.to_string(),
            password: Zeroizing::new(password.to_string()),
            nonce,
            state: ScramClientState::Initial,
        }
    }

    /// The client-first message (`n,,n=<user>,r=<nonce>`).
    pub fn client_first(&mut self) -> Result<Vec<u8>, ClientError> {
        if !matches!(self.state, ScramClientState::Initial) {
            return Err(ClientError::Finished);
        }
        let bare = format!("n={},r={}", encode_saslname(&self.username), self.nonce);
        let msg = format!("n,,{bare}").into_bytes();
        self.state = ScramClientState::FirstSent {
            client_first_bare: bare,
        };
        Ok(msg)
    }

    /// Handles server-first (→ client-final) or server-final (→ done).
    pub fn step(&mut self, server_message: &[u8]) -> Result<ClientStep, ClientError> {
        let state = std::mem::replace(&mut self.state, ScramClientState::Finished);
        let msg = std::str::from_utf8(server_message).map_err(|_| cmalformed("not UTF-8"))?;
        if let Some(e) = msg.strip_prefix("e=") {
            return Err(ScramError::ServerError(e.to_string()).into());
        }
        match state {
            ScramClientState::FirstSent { client_first_bare } => {
                self.server_first(msg, &client_first_bare)
            }
            ScramClientState::FinalSent {
                expected_server_signature,
            } => {
                let sig = msg
                    .split(',')
                    .next()
                    .and_then(|f| f.strip_prefix("v="))
                    .ok_or_else(|| cmalformed("expected `v=<signature>`"))?;
                let sig = B64
                    .decode(sig)
                    .map_err(|_| cmalformed("signature is not base64"))?;
                if bool::from(sig.ct_eq(&expected_server_signature)) {
                    Ok(ClientStep::Done)
                } else {
                    Err(ScramError::InvalidServerSignature.into())
                }
            }
            ScramClientState::Initial | ScramClientState::Finished => Err(ClientError::Finished),
        }
    }

    fn server_first(
        &mut self,
        msg: &str,
        client_first_bare: &str,
    ) -> Result<ClientStep, ClientError> {
        let mut fields = msg.split(',');
        let first = fields.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(cmalformed("mandatory extensions (m=) are not supported").into());
        }
        let nonce = first
            .strip_prefix("r=")
            .ok_or_else(|| cmalformed("expected `r=<nonce>`"))?;
        // The server must extend our nonce, not replace it.
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() || !valid_nonce(nonce)
        {
            return Err(ScramError::NonceMismatch.into());
        }
        let salt = fields
            .next()
            .and_then(|f| f.strip_prefix("s="))
            .ok_or_else(|| cmalformed("expected `s=<salt>`"))?;
        let salt = B64
            .decode(salt)
            .map_err(|_| cmalformed("salt is not base64"))?;
        if salt.is_empty() {
            return Err(cmalformed("empty salt").into());
        }
        let iterations: u32 = fields
            .next()
            .and_then(|f| f.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| cmalformed("expected `i=<iterations>`"))?;
        // Too few is weak; too many would let a rogue server stall Custos.
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(cmalformed("iteration count out of range").into());
        }
        let m = self.mechanism;
        let salted = m.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let server_key = m.hmac(&salted, b"Server Key");
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{msg},{without_proof}");
        let client_signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        self.state = ScramClientState::FinalSent {
            expected_server_signature: m.hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(ClientStep::Send(
            format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::credentials::{CredentialStore, NewUser};
    use crate::auth::scram::{ScramServer, ScramStep};

    #[test]
    fn rfc7677_client_side() {
        let mut c = ScramClient::with_nonce(
            ScramMechanism::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        assert_eq!(
            c.client_first().expect("first"),
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
        );
        let fin = c
            .step(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .expect("final");
        assert_eq!(
            fin,
            ClientStep::Send(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".to_vec()
            )
        );
        assert_eq!(
            c.step(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
                .expect("done"),
            ClientStep::Done
        );
    }

    /// Drives a client against the server; the server's outcome.
    fn run(
        mechanism: ScramMechanism,
        store: &CredentialStore,
        user: &str,
        password: &str,
    ) -> Result<String, String> {
        let mut client = SaslClient::new(mechanism.name(), user, password).expect("client");
        let mut server = ScramServer::new(mechanism, store);
        let first = client.initial().expect("client-first");
        let ScramStep::Continue(sf) = server.step(&first).map_err(|e| e.to_string())? else {
            return Err("server finished early".into());
        };
        let ClientStep::Send(cf) = client.step(&sf).map_err(|e| e.to_string())? else {
            return Err("client finished early".into());
        };
        match server.step(&cf).map_err(|e| e.to_string())? {
            ScramStep::Done {
                username,
                server_final,
            } => {
                assert_eq!(client.step(&server_final), Ok(ClientStep::Done));
                Ok(username)
            }
            ScramStep::Continue(_) => Err("server wants more".into()),
        }
    }

    #[test]
    fn client_and_server_agree_end_to_end() {
        let mut store = CredentialStore::new();
        store
            .add_user("custos,svc=1", "hunter2", &NewUser::default())
            .expect("add");
        for m in ScramMechanism::ALL {
            assert_eq!(
                run(m, &store, "custos,svc=1", "hunter2").as_deref(),
                Ok("custos,svc=1")
            );
            let e = run(m, &store, "custos,svc=1", "hunter3").expect_err("wrong password");
            assert!(e.contains("invalid proof"), "{e}");
            let e = run(m, &store, "nobody", "hunter2").expect_err("unknown user");
            assert!(e.contains("unknown user"), "{e}");
        }
    }

    #[test]
    fn client_detects_forged_server_signature_and_nonce() {
        let mut c = ScramClient::with_nonce(ScramMechanism::Sha256, "user", "pencil", "abc".into());
        c.client_first().expect("first");
        c.step(b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .expect("final");
        assert_eq!(
            c.step(format!("v={}", B64.encode([0u8; 32])).as_bytes()),
            Err(ClientError::Scram(ScramError::InvalidServerSignature))
        );

        let mut c = ScramClient::with_nonce(ScramMechanism::Sha256, "user", "pencil", "abc".into());
        c.client_first().expect("first");
        assert_eq!(
            c.step(b"r=xyzdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Err(ClientError::Scram(ScramError::NonceMismatch))
        );
        let mut c = ScramClient::with_nonce(ScramMechanism::Sha256, "user", "pencil", "abc".into());
        c.client_first().expect("first");
        assert!(c.step(b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1").is_err());
        let mut c = ScramClient::with_nonce(ScramMechanism::Sha256, "user", "pencil", "abc".into());
        c.client_first().expect("first");
        assert_eq!(
            c.step(b"e=invalid-proof"),
            Err(ClientError::Scram(ScramError::ServerError(
                "invalid-proof".into()
            )))
        );
    }

    #[test]
    fn plain_client() {
        let mut c = SaslClient::new("PLAIN", "custos", "pw").expect("plain");
        assert_eq!(c.mechanism(), "PLAIN");
        assert_eq!(c.initial().expect("initial"), b"\0custos\0pw");
        assert_eq!(c.step(b""), Ok(ClientStep::Done));
        assert!(!format!("{c:?}").contains("pw\""));
        assert!(matches!(
            SaslClient::new("GSSAPI", "a", "b"),
            Err(ClientError::UnsupportedMechanism(_))
        ));
    }
}
