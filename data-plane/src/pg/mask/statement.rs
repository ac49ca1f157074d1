//! Masking statement text for the record (and the approver's prompt): a finding is replaced
//! where it is and never across the SQL that follows it. A private-key header inside a comment
//! masks the comment, not the `DROP TABLE` after it: the record always shows every statement the
//! text holds, and only values are hidden.

use pg_query::protobuf::Token;
use std::borrow::Cow;
use std::ops::Range;
use tollgate_shared::mask::{Masker, Tally};

/// `text` with findings masked within the token where each starts (a string, a comment, an
/// identifier; a number with the operators around it, for values like `123-45-6789`).
/// Text the scanner cannot read is masked as plain text (such a statement is refused anyway).
pub fn mask_statement<'a>(masker: &Masker, text: &'a str, tally: &mut Tally) -> Cow<'a, str> {
    let mut probe = Tally::default();
    if masker.mask(text.as_bytes(), None, &mut probe).is_none() {
        return Cow::Borrowed(text);
    }
    let masked = match pg_query::scan_tokens(text) {
        Ok(tokens) => {
            let spans: Vec<(Range<usize>, i32, bool)> = tokens
                .iter()
                .map(|t| (t.start.max(0) as usize..t.end.max(0) as usize, t.token, t.keyword_kind != 0))
                .collect();
            masker.mask_clamped(text.as_bytes(), None, tally, &|range| clamp(text, &spans, range))
        }
        Err(_) => masker.mask(text.as_bytes(), None, tally),
    };
    match masked {
        Some(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        None => Cow::Borrowed(text),
    }
}

/// Tokens a value written as several tokens may span: numbers and the operators between them.
fn numeric_run(token: i32) -> bool {
    [
        Token::Iconst,
        Token::Fconst,
        Token::Op,
        Token::Ascii45,
        Token::Ascii43,
        Token::Ascii46,
        Token::Ascii47,
        Token::Ascii58,
    ]
    .iter()
    .any(|t| *t as i32 == token)
}

/// Where a token's content ends: before the `*/` of a comment, the quote of a string or quoted
/// name, the closing tag of a dollar-quoted string.
fn content_end(text: &str, span: &Range<usize>) -> usize {
    let token = text.get(span.clone()).unwrap_or_default();
    let closing = if token.starts_with("/*") && token.ends_with("*/") && token.len() >= 4 {
        2
    } else if token.starts_with('$') && token.len() >= 2 {
        token[1..].find('$').map_or(0, |at| at + 2).min(token.len() / 2)
    } else if token.len() >= 2 && (token.ends_with('\'') || token.ends_with('"')) {
        1
    } else {
        0
    };
    span.end - closing
}

fn clamp(text: &str, tokens: &[(Range<usize>, i32, bool)], range: Range<usize>) -> Range<usize> {
    // The token holding the finding's start, or the first one after it (a finding starting in
    // whitespace).
    let Some(first) = tokens.iter().position(|(span, _, _)| span.end > range.start) else { return range };
    let (span, kind, keyword) = &tokens[first];
    let mut end = content_end(text, span);
    if !keyword && numeric_run(*kind) {
        for (next, kind, keyword) in &tokens[first + 1..] {
            if *keyword || !numeric_run(*kind) {
                break;
            }
            end = next.end;
        }
    }
    range.start..range.end.min(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(text: &str) -> String {
        mask_statement(&Masker::strict(), text, &mut Tally::default()).into_owned()
    }

    #[test]
    fn a_finding_never_hides_the_statements_after_it() {
        let text = "/* -----BEGIN RSA PRIVATE KEY-----\nMIIEow */ drop table orders; select 1";
        let out = masked(text);
        assert!(out.contains("[masked:private_key]"), "{out}");
        assert!(out.ends_with("*/ drop table orders; select 1"), "{out}");

        let text = "-----BEGIN PRIVATE KEY-----\ndrop\ntable\norders";
        let out = masked(text);
        assert!(out.ends_with("\ndrop\ntable\norders"), "{out}");
    }

    #[test]
    fn values_inside_tokens_are_masked() {
        assert_eq!(masked("select 'alice@example.com', 1"), "select '[masked:email]', 1");
        assert_eq!(masked("alter role x password 'hunter2hunter2'"), "alter role x password '[masked:password]'");
        assert_eq!(masked("select 4111111111111111 as n"), "select [masked:card] as n");
        assert_eq!(masked("select * from t where ssn = 123-45-6789"), "select * from t where ssn = [masked:ssn]");
        assert_eq!(masked("select 1"), "select 1");
    }
}
