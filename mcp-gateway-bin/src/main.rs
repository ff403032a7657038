//! `mcp-gateway`: the reference MCP gateway binary.

use clap::{Parser, Subcommand};
use mcp_gateway::config::{self, LogFormat, Settings};
use mcp_gateway_layers::sessions::config::keygen;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mcp-gateway",
    version,
    about = "An MCP gateway: one governed entry point for many MCP servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP traffic. Each upstream NAME is served at /mcp/NAME.
    Serve {
        /// Configuration file (TOML). Flags below override or add to it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on, IP:PORT (default 127.0.0.1:8080).
        #[arg(long, value_parser = config::parse_listen)]
        listen: Option<SocketAddr>,
        /// An upstream MCP server: NAME=URL, or NAME=URL,URL,... for several instances.
        #[arg(long = "upstream", value_name = "NAME=URL[,URL...]")]
        upstreams: Vec<String>,
        /// TLS certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM); needs --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Write a new session key (base64 of 32 random bytes) for `[sessions] key_file`.
    Keygen {
        /// The file to write (created with mode 0600).
        #[arg(long, short, default_value = "session.key")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Check a configuration file and report every error with its location.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read the audit log: verify its hash chain, or query it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Pinned tool and prompt definitions: list the pins, diff what the gateway sees against
    /// them, approve it into the pins file.
    Pins {
        #[command(subcommand)]
        command: PinsCommand,
    },
    /// Calls held for a person's decision (`[[approvals]]`): list, approve, deny.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
}

#[derive(Subcommand)]
enum PinsCommand {
    /// Print the pins file's entries: upstream, kind, name, digest, approved by, approved at.
    List {
        /// Configuration file (TOML) naming `[integrity] pins_file`.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this upstream.
        upstream: Option<String>,
        /// Only these tools or prompts.
        names: Vec<String>,
    },
    /// Show, for each definition the running gateway saw that differs from its pin or has
    /// none, what differs (exit 1 when something does).
    Diff {
        /// Configuration file (TOML); its `[admin] listen` is asked.
        #[arg(long, short)]
        config: PathBuf,
        /// The upstream.
        upstream: String,
        /// Only these tools or prompts.
        names: Vec<String>,
    },
    /// Pin the definitions the running gateway saw: every one that differs or is new, or
    /// the ones named. A reload or restart applies them.
    Approve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The upstream.
        upstream: String,
        /// Only these tools or prompts.
        names: Vec<String>,
        /// Who approves (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Ask the gateway to reload at once (POST /reload on its admin listener).
        #[arg(long)]
        reload: bool,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// The calls waiting for a decision.
    List {
        /// Configuration file (TOML); its `[admin] listen` is asked.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held call: it goes on to the upstream.
    Approve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The call's id (from `approvals list`).
        id: String,
        /// Who approves (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Refuse to approve unless the call's arguments have this digest.
        #[arg(long)]
        arguments_digest: Option<String>,
        /// Refuse to approve unless the tool's definition has this digest.
        #[arg(long)]
        definition_digest: Option<String>,
    },
    /// Deny a held call: its client gets an error.
    Deny {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The call's id (from `approvals list`).
        id: String,
        /// Who denies (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

fn integrity(result: Result<ExitCode, mcp_gateway::integrity::CliError>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of audit files (rotated ones included, any order): exit 0 when
    /// intact, 1 naming the first altered, missing, reordered or inserted record.
    Verify {
        /// Audit files: the log and its rotated files (`audit.jsonl*`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the records that match every filter given: a table, or JSON lines.
    Query {
        /// Audit files: the log and its rotated files (`audit.jsonl*`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only this agent: the key limits and metrics name (the client id, else the
        /// subject).
        #[arg(long)]
        agent: Option<String>,
        /// Only this subject (the principal's `sub`).
        #[arg(long)]
        subject: Option<String>,
        /// Only calls to this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Only records since: a duration back from now (90s, 15m, 1h, 7d) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only this outcome (ok, error, tool_error, denied_auth, denied_permission,
        /// rate_limited, bad_session, bad_input, unavailable, upstream_error, client_gone,
        /// shutdown, http_error) or JSON-RPC error code (-32602).
        #[arg(long)]
        outcome: Option<String>,
        /// Print JSON lines (the records unchanged) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn audit(command: AuditCommand) -> ExitCode {
    use mcp_gateway_layers::audit::{self, Output, Query, VerifyError};
    let failed = match command {
        AuditCommand::Verify { files } => match audit::verify(&files) {
            Ok(report) => {
                for note in &report.notes {
                    eprintln!("note: {note}");
                }
                println!("{report}");
                return ExitCode::SUCCESS;
            }
            Err(e @ VerifyError::Broken { .. }) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
            Err(e) => e.to_string(),
        },
        AuditCommand::Query {
            files,
            agent,
            subject,
            tool,
            since,
            outcome,
            json,
        } => {
            let now = std::time::SystemTime::now();
            let output = if json { Output::Json } else { Output::Table };
            match Query::from_flags(agent, tool, since.as_deref(), outcome, now).and_then(
                |mut q| {
                    q.subject = subject;
                    audit::query(&files, &q, output, &mut std::io::stdout().lock())
                        .map_err(|e| e.to_string())
                },
            ) {
                Ok(_) => return ExitCode::SUCCESS,
                Err(e) => e,
            }
        }
    };
    eprintln!("error: {failed}");
    ExitCode::from(2)
}

fn report(errors: &[config::ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Audit { command } => audit(command),
        Command::Pins { command } => integrity(match command {
            PinsCommand::List {
                config,
                upstream,
                names,
            } => mcp_gateway::integrity::pins_list(&config, upstream.as_deref(), &names),
            PinsCommand::Diff {
                config,
                upstream,
                names,
            } => mcp_gateway::integrity::pins_diff(&config, &upstream, &names),
            PinsCommand::Approve {
                config,
                upstream,
                names,
                by,
                reload,
            } => mcp_gateway::integrity::pins_approve(
                &config,
                &upstream,
                &names,
                by.as_deref(),
                reload,
            ),
        }),
        Command::Approvals { command } => integrity(match command {
            ApprovalsCommand::List { config, json } => {
                mcp_gateway::integrity::approvals_list(&config, json)
            }
            ApprovalsCommand::Approve {
                config,
                id,
                by,
                arguments_digest,
                definition_digest,
            } => mcp_gateway::integrity::approvals_decide(
                &config,
                &id,
                true,
                by.as_deref(),
                arguments_digest.as_deref(),
                definition_digest.as_deref(),
            ),
            ApprovalsCommand::Deny { config, id, by } => mcp_gateway::integrity::approvals_decide(
                &config,
                &id,
                false,
                by.as_deref(),
                None,
                None,
            ),
        }),
        Command::Keygen { out, force } => match keygen(&out, force) {
            Ok(fingerprint) => {
                println!("{}: new session key {fingerprint}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match config::load(&config) {
            Ok(s) => {
                println!(
                    "{}: ok ({} upstream{}: {})",
                    config.display(),
                    s.upstreams.len(),
                    if s.upstreams.len() == 1 { "" } else { "s" },
                    s.upstreams
                        .iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(errors) => report(&errors),
        },
        Command::Serve {
            config,
            listen,
            upstreams,
            tls_cert,
            tls_key,
            log_json,
        } => {
            let mut settings = match &config {
                Some(path) => match config::load(path) {
                    Ok(s) => s,
                    Err(errors)
                        if !upstreams.is_empty()
                            && errors.iter().all(|e| e.message.starts_with("no upstreams")) =>
                    {
                        let mut s = Settings::from_flags(
                            listen.unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid")),
                            Vec::new(),
                        );
                        s.upstreams.clear();
                        s
                    }
                    Err(errors) => return report(&errors),
                },
                None => {
                    if upstreams.is_empty() {
                        eprintln!("error: give --config FILE or at least one --upstream NAME=URL");
                        return ExitCode::from(2);
                    }
                    Settings::from_flags("127.0.0.1:8080".parse().expect("valid"), Vec::new())
                }
            };
            if let Some(l) = listen {
                settings.listen = l;
            }
            let flags = match upstreams
                .iter()
                .map(|f| config::parse_upstream_flag(f))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(specs) => specs,
                Err(e) => return report(&[e]),
            };
            let overrides = config::Overrides {
                listen,
                upstreams: flags.clone(),
                tls: tls_cert.clone().zip(tls_key.clone()),
            };
            let replaced = match settings.add_flag_upstreams(flags) {
                Ok(replaced) => replaced,
                Err(e) => return report(&[e]),
            };
            if let (Some(c), Some(k)) = (tls_cert, tls_key) {
                settings.tls = Some((c, k));
            }
            // A reload reads the file again and applies the same flags over it.
            settings.overrides = overrides;
            if log_json {
                settings.log_format = LogFormat::Json;
            }
            mcp_gateway::logging::init(settings.log_format, &settings.log_level);
            if let Some(path) = &config {
                for name in replaced {
                    tracing::warn!(
                        "--upstream {name}=… replaces upstream {name:?} of {}",
                        path.display()
                    );
                }
            }
            // One worker: a single-threaded runtime (no work stealing, no cross-thread
            // wake-ups). More: the multi-threaded one with that many workers (the default,
            // `runtime = "shared"`), or, per core, that many single-threaded runtimes.
            let threads = settings.worker_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let per_core = threads > 1 && settings.runtime == config::RuntimeMode::PerCore;
            let mut builder = if threads <= 1 || per_core {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(threads);
                b
            };
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let bound = if per_core {
                    mcp_gateway::Gateway::bind_per_core(settings, threads).await
                } else {
                    mcp_gateway::Gateway::bind(settings).await
                };
                match bound {
                    Ok(gw) => {
                        gw.run_until_signal().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        // Once, and not as a log line: a log filter must not hide why the
                        // gateway did not start.
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
