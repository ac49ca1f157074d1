//! Time from the decision API call to the held statement having run, over N approvals:
//! an agent (tokio-postgres, simple protocol) sends `DROP TABLE t_i`, the proxy holds it; once
//! the request is projected, the clock starts, an approver POSTs the approval, and the clock
//! stops when the agent has the statement's result.
//!
//! ```sh
//! cargo run --release -p tollgate-tests --bin bench_approvals [-- N]
//! ```

use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use tollgate_shared::event::{ApprovalRequested, Envelope};
use tollgate_tests::{eventually, Stack};

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let stack = Stack::start().await;
    let tables: Vec<String> =
        (0..n).map(|i| format!("CREATE TABLE t_{i} (id int); ALTER TABLE t_{i} OWNER TO app;")).collect();
    stack.pg.admin_sql("demo", &tables.concat());
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [
            { "name": "drops", "hold_classes": ["drop"], "approver_groups": ["dba"], "timeout_secs": 60 }
        ]}],
        "grants": [{ "name": "all", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    let version = stack.put_policy(&policy).await;
    eventually(10, "policy", || async { (stack.proxy.policy_version() == Some(version)).then_some(()) }).await;

    let nats = stack.nats.client().await;
    let mut requests = nats.subscribe("tollgate.events.*.approval.requested").await.expect("subscribe");
    let client = stack.agent_client(&stack.agent_token("bench-bot")).await.expect("agent connects");
    let approver = stack.person_token("alice@example.com", &["approvers", "dba"]);
    let http = reqwest::Client::new();
    let api = format!("http://{}", stack.control.addr);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let statement = format!("DROP TABLE t_{i}");
        let held = client.simple_query(&statement);
        tokio::pin!(held);
        // Drive the held query until its request is on the stream.
        let id = tokio::select! {
            result = &mut held => panic!("statement ran without approval: {result:?}"),
            Some(message) = requests.next() => {
                let event: Envelope<ApprovalRequested> = serde_json::from_slice(&message.payload).expect("request event");
                event.payload.approval_id
            }
        };
        // The API decides on the projected request: wait for it without counting.
        loop {
            let response =
                http.get(format!("{api}/api/v1/approvals/{id}")).bearer_auth(&approver).send().await.expect("api");
            if response.status() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let started = Instant::now();
        let response = http
            .post(format!("{api}/api/v1/approvals/{id}/approve"))
            .bearer_auth(&approver)
            .json(&json!({ "reason": "bench" }))
            .send()
            .await
            .expect("approve");
        assert_eq!(response.status(), 202);
        held.await.expect("statement ran");
        samples.push(started.elapsed());
    }
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    println!("\n{n} approvals: decision API call → statement result at the agent");
    println!("| p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|");
    println!("| {:.1} | {:.1} | {:.1} | {:.1} |", pick(0.5), pick(0.9), pick(0.99), pick(1.0));
}
