//! The pages people use, in a real headless Chromium (Debian's package): what a browser renders
//! after the page's own script ran, not only what the server sent. Each page's screenshot is
//! saved under `target/screenshots`.

use std::path::PathBuf;
use std::process::Command;
use tollgate_tests::Stack;

/// Run headless Chromium on `url` with `args`, with no host reachable but this machine: a page
/// that needed the internet would fail to render.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=10000"])
        .arg("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/screenshots"));
    std::fs::create_dir_all(&dir).expect("the screenshots directory");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reference_renders_offline_in_a_real_browser() {
    let stack = Stack::start().await;
    let url = format!("http://{}/docs", stack.control.addr);
    let document: serde_json::Value =
        serde_json::from_str(include_str!("../../openapi/openapi.json")).expect("the OpenAPI document");
    let operations = document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| ["get", "post", "put", "patch", "delete"].iter().filter(|m| item.get(**m).is_some()).count())
        .sum::<usize>();
    assert!(operations > 20, "{operations}");

    let dom = tokio::task::spawn_blocking(move || chromium(&url, &["--dump-dom"])).await.expect("join");
    assert!(!dom.contains("could not be read"), "the script read /openapi.json: {dom}");
    let rendered = dom.matches(r#"<section class="op" id="op-"#).count();
    assert_eq!(rendered, operations, "one section per operation");
    assert!(dom.contains(r#"<span class="method get">GET</span> /api/v1/agents"#), "{dom}");
    assert!(dom.contains(r#"id="schema-"#), "the schemas are listed");

    let shot = screenshots().join("api-reference.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("http://{}/docs", stack.control.addr);
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || chromium(&url, &[&arg, "--window-size=1280,900"])).await.expect("join");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of the rendered page ({size} bytes)");
}
