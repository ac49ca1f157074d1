//! psycopg (3, from Debian's python3-psycopg, on Debian's own python3) as a real driver in
//! end-to-end tests: a script reads `DSN` from its environment and prints one JSON value.

use std::process::Command;

/// The interpreter psycopg is installed for (`scripts/install-deps.sh` installs it there).
const PYTHON: &str = "/usr/bin/python3";

/// Run `script` with `DSN` set; its standard output parsed as JSON.
pub fn psycopg(script: &str, dsn: &str) -> serde_json::Value {
    let out = Command::new(PYTHON)
        .args(["-c", script])
        .env("DSN", dsn)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON} runs (scripts/install-deps.sh installs python3-psycopg): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the psycopg script failed:\n{stderr}\n{stdout}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the script printed no JSON ({e}): {stdout}\n{stderr}"))
}
