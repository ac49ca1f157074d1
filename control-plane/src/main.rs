//! `tollgate-control serve | public-key | nats-config | rebuild | openapi | dev-issuer serve | dev-issuer mint`

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use tollgate_control_plane::{api, config::ControlConfig, dev_issuer::DevIssuer, Control};

#[derive(Parser)]
#[command(name = "tollgate-control", version, about = "Tollgate control plane")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the projector and the REST API.
    Serve {
        /// TOML configuration file; `TOLLGATE_*` environment variables override it.
        #[arg(long, short, env = "TOLLGATE_CONTROL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the public key proxies verify control messages with (`[control] public_key`),
    /// creating the signing key when it does not exist yet.
    PublicKey {
        /// The signing key file (`signing_key_file` in the configuration).
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Write a NATS server configuration for Tollgate: one nkey user per component (seed
    /// files `control.nk` and `<node>.nk` beside it), each allowed only its own subjects.
    NatsConfig {
        /// Directory for `nats-server.conf` and the seed files (kept: running it again reuses them).
        #[arg(long)]
        dir: PathBuf,
        /// A proxy node name (repeat for each proxy).
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        #[arg(long, default_value = "127.0.0.1:4222")]
        listen: String,
        /// JetStream storage directory.
        #[arg(long)]
        store_dir: PathBuf,
        /// TLS certificate and key (PEM) the server presents to clients.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// This server's name in a JetStream cluster (with `--cluster-listen` and `--route`).
        #[arg(long, requires = "cluster_listen")]
        server_name: Option<String>,
        /// Address this server listens on for routes from the other servers of the cluster.
        #[arg(long, requires = "server_name")]
        cluster_listen: Option<String>,
        /// Another server's route URL (`nats-route://nats-2:6222`; repeat for each).
        #[arg(long = "route", requires = "cluster_listen")]
        routes: Vec<String>,
    },
    /// Recreate every projection from the event stream into a new, empty schema of the
    /// projections database (the live views go on); prints what it wrote as JSON.
    Rebuild {
        #[arg(long, short, env = "TOLLGATE_CONTROL_CONFIG")]
        config: Option<PathBuf>,
        /// The schema to create and fill (it must not exist yet).
        #[arg(long)]
        schema: String,
    },
    /// Print the OpenAPI document (what openapi/openapi.json holds).
    Openapi,
    /// DEVELOPMENT ONLY: a local token issuer for the quickstart.
    #[command(subcommand)]
    DevIssuer(DevCmd),
}

#[derive(Subcommand)]
enum DevCmd {
    /// Serve discovery and JWKS on a loopback address.
    Serve {
        #[arg(long, default_value = "127.0.0.1:5556")]
        listen: String,
        #[arg(long)]
        key_file: PathBuf,
        /// The issuer URL tokens carry (default: http://LISTEN). For containers, e.g. http://dev-issuer:5556.
        #[arg(long)]
        public_url: Option<String>,
        /// Allow a non-loopback listen address (a demo network only: anyone reaching it can mint tokens).
        #[arg(long)]
        insecure_any_address: bool,
        /// A person who may sign in: `name:password:group1,group2` (repeat for each).
        #[arg(long = "user")]
        users: Vec<String>,
        /// A client allowed to receive sign-in codes: `client_id=redirect_uri` (repeat for each),
        /// e.g. `tollgate-console=http://127.0.0.1:8080/console/callback`; or a bare
        /// `client_id` for a command line that signs in with the device grant (`tollgate login`).
        #[arg(long = "client")]
        clients: Vec<String>,
    },
    /// Print a signed token.
    Mint {
        #[arg(long)]
        key_file: PathBuf,
        /// Issuer URL (the `serve` address, with http://).
        #[arg(long, default_value = "http://127.0.0.1:5556")]
        issuer: String,
        #[arg(long)]
        sub: String,
        #[arg(long, default_value = "tollgate")]
        aud: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Extra claims, `name=value` (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Add to the `groups` claim (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Args::parse().command {
        Cmd::Serve { config } => {
            let config = ControlConfig::load(config.as_deref())?;
            let _control = Control::start(config).await?;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                result = tokio::signal::ctrl_c() => result?,
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        }
        Cmd::Rebuild { config, schema } => {
            let config = ControlConfig::load(config.as_deref())?;
            let rebuilt = tollgate_control_plane::projector::rebuild::rebuild(&config, &schema).await?;
            println!("{}", serde_json::to_string_pretty(&rebuilt)?);
        }
        Cmd::Openapi => print!("{}", api::openapi_json()),
        Cmd::NatsConfig { dir, nodes, listen, store_dir, tls_cert, tls_key, server_name, cluster_listen, routes } => {
            let cluster = cluster_listen.map(|listen| tollgate_control_plane::natsconf::Cluster {
                name: "tollgate".into(),
                listen,
                routes,
            });
            let plan = tollgate_control_plane::natsconf::Plan {
                dir,
                nodes,
                listen,
                store_dir,
                server_name,
                tls: tls_cert.zip(tls_key),
                cluster,
                extra_users: Vec::new(),
            };
            let path = tollgate_control_plane::natsconf::write(&plan).map_err(anyhow::Error::msg)?;
            println!("{}", path.display());
        }
        Cmd::PublicKey { key_file } => {
            println!("{}", tollgate_control_plane::load_signing_key(&key_file)?.public_hex());
        }
        Cmd::DevIssuer(DevCmd::Serve { listen, key_file, public_url, insecure_any_address, users, clients }) => {
            let addr: std::net::SocketAddr = listen.parse().context("--listen must be ip:port")?;
            anyhow::ensure!(
                addr.ip().is_loopback() || insecure_any_address,
                "the development issuer binds to loopback addresses only (see --insecure-any-address)"
            );
            let url = public_url.unwrap_or_else(|| format!("http://{addr}"));
            let issuer = Arc::new(DevIssuer::with_key_file(url.clone(), &key_file)?);
            for user in &users {
                let mut parts = user.splitn(3, ':');
                let (Some(name), Some(password)) = (parts.next(), parts.next()) else {
                    anyhow::bail!("--user {user:?}: write name:password:group1,group2");
                };
                let groups: Vec<&str> = parts.next().unwrap_or("").split(',').filter(|g| !g.is_empty()).collect();
                let mut claims = serde_json::Map::new();
                claims.insert("groups".into(), serde_json::json!(groups));
                claims.insert("name".into(), serde_json::json!(name));
                issuer.add_user(name, password, claims);
            }
            for client in &clients {
                match client.split_once('=') {
                    Some((id, redirect)) => issuer.add_client(id, redirect),
                    None => issuer.add_device_client(client),
                }
            }
            eprintln!("*** DEVELOPMENT ISSUER {url}: anyone who can reach it can mint tokens. Never trust it in production. ***");
            let listener = tokio::net::TcpListener::bind(addr).await?;
            axum::serve(listener, issuer.router()).await?;
        }
        Cmd::DevIssuer(DevCmd::Mint { key_file, issuer, sub, aud, ttl, claims, groups }) => {
            let issuer = DevIssuer::with_key_file(issuer, &key_file)?;
            let mut extra = serde_json::Map::new();
            for claim in claims {
                let (k, v) = claim.split_once('=').context("--claim takes name=value")?;
                extra.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
            }
            if !groups.is_empty() {
                extra.insert("groups".to_owned(), serde_json::json!(groups));
            }
            println!("{}", issuer.mint(&sub, &aud, ttl, &extra)?);
        }
    }
    Ok(())
}
