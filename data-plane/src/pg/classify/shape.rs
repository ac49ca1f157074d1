//! Statement shapes: a text with every constant replaced by a parameter, found by PostgreSQL's
//! own scanner (pg_query), so `SELECT abalance FROM pgbench_accounts WHERE aid = 123` and
//! `... WHERE aid = 456` share the key `SELECT abalance FROM pgbench_accounts WHERE aid = $1`.
//!
//! Why the shape's analysis may stand for the text's: two texts with one key differ only in
//! the contents of constant tokens, so the grammar builds the same tree for both except where a
//! constant sits (an `AConst` in the text, a `ParamRef` in the key). The analysis of the key
//! therefore differs from the text's only in what the walk derives from constant *values*, and
//! there a parameter always reads as unknown: a setting's value is `Computed`, SQL text handed
//! to a built-in is `dynamic_sql` or a refusal. Where the grammar wants a constant and nothing
//! else (`SET x = 'v'`, `COPY ... (FORMAT 'binary')`, `DO '...'`, a function body, a typed
//! literal), the key does not parse. So the key's analysis is used only when it parsed and
//! holds none of those marks ([`owes_nothing_to_constants`]); otherwise the text is parsed in
//! full. A rule added to the walk that reads constant values must keep reading a parameter
//! as the unknown, most restrictive case (a condition `$1 = $2` is not known to be false).
//!
//! Lexical settings: the scanner reads like the parser (standard_conforming_strings on, an
//! ASCII-safe encoding), and every session is held to exactly those settings (see `lexical`),
//! so one key means one token sequence in every session; no entry is shared across lexical
//! settings because there is only one.

use super::{Analysis, NameOp, DYNAMIC_SQL};
use pg_query::protobuf::Token;

/// The shape key of `sql`, or `None` when it has no constants (the text is its own key) or
/// does not scan (the full parse reports why).
pub(super) fn key(sql: &str) -> Option<String> {
    let tokens = pg_query::scan_tokens(sql).ok()?;
    let mut key = String::with_capacity(sql.len() + 8);
    let mut copied = 0;
    let mut n = 0;
    for token in &tokens {
        if !is_constant(token.token) {
            continue;
        }
        let (start, end) = (usize::try_from(token.start).ok()?, usize::try_from(token.end).ok()?);
        key.push_str(sql.get(copied..start)?);
        n += 1;
        // Spaces keep the parameter from joining a neighbouring word (`abc$1` is one name).
        key.push_str(" $");
        key.push_str(&n.to_string());
        key.push(' ');
        copied = end;
    }
    if n == 0 {
        return None;
    }
    key.push_str(sql.get(copied..)?);
    Some(key)
}

fn is_constant(token: i32) -> bool {
    [Token::Iconst, Token::Fconst, Token::Sconst, Token::Usconst, Token::Bconst, Token::Xconst]
        .iter()
        .any(|t| *t as i32 == token)
}

/// Whether an analysis of a shape holds nothing a constant's value could have changed.
pub(super) fn owes_nothing_to_constants(analysis: &Analysis) -> bool {
    analysis.settings.is_empty()
        && analysis.refusal.is_none()
        && !analysis.classification.classes.contains(DYNAMIC_SQL)
        && analysis.ops.iter().all(|(_, op)| match op {
            NameOp::Prepare { inner, .. } | NameOp::Declare { inner, .. } => owes_nothing_to_constants(inner),
            _ => true,
        })
}
