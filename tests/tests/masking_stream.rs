//! Masking streams: ten million rows flow through the proxy, masked message by message, while
//! the process's resident memory stays flat.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_tests::Stack;

const ROWS: u64 = 10_000_000;

/// Resident memory of this process (proxy, control plane and test harness), bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_million_rows_stream_in_constant_memory() {
    let stack = Stack::start().await;
    let token = stack.agent_token("bot-stream");
    // One row in a hundred holds an email to mask; psql fetches through a cursor in batches,
    // so neither psql nor the proxy needs the whole result at once.
    let sql = format!(
        "SELECT g AS id, 'user ' || g || CASE WHEN g % 100 = 0 THEN ' u' || g || '@example.com' ELSE ' ok' END AS note \
         FROM generate_series(1, {ROWS}) g"
    );
    let warm =
        stack.psql(&token, None, &["-At", "-c", "SELECT 'warm@example.com' FROM generate_series(1, 100000)"], None);
    assert!(warm.status.success());
    let baseline = rss();

    let samples = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, running) = (samples.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                samples.lock().unwrap().push(rss());
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let script = format!(
        "'{psql}' -X -At -v FETCH_COUNT=50000 -h 127.0.0.1 -p {port} -U ci-bot -d demo -c \"$SQL\" | \
         awk '/\\[masked:email\\]/ {{ m++ }} /@example\\.com/ {{ leak++ }} END {{ print NR, m + 0, leak + 0 }}'",
        psql = stack.pg.bin("psql").display(),
        port = stack.proxy.postgres_addr.port(),
    );
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .args(["-c", &script])
            .env("PGPASSWORD", token)
            .env("PGSSLMODE", "disable")
            .env("SQL", sql)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("psql pipeline")
    })
    .await
    .expect("join");
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    sampler.join().unwrap();

    let counts = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        counts.trim(),
        format!("{ROWS} {} 0", ROWS / 100),
        "rows, masked, leaked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = samples.lock().unwrap();
    let peak = samples.iter().copied().max().unwrap_or(0);
    let growth = peak.saturating_sub(baseline);
    println!(
        "streamed {ROWS} rows in {:.1} s; RSS baseline {} MiB, peak {} MiB, growth {} MiB over {} samples",
        elapsed.as_secs_f64(),
        baseline >> 20,
        peak >> 20,
        growth >> 20,
        samples.len()
    );
    assert!(samples.len() > 10, "sampled while streaming");
    assert!(growth < 48 << 20, "memory grew by {} MiB while streaming", growth >> 20);
}
