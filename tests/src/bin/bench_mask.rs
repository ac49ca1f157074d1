//! Masking cost, two ways, in one run:
//!
//! 1. the masking engine alone on a realistic mixed result set (DataRows of ids, timestamps,
//!    UUIDs, names, prices, hashes, free-text notes, some emails, phones and the odd secret),
//!    single-threaded: MB/s per core, with every detector and with none;
//! 2. pgbench reading such rows (`SELECT * FROM people WHERE id = :id`) directly, through
//!    pgbouncer, and through Tollgate with masking off and on.
//!
//! ```sh
//! cargo run --release -p tollgate-tests --bin bench_mask [-- SECONDS]
//! DETECTORS=1 cargo run --release -p tollgate-tests --bin bench_mask   # engine, per detector
//! ONLY=encoded cargo run --release -p tollgate-tests --bin bench_mask   # one detector or all (perf)
//! ```

use bytes::{BufMut, BytesMut};
use serde_json::json;
use std::time::{Duration, Instant};
use tollgate_data_plane::pg::mask::{mask_data_row, Column, Findings};
use tollgate_shared::mask::Masker;
use tollgate_shared::policy::Masking;
use tollgate_tests::{eventually, PgBouncer, Stack};

/// A value generator that always gives the same rows.
struct Rows(u64);

impl Rows {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn row(&mut self, id: u64) -> Vec<String> {
        let r = self.next();
        let names = ["Alice Martin", "Bob Nguyen", "Chloé Dubois", "Dmitri Ivanov", "Eve O'Brien", "Farah Khan"];
        let statuses = ["shipped", "pending", "refunded", "cancelled", "delivered"];
        let notes = [
            "customer asked to deliver after 5pm",
            "left at front door, signed by neighbour",
            "second attempt; call before arrival",
            "gift wrap requested, no invoice in the box",
            "address verified by phone",
        ];
        let mut note = notes[(r % 5) as usize].to_string();
        match r % 50 {
            0 => note.push_str(&format!(" card 4111 1111 1111 {:04}", 1111)),
            1 => note.push_str(" contact: +44 20 7946 0958"),
            2 => note.push_str(" password=Winter2026!"),
            _ => {}
        }
        let email = if r.is_multiple_of(3) { format!("user{id}@example.com") } else { String::new() };
        vec![
            id.to_string(),
            format!("{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}", r as u32, r >> 48, r & 0xfff, (r >> 12) & 0xfff, r >> 16),
            format!(
                "2026-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                r % 12 + 1,
                r % 28 + 1,
                r % 24,
                r % 60,
                (r >> 8) % 60,
                r % 1_000_000
            ),
            names[(r % 6) as usize].into(),
            email,
            statuses[(r % 5) as usize].into(),
            format!("{}.{:02}", r % 2000, r % 100),
            format!("{:016x}{:016x}{:016x}{:016x}", r, r.rotate_left(7), r.rotate_left(19), r.rotate_left(41)),
            note,
        ]
    }
}

fn data_row(values: &[String]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for v in values {
        body.put_i32(v.len() as i32);
        body.put_slice(v.as_bytes());
    }
    body.to_vec()
}

/// (MB/s, rows/s, share of rows changed) over `rows`, for about two seconds.
fn engine(masker: &Masker, rows: &[Vec<u8>], columns: &[Column]) -> (f64, f64, f64) {
    let bytes: usize = rows.iter().map(Vec::len).sum();
    let started = Instant::now();
    let (mut passes, mut changed) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(2) {
        for row in rows {
            let mut found = Findings::default();
            if mask_data_row(masker, row, Some(columns), None, &mut found).expect("row").is_some() {
                changed += 1;
            }
        }
        passes += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let total_rows = passes as f64 * rows.len() as f64;
    (passes as f64 * bytes as f64 / secs / 1e6, total_rows / secs, changed as f64 / total_rows)
}

fn pgbench(
    stack: &Stack,
    script: &std::path::Path,
    port: u16,
    user: &str,
    password: &str,
    clients: u32,
    seconds: u32,
) -> (f64, f64) {
    let args: Vec<String> =
        ["-f", &script.display().to_string(), "-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "demo"]
            .iter()
            .map(|a| a.to_string())
            .collect();
    tollgate_tests::pgbench(&stack.pg, &args, password, clients, seconds)
}

#[tokio::main]
async fn main() {
    let seconds: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);

    // 1. The engine alone.
    let mut gen = Rows(0x9E3779B97F4A7C15);
    let rows: Vec<Vec<u8>> = (1..=20_000).map(|id| data_row(&gen.row(id))).collect();
    let names = ["id", "order_uuid", "placed_at", "name", "email", "status", "total", "digest", "note"];
    let columns: Vec<Column> = names.iter().map(|n| Column { name: (*n).into(), type_oid: 25, format: 0 }).collect();
    let mb = rows.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
    // `ONLY=<detector>`: that detector alone, for a profiler.
    if let Ok(name) = std::env::var("ONLY") {
        let detectors = (name != "all").then(|| vec![name.clone()]);
        let one = Masker::new(&Masking { detectors, ..Default::default() }).expect("detector");
        let (mbs, rps, _) = engine(&one, &rows, &columns);
        println!("| {name} | {mbs:.0} | {rps:.0} |");
        return;
    }
    let all = Masker::strict();
    let none = Masker::new(&Masking { detectors: Some(vec![]), ..Default::default() }).expect("no detectors");
    let (all_mbs, all_rows, changed) = engine(&all, &rows, &columns);
    let (none_mbs, none_rows, _) = engine(&none, &rows, &columns);
    // `DETECTORS=1`: each detector alone, to see where the time goes; no pgbench.
    if std::env::var("DETECTORS").is_ok() {
        println!("| detector alone | MB/s | rows/s |\n|---|---|---|");
        for name in tollgate_shared::mask::builtin_names() {
            let one =
                Masker::new(&Masking { detectors: Some(vec![name.into()]), ..Default::default() }).expect("detector");
            let (mbs, rps, _) = engine(&one, &rows, &columns);
            println!("| {name} | {mbs:.0} | {rps:.0} |");
        }
        println!("| all | {all_mbs:.0} | {all_rows:.0} |\n| none | {none_mbs:.0} | {none_rows:.0} |");
        return;
    }

    // 2. pgbench over such rows.
    let stack = Stack::start().await;
    let mut gen = Rows(0x9E3779B97F4A7C15);
    let mut copy = String::new();
    for id in 1..=10_000 {
        copy.push_str(&gen.row(id).join("\t"));
        copy.push('\n');
    }
    stack.pg.admin_sql(
        "demo",
        "CREATE TABLE people (id int PRIMARY KEY, order_uuid text, placed_at text, name text, email text, status text, \
         total text, digest text, note text); ALTER TABLE people OWNER TO app",
    );
    let token = stack.agent_token("bench-mask");
    let loaded = stack.psql(&token, None, &["-c", "COPY people FROM STDIN"], Some(&copy));
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let script = stack.dir.path().join("people.sql");
    std::fs::write(&script, "\\set id random(1, 10000)\nSELECT * FROM people WHERE id = :id;\n").expect("script");
    let pw = stack.upstream_password.clone();
    let bouncer = PgBouncer::start(&stack.pg, "demo", "app", &pw);
    let proxy = stack.proxy.postgres_addr.port();
    let set_masking = |masking: serde_json::Value| {
        let stack = &stack;
        async move {
            let document = json!({
                "resources": [{ "name": "demo", "kind": "postgres", "masking": masking }],
                "grants": [{ "name": "all", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
            });
            let version = stack.put_policy(&document).await;
            eventually(10, "policy", || async { (stack.proxy.policy_version() == Some(version)).then_some(()) }).await;
        }
    };
    let mut runs = Vec::new();
    for clients in [8u32, 1] {
        runs.push((clients, "direct", pgbench(&stack, &script, stack.pg.port, "app", &pw, clients, seconds)));
        runs.push((clients, "pgbouncer", pgbench(&stack, &script, bouncer.port, "app", &pw, clients, seconds)));
        set_masking(json!({ "detectors": [] })).await;
        runs.push((clients, "tollgate, masking off", pgbench(&stack, &script, proxy, "ci", &token, clients, seconds)));
        set_masking(json!({})).await;
        runs.push((clients, "tollgate, masking on", pgbench(&stack, &script, proxy, "ci", &token, clients, seconds)));
    }

    println!("\n## Masking engine, one thread\n");
    println!(
        "{} rows ({mb:.1} MB of DataRows, 9 text columns, {:.0}% of rows hold something to mask)\n",
        rows.len(),
        changed * 100.0
    );
    println!("| detectors | MB/s | rows/s |");
    println!("|---|---|---|");
    println!("| all built-in | {all_mbs:.0} | {all_rows:.0} |");
    println!("| none (parse and forward only) | {none_mbs:.0} | {none_rows:.0} |");
    println!("\n## pgbench `SELECT * FROM people WHERE id = :id`, {seconds} s per run\n");
    println!("| clients | target | TPS | avg latency (ms) | TPS vs direct | vs masking off |");
    println!("|---|---|---|---|---|---|");
    for (clients, target, (tps, latency)) in &runs {
        let direct = runs.iter().find(|r| r.0 == *clients && r.1 == "direct").map_or(1.0, |r| r.2 .0);
        let off = runs.iter().find(|r| r.0 == *clients && r.1 == "tollgate, masking off").map_or(1.0, |r| r.2 .0);
        let vs_off = if target.starts_with("tollgate") { format!("{:.2}", tps / off) } else { "".into() };
        println!("| {clients} | {target} | {tps:.0} | {latency:.3} | {:.2} | {vs_off} |", tps / direct);
    }
}
