//! What a candidate must pass to count as a finding. Each check may narrow the span (an IBAN
//! candidate that ran into the following word) or reject it.

use base64::Engine;
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Any,
    Luhn,
    Iban,
    Ssn,
    Phone,
    Entropy,
    /// Decode base64 or hex and look inside (see `Masker::scan`).
    Encoded,
}

impl Check {
    /// Report the spans to mask within a candidate (none when it is not what it looks like).
    pub fn accept(self, text: &[u8], span: Range<usize>, found: &mut dyn FnMut(Range<usize>)) {
        let candidate = &text[span.clone()];
        let ok = match self {
            Check::Any | Check::Encoded => true,
            Check::Luhn => return cards(text, span, found),
            Check::Iban => {
                if let Some(len) = iban(candidate) {
                    found(span.start..span.start + len);
                }
                return;
            }
            Check::Ssn => ssn(candidate),
            Check::Phone => {
                let digits = candidate.iter().filter(|b| b.is_ascii_digit()).count();
                let after_ok = text.get(span.end).is_none_or(|b| !b.is_ascii_digit());
                after_ok && (8..=15).contains(&digits)
            }
            Check::Entropy => opaque_token(candidate),
        };
        if ok {
            found(span);
        }
    }
}

/// Card numbers within a run of digit groups (`219-09-9999 4111111111111111` is one run): the
/// longest sequences of whole groups that hold 13 to 19 digits and pass Luhn.
fn cards(text: &[u8], run: Range<usize>, found: &mut dyn FnMut(Range<usize>)) {
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut start = run.start;
    for i in run.clone() {
        if !text[i].is_ascii_digit() {
            groups.push(start..i);
            start = i + 1;
        }
    }
    groups.push(start..run.end);
    let mut first = 0;
    while first < groups.len() {
        let mut best = None;
        let mut digits = 0;
        for last in first..groups.len() {
            digits += groups[last].len();
            if digits > 19 {
                break;
            }
            let span = groups[first].start..groups[last].end;
            if digits >= 13 && luhn(&text[span.clone()]) {
                best = Some((last, span));
            }
        }
        match best {
            Some((last, span)) => {
                found(span);
                first = last + 1;
            }
            None => first += 1,
        }
    }
}

/// The Luhn checksum of the digits (separators ignored).
pub fn luhn(candidate: &[u8]) -> bool {
    let digits: Vec<u32> = candidate.iter().filter(|b| b.is_ascii_digit()).map(|b| u32::from(b - b'0')).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                if *d * 2 > 9 {
                    *d * 2 - 9
                } else {
                    *d * 2
                }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The length (in bytes of `candidate`) of the longest prefix that is a valid IBAN.
pub fn iban(candidate: &[u8]) -> Option<usize> {
    // Try the longest prefix first: a greedy candidate may have run into the next word.
    let ends: Vec<usize> = (1..=candidate.len()).filter(|&end| candidate[end - 1] != b' ').collect();
    for &end in ends.iter().rev() {
        let compact: Vec<u8> =
            candidate[..end].iter().filter(|b| **b != b' ').map(|b| b.to_ascii_uppercase()).collect();
        if compact.len() < 15 {
            break;
        }
        if compact.len() <= 34 && mod97(&compact) == Some(1) {
            return Some(end);
        }
    }
    None
}

/// ISO 13616: move the first four characters to the end, letters to numbers, mod 97.
fn mod97(iban: &[u8]) -> Option<u32> {
    let (head, tail) = iban.split_at(4);
    let mut remainder = 0u32;
    for &b in tail.iter().chain(head) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return None,
        };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    Some(remainder)
}

/// US SSN rules: area not 000, 666 or 9xx; group not 00; serial not 0000.
pub fn ssn(candidate: &[u8]) -> bool {
    let digits: Vec<u8> = candidate.iter().filter(|b| b.is_ascii_digit()).map(|b| b - b'0').collect();
    if digits.len() != 9 {
        return false;
    }
    let area = u32::from(digits[0]) * 100 + u32::from(digits[1]) * 10 + u32::from(digits[2]);
    let group = digits[3] * 10 + digits[4];
    let serial = digits[5..].iter().fold(0u32, |n, d| n * 10 + u32::from(*d));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// A random-looking token: long, mixing letter cases and digits, with high character entropy.
/// Hex digests (one case, sixteen symbols) and long words stay below the bar.
pub fn opaque_token(candidate: &[u8]) -> bool {
    let upper = candidate.iter().filter(|b| b.is_ascii_uppercase()).count();
    let lower = candidate.iter().filter(|b| b.is_ascii_lowercase()).count();
    let digits = candidate.iter().filter(|b| b.is_ascii_digit()).count();
    let classes = [upper, lower, digits].iter().filter(|n| **n >= 2).count();
    if classes < 2 || upper == 0 || lower == 0 {
        return false;
    }
    let n = candidate.len().min(64) as f64;
    entropy(candidate) >= 0.8 * n.log2() && wordiness(candidate) < 0.7
}

/// The share of characters in word-like runs (`Factory`, `bean`): high for CamelCase
/// identifiers, low for random tokens (under 0.63 for 99% of random 24-character ones).
fn wordiness(candidate: &[u8]) -> f64 {
    let mut in_words = 0;
    let mut i = 0;
    while i < candidate.len() {
        let start = i;
        if candidate[i].is_ascii_uppercase() {
            i += 1;
        }
        let lower_start = i;
        while i < candidate.len() && candidate[i].is_ascii_lowercase() {
            i += 1;
        }
        if i - lower_start >= 3 {
            in_words += i - start;
        }
        if i == start {
            i += 1;
        }
    }
    in_words as f64 / candidate.len() as f64
}

/// Shannon entropy of the bytes, bits per byte.
pub fn entropy(bytes: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for b in bytes {
        counts[usize::from(*b)] += 1;
    }
    let n = bytes.len() as f64;
    counts.iter().filter(|c| **c > 0).map(|c| f64::from(*c) / n).map(|p| -p * p.log2()).sum()
}

/// The text a base64 or hex candidate decodes to, when it is text.
pub fn decode(candidate: &[u8]) -> Option<String> {
    let hex_body = candidate.strip_prefix(b"\\x").unwrap_or(candidate);
    if hex_body.len().is_multiple_of(2) && hex_body.iter().all(u8::is_ascii_hexdigit) {
        if let Some(text) = hex::decode(hex_body).ok().and_then(printable) {
            return Some(text);
        }
    }
    let compact: Vec<u8> = candidate.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let engines = [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::STANDARD_NO_PAD];
    engines.iter().find_map(|engine| engine.decode(&compact).ok()).and_then(printable)
}

fn printable(bytes: Vec<u8>) -> Option<String> {
    let text = String::from_utf8(bytes).ok()?;
    let control = text.chars().filter(|c| c.is_control() && !c.is_whitespace()).count();
    (control == 0).then_some(text)
}
