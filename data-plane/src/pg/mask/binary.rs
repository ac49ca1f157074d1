//! What a binary-format value says, as text a detector can read. Numbers are decoded (a card
//! number stored as `bigint` is digits again), and containers are opened element by element:
//! arrays and records (composites) describe their element types themselves; ranges and
//! multiranges of the built-in range types are decoded by their subtype. A value whose rendering
//! holds a finding is nulled and counted by the caller (binary values cannot carry a marker).

use super::super::messages::Cursor;

/// Containers nest at most this deep before the rest is scanned as raw bytes.
const MAX_DEPTH: u8 = 8;

/// Types that cannot hold free text (booleans, floats, dates, times, UUIDs, OIDs, inet...).
const OPAQUE: &[u32] = &[16, 700, 701, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 26, 869, 650, 829, 774, 18];

/// Built-in range types and their subtypes; multiranges and their ranges.
const RANGES: &[(u32, u32)] = &[(3904, 23), (3926, 20), (3906, 1700), (3908, 1114), (3910, 1184), (3912, 1082)];
const MULTIRANGES: &[(u32, u32)] =
    &[(4451, 3904), (4536, 3926), (4532, 3906), (4533, 3908), (4534, 3910), (4535, 3912)];

/// `None` for types that cannot hold free text.
pub fn binary_text(type_oid: u32, raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() + 8);
    render(type_oid, raw, 0, &mut out).then_some(out)
}

/// Append what the value says; `false` when it cannot hold text at all.
fn render(type_oid: u32, raw: &[u8], depth: u8, out: &mut Vec<u8>) -> bool {
    if OPAQUE.contains(&type_oid) {
        return false;
    }
    match type_oid {
        21 if raw.len() == 2 => out.extend(i16::from_be_bytes([raw[0], raw[1]]).to_string().bytes()),
        23 if raw.len() == 4 => out.extend(i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]).to_string().bytes()),
        20 if raw.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(raw);
            out.extend(i64::from_be_bytes(b).to_string().bytes());
        }
        1700 => match numeric_text(raw) {
            Some(text) => out.extend(text),
            None => out.extend_from_slice(raw),
        },
        // jsonb: a version byte, then the JSON text.
        3802 => out.extend_from_slice(raw.get(1..).unwrap_or_default()),
        _ if depth < MAX_DEPTH => {
            if let Some(&(_, subtype)) = RANGES.iter().find(|(range, _)| *range == type_oid) {
                if range(subtype, raw, depth, out).is_some() {
                    return true;
                }
            } else if let Some(&(_, range_type)) = MULTIRANGES.iter().find(|(multi, _)| *multi == type_oid) {
                if multirange(range_type, raw, depth, out).is_some() {
                    return true;
                }
            }
            // Arrays and records say what they hold; text types, bytea and unknown types are
            // scanned as the bytes they are.
            let mark = out.len();
            if array(raw, depth, out).is_none() {
                out.truncate(mark);
                if record(raw, depth, out).is_none() {
                    out.truncate(mark);
                    out.extend_from_slice(raw);
                }
            }
        }
        _ => out.extend_from_slice(raw),
    }
    true
}

/// One element or field: rendered, separated from the next so that adjacent numbers never run
/// together into something that looks like a card.
fn element(type_oid: u32, raw: &[u8], depth: u8, out: &mut Vec<u8>) {
    let mark = out.len();
    if !render(type_oid, raw, depth + 1, out) {
        out.truncate(mark);
    }
    out.push(b',');
}

/// `array_send`: dimensions, a null flag, the element type, bounds, then each element. `None`
/// unless the bytes are exactly that.
fn array(raw: &[u8], depth: u8, out: &mut Vec<u8>) -> Option<()> {
    let mut c = Cursor::new(raw, "array");
    let ndim = c.i32().ok()?;
    let flags = c.i32().ok()?;
    let element_type = c.i32().ok()? as u32;
    if !(0..=6).contains(&ndim) || !(0..=1).contains(&flags) || element_type == 0 {
        return None;
    }
    let mut count: usize = 1;
    for _ in 0..ndim {
        let size = usize::try_from(c.i32().ok()?).ok()?;
        let _lower_bound = c.i32().ok()?;
        count = count.checked_mul(size)?;
    }
    if ndim == 0 {
        count = 0;
    }
    if count > raw.len() {
        return None;
    }
    out.push(b'{');
    for _ in 0..count {
        let len = c.i32().ok()?;
        if len < 0 {
            continue;
        }
        element(element_type, c.take(len as usize).ok()?, depth, out);
    }
    out.push(b'}');
    c.is_empty().then_some(())
}

/// `record_send`: the number of fields, then each field's type, length and bytes.
fn record(raw: &[u8], depth: u8, out: &mut Vec<u8>) -> Option<()> {
    let mut c = Cursor::new(raw, "record");
    let fields = usize::try_from(c.i32().ok()?).ok()?;
    if fields > raw.len() {
        return None;
    }
    out.push(b'(');
    for _ in 0..fields {
        let field_type = c.i32().ok()? as u32;
        let len = c.i32().ok()?;
        if field_type == 0 {
            return None;
        }
        if len < 0 {
            continue;
        }
        element(field_type, c.take(len as usize).ok()?, depth, out);
    }
    out.push(b')');
    c.is_empty().then_some(())
}

/// `range_send`: flags, then the lower and upper bounds that are present.
fn range(subtype: u32, raw: &[u8], depth: u8, out: &mut Vec<u8>) -> Option<()> {
    const EMPTY: u8 = 0x01;
    const LOWER_INFINITE: u8 = 0x08;
    const UPPER_INFINITE: u8 = 0x10;
    let mut c = Cursor::new(raw, "range");
    let flags = c.u8().ok()?;
    out.push(b'[');
    for infinite in [LOWER_INFINITE, UPPER_INFINITE] {
        if flags & (EMPTY | infinite) == 0 {
            let len = usize::try_from(c.i32().ok()?).ok()?;
            element(subtype, c.take(len).ok()?, depth, out);
        }
    }
    out.push(b']');
    c.is_empty().then_some(())
}

/// `multirange_send`: the number of ranges, then each range's length and bytes.
fn multirange(range_type: u32, raw: &[u8], depth: u8, out: &mut Vec<u8>) -> Option<()> {
    let subtype = RANGES.iter().find(|(range, _)| *range == range_type)?.1;
    let mut c = Cursor::new(raw, "multirange");
    let count = usize::try_from(c.i32().ok()?).ok()?;
    for _ in 0..count.min(raw.len()) {
        let len = usize::try_from(c.i32().ok()?).ok()?;
        range(subtype, c.take(len).ok()?, depth + 1, out)?;
    }
    c.is_empty().then_some(())
}

/// The digits of a binary `numeric` (base-10000 digit groups), enough for a detector.
fn numeric_text(raw: &[u8]) -> Option<Vec<u8>> {
    let mut c = Cursor::new(raw, "numeric");
    let ndigits = usize::try_from(c.i16().ok()?).ok()?;
    let weight = c.i16().ok()?;
    let (_sign, _dscale) = (c.i16().ok()?, c.i16().ok()?);
    let mut text = String::new();
    for i in 0..ndigits {
        let group = c.i16().ok()?;
        if i as i32 == i32::from(weight) + 1 {
            text.push('.');
        }
        if i == 0 {
            text.push_str(&group.to_string());
        } else {
            text.push_str(&format!("{group:04}"));
        }
    }
    // Trailing zero groups matter to a detector only in a number short enough to be a card or
    // an account: a weight of 32767 would otherwise render 131 KB of zeros per value.
    let zeros = (i32::from(weight) + 1 - ndigits as i32).clamp(0, 8);
    for _ in 0..zeros {
        text.push_str("0000");
    }
    Some(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int8(v: i64) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    fn array_of(element_type: u32, elements: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(1i32.to_be_bytes());
        out.extend(i32::from(elements.iter().any(Option::is_none)).to_be_bytes());
        out.extend(element_type.to_be_bytes());
        out.extend((elements.len() as i32).to_be_bytes());
        out.extend(1i32.to_be_bytes());
        for e in elements {
            match e {
                Some(bytes) => {
                    out.extend((bytes.len() as i32).to_be_bytes());
                    out.extend(bytes);
                }
                None => out.extend((-1i32).to_be_bytes()),
            }
        }
        out
    }

    fn text(type_oid: u32, raw: &[u8]) -> String {
        String::from_utf8_lossy(&binary_text(type_oid, raw).expect("renders")).into_owned()
    }

    #[test]
    fn numbers_inside_containers_are_digits_again() {
        let cards = array_of(20, &[Some(int8(4111111111111111)), None, Some(int8(42))]);
        assert_eq!(text(1016, &cards), "{4111111111111111,42,}");
        // A record of (int8, text[]) built as record_send does.
        let inner = array_of(25, &[Some(b"alice@example.com".to_vec())]);
        let mut rec = Vec::new();
        rec.extend(2i32.to_be_bytes());
        rec.extend(20u32.to_be_bytes());
        rec.extend(8i32.to_be_bytes());
        rec.extend(int8(5500000000000004));
        rec.extend(1009u32.to_be_bytes());
        rec.extend((inner.len() as i32).to_be_bytes());
        rec.extend(&inner);
        assert_eq!(text(2249, &rec), "(5500000000000004,{alice@example.com,},)");
        // int8range [4111111111111111, 4111111111111112)
        let mut range = vec![0x02];
        range.extend(8i32.to_be_bytes());
        range.extend(int8(4111111111111111));
        range.extend(8i32.to_be_bytes());
        range.extend(int8(4111111111111112));
        assert_eq!(text(3926, &range), "[4111111111111111,4111111111111112,]");
        let mut multi = 1i32.to_be_bytes().to_vec();
        multi.extend((range.len() as i32).to_be_bytes());
        multi.extend(&range);
        assert_eq!(text(4536, &multi), "[4111111111111111,4111111111111112,]");
    }

    #[test]
    fn huge_numeric_weights_render_a_few_zeros() {
        // 1e131071: one digit group of 1 with a weight of 32767.
        let mut raw = Vec::new();
        for v in [1i16, 32767, 0, 0, 1] {
            raw.extend(v.to_be_bytes());
        }
        assert_eq!(text(1700, &raw), "1".to_owned() + &"0000".repeat(8));
    }

    #[test]
    fn opaque_types_and_plain_bytes() {
        assert_eq!(binary_text(16, &[1]), None);
        assert_eq!(text(25, b"plain text"), "plain text");
        // Bytes that only look like the start of an array are scanned as they are.
        assert_eq!(text(17, &[0, 0, 0, 1, 9, 9]), "\0\0\0\u{1}\t\t");
    }
}
