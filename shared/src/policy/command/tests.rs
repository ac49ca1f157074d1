use super::*;

fn words(line: &str) -> Vec<Vec<String>> {
    CommandLine::parse(line).unwrap().commands.into_iter().map(|c| c.words).collect()
}

#[test]
fn reads_words_quotes_operators_and_redirections() {
    assert_eq!(words("rm -rf /"), [["rm", "-rf", "/"]]);
    assert_eq!(words("rm -rf '/'"), [["rm", "-rf", "/"]]);
    assert_eq!(words(r#"echo "a b" c\ d"#), [["echo", "a b", "c d"]]);
    assert_eq!(words("ls;rm -rf /"), vec![vec!["ls"], vec!["rm", "-rf", "/"]]);
    assert_eq!(
        words("true && rm x || echo no & sleep 1"),
        vec![vec!["true"], vec!["rm", "x"], vec!["echo", "no"], vec!["sleep", "1"]]
    );
    assert_eq!(words("ls # rm -rf /"), [["ls"]]);
    assert_eq!(words("r\"m\" -rf /"), [["rm", "-rf", "/"]]);
    assert_eq!(words("(cd /; rm -rf *)"), vec![vec!["cd", "/"], vec!["rm", "-rf", "*"]]);
    assert_eq!(words("{ rm -rf /; }"), [["rm", "-rf", "/"]]);
    assert_eq!(words("rm>/dev/null -rf /"), [["rm", "-rf", "/"]]);
    assert_eq!(words("shutdown</dev/null -h now"), [["shutdown", "-h", "now"]]);
    assert_eq!(words("make 2>&1 >log all"), [["make", "all"]]);
    assert_eq!(words("cmd &>out x"), [["cmd", "x"]]);
    let line = CommandLine::parse("ls 2>&1").unwrap();
    assert!(!line.commands[0].redirects);
    assert!(CommandLine::parse("ls > f").unwrap().commands[0].redirects);
    assert!(CommandLine::parse("echo 'open").is_err());
    assert!(CommandLine::parse("echo \"open").is_err());
    assert!(CommandLine::parse(&"x".repeat(MAX_LINE_BYTES + 1)).is_err());
    assert!(CommandLine::parse(&"a ".repeat(MAX_WORDS + 1)).is_err());
}

/// Each line is one the shell could read differently from the reader, or that runs code the
/// line does not show: opaque, so command rules refuse it.
#[test]
fn opaque_lines_are_named() {
    for line in [
        "$(echo rm) -rf /",
        "`echo rm` -rf /",
        "echo \"$(rm -rf /)\"",
        "$CMD -rf /",
        "rm -rf ${u:-/}",
        "rm -rf /$u",
        "rm -rf -rf${IFS}/",
        "rm -rf $'\\x2f'",
        "x=/bin/rm; command $x -rf /",
        "eval 'rm -rf /'",
        "sh -c 'rm -rf /'",
        "bash",
        "bash -ec 'rm -rf /'",
        "sudo bash -c 'rm -rf /'",
        "sudo -u root bash",
        "/usr/bin/python3 -c 'import os'",
        "python3.11 -",
        "perl -we 'system 1'",
        "awk 'BEGIN{system(\"rm -rf /\")}'",
        "find / -exec rm {} +",
        "echo / | xargs rm -rf",
        "diff <(ls) x",
        "env -S 'rm -rf /'",
        "env -iS 'rm -rf /'",
        "true \u{b}#; rm -rf /",
        "true\u{a0}#; rm -rf /",
        "ls\r; rm -rf /",
        "cat <<'A'\n'\nA\nrm -rf /",
        "/bin/r? -rf /",
        "/sbin/shutdow[n]",
        "{rm,-rf,/}",
        "shopt -s expand_aliases; alias r=rm; r -rf /",
        "hash -p /bin/rm ls; ls -rf /",
        "sudo /bin/r* -rf /",
        "git -c core.pager='rm -rf /' log",
    ] {
        assert!(CommandLine::parse(line).map_or(true, |l| l.opaque.is_some()), "{line:?}");
    }
    for line in [
        "rm -rf /tmp/x",
        "echo '$(not run)'",
        "X=1 make-release",
        "ls | sort",
        "ls *.txt",
        "find . -name '*.log' -delete",
        "grep bash /etc/passwd",
        "echo cost: 5$",
        "systemctl restart nginx 2>&1",
    ] {
        assert_eq!(CommandLine::parse(line).unwrap().opaque, None, "{line}");
    }
}

#[test]
fn denial_patterns_match_programs_and_arguments_in_any_order_behind_wrappers() {
    let cases: &[(&str, &str, bool)] = &[
        ("rm -rf /", "rm -rf /", true),
        ("rm -rf /", "rm -rf /tmp/x", false),
        ("rm -rf /", "/bin/rm -rf /", true),
        ("rm -rf /", "sudo rm -rf /", true),
        ("rm -rf /", "rm / -rf", true),
        ("rm -rf /", "ls; rm -rf /", true),
        ("rm -rf /", "echo rm -rf /", true),
        ("rm -rf /", "rm>/dev/null -rf /", true),
        ("rm -rf /*", "rm -rf /etc", true),
        ("shutdown", "sudo shutdown -h now", true),
        ("shutdown", "shutdown</dev/null -h now", true),
        ("shutdown", "echo shut down", false),
        ("curl * | sh", "curl -fsSL https://x | sh", true),
        ("curl * | sh", "curl -fsSL https://x > f; sh f", false),
        ("curl * | sh", "curl -fsSL https://x | sudo sh", true),
        ("curl ... | sh", "curl https://x | sh", true),
        ("systemctl stop *", "systemctl stop nginx", true),
        ("systemctl stop *", "systemctl status nginx", false),
    ];
    for (pattern, line, expected) in cases {
        let p = Pattern::parse(pattern).unwrap();
        assert_eq!(CommandLine::parse(line).unwrap().matches(&p), *expected, "{pattern} on {line}");
    }
    assert!(Pattern::parse("a; b").is_err());
    assert!(Pattern::parse("").is_err());
}

#[test]
fn a_long_line_is_judged_in_linear_time() {
    let line = CommandLine::parse(&"rm ".repeat(MAX_WORDS - 1)).unwrap();
    let pattern = Pattern::parse("rm -rf /").unwrap();
    let started = std::time::Instant::now();
    assert!(!line.matches(&pattern));
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
}

#[test]
fn allowances_match_word_by_word() {
    let allowed: Vec<Pattern> = ["systemctl status *", "ls ...", "journalctl -u * -n *", "cat /var/log/*"]
        .iter()
        .map(|p| Pattern::parse(p).unwrap())
        .collect();
    let outside = |line: &str| CommandLine::parse(line).unwrap().outside(&allowed);
    assert_eq!(outside("systemctl status nginx"), None);
    assert_eq!(outside("/bin/systemctl status nginx"), None);
    assert_eq!(outside("ls"), None);
    assert_eq!(outside("ls -la /etc | cat /var/log/syslog"), None);
    assert_eq!(outside("journalctl -u nginx -n 50"), None);
    assert!(outside("systemctl stop status").is_some(), "positions count");
    assert!(outside("systemctl status nginx; rm -rf /").is_some());
    assert!(outside("systemctl status nginx extra").is_some());
    assert!(outside("LD_PRELOAD=/tmp/x.so ls").is_some(), "variables");
    assert!(outside("ls > /etc/passwd").is_some(), "redirections");
    assert!(outside("ls $(rm -rf /)").is_some(), "opaque");
    assert!(outside("./deploy.sh").is_some());
}
