//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
//!
//! The password is checked against the SCRAM credential file by deriving a
//! StoredKey from it (see [`super::credentials`]), so no plaintext password is
//! stored anywhere. PLAIN sends the password itself, so it belongs only on
//! TLS listeners; the listener configuration decides that.

use std::fmt;

use zeroize::Zeroizing;

use super::credentials::{CredentialStore, UserEntry};

/// The longest PLAIN message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Why a PLAIN login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlainError {
    /// The message is not `authzid NUL authcid NUL passwd`.
    #[error("malformed SASL PLAIN message: {0}")]
    Malformed(&'static str),
    /// The client asked to act as someone other than the user it authenticates as.
    #[error("SASL PLAIN authorization id differs from the user name `{0}`")]
    AuthzidMismatch(String),
    /// Unknown user or wrong password (deliberately the same error).
    #[error("SASL PLAIN authentication failed for `{0}`: invalid user name or password")]
    InvalidCredentials(String),
}

/// A parsed PLAIN message.
pub struct PlainMessage {
    /// The authorization id, if the client sent one.
    pub authzid: Option<String>,
    /// The user name.
    pub username: String,
    /// The password, wiped from memory on drop.
    pub password: Zeroizing<String>,
}

// By hand: the password never reaches a log.
impl fmt::Debug for PlainMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainMessage")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Parses a PLAIN message.
pub fn parse(message: &[u8]) -> Result<PlainMessage, PlainError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(PlainError::Malformed("too long"));
    }
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed("expected three NUL-separated fields"));
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| PlainError::Malformed("a field is not UTF-8"))
    };
    let username = text(authcid)?;
    if username.is_empty() {
        return Err(PlainError::Malformed("empty user name"));
    }
    let password = Zeroizing::new(text(passwd)?);
    if password.is_empty() {
        return Err(PlainError::Malformed("empty password"));
    }
    let authzid = match text(authzid)? {
        a if a.is_empty() => None,
        a => Some(a),
    };
    Ok(PlainMessage {
        authzid,
        username,
        password,
    })
}

/// Parses and verifies a PLAIN message; the user name and entry on success.
pub fn authenticate<'a>(
    store: &'a CredentialStore,
    message: &[u8],
) -> Result<(String, &'a UserEntry), PlainError> {
    let msg = parse(message)?;
    if let Some(a) = &msg.authzid {
        if *a != msg.username {
            return Err(PlainError::AuthzidMismatch(msg.username));
        }
    }
    match store.verify_plain(&msg.username, &msg.password) {
        Some(entry) => Ok((msg.username, entry)),
        None => Err(PlainError::InvalidCredentials(msg.username)),
    }
}

/// Builds a PLAIN message (the client side).
pub fn encode(username: &str, password: &str) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(username.len() + password.len() + 2));
    out.push(0);
    out.extend_from_slice(username.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::credentials::NewUser;

    fn store() -> CredentialStore {
        let mut s = CredentialStore::new();
        s.add_user("alice", "wonderland", &NewUser::default())
            .expect("add");
        s
    }

    #[test]
    fn right_password_passes() {
        let s = store();
        let (name, _) = authenticate(&s, b"\0alice\0wonderland").expect("ok");
        assert_eq!(name, "alice");
        authenticate(&s, b"alice\0alice\0wonderland").expect("same authzid ok");
        authenticate(&s, &encode("alice", "wonderland")).expect("encode round trip");
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        let s = store();
        assert_eq!(
            authenticate(&s, b"\0alice\0looking-glass").map(|r| r.0),
            Err(PlainError::InvalidCredentials("alice".into()))
        );
        assert_eq!(
            authenticate(&s, b"\0bob\0wonderland").map(|r| r.0),
            Err(PlainError::InvalidCredentials("bob".into()))
        );
    }

    #[test]
    fn other_authzid_is_refused() {
        let s = store();
        assert_eq!(
            authenticate(&s, b"admin\0alice\0wonderland").map(|r| r.0),
            Err(PlainError::AuthzidMismatch("alice".into()))
        );
    }

    #[test]
    fn malformed_messages() {
        let s = store();
        for m in [
            &b"alice\0wonderland"[..],
            b"\0alice\0wonderland\0x",
            b"\0\0wonderland",
            b"\0alice\0",
            b"\0al\xffice\0pw",
        ] {
            assert!(
                matches!(authenticate(&s, m), Err(PlainError::Malformed(_))),
                "{m:?}"
            );
        }
    }

    #[test]
    fn debug_hides_password() {
        let m = parse(b"\0alice\0wonderland").expect("parse");
        assert!(!format!("{m:?}").contains("wonderland"));
    }
}
