//! Servers for tests, each started fresh on free loopback ports so a test can kill and restart
//! it to inject a fault.

mod leaks;
mod logs;
mod nats;
mod pgbouncer;
pub(crate) mod postgres;
pub mod python;
mod ssh;
mod stack;
mod tap;
pub mod upstream_log;
pub mod wire;

pub use leaks::leaked;
pub use logs::captured_logs;
pub use nats::NatsServer;
pub use pgbouncer::{pgbench, pgbench_init, PgBouncer};
pub use postgres::PgServer;
pub use ssh::{agent_scp, agent_ssh, agent_ssh_command, agent_ssh_with, keygen as ssh_keygen, SshHost};
pub use stack::{default_policy, start_issuer, Stack, AGENT_AUDIENCE, REVIEWER_AUDIENCE};
pub use tap::Tap;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Process-wide setup: one rustls provider, and logs captured for leak checks.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        logs::install();
    });
}

/// Certificates for tests, made with the openssl CLI in a directory.
pub struct TestPki {
    /// The CA that signed `cert`; what clients trust.
    pub ca: std::path::PathBuf,
    /// A server certificate for `localhost` and 127.0.0.1.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate it signed (webpki refuses a CA certificate as a server's).
pub fn test_pki(dir: &std::path::Path) -> TestPki {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-days", "2", "-subj", "/CN=tollgate-test-ca", "-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
        dir,
    );
    openssl(
        &[&["req"], &ec[..], &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "server.csr"]].concat(),
        dir,
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions file");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ],
        dir,
    );
    TestPki { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") }
}

/// Poll `check` until it returns `Some`, or panic after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
