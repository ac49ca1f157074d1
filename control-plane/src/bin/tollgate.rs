//! `tollgate`: the admin CLI. `tollgate policy apply -f FILE`, `tollgate policy diff -f FILE`,
//! `tollgate policy get`, `tollgate verify-export`,
//! `tollgate review agents|resources|approvals|unused-grants|statements`; `tollgate login` and
//! `tollgate logout` for people (the device sign-in, its token kept for the next commands); and
//! for agents, `tollgate ssh-cert` (a token traded for an SSH certificate).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tollgate_control_plane::cli::{self, Api};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "Tollgate admin CLI")]
struct Args {
    /// Control-plane API base URL.
    #[arg(long, env = "TOLLGATE_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// A file holding your bearer token (or set TOLLGATE_TOKEN; without either, the token
    /// `tollgate login` kept).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign in as a person with your identity provider (device sign-in: open the address shown,
    /// enter the code), and keep the token for the next commands.
    Login {
        /// The identity provider (one of the control plane's reviewer issuers).
        #[arg(long, env = "TOLLGATE_ISSUER")]
        issuer: String,
        /// This CLI's client id at the provider.
        #[arg(long, env = "TOLLGATE_CLIENT_ID", default_value = "tollgate-cli")]
        client_id: String,
        /// Scopes besides openid (repeat for each).
        #[arg(long = "scope", default_values_t = ["groups".to_owned()])]
        scopes: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Forget the token `tollgate login` kept.
    Logout,
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check a signed export offline (no API, no token): its signature by the control plane's
    /// public key, then every session's chain re-hashed from the events it holds.
    VerifyExport {
        /// The export file (`GET /api/v1/reviews/export`).
        file: PathBuf,
        /// The control plane's public key, hex (`tollgate-control public-key`).
        #[arg(long)]
        public_key: String,
    },
    /// Access-review reports for a period (every page), as JSON or CSV.
    #[command(subcommand)]
    Review(ReviewCommand),
    /// Trade the agent's token (--token-file or TOLLGATE_TOKEN) for a short-lived SSH user
    /// certificate signed by the gateway; prints it (save it as <key>-cert.pub).
    SshCert {
        /// The gateway's SSH listener, host:port.
        #[arg(long)]
        gateway: String,
        /// The gateway's host key (`ssh-ed25519 AAAA...`, or file:PATH): any other is refused.
        #[arg(long)]
        gateway_key: String,
        /// The public key to certify (OpenSSH format), e.g. ~/.ssh/id_ed25519.pub.
        #[arg(short = 'i', long = "identity")]
        identity: PathBuf,
    },
}

#[derive(clap::Args)]
struct Period {
    /// Start of the period (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long)]
    from: String,
    /// End of the period (default: now).
    #[arg(long)]
    to: Option<String>,
    /// CSV instead of JSON.
    #[arg(long)]
    csv: bool,
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// Per agent: resources reached, commands by decision and class, refused logins...
    Agents(Period),
    /// Per resource: which agents reached it and how.
    Resources(Period),
    /// Every held command: requester, approvers, channel, reason, timing, outcome.
    Approvals(Period),
    /// Access granted but not used (or used read-only) in the period, with the policy that
    /// revokes it (`suggested_policy`, for `tollgate policy apply`).
    UnusedGrants(Period),
    /// Who ran a statement: every agent and session, with its approval.
    #[command(group(clap::ArgGroup::new("which").required(true).multiple(false)))]
    Statements {
        #[command(flatten)]
        period: Period,
        /// The statement exactly as recorded.
        #[arg(long, group = "which")]
        text: Option<String>,
        /// Or any statement containing this text.
        #[arg(long, group = "which")]
        contains: Option<String>,
        /// Or every statement with this fingerprint (as the report's rows carry it).
        #[arg(long, group = "which")]
        fingerprint: Option<String>,
        /// Or every statement of the same shape as this one, whatever its values.
        #[arg(long, group = "which")]
        same_as: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Make a policy file (YAML or JSON) the next version.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Show what applying a policy file would change.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Print the live policy.
    Get,
}

async fn ssh_cert(
    gateway: &str,
    gateway_key: &str,
    identity: &std::path::Path,
    token: &str,
) -> Result<String, cli::CliError> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| cli::CliError::Input(format!("{}: {e}", path.display())))
    };
    let gateway_key = match gateway_key.strip_prefix("file:") {
        Some(path) => read(std::path::Path::new(path))?,
        None => gateway_key.to_owned(),
    };
    let public_key = read(identity)?;
    let ask =
        tollgate_control_plane::ssh_cert::Ask { gateway, gateway_key: &gateway_key, token, public_key: &public_key };
    tollgate_control_plane::ssh_cert::request(&ask).await
}

/// Check an export file; exit 0 only when the signature holds and every session is intact.
fn verify_export(file: &std::path::Path, public_key: &str) -> std::process::ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("tollgate: {}: {e}", file.display());
            return std::process::ExitCode::from(2);
        }
    };
    match tollgate_shared::export::check(&bytes, public_key) {
        Ok(check) => {
            println!("{}", serde_json::to_string_pretty(&check).unwrap_or_default());
            if check.problems.is_empty() && check.intact == check.sessions {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    match &args.command {
        Command::VerifyExport { file, public_key } => return verify_export(file, public_key),
        Command::Login { issuer, client_id, scopes, timeout_secs } => {
            return report(login(&args.api, issuer, client_id, scopes, *timeout_secs).await)
        }
        Command::Logout => {
            return report(
                cli::login::default_path()
                    .and_then(|path| cli::login::logout(&path))
                    .map(|had| if had { "signed out\n" } else { "was not signed in\n" }.to_owned()),
            )
        }
        _ => {}
    }
    let token = match (&args.token_file, std::env::var("TOLLGATE_TOKEN")) {
        (Some(path), _) => match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("tollgate: {}: {e}", path.display());
                return std::process::ExitCode::from(2);
            }
        },
        (None, Ok(t)) => t,
        // An agent's token only: a person's kept sign-in is for the API, never for a gateway.
        (None, Err(_)) if matches!(args.command, Command::SshCert { .. }) => {
            eprintln!("tollgate: ssh-cert needs the agent's token: --token-file or TOLLGATE_TOKEN");
            return std::process::ExitCode::from(2);
        }
        (None, Err(_)) => match cli::login::default_path().and_then(|path| cli::login::load(&path, &args.api)) {
            Ok(credentials) => credentials.access_token,
            Err(e) => {
                eprintln!("tollgate: {e} (or give a token with --token-file or TOLLGATE_TOKEN)");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let api = Api::new(&args.api, &token);
    let result = match args.command {
        Command::VerifyExport { .. } | Command::Login { .. } | Command::Logout => Ok(String::new()),
        Command::SshCert { gateway, gateway_key, identity } => {
            ssh_cert(&gateway, &gateway_key, &identity, &token).await
        }
        Command::Policy(PolicyCommand::Apply { file, comment }) => cli::apply(&api, &file, comment.as_deref()).await,
        Command::Policy(PolicyCommand::Diff { file }) => cli::diff(&api, &file).await,
        Command::Policy(PolicyCommand::Get) => cli::get(&api).await,
        Command::Review(review) => {
            let (report, period, filter) = match &review {
                ReviewCommand::Agents(p) => ("agents", p, None),
                ReviewCommand::Resources(p) => ("resources", p, None),
                ReviewCommand::Approvals(p) => ("approvals", p, None),
                ReviewCommand::UnusedGrants(p) => ("unused-grants", p, None),
                ReviewCommand::Statements { period, text, contains, fingerprint, same_as } => (
                    "statements",
                    period,
                    [("text", text), ("contains", contains), ("fingerprint", fingerprint), ("same_as", same_as)]
                        .into_iter()
                        .find_map(|(name, value)| value.as_deref().map(|v| (name, v))),
                ),
            };
            cli::review(&api, report, &period.from, period.to.as_deref(), filter, period.csv, 1000).await
        }
    };
    report(result)
}

/// Print what a command produced, or why it failed.
fn report(result: Result<String, cli::CliError>) -> std::process::ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `tollgate login`: the instructions on standard error (standard output stays for results),
/// then the token kept where the next commands find it.
async fn login(
    api: &str,
    issuer: &str,
    client_id: &str,
    scopes: &[String],
    timeout_secs: u64,
) -> Result<String, cli::CliError> {
    let path = cli::login::default_path()?;
    let timeout = std::time::Duration::from_secs(timeout_secs);
    let request = cli::login::Login { api, issuer, client_id, scopes, timeout };
    let credentials = cli::login::login(&request, |how| eprintln!("{how}\nWaiting for you to sign in...")).await?;
    cli::login::store(&path, &credentials)?;
    let until =
        credentials.expires_at.map(|t| format!(" until {}", t.format("%Y-%m-%d %H:%M UTC"))).unwrap_or_default();
    Ok(format!(
        "signed in as {} for {}{until}; token kept in {}\n",
        credentials.subject,
        credentials.api,
        path.display()
    ))
}
