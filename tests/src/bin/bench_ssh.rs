//! Added latency of a trivial SSH exec through the gateway: N runs of `ssh host true`, straight
//! to the host (the gateway's key, the same forced command) and through the gateway (token as
//! the password, the command judged and recorded before it runs, its result after), each a
//! fresh `ssh` process as a pipeline step would be. Reports p50 and p95 of both and the
//! difference.
//!
//! ```sh
//! cargo run --release -p tollgate-tests --bin bench_ssh [-- N]
//! ```

use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_tests::{eventually, SshHost, Stack};

/// One key exchange for both paths (the gateway speaks curve25519; OpenSSH would otherwise
/// pick a post-quantum hybrid with the host, and the comparison would measure that).
const KEX: &str = "KexAlgorithms=curve25519-sha256";

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn timed(mut command: Command) -> Duration {
    let started = Instant::now();
    let out = command.stdin(Stdio::null()).output().expect("ssh runs");
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    elapsed
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let host = SshHost::start();
    let mut stack = Stack::start().await;
    let policy = json!({
        "resources": [
            { "name": "demo", "kind": "postgres", "labels": { "env": "test" } },
            { "name": "web-1", "kind": "ssh", "labels": { "env": "test" },
              "guardrails": { "deny_commands": ["rm -rf /*", "shutdown"] } }
        ],
        "grants": [{ "name": "all", "who": { "agents": ["*"] }, "resources": { "labels": { "env": "test" } }, "access": "admin" }]
    });
    let version = stack.put_policy(&policy).await;
    stack.serve_ssh(&host, "web-1", None).await;
    eventually(10, "policy", || async { (stack.proxy.policy_version() == Some(version)).then_some(()) }).await;
    let gateway = stack.proxy.ssh_addr.expect("ssh listener");
    let token = stack.agent_token("bench-bot");
    let direct = || {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-T", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", KEX, "-i"])
            .arg(&host.gateway_key)
            .arg("-p")
            .arg(host.port.to_string())
            .arg(format!("{}@127.0.0.1", host.user))
            .arg("true");
        c
    };
    // Warm both paths once.
    timed(direct());
    let through_gateway = || tollgate_tests::agent_ssh_with(gateway, "web-1", &token, &["-o", KEX], Some("true"));
    timed(through_gateway());
    let (mut straight, mut through) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        straight.push(timed(direct()));
        through.push(timed(through_gateway()));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (d50, d95) = (percentile(&mut straight, 0.5), percentile(&mut straight, 0.95));
    let (g50, g95) = (percentile(&mut through, 0.5), percentile(&mut through, 0.95));
    println!("ssh exec `true`, {n} runs, a fresh ssh process each");
    println!("| path | p50 ms | p95 ms |");
    println!("|---|---|---|");
    println!("| direct to the host | {:.1} | {:.1} |", ms(d50), ms(d95));
    println!("| through Tollgate (strict recording) | {:.1} | {:.1} |", ms(g50), ms(g95));
    println!("| added | {:+.1} | {:+.1} |", ms(g50) - ms(d50), ms(g95) - ms(d95));
    assert_eq!(host.commands().len(), 2 * (n + 1), "every run reached the host");
}
