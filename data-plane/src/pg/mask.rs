//! Masking on the PostgreSQL wire: where the values are in each upstream message, and how the
//! message is rebuilt once some of them changed. What counts as a secret is decided by
//! `tollgate_shared::mask::Masker`; this module only knows the protocol.
//!
//! Messages are handled one at a time (constant memory, however long the result), and an
//! untouched message is forwarded as the bytes it arrived as.

mod binary;
mod statement;

pub use statement::mask_statement;

use super::messages::{framed, Cursor, Malformed};
use binary::binary_text;
use bytes::{BufMut, Bytes, BytesMut};
use tollgate_shared::mask::{Masker, Tally, COLUMN_DETECTOR, COLUMN_MARKER};

/// One result column, as a RowDescription describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// As described: exact for a Query or a described portal, 0 for a described statement
    /// (the Bind decides then).
    pub format: i16,
}

/// What masking a message changed; counts go to the command the message answers.
#[derive(Default)]
pub struct Findings {
    pub tally: Tally,
    /// Binary values that held a finding and became NULL.
    pub nulled: u64,
}

/// The columns of a RowDescription.
pub fn row_description(body: &[u8]) -> Result<Vec<Column>, Malformed> {
    let mut c = Cursor::new(body, "RowDescription");
    let n = usize::try_from(c.i16()?).map_err(|_| Malformed("RowDescription"))?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        let name = String::from_utf8_lossy(c.cbytes()?).into_owned();
        let (_table, _attnum) = (c.i32()?, c.i16()?);
        let type_oid = c.i32()? as u32;
        let (_typlen, _typmod) = (c.i16()?, c.i32()?);
        let format = c.i16()?;
        columns.push(Column { name, type_oid, format });
    }
    Ok(columns)
}

/// A RowDescription with masked column names (an alias can be built from data, e.g. by
/// dynamic SQL), or `None` when no name changed.
pub fn mask_row_description(masker: &Masker, body: &[u8], found: &mut Findings) -> Result<Option<Bytes>, Malformed> {
    let mut c = Cursor::new(body, "RowDescription");
    let n = c.i16()?;
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_i16(n);
    let mut changed = false;
    for _ in 0..n {
        let name = c.cbytes()?;
        match masker.mask(name, None, &mut found.tally) {
            Some(masked) => {
                changed = true;
                out.put_slice(&masked);
            }
            None => out.put_slice(name),
        }
        out.put_u8(0);
        out.put_slice(c.take(18)?);
    }
    Ok(changed.then(|| framed(b'T', &out)))
}

/// The format of result column `i`: the Bind's codes when the command came by the extended
/// protocol, else what the RowDescription said.
fn format_of(i: usize, bind_formats: Option<&[i16]>, column: Option<&Column>) -> i16 {
    match bind_formats {
        Some([]) => 0,
        Some([all]) => *all,
        Some(each) => each.get(i).copied().unwrap_or(0),
        None => column.map_or(0, |c| c.format),
    }
}

/// A DataRow with every masked value replaced, or `None` when nothing changed.
///
/// `columns` is `None` when the row's description is unknown (an Execute of a statement that
/// was never described): column rules then cannot tell columns apart, so every value is
/// treated as matching them (fail closed).
pub fn mask_data_row(
    masker: &Masker,
    body: &[u8],
    columns: Option<&[Column]>,
    bind_formats: Option<&[i16]>,
    found: &mut Findings,
) -> Result<Option<Bytes>, Malformed> {
    let mut c = Cursor::new(body, "DataRow");
    let n = c.i16()?;
    let mut values: Vec<Value> = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut changed = false;
    for i in 0..usize::try_from(n).map_err(|_| Malformed("DataRow"))? {
        let len = c.i32()?;
        if len < 0 {
            values.push(Value::Keep(None));
            continue;
        }
        let raw = c.take(len as usize)?;
        let column = columns.and_then(|cols| cols.get(i));
        let name = column.map(|col| col.name.as_str());
        let binary = format_of(i, bind_formats, column) != 0;
        let by_rule = match (columns, column) {
            (Some(_), Some(col)) => masker.masks_column(&col.name, type_name(col.type_oid)),
            _ => masker.has_column_rules(),
        };
        let value = if by_rule {
            found.tally.add(COLUMN_DETECTOR, Some(name.unwrap_or("?")), 1);
            if binary {
                found.nulled += 1;
                Value::Null
            } else {
                Value::New(COLUMN_MARKER.to_vec())
            }
        } else if binary && is_text_like(column.map_or(0, |c| c.type_oid)) {
            // Text types are sent as the same bytes in binary format: the marker fits.
            match masker.mask(raw, name, &mut found.tally) {
                Some(masked) => Value::New(masked),
                None => Value::Keep(Some(raw)),
            }
        } else if binary && column.is_some_and(|c| c.type_oid == JSONB) && raw.first() == Some(&1) {
            match masker.mask(&raw[1..], name, &mut found.tally) {
                Some(masked) => Value::New([&[1u8][..], &masked].concat()),
                None => Value::Keep(Some(raw)),
            }
        } else if binary {
            match binary_text(column.map_or(0, |c| c.type_oid), raw) {
                Some(text) if masker.mask(&text, name, &mut found.tally).is_some() => {
                    found.nulled += 1;
                    Value::Null
                }
                _ => Value::Keep(Some(raw)),
            }
        } else {
            match masker.mask(raw, name, &mut found.tally) {
                Some(masked) => Value::New(masked),
                None => Value::Keep(Some(raw)),
            }
        };
        changed |= !matches!(value, Value::Keep(_));
        values.push(value);
    }
    if !changed {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(body.len() + 32);
    out.put_i16(n);
    for value in &values {
        match value {
            Value::Keep(None) | Value::Null => out.put_i32(-1),
            Value::Keep(Some(bytes)) => {
                out.put_i32(bytes.len() as i32);
                out.put_slice(bytes);
            }
            Value::New(bytes) => {
                out.put_i32(bytes.len() as i32);
                out.put_slice(bytes);
            }
        }
    }
    Ok(Some(framed(b'D', &out)))
}

enum Value<'a> {
    Keep(Option<&'a [u8]>),
    New(Vec<u8>),
    Null,
}

const JSONB: u32 = 3802;

/// Types whose binary format is their text: text, varchar, bpchar, name, json, xml, unknown.
fn is_text_like(type_oid: u32) -> bool {
    matches!(type_oid, 25 | 1043 | 1042 | 19 | 114 | 142 | 705)
}

/// The canonical type name of a built-in type OID, for column rules with a type.
pub fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        25 => "text",
        1043 => "varchar",
        1042 => "bpchar",
        19 => "name",
        114 => "json",
        3802 => "jsonb",
        142 => "xml",
        17 => "bytea",
        21 => "int2",
        23 => "int4",
        20 => "int8",
        1700 => "numeric",
        2950 => "uuid",
        869 => "inet",
        1082 => "date",
        1114 => "timestamp",
        1184 => "timestamptz",
        _ => return None,
    })
}

/// Why a COPY OUT message could not be masked.
#[derive(Debug, thiserror::Error)]
#[error("binary COPY data holds a value to mask but is not split into whole rows")]
pub struct Unmaskable;

/// A CopyData of COPY TO STDOUT with findings masked. Text and CSV rows are masked as text;
/// binary rows are parsed into fields and fields with findings become NULL.
pub fn mask_copy_data(
    masker: &Masker,
    body: &[u8],
    binary: bool,
    found: &mut Findings,
) -> Result<Option<Bytes>, Unmaskable> {
    if !binary {
        return Ok(masker.mask(body, None, &mut found.tally).map(|masked| framed(b'd', &masked)));
    }
    match mask_binary_copy(masker, body, found) {
        Some(result) => Ok(result),
        None if masker.finds(body) => Err(Unmaskable),
        None => Ok(None),
    }
}

/// `None` when the message is not whole binary-COPY rows (with the file header on the first).
fn mask_binary_copy(masker: &Masker, body: &[u8], found: &mut Findings) -> Option<Option<Bytes>> {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let mut c = Cursor::new(body, "CopyData");
    let mut out = BytesMut::with_capacity(body.len());
    if body.starts_with(SIGNATURE) {
        out.put_slice(c.take(SIGNATURE.len() + 4).ok()?);
        let extension = c.i32().ok()?;
        out.put_i32(extension);
        out.put_slice(c.take(usize::try_from(extension).ok()?).ok()?);
    }
    let mut changed = false;
    while !c.is_empty() {
        let fields = c.i16().ok()?;
        out.put_i16(fields);
        for _ in 0..fields.max(0) {
            let len = c.i32().ok()?;
            if len < 0 {
                out.put_i32(-1);
                continue;
            }
            let raw = c.take(len as usize).ok()?;
            if masker.mask(raw, None, &mut found.tally).is_some() {
                found.nulled += 1;
                changed = true;
                out.put_i32(-1);
            } else {
                out.put_i32(len);
                out.put_slice(raw);
            }
        }
    }
    Some(changed.then(|| framed(b'd', &out)))
}

/// An ErrorResponse or NoticeResponse with masked fields: message, detail, hint, context and
/// the rest (they often echo values, e.g. a failed cast's input). Severity, code and positions
/// are kept.
pub fn mask_fields(masker: &Masker, tag: u8, body: &[u8], found: &mut Findings) -> Result<Option<Bytes>, Malformed> {
    let mut c = Cursor::new(body, "ErrorResponse");
    let mut out = BytesMut::with_capacity(body.len() + 16);
    let mut changed = false;
    loop {
        let field = c.u8()?;
        out.put_u8(field);
        if field == 0 {
            break;
        }
        let value = c.cbytes()?;
        let kept = matches!(field, b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R');
        let masked = if kept { None } else { masker.mask(value, None, &mut found.tally) };
        match masked {
            Some(masked) => {
                changed = true;
                out.put_slice(&masked);
            }
            _ => out.put_slice(value),
        }
        out.put_u8(0);
    }
    Ok(changed.then(|| framed(tag, &out)))
}

/// A ParameterStatus with its value masked (a session variable can be set from data:
/// `set_config('application_name', secret, false)`).
pub fn mask_parameter_status(masker: &Masker, body: &[u8], found: &mut Findings) -> Result<Option<Bytes>, Malformed> {
    let mut c = Cursor::new(body, "ParameterStatus");
    let name = c.cbytes()?;
    let value = c.cbytes()?;
    let masked_name = masker.mask(name, None, &mut found.tally);
    let masked_value = masker.mask(value, None, &mut found.tally);
    if masked_name.is_none() && masked_value.is_none() {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_slice(masked_name.as_deref().unwrap_or(name));
    out.put_u8(0);
    out.put_slice(masked_value.as_deref().unwrap_or(value));
    out.put_u8(0);
    Ok(Some(framed(b'S', &out)))
}

/// A NotificationResponse with its channel and payload masked.
pub fn mask_notification(masker: &Masker, body: &[u8], found: &mut Findings) -> Result<Option<Bytes>, Malformed> {
    let mut c = Cursor::new(body, "NotificationResponse");
    let pid = c.i32()?;
    let channel = c.cbytes()?;
    let payload = c.cbytes()?;
    let masked_channel = masker.mask(channel, None, &mut found.tally);
    let masked_payload = masker.mask(payload, None, &mut found.tally);
    if masked_channel.is_none() && masked_payload.is_none() {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_i32(pid);
    out.put_slice(masked_channel.as_deref().unwrap_or(channel));
    out.put_u8(0);
    out.put_slice(masked_payload.as_deref().unwrap_or(payload));
    out.put_u8(0);
    Ok(Some(framed(b'A', &out)))
}

#[cfg(test)]
mod tests;
