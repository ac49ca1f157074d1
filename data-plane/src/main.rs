//! `tollgate-proxy --config proxy.toml`

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "tollgate-proxy", version, about = "Tollgate data-plane proxy")]
struct Args {
    /// TOML configuration file; `TOLLGATE_*` environment variables override it.
    #[arg(long, short, env = "TOLLGATE_PROXY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // One crypto provider for the whole process (rustls panics when it has to guess).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let config = tollgate_data_plane::config::ProxyConfig::load(args.config.as_deref())?;
    let proxy = tollgate_data_plane::Proxy::start(config).await?;
    shutdown_signal().await?;
    tracing::info!("shutting down");
    proxy.shutdown(std::time::Duration::from_secs(10)).await;
    Ok(())
}

/// Ctrl-C or SIGTERM (what container runtimes send).
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
