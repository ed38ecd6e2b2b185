//! The `custos` command: run the gateway, check a configuration file, manage
//! users and policies, and work with the audit log offline.

// The command line talks to people on stdout; that is its job.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use custos::config::{Config, LogFormat};
use custos::server::Proxy;
use tokio_util::sync::CancellationToken;

mod keys_cli;

/// Custos: a Kafka-protocol security and compliance gateway.
///
/// Clients point bootstrap.servers at Custos and change nothing else.
#[derive(Parser)]
#[command(name = "custos", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in front of a Kafka cluster.
    Run {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Policy as code: validate Cedar policies, run policy tests, import Kafka ACLs.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The audit log offline: keys, verification, proofs, export, listing.
    ///
    /// These commands open a store directly; a running Custos holds its
    /// store locked, so use them on a stopped instance's store or on an
    /// export (the admin API under /v1/audit serves a running one).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Field-encryption keys: KEKs in the embedded keyring, per-subject keys,
    /// crypto-shredding.
    Keys {
        /// Configuration file (its `encryption` section names the keys).
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        command: keys_cli::KeysCommand,
    },
    /// Manage the SCRAM credential file clients authenticate against.
    ///
    /// The file holds salted SCRAM keys (SCRAM-SHA-256 and -512), never
    /// passwords; SASL PLAIN is checked against the same keys.
    Users {
        /// Credential file (created by `add` when missing).
        #[arg(long, short)]
        file: PathBuf,
        #[command(subcommand)]
        command: UsersCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse the policies and validate them against Custos's Cedar schema.
    Validate {
        /// Policy files or directories of `.cedar` files.
        #[arg(required = true)]
        policies: Vec<PathBuf>,
        /// Topic catalog (YAML list of {match, tags, owner, classification}).
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Run test cases (principal/action/resource/context → allow|deny) and
    /// exit non-zero on any mismatch.
    Test {
        /// Test-case file (YAML).
        cases: PathBuf,
        /// Policy files or directories of `.cedar` files.
        #[arg(long = "policies", required = true)]
        policies: Vec<PathBuf>,
        /// Topic catalog (YAML).
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Turn Kafka ACLs (`kafka-acls --list` output, or JSON) into Cedar
    /// policies with Kafka's semantics; `-` or no file reads standard input.
    ImportAcls {
        /// ACL listing or JSON file.
        file: Option<PathBuf>,
        /// Kafka `super.users` principals (repeatable), e.g. `User:admin`.
        #[arg(long = "super-user")]
        super_users: Vec<String>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user. The password is read from --password-file, from the
    /// environment variable named by --password-env, or from the first line
    /// of standard input; never from the command line, where `ps` shows it.
    Add {
        /// User name.
        name: String,
        /// File whose first line is the password.
        #[arg(long, conflicts_with = "password_env")]
        password_file: Option<PathBuf>,
        /// Environment variable holding the password.
        #[arg(long)]
        password_env: Option<String>,
        /// Group memberships (repeatable), for policies on groups.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Make a service account rather than a user.
        #[arg(long)]
        service_account: bool,
        /// PBKDF2 iterations (at least 4096).
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
    /// Remove a user.
    Remove {
        /// User name.
        name: String,
    },
    /// List users and their mechanisms (never keys).
    List,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Make a new Ed25519 signing key (a 32-byte seed, mode 0600) in FILE and
    /// its public key (hex) in FILE.pub; prints the public key. Never
    /// overwrites either file. With --config whose `audit.signing_key_kms`
    /// is set, the KMS of `encryption.kms` generates the key and FILE holds
    /// it only wrapped by that KEK (FILE defaults to `audit.signing_key`).
    Keygen {
        /// Signing key file to create.
        #[arg(long, required_unless_present = "config")]
        out: Option<PathBuf>,
        /// Configuration whose KMS keeps the key (`audit.signing_key_kms`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Verify a store (--dir) or an export (--export) against the public key:
    /// every chain hash, every checkpoint signature, chain head and Merkle
    /// root. Exits 1 on any problem, naming the first bad sequence number.
    Verify {
        /// Store directory (`audit.dir`) of a Custos that is not running.
        #[arg(long, required_unless_present = "export", conflicts_with = "export")]
        dir: Option<PathBuf>,
        /// Export directory made by `custos audit export`.
        #[arg(long)]
        export: Option<PathBuf>,
        /// Public key: a file (hex or raw 32 bytes) or 64 hex digits.
        #[arg(long)]
        public_key: String,
        /// A checkpoint kept outside the store (JSON, e.g. saved from
        /// /v1/audit/checkpoints/latest): the store must reach and match it,
        /// which catches truncation of records together with their checkpoints.
        #[arg(long, conflicts_with = "export")]
        anchor: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print an inclusion proof (JSON) of record SEQ against the latest checkpoint.
    Proof {
        /// Sequence number of the record.
        seq: u64,
        /// Store directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Check an inclusion proof (from `custos audit proof` or
    /// /v1/audit/proof/{seq}); prints the proven record. `-` reads standard input.
    VerifyProof {
        /// Proof file (JSON).
        file: PathBuf,
        /// Public key: a file (hex or raw 32 bytes) or 64 hex digits.
        #[arg(long)]
        public_key: String,
    },
    /// Export a segment (records, checkpoints, manifest) for offline
    /// verification and archiving. A segment starts at 0 or just after a
    /// checkpoint and ends at a checkpoint.
    Export {
        /// Store directory.
        #[arg(long)]
        dir: PathBuf,
        /// Directory to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// First sequence number (0, or one past a checkpoint's).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last sequence number (a checkpoint's); default: the latest checkpoint.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Print matching records as JSON lines, oldest first.
    List {
        /// Store directory.
        #[arg(long)]
        dir: PathBuf,
        /// Principal, exactly (`User:alice`).
        #[arg(long)]
        principal: Option<String>,
        /// A topic the record touches.
        #[arg(long)]
        topic: Option<String>,
        /// A consumer group the record touches.
        #[arg(long)]
        group: Option<String>,
        /// Kafka api, by key number or name (`Produce`).
        #[arg(long)]
        api: Option<String>,
        /// `allowed` or `denied` (authorization records).
        #[arg(long)]
        decision: Option<String>,
        /// Event kind (repeatable or comma-separated): produce, fetch,
        /// authorization, admin, audit_query, start, stop, ...
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Earliest time, inclusive: RFC 3339 or unix milliseconds.
        #[arg(long)]
        since: Option<String>,
        /// Latest time, exclusive: RFC 3339 or unix milliseconds.
        #[arg(long)]
        until: Option<String>,
        /// Most records to print (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and report every error, naming its key.
    Check {
        /// Configuration file (YAML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file) {
            Ok(config) => {
                // The policies and catalog are part of the configuration: a
                // file that would stop `custos run` must fail the check too.
                if let Some(a) = &config.authorization {
                    match custos::policy_store::load_engine(a) {
                        Ok(engine) => println!(
                            "authorization: {} policies, hash {}",
                            engine.policy_ids().len(),
                            engine.hash()
                        ),
                        Err(e) => {
                            eprintln!("invalid configuration {}:\n  - {e}", file.display());
                            return ExitCode::FAILURE;
                        }
                    }
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Policy { command } => match policy(command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("custos policy: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Audit { command } => match audit(command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("custos audit: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Keys { config, command } => match keys_cli::run(&config, command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("custos keys: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Users { file, command } => match users(&file, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("custos users: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("custos: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn read_password(file: Option<&PathBuf>, env: Option<&String>) -> anyhow::Result<String> {
    let raw = if let Some(f) = file {
        std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
    } else if let Some(var) = env {
        std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line
    };
    let pw = raw.lines().next().unwrap_or_default().to_string();
    anyhow::ensure!(!pw.is_empty(), "the password is empty");
    Ok(pw)
}

fn load_catalog(path: Option<&PathBuf>) -> anyhow::Result<custos_policy::TopicCatalog> {
    Ok(custos::policy_store::load_catalog(
        path.map(PathBuf::as_path),
    )?)
}

fn policy(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    use custos_policy::PolicyEngine;
    match command {
        PolicyCommand::Validate { policies, catalog } => {
            let engine = PolicyEngine::load_files(&policies, load_catalog(catalog.as_ref())?)?;
            for w in engine.warnings() {
                eprintln!("warning: {w}");
            }
            println!(
                "ok: {} policies valid against the Custos schema (policy set hash {})",
                engine.policy_ids().len(),
                engine.hash()
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test {
            cases,
            policies,
            catalog,
        } => {
            let engine = PolicyEngine::load_files(&policies, load_catalog(catalog.as_ref())?)?;
            let text = std::fs::read_to_string(&cases)
                .with_context(|| format!("cannot read {}", cases.display()))?;
            let report = custos_policy::policy_test::run_cases(&engine, &text)?;
            for r in report.results.iter().filter(|r| !r.passed()) {
                println!("FAIL {r}");
            }
            println!("{}", report.summary());
            Ok(if report.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCommand::ImportAcls { file, super_users } => {
            let text = match file.as_deref() {
                None => std::io::read_to_string(std::io::stdin())?,
                Some(p) if p.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            };
            let opts = custos_policy::acl_import::ImportOptions { super_users };
            print!("{}", custos_policy::acl_import::import_acls(&text, &opts)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn users(file: &std::path::Path, command: UsersCommand) -> anyhow::Result<()> {
    use custos::auth::credentials::NewUser;
    use custos::auth::{CredentialStore, PrincipalType};
    let mut store = if file.exists() {
        CredentialStore::load(file)?
    } else {
        CredentialStore::new()
    };
    match command {
        UsersCommand::Add {
            name,
            password_file,
            password_env,
            groups,
            service_account,
            iterations,
        } => {
            let password = read_password(password_file.as_ref(), password_env.as_ref())?;
            let opts = NewUser {
                iterations,
                principal_type: if service_account {
                    PrincipalType::ServiceAccount
                } else {
                    PrincipalType::User
                },
                groups,
                ..NewUser::default()
            };
            store.add_user(&name, &password, &opts)?;
            store.save(file)?;
            println!("added {name}");
        }
        UsersCommand::Remove { name } => {
            anyhow::ensure!(
                store.remove_user(&name),
                "no user {name} in {}",
                file.display()
            );
            store.save(file)?;
            println!("removed {name}");
        }
        UsersCommand::List => {
            for u in store.list() {
                let mechs: Vec<&str> = u.mechanisms.iter().map(|m| m.name()).collect();
                println!("{}\t{}", u.name, mechs.join(","));
            }
        }
    }
    Ok(())
}

/// A public key given as a file (hex or raw bytes) or as 64 hex digits.
fn public_key(arg: &str) -> anyhow::Result<custos_audit::PublicKey> {
    let path = std::path::Path::new(arg);
    if path.is_file() {
        return custos_audit::PublicKey::load(path)
            .with_context(|| format!("public key file {arg}"));
    }
    if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return custos_audit::PublicKey::from_hex(arg).context("public key");
    }
    anyhow::bail!("--public-key {arg:?} is neither a readable file nor 64 hex digits")
}

/// Opens a store for offline use, explaining a lock held by a running Custos.
fn open_store(dir: &std::path::Path) -> anyhow::Result<custos_audit::AuditReader> {
    // This process has not opened the store, so a held lock is another
    // process's: say so at once rather than wait for it to go away.
    let locked = std::fs::File::open(dir.join("db"))
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
    if locked {
        anyhow::bail!(
            "{}: the audit store is locked by another process (a running Custos keeps \
             its store locked): stop it first, query it through the admin API \
             (/v1/audit, /v1/audit/verify, /v1/audit/proof/SEQ), or work on an export",
            dir.display()
        );
    }
    match custos_audit::AuditReader::open(dir) {
        Ok(r) => Ok(r),
        Err(e) => {
            if dir.join("manifest.json").is_file() {
                anyhow::bail!(
                    "{}: this is an audit export, not a store (use --export)",
                    dir.display()
                );
            }
            Err(anyhow::Error::new(e))
        }
    }
}

fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    use custos::admin::audit_api::{self, FilterArgs};
    use std::io::Write;
    match command {
        AuditCommand::Keygen { out, config } => {
            let kms_held = match &config {
                Some(path) => {
                    let cfg = Config::load(path)?;
                    let audit = cfg
                        .audit
                        .as_ref()
                        .context("--config: the configuration has no `audit` section")?;
                    let kek = audit
                        .signing_key_kms
                        .as_ref()
                        .context("--config: `audit.signing_key_kms` is not set (without it, leave out --config)")?
                        .kek
                        .clone();
                    let out = out.clone().unwrap_or_else(|| audit.signing_key.clone());
                    Some((cfg, kek, out))
                }
                None => None,
            };
            let out = match (&kms_held, out) {
                (Some((_, _, o)), _) => o.clone(),
                (None, Some(o)) => o,
                (None, None) => anyhow::bail!("--out FILE is required without --config"),
            };
            let mut pub_path = out.clone().into_os_string();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            anyhow::ensure!(
                !out.exists(),
                "{} exists; refusing to overwrite a signing key",
                out.display()
            );
            anyhow::ensure!(
                !pub_path.exists(),
                "{} exists; refusing to overwrite it",
                pub_path.display()
            );
            let key = match &kms_held {
                Some((cfg, kek, _)) => {
                    let enc = cfg
                        .encryption
                        .as_ref()
                        .context("`audit.signing_key_kms` needs `encryption.kms`")?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        let (kms, _) = custos::protection::kms(enc).await?;
                        anyhow::Ok(custos::audit_key::generate(kms.as_ref(), kek, &out).await?)
                    })
                    .with_context(|| format!("cannot create {} with the KMS", out.display()))?
                }
                None => custos_audit::SignerKey::generate_file(&out)
                    .with_context(|| format!("cannot create {}", out.display()))?,
            };
            let public = key.public();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&pub_path)
                .with_context(|| format!("cannot create {}", pub_path.display()))?;
            writeln!(f, "{}", public.to_hex())
                .with_context(|| format!("cannot write {}", pub_path.display()))?;
            println!("{}", public.to_hex());
            eprintln!(
                "wrote signing key {} ({}) and public key {} (key id {})",
                out.display(),
                if kms_held.is_some() {
                    "wrapped by the KMS; it signs nothing without it"
                } else {
                    "keep it secret"
                },
                pub_path.display(),
                public.key_id()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            dir,
            export,
            public_key: key_arg,
            anchor,
            json,
        } => {
            let key = public_key(&key_arg)?;
            let report = match (&dir, &export) {
                (_, Some(e)) => custos_audit::verify_export(e, &key)
                    .with_context(|| format!("export {}", e.display()))?,
                (Some(d), None) => {
                    let anchor = anchor
                        .map(|p| -> anyhow::Result<_> {
                            let text = std::fs::read_to_string(&p)
                                .with_context(|| format!("cannot read {}", p.display()))?;
                            let j: custos_audit::CheckpointJson = serde_json::from_str(&text)
                                .with_context(|| format!("{}: not a checkpoint", p.display()))?;
                            j.to_signed().with_context(|| {
                                format!("{}: checkpoint fields malformed", p.display())
                            })
                        })
                        .transpose()?;
                    open_store(d)?
                        .verify(&key, &custos_audit::VerifyOptions { anchor })
                        .with_context(|| format!("store {}", d.display()))?
                }
                (None, None) => anyhow::bail!("give --dir STORE or --export DIR"),
            };
            if json {
                println!("{}", audit_api::report_json(&report, &key));
            } else {
                println!("{report}");
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Proof { seq, dir } => {
            let proof = open_store(&dir)?
                .prove(seq)
                .with_context(|| format!("store {}", dir.display()))?;
            println!("{}", proof.to_json());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::VerifyProof {
            file,
            public_key: key_arg,
        } => {
            let key = public_key(&key_arg)?;
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let proof = custos_audit::InclusionProof::from_json(&text)
                .with_context(|| format!("{}", file.display()))?;
            match custos_audit::verify_proof(&proof, &key) {
                Ok(record) => {
                    let cp = proof.checkpoint.checkpoint;
                    println!(
                        "OK: record {} is in the log signed by key {} at checkpoint seq {} (tree size {}, time_ms {})",
                        proof.seq,
                        cp.key_id,
                        cp.seq,
                        cp.tree_size(),
                        cp.time_ms
                    );
                    println!("{}", serde_json::to_string(&record)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("FAILED: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Export { dir, out, from, to } => {
            let s = open_store(&dir)?
                .export(
                    &out,
                    custos_audit::ExportRange {
                        from_seq: from,
                        to_seq: to,
                    },
                )
                .with_context(|| format!("store {}", dir.display()))?;
            println!(
                "exported seqs {}..={} ({} records, {} checkpoints) to {}",
                s.from_seq,
                s.to_seq,
                s.records,
                s.checkpoints,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::List {
            dir,
            principal,
            topic,
            group,
            api,
            decision,
            kinds,
            since,
            until,
            limit,
        } => {
            let filter = FilterArgs {
                principal,
                topic,
                group,
                api,
                decision,
                kinds,
                since,
                until,
            }
            .to_filter()
            .map_err(anyhow::Error::msg)?;
            let reader = open_store(&dir)?;
            let mut left = limit.unwrap_or(usize::MAX);
            let mut cursor = None;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            while left > 0 {
                let page = reader.scan(&filter, cursor, left.min(10_000))?;
                for r in &page.records {
                    let line = serde_json::to_string(&audit_api::record_json(r))?;
                    if let Err(e) = writeln!(out, "{line}") {
                        // A closed pipe (`| head`) is the reader's choice, not an error.
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(ExitCode::SUCCESS);
                        }
                        return Err(e.into());
                    }
                }
                left -= page.records.len();
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            match out.flush() {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    // Logs go to stderr; colours only when a person is watching.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let proxy = Proxy::new(config, shutdown.clone()).await?;
        tokio::spawn(wait_for_signal(shutdown));
        proxy.run().await?;
        Ok(())
    });
    // The audit log is closed by now. A blocking task still running (an
    // admin-API verification of a large store) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn wait_for_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
