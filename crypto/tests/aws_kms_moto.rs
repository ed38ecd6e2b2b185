//! `AwsKms` against a real KMS API: moto's server on a loopback port.
//!
//! Each test starts its own moto (`python3 -m moto.server`), so tests can run
//! in parallel and one test stopping its server cannot disturb another. moto
//! missing is a failure, not a skip: CI installs it from tests/requirements.txt.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custos_crypto::aws_kms::{AwsCredentialSource, AwsKms, AwsKmsConfig};
use custos_crypto::kms::{EncryptionContext, Kms, KmsError, WrappedKey};
use zeroize::Zeroizing;

const INSTALL_HINT: &str =
    "moto[server] is needed for these tests: run `pip install -r tests/requirements.txt`";

/// A moto server process, killed on drop.
struct Moto {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Moto {
    fn start() -> Self {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("custos-moto-{}-{port}.log", std::process::id()));
        let mut moto = Self {
            child: None,
            port,
            log,
        };
        moto.restart();
        moto
    }

    /// Starts (again) on the same port and waits until it accepts connections.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "moto already running");
        let log = std::fs::File::create(&self.log).expect("moto log file");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("moto status"))
            {
                let text = self.log_text();
                self.child = None;
                if text.contains("No module named") {
                    panic!("{INSTALL_HINT}\nmoto said:\n{text}");
                }
                panic!("moto exited with {status}:\n{text}");
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto did not listen on port {} within 60 s:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn config(endpoint: String, timeout: Duration) -> AwsKmsConfig {
    AwsKmsConfig {
        endpoint: Some(endpoint),
        credentials: AwsCredentialSource::Static {
            access_key_id: "testing".to_owned(),
            secret_access_key: Zeroizing::new("testing".to_owned()),
            session_token: None,
        },
        timeout,
        ..AwsKmsConfig::new("us-east-1")
    }
}

async fn connect(moto: &Moto) -> AwsKms {
    AwsKms::connect(config(moto.endpoint(), Duration::from_secs(10)))
        .await
        .expect("client")
}

/// Creates a symmetric key through the SDK's CreateKey; returns its ARN.
async fn create_key(kms: &AwsKms) -> String {
    let out = kms
        .client()
        .create_key()
        .description("custos test KEK")
        .send()
        .await
        .expect("CreateKey");
    out.key_metadata()
        .expect("KeyMetadata")
        .arn()
        .expect("Arn")
        .to_owned()
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn generated_key_decrypts_to_the_same_plaintext() {
    let moto = Moto::start();
    let kms = connect(&moto).await;
    let arn = create_key(&kms).await;
    let key_id = arn.rsplit('/').next().expect("key id").to_owned();
    kms.client()
        .create_alias()
        .alias_name("alias/custos-orders")
        .target_key_id(&arn)
        .send()
        .await
        .expect("CreateAlias");
    let context = ctx(&[("topic", "orders"), ("field", "$.email")]);

    assert_eq!(kms.name(), "aws");
    // Asked by alias or bare id, the wrapped key names the ARN, so Decrypt
    // can later pin KeyId whatever the config called the key.
    for asked in ["alias/custos-orders", key_id.as_str()] {
        let dk = kms
            .generate_data_key(asked, &context)
            .await
            .expect("generate");
        assert_eq!(dk.wrapped.kek_id, arn);
        assert_eq!(dk.wrapped.kek_version, 0);
        assert!(
            dk.wrapped.blob.len() > 32,
            "blob is the wrapped key, not the key"
        );
        let again = kms
            .decrypt_data_key(&dk.wrapped, &context)
            .await
            .expect("decrypt");
        assert_eq!(*again, *dk.plaintext);
    }

    let a = kms.generate_data_key(&arn, &context).await.expect("a");
    let b = kms.generate_data_key(&arn, &context).await.expect("b");
    assert_ne!(*a.plaintext, *b.plaintext, "every DEK is fresh");
    assert_ne!(*a.plaintext, [0u8; 32]);
    assert_ne!(a.wrapped.blob, b.wrapped.blob);

    // An empty context is a context too: it round-trips and does not match a non-empty one.
    let none = kms
        .generate_data_key(&arn, &EncryptionContext::new())
        .await
        .expect("generate, no context");
    let back = kms
        .decrypt_data_key(&none.wrapped, &EncryptionContext::new())
        .await
        .expect("decrypt, no context");
    assert_eq!(*back, *none.plaintext);
    let err = kms
        .decrypt_data_key(&none.wrapped, &context)
        .await
        .expect_err("context added");
    assert!(matches!(err, KmsError::Rejected(_)), "{err:?}");
}

#[tokio::test]
async fn wrong_context_or_tampered_blob_is_rejected() {
    let moto = Moto::start();
    let kms = connect(&moto).await;
    let arn = create_key(&kms).await;
    let context = ctx(&[("topic", "orders"), ("field", "$.email")]);
    let dk = kms
        .generate_data_key(&arn, &context)
        .await
        .expect("generate");

    for wrong in [
        ctx(&[("topic", "payments"), ("field", "$.email")]),
        ctx(&[("topic", "orders")]),
        ctx(&[("topic", "orders"), ("field", "$.email"), ("x", "y")]),
        EncryptionContext::new(),
    ] {
        let err = kms
            .decrypt_data_key(&dk.wrapped, &wrong)
            .await
            .expect_err("wrong context must not unwrap");
        assert!(matches!(err, KmsError::Rejected(_)), "{err:?}");
        assert!(!err.retryable());
        // The context may hold a subject id: it must not be echoed in errors.
        assert!(!err.to_string().contains("payments"), "{err}");
    }

    let len = dk.wrapped.blob.len();
    for at in [len - 1, len / 2] {
        let mut tampered = dk.wrapped.clone();
        tampered.blob[at] ^= 0x01;
        let err = kms
            .decrypt_data_key(&tampered, &context)
            .await
            .expect_err("tampered blob must not unwrap");
        assert!(matches!(err, KmsError::Rejected(_)), "byte {at}: {err:?}");
    }
    let mut short = dk.wrapped.clone();
    short.blob.truncate(10);
    let err = kms
        .decrypt_data_key(&short, &context)
        .await
        .expect_err("truncated blob");
    assert!(matches!(err, KmsError::Rejected(_)), "{err:?}");
}

#[tokio::test]
async fn rewrap_moves_a_dek_to_another_key() {
    let moto = Moto::start();
    let kms = connect(&moto).await;
    let first = create_key(&kms).await;
    let second = create_key(&kms).await;
    assert_ne!(first, second);
    let context = ctx(&[("topic", "orders")]);
    let dk = kms
        .generate_data_key(&first, &context)
        .await
        .expect("generate");

    let moved = kms
        .rewrap(&dk.wrapped, Some(&second), &context)
        .await
        .expect("rewrap to second");
    assert_eq!(moved.kek_id, second);
    assert_eq!(moved.kek_version, 0);
    assert_ne!(moved.blob, dk.wrapped.blob);
    let back = kms
        .decrypt_data_key(&moved, &context)
        .await
        .expect("decrypt rewrapped");
    assert_eq!(*back, *dk.plaintext);

    // Same key: a new blob for the same DEK.
    let same = kms
        .rewrap(&dk.wrapped, None, &context)
        .await
        .expect("rewrap in place");
    assert_eq!(same.kek_id, first);
    assert_ne!(same.blob, dk.wrapped.blob);
    let back = kms
        .decrypt_data_key(&same, &context)
        .await
        .expect("decrypt");
    assert_eq!(*back, *dk.plaintext);

    // The rewrap keeps the context binding.
    let err = kms
        .decrypt_data_key(&moved, &ctx(&[("topic", "other")]))
        .await
        .expect_err("wrong context after rewrap");
    assert!(matches!(err, KmsError::Rejected(_)), "{err:?}");
    let err = kms
        .rewrap(&dk.wrapped, Some(&second), &ctx(&[("topic", "other")]))
        .await
        .expect_err("rewrap needs the right source context");
    assert!(matches!(err, KmsError::Rejected(_)), "{err:?}");

    // Decrypt pins KeyId: the blob wrapped under the first key does not
    // unwrap when the reference claims the second.
    let redirected = WrappedKey {
        kek_id: second.clone(),
        ..dk.wrapped.clone()
    };
    let err = kms
        .decrypt_data_key(&redirected, &context)
        .await
        .expect_err("KeyId mismatch");
    assert!(!err.retryable(), "{err:?}");
}

#[tokio::test]
async fn unknown_keys_are_reported_as_such() {
    let moto = Moto::start();
    let kms = connect(&moto).await;
    let arn = create_key(&kms).await;
    let context = ctx(&[("topic", "orders")]);
    let missing = "11111111-2222-3333-4444-555555555555";

    let err = kms
        .generate_data_key(missing, &context)
        .await
        .expect_err("no such key");
    match &err {
        KmsError::UnknownKey {
            kek_id, version, ..
        } => {
            assert_eq!(kek_id, missing);
            assert_eq!(*version, 0);
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    assert!(!err.retryable());

    let err = kms
        .generate_data_key("alias/nobody", &context)
        .await
        .expect_err("no such alias");
    assert!(matches!(err, KmsError::UnknownKey { .. }), "{err:?}");

    let dk = kms
        .generate_data_key(&arn, &context)
        .await
        .expect("generate");
    let err = kms
        .rewrap(&dk.wrapped, Some(missing), &context)
        .await
        .expect_err("no such destination");
    assert!(
        matches!(&err, KmsError::UnknownKey { kek_id, .. } if kek_id == missing),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stopped_kms_is_unavailable_within_the_timeout() {
    let mut moto = Moto::start();
    let timeout = Duration::from_secs(2);
    let kms = AwsKms::connect(config(moto.endpoint(), timeout))
        .await
        .expect("client");
    let arn = create_key(&kms).await;
    let context = ctx(&[("topic", "orders")]);
    let dk = kms
        .generate_data_key(&arn, &context)
        .await
        .expect("generate");

    moto.stop();
    for call in ["generate", "decrypt", "rewrap"] {
        let started = Instant::now();
        let err = match call {
            "generate" => kms.generate_data_key(&arn, &context).await.map(|_| ()),
            "decrypt" => kms
                .decrypt_data_key(&dk.wrapped, &context)
                .await
                .map(|_| ()),
            _ => kms.rewrap(&dk.wrapped, None, &context).await.map(|_| ()),
        }
        .expect_err("moto is down");
        let elapsed = started.elapsed();
        assert!(matches!(err, KmsError::Unavailable(_)), "{call}: {err:?}");
        assert!(err.retryable());
        assert!(
            elapsed < timeout + Duration::from_millis(500),
            "{call} took {elapsed:?}"
        );
    }

    // Back on the same port (moto forgets its keys on restart): the same
    // client recovers without being rebuilt.
    moto.restart();
    let arn = create_key(&kms).await;
    let dk = kms
        .generate_data_key(&arn, &context)
        .await
        .expect("after restart");
    assert_eq!(dk.wrapped.kek_id, arn);
}

#[tokio::test]
async fn a_kms_that_never_answers_times_out() {
    // Accepts connections but never replies: what a hung endpoint or a
    // black-holed route looks like. No moto needed.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let timeout = Duration::from_millis(1500);
    let kms = AwsKms::connect(config(format!("http://127.0.0.1:{port}"), timeout))
        .await
        .expect("client");
    let started = Instant::now();
    let err = kms
        .generate_data_key("any-key", &ctx(&[("topic", "orders")]))
        .await
        .expect_err("nobody answers");
    let elapsed = started.elapsed();
    assert!(matches!(err, KmsError::Unavailable(_)), "{err:?}");
    assert!(
        elapsed >= timeout - Duration::from_millis(100),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_millis(1000),
        "SDK retried or ignored the timeout: {elapsed:?}"
    );
}

#[tokio::test]
async fn credentials_from_missing_env_vars_are_a_config_error() {
    let result = AwsKms::connect(AwsKmsConfig {
        credentials: AwsCredentialSource::FromEnv {
            access_key_id_var: "CUSTOS_TEST_SURELY_UNSET_KEY_ID".to_owned(),
            secret_access_key_var: "CUSTOS_TEST_SURELY_UNSET_SECRET".to_owned(),
            session_token_var: None,
        },
        ..AwsKmsConfig::new("us-east-1")
    })
    .await;
    let err = result.expect_err("unset variables");
    assert!(matches!(err, KmsError::Other(_)), "{err:?}");
    assert!(
        err.to_string().contains("CUSTOS_TEST_SURELY_UNSET_KEY_ID"),
        "{err}"
    );
}
