//! SSH through the gateway against straight to the host, in one run:
//! - added latency of a trivial exec: N runs of `ssh host true`, straight to the host (the
//!   gateway's key, the same forced command) and through the gateway (token as the password,
//!   the command judged and recorded before it runs, its result after), each a fresh `ssh`
//!   process as a pipeline step would be; p50 and p95 of both and the difference;
//! - scp of one large file (SCP_MB, default 1024) both ways, each operation judged and
//!   recorded: MB/s of both and the ratio;
//! - memory per idle session: IDLE sessions (default 50) logged in through the gateway
//!   (`ssh -N`, each with its own login to the host), the growth of this process's resident
//!   memory (it holds the proxy) divided by their number.
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

/// An ssh command line (`... destination command`) turned into a connection-sharing master
/// on `socket` that runs nothing itself.
fn master(command: Command, socket: &std::path::Path) -> Command {
    let mut args: Vec<std::ffi::OsString> = command.get_args().map(|a| a.to_owned()).collect();
    args.pop();
    let destination = args.pop().expect("a destination");
    let mut c = Command::new(command.get_program());
    c.envs(command.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))));
    c.args(args).args(["-M", "-N", "-o", "ControlPersist=no", "-S"]).arg(socket).arg(destination);
    c
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

    // The same over one connection each (ssh's connection sharing): what the gateway adds to
    // an exec itself (judging, the durable `command` event, the host's channel), without the
    // key exchange and login that dominate a fresh ssh process.
    let shared = tempfile::tempdir().expect("control socket dir");
    let share = |name: &str, command: Command| {
        let socket = shared.path().join(name);
        let child = master(command, &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh master");
        let started = Instant::now();
        while !socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(20), "ssh master {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        (child, socket)
    };
    let (mut direct_child, direct_socket) = share("direct", direct());
    let (mut gateway_child, gateway_socket) = share("gateway", through_gateway());
    let over = |socket: &std::path::Path| {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-T", "-o", "ControlMaster=no", "-S"]).arg(socket).args(["shared", "true"]);
        c
    };
    timed(over(&direct_socket));
    timed(over(&gateway_socket));
    let (mut straight, mut through) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        straight.push(timed(over(&direct_socket)));
        through.push(timed(over(&gateway_socket)));
    }
    for child in [&mut direct_child, &mut gateway_child] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (d50, d95) = (percentile(&mut straight, 0.5), percentile(&mut straight, 0.95));
    let (g50, g95) = (percentile(&mut through, 0.5), percentile(&mut through, 0.95));
    println!();
    println!("ssh exec `true`, {n} runs over one shared connection per path");
    println!("| path | p50 ms | p95 ms |");
    println!("|---|---|---|");
    println!("| direct to the host | {:.1} | {:.1} |", ms(d50), ms(d95));
    println!("| through Tollgate (strict recording) | {:.1} | {:.1} |", ms(g50), ms(g95));
    println!("| added | {:+.1} | {:+.1} |", ms(g50) - ms(d50), ms(g95) - ms(d95));
    assert_eq!(host.commands().len(), 4 * (n + 1), "every run reached the host");

    // scp, both ways, one large file.
    let mb: u64 = std::env::var("SCP_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let local = tempfile::tempdir().expect("local dir");
    let big = local.path().join("big.bin");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&big).expect("big file"));
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mb {
            // Not all zeros, not compressible by accident.
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7 + j / 251) as u8;
            }
            file.write_all(&block).expect("write");
        }
    }
    let cipher = "Ciphers=aes256-gcm@openssh.com";
    let scp_direct = |from: &str, to: &str| {
        let mut c = Command::new("scp");
        c.args(["-q", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", KEX, "-o", cipher, "-i"])
            .arg(&host.gateway_key)
            .arg("-P")
            .arg(host.port.to_string())
            .args([from, to]);
        c
    };
    let scp_gateway = |from: &str, to: &str| {
        let mut c = tollgate_tests::agent_ssh_with(gateway, "web-1", &token, &[], None);
        let ssh_args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> =
            c.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))).collect();
        c = Command::new("scp");
        c.envs(envs).args(["-q", "-o", KEX, "-o", cipher]);
        // ssh's options, without its -p/-T and destination (scp takes -P and its own).
        let mut args = ssh_args.iter().peekable();
        while let Some(a) = args.next() {
            match a.as_str() {
                "-T" => {}
                "-p" => {
                    args.next();
                }
                "-F" | "-o" => {
                    c.arg(a).arg(args.next().expect("a value"));
                }
                _ => {}
            }
        }
        c.arg("-P").arg(gateway.port().to_string()).args([from, to]);
        c
    };
    let big_path = big.display().to_string();
    let back = local.path().join("back.bin").display().to_string();
    let mbps = |d: Duration| mb as f64 / d.as_secs_f64();
    let up_direct = timed(scp_direct(&big_path, &format!("{}@127.0.0.1:up-direct.bin", host.user)));
    let up_gateway = timed(scp_gateway(&big_path, &format!("web-1@{}:up-gateway.bin", gateway.ip())));
    let down_direct = timed(scp_direct(&format!("{}@127.0.0.1:up-direct.bin", host.user), &back));
    let down_gateway = timed(scp_gateway(&format!("web-1@{}:up-gateway.bin", gateway.ip()), &back));
    assert_eq!(std::fs::metadata(host.work("up-gateway.bin")).expect("uploaded").len(), mb << 20);
    println!();
    println!("scp of a {mb} MiB file (aes256-gcm, curve25519)");
    println!("| direction | direct MB/s | through Tollgate MB/s | ratio |");
    println!("|---|---|---|---|");
    for (what, d, g) in [("upload", up_direct, up_gateway), ("download", down_direct, down_gateway)] {
        println!("| {what} | {:.0} | {:.0} | {:.2} |", mbps(d), mbps(g), mbps(g) / mbps(d));
    }
    drop(local);

    // Memory per idle session.
    let idle: usize = std::env::var("IDLE").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let rss = || {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .expect("VmRSS")
    };
    let open_sessions = || async {
        let (_, page) = stack.api("/api/v1/sessions?resource=web-1&limit=500").await;
        page["items"].as_array().map(|items| items.iter().filter(|s| s["ended_at"].is_null()).count()).unwrap_or(0)
    };
    let before = rss();
    let mut children = Vec::new();
    for _ in 0..idle {
        let child = tollgate_tests::agent_ssh_with(gateway, "web-1", &token, &["-N"], None)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh -N");
        children.push(child);
    }
    eventually(60, "every idle session open", || async { (open_sessions().await >= idle).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss();
    println!();
    println!("{idle} idle SSH sessions (each logged in to the host too): resident memory {} KiB before, {} KiB after: {:.0} KiB per session", before, after, (after.saturating_sub(before)) as f64 / idle as f64);
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}
