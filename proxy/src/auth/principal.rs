//! Who a client is once authenticated: the principal handed to authorization.

use std::fmt;

use serde::Deserialize;

/// The kind of principal, which Cedar policy sees as the entity type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalType {
    /// A person.
    #[default]
    User,
    /// An application or service.
    ServiceAccount,
}

impl fmt::Display for PrincipalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "User",
            Self::ServiceAccount => "ServiceAccount",
        })
    }
}

/// How the client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// Nothing was proven (plaintext listener without SASL).
    None,
    /// A verified TLS client certificate.
    Mtls,
    /// SASL PLAIN.
    SaslPlain,
    /// SASL SCRAM-SHA-256.
    ScramSha256,
    /// SASL SCRAM-SHA-512.
    ScramSha512,
    /// SASL OAUTHBEARER with a JWT.
    OAuthBearer,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Mtls => "mtls",
            Self::SaslPlain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        })
    }
}

/// An authenticated client identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User or service account.
    pub principal_type: PrincipalType,
    /// The principal's name (e.g. `alice`, or a certificate's mapped name).
    pub name: String,
    /// Groups the principal is a member of.
    pub groups: Vec<String>,
    /// How the identity was established.
    pub method: AuthMethod,
}

impl Identity {
    /// The identity of a client that proved nothing.
    pub fn anonymous() -> Self {
        Self {
            principal_type: PrincipalType::User,
            name: "ANONYMOUS".into(),
            groups: Vec::new(),
            method: AuthMethod::None,
        }
    }
}

impl Identity {
    /// The principal Cedar policies see: same kind, name and groups.
    pub fn to_principal(&self) -> custos_policy::Principal {
        let method = self.method.to_policy();
        let p = match self.principal_type {
            PrincipalType::User => custos_policy::Principal::user(&self.name, method),
            PrincipalType::ServiceAccount => {
                custos_policy::Principal::service_account(&self.name, method)
            }
        };
        p.with_groups(self.groups.iter().cloned())
    }
}

impl AuthMethod {
    /// The same method as the policy crate names it (`context.auth_method`).
    pub fn to_policy(self) -> custos_policy::AuthMethod {
        use custos_policy::AuthMethod as P;
        match self {
            Self::None => P::None,
            Self::Mtls => P::Mtls,
            Self::SaslPlain => P::SaslPlain,
            Self::ScramSha256 => P::ScramSha256,
            Self::ScramSha512 => P::ScramSha512,
            Self::OAuthBearer => P::OAuthBearer,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (via {})",
            self.principal_type, self.name, self.method
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_type_and_method() {
        let id = Identity {
            principal_type: PrincipalType::ServiceAccount,
            name: "billing".into(),
            groups: vec!["apps".into()],
            method: AuthMethod::ScramSha512,
        };
        assert_eq!(id.to_string(), "ServiceAccount:billing (via SCRAM-SHA-512)");
        assert_eq!(Identity::anonymous().method, AuthMethod::None);
    }

    #[test]
    fn principal_type_deserializes_snake_case() {
        let t: PrincipalType = serde_yaml_ng::from_str("service_account").expect("parse");
        assert_eq!(t, PrincipalType::ServiceAccount);
        assert!(serde_yaml_ng::from_str::<PrincipalType>("ServiceAccount").is_err());
    }
}
