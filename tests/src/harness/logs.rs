//! Every log line of the in-process proxy and control plane, kept so tests can prove that no
//! secret was ever logged.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

fn buffer() -> &'static Mutex<Vec<u8>> {
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        buffer().lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        // Through eprint! so the test runner shows a test's logs only when it fails.
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) fn install() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "debug,sqlx=warn,async_nats=info,hyper=info,h2=info,reqwest=info,tower=info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| Capture).with_ansi(false).try_init();
}

/// Everything logged so far in this process.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&buffer().lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}
