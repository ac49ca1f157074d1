//! Statement fingerprints: one id for every statement of the same shape, so a reviewer asking
//! "who ran this" finds `DELETE FROM t WHERE id = 5` and `delete from t where id = 77` together.
//!
//! For SQL the shape is the statement's tokens with every constant (strings in any quoting,
//! numbers, bind parameters) made `?`, a list of constants made one `?`, comments and spacing
//! dropped and unquoted names lower-cased. It works on the recorded text, so masked values (which
//! replace constants) fingerprint like the values they hide. For other protocols (shell lines) the
//! shape is the text with its spacing collapsed. A fingerprint groups statements for a reviewer;
//! it judges nothing.

/// The fingerprint of a statement recorded under `protocol` (SQL for `simple` and `extended`,
/// a command line for the rest): 16 hex digits.
pub fn of(protocol: &str, statement: &str) -> String {
    match protocol {
        "simple" | "extended" => of_sql(statement),
        _ => of_line(statement),
    }
}

/// The fingerprint of SQL text.
pub fn of_sql(sql: &str) -> String {
    digest(&sql_shape(sql))
}

/// The fingerprint of a command line (or any other text): its spacing collapsed.
pub fn of_line(line: &str) -> String {
    digest(&line.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn digest(shape: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, shape.as_bytes());
    hex::encode(&digest.as_ref()[..8])
}

/// The normalized token sequence of a SQL text, tokens joined by single spaces.
pub fn sql_shape(sql: &str) -> String {
    let mut tokens: Vec<String> = Vec::new();
    let push = |tokens: &mut Vec<String>, token: String| {
        // `? , ?` → `?`: an IN list or a row of constants is one shape whatever its length.
        if token == "?" && tokens.len() >= 2 && tokens[tokens.len() - 1] == "," && tokens[tokens.len() - 2] == "?" {
            tokens.pop();
            return;
        }
        tokens.push(token);
    };
    let s = sql.as_bytes();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'-' if next == Some(b'-') => {
                while i < s.len() && s[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if next == Some(b'*') => i = block_comment_end(s, i),
            b'\'' => {
                i = quoted_end(s, i, b'\'', false);
                push(&mut tokens, "?".into());
            }
            // E'...' (backslash escapes), B'...', X'...', N'...', U&'...'
            b'e' | b'E' if next == Some(b'\'') => {
                i = quoted_end(s, i + 1, b'\'', true);
                push(&mut tokens, "?".into());
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == Some(b'\'') => {
                i = quoted_end(s, i + 1, b'\'', false);
                push(&mut tokens, "?".into());
            }
            b'u' | b'U' if next == Some(b'&') && s.get(i + 2) == Some(&b'\'') => {
                i = quoted_end(s, i + 2, b'\'', false);
                push(&mut tokens, "?".into());
            }
            b'"' => {
                let end = quoted_end(s, i, b'"', false);
                push(&mut tokens, String::from_utf8_lossy(&s[i..end]).into_owned());
                i = end;
            }
            b'$' if next.is_some_and(|n| n.is_ascii_digit()) => {
                i += 1;
                while i < s.len() && s[i].is_ascii_digit() {
                    i += 1;
                }
                push(&mut tokens, "?".into());
            }
            b'$' => match dollar_tag(s, i) {
                Some(tag) => {
                    i = dollar_end(s, i + tag.len(), tag);
                    push(&mut tokens, "?".into());
                }
                None => {
                    push(&mut tokens, "$".into());
                    i += 1;
                }
            },
            _ if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit())) => {
                i = number_end(s, i);
                push(&mut tokens, "?".into());
            }
            _ if is_ident_start(c) => {
                let start = i;
                while i < s.len() && is_ident_char(s[i]) {
                    i += 1;
                }
                push(&mut tokens, String::from_utf8_lossy(&s[start..i]).to_lowercase());
            }
            _ if is_operator(c) => {
                let start = i;
                while i < s.len() && is_operator(s[i]) && !starts_comment(s, i) {
                    i += 1;
                }
                push(&mut tokens, String::from_utf8_lossy(&s[start..i]).into_owned());
            }
            _ => {
                push(&mut tokens, (c as char).to_string());
                i += 1;
            }
        }
    }
    // A trailing semicolon does not change the statement.
    while tokens.last().is_some_and(|t| t == ";") {
        tokens.pop();
    }
    tokens.join(" ")
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_operator(c: u8) -> bool {
    b"+-*/<>=~!@#%^&|`?".contains(&c)
}

fn starts_comment(s: &[u8], i: usize) -> bool {
    matches!((s[i], s.get(i + 1)), (b'-', Some(b'-')) | (b'/', Some(b'*')))
}

/// The end of a `/* */` comment starting at `i` (they nest in SQL).
fn block_comment_end(s: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < s.len() {
        match (s[i], s.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    s.len()
}

/// The end of a quoted token opening at `i` (a doubled quote stays inside; with `backslash`, so
/// does an escaped character).
fn quoted_end(s: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    i += 1;
    while i < s.len() {
        if backslash && s[i] == b'\\' {
            i += 2;
        } else if s[i] == quote {
            if s.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// `$tag$` at `i`, if one opens there.
fn dollar_tag(s: &[u8], i: usize) -> Option<&[u8]> {
    let mut j = i + 1;
    while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'_' || s[j] >= 0x80) {
        j += 1;
    }
    (s.get(j) == Some(&b'$')).then(|| &s[i..=j])
}

/// Past the closing `tag` of a dollar-quoted string whose body starts at `i`.
fn dollar_end(s: &[u8], i: usize, tag: &[u8]) -> usize {
    s[i..].windows(tag.len()).position(|w| w == tag).map_or(s.len(), |p| i + p + tag.len())
}

fn number_end(s: &[u8], mut i: usize) -> usize {
    if s[i] == b'0' && matches!(s.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        i += 2;
        while i < s.len() && (s[i].is_ascii_hexdigit() || s[i] == b'_') {
            i += 1;
        }
        return i;
    }
    while i < s.len() && (s[i].is_ascii_digit() || s[i] == b'.' || s[i] == b'_') {
        i += 1;
    }
    if i < s.len() && matches!(s[i], b'e' | b'E') {
        let sign = usize::from(matches!(s.get(i + 1), Some(b'+' | b'-')));
        if s.get(i + 1 + sign).is_some_and(|d| d.is_ascii_digit()) {
            i += 1 + sign;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_spacing_case_and_comments_do_not_change_the_shape() {
        let same = [
            "DELETE FROM accounts WHERE id = 5",
            "delete  from accounts\n where id = 77 -- cleanup",
            "delete /* nested /* comment */ */ from ACCOUNTS where id = $1;",
            "delete from accounts where id = '12'",
            "delete from accounts where id = E'it\\'s'",
            "delete from accounts where id = $tag$ x $tag$",
            "delete from accounts where id = 1.5e-3",
        ];
        for s in same {
            assert_eq!(sql_shape(s), "delete from accounts where id = ?", "{s}");
            assert_eq!(of_sql(s), of_sql(same[0]));
        }
        assert_eq!(sql_shape("select * from t where id in (1, 2, 3)"), sql_shape("select * from t where id in (9)"));
    }

    #[test]
    fn names_operators_and_quoted_identifiers_do() {
        let base = of_sql("delete from accounts where id = 5");
        for other in [
            "delete from accounts where id > 5",
            "delete from \"Accounts\" where id = 5",
            "delete from accounts where aid = 5",
            "delete from accounts",
            "delete from t1 where id = 5",
        ] {
            assert_ne!(of_sql(other), base, "{other}");
        }
        assert_eq!(sql_shape("select a->>'k' from t"), "select a ->> ? from t");
        assert_eq!(sql_shape("select 1--2"), "select ?");
        assert_eq!(sql_shape("select $$unterminated"), "select ?");
        assert_eq!(sql_shape("select 'unterminated"), "select ?");
    }

    #[test]
    fn shell_lines_collapse_spacing_only() {
        assert_eq!(of_line("rm  -rf   /tmp/x"), of_line("rm -rf /tmp/x"));
        assert_ne!(of_line("rm -rf /tmp/x"), of_line("rm -rf /tmp/y"));
        assert_eq!(of_line("x").len(), 16);
    }
}
