//! Servers for tests, each started fresh on free loopback ports so a test can kill and restart
//! it to inject a fault.

mod logs;
mod nats;
mod pgbouncer;
pub(crate) mod postgres;
mod stack;
mod tap;

pub use logs::captured_logs;
pub use nats::NatsServer;
pub use pgbouncer::PgBouncer;
pub use postgres::PgServer;
pub use stack::{Stack, AGENT_AUDIENCE, REVIEWER_AUDIENCE};
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
