//! SSH through Tollgate, with the real `ssh` client and a real OpenSSH host: the agent logs
//! in with its token, the gateway with the key it holds; each exec is judged on its command
//! line, recorded before it runs, its output masked; denied commands never run and held ones
//! run only once approved. The host's own command log (written by a forced command before
//! anything runs) is the proof of what ran.

use serde_json::{json, Value};
use std::process::Output;
use tollgate_tests::{agent_ssh, agent_ssh_command, agent_ssh_with, eventually, SshHost, Stack};

fn policy() -> Value {
    json!({
        "resources": [
            { "name": "demo", "kind": "postgres", "labels": { "env": "test" } },
            { "name": "web-1", "kind": "ssh", "labels": { "env": "test" },
              "guardrails": { "deny_commands": ["touch *denied*", "shutdown"] },
              "approvals": [{ "name": "changes", "hold_classes": ["exec"], "commands": ["touch *held*"],
                              "approver_groups": ["ops"], "timeout_secs": 60 }] }
        ],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "labels": { "env": "test" } }, "access": "admin" }]
    })
}

async fn stack_with(host: &SshHost, pinned: Option<&str>) -> Stack {
    stack_under(host, &policy(), pinned).await
}

/// A stack serving `host` as web-1 under `document`.
async fn stack_under(host: &SshHost, document: &Value, pinned: Option<&str>) -> Stack {
    let mut stack = Stack::start().await;
    stack.serve_ssh(host, "web-1", pinned).await;
    stack.enforce(document).await;
    stack
}

/// An agent's `ssh` running `command` in the background (to be held).
fn ssh_spawn(stack: &Stack, token: &str, command: &str) -> std::process::Child {
    let gateway = stack.proxy.ssh_addr.expect("the proxy serves SSH");
    agent_ssh_command(gateway, "web-1", token, command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh")
}

/// The one pending approval request, once projected.
async fn pending(stack: &Stack) -> Value {
    eventually(20, "a pending approval request", || async {
        let (status, list) = stack.api("/api/v1/approvals?status=pending").await;
        let items = list.as_array()?.clone();
        (status == 200 && items.len() == 1).then(|| items[0].clone())
    })
    .await
}

fn ssh(stack: &Stack, token: &str, command: &str) -> Output {
    let gateway = stack.proxy.ssh_addr.expect("the proxy serves SSH");
    agent_ssh(gateway, "web-1", token, command, None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every event on the stream, parsed.
async fn events(stack: &Stack) -> Vec<Value> {
    stack.stream_messages().await.iter().map(|m| serde_json::from_slice(m).expect("an event is JSON")).collect()
}

/// The `command` events of exec requests, once `n` are on the stream.
async fn exec_commands(stack: &Stack, n: usize) -> Vec<Value> {
    eventually(20, "exec commands on the stream", || async {
        let found: Vec<Value> = events(stack)
            .await
            .into_iter()
            .filter(|e| e["type"] == "command" && e["payload"]["protocol"] == "exec")
            .collect();
        (found.len() >= n).then_some(found)
    })
    .await
}

async fn result_of(stack: &Stack, command_id: &str) -> Value {
    eventually(20, "the command's result on the stream", || async {
        events(stack)
            .await
            .into_iter()
            .find(|e| e["type"] == "command.result" && e["payload"]["command_id"] == command_id)
    })
    .await
}

/// The SSH sessions, once `n` have ended and are projected.
async fn ended(stack: &Stack, n: usize) -> Vec<Value> {
    eventually(30, "SSH sessions to be projected", || async {
        let (status, page) = stack.api("/api/v1/sessions?resource=web-1").await;
        let items = page["items"].as_array()?.clone();
        let ended = items.iter().filter(|s| !s["ended_at"].is_null()).count();
        (status == 200 && ended >= n).then_some(items)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_on_the_host_with_the_held_key_masked_and_on_record() {
    let host = SshHost::start();
    let stack = stack_with(&host, None).await;
    let token = stack.agent_token("deploy-bot");
    let notes = "owner: alice@example.com\naws AKIAIOSFODNN7EXAMPLE\nplain\n";
    std::fs::write(host.work("notes.txt"), notes).expect("seed the host");
    let out = ssh(&stack, &token, "echo hello from host; cat notes.txt");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("hello from host\n"), "{stdout}");
    assert!(stdout.contains("plain\n"), "{stdout}");
    assert!(!stdout.contains("alice@example.com") && !stdout.contains("AKIAIOSFODNN7EXAMPLE"), "masked: {stdout}");
    assert!(stdout.contains("[masked:email]"), "{stdout}");
    let out = ssh(&stack, &token, "exit 3");
    assert_eq!(out.status.code(), Some(3), "the program's exit status reaches the agent");

    // The host ran exactly what the record shows, in order.
    let ran = host.commands();
    assert_eq!(ran, ["echo hello from host; cat notes.txt", "exit 3"]);
    let commands = exec_commands(&stack, 2).await;
    let recorded: Vec<&str> = commands.iter().filter_map(|c| c["payload"]["statement"].as_str()).collect();
    assert_eq!(recorded, ran);
    assert!(commands.iter().all(|c| c["payload"]["decision"] == "allow" && c["resource"]["kind"] == "ssh"));
    // An SSH command is an event of its own kind: nothing PostgreSQL-only on it.
    assert!(commands.iter().all(|c| c["payload"].get("postgres").is_none()), "{commands:?}");
    let started = events(&stack).await.into_iter().find(|e| e["type"] == "session.started").expect("session.started");
    assert_eq!(started["payload"]["upstream"].get("database"), None, "{started}");
    let result = result_of(&stack, commands[0]["id"].as_str().unwrap()).await;
    let exec = &result["payload"]["exec"];
    assert_eq!(exec["exit_status"], 0, "{result}");
    assert_eq!(exec["stdout_bytes"], "hello from host\n".len() + notes.len(), "bytes as the host sent them: {result}");
    let sample = exec["sample"].as_str().unwrap();
    assert!(sample.contains("[masked:email]") && !sample.contains("alice@example.com"), "{sample}");
    let result = result_of(&stack, commands[1]["id"].as_str().unwrap()).await;
    assert_eq!(result["payload"]["exec"]["exit_status"], 3);
    assert_eq!(result["payload"]["outcome"], "error");

    // The key the gateway holds reached neither the agent nor the record.
    let key = std::fs::read_to_string(&host.gateway_key).expect("gateway key");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let stream: Vec<u8> = stack.stream_messages().await.concat();
    assert!(!text(&stream).contains(&body[..40]) && !stdout.contains(&body[..40]));
    let sessions = ended(&stack, 2).await;
    assert!(sessions.iter().all(|s| s["resource_kind"] == "ssh"), "{sessions:?}");
    // An exec is a use of more than read-only access: the review keeps the grant as it is.
    let from = (chrono::Utc::now() - chrono::Duration::minutes(10)).format("%Y-%m-%dT%H:%M:%SZ");
    let (_, review) = stack.api(&format!("/api/v1/reviews/unused-grants?from={from}")).await;
    let web = review["grants"].as_array().and_then(|g| g.iter().find(|g| g["resource"] == "web-1").cloned());
    let web = web.unwrap_or_else(|| panic!("web-1 in {review}"));
    assert_eq!(
        (web["sessions"].as_i64(), web["wrote"].as_bool(), web["finding"].as_str()),
        (Some(2), Some(true), None),
        "{review}"
    );
    for session in &sessions {
        let (_, verify) = stack.api(&format!("/api/v1/sessions/{}/verify", session["id"].as_str().unwrap())).await;
        assert_eq!(
            (verify["views_match"].as_bool(), verify["trusted"].as_bool()),
            (Some(true), Some(true)),
            "{verify}"
        );
    }
    assert_eq!(host.check_against(&events(&stack).await), Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_opaque_commands_never_run() {
    let host = SshHost::start();
    let stack = stack_with(&host, None).await;
    let token = stack.agent_token("deploy-bot");

    let out = ssh(&stack, &token, "touch denied-1");
    assert_eq!(out.status.code(), Some(126));
    assert!(text(&out.stderr).contains("denied by rule deny_commands:touch *denied*"), "{}", text(&out.stderr));
    let out = ssh(&stack, &token, "sh -c 'touch denied-2'");
    assert_eq!(out.status.code(), Some(126));
    assert!(text(&out.stderr).contains("opaque_command"), "{}", text(&out.stderr));
    let out = ssh(&stack, &token, "t=touch; $t denied-3");
    assert_eq!(out.status.code(), Some(126), "a program named by a variable: {}", text(&out.stderr));
    let out = ssh(&stack, &token, "echo 'unterminated");
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unparsable"));

    // Positive control: an allowed command after them ran, and is the only one the host saw.
    let out = ssh(&stack, &token, "touch allowed-1");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(host.commands(), ["touch allowed-1"]);
    assert!(host.work("allowed-1").exists());
    for marker in ["denied-1", "denied-2", "denied-3"] {
        assert!(!host.work(marker).exists(), "{marker}");
    }
    let commands = exec_commands(&stack, 5).await;
    let decisions: Vec<(&str, &str)> = commands
        .iter()
        .map(|c| (c["payload"]["decision"].as_str().unwrap(), c["payload"]["rule"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        decisions,
        [
            ("deny", "deny_commands:touch *denied*"),
            ("deny", "opaque_command"),
            ("deny", "opaque_command"),
            ("deny", "unparsable"),
            ("allow", "")
        ]
    );
    assert_eq!(host.check_against(&events(&stack).await), Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_exec_runs_only_once_approved() {
    let host = SshHost::start();
    let stack = stack_with(&host, None).await;
    let child = ssh_spawn(&stack, &stack.agent_token("deploy-bot"), "touch held-1");
    let request = pending(&stack).await;
    assert_eq!(request["statement"], "touch held-1");
    assert_eq!(request["rule"], "changes");
    assert!(host.commands().is_empty(), "held: not on the host");

    let id = request["id"].as_str().unwrap();
    let approver = stack.person_token("olga@example.com", &["approvers", "ops"]);
    let body = json!({ "reason": "planned change" });
    let (status, _) =
        stack.api_send("POST", &format!("/api/v1/approvals/{id}/approve"), Some(&approver), Some(&body)).await;
    assert_eq!(status, 202);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("ssh ends")).await.expect("join");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("waiting for approval {id}")), "{}", text(&out.stderr));
    assert_eq!(host.commands(), ["touch held-1"]);
    assert!(host.work("held-1").exists());
    let released = eventually(20, "approval.released on the stream", || async {
        events(&stack).await.into_iter().find(|e| e["type"] == "approval.released")
    })
    .await;
    assert_eq!(released["payload"]["approval_id"], id);
    assert_eq!(host.check_against(&events(&stack).await), Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_refused_and_recorded() {
    let host = SshHost::start();
    let stack = stack_with(&host, None).await;
    let out = ssh(&stack, "not-a-token", "touch never");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let failed = eventually(20, "auth.failed on the stream", || async {
        events(&stack).await.into_iter().find(|e| e["type"] == "auth.failed")
    })
    .await;
    assert_eq!(failed["payload"]["code"], "ssh:bad_token");
    assert_eq!(failed["payload"]["requested_resource"], "web-1");
    assert_eq!(failed["resource"]["kind"], "ssh");
    // Positive control: a good token after it runs, and only that command reached the host;
    // the token also works as the answer of keyboard-interactive authentication.
    let out = ssh(&stack, &stack.agent_token("deploy-bot"), "touch after");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let gateway = stack.proxy.ssh_addr.expect("ssh");
    let interactive = ["-o", "PreferredAuthentications=keyboard-interactive"];
    let out = agent_ssh_with(gateway, "web-1", &stack.agent_token("deploy-bot"), &interactive, Some("touch answered"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(host.commands(), ["touch after", "touch answered"]);
    assert_eq!(host.check_against(&events(&stack).await), Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_another_key_is_refused() {
    let host = SshHost::start();
    let impostor = SshHost::start();
    // The gateway pins the impostor's key; the real host presents its own.
    let stack = stack_with(&host, Some(&impostor.host_key)).await;
    let out = ssh(&stack, &stack.agent_token("deploy-bot"), "touch never");
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("host key mismatch"), "{}", text(&out.stderr));
    let sessions = ended(&stack, 1).await;
    assert_eq!(sessions[0]["end_reason"], "upstream_failed", "{sessions:?}");
    assert!(host.commands().is_empty() && !host.work("never").exists());
    // Positive control: the host's log shows the gateway reached it and was never let in.
    assert!(
        host.log().contains("Connection from 127.0.0.1") || host.log().contains("connection from"),
        "{}",
        host.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_reading_its_input_and_unserved_requests_are_refused_and_recorded() {
    let host = SshHost::start();
    let stack = stack_with(&host, None).await;
    let gateway = stack.proxy.ssh_addr.unwrap();
    let token = stack.agent_token("deploy-bot");
    // A shell given its script on standard input: the record would show only `bash`.
    let out = agent_ssh(gateway, "web-1", &token, "bash", Some(b"touch denied-by-stdin\n"));
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("opaque_command"), "{}", text(&out.stderr));
    // A subsystem other than sftp.
    let out = agent_ssh_with(gateway, "web-1", &token, &["-s"], Some("netconf")).output().expect("ssh -s");
    assert_eq!(out.status.code(), Some(126));
    assert!(text(&out.stderr).contains("the netconf subsystem is not served"), "{}", text(&out.stderr));
    // Agent forwarding and X11 are refused: the command runs, without the agent's socket or a
    // display on the host.
    let agent_dir = tempfile::tempdir().expect("agent dir");
    let agent_socket = agent_dir.path().join("agent.sock");
    let mut ssh_agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    eventually(10, "ssh-agent's socket", || async { agent_socket.exists().then_some(()) }).await;
    let show = "env";
    let out = agent_ssh_with(gateway, "web-1", &token, &["-A", "-X", "-o", "LogLevel=INFO"], Some(show))
        .env("SSH_AUTH_SOCK", &agent_socket)
        .env("DISPLAY", ":99")
        .output()
        .expect("ssh -A -X");
    let _ = ssh_agent.kill();
    let _ = ssh_agent.wait();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env = text(&out.stdout);
    assert!(env.contains("SSH_CONNECTION="), "the host's environment: {env}");
    assert!(!env.contains("SSH_AUTH_SOCK") && !env.contains("DISPLAY="), "{env}");
    assert!(text(&out.stderr).contains("X11 forwarding request failed"), "{}", text(&out.stderr));
    // A remote forward (`-R`): the gateway opens no port for the agent.
    let out = agent_ssh_with(
        gateway,
        "web-1",
        &token,
        &["-N", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9"],
        None,
    )
    .output()
    .expect("ssh -R");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("remote port forwarding failed"), "{}", text(&out.stderr));
    let out = ssh(&stack, &token, "touch allowed-after");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let commands = exec_commands(&stack, 4).await;
    let seen: Vec<(&str, &str)> = commands
        .iter()
        .map(|c| (c["payload"]["statement"].as_str().unwrap(), c["payload"]["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [("bash", "deny"), ("<subsystem netconf>", "deny"), (show, "allow"), ("touch allowed-after", "allow")]
    );
    assert!(!host.work("denied-by-stdin").exists());
    assert_eq!(host.check_against(&events(&stack).await), Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_on_a_terminal_runs_line_by_line_as_recorded_and_replays() {
    use std::io::{Read, Write};
    let host = SshHost::start();
    let stack = stack_with(&host, None).await;
    let gateway = stack.proxy.ssh_addr.unwrap();
    let token = stack.agent_token("deploy-bot");
    std::fs::write(host.work("notes.txt"), "owner: alice@example.com\n").expect("seed the host");
    let mut child = agent_ssh_with(gateway, "web-1", &token, &["-tt"], None)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh -tt");
    // Typed as a terminal sends it: lines end with CR; one uses Tab, one is corrected.
    let mut keys = child.stdin.take().expect("stdin");
    keys.write_all(b"echo hello from a shell\rcat notes.txt\rtouch denied-in-shell\rtouch held-in-shell\r")
        .expect("type");
    keys.write_all(b"touch ta\tb-edited\rtouch aftx\x7fer-approval\rexit\r").expect("type");
    let mut stdout = child.stdout.take().expect("stdout");
    let screen = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let _ = stdout.read_to_end(&mut seen);
        seen
    });

    // The held line waits; what was typed after it waits behind it.
    let request = pending(&stack).await;
    assert_eq!(request["statement"], "touch held-in-shell");
    assert!(!host.work("held-in-shell").exists() && !host.work("after-approval").exists());
    let id = request["id"].as_str().unwrap();
    let approver = stack.person_token("olga@example.com", &["approvers", "ops"]);
    let body = json!({ "reason": "planned change" });
    let (status, _) =
        stack.api_send("POST", &format!("/api/v1/approvals/{id}/approve"), Some(&approver), Some(&body)).await;
    assert_eq!(status, 202);
    let status = tokio::task::spawn_blocking(move || child.wait().expect("ssh ends")).await.expect("join");
    drop(keys);
    let seen = text(&screen.join().expect("screen"));
    assert!(status.success(), "{seen}");
    assert!(seen.contains("hello from a shell") && seen.contains("[masked:email]"), "{seen}");
    assert!(!seen.contains("alice@example.com"), "masked on the agent's terminal: {seen}");
    assert!(seen.contains("command denied by rule") && seen.contains("line_editing"), "{seen}");
    assert!(seen.contains(&format!("waiting for approval {id}")), "{seen}");

    // The host's shell read exactly the lines the record allowed, as recorded.
    assert!(
        host.work("held-in-shell").exists() && host.work("after-approval").exists(),
        "{seen}\n{:?}",
        host.shell_lines()
    );
    assert!(!host.work("denied-in-shell").exists() && !host.work("tab-edited").exists());
    let lines = host.shell_lines();
    assert_eq!(
        lines,
        ["echo hello from a shell", "cat notes.txt", "touch held-in-shell", "touch after-approval", "exit"]
    );
    let all = eventually(20, "the shell's result on the stream", || async {
        let all = events(&stack).await;
        all.iter().any(|e| e["type"] == "command.result" && !e["payload"]["exec"].is_null()).then_some(all)
    })
    .await;
    let released: Vec<&str> = all
        .iter()
        .filter(|e| e["type"] == "approval.released")
        .filter_map(|e| e["payload"]["command_id"].as_str())
        .collect();
    let shell: Vec<(&str, &str)> = all
        .iter()
        .filter(|e| e["type"] == "command" && e["payload"]["protocol"] == "shell")
        .map(|e| (e["payload"]["statement"].as_str().unwrap(), e["payload"]["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shell,
        [
            ("<shell>", "allow"),
            ("echo hello from a shell", "allow"),
            ("cat notes.txt", "allow"),
            ("touch denied-in-shell", "deny"),
            ("touch held-in-shell", "hold"),
            ("touch tab-edited", "deny"),
            ("touch after-approval", "allow"),
            ("exit", "allow"),
        ]
    );
    let ran: Vec<&str> = all
        .iter()
        .filter(|e| e["type"] == "command" && e["payload"]["protocol"] == "shell")
        .filter(|e| {
            e["payload"]["decision"] == "allow" && e["payload"]["statement"] != "<shell>"
                || e["id"].as_str().is_some_and(|id| released.contains(&id))
        })
        .filter_map(|e| e["payload"]["statement"].as_str())
        .collect();
    assert_eq!(ran, lines, "the host ran exactly what the record allowed");
    assert!(host.commands().is_empty(), "no exec: the positive control is the shell history above");

    // The recording replays as asciicast v2, masked.
    let session = all.iter().find(|e| e["type"] == "terminal.started").expect("terminal.started")["session"]
        .as_str()
        .expect("session id")
        .to_owned();
    let (status, kind, cast) = eventually(20, "the recording to be projected", || async {
        let got = stack.api_text(&format!("/api/v1/sessions/{session}/asciicast")).await;
        (got.0 == 200 && got.2.contains("exit")).then_some(got)
    })
    .await;
    assert_eq!((status, kind.as_str()), (200, "application/x-asciicast"));
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header")).expect("header is JSON");
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64() > Some(0) && header["height"].as_u64() > Some(0), "{header}");
    let frames: Vec<Value> = lines.map(|l| serde_json::from_str(l).expect("a frame is JSON")).collect();
    assert!(frames.iter().all(|f| f[0].is_f64() && f[1] == "o"), "{cast}");
    assert!(frames.windows(2).all(|w| w[0][0].as_f64() <= w[1][0].as_f64()), "in time order");
    let played: String = frames.iter().filter_map(|f| f[2].as_str()).collect();
    assert!(played.contains("hello from a shell") && played.contains("[masked:email]"), "{played}");
    assert!(!played.contains("alice@example.com"));
    let (status, _) = stack.api(&format!("/api/v1/sessions/{session}/asciicast?terminal=1")).await;
    assert_eq!(status, 404, "one shell only");

    // Without a terminal, a script on standard input is read the same way, line by line.
    let out = agent_ssh(gateway, "web-1", &token, "", Some(b"touch piped-ok\ntouch piped-denied\necho done\n"));
    assert!(text(&out.stderr).contains("command denied by rule"), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim_end(), "done");
    assert!(host.work("piped-ok").exists() && !host.work("piped-denied").exists());
    assert_eq!(host.shell_lines()[5..], ["touch piped-ok", "echo done"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_runs_only_what_it_names() {
    let host = SshHost::start();
    let mut document = policy();
    document["resources"][1]["guardrails"] = json!({ "allow_commands": ["ls ...", "touch allowed-*"] });
    let stack = stack_under(&host, &document, None).await;
    let token = stack.agent_token("deploy-bot");
    for (line, reason) in [
        ("touch other", "is not an allowed command"),
        ("touch allowed-1 > /tmp/elsewhere", "redirects to a file"),
        ("X=1 touch allowed-1", "sets environment variables"),
        ("./deploy.sh", "is not an allowed command"),
        ("touch allowed-1; rm -rf x", "is not an allowed command"),
    ] {
        let out = ssh(&stack, &token, line);
        assert_eq!(out.status.code(), Some(126), "{line}");
        assert!(text(&out.stderr).contains(reason), "{line}: {}", text(&out.stderr));
    }
    let out = ssh(&stack, &token, "touch allowed-2 && ls");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "allowed-2\n");
    assert_eq!(host.check_against(&events(&stack).await), Ok(1));
}

/// `ssh -N -L`: a local port forwarded through the host to `to_port` on the host's loopback.
fn forward(stack: &Stack, token: &str, local: u16, to_port: u16) -> std::process::Child {
    let gateway = stack.proxy.ssh_addr.expect("the proxy serves SSH");
    let spec = format!("127.0.0.1:{local}:127.0.0.1:{to_port}");
    agent_ssh_with(gateway, "web-1", token, &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec], None)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh -L")
}

/// The first bytes a connection to the forwarded port reads, or why none came.
async fn first_bytes(local: u16) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut tcp = eventually(20, "the forwarded port to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", local)).await.ok()
    })
    .await;
    let mut buffer = vec![0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buffer)).await;
    match read {
        Ok(Ok(n)) if n > 0 => Ok(buffer[..n].to_vec()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_reaches_only_destinations_the_policy_names() {
    let host = SshHost::start();
    let mut document = policy();
    // The host's own sshd port may be reached through it; nothing else.
    document["resources"][1]["guardrails"]["allow_forwarding"] = json!([format!("127.0.0.1:{}", host.port)]);
    let stack = stack_under(&host, &document, None).await;
    let token = stack.agent_token("deploy-bot");

    let local = tollgate_tests::free_port();
    let mut allowed = forward(&stack, &token, local, host.port);
    let banner = first_bytes(local).await.expect("bytes through the forward");
    assert!(banner.starts_with(b"SSH-2.0-OpenSSH"), "{}", text(&banner));
    let _ = allowed.kill();
    let _ = allowed.wait();

    let refused_port = stack.pg.port;
    let local = tollgate_tests::free_port();
    let mut refused = forward(&stack, &token, local, refused_port);
    assert!(first_bytes(local).await.is_err(), "PostgreSQL is not an allowed destination");
    let _ = refused.kill();
    let _ = refused.wait();

    let forwards: Vec<Value> = eventually(20, "both forwards on the stream", || async {
        let found: Vec<Value> = events(&stack)
            .await
            .into_iter()
            .filter(|e| e["type"] == "command" && e["payload"]["protocol"] == "forward")
            .collect();
        (found.len() >= 2).then_some(found)
    })
    .await;
    assert_eq!(forwards[0]["payload"]["statement"], format!("forward 127.0.0.1:{}", host.port));
    assert_eq!(forwards[0]["payload"]["decision"], "allow");
    assert_eq!(forwards[1]["payload"]["statement"], format!("forward 127.0.0.1:{refused_port}"));
    assert_eq!(forwards[1]["payload"]["decision"], "deny");
    assert_eq!(forwards[1]["payload"]["rule"], "allow_forwarding");
    let result = result_of(&stack, forwards[0]["id"].as_str().unwrap()).await;
    assert!(result["payload"]["forwarded"]["to_agent"].as_u64().unwrap() >= 15, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_both_ways_over_sftp_every_file_operation_judged_and_recorded() {
    let host = SshHost::start();
    let mut document = policy();
    document["resources"][1]["guardrails"]["deny_paths"] = json!(["*/private/*"]);
    let stack = stack_under(&host, &document, None).await;
    let gateway = stack.proxy.ssh_addr.expect("ssh");
    let token = stack.agent_token("deploy-bot");
    let local = tempfile::tempdir().expect("agent dir");
    let artifact: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(local.path().join("artifact.bin"), &artifact).expect("artifact");

    // Upload, then download what the host holds.
    let from = local.path().join("artifact.bin").display().to_string();
    let out = tollgate_tests::agent_scp(gateway, &token, &from, &format!("web-1@{}:artifact.bin", gateway.ip()));
    assert!(out.status.success(), "upload: {}", text(&out.stderr));
    assert_eq!(std::fs::read(host.work("artifact.bin")).expect("uploaded"), artifact);
    std::fs::write(host.work("report.txt"), "build ok\n").expect("seed");
    let to = local.path().join("report.txt").display().to_string();
    let out = tollgate_tests::agent_scp(gateway, &token, &format!("web-1@{}:report.txt", gateway.ip()), &to);
    assert!(out.status.success(), "download: {}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&to).expect("downloaded"), "build ok\n");

    // A path the policy puts off limits is never opened on the host.
    std::fs::create_dir(host.work("private")).expect("private dir");
    std::fs::write(host.work("private/key.txt"), "secret\n").expect("seed");
    let to = local.path().join("key.txt").display().to_string();
    let out = tollgate_tests::agent_scp(gateway, &token, &format!("web-1@{}:private/key.txt", gateway.ip()), &to);
    assert!(!out.status.success(), "off limits");
    assert!(!std::path::Path::new(&to).exists());

    let work = host.work("").display().to_string();
    let operations: Vec<Value> = eventually(20, "the sftp operations on the stream", || async {
        let found: Vec<Value> = events(&stack)
            .await
            .into_iter()
            .filter(|e| e["type"] == "command" && e["payload"]["protocol"] == "sftp")
            .collect();
        found.iter().any(|e| e["payload"]["decision"] == "deny").then_some(found)
    })
    .await;
    let opens: Vec<(String, &str)> = operations
        .iter()
        .filter(|e| e["payload"]["statement"].as_str().unwrap().starts_with("open "))
        .map(|e| {
            (
                e["payload"]["statement"].as_str().unwrap().replace(&work, "WORK/"),
                e["payload"]["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        opens[..2],
        [
            ("open \"WORK/artifact.bin\" write".to_owned(), "allow"),
            ("open \"WORK/report.txt\" read".to_owned(), "allow")
        ]
    );
    // (The random directory name reads as a secret to the masking of the record.)
    assert!(opens[2].0.ends_with(".txt\" read") && opens[2].1 == "deny", "{opens:?}");
    let denied = operations.iter().find(|e| e["payload"]["decision"] == "deny").unwrap();
    assert_eq!(denied["payload"]["rule"], "deny_paths:*/private/*");
    let upload =
        operations.iter().find(|e| e["payload"]["statement"].as_str().unwrap().ends_with("artifact.bin\" write"));
    let result = result_of(&stack, upload.unwrap()["id"].as_str().unwrap()).await;
    assert_eq!(result["payload"]["file"]["written"], artifact.len(), "{result}");
    // The host's own sftp log: it opened exactly the two allowed files, never the private one.
    let host_opens: Vec<String> = host.file_operations().into_iter().filter(|op| op.starts_with("open ")).collect();
    assert_eq!(host_opens.len(), 2, "{host_opens:?}");
    assert!(host_opens[0].contains("artifact.bin") && host_opens[1].contains("report.txt"), "{host_opens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_runs_by_exec_where_no_command_rules_apply_and_a_denied_hold_never_runs() {
    let host = SshHost::start();
    let mut document = policy();
    // No command rules: rsync's server side runs by exec like any command.
    document["resources"][1]["guardrails"] = json!({});
    document["resources"][1]["approvals"] = json!([]);
    let stack = stack_under(&host, &document, None).await;
    let gateway = stack.proxy.ssh_addr.expect("ssh");
    let token = stack.agent_token("deploy-bot");

    let local = tempfile::tempdir().expect("agent dir");
    std::fs::create_dir(local.path().join("site")).expect("site");
    std::fs::write(local.path().join("site/index.html"), "<h1>release 1.2</h1>\n").expect("page");
    let ssh_command = agent_ssh_with(gateway, "web-1", &token, &[], None);
    let mut transport: Vec<String> = vec!["ssh".into()];
    // rsync's -e takes the ssh command line; the destination and command are rsync's own.
    let args: Vec<String> = ssh_command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    transport.extend(args[..args.len() - 1].iter().cloned());
    let mut rsync = std::process::Command::new("rsync");
    for (k, v) in ssh_command.get_envs() {
        if let Some(v) = v {
            rsync.env(k, v);
        }
    }
    let out = rsync
        .args(["-a", "-e", &transport.join(" ")])
        .arg(format!("{}/site/", local.path().display()))
        .arg(format!("web-1@{}:site/", gateway.ip()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("rsync runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(host.work("site/index.html")).expect("synced"), "<h1>release 1.2</h1>\n");

    // With a rule holding restarts (a command rule: rsync's opaque line would now be refused),
    // a held restart that an approver denies never reaches the host.
    document["resources"][1]["approvals"] = json!([{ "name": "restarts", "hold_classes": ["exec"],
        "commands": ["systemctl restart *"], "approver_groups": ["ops"], "timeout_secs": 60 }]);
    stack.enforce(&document).await;
    let child = ssh_spawn(&stack, &token, "systemctl restart nginx");
    let request = pending(&stack).await;
    let id = request["id"].as_str().expect("id");
    let approver = stack.person_token("olga@example.com", &["approvers", "ops"]);
    let body = json!({ "reason": "not during business hours" });
    let (status, _) =
        stack.api_send("POST", &format!("/api/v1/approvals/{id}/deny"), Some(&approver), Some(&body)).await;
    assert_eq!(status, 202);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("ssh ends")).await.expect("join");
    assert_eq!(out.status.code(), Some(126));
    assert!(text(&out.stderr).contains("not during business hours"), "{}", text(&out.stderr));
    // Positive control: the host ran rsync's server and nothing after it.
    let ran = host.commands();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(ran[0].starts_with("rsync --server"), "{ran:?}");
    assert_eq!(host.check_against(&events(&stack).await), Ok(1));
}

/// `tollgate ssh-cert`'s exchange for `token`, certifying the key at `key`.
async fn certificate_for(stack: &Stack, token: &str, key: &std::path::Path) -> Result<String, String> {
    let gateway = stack.proxy.ssh_addr.expect("the proxy serves SSH").to_string();
    let public_key = std::fs::read_to_string(key.with_extension("pub")).expect("the agent's public key");
    let gateway_key = stack.ssh_gateway_key();
    let ask = tollgate_control_plane::ssh_cert::Ask {
        gateway: &gateway,
        gateway_key: &gateway_key,
        token,
        public_key: &public_key,
    };
    tollgate_control_plane::ssh_cert::request(&ask).await.map_err(|e| e.to_string())
}

/// `ssh` with a key and its certificate, no password.
fn ssh_with_key(stack: &Stack, user: &str, key: &std::path::Path, command: &str) -> Output {
    let gateway = stack.proxy.ssh_addr.expect("the proxy serves SSH");
    let cert = format!("CertificateFile={}-cert.pub", key.display());
    let key = key.display().to_string();
    let options = [
        "-i",
        &key,
        "-o",
        &cert,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "PreferredAuthentications=publickey",
        "-o",
        "PubkeyAuthentication=yes",
        "-o",
        "BatchMode=yes",
    ];
    agent_ssh_with(gateway, user, "no password", &options, Some(command)).output().expect("ssh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_trades_its_token_for_a_certificate_and_the_gateway_logs_in_with_its_own_ca() {
    let host = SshHost::start_trusting_ca();
    let stack = stack_with(&host, None).await;
    let keys = tempfile::tempdir().expect("agent keys");
    let key = keys.path().join("id_ed25519");
    tollgate_tests::ssh_keygen(&key);

    // Refused tokens get nothing, and are on record.
    let refused = certificate_for(&stack, "not-a-token", &key).await.expect_err("a bad token");
    assert!(refused.contains("refused the token"), "{refused}");
    let cert = certificate_for(&stack, &stack.agent_token("deploy-bot"), &key).await.expect("a certificate");
    assert!(cert.starts_with("ssh-ed25519-cert-v01@openssh.com "), "{cert}");
    std::fs::write(keys.path().join("id_ed25519-cert.pub"), &cert).expect("save the certificate");
    let all = events(&stack).await;
    let issued = all.iter().find(|e| e["type"] == "certificate.issued").expect("certificate.issued");
    assert_eq!(issued["payload"]["principals"], json!(["web-1"]));
    assert_eq!(issued["agent"]["subject"], "deploy-bot");
    let before = issued["payload"]["valid_before"].as_u64().unwrap();
    assert!(before - issued["payload"]["valid_after"].as_u64().unwrap() <= 600 + 60, "no longer than the token");
    let failed: Vec<&Value> = all.iter().filter(|e| e["type"] == "auth.failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["payload"]["requested_resource"], "tollgate-certificate");

    // The key and its certificate log in; the host sees the gateway's own certificate login.
    let out = ssh_with_key(&stack, "web-1", &key, "echo via certificate");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "via certificate\n");
    assert!(host.log().contains("Accepted publickey") && host.log().contains("ED25519-CERT"), "{}", host.log());
    let started = eventually(20, "the certificate's session", || async {
        events(&stack).await.into_iter().find(|e| e["type"] == "session.started" && e["resource"]["name"] == "web-1")
    })
    .await;
    assert_eq!(started["agent"]["subject"], "deploy-bot", "the identity inside the certificate");

    // The key alone, or a certificate from another CA, does not.
    let other_ca = keys.path().join("other_ca");
    tollgate_tests::ssh_keygen(&other_ca);
    let forged = keys.path().join("forged");
    tollgate_tests::ssh_keygen(&forged);
    let signed = std::process::Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&other_ca)
        .args(["-I", "forged", "-n", "web-1", "-V", "-5m:+5m"])
        .arg(forged.with_extension("pub"))
        .output()
        .expect("ssh-keygen -s");
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    let out = ssh_with_key(&stack, "web-1", &forged, "touch forged-login");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    // Revoking the grant ends the certificate's use at once.
    let mut revoked = policy();
    revoked["grants"] = json!([{ "name": "others", "who": { "agents": ["someone-else"] }, "resources": { "labels": { "env": "test" } }, "access": "admin" }]);
    stack.enforce(&revoked).await;
    let out = ssh_with_key(&stack, "web-1", &key, "touch after-revocation");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(!host.work("forged-login").exists() && !host.work("after-revocation").exists());
    let reasons = eventually(20, "the refusals on record", || async {
        let reasons: Vec<String> = events(&stack)
            .await
            .iter()
            .filter(|e| e["type"] == "auth.failed" && e["payload"]["requested_resource"] == "web-1")
            .filter_map(|e| e["payload"]["reason"].as_str().map(str::to_owned))
            .collect();
        (reasons.len() >= 2).then_some(reasons)
    })
    .await;
    assert!(reasons.iter().any(|r| r.contains("not signed by this gateway's CA")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("no grant gives agent")), "{reasons:?}");
    assert_eq!(host.check_against(&events(&stack).await), Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ansible_ad_hoc_command_runs_through_the_gateway_with_a_certificate() {
    let host = SshHost::start();
    let mut document = policy();
    // Ansible's own command lines are opaque (command substitution): no command rules here.
    // And a tool that reads back what it wrote (its temporary paths hold random numbers) gets
    // real values; the record is masked.
    document["resources"][1]["guardrails"] = json!({});
    document["resources"][1]["approvals"] = json!([]);
    // The check below compares the record's text with the host's exactly, and Ansible's random
    // paths can trip the entropy detector in the record: no detectors for this resource.
    document["resources"][1]["masking"] = json!({ "apply_to": "records_only", "detectors": [] });
    let stack = stack_under(&host, &document, None).await;
    let gateway = stack.proxy.ssh_addr.expect("ssh");
    let keys = tempfile::tempdir().expect("agent keys");
    let key = keys.path().join("id_ed25519");
    tollgate_tests::ssh_keygen(&key);
    let cert = certificate_for(&stack, &stack.agent_token("ansible-bot"), &key).await.expect("a certificate");
    std::fs::write(keys.path().join("id_ed25519-cert.pub"), cert).expect("save the certificate");

    let remote_tmp = host.work(".ansible-tmp");
    let out = std::process::Command::new("ansible")
        .args(["all", "-i", &format!("{},", gateway.ip()), "-u", "web-1", "--private-key"])
        .arg(&key)
        .args(["-m", "ansible.builtin.command", "-a", "touch from-ansible"])
        .args(["-e", &format!("ansible_port={}", gateway.port())])
        .args(["-e", "ansible_python_interpreter=/usr/bin/python3"])
        .args(["-e", &format!("ansible_remote_tmp={}", remote_tmp.display())])
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env(
            "ANSIBLE_SSH_ARGS",
            "-o ControlMaster=auto -o ControlPersist=5s -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
        )
        .env("ANSIBLE_CONTROL_PATH_DIR", keys.path())
        .env("ANSIBLE_LOCAL_TEMP", keys.path())
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ansible runs (ansible-core, installed by scripts/install-deps.sh)");
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("CHANGED"), "{}", text(&out.stdout));
    assert!(host.work("from-ansible").exists());

    // Every command line Ansible ran on the host is on record as allowed, in order, and its
    // module went over sftp, each operation on record too.
    let all = events(&stack).await;
    let ran = host.check_against(&all).expect("the host ran what the record shows");
    assert!(ran >= 2, "Ansible's steps: {:?}", host.commands());
    assert!(host.commands().iter().any(|c| c.contains("AnsiballZ_command.py")), "{:?}", host.commands());
    let writes = all
        .iter()
        .filter(|e| e["type"] == "command" && e["payload"]["protocol"] == "sftp")
        .filter_map(|e| e["payload"]["statement"].as_str())
        .filter(|s| s.contains("AnsiballZ_command.py"))
        .count();
    assert!(writes >= 1, "the module's upload is on record");
    assert!(all.iter().any(|e| e["type"] == "session.started" && e["agent"]["subject"] == "ansible-bot"));
}

/// A person ends a live SSH session: the agent's `ssh` is disconnected with who and why, the
/// command it was running gets no more from the gateway, and the session's end says who.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_ends_a_live_ssh_session() {
    let host = SshHost::start();
    let stack = stack_with(&host, None).await;
    let child = ssh_spawn(&stack, &stack.agent_token("long-bot"), "sleep 60");
    let id = eventually(20, "the live SSH session in the views", || async {
        let (_, page) = stack.api("/api/v1/sessions?live=true&resource=web-1").await;
        let session = &page["items"][0];
        (session["commands"] == 1).then(|| session["id"].as_str().map(str::to_owned)).flatten()
    })
    .await;
    // Positive control: the command runs on the host (it is recorded first, then sent).
    eventually(20, "the command on the host", || async { (host.commands() == ["sleep 60"]).then_some(()) }).await;
    let approver = stack.person_token("ada", &["approvers"]);
    let body = json!({ "reason": "maintenance window over" });
    let (status, answer) =
        stack.api_send("POST", &format!("/api/v1/sessions/{id}/end"), Some(&approver), Some(&body)).await;
    assert_eq!(status, 202, "{answer}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("ssh ends")).await.expect("join");
    assert!(!out.status.success(), "the agent's ssh was cut off");
    assert!(
        text(&out.stderr).contains("this session was ended by ada: maintenance window over"),
        "{}",
        text(&out.stderr)
    );
    let ended = ended(&stack, 1).await;
    assert_eq!(ended[0]["end_reason"], "ended_by_person", "{:?}", ended[0]);
    assert_eq!(ended[0]["end_detail"], "ended by ada: maintenance window over");
}
