//! The review endpoints on a projections database of COMMANDS commands (default 1,000,000)
//! spread over 30 days, 200 agents, 20 resources and 20,000 sessions, each with its result:
//! p50/p99 of each report over one day and over the whole period.
//!
//!     RUST_LOG=warn cargo run --release -p tollgate-tests --bin bench_reviews [-- SAMPLES]
//!
//! The rows are written straight into the views with SQL (what the projector would write for
//! them), so the benchmark measures the queries, not the projector.

use std::time::{Duration, Instant};
use tollgate_tests::Stack;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let samples: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let commands: u64 = std::env::var("COMMANDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let mut stack = Stack::start().await;
    stack.skip_log_check_at_drop();
    let started = Instant::now();
    let fill = format!(
        "INSERT INTO agents (id, issuer, subject, name, first_seen, last_seen)
           SELECT md5('agent' || a)::uuid, 'https://issuer', 'bot-' || a, 'bot-' || a, now() - interval '30 days', now()
           FROM generate_series(1, 200) a;
         INSERT INTO sessions (id, agent_id, resource, resource_kind, node, started_at, ended_at, grant_name, access, commands, events)
           SELECT md5('session' || s)::uuid, md5('agent' || (s % 200 + 1))::uuid, 'db-' || (s % 20), 'postgres', 'proxy-a',
                  now() - interval '30 days' + (s * interval '30 days' / 20000), now() - interval '30 days' + (s * interval '30 days' / 20000) + interval '1 minute',
                  'everyone', 'read-write', {per}, {per} * 2 + 2
           FROM generate_series(0, 19999) s;
         INSERT INTO commands (event_id, session_id, seq, at, agent_id, resource, protocol, statement, decision, classification, policy_version,
                               fingerprint)
           SELECT md5('command' || c)::uuid, md5('session' || (c / {per}))::uuid, c % {per} * 2 + 1,
                  now() - interval '30 days' + (c * interval '30 days' / {commands}),
                  md5('agent' || ((c / {per}) % 200 + 1))::uuid, 'db-' || ((c / {per}) % 20), 'simple',
                  'select * from orders_' || (c % 1000) || ' where id = ' || c,
                  CASE WHEN c % 97 = 0 THEN 'deny' WHEN c % 991 = 0 THEN 'hold' ELSE 'allow' END,
                  CASE WHEN c % 10 = 0 THEN '{{\"statements\": 1, \"classes\": [\"update\"], \"writes\": true}}'::jsonb
                       ELSE '{{\"statements\": 1, \"classes\": [\"select\"], \"writes\": false}}'::jsonb END, 1,
                  -- 1,000 statement shapes of 1,000 runs each (a stand-in for the real fingerprint).
                  substr(md5('orders_' || (c % 1000)), 1, 16)
           FROM generate_series(0, {last}) c;
         INSERT INTO command_results (event_id, command_id, session_id, at, outcome, tags, rows, duration_us)
           SELECT md5('result' || c)::uuid, md5('command' || c)::uuid, md5('session' || (c / {per}))::uuid,
                  now() - interval '30 days' + (c * interval '30 days' / {commands}), 'ok', ARRAY['SELECT 1'], 1, 100
           FROM generate_series(0, {last}) c;
         ANALYZE;",
        per = commands / 20_000,
        last = commands - 1,
    );
    stack.pg.admin_sql("tollgate", &fill);
    println!("filled {commands} commands in {:.1} s", started.elapsed().as_secs_f64());

    let now = chrono::Utc::now();
    let day = format!(
        "from={}&to={}",
        (now - chrono::Duration::days(10)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now - chrono::Duration::days(9)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let month = format!("from={}", (now - chrono::Duration::days(31)).format("%Y-%m-%dT%H:%M:%SZ"));
    let reports = [
        ("agents", "/api/v1/reviews/agents"),
        ("resources", "/api/v1/reviews/resources"),
        ("approvals", "/api/v1/reviews/approvals"),
        (
            "statements (exact text)",
            "/api/v1/reviews/statements?text=select%20*%20from%20orders_242%20where%20id%20%3D%20424242&",
        ),
        // The fingerprint of `orders_242`'s shape, as the fill made it.
        ("statements (fingerprint, 1,000 runs)", "/api/v1/reviews/statements?fingerprint=FINGERPRINT&"),
        ("unused grants", "/api/v1/reviews/unused-grants"),
    ];
    println!("| report | period | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    let print = stack.pg.admin_sql("tollgate", "select substr(md5('orders_242'), 1, 16)").trim().to_owned();
    for (name, path) in reports {
        let path = path.replace("FINGERPRINT", &print);
        let path = path.as_str();
        for (period, range) in [("one day", &day), ("30 days", &month)] {
            let separator = if path.ends_with('&') { "" } else { "?" };
            let url = format!("{path}{separator}{range}");
            let mut times = Vec::with_capacity(samples);
            for _ in 0..samples {
                let t = Instant::now();
                let (status, body) = stack.api(&url).await;
                times.push(t.elapsed());
                // Unused grants needs a policy; without one it answers 404, which is no measurement.
                assert!(status == 200 || (status == 404 && name == "unused grants"), "{url}: {status} {body}");
            }
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let (p50, p99) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
            println!("| {name} | {period} | {:.1} | {:.1} |", ms(p50), ms(p99));
        }
    }
}
