//! The built-in content detectors: a pattern that finds candidates cheaply, and a check that
//! keeps false positives low (Luhn for cards, mod-97 for IBANs, entropy for opaque tokens...).
//!
//! Every pattern is ASCII-only (`(?-u)`) so the combined prefilter runs as one byte DFA.

use super::checks::Check;

pub struct Builtin {
    pub name: &'static str,
    pub pattern: &'static str,
    pub check: Check,
    /// What a value must show before the pattern is worth running.
    pub gate: Gate,
}

/// A cheap precondition for a detector, decided for all detectors in one pass over the value
/// plus one Aho-Corasick scan for literals: most values open no gate and cost no regex at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// One of these (ASCII case-insensitive) literals occurs.
    Literal(&'static [&'static str]),
    /// A run of at least this many digits, single spaces or dashes allowed between them.
    DigitRun(usize),
    /// Digit groups written as a phone number (see `Shape::phone`).
    Phone,
    /// Digit groups written as an SSN (see `Shape::ssn`).
    Ssn,
    /// An IBAN's start with a country code that issues IBANs, then at least 15 letters and
    /// digits in all, single spaces allowed between them.
    Iban,
    /// A run of at least 24 token characters (`A-Za-z0-9+/_=-`) with both letter cases.
    MixedTokenRun,
    /// A run of at least this many base64 characters (hex is a subset).
    Base64Run(usize),
}

/// In the order they are tried; several entries may share a name.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "email",
        pattern: r"(?-u)(?i)[a-z0-9._%+-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*\.[a-z]{2,24}",
        check: Check::Any,
        gate: Gate::Literal(&["@"]),
    },
    Builtin {
        // A run of digits with single spaces or dashes; the check finds the cards in it.
        name: "card",
        pattern: r"(?-u)[0-9](?:[ -]?[0-9]){12,}",
        check: Check::Luhn,
        gate: Gate::DigitRun(13),
    },
    Builtin {
        name: "iban",
        pattern: r"(?-u)(?i)[a-z]{2}[0-9]{2}(?:[ ]?[a-z0-9]){11,30}",
        check: Check::Iban,
        gate: Gate::Iban,
    },
    Builtin { name: "ssn", pattern: r"(?-u)[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}", check: Check::Ssn, gate: Gate::Ssn },
    Builtin {
        // International (+CC ...) or North American ((415) 555-0100, 415-555-0100) numbers.
        name: "phone",
        pattern: r"(?-u)\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,5}\)?){2,6}|(?:^|[^0-9])(?P<v>\(?[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4})",
        check: Check::Phone,
        gate: Gate::Phone,
    },
    Builtin {
        name: "jwt",
        pattern: r"(?-u)(?i)eyj[a-z0-9_-]{6,}\.eyj[a-z0-9_-]{6,}\.[a-z0-9_-]*",
        check: Check::Any,
        gate: Gate::Literal(&["eyj"]),
    },
    Builtin {
        name: "aws_key",
        pattern: r"(?-u)(?i)(?:a3t[a-z0-9]|akia|asia|abia|acca)[a-z0-9]{16}",
        check: Check::Any,
        gate: Gate::Literal(&["akia", "asia", "abia", "acca", "a3t"]),
    },
    Builtin {
        name: "gcp_key",
        pattern: r"(?-u)(?i)aiza[a-z0-9_-]{35}|ya29\.[a-z0-9_-]{20,}",
        check: Check::Any,
        gate: Gate::Literal(&["aiza", "ya29."]),
    },
    Builtin {
        name: "github_token",
        pattern: r"(?-u)(?i)(?:ghp|gho|ghu|ghs|ghr)_[a-z0-9]{36}|github_pat_[a-z0-9_]{22,}",
        check: Check::Any,
        gate: Gate::Literal(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]),
    },
    Builtin {
        name: "slack_token",
        pattern: r"(?-u)(?i)xox[abposr]-[a-z0-9-]{10,}|xapp-[a-z0-9-]{10,}|hooks\.slack\.com/services/[a-z0-9/_]{16,}",
        check: Check::Any,
        gate: Gate::Literal(&["xox", "xapp-", "hooks.slack.com"]),
    },
    Builtin {
        name: "stripe_key",
        pattern: r"(?-u)(?i)(?:sk|rk)_(?:live|test)_[a-z0-9]{16,}|whsec_[a-z0-9]{16,}",
        check: Check::Any,
        gate: Gate::Literal(&["_live_", "_test_", "whsec_"]),
    },
    Builtin {
        // From BEGIN to END, or to the end of the value when a fragment lost its END line.
        name: "private_key",
        pattern: r"(?-u)(?is)-----begin[ a-z0-9]*private key(?:-----)?.*?(?:-----end[ a-z0-9]*private key-----|\z)",
        check: Check::Any,
        gate: Gate::Literal(&["private key"]),
    },
    Builtin {
        // password=..., "api_key": "...", token: ... (the value only).
        name: "password",
        pattern: r#"(?-u)(?i)(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key|client[_-]?secret|private[_-]?key|credentials?)["']?[ \t]*(?:=|:|=>)[ \t]*["']?(?P<v>[^\s"'&;,{}()\[\]]{3,})"#,
        check: Check::Any,
        gate: Gate::Literal(&["pass", "pwd", "secret", "token", "key", "credential"]),
    },
    Builtin {
        // SQL: PASSWORD 'secret' (CREATE/ALTER ROLE), as recorded statement text shows it.
        name: "password",
        pattern: r"(?-u)(?i)password[ \t\r\n]+'(?P<v>(?:[^']|'')+)'",
        check: Check::Any,
        gate: Gate::Literal(&["pass", "pwd", "secret", "token", "key", "credential"]),
    },
    Builtin {
        name: "connection_string",
        pattern: r"(?-u)(?i)[a-z][a-z0-9+.-]{1,20}://[^\s:/@]+:(?P<v>[^\s@/]+)@",
        check: Check::Any,
        gate: Gate::Literal(&["://"]),
    },
    Builtin {
        name: "high_entropy",
        pattern: r"(?-u)[A-Za-z0-9+/_=-]{24,}",
        check: Check::Entropy,
        gate: Gate::MixedTokenRun,
    },
    Builtin {
        // base64 or hex text that decodes to something another detector finds.
        name: "encoded",
        pattern: r"(?-u)[A-Za-z0-9+/\r\n]{12,}={0,2}|(?:\\x)?[0-9A-Fa-f]{16,}",
        check: Check::Encoded,
        gate: Gate::Base64Run(12),
    },
];

/// Every built-in detector name, each once.
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for builtin in BUILTINS {
        if !names.contains(&builtin.name) {
            names.push(builtin.name);
        }
    }
    names
}
