//! The audit signing key kept under a KMS (`audit.signing_key_kms`).
//!
//! With a plain key file, whoever reads the file can sign checkpoints. Kept
//! under the KMS, the file holds the Ed25519 seed only wrapped by a KEK (a
//! data key the KMS generated, bound to the purpose "audit-signing" by the
//! encryption context), so the file alone signs nothing: the gateway asks the
//! KMS to unwrap it at start, and access to that KEK is what the KMS's own
//! policy and audit trail govern. Verifiers still need only the public key.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use custos_audit::SignerKey;
use custos_crypto::kms::{EncryptionContext, Kms, WrappedKey};
use serde::{Deserialize, Serialize};

/// The encryption context every wrapped signing key is bound to: a data key
/// of a topic cannot be passed off as the signing key, nor the reverse.
pub fn context() -> EncryptionContext {
    let mut c = EncryptionContext::new();
    c.insert("custos:purpose".to_string(), "audit-signing".to_string());
    c
}

/// The file: the wrapped seed and which KEK wrapped it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedFile {
    /// Format marker, so a raw key file given by mistake is named as such.
    custos_audit_signing_key: u32,
    kek_id: String,
    kek_version: u32,
    /// The KMS's wrapped bytes, base64.
    blob: String,
}

const FORMAT: u32 = 1;

/// Why a KMS-held signing key could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    /// The file could not be read or written.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The KMS refused or could not be reached.
    #[error("KMS: {0}")]
    Kms(String),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> AuditKeyError {
    AuditKeyError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Has the KMS generate a key under `kek`, writes it wrapped to `path`
/// (created new, mode 0600; never overwritten) and returns the key.
pub async fn generate(kms: &dyn Kms, kek: &str, path: &Path) -> Result<SignerKey, AuditKeyError> {
    let data = kms
        .generate_data_key(kek, &context())
        .await
        .map_err(|e| AuditKeyError::Kms(e.to_string()))?;
    let file = WrappedFile {
        custos_audit_signing_key: FORMAT,
        kek_id: data.wrapped.kek_id.clone(),
        kek_version: data.wrapped.kek_version,
        blob: base64::engine::general_purpose::STANDARD.encode(&data.wrapped.blob),
    };
    let text = serde_json::to_string_pretty(&file).map_err(|e| file_err(path, e))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(path, e))?;
    Ok(SignerKey::from_seed(&data.plaintext))
}

/// Reads the wrapped key at `path` and has the KMS unwrap it.
pub async fn load(kms: &dyn Kms, path: &Path) -> Result<SignerKey, AuditKeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        file_err(
            path,
            if e.kind() == std::io::ErrorKind::InvalidData {
                "not a KMS-wrapped signing key (a raw key file? then leave out `audit.signing_key_kms`)".to_string()
            } else {
                e.to_string()
            },
        )
    })?;
    let file: WrappedFile = serde_json::from_str(&text).map_err(|e| {
        file_err(
            path,
            format!("not a KMS-wrapped signing key made by `custos audit keygen --config`: {e}"),
        )
    })?;
    if file.custos_audit_signing_key != FORMAT {
        return Err(file_err(
            path,
            format!(
                "format {} is not one this build reads ({FORMAT})",
                file.custos_audit_signing_key
            ),
        ));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(file.blob.as_bytes())
        .map_err(|e| file_err(path, format!("blob: {e}")))?;
    let wrapped = WrappedKey {
        kek_id: file.kek_id,
        kek_version: file.kek_version,
        blob,
    };
    let seed = kms
        .decrypt_data_key(&wrapped, &context())
        .await
        .map_err(|e| AuditKeyError::Kms(e.to_string()))?;
    Ok(SignerKey::from_seed(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_crypto::keyring::{LocalKeyring, MasterKey};

    fn keyring(dir: &Path) -> LocalKeyring {
        let k = LocalKeyring::init(&dir.join("keyring.json"), MasterKey::from_bytes([3; 32]))
            .expect("keyring");
        k.create("audit").expect("kek");
        k.create("other").expect("kek");
        k
    }

    #[tokio::test]
    async fn a_generated_key_loads_back_through_the_kms_and_signs_alike() {
        let dir = tempfile::tempdir().expect("dir");
        let kms = keyring(dir.path());
        let path = dir.path().join("audit.key.kms");
        let made = generate(&kms, "audit", &path).await.expect("generate");
        let text = std::fs::read_to_string(&path).expect("read");
        // The seed is not in the file, only its wrapped form.
        assert!(text.contains("\"kek_id\": \"audit\""), "{text}");
        let loaded = load(&kms, &path).await.expect("load");
        assert_eq!(loaded.public(), made.public());
        // Never overwritten.
        assert!(generate(&kms, "audit", &path).await.is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn another_purpose_a_tampered_file_or_a_raw_key_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let kms = keyring(dir.path());
        // A topic's data key (another encryption context) is not a signing key.
        let data = kms
            .generate_data_key("audit", &crate::field_rules::dek_context("orders"))
            .await
            .expect("dek");
        let forged = dir.path().join("forged");
        std::fs::write(
            &forged,
            serde_json::to_string(&WrappedFile {
                custos_audit_signing_key: FORMAT,
                kek_id: data.wrapped.kek_id.clone(),
                kek_version: data.wrapped.kek_version,
                blob: base64::engine::general_purpose::STANDARD.encode(&data.wrapped.blob),
            })
            .expect("json"),
        )
        .expect("write");
        assert!(matches!(
            load(&kms, &forged).await,
            Err(AuditKeyError::Kms(_))
        ));
        // One flipped bit in the wrapped key.
        let path = dir.path().join("audit.key.kms");
        generate(&kms, "audit", &path).await.expect("generate");
        let mut f: WrappedFile =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(&f.blob)
            .expect("b64");
        blob[20] ^= 1;
        f.blob = base64::engine::general_purpose::STANDARD.encode(&blob);
        let tampered = dir.path().join("tampered");
        std::fs::write(&tampered, serde_json::to_string(&f).expect("json")).expect("write");
        assert!(matches!(
            load(&kms, &tampered).await,
            Err(AuditKeyError::Kms(_))
        ));
        // A raw 32-byte key file is named as such.
        let raw = dir.path().join("raw.key");
        SignerKey::generate_file(&raw).expect("raw");
        let err = load(&kms, &raw).await.expect_err("raw key");
        assert!(err.to_string().contains("KMS-wrapped"), "{err}");
    }
}
