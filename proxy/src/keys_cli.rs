//! `custos keys`: the embedded keyring's KEKs (create, rotate, list, retire,
//! destroy),
//! the per-subject key store (rewrap, report) and crypto-shredding.
//!
//! Every command reads the `encryption` section of the same configuration
//! file the gateway runs with, so both always see the same keys. A sled
//! subject key store is held locked by a running Custos; `shred` then asks
//! the running instance through its admin API (`POST /v1/keys/shred`), which
//! also records the shredding in the audit log. The shared topic store is
//! never locked; `shred` still asks a running gateway first, for the audit
//! record.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use custos::config::Config;
use custos::field_rules::{EncryptionConfig, KmsConfig};
use custos::protection;
use custos_crypto::keyring::LocalKeyring;
use custos_crypto::subject_store::SubjectKeys;

/// What `custos keys` does.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key-encryption key (the keyring file is created if missing).
    Create {
        /// KEK name, as rules name it in `kek:`.
        name: String,
    },
    /// Add a new version of a KEK; new data keys are wrapped by it, old data
    /// still decrypts with the older versions.
    Rotate {
        /// KEK name.
        name: String,
    },
    /// List KEK versions (never key material).
    List,
    /// Retire a KEK version: it still unwraps old data keys, wraps no new ones.
    Retire {
        /// KEK name.
        name: String,
        /// Version to retire.
        version: u32,
    },
    /// Destroy a retired KEK version for good: every data key it wrapped, and
    /// every record under those keys, becomes unreadable ("erased" on fetch).
    /// Run `custos keys rewrap` and `custos keys report` first to see what
    /// still depends on it.
    Destroy {
        /// KEK name.
        name: String,
        /// Version to destroy (must be retired).
        version: u32,
        /// Confirms the destruction; without it nothing is changed.
        #[arg(long)]
        yes: bool,
    },
    /// Re-wrap every stored per-subject key under its KEK's current version
    /// (the gateway must be stopped: the store is locked while it runs).
    Rewrap,
    /// How much retained data sits under which key: reads the protected
    /// topics from the brokers (Custos's own upstream credentials) and counts
    /// records by key version; also lists stored per-subject keys by KEK
    /// version when the subject key store can be opened.
    Report {
        /// Topics to scan (default: every topic a rule covers).
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// Destroy a data subject's keys: every copy of their protected fields
    /// becomes unreadable and reads as "erased".
    Shred {
        /// The subject id, as the rule finds it in records.
        subject: String,
    },
}

fn encryption(cfg: &Config) -> anyhow::Result<&EncryptionConfig> {
    cfg.encryption
        .as_ref()
        .context("the configuration has no `encryption` section")
}

fn keyring(enc: &EncryptionConfig, create: bool) -> anyhow::Result<LocalKeyring> {
    let KmsConfig::Local(l) = &enc.kms else {
        bail!("KEKs live in AWS KMS here (encryption.kms.aws): manage them with AWS's tools");
    };
    let master = protection::master_key(l)?;
    let k = if create {
        LocalKeyring::open_or_init(&l.keyring, master)
    } else {
        LocalKeyring::open(&l.keyring, master)
    };
    k.with_context(|| format!("keyring {}", l.keyring.display()))
}

/// Runs one `custos keys` command against the configuration at `config`.
pub fn run(config: &Path, command: KeysCommand) -> anyhow::Result<ExitCode> {
    // Not validated: `create` makes the keyring that validation requires.
    let cfg = Config::load_unvalidated(config)?;
    let enc = encryption(&cfg)?;
    match command {
        KeysCommand::Create { name } => {
            let info = keyring(enc, true)?.create(&name)?;
            println!("created KEK {} version {}", info.name, info.version);
        }
        KeysCommand::Rotate { name } => {
            let v = keyring(enc, false)?.rotate(&name)?;
            println!("rotated KEK {name}: version {v} is now current");
        }
        KeysCommand::Retire { name, version } => {
            keyring(enc, false)?.retire(&name, version)?;
            println!("retired KEK {name} version {version}");
        }
        KeysCommand::Destroy { name, version, yes } => {
            let kr = keyring(enc, false)?;
            let Some(info) = kr
                .list()?
                .into_iter()
                .find(|k| k.name == name && k.version == version)
            else {
                bail!("KEK {name} has no version {version}");
            };
            if !yes {
                eprintln!(
                    "custos keys destroy: KEK {name} version {version} is {}; destroying it makes every record encrypted under it unreadable, for good.\n\
                     See what still depends on it with `custos keys report`, move stored subject keys off it with `custos keys rewrap`,\n\
                     then run again with --yes.",
                    info.state
                );
                return Ok(ExitCode::from(2));
            }
            kr.destroy(&name, version)?;
            println!("destroyed KEK {name} version {version}");
        }
        KeysCommand::List => {
            println!(
                "{:<24} {:>7}  {:<8} {:<8} created",
                "kek", "version", "state", "current"
            );
            for k in keyring(enc, false)?.list()? {
                println!(
                    "{:<24} {:>7}  {:<8} {:<8} {}",
                    k.name,
                    k.version,
                    k.state.to_string(),
                    if k.current { "yes" } else { "" },
                    k.created
                );
            }
        }
        KeysCommand::Rewrap => {
            let rt = runtime()?;
            let store = rt
                .block_on(open_store(&cfg, enc))?
                .context("no encryption.subject_keys configured: nothing is stored to rewrap")?;
            let kms = rt.block_on(protection::kms(enc))?.0;
            let report = rt.block_on(store.rewrap_all(kms.as_ref()))?;
            println!(
                "rewrapped {} subject keys and {} stored data keys ({} skipped, {} failed)",
                report.rewrapped,
                report.deks_rewrapped,
                report.skipped,
                report.failed.len()
            );
            for f in &report.failed {
                if f.token_hex.starts_with("dek:") {
                    eprintln!("  failed: stored data key {}: {}", f.token_hex, f.error);
                } else {
                    eprintln!(
                        "  failed: subject {} version {}: {}",
                        f.token_hex, f.version, f.error
                    );
                }
            }
            if !report.failed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        KeysCommand::Report { topics } => return report(&cfg, enc, &topics),
        KeysCommand::Shred { subject } => return shred(&cfg, enc, &subject),
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The configured subject key store (a topic store is read to its end).
async fn open_store(
    cfg: &Config,
    enc: &EncryptionConfig,
) -> anyhow::Result<Option<std::sync::Arc<dyn SubjectKeys>>> {
    let upstream = protection::Upstream::from_config(cfg)?;
    // A topic store is tailed while the command runs (its writes wait to see
    // themselves); the tail ends with the command's runtime.
    let forever = tokio_util::sync::CancellationToken::new();
    Ok(protection::subject_store(enc, &upstream, None, &forever).await?)
}

fn report(cfg: &Config, enc: &EncryptionConfig, topics: &[String]) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let mut store = None;
    match rt.block_on(open_store(cfg, enc)) {
        Ok(Some(s)) => {
            for (what, rows) in [
                ("stored subject keys", rt.block_on(s.report())?),
                ("stored data keys", rt.block_on(s.dek_report())?),
            ] {
                println!("{what}:");
                println!("  {:<40} {:>7} {:>10}", "kek", "version", "keys");
                for (kek, version, count) in rows {
                    println!("  {kek:<40} {version:>7} {count:>10}");
                }
            }
            store = Some(s);
        }
        Ok(None) => {}
        Err(e) => println!("stored keys: not read ({e}); GET /v1/keys/report on a running gateway"),
    }
    let rules = custos::field_rules::RuleSet::compile(&enc.rules).map_err(|issues| {
        anyhow::anyhow!(
            "{}",
            issues
                .iter()
                .map(|i| format!("{}: {}", i.key, i.message))
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let security = custos::upstream::UpstreamSecurity {
        tls: cfg
            .upstream
            .tls
            .as_ref()
            .map(custos::tls::UpstreamTls::new)
            .transpose()?,
        sasl: cfg.upstream.sasl.clone(),
    };
    let servers: Vec<(String, u16)> = cfg
        .upstream
        .bootstrap_servers
        .iter()
        .filter_map(|b| custos::config::parse_host_port(b).ok())
        .collect();
    let rows = rt
        .block_on(custos::key_report::scan(
            &servers,
            &security,
            &rules,
            topics,
            std::time::Duration::from_millis(cfg.upstream.connect_timeout_ms),
        ))
        .map_err(anyhow::Error::msg)?;
    // Envelopes that name a stored data key are counted under the KEK
    // version the store wraps it with now (a rewrap moves them).
    let mut by_key: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for r in rows {
        let key = match (&store, stored_dek_id(&r.key)) {
            (Some(s), Some(id)) => match rt.block_on(s.stored_dek(&id))? {
                Some(d) => format!("{}#v{}", d.wrapped.kek_id, d.wrapped.kek_version),
                None => format!("{} (not in the key store)", r.key),
            },
            _ => r.key,
        };
        *by_key.entry((r.topic, key)).or_default() += r.records;
    }
    println!("retained records by key:");
    println!("  {:<40} {:<40} {:>10}", "topic", "key", "records");
    for ((topic, key), records) in by_key {
        println!("  {topic:<40} {key:<40} {records:>10}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The id in a `dek:HEX` key label.
fn stored_dek_id(label: &str) -> Option<custos_crypto::key_ref::DekId> {
    custos_audit::hex::decode_array(label.strip_prefix("dek:")?)
}

fn shred(cfg: &Config, enc: &EncryptionConfig, subject: &str) -> anyhow::Result<ExitCode> {
    if subject.is_empty() {
        bail!("the subject id is empty");
    }
    let rt = runtime()?;
    let token = cfg.admin.read_token().map_err(anyhow::Error::msg)?;
    let shared = enc.subject_keys.as_ref().is_some_and(|s| s.topic.is_some());
    // With the shared topic, a running gateway is asked first: it records
    // the shredding in its audit log (every gateway applies it either way).
    if let (true, Some(token)) = (shared, &token) {
        match admin_post(
            cfg.admin.listen,
            &format!("/v1/keys/shred?subject={}", percent_encode(subject)),
            token,
        ) {
            Ok(body) => {
                println!("shredded by the running gateway: {body}");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => eprintln!("the running gateway could not be asked ({e:#}); shredding in the topic directly, with no audit record"),
        }
    }
    match rt.block_on(open_store(cfg, enc)) {
        Ok(Some(store)) => {
            let r = rt.block_on(store.shred(subject.as_bytes()))?;
            let place =
                enc.subject_keys
                    .as_ref()
                    .map_or(String::new(), |s| match (&s.dir, &s.topic) {
                        (Some(d), _) => d.display().to_string(),
                        (None, Some(t)) => format!("topic {t}"),
                        (None, None) => String::new(),
                    });
            println!(
                "shredded subject {} (key versions {:?}) in {place}",
                r.token_hex, r.versions_destroyed,
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => bail!("no encryption.subject_keys configured: there are no subject keys"),
        Err(open_error) => {
            // Most likely a running Custos holds the store: ask it.
            let token = token.with_context(|| {
                format!("{open_error}; and admin.token_file is not set, so the running gateway cannot be asked")
            })?;
            let body = admin_post(
                cfg.admin.listen,
                &format!("/v1/keys/shred?subject={}", percent_encode(subject)),
                &token,
            )
            .with_context(|| format!("{open_error}; asking the running gateway failed"))?;
            println!("shredded by the running gateway: {body}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP/1.1 POST to the admin port; the body of a 2xx answer.
fn admin_post(addr: std::net::SocketAddr, path: &str, token: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .with_context(|| format!("connecting to the admin port {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    if !(200..300).contains(&status) {
        bail!("admin API answered {status}: {body}");
    }
    Ok(body)
}
