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
    /// Every detector's literal gates.
    literals: Literals,
    /// Those spelled only in [`PLAIN`] bytes: all a plain value (an id, a digest, a timestamp)
    /// can hold.
    plain_literals: Literals,
    /// Whether any detector has a shaped gate (else no value's shape is measured).
    shaped: bool,
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
        for (index, detector) in detectors.iter().enumerate() {
            if let Some(Gate::Literal(list)) = detector.gate {
                words.extend(list.iter().map(|word| (*word, index)));
            }
        }
        let plain_words: Vec<(&str, usize)> = words
            .iter()
            .copied()
            .filter(|(word, _)| word.bytes().all(|b| CLASSES[usize::from(b.to_ascii_lowercase())] & PLAIN != 0))
            .collect();
        let (literals, plain_literals) = match (Literals::new(&words), Literals::new(&plain_words)) {
            (Ok(literals), Ok(plain)) if problems.is_empty() => (literals, plain),
            (Ok(_), Ok(_)) => return Err(problems),
            (Err(e), _) | (_, Err(e)) => {
                problems.push(problem("detectors".into(), format!("detector literals do not build: {e}")));
                return Err(problems);
            }
        };
        Ok(Masker {
            literals,
            plain_literals,
            shaped: detectors.iter().any(|d| matches!(d.gate, Some(gate) if !matches!(gate, Gate::Literal(_)))),
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

    /// The same detectors with every gate open: what the gates must never change.
    #[cfg(test)]
    fn without_gates(mut self) -> Masker {
        for detector in &mut self.detectors {
            detector.gate = None;
        }
        self
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
        let shape = if self.shaped { Shape::of(text) } else { Shape::default() };
        let literal_hits = if shape.plain { &self.plain_literals } else { &self.literals }.hits(text);
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

/// Literal gates and the detector each opens, found in one Aho-Corasick scan.
struct Literals {
    scan: AhoCorasick,
    owner: Vec<usize>,
}

impl Literals {
    fn new(words: &[(&str, usize)]) -> Result<Literals, aho_corasick::BuildError> {
        // A DFA: one table lookup per byte for the overlapping scan values get.
        let scan = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(words.iter().map(|(word, _)| word))?;
        Ok(Literals { scan, owner: words.iter().map(|(_, owner)| *owner).collect() })
    }

    /// Bit `d` is set when a literal of detector `d` occurs (built-in detectors come first, so
    /// every gated one has an index below 64).
    fn hits(&self, text: &[u8]) -> u64 {
        let mut hits = 0u64;
        // No literal (custom detectors only, or nothing a plain value can hold): no scan.
        if !self.owner.is_empty() {
            for hit in self.scan.find_overlapping_iter(text) {
                hits |= 1 << (self.owner[hit.pattern().as_usize()] % 64);
            }
        }
        hits
    }
}

/// The shapes gates look for, measured in one pass. Each is a necessary condition for its
/// detector's pattern and check to find something (`gates_never_hide_a_finding` compares every
/// detector with and without its gate on generated values).
#[derive(Default, Debug, PartialEq)]
struct Shape {
    digit_run: usize,
    base64_run: usize,
    /// A run of token characters of at least 24 holding both an upper- and a lower-case letter
    /// (what `opaque_token` needs of a whole run).
    mixed_token: bool,
    /// An IBAN's start (two letters of a country that issues IBANs, two digits) followed by
    /// that country's length of letters and digits in all (single spaces allowed between them)
    /// and then no letter or digit (see [`iban_may_end`]).
    iban: bool,
    /// Digit groups written as a phone number: `+` and 8 digits among `0-9 .()-`, or
    /// `(ddd) ddd-dddd` (3, 3 and 4 digits, `)` and one of ` .-` between them).
    phone: bool,
    /// Digit groups written as an SSN: at least 3, exactly 2, at least 4, one `-` or space
    /// between them.
    ssn: bool,
    /// Every byte is [`PLAIN`]: only literals spelled in such bytes can occur.
    plain: bool,
}

/// Byte classes for [`Shape::of`], one table lookup per byte.
const LETTER: u8 = 1;
const DIGIT: u8 = 2;
/// Letters, digits and `+/_=-` (API tokens).
const TOKEN: u8 = 4;
/// Letters, digits and `+/=` and line breaks (base64).
const BASE64: u8 = 8;
/// Upper-case letters.
const UPPER: u8 = 16;
/// Lower-case letters.
const LOWER: u8 = 32;
/// What may sit between a phone number's digits after its `+`: ` .()-`.
const PHONE_SEP: u8 = 64;
/// Hex digits and ` -:.+,/`: what ids, digests, UUIDs, timestamps and numbers are made of.
const PLAIN: u8 = 128;

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
        if c.is_ascii_uppercase() {
            class |= UPPER;
        } else if c.is_ascii_lowercase() {
            class |= LOWER;
        }
        if matches!(c, b'+' | b'/' | b'_' | b'=' | b'-') {
            class |= TOKEN;
        }
        if matches!(c, b'+' | b'/' | b'=' | b'\r' | b'\n') {
            class |= BASE64;
        }
        if matches!(c, b' ' | b'.' | b'(' | b')' | b'-') {
            class |= PHONE_SEP;
        }
        if c.is_ascii_hexdigit() || matches!(c, b' ' | b'-' | b':' | b'.' | b'+' | b',' | b'/') {
            class |= PLAIN;
        }
        table[b] = class;
        b += 1;
    }
    table
};

/// The digit groups of a value, for the phone and SSN shapes: where the last two ended.
#[derive(Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
}

impl Group {
    fn len(self) -> usize {
        self.end - self.start
    }
}

impl Shape {
    fn of(text: &[u8]) -> Shape {
        if text.len() <= 64 {
            Shape::of_bits(text)
        } else {
            Shape::of_bytes(text)
        }
    }

    /// The shape measured byte by byte, for values of any length.
    fn of_bytes(text: &[u8]) -> Shape {
        let mut shape = Shape::default();
        // Runs are kept as where they started, so letters and digits (most of every value) only
        // move the digit counters; a run's length is measured when it ends.
        let (mut token_from, mut base64_from) = (0usize, 0usize);
        // Digits in the current run of digit groups with single spaces or dashes between them;
        // whether the byte before was such a separator.
        let (mut digit_run, mut digit_sep) = (0usize, false);
        // Digits ending here (the current digit group).
        let mut group = 0usize;
        // The last two digit groups that ended at a separator.
        let mut groups: [Option<Group>; 2] = [None, None];
        // Upper- and lower-case letters seen in the current token run (their class bits).
        let mut token_cases = 0u8;
        // The letter (1) / digit (2) / other (0) classes of the last three bytes, two bits each,
        // for the IBAN start: letter, letter, digit, then this digit.
        let mut last = 0u8;
        // 1 + the digits since the last `+` while only phone separators came between them;
        // 0 when there is no such `+`.
        let mut plus = 0usize;
        for (i, &b) in text.iter().enumerate() {
            let classes = CLASSES[b as usize];
            let class = classes & (LETTER | DIGIT);
            if class != 0 {
                // No branch here depends on letter or digit (random tokens would mispredict).
                let digit = usize::from(class == DIGIT);
                digit_run = (digit_run + 1) * digit;
                group = (group + 1) * digit;
                plus = (plus + usize::from(plus != 0)) * digit;
                digit_sep = false;
                token_cases |= classes & (UPPER | LOWER);
                shape.digit_run = shape.digit_run.max(digit_run);
                shape.phone |= plus >= 9;
                if group == 4 {
                    shape.chain(text, &groups, i - 3);
                }
                if digit == 1 && last == 0b01_01_10 && iban_country(text[i - 3], text[i - 2]) {
                    shape.iban |= iban_may_end(text, i - 3);
                }
            } else {
                if group > 0 {
                    groups = [groups[1], Some(Group { start: i - group, end: i })];
                    group = 0;
                }
                if (b == b' ' || b == b'-') && digit_run > 0 && !digit_sep {
                    digit_sep = true;
                } else {
                    digit_run = 0;
                    digit_sep = false;
                }
                if b == b'+' {
                    plus = 1;
                } else if classes & PHONE_SEP == 0 {
                    plus = 0;
                }
                if classes & TOKEN == 0 {
                    shape.end_token(i - token_from, token_cases);
                    token_from = i + 1;
                    token_cases = 0;
                }
                if classes & BASE64 == 0 {
                    shape.base64_run = shape.base64_run.max(i - base64_from);
                    base64_from = i + 1;
                }
            }
            last = ((last << 2) | class) & 0b11_11_11;
        }
        let end = text.len();
        shape.end_token(end - token_from, token_cases);
        shape.base64_run = shape.base64_run.max(end - base64_from);
        shape.plain = text.iter().all(|&b| CLASSES[usize::from(b)] & PLAIN != 0);
        shape
    }

    /// The shape of a value of at most 64 bytes, measured on bit masks (bit `i` of each class
    /// mask is byte `i`): the classes of eight bytes at a time are transposed into the masks,
    /// then runs are found with bit counts, so letters and digits cost no branch and no counter
    /// each. Equal to [`Shape::of_bytes`] (`bit_masks_measure_what_bytes_measure`).
    fn of_bits(text: &[u8]) -> Shape {
        let m = BitClasses::of(text);
        let mut shape = Shape { plain: m.plain == run_mask(0, text.len() as u32), ..Shape::default() };
        // Digit groups with single spaces or dashes between them: a separator counts when a
        // digit comes before it; a chain's length is its digits.
        let chains = m.digit | (m.sep & (m.digit << 1));
        for (start, len) in runs(chains) {
            // A chain holds at most as many digits as bytes: count only those that may be longer.
            if len as usize > shape.digit_run {
                shape.digit_run = shape.digit_run.max((m.digit & run_mask(start, len)).count_ones() as usize);
            }
        }
        shape.base64_run = runs(m.base64).map(|(_, len)| len as usize).max().unwrap_or(0);
        if m.upper != 0 && m.lower != 0 {
            shape.mixed_token = runs(m.token).any(|(start, len)| {
                len >= 24 && m.upper & run_mask(start, len) != 0 && m.lower & run_mask(start, len) != 0
            });
        }
        // IBAN starts: letter, letter, digit, digit.
        let letter = m.alnum & !m.digit;
        let starts = letter & (letter >> 1) & (m.digit >> 2) & (m.digit >> 3);
        shape.iban = bits(starts).any(|at| iban_country(text[at], text[at + 1]) && iban_may_end(text, at));
        if text.contains(&b'+') {
            shape.phone = plus_phone(text);
        }
        // Groups of at least 4 digits (where four digits start and no digit comes before), with
        // the two groups before them.
        let four = m.digit & (m.digit >> 1) & (m.digit >> 2) & (m.digit >> 3) & !(m.digit << 1);
        for third in bits(four) {
            shape.chain_at(text, m.digit, third);
        }
        shape
    }

    /// [`Shape::chain`] on masks: the digit group starting at `third` has at least 4 digits.
    fn chain_at(&mut self, text: &[u8], digit: u64, third: usize) {
        // The length of the digit group ending just before `end`.
        let group_before = |end: usize| if end == 0 { 0 } else { (!(digit << (64 - end))).leading_zeros() as usize };
        let one_of = |at: usize, set: &[u8]| set.contains(&text[at]);
        if third < 2 {
            return;
        }
        let second_len = group_before(third - 1);
        if second_len == 0 {
            return;
        }
        let second = third - 1 - second_len;
        if second >= 2 && one_of(second - 1, b"- ") && one_of(third - 1, b"- ") {
            self.ssn |= second_len == 2 && group_before(second - 1) >= 3;
        }
        if second_len == 3 && one_of(third - 1, b" .-") && second >= 2 {
            let direct = one_of(second - 1, b" .-") && group_before(second - 1) == 3;
            let after_paren =
                second >= 3 && one_of(second - 1, b" .-") && text[second - 2] == b')' && group_before(second - 2) == 3;
            self.phone |= direct || after_paren;
        }
    }

    /// A token run of `len` ended, holding the letter cases `cases`.
    fn end_token(&mut self, len: usize, cases: u8) {
        self.mixed_token |= len >= 24 && cases == UPPER | LOWER;
    }

    /// A digit group reached 4 digits at `third`: with the two groups before it, is it an SSN
    /// or a North American phone number as the patterns write them?
    fn chain(&mut self, text: &[u8], groups: &[Option<Group>; 2], third: usize) {
        let [Some(first), Some(second)] = *groups else { return };
        let one_of = |at: usize, set: &[u8]| set.contains(&text[at]);
        let next_to = |a: Group, b: usize, set: &[u8]| a.end + 1 == b && one_of(a.end, set);
        self.ssn |= first.len() >= 3
            && second.len() == 2
            && next_to(first, second.start, b"- ")
            && next_to(second, third, b"- ");
        let after_paren = first.end + 2 == second.start && text[first.end] == b')' && one_of(first.end + 1, b" .-");
        self.phone |= first.len() == 3
            && second.len() == 3
            && (next_to(first, second.start, b" .-") || after_paren)
            && next_to(second, third, b" .-");
    }

    fn opens(&self, gate: Gate) -> bool {
        match gate {
            Gate::Literal(_) => false,
            Gate::DigitRun(n) => self.digit_run >= n,
            Gate::Phone => self.phone,
            Gate::Ssn => self.ssn,
            Gate::Iban => self.iban,
            Gate::MixedTokenRun => self.mixed_token,
            Gate::Base64Run(n) => self.base64_run >= n,
        }
    }
}

/// `+` and then 8 digits with only ` .()-` between them.
fn plus_phone(text: &[u8]) -> bool {
    text.iter().enumerate().filter(|(_, &b)| b == b'+').any(|(at, _)| {
        let mut digits = 0;
        for &b in &text[at + 1..] {
            let classes = CLASSES[usize::from(b)];
            if classes & DIGIT != 0 {
                digits += 1;
                if digits >= 8 {
                    return true;
                }
            } else if classes & PHONE_SEP == 0 {
                return false;
            }
        }
        false
    })
}

/// The classes of a value of at most 64 bytes as one mask each: bit `i` is byte `i`.
#[derive(Default)]
struct BitClasses {
    digit: u64,
    alnum: u64,
    upper: u64,
    lower: u64,
    token: u64,
    base64: u64,
    /// A space or a dash (between digit groups).
    sep: u64,
    plain: u64,
}

/// The bit of each class in [`BIT_CLASSES`], in the order of [`BitClasses`]' fields.
const BIT_CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0u8;
        if c.is_ascii_digit() {
            class |= 1;
        }
        if c.is_ascii_alphanumeric() {
            class |= 2;
        }
        if c.is_ascii_uppercase() {
            class |= 4;
        }
        if c.is_ascii_lowercase() {
            class |= 8;
        }
        if CLASSES[b] & TOKEN != 0 {
            class |= 16;
        }
        if CLASSES[b] & BASE64 != 0 {
            class |= 32;
        }
        if c == b' ' || c == b'-' {
            class |= 64;
        }
        if CLASSES[b] & PLAIN != 0 {
            class |= 128;
        }
        table[b] = class;
        b += 1;
    }
    table
};

impl BitClasses {
    fn of(text: &[u8]) -> BitClasses {
        let mut classes = [0u8; 64];
        for (class, &b) in classes.iter_mut().zip(text) {
            *class = BIT_CLASSES[usize::from(b)];
        }
        let mut masks = [0u64; 8];
        for (word, eight) in classes[..text.len().div_ceil(8) * 8].chunks_exact(8).enumerate() {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(eight);
            // Byte k of the transposed word holds bit k of each of the eight bytes.
            let transposed = transpose8(u64::from_le_bytes(bytes));
            for (k, mask) in masks.iter_mut().enumerate() {
                *mask |= ((transposed >> (8 * k)) & 0xff) << (8 * word);
            }
        }
        let [digit, alnum, upper, lower, token, base64, sep, plain] = masks;
        BitClasses { digit, alnum, upper, lower, token, base64, sep, plain }
    }
}

/// Transpose an 8x8 bit matrix held as eight bytes: bit `k` of byte `i` goes to bit `i` of
/// byte `k`.
fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// The maximal runs of set bits of a mask, as (first bit, length).
fn runs(mut mask: u64) -> impl Iterator<Item = (u32, u32)> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let start = mask.trailing_zeros();
        let len = (!(mask >> start)).trailing_zeros();
        mask &= !run_mask(start, len);
        Some((start, len))
    })
}

/// The mask of `len` bits from bit `start` (`start + len <= 64`).
fn run_mask(start: u32, len: u32) -> u64 {
    if len == 64 {
        u64::MAX
    } else {
        ((1u64 << len) - 1) << start
    }
}

/// The positions of the set bits of a mask.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let at = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(at)
    })
}

/// Whether the IBAN check can accept an IBAN starting at `start`: the check wants exactly the
/// country's length of letters and digits, single spaces allowed between them as the pattern
/// writes them, and then no letter or digit. (The pattern's match is at most 34 letters and
/// digits and the check reads only the match, so a country of 34 would end any longer run.)
fn iban_may_end(text: &[u8], start: usize) -> bool {
    let Some(want) = checks::iban_length([text[start].to_ascii_uppercase(), text[start + 1].to_ascii_uppercase()])
    else {
        return false;
    };
    if want >= 34 {
        return true;
    }
    let (mut count, mut after_space) = (0, false);
    for (at, &b) in text.iter().enumerate().skip(start) {
        if b.is_ascii_alphanumeric() {
            count += 1;
            after_space = false;
            if count == want {
                return text.get(at + 1).is_none_or(|next| !next.is_ascii_alphanumeric());
            }
        } else if b == b' ' && !after_space {
            after_space = true;
        } else {
            return false;
        }
    }
    false
}

/// Whether two letters (either case) are a country code that issues IBANs.
fn iban_country(a: u8, b: u8) -> bool {
    static COUNTRIES: std::sync::OnceLock<[u32; 26]> = std::sync::OnceLock::new();
    let countries = COUNTRIES.get_or_init(|| {
        let mut table = [0u32; 26];
        for first in b'A'..=b'Z' {
            for second in b'A'..=b'Z' {
                if checks::iban_length([first, second]).is_some() {
                    table[usize::from(first - b'A')] |= 1 << (second - b'A');
                }
            }
        }
        table
    });
    let (a, b) = (a.to_ascii_uppercase().wrapping_sub(b'A'), b.to_ascii_uppercase().wrapping_sub(b'A'));
    a < 26 && b < 26 && countries[usize::from(a)] & (1 << b) != 0
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
