//! AWS KMS as a [`Kms`]: KEKs that never leave AWS.
//!
//! Deployments already running on AWS usually keep their KEKs in KMS, where
//! IAM decides who may unwrap and CloudTrail records every unwrap. This module
//! maps the [`Kms`] trait onto GenerateDataKey, Decrypt and ReEncrypt, binding
//! the encryption context on every call, and maps the SDK's errors onto
//! [`KmsError`] so the caller can tell an outage (retry) from a tampered or
//! mis-bound key (do not retry). The SDK's own retries are off: the guarded
//! wrapper around every KMS owns timeouts, retries and circuit breaking, and
//! retries at two layers would multiply the worst-case latency.
//!
//! It talks HTTPS with rustls on aws-lc-rs (the TLS stack the proxy already
//! uses); an explicit endpoint lets tests point it at a local moto server.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::Credentials;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_sdk_kms::Client;
use zeroize::Zeroizing;

use crate::kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey, DEK_LEN};

/// Timeout for one KMS call (connect, send and answer) unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where [`AwsKms`] gets its AWS credentials.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum AwsCredentialSource {
    /// The SDK's default chain: environment, shared config/profile
    /// (`AWS_PROFILE`), web identity, ECS and EC2 instance metadata.
    #[default]
    DefaultChain,
    /// An access key read from the named environment variables when the
    /// client is built (so the secret itself never sits in a config file).
    FromEnv {
        /// Variable holding the access key id.
        access_key_id_var: String,
        /// Variable holding the secret access key.
        secret_access_key_var: String,
        /// Variable holding a session token, for temporary credentials.
        session_token_var: Option<String>,
    },
    /// An access key given directly (tests, or a secret already loaded elsewhere).
    Static {
        /// The access key id.
        access_key_id: String,
        /// The secret access key; never printed.
        secret_access_key: Zeroizing<String>,
        /// A session token, for temporary credentials; never printed.
        session_token: Option<Zeroizing<String>>,
    },
}

impl std::fmt::Debug for AwsCredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DefaultChain => f.write_str("DefaultChain"),
            Self::FromEnv {
                access_key_id_var,
                secret_access_key_var,
                session_token_var,
            } => f
                .debug_struct("FromEnv")
                .field("access_key_id_var", access_key_id_var)
                .field("secret_access_key_var", secret_access_key_var)
                .field("session_token_var", session_token_var)
                .finish(),
            // The key id is not secret, but the secret and token are.
            Self::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .finish_non_exhaustive(),
        }
    }
}

/// How to reach AWS KMS.
#[derive(Debug, Clone)]
pub struct AwsKmsConfig {
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Endpoint override, e.g. `http://127.0.0.1:5000` for moto; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Where credentials come from.
    pub credentials: AwsCredentialSource,
    /// Bound on one KMS call, from connecting to the last byte of the answer.
    pub timeout: Duration,
}

impl AwsKmsConfig {
    /// AWS itself in `region`, the default credential chain and [`DEFAULT_TIMEOUT`].
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            endpoint: None,
            credentials: AwsCredentialSource::DefaultChain,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A [`Kms`] backed by AWS KMS symmetric keys.
#[derive(Clone)]
pub struct AwsKms {
    client: Client,
    region: String,
    endpoint: Option<String>,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AwsKms {
    /// Builds the client; no request is sent until the first KMS call.
    ///
    /// Fails only when [`AwsCredentialSource::FromEnv`] names a variable that
    /// is not set.
    pub async fn connect(config: AwsKmsConfig) -> Result<Self, KmsError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.timeout)
            .operation_attempt_timeout(config.timeout)
            .operation_timeout(config.timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new(config.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(timeouts);
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        match config.credentials {
            AwsCredentialSource::DefaultChain => {}
            AwsCredentialSource::FromEnv {
                access_key_id_var,
                secret_access_key_var,
                session_token_var,
            } => {
                let id = env_var(&access_key_id_var)?;
                let secret = Zeroizing::new(env_var(&secret_access_key_var)?);
                let token = session_token_var.as_deref().map(env_var).transpose()?;
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret.as_str(),
                    token,
                    None,
                    "custos-env",
                ));
            }
            AwsCredentialSource::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                loader = loader.credentials_provider(Credentials::new(
                    access_key_id,
                    secret_access_key.as_str(),
                    session_token.map(|t| t.as_str().to_owned()),
                    None,
                    "custos-static",
                ));
            }
        }
        let sdk_config = loader.load().await;
        Ok(Self {
            client: Client::new(&sdk_config),
            region: config.region,
            endpoint: config.endpoint,
        })
    }

    /// Wraps an already configured SDK client (its retry and timeout settings are kept).
    pub fn from_client(client: Client) -> Self {
        let region = client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default();
        Self {
            client,
            region,
            endpoint: None,
        }
    }

    /// The SDK client, for key administration (CreateKey, aliases) outside the [`Kms`] trait.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn env_var(name: &str) -> Result<String, KmsError> {
    std::env::var(name).map_err(|_| {
        KmsError::Other(format!(
            "AWS credentials: environment variable {name} is not set or not UTF-8"
        ))
    })
}

/// The context as the SDK wants it; an empty context is omitted, as KMS treats both alike.
fn sdk_context(context: &EncryptionContext) -> Option<HashMap<String, String>> {
    if context.is_empty() {
        None
    } else {
        Some(
            context
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

/// Moves a plaintext DEK out of an SDK blob, zeroing the SDK's copy.
fn take_dek(blob: Option<Blob>, op: &str) -> Result<Zeroizing<[u8; DEK_LEN]>, KmsError> {
    let bytes = Zeroizing::new(
        blob.ok_or_else(|| KmsError::Other(format!("{op} answer has no Plaintext")))?
            .into_inner(),
    );
    if bytes.len() != DEK_LEN {
        return Err(KmsError::Other(format!(
            "{op} returned a {}-byte key; expected {DEK_LEN}",
            bytes.len()
        )));
    }
    let mut dek = Zeroizing::new([0u8; DEK_LEN]);
    dek.copy_from_slice(&bytes);
    Ok(dek)
}

fn required<T>(value: Option<T>, op: &str, field: &str) -> Result<T, KmsError> {
    value.ok_or_else(|| KmsError::Other(format!("{op} answer has no {field}")))
}

/// What a KMS error code means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    Unavailable,
    UnknownKey,
    Rejected,
    AccessDenied,
    Other,
}

/// Classifies a service error by its AWS error code, falling back on the HTTP status.
fn classify(code: &str, status: u16) -> ErrorClass {
    match code {
        "NotFoundException"
        | "DisabledException"
        | "KMSInvalidStateException"
        | "InvalidKeyUsageException"
        | "InvalidArnException" => ErrorClass::UnknownKey,
        // Tampered blob, wrong encryption context, or a KeyId that is not the
        // one the blob was wrapped under.
        "InvalidCiphertextException" | "IncorrectKeyException" => ErrorClass::Rejected,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch" => ErrorClass::AccessDenied,
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "ThrottlingException"
        | "ServiceUnavailableException" => ErrorClass::Unavailable,
        _ if status >= 500 || status == 429 => ErrorClass::Unavailable,
        _ => ErrorClass::Other,
    }
}

/// The credentials error behind an SDK error, if identity resolution is what failed.
fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<CredentialsError>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// Maps an SDK error to a [`KmsError`]; `kek_id` is the key the call was about.
///
/// Messages carry the AWS error code and message or the transport failure,
/// never key bytes or encryption-context values.
fn map_sdk_error<E>(err: SdkError<E, HttpResponse>, op: &str, kek_id: &str) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(cred) = credentials_error(&err) {
        let detail = format!(
            "{op}: loading AWS credentials: {}",
            DisplayErrorContext(cred)
        );
        return match cred {
            CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                KmsError::Unavailable(detail)
            }
            _ => KmsError::AccessDenied(detail),
        };
    }
    match &err {
        SdkError::TimeoutError(_) => KmsError::Unavailable(format!("{op} timed out")),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            KmsError::Unavailable(format!("{op}: {}", DisplayErrorContext(&err)))
        }
        SdkError::ConstructionFailure(_) => {
            KmsError::Other(format!("{op}: {}", DisplayErrorContext(&err)))
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("");
            let status = service.raw().status().as_u16();
            let why = if code.is_empty() {
                format!("{op}: HTTP {status} {message}")
            } else {
                format!("{op}: {code}: {message}")
            };
            match classify(code, status) {
                ErrorClass::Unavailable => KmsError::Unavailable(why),
                ErrorClass::UnknownKey => KmsError::UnknownKey {
                    kek_id: kek_id.to_owned(),
                    version: 0,
                    why,
                },
                ErrorClass::Rejected => KmsError::Rejected(why),
                ErrorClass::AccessDenied => KmsError::AccessDenied(why),
                ErrorClass::Other => KmsError::Other(why),
            }
        }
        _ => KmsError::Other(format!("{op}: {}", DisplayErrorContext(&err))),
    }
}

#[async_trait]
impl Kms for AwsKms {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn generate_data_key(
        &self,
        kek_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        const OP: &str = "GenerateDataKey";
        let mut out = self
            .client
            .generate_data_key()
            .key_id(kek_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(sdk_context(context))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, OP, kek_id))?;
        let plaintext = take_dek(out.plaintext.take(), OP)?;
        let arn = required(out.key_id.take(), OP, "KeyId")?;
        let blob = required(out.ciphertext_blob.take(), OP, "CiphertextBlob")?;
        Ok(DataKey {
            plaintext,
            wrapped: WrappedKey {
                kek_id: arn,
                kek_version: 0,
                blob: blob.into_inner(),
            },
        })
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; DEK_LEN]>, KmsError> {
        const OP: &str = "Decrypt";
        // Passing KeyId makes KMS refuse a blob wrapped under any other key,
        // so a stored reference cannot be redirected to a key we did not name.
        let mut out = self
            .client
            .decrypt()
            .key_id(&wrapped.kek_id)
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .set_encryption_context(sdk_context(context))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, OP, &wrapped.kek_id))?;
        take_dek(out.plaintext.take(), OP)
    }

    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        to_kek_id: Option<&str>,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        const OP: &str = "ReEncrypt";
        let to = to_kek_id.unwrap_or(&wrapped.kek_id);
        // The DEK is unwrapped and re-wrapped inside KMS; its plaintext never
        // reaches this process.
        let mut out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .source_key_id(&wrapped.kek_id)
            .destination_key_id(to)
            .set_source_encryption_context(sdk_context(context))
            .set_destination_encryption_context(sdk_context(context))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, OP, to))?;
        let arn = required(out.key_id.take(), OP, "KeyId")?;
        let blob = required(out.ciphertext_blob.take(), OP, "CiphertextBlob")?;
        Ok(WrappedKey {
            kek_id: arn,
            kek_version: 0,
            blob: blob.into_inner(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_what_the_caller_must_do() {
        for code in [
            "NotFoundException",
            "DisabledException",
            "KMSInvalidStateException",
        ] {
            assert_eq!(classify(code, 400), ErrorClass::UnknownKey, "{code}");
        }
        for code in ["InvalidCiphertextException", "IncorrectKeyException"] {
            assert_eq!(classify(code, 400), ErrorClass::Rejected, "{code}");
        }
        for code in ["AccessDeniedException", "UnrecognizedClientException"] {
            assert_eq!(classify(code, 400), ErrorClass::AccessDenied, "{code}");
        }
        assert_eq!(
            classify("ThrottlingException", 400),
            ErrorClass::Unavailable
        );
        assert_eq!(
            classify("KMSInternalException", 500),
            ErrorClass::Unavailable
        );
        assert_eq!(classify("", 503), ErrorClass::Unavailable);
        assert_eq!(classify("SomethingNew", 429), ErrorClass::Unavailable);
        assert_eq!(classify("LimitExceededException", 400), ErrorClass::Other);
        assert_eq!(classify("", 400), ErrorClass::Other);
    }

    #[test]
    fn empty_context_is_omitted_and_pairs_are_kept() {
        assert_eq!(sdk_context(&EncryptionContext::new()), None);
        let ctx: EncryptionContext = [("topic".to_owned(), "orders".to_owned())].into();
        let map = sdk_context(&ctx).expect("non-empty");
        assert_eq!(map.len(), 1);
        assert_eq!(map.get("topic").map(String::as_str), Some("orders"));
    }

    #[test]
    fn a_dek_of_the_wrong_length_is_refused() {
        let dek = take_dek(Some(Blob::new(vec![7u8; DEK_LEN])), "Decrypt").expect("32 bytes");
        assert_eq!(*dek, [7u8; DEK_LEN]);
        assert!(matches!(
            take_dek(Some(Blob::new(vec![7u8; 16])), "Decrypt"),
            Err(KmsError::Other(_))
        ));
        assert!(matches!(take_dek(None, "Decrypt"), Err(KmsError::Other(_))));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let source = AwsCredentialSource::Static {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: Zeroizing::new("very-secret-value".to_owned()),
            session_token: Some(Zeroizing::new("session-token-value".to_owned())),
        };
        let config = AwsKmsConfig {
            credentials: source,
            ..AwsKmsConfig::new("us-east-1")
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(!shown.contains("session-token-value"), "{shown}");
    }
}
