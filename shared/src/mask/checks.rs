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
/// longest sequences of whole groups that hold 13 to 19 digits, are grouped as cards are
/// written (one block, or 4-4-4-4, 4-4-4-4-3, 4-6-5, 4-6-4), start with a card issuer's prefix
/// at a length that issuer uses, and pass Luhn. Without the shape and prefix checks one random
/// number in ten passes Luhn: a tool's temporary names (Ansible's `ansible-tmp-1796238392.42-
/// 14427-123456789012345`) were masked and the tool broke.
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
            let shape: Vec<usize> = groups[first..=last].iter().map(|g| g.len()).collect();
            if digits >= 13 && card_shaped(&shape) && issued(&text[span.clone()]) && luhn(&text[span.clone()]) {
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

/// Group lengths cards are written in.
fn card_shaped(groups: &[usize]) -> bool {
    matches!(groups, [_] | [4, 4, 4, 4] | [4, 4, 4, 4, 3] | [4, 6, 5] | [4, 6, 4])
}

/// Whether the digits start with a card issuer's prefix, at a length that issuer uses (Visa,
/// Mastercard, American Express, Diners, Discover, JCB, UnionPay, Maestro).
pub fn issued(candidate: &[u8]) -> bool {
    let digits: Vec<u8> = candidate.iter().filter(|b| b.is_ascii_digit()).map(|b| b - b'0').collect();
    let len = digits.len();
    let prefix = |n: usize| digits.iter().take(n).fold(0u32, |acc, d| acc * 10 + u32::from(*d));
    match digits.first() {
        Some(4) => matches!(len, 13 | 16 | 19),
        Some(2) => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(3) => match prefix(2) {
            34 | 37 => len == 15,
            30 if prefix(3) <= 305 => (14..=19).contains(&len),
            36 | 38 | 39 => (14..=19).contains(&len),
            35 => (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&len),
            _ => false,
        },
        Some(5) => match prefix(2) {
            51..=55 => len == 16,
            50 | 56..=59 => (16..=19).contains(&len),
            _ => false,
        },
        Some(6) => (16..=19).contains(&len),
        _ => false,
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

/// The length (in bytes of `candidate`) of the IBAN it starts with: as long as its country's
/// IBANs are, spaces aside, and passing mod-97.
pub fn iban(candidate: &[u8]) -> Option<usize> {
    let country = [candidate.first()?.to_ascii_uppercase(), candidate.get(1)?.to_ascii_uppercase()];
    let want = iban_length(country)?;
    let mut compact = [0u8; 34];
    let mut n = 0;
    for (i, &b) in candidate.iter().enumerate() {
        if b == b' ' {
            continue;
        }
        compact[n] = b.to_ascii_uppercase();
        n += 1;
        if n == want {
            // Not the head of a longer token.
            let next = candidate.get(i + 1).copied();
            let whole = next.is_none_or(|b| !b.is_ascii_alphanumeric());
            return (whole && mod97(&compact[..n]) == Some(1)).then_some(i + 1);
        }
    }
    None
}

/// The length of a country's IBANs, for an upper-case country code.
pub fn iban_length(country: [u8; 2]) -> Option<usize> {
    IBAN_LENGTHS.binary_search_by(|(code, _)| code.as_bytes().cmp(&country[..])).ok().map(|i| IBAN_LENGTHS[i].1)
}

/// IBAN length by country (ISO 13616 registry), sorted by country code.
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

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

/// The text a base64 or hex candidate decodes to, when it is text. Most candidates (digests,
/// UUIDs, random ids) decode to binary: the first bytes, decoded on the stack, tell.
pub fn decode(candidate: &[u8]) -> Option<String> {
    let hex_body = candidate.strip_prefix(b"\\x").unwrap_or(candidate);
    if hex_body.len().is_multiple_of(2) {
        // The head first: most hex is a digest or an id, rejected before the rest is read.
        let mut head = [0u8; PREFIX];
        let n = hex_body.len().min(2 * PREFIX) / 2;
        let mut hex = true;
        for (i, pair) in hex_body[..2 * n].chunks_exact(2).enumerate() {
            let (high, low) = (nibble(pair[0]), nibble(pair[1]));
            hex &= high < 16 && low < 16;
            head[i] = high << 4 | low;
        }
        if hex && may_be_text(&head[..n]) && hex_body.iter().all(u8::is_ascii_hexdigit) {
            if let Some(text) = hex::decode(hex_body).ok().and_then(printable) {
                return Some(text);
            }
        }
    }
    // The first whole groups of four before any padding (what every engine decodes the same
    // way), gathered without the line breaks base64 may have.
    let mut chars = [0u8; 4 * PREFIX / 3];
    let mut n = 0;
    for &b in candidate.iter().filter(|b| !b.is_ascii_whitespace()).take_while(|b| **b != b'=').take(chars.len()) {
        chars[n] = b;
        n += 1;
    }
    let mut head = [0u8; PREFIX + 4];
    if n >= 4 {
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD.decode_slice(&chars[..n / 4 * 4], &mut head);
        if !decoded.is_ok_and(|len| may_be_text(&head[..len])) {
            return None;
        }
    }
    let compact: Vec<u8> = candidate.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let engines = [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::STANDARD_NO_PAD];
    engines.iter().find_map(|engine| engine.decode(&compact).ok()).and_then(printable)
}

/// Bytes decoded ahead to reject binary early.
const PREFIX: usize = 12;

/// A hex digit's value; 16 or more for any other byte.
fn nibble(hex: u8) -> u8 {
    match hex {
        b'0'..=b'9' => hex - b'0',
        b'a'..=b'f' => hex - b'a' + 10,
        b'A'..=b'F' => hex - b'A' + 10,
        _ => 16,
    }
}

/// Whether decoded bytes may be the start of text [`printable`] accepts: UTF-8 (a character
/// cut at the end aside) without control characters.
fn may_be_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
        Err(_) => return false,
    };
    !valid.chars().any(|c| c.is_control() && !c.is_whitespace())
}

fn printable(bytes: Vec<u8>) -> Option<String> {
    let text = String::from_utf8(bytes).ok()?;
    let control = text.chars().filter(|c| c.is_control() && !c.is_whitespace()).count();
    (control == 0).then_some(text)
}
