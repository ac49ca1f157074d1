use super::*;

fn keys(input: &[&[u8]]) -> Vec<Key> {
    let mut reader = LineReader::default();
    let mut keys = Vec::new();
    for chunk in input {
        reader.feed(chunk, &mut keys);
    }
    keys.extend(reader.finish());
    keys
}

fn line(text: &str) -> Key {
    Key::Line { text: text.as_bytes().to_vec(), edited: None, too_long: false }
}

#[test]
fn lines_end_at_cr_lf_or_crlf_across_chunks() {
    assert_eq!(keys(&[b"ls -l\r", b"\npwd\n", b"whoami\r\r"]), [line("ls -l"), line("pwd"), line("whoami"), line("")]);
    // Split anywhere, even inside a character.
    assert_eq!(keys(&[b"echo h\xc3", b"\xa9llo\r"]), [line("echo h\u{e9}llo")]);
    // Input that ends without a newline is a line too.
    assert_eq!(keys(&[b"uptime"]), [line("uptime")]);
}

#[test]
fn backspace_and_ctrl_u_are_applied_at_the_gateway() {
    assert_eq!(keys(&[b"rm -rf /tmpx\x7f/old\r"]), [line("rm -rf /tmp/old")]);
    // Backspace takes a whole character, not a byte of it.
    assert_eq!(keys(&[b"echo \xc3\xa9\x7f\x08e\r"]), [line("echoe")]);
    assert_eq!(keys(&[b"shutdown now\x15echo ok\r"]), [line("echo ok")]);
}

#[test]
fn ctrl_c_drops_the_line_and_goes_through() {
    assert_eq!(keys(&[b"sleep 10\x03ls\r"]), [Key::Pass(3), line("ls")]);
    // Ctrl-D ends input only on an empty line.
    assert_eq!(keys(&[b"\x04"]), [Key::Pass(4)]);
    assert_eq!(keys(&[b"ab\x04c\r"]), [line("abc")]);
}

#[test]
fn editing_keys_mark_the_line() {
    let edited = |what: &'static str, text: &str| Key::Line {
        text: text.as_bytes().to_vec(),
        edited: Some(what),
        too_long: false,
    };
    assert_eq!(keys(&[b"sys\ttemctl stop x\r"]), [edited("Tab (completion)", "systemctl stop x")]);
    // An arrow key: the rest of its sequence is ordinary bytes, and the whole line is marked.
    assert_eq!(keys(&[b"ls\x1b[Arm -rf /\r"]), [edited("an escape sequence (arrow or function keys)", "ls[Arm -rf /")]);
    assert_eq!(keys(&[b"touch a\x17b\r"]), [edited("a control key", "touch ab")]);
    // The mark ends with its line.
    assert_eq!(keys(&[b"a\tb\rc\r"]), [edited("Tab (completion)", "ab"), line("c")]);
}

#[test]
fn a_line_too_long_is_marked_not_kept() {
    let long = vec![b'a'; MAX_LINE + 10];
    let got = keys(&[&long, b"\r"]);
    assert!(matches!(&got[..], [Key::Line { text, too_long: true, .. }] if text.len() == MAX_LINE));
}

#[test]
fn password_prompts_are_noticed() {
    assert!(asks_secret(b"$ sudo ls\r\n[sudo] password for deploy: "));
    assert!(asks_secret(b"Enter passphrase for key '/root/.ssh/id':"));
    assert!(!asks_secret(b"password: ok\r\n$ "));
    assert!(!asks_secret(b"$ "));
    assert!(!asks_secret(b""));
}

#[test]
fn the_recording_never_cuts_a_character() {
    let mut cast = Cast::new();
    cast.output(b"caf\xc3");
    cast.output(b"\xa9 ok");
    cast.resize(100, 40);
    let frames = cast.take(true).expect("frames");
    let data: Vec<(&str, &str)> = frames.iter().map(|f| (f.1.as_str(), f.2.as_str())).collect();
    assert_eq!(data, [("o", "caf"), ("o", "\u{e9} ok"), ("r", "100x40")]);
    assert!(cast.take(true).is_none());
}

#[test]
fn lines_the_shell_would_rewrite_are_refused() {
    for line in ["sudo shutdow\\", "!!:2 -rf /data", "^echo ^", "stty erase q", "echo hi; bind -x x"] {
        assert!(rewritten(line.as_bytes()).is_some(), "{line}");
    }
    for line in ["echo a\\\\", "ls -l", "grep -c x file"] {
        assert!(rewritten(line.as_bytes()).is_none(), "{line}");
    }
}
