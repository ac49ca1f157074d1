//! Masking (DESIGN.md §8): secrets and personal data are replaced in outgoing text before it
//! leaves the proxy. Two layers, both from the resource's policy:
//!
//! 1. column rules: a result column whose name (and type) matches is masked whatever it holds;
//! 2. content detectors: every outgoing value is scanned, so a secret is caught after a cast,
//!    a concatenation, a JSON aggregate, an error message or a base64 `encode()`.
//!
//! Each built-in detector has a gate: a literal it needs (`@`, `eyJ`, `://`...) or a shape (a run
//! of 13 digits, of 24 token characters...). One pass over the value measures the shapes and one
//! Aho-Corasick scan finds the literals; only detectors whose gate opened run their regex, so
//! most values (ids, timestamps, names, statuses) cost no regex at all. A finding is replaced
//! by `[masked:<detector>]` (or `****` and its last four characters for partial detectors).
//! What was masked is tallied by detector and column, never by value.

mod checks;
mod detectors;
mod stream;
pub use stream::StreamMasker;

use crate::event::MaskCount;
use crate::identity::mapping::glob_match;
use crate::policy::{MaskTarget, Masking};
use aho_corasick::AhoCorasick;
use checks::Check;
use detectors::Gate;
use regex::bytes::Regex;
use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

pub use detectors::names as builtin_names;

/// The marker for a value masked by a column rule.
pub const COLUMN_MARKER: &[u8] = b"[masked:column]";
/// The tally name of column-rule masking.
pub const COLUMN_DETECTOR: &str = "column";

/// A compiled masking policy for one resource.
pub struct Masker {
    detectors: Vec<Detector>,
    /// Every detector's literal gates; `literal_owner[pattern]` is the detector it opens.
    literals: AhoCorasick,
    literal_owner: Vec<usize>,
    columns: Vec<(String, Option<String>)>,
    allow: HashSet<Vec<u8>>,
    /// Values shorter than this cannot hold anything a detector finds.
    min_len: usize,
    target: MaskTarget,
}

struct Detector {
    name: Arc<str>,
    /// `None` for custom detectors: they always run.
    gate: Option<Gate>,
    regex: Regex,
    /// The capture group holding the part to mask (`v`), when not the whole match.
    group: Option<usize>,
    check: Check,
    partial: bool,
}

/// A problem in a masking policy, with the field it concerns (`detectors[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskProblem {
    pub field: String,
    pub message: String,
}

/// Shortest value any built-in detector can match (`a@b.co`).
const BUILTIN_MIN_LEN: usize = 6;

impl Masker {
    /// Compile a resource's masking policy; every problem is reported.
    pub fn new(policy: &Masking) -> Result<Masker, Vec<MaskProblem>> {
        let mut problems = Vec::new();
        let known = builtin_names();
        let mut custom_names = HashSet::new();
        for (i, custom) in policy.custom.iter().enumerate() {
            let valid_name = !custom.name.is_empty()
                && custom.name.len() <= 40
                && custom.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !valid_name {
                problems.push(problem(format!("custom[{i}].name"), "use 1-40 of a-z, 0-9, _ and -".into()));
            } else if known.contains(&custom.name.as_str()) || !custom_names.insert(custom.name.as_str()) {
                problems.push(problem(format!("custom[{i}].name"), format!("{:?} is already a detector", custom.name)));
            }
        }
        let enabled: Vec<&str> = match &policy.detectors {
            None => known.clone(),
            Some(list) => {
                for (i, name) in list.iter().enumerate() {
                    if !known.contains(&name.as_str()) {
                        problems.push(problem(
                            format!("detectors[{i}]"),
                            format!("unknown detector {name:?}; built-in detectors: {}", known.join(", ")),
                        ));
                    }
                }
                list.iter().map(String::as_str).collect()
            }
        };
        for (i, name) in policy.partial.iter().enumerate() {
            if !known.contains(&name.as_str()) && !custom_names.contains(name.as_str()) {
                problems.push(problem(format!("partial[{i}]"), format!("unknown detector {name:?}")));
            }
        }
        let mut columns = Vec::new();
        for (i, rule) in policy.columns.iter().enumerate() {
            if rule.name().is_empty() {
                problems.push(problem(format!("columns[{i}]"), "name a column (a glob such as *password*)".into()));
            }
            let type_name = rule.type_name().map(canonical_type);
            if let Some(None) = type_name {
                problems.push(problem(
                    format!("columns[{i}].type"),
                    format!("unknown type {:?}; known: {}", rule.type_name().unwrap_or(""), type_names().join(", ")),
                ));
            }
            columns.push((rule.name().to_ascii_lowercase(), type_name.flatten().map(str::to_owned)));
        }

        let mut detectors = Vec::new();
        for builtin in detectors::BUILTINS.iter().filter(|b| enabled.contains(&b.name)) {
            match Regex::new(builtin.pattern) {
                Ok(regex) => detectors.push(Detector {
                    group: regex.capture_names().position(|n| n == Some("v")),
                    gate: Some(builtin.gate),
                    name: Arc::from(builtin.name),
                    regex,
                    check: builtin.check,
                    partial: policy.partial.iter().any(|p| p == builtin.name),
                }),
                Err(e) => problems.push(problem(format!("detectors.{}", builtin.name), e.to_string())),
            }
        }
        for (i, custom) in policy.custom.iter().enumerate() {
            match Regex::new(&custom.pattern) {
                Ok(regex) if regex.is_match(b"") => problems.push(problem(
                    format!("custom[{i}].pattern"),
                    "matches the empty string, so it would mask everything".into(),
                )),
                Ok(regex) => detectors.push(Detector {
                    group: regex.capture_names().position(|n| n == Some("v")),
                    gate: None,
                    name: Arc::from(custom.name.as_str()),
                    regex,
                    check: Check::Any,
                    partial: policy.partial.contains(&custom.name),
                }),
                Err(e) => {
                    problems.push(problem(format!("custom[{i}].pattern"), format!("invalid regular expression: {e}")))
                }
            }
        }
        let mut words = Vec::new();
        let mut literal_owner = Vec::new();
        for (index, detector) in detectors.iter().enumerate() {
            if let Some(Gate::Literal(list)) = detector.gate {
                words.extend(list.iter().copied());
                literal_owner.extend(std::iter::repeat_n(index, list.len()));
            }
        }
        let literals = AhoCorasick::builder().ascii_case_insensitive(true).build(&words);
        let literals = match literals {
            Ok(literals) if problems.is_empty() => literals,
            Ok(_) => return Err(problems),
            Err(e) => {
                problems.push(problem("detectors".into(), format!("detector literals do not build: {e}")));
                return Err(problems);
            }
        };
        Ok(Masker {
            literals,
            literal_owner,
            min_len: if policy.custom.is_empty() { BUILTIN_MIN_LEN } else { 1 },
            detectors,
            columns,
            allow: policy.allow_values.iter().map(|v| v.as_bytes().to_vec()).collect(),
            target: policy.apply_to,
        })
    }

    /// Every built-in detector, no column rules, masking agents and records: what applies when
    /// no policy says otherwise (fail closed).
    pub fn strict() -> Arc<Masker> {
        static STRICT: std::sync::OnceLock<Arc<Masker>> = std::sync::OnceLock::new();
        STRICT
            .get_or_init(|| match Masker::new(&Masking::default()) {
                Ok(masker) => Arc::new(masker),
                // The built-in patterns are constants covered by tests; this cannot fail at runtime.
                Err(problems) => panic!("built-in masking detectors do not compile: {problems:?}"),
            })
            .clone()
    }

    /// Whether the agent receives masked values (else only the records are masked).
    pub fn masks_agent(&self) -> bool {
        self.target == MaskTarget::AgentAndRecords
    }

    pub fn has_column_rules(&self) -> bool {
        !self.columns.is_empty()
    }

    /// Whether a column rule masks this result column (`type_name` as `canonical_type` gives it).
    pub fn masks_column(&self, name: &str, type_name: Option<&str>) -> bool {
        // Called for every value of every row: no allocation when there are no rules.
        if self.columns.is_empty() {
            return false;
        }
        let name = name.to_ascii_lowercase();
        self.columns.iter().any(|(pattern, wanted)| {
            glob_match(pattern, &name) && wanted.as_deref().is_none_or(|w| Some(w) == type_name)
        })
    }

    /// Whether any detector finds something in the value.
    pub fn finds(&self, value: &[u8]) -> bool {
        let mut spans = Vec::new();
        self.scan(value, true, &mut spans);
        !spans.is_empty()
    }

    /// The value with every finding replaced, or `None` when nothing was found.
    pub fn mask(&self, value: &[u8], column: Option<&str>, tally: &mut Tally) -> Option<Vec<u8>> {
        self.mask_clamped(value, column, tally, &|range| range)
    }

    /// `mask`, with each finding's span first narrowed by `clamp` (recorded SQL keeps every
    /// token after a finding visible: see the data plane's statement masking).
    pub fn mask_clamped(
        &self,
        value: &[u8],
        column: Option<&str>,
        tally: &mut Tally,
        clamp: &dyn Fn(Range<usize>) -> Range<usize>,
    ) -> Option<Vec<u8>> {
        if value.len() < self.min_len || self.allow.contains(value) {
            return None;
        }
        let mut spans = Vec::new();
        self.scan(value, true, &mut spans);
        for span in &mut spans {
            let clamped = clamp(span.range.clone());
            span.range = clamped.start.max(span.range.start)..clamped.end.min(span.range.end);
        }
        spans.retain(|span| !span.range.is_empty());
        if spans.is_empty() {
            return None;
        }
        spans.sort_by(|a, b| a.range.start.cmp(&b.range.start).then(b.range.end.cmp(&a.range.end)));
        let mut out = Vec::with_capacity(value.len());
        let mut at = 0;
        for span in &spans {
            if span.range.start < at {
                // Overlaps a finding already masked: widen it if it runs further.
                if span.range.end > at {
                    at = span.range.end;
                }
                continue;
            }
            out.extend_from_slice(&value[at..span.range.start]);
            let detector = &self.detectors[span.detector];
            render(&mut out, detector, &value[span.range.clone()]);
            tally.add(&detector.name, column, 1);
            at = span.range.end;
        }
        out.extend_from_slice(&value[at..]);
        Some(out)
    }

    /// `mask` for text that is already a `str` (statement text, parameters, error fields).
    pub fn mask_str<'a>(&self, value: &'a str, column: Option<&str>, tally: &mut Tally) -> Cow<'a, str> {
        match self.mask(value.as_bytes(), column, tally) {
            Some(masked) => Cow::Owned(String::from_utf8_lossy(&masked).into_owned()),
            None => Cow::Borrowed(value),
        }
    }

    /// Findings in `text`; `outer` is false when scanning decoded base64/hex (no recursion).
    fn scan(&self, text: &[u8], outer: bool, out: &mut Vec<Span>) {
        if text.len() < self.min_len || self.detectors.is_empty() {
            return;
        }
        let shape = Shape::of(text);
        // Built-in detectors come first, so every gated one has an index below 64.
        let mut literal_hits = 0u64;
        for hit in self.literals.find_overlapping_iter(text) {
            literal_hits |= 1 << (self.literal_owner[hit.pattern().as_usize()] % 64);
        }
        for (index, detector) in self.detectors.iter().enumerate() {
            let open = match detector.gate {
                None => true,
                Some(Gate::Literal(_)) => literal_hits & (1 << (index % 64)) != 0,
                Some(gate) => shape.opens(gate),
            };
            if !open {
                continue;
            }
            if detector.check == Check::Encoded && !outer {
                continue;
            }
            let mut accepted = |range: Range<usize>| {
                if range.is_empty() || self.allow.contains(&text[range.clone()]) {
                    return;
                }
                if detector.check == Check::Encoded {
                    let Some(decoded) = checks::decode(&text[range.clone()]) else { return };
                    let mut inner = Vec::new();
                    self.scan(decoded.as_bytes(), false, &mut inner);
                    if inner.is_empty() {
                        return;
                    }
                }
                out.push(Span { range, detector: index });
            };
            let mut consider = |range: Range<usize>| detector.check.accept(text, range, &mut accepted);
            match detector.group {
                None => detector.regex.find_iter(text).for_each(|m| consider(m.range())),
                Some(group) => detector
                    .regex
                    .captures_iter(text)
                    .filter_map(|c| c.get(group).or_else(|| c.get(0)))
                    .for_each(|m| consider(m.range())),
            }
        }
    }
}

struct Span {
    range: Range<usize>,
    detector: usize,
}

/// The shapes gates look for, measured in one pass.
#[derive(Default)]
struct Shape {
    /// Two letters followed by two digits somewhere (how every IBAN starts).
    letters_digits: bool,
    digits: usize,
    digit_run: usize,
    alnum_run: usize,
    token_run: usize,
    base64_run: usize,
}

/// Byte classes for [`Shape::of`], one table lookup per byte.
const LETTER: u8 = 1;
const DIGIT: u8 = 2;
/// Letters, digits and `+/_=-` (API tokens).
const TOKEN: u8 = 4;
/// Letters, digits and `+/=` and line breaks (base64).
const BASE64: u8 = 8;

const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if c.is_ascii_alphabetic() {
            class |= LETTER | TOKEN | BASE64;
        } else if c.is_ascii_digit() {
            class |= DIGIT | TOKEN | BASE64;
        }
        if matches!(c, b'+' | b'/' | b'_' | b'=' | b'-') {
            class |= TOKEN;
        }
        if matches!(c, b'+' | b'/' | b'=' | b'\r' | b'\n') {
            class |= BASE64;
        }
        table[b] = class;
        b += 1;
    }
    table
};

impl Shape {
    fn of(text: &[u8]) -> Shape {
        let mut shape = Shape::default();
        let (mut digit_run, mut alnum_run, mut token_run, mut base64_run) = (0, 0, 0, 0);
        let (mut digit_sep, mut alnum_sep) = (false, false);
        // The letter (1) / digit (2) / other (0) classes of the last three bytes, two bits each,
        // for the IBAN start: letter, letter, digit, then this digit.
        let mut last = 0u8;
        for &b in text {
            let classes = CLASSES[b as usize];
            let class = classes & (LETTER | DIGIT);
            shape.letters_digits |= class == DIGIT && last == 0b01_01_10;
            last = ((last << 2) | class) & 0b11_11_11;
            if class == DIGIT {
                shape.digits += 1;
                digit_run += 1;
                digit_sep = false;
            } else if (b == b' ' || b == b'-') && digit_run > 0 && !digit_sep {
                digit_sep = true;
            } else {
                digit_run = 0;
                digit_sep = false;
            }
            if class != 0 {
                alnum_run += 1;
                alnum_sep = false;
            } else if b == b' ' && alnum_run > 0 && !alnum_sep {
                alnum_sep = true;
            } else {
                alnum_run = 0;
                alnum_sep = false;
            }
            token_run = if classes & TOKEN != 0 { token_run + 1 } else { 0 };
            base64_run = if classes & BASE64 != 0 { base64_run + 1 } else { 0 };
            shape.digit_run = shape.digit_run.max(digit_run);
            shape.alnum_run = shape.alnum_run.max(alnum_run);
            shape.token_run = shape.token_run.max(token_run);
            shape.base64_run = shape.base64_run.max(base64_run);
        }
        shape
    }

    fn opens(&self, gate: Gate) -> bool {
        match gate {
            Gate::Literal(_) => false,
            Gate::DigitRun(n) => self.digit_run >= n,
            Gate::Digits(n) => self.digits >= n,
            Gate::IbanRun(n) => self.letters_digits && self.alnum_run >= n,
            Gate::TokenRun(n) => self.token_run >= n,
            Gate::Base64Run(n) => self.base64_run >= n,
        }
    }
}

fn render(out: &mut Vec<u8>, detector: &Detector, found: &[u8]) {
    if detector.partial {
        if let Ok(text) = std::str::from_utf8(found) {
            let chars: Vec<char> = text.chars().collect();
            if chars.len() > 8 {
                out.extend_from_slice(b"****");
                out.extend(chars[chars.len() - 4..].iter().collect::<String>().bytes());
                return;
            }
        }
    }
    out.extend_from_slice(b"[masked:");
    out.extend_from_slice(detector.name.as_bytes());
    out.push(b']');
}

fn problem(field: String, message: String) -> MaskProblem {
    MaskProblem { field, message }
}

/// PostgreSQL type names a column rule may use, with their common spellings.
const TYPES: &[(&str, &[&str])] = &[
    ("text", &["text"]),
    ("varchar", &["varchar", "character varying"]),
    ("bpchar", &["bpchar", "char", "character"]),
    ("name", &["name"]),
    ("json", &["json"]),
    ("jsonb", &["jsonb"]),
    ("xml", &["xml"]),
    ("bytea", &["bytea"]),
    ("int2", &["int2", "smallint"]),
    ("int4", &["int4", "integer", "int"]),
    ("int8", &["int8", "bigint"]),
    ("numeric", &["numeric", "decimal"]),
    ("uuid", &["uuid"]),
    ("inet", &["inet"]),
    ("date", &["date"]),
    ("timestamp", &["timestamp"]),
    ("timestamptz", &["timestamptz"]),
];

/// The canonical name of a type spelling (`integer` → `int4`).
pub fn canonical_type(spelling: &str) -> Option<&'static str> {
    let spelling = spelling.trim().to_ascii_lowercase();
    TYPES.iter().find(|(_, spellings)| spellings.contains(&spelling.as_str())).map(|(name, _)| *name)
}

fn type_names() -> Vec<&'static str> {
    TYPES.iter().map(|(name, _)| *name).collect()
}

/// What was masked, by detector and column. Bounded: past `MAX_ENTRIES` distinct pairs, counts
/// go to the detector without a column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    entries: Vec<MaskCount>,
}

const MAX_ENTRIES: usize = 64;

impl Tally {
    pub fn add(&mut self, detector: &str, column: Option<&str>, count: u64) {
        let column = if self.entries.len() >= MAX_ENTRIES { None } else { column };
        match self.entries.iter_mut().find(|e| e.detector == detector && e.column.as_deref() == column) {
            Some(entry) => entry.count += count,
            None => self.entries.push(MaskCount { detector: detector.into(), column: column.map(Into::into), count }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn into_counts(self) -> Vec<MaskCount> {
        self.entries
    }
}

#[cfg(test)]
mod tests;
