//! The check every end-to-end test ends with (the upstream's statement log against the record)
//! can fail: a statement run on the upstream behind the proxy's back is caught, by its text.

use tollgate_tests::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_record_does_not_show_fails_the_check() {
    let mut stack = Stack::start().await;
    let token = stack.agent_token("bot-log");
    let out = stack.psql(&token, None, &["-c", "select 'through the proxy'", "-c", "select 2"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let matched = stack.check_upstream_log().expect("everything ran through the proxy");
    assert!(matched >= 2, "{matched}");

    // The same upstream user, straight to the database: nothing judged, nothing recorded.
    let direct = std::process::Command::new(stack.pg.bin("psql"))
        .args([
            "-X",
            "-At",
            "-d",
            &stack.pg.url("app", &stack.upstream_password, "demo"),
            "-c",
            "select 'behind the proxy'",
        ])
        .output()
        .expect("psql runs");
    assert!(direct.status.success(), "{}", String::from_utf8_lossy(&direct.stderr));
    let problem = stack.check_upstream_log().expect_err("the unrecorded statement is caught");
    assert!(problem.contains("select 'behind the proxy'"), "{problem}");
    assert!(!problem.contains("through the proxy"), "{problem}");
    stack.skip_log_check_at_drop();
}
