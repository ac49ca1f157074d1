//! `tollgate`: the admin CLI. `tollgate policy apply -f FILE`, `tollgate policy diff -f FILE`,
//! `tollgate policy get`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tollgate_control_plane::cli::{self, Api};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "Tollgate admin CLI")]
struct Args {
    /// Control-plane API base URL.
    #[arg(long, env = "TOLLGATE_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// A file holding your bearer token (or set TOLLGATE_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(subcommand)]
    Policy(PolicyCommand),
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let token = match (&args.token_file, std::env::var("TOLLGATE_TOKEN")) {
        (Some(path), _) => match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("tollgate: {}: {e}", path.display());
                return std::process::ExitCode::from(2);
            }
        },
        (None, Ok(t)) => t,
        (None, Err(_)) => {
            eprintln!("tollgate: give a token with --token-file or TOLLGATE_TOKEN");
            return std::process::ExitCode::from(2);
        }
    };
    let api = Api::new(&args.api, &token);
    let result = match args.command {
        Command::Policy(PolicyCommand::Apply { file, comment }) => cli::apply(&api, &file, comment.as_deref()).await,
        Command::Policy(PolicyCommand::Diff { file }) => cli::diff(&api, &file).await,
        Command::Policy(PolicyCommand::Get) => cli::get(&api).await,
    };
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
