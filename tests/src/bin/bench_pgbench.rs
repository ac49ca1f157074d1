//! pgbench -S against PostgreSQL directly, through pgbouncer (session mode) and through Tollgate
//! with strict recording, in one run on one machine; prints TPS, latency and ratios to direct.
//!
//!     cargo run --release -p tollgate-tests --bin bench_pgbench [-- SECONDS]
//!
//! Everything (PostgreSQL, nats-server, pgbouncer, the proxy and the control plane projecting
//! every event) shares the machine with pgbench, as it would on a single small host.

use std::process::Command;
use tollgate_tests::{PgBouncer, Stack};

struct Run {
    target: &'static str,
    clients: u32,
    tps: f64,
    latency_ms: f64,
}

fn pgbench(stack: &Stack, args: &[String], password: &str, target: &'static str, clients: u32, seconds: u32) -> Run {
    let args: Vec<String> = std::iter::once("-S".to_owned()).chain(args.iter().cloned()).collect();
    let (tps, latency_ms) = tollgate_tests::pgbench(&stack.pg, &args, password, clients, seconds);
    Run { target, clients, tps, latency_ms }
}

#[tokio::main]
async fn main() {
    let seconds: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(15);
    let stack = Stack::start().await;
    let pw = stack.upstream_password.clone();
    let direct_url = stack.pg.url("app", &pw, "demo");
    let init =
        Command::new(stack.pg.bin("pgbench")).args(["-i", "-q", "-s", "10", &direct_url]).output().expect("pgbench -i");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let bouncer = PgBouncer::start(&stack.pg, "demo", "app", &pw);
    let token = stack.agent_token("bench");

    let conn = |port: u16, user: &str| -> Vec<String> {
        vec!["-h".into(), "127.0.0.1".into(), "-p".into(), port.to_string(), "-U".into(), user.into(), "demo".into()]
    };
    let proxy_port = stack.proxy.postgres_addr.port();
    let mut runs = Vec::new();
    for clients in [8, 1] {
        runs.push(pgbench(&stack, &conn(stack.pg.port, "app"), &pw, "direct", clients, seconds));
        runs.push(pgbench(&stack, &conn(bouncer.port, "app"), &pw, "pgbouncer", clients, seconds));
        runs.push(pgbench(&stack, &conn(proxy_port, "ci"), &token, "tollgate", clients, seconds));
    }
    // The same with the control plane stopped (events still recorded, projected later): shows
    // what the projector's concurrent writes cost on a machine this small.
    let mut stack = stack;
    let mut idle = stack.control_config();
    idle.nats.url = "nats://127.0.0.1:9".into();
    stack.control = tollgate_control_plane::Control::start(idle).await.expect("idle control plane");
    for clients in [8, 1] {
        runs.push(pgbench(&stack, &conn(proxy_port, "ci"), &token, "tollgate, projector stopped", clients, seconds));
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.clients));
    let events = stack.stream_messages().await.len();

    println!("\npgbench -S, {seconds} s per run, scale 10, simple protocol\n");
    println!("| clients | target | TPS | avg latency (ms) | TPS vs direct | latency vs direct |");
    println!("|---|---|---|---|---|---|");
    for run in &runs {
        let direct = runs.iter().find(|r| r.clients == run.clients && r.target == "direct").expect("direct run");
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.2} | {:.2} |",
            run.clients,
            run.target,
            run.tps,
            run.latency_ms,
            run.tps / direct.tps,
            run.latency_ms / direct.latency_ms
        );
    }
    println!("\nevents recorded on JetStream during the run: {events}");
}
