//! The `custos` command: run the gateway, or check a configuration file.

// The command line talks to people on stdout; that is its job.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use custos::config::{Config, LogFormat};
use custos::server::Proxy;
use tokio_util::sync::CancellationToken;

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
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let proxy = Proxy::new(config, shutdown.clone()).await?;
        tokio::spawn(wait_for_signal(shutdown));
        proxy.run().await?;
        Ok(())
    })
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
