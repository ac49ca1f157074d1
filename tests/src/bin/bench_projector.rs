//! How fast the projector writes events into the Postgres views: a backlog recorded through the
//! proxy (pgbench -S, strict recording) while the control plane is down, then drained by a
//! control plane started on its own runtime; events per second from start to the last commit.
//!
//!     RUST_LOG=warn cargo run --release -p tollgate-tests --bin bench_projector [-- SECONDS]
//!
//! SECONDS is how long pgbench fills the backlog (default 15); `BATCH=n` sets the projector's
//! batch size (messages per transaction).

use std::time::Instant;
use tollgate_control_plane::Control;
use tollgate_tests::Stack;

/// Events the running control plane has projected (its metrics counter: reading it costs the
/// database nothing, unlike counting rows while they are written).
async fn projected(stack: &Stack) -> u64 {
    stack.metric("tollgate_projector_events_total{result=\"projected\"}").await
}

#[tokio::main]
async fn main() {
    let seconds: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(15);
    let mut stack = Stack::start().await;
    stack.skip_log_check_at_drop();
    let pw = stack.upstream_password.clone();
    tollgate_tests::pgbench_init(&stack.pg, "app", &pw, "demo", 10);

    let projected_before: u64 =
        stack.pg.admin_sql("tollgate", "select count(*) from events").trim().parse().unwrap_or(0);
    // The control plane down: events are stored on JetStream and wait to be projected.
    let mut down = stack.control_config();
    let mut config = stack.control_config();
    if let Some(batch) = std::env::var("BATCH").ok().and_then(|b| b.parse().ok()) {
        config.projector.batch_size = batch;
    }
    down.nats.url = "nats://127.0.0.1:9".into();
    stack.control = Control::start(down).await.expect("idle control plane");
    let already = 0;
    let token = stack.agent_token("bench");
    let port = stack.proxy.postgres_addr.port().to_string();
    let args: Vec<String> =
        ["-S", "-h", "127.0.0.1", "-p", &port, "-U", "ci", "demo"].iter().map(|s| s.to_string()).collect();
    let (tps, _) = tollgate_tests::pgbench(&stack.pg, &args, &token, 8, seconds);
    let backlog = stack.stream_messages().await.len() as u64;
    eprintln!("backlog: {backlog} events ({tps:.0} statements/s while recording)");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tollgate-ctl")
        .enable_all()
        .build()
        .expect("control runtime");
    let started = Instant::now();
    stack.control = runtime.spawn(Control::start(config)).await.expect("control task").expect("control plane");
    let mut last = (started.elapsed(), already);
    loop {
        let count = projected(&stack).await;
        if count != last.1 {
            last = (started.elapsed(), count);
        }
        // The backlog includes the events projected before the control plane went down.
        if count + projected_before >= backlog {
            break;
        }
        if started.elapsed() - last.0 > std::time::Duration::from_secs(30) {
            panic!("the projector stalled at {count} of {backlog} events");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let drained = last.1 - already;
    let secs = last.0.as_secs_f64();
    println!("\nprojector: {drained} events into the views in {secs:.2} s = {:.0} events/s", drained as f64 / secs);
    runtime.shutdown_background();
}
