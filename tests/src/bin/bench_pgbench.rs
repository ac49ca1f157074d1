//! pgbench -S against PostgreSQL directly, through pgbouncer (session mode) and through Tollgate
//! with strict recording, in one run on one machine: TPS, latency and ratios to direct for the
//! simple, extended and prepared protocols, and the CPU time each process spent per statement.
//!
//!     cargo run --release -p tollgate-tests --bin bench_pgbench [-- SECONDS]
//!
//! Everything (PostgreSQL with its statement log, nats-server, pgbouncer, the proxy, the control
//! plane projecting every event, pgbench) shares the machine, as it would on one small host.
//! Tollgate runs with guardrails and every masking detector on. CPU times come from /proc: the
//! control plane runs on a runtime of its own (threads named `tollgate-ctl`), so the proxy's
//! share of this process is what is left; PostgreSQL's is split between the backends of the
//! projector and everything else (the agents' backends, the logger, WAL).
//!
//! Tollgate runs three ways: strict recording; strict with the projector stopped (events are
//! stored and projected later); overlapped recording (see the data plane's `Recording`).
//!
//! `PROFILE=1 [CLIENTS=n] [MODE=simple|extended|prepared]` runs Tollgate alone (for `perf`).

use tollgate_control_plane::Control;
use tollgate_tests::{PgBouncer, Stack};

/// Linux reports CPU time in ticks of 1/100 s (USER_HZ).
const TICK_US: f64 = 10_000.0;
const CONTROL_THREADS: &str = "tollgate-ctl";

/// CPU ticks spent so far, by part.
#[derive(Clone, Copy, Default)]
struct Cpu {
    proxy: u64,
    control: u64,
    nats: u64,
    pg_projector: u64,
    pg_rest: u64,
    pgbouncer: u64,
    pgbench: u64,
}

impl Cpu {
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            proxy: self.proxy.saturating_sub(before.proxy),
            control: self.control.saturating_sub(before.control),
            nats: self.nats.saturating_sub(before.nats),
            pg_projector: self.pg_projector.saturating_sub(before.pg_projector),
            pg_rest: self.pg_rest.saturating_sub(before.pg_rest),
            pgbouncer: self.pgbouncer.saturating_sub(before.pgbouncer),
            pgbench: self.pgbench.saturating_sub(before.pgbench),
        }
    }

    fn parts(&self) -> [u64; 7] {
        [self.proxy, self.control, self.nats, self.pg_projector, self.pg_rest, self.pgbouncer, self.pgbench]
    }
}

/// `(comm, ppid, own ticks, reaped children's ticks)` of a `/proc/.../stat` file.
fn stat(path: &str) -> Option<(String, u32, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let ppid = fields.get(1)?.parse().ok()?;
    Some((comm, ppid, number(11) + number(12), number(13) + number(14)))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn sample(stack: &Stack, bouncer: &PgBouncer) -> Cpu {
    let mut cpu = Cpu::default();
    let (_, _, own, reaped) = stat("/proc/self/stat").expect("own stat");
    cpu.pgbench = reaped;
    let threads = std::fs::read_dir("/proc/self/task").expect("threads");
    cpu.control = threads
        .filter_map(|t| stat(&format!("{}/stat", t.ok()?.path().display())))
        .filter(|(comm, ..)| comm == CONTROL_THREADS)
        .map(|(_, _, ticks, _)| ticks)
        .sum();
    cpu.proxy = own.saturating_sub(cpu.control);
    if let Some((_, _, ticks, _)) = stack.nats.pid().and_then(|pid| stat(&format!("/proc/{pid}/stat"))) {
        cpu.nats = ticks;
    }
    let postmaster = stack.pg.postmaster_pid().expect("postmaster pid");
    if let Some((_, _, ticks, reaped)) = stat(&format!("/proc/{postmaster}/stat")) {
        cpu.pg_rest = ticks + reaped;
    }
    let ini = bouncer.ini.display().to_string();
    for pid in pids() {
        let Some((comm, ppid, ticks, _)) = stat(&format!("/proc/{pid}/stat")) else { continue };
        if ppid == postmaster {
            if cmdline(pid).starts_with("postgres: postgres tollgate") {
                cpu.pg_projector += ticks;
            } else {
                cpu.pg_rest += ticks;
            }
        } else if comm == "pgbouncer" && cmdline(pid).contains(&ini) {
            cpu.pgbouncer += ticks;
        }
    }
    cpu
}

/// Wait (a bounded while) for the backends of finished clients to exit, so their CPU time has
/// been handed to the postmaster when it is read.
fn settle(stack: &Stack) {
    let Some(postmaster) = stack.pg.postmaster_pid() else { return };
    for _ in 0..100 {
        let busy = pids().into_iter().any(|pid| {
            stat(&format!("/proc/{pid}/stat")).is_some_and(|(_, ppid, ..)| ppid == postmaster)
                && cmdline(pid).contains(" demo ")
        });
        if !busy {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

struct Run {
    mode: &'static str,
    clients: u32,
    target: &'static str,
    tps: f64,
    latency_ms: f64,
    cpu: Cpu,
}

#[derive(Clone, Copy)]
struct Bench<'a> {
    stack: &'a Stack,
    bouncer: &'a PgBouncer,
    seconds: u32,
    /// pgbench's built-in read-only script (`-S`), or its TPC-B-like write script.
    select_only: bool,
}

impl Bench<'_> {
    fn run(
        &self,
        target: &'static str,
        port: u16,
        user: &str,
        password: &str,
        mode: &'static str,
        clients: u32,
    ) -> Run {
        let script = if self.select_only { "-S" } else { "-b" };
        let builtin = if self.select_only { "select-only" } else { "tpcb-like" };
        let args: Vec<String> =
            [script, builtin, "-M", mode, "-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "demo"]
                .iter()
                .filter(|a| !(self.select_only && **a == "select-only"))
                .map(|s| s.to_string())
                .collect();
        settle(self.stack);
        let before = sample(self.stack, self.bouncer);
        let (tps, latency_ms) = tollgate_tests::pgbench(&self.stack.pg, &args, password, clients, self.seconds);
        settle(self.stack);
        let cpu = sample(self.stack, self.bouncer).since(before);
        eprintln!("{target}, {mode}, {clients} clients: {tps:.0} TPS");
        Run { mode, clients, target, tps, latency_ms, cpu }
    }
}

/// Guardrails on and every masking detector (the default) plus a column rule.
fn bench_policy() -> serde_json::Value {
    serde_json::json!({
        "resources": [{ "name": "demo", "kind": "postgres",
            "guardrails": {
                "deny_classes": ["drop", "truncate", "alter_system", "copy_program", "do_block", "grant", "role"],
                "deny_unbounded_writes": true,
                "deny_functions": ["pg_read_file", "lo_export"],
                "deny_relations": ["secrets"]
            },
            "masking": { "columns": ["*password*"] }
        }],
        "grants": [{ "name": "bench", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    })
}

/// Start a control plane on its own runtime (named threads, so its CPU time is told apart).
async fn control_on(
    runtime: &tokio::runtime::Runtime,
    config: tollgate_control_plane::config::ControlConfig,
) -> Control {
    runtime.spawn(Control::start(config)).await.expect("control task").expect("control plane starts")
}

#[tokio::main]
async fn main() {
    let seconds: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(15);
    let mut stack = Stack::start().await;
    // The direct and pgbouncer runs run statements around the proxy on purpose, so the
    // upstream's log cannot match the record.
    stack.skip_log_check_at_drop();
    let control_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CONTROL_THREADS)
        .enable_all()
        .build()
        .expect("control runtime");
    stack.control = control_on(&control_runtime, stack.control_config()).await;
    let version = stack.put_policy(&bench_policy()).await;
    tollgate_tests::eventually(10, "the proxy to load the bench policy", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;

    let pw = stack.upstream_password.clone();
    tollgate_tests::pgbench_init(&stack.pg, "app", &pw, "demo", 10);
    let bouncer = PgBouncer::start(&stack.pg, "demo", "app", &pw);
    let token = stack.agent_token("bench");
    let proxy_port = stack.proxy.postgres_addr.port();
    let (pg_port, bouncer_port) = (stack.pg.port, bouncer.port);

    if std::env::var_os("PROFILE").is_some() {
        let clients = std::env::var("CLIENTS").ok().and_then(|c| c.parse().ok()).unwrap_or(8);
        let mode = match std::env::var("MODE").as_deref() {
            Ok("extended") => "extended",
            Ok("prepared") => "prepared",
            _ => "simple",
        };
        eprintln!("profiling window: pid {}", std::process::id());
        let bench = Bench { stack: &stack, bouncer: &bouncer, seconds, select_only: true };
        let run = bench.run("tollgate, strict", proxy_port, "ci", &token, mode, clients);
        println!("tollgate, {mode}, {clients} clients: {:.0} TPS, {:.3} ms", run.tps, run.latency_ms);
        control_runtime.shutdown_background();
        return;
    }

    if std::env::var_os("ROW_LIMIT").is_some() {
        row_limit(&stack, &bouncer, seconds, (pg_port, proxy_port), (&pw, &token)).await;
        control_runtime.shutdown_background();
        return;
    }

    let mut runs = Vec::new();
    {
        let bench = Bench { stack: &stack, bouncer: &bouncer, seconds, select_only: true };
        for (mode, clients) in [("simple", 8), ("extended", 8), ("prepared", 8), ("simple", 1)] {
            runs.push(bench.run("direct", pg_port, "app", &pw, mode, clients));
            runs.push(bench.run("pgbouncer", bouncer_port, "app", &pw, mode, clients));
            runs.push(bench.run("tollgate, strict", proxy_port, "ci", &token, mode, clients));
        }
    }
    let events = stack.stream_messages().await.len();
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let messages = match js.get_stream(tollgate_shared::names::STREAM).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    };
    // Overlapped recording: the statement goes upstream while its event is being stored.
    let mut overlapped = stack.proxy_config("proxy-overlapped");
    for resource in &mut overlapped.resources {
        resource.recording = tollgate_data_plane::config::Recording::Overlapped;
    }
    let strict =
        std::mem::replace(&mut stack.proxy, tollgate_data_plane::Proxy::start(overlapped).await.expect("proxy"));
    {
        let port = stack.proxy.postgres_addr.port();
        let bench = Bench { stack: &stack, bouncer: &bouncer, seconds, select_only: true };
        for (mode, clients) in [("simple", 8), ("extended", 8), ("prepared", 8), ("simple", 1)] {
            runs.push(bench.run("tollgate, overlapped", port, "ci", &token, mode, clients));
        }
    }
    stack.proxy = strict;
    // The same with the projector stopped (events still recorded, projected later): what the
    // projector's concurrent writes cost on a machine this small.
    let mut idle = stack.control_config();
    idle.nats.url = "nats://127.0.0.1:9".into();
    stack.control = control_on(&control_runtime, idle).await;
    {
        let bench = Bench { stack: &stack, bouncer: &bouncer, seconds, select_only: true };
        for (mode, clients) in [("simple", 8), ("prepared", 8), ("simple", 1)] {
            runs.push(bench.run("tollgate, strict, projector stopped", proxy_port, "ci", &token, mode, clients));
        }
    }
    control_runtime.shutdown_background();
    report(&runs, seconds, events, messages);
}

/// `ROW_LIMIT=1`: pgbench's TPC-B-like script (five statements in a transaction, three updates
/// and an insert) directly, through Tollgate, and through Tollgate with `max_rows_written` set,
/// over both protocols: simple, where every write runs inside a savepoint the proxy sets and
/// releases, and extended, where it is counted in its pipeline.
async fn row_limit(stack: &Stack, bouncer: &PgBouncer, seconds: u32, ports: (u16, u16), secrets: (&str, &str)) {
    let ((pg_port, proxy_port), (pw, token)) = (ports, secrets);
    let bench = Bench { stack, bouncer, seconds, select_only: false };
    let shapes = [("simple", 8), ("simple", 1), ("extended", 8), ("extended", 1)];
    let mut runs = Vec::new();
    for (mode, clients) in shapes {
        runs.push(bench.run("direct", pg_port, "app", pw, mode, clients));
        runs.push(bench.run("tollgate, strict", proxy_port, "ci", token, mode, clients));
    }
    let mut limited = bench_policy();
    limited["resources"][0]["guardrails"]["max_rows_written"] = serde_json::json!(1000);
    let version = stack.put_policy(&limited).await;
    tollgate_tests::eventually(10, "the proxy to load the row limit", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    for (mode, clients) in shapes {
        runs.push(bench.run("tollgate, strict, max_rows_written", proxy_port, "ci", token, mode, clients));
    }
    println!("\npgbench TPC-B-like, scale 10, {seconds} s per run\n");
    println!("| protocol | clients | direct TPS | tollgate TPS | with max_rows_written TPS | limit / no limit |");
    println!("|---|---|---|---|---|---|");
    for (mode, clients) in shapes {
        let tps = |target: &str| {
            runs.iter().find(|r| r.mode == mode && r.clients == clients && r.target == target).map_or(0.0, |r| r.tps)
        };
        let (direct, plain, limit) =
            (tps("direct"), tps("tollgate, strict"), tps("tollgate, strict, max_rows_written"));
        println!("| {mode} | {clients} | {direct:.0} | {plain:.0} | {limit:.0} | {:.2} |", limit / plain.max(1.0));
    }
}

fn report(runs: &[Run], seconds: u32, events: usize, messages: u64) {
    let find = |mode: &str, clients: u32, target: &str| {
        runs.iter().find(|r| r.mode == mode && r.clients == clients && r.target == target)
    };
    let targets =
        ["direct", "pgbouncer", "tollgate, strict", "tollgate, strict, projector stopped", "tollgate, overlapped"];
    println!("\npgbench -S, scale 10, {seconds} s per run: TPS as a share of direct (one client: added latency)\n");
    println!("| pgbench -S | {} |", targets.join(" | "));
    println!("|---{}|", "|---".repeat(targets.len()));
    for (mode, clients) in [("simple", 8), ("extended", 8), ("prepared", 8), ("simple", 1)] {
        let Some(direct) = find(mode, clients, "direct") else { continue };
        let cells: Vec<String> = targets
            .iter()
            .map(|t| match find(mode, clients, t) {
                None => "-".into(),
                Some(r) if clients == 1 => format!("+{:.3} ms", r.latency_ms - direct.latency_ms),
                Some(r) => format!("{:.2}", r.tps / direct.tps),
            })
            .collect();
        println!("| {mode}, {clients} client{} | {} |", if clients == 1 { "" } else { "s" }, cells.join(" | "));
    }
    println!("\nCPU per statement (µs, from /proc), by process\n");
    println!(
        "| run | TPS | latency (ms) | proxy | control plane | nats-server | PG, projector's backends | PG, the rest | pgbouncer | pgbench | all |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for run in runs {
        let statements = (run.tps * f64::from(seconds)).max(1.0);
        let per = |ticks: u64| ticks as f64 * TICK_US / statements;
        let parts = run.cpu.parts();
        let cells: Vec<String> = parts.iter().map(|&t| format!("{:.0}", per(t))).collect();
        println!(
            "| {}, {}, {} | {:.0} | {:.3} | {} | {:.0} |",
            run.target,
            run.mode,
            run.clients,
            run.tps,
            run.latency_ms,
            cells.join(" | "),
            per(parts.iter().sum())
        );
    }
    println!("\nevents recorded on JetStream during the strict runs: {events}, in {messages} messages");
}
