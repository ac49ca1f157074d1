//! Time from a policy change on the API to its enforcement on the last of three proxies on one
//! NATS, over N changes (default 100): p50, p99, max.
//!
//!     cargo run --release -p tollgate-tests --bin bench_policy [-- CHANGES]

use std::time::{Duration, Instant};
use tollgate_tests::Stack;

#[tokio::main]
async fn main() {
    let changes: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let stack = Stack::start().await;
    let b = tollgate_data_plane::Proxy::start(stack.proxy_config("proxy-b")).await.expect("proxy b");
    let c = tollgate_data_plane::Proxy::start(stack.proxy_config("proxy-c")).await.expect("proxy c");
    let proxies = [&stack.proxy, &b, &c];
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let mut doc = tollgate_tests::default_policy();
        doc["resources"][0]["guardrails"] =
            serde_json::json!({ "deny_classes": if i % 2 == 0 { vec!["truncate"] } else { vec!["drop"] } });
        let started = Instant::now();
        let version = stack.put_policy(&doc).await;
        loop {
            if proxies.iter().all(|p| p.policy_version() == Some(version)) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!("version {version} not enforced everywhere after 30 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\npolicy change (PUT /api/v1/policy) → enforced on all 3 proxies, {changes} changes");
    println!("| p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|");
    println!("| {:.1} | {:.1} | {:.1} |", ms(at(0.50)), ms(at(0.99)), ms(samples[samples.len() - 1]));
}
