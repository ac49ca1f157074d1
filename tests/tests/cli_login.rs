//! `tollgate login` end to end: the real `tollgate` binary signs a person in with the device
//! grant at the development issuer (the person answers at the issuer's verification page, as a
//! browser would), keeps the token readable by its owner only, and the next command reaches the
//! control plane's API with it. What it refuses: a wrong password or a wrong code at the page
//! (the CLI keeps waiting), a person who denies, credentials others may read, and after
//! `tollgate logout`, any command.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use tollgate_tests::Stack;

const CLI_CLIENT: &str = "tollgate-cli";

/// The `tollgate` binary of this build (`cargo test --workspace --all-targets` builds it beside
/// the tests; alone, `cargo build -p tollgate-control-plane --bin tollgate`).
fn tollgate_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let binary = dir.join("tollgate");
    assert!(binary.exists(), "{} is missing: cargo build -p tollgate-control-plane --bin tollgate", binary.display());
    binary
}

/// A stack whose control plane takes the CLI's tokens (their audience is the CLI's client id),
/// and a person, ada, a reviewer at the development issuer.
async fn stack() -> Stack {
    let mut stack = Stack::start().await;
    let mut config = stack.control_config();
    for issuer in &mut config.reviewer_issuers {
        issuer.audience.push(CLI_CLIENT.into());
    }
    stack.issuer.add_device_client(CLI_CLIENT);
    let claims = json!({ "groups": ["reviewers"] }).as_object().cloned().unwrap_or_default();
    stack.issuer.add_user("ada", "ada-password", claims);
    stack.control = tollgate_control_plane::Control::start(config).await.expect("the control plane");
    stack
}

/// `tollgate` with its own configuration directory and no token from the environment.
fn tollgate(stack: &Stack, config_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(tollgate_binary());
    command
        .arg("--api")
        .arg(format!("http://{}", stack.control.addr))
        .args(args)
        .env("XDG_CONFIG_HOME", config_dir)
        .env_remove("TOLLGATE_TOKEN")
        .env_remove("TOLLGATE_CREDENTIALS")
        .env_remove("TOLLGATE_ISSUER")
        .env_remove("TOLLGATE_CLIENT_ID");
    command
}

/// Start `tollgate login` and read the code it asks the person to enter; the rest of what it
/// says on standard error comes from the thread returned.
fn start_login(stack: &Stack, config_dir: &Path) -> (Child, String, std::thread::JoinHandle<String>) {
    let mut child = tollgate(stack, config_dir, &["login", "--issuer", stack.issuer.url(), "--timeout-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate login starts");
    let stderr = child.stderr.take().expect("its standard error");
    let mut lines = BufReader::new(stderr).lines();
    let code = loop {
        let line = lines.next().expect("tollgate login printed its instructions").expect("readable output");
        if let Some((_, code)) = line.split_once("enter the code ") {
            break code.trim().to_owned();
        }
    };
    // Keep reading standard error so the CLI never blocks writing to it.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    (child, code, rest)
}

/// The person answers at the issuer's verification page.
async fn answer(stack: &Stack, code: &str, password: &str, verdict: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/device", stack.issuer.url()))
        .form(&[("user_code", code), ("username", "ada"), ("password", password), ("answer", verdict)])
        .send()
        .await
        .expect("the verification page answers");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// Wait for the CLI to finish (off the async runtime: it polls the issuer meanwhile).
async fn finish(child: Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("joined").expect("tollgate exits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_a_person_in_with_the_device_grant_and_uses_the_token() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("a config dir");
    let stored = home.path().join("tollgate").join("credentials.json");

    // Without a sign-in, a command says how to get one.
    let before = tollgate(&stack, home.path(), &["review", "agents", "--from", "2026-01-01T00:00:00Z"])
        .output()
        .expect("tollgate runs");
    assert_eq!(before.status.code(), Some(2), "{before:?}");
    assert!(String::from_utf8_lossy(&before.stderr).contains("tollgate login"), "{before:?}");

    let (child, code, _) = start_login(&stack, home.path());
    assert_eq!(code.len(), 9, "two groups of four letters: {code}");
    // A wrong password and a wrong code are refused at the page; the CLI keeps waiting.
    let (status, body) = answer(&stack, &code, "not-her-password", "allow").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = answer(&stack, "BBBB-BBBB", "ada-password", "allow").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unknown, expired or already used"), "{body}");
    assert!(!stored.exists(), "nothing is kept before the person allows");
    // The person types the code as people do: lower case, no dash.
    let typed = code.replace('-', "").to_lowercase();
    let (status, body) = answer(&stack, &typed, "ada-password", "allow").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Signed in"), "{body}");
    let output = finish(child).await;
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains(&format!("signed in as ada for http://{}", stack.control.addr)), "{printed}");
    // The code works once.
    let (status, _) = answer(&stack, &code, "ada-password", "allow").await;
    assert_eq!(status, 401, "a used code is refused");

    // The token is kept for its owner only, and is one the API accepts as ada's.
    let mode = std::fs::metadata(&stored).expect("credentials kept").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "credentials readable by their owner only");
    let kept: Value = serde_json::from_slice(&std::fs::read(&stored).expect("readable")).expect("JSON");
    assert_eq!((kept["subject"].as_str(), kept["client_id"].as_str()), (Some("ada"), Some(CLI_CLIENT)), "{kept}");
    let token = kept["access_token"].as_str().expect("an access token");
    let claims = tollgate_shared::token::peek_claims(token).expect("a JWT");
    assert_eq!((claims["sub"].as_str(), claims["aud"].as_str()), (Some("ada"), Some(CLI_CLIENT)), "{claims:?}");

    // The next command uses it: a review report comes back as JSON.
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let report = tollgate(&stack, home.path(), &["review", "agents", "--from", &from]).output().expect("runs");
    assert!(report.status.success(), "{report:?}");
    let rows: Value = serde_json::from_slice(&report.stdout).expect("the report is JSON");
    assert!(rows.is_array(), "{rows}");
    // Her roles are her groups' (a reviewer): changing the policy is refused by the API.
    let file = home.path().join("policy.json");
    std::fs::write(&file, tollgate_tests::default_policy().to_string()).expect("policy file");
    let path = file.to_str().expect("a UTF-8 path");
    let denied = tollgate(&stack, home.path(), &["policy", "apply", "-f", path]).output().expect("runs");
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"), "{denied:?}");

    // The token goes only to the API it was kept for.
    let elsewhere = Command::new(tollgate_binary())
        .args(["--api", "http://127.0.0.1:9", "review", "agents", "--from", &from])
        .env("XDG_CONFIG_HOME", home.path())
        .env_remove("TOLLGATE_TOKEN")
        .env_remove("TOLLGATE_CREDENTIALS")
        .output()
        .expect("runs");
    assert_eq!(elsewhere.status.code(), Some(2), "{elsewhere:?}");
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("you signed in for"), "{elsewhere:?}");

    // Credentials others may read are refused rather than used.
    std::fs::set_permissions(&stored, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let exposed = tollgate(&stack, home.path(), &["review", "agents", "--from", &from]).output().expect("runs");
    assert_eq!(exposed.status.code(), Some(2), "{exposed:?}");
    assert!(String::from_utf8_lossy(&exposed.stderr).contains("may be read by others"), "{exposed:?}");
    std::fs::set_permissions(&stored, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // So is a link put in its place.
    let kept_aside = home.path().join("kept-aside.json");
    std::fs::rename(&stored, &kept_aside).expect("move aside");
    std::os::unix::fs::symlink(&kept_aside, &stored).expect("link");
    let linked = tollgate(&stack, home.path(), &["review", "agents", "--from", &from]).output().expect("runs");
    assert_eq!(linked.status.code(), Some(2), "{linked:?}");
    assert!(String::from_utf8_lossy(&linked.stderr).contains("not a plain file"), "{linked:?}");
    std::fs::remove_file(&stored).expect("unlink");
    std::fs::rename(&kept_aside, &stored).expect("put back");

    // A person's kept sign-in is never handed to an SSH gateway (ssh-cert takes an agent's token).
    let cert =
        tollgate(&stack, home.path(), &["ssh-cert", "--gateway", "127.0.0.1:9", "--gateway-key", "x", "-i", path])
            .output()
            .expect("runs");
    assert_eq!(cert.status.code(), Some(2), "{cert:?}");
    assert!(String::from_utf8_lossy(&cert.stderr).contains("needs the agent's token"), "{cert:?}");

    // Signing out forgets the token.
    let out = tollgate(&stack, home.path(), &["logout"]).output().expect("runs");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("signed out"), "{out:?}");
    assert!(!stored.exists());
    let after = tollgate(&stack, home.path(), &["review", "agents", "--from", &from]).output().expect("runs");
    assert_eq!(after.status.code(), Some(2), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_who_denies_leaves_the_cli_signed_out() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("a config dir");
    let (child, code, said) = start_login(&stack, home.path());
    let (status, body) = answer(&stack, &code, "ada-password", "deny").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Refused"), "{body}");
    let output = finish(child).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let why = said.join().expect("standard error read");
    assert!(why.contains("access_denied"), "{why}");
    assert!(!home.path().join("tollgate").join("credentials.json").exists());

    // A client the issuer does not know, or a browser's client, cannot start a device sign-in.
    stack.issuer.add_client("browser-app", "http://127.0.0.1:9/callback");
    for client in ["nobody", "browser-app"] {
        let refused = tollgate(
            &stack,
            home.path(),
            &["login", "--issuer", stack.issuer.url(), "--client-id", client, "--timeout-secs", "5"],
        )
        .output()
        .expect("runs");
        assert_eq!(refused.status.code(), Some(1), "{client}: {refused:?}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("device authorization"), "{refused:?}");
    }
    // A console address other than https, off loopback, is refused before anyone signs in.
    let plain = Command::new(tollgate_binary())
        .args(["--api", "http://tollgate.example.com", "login", "--issuer", stack.issuer.url()])
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .expect("runs");
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");
    assert!(String::from_utf8_lossy(&plain.stderr).contains("use https"), "{plain:?}");
}
