use super::*;
use tollgate_shared::policy::{ColumnRule, Masking};

fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for value in values {
        match value {
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v);
            }
            None => body.put_i32(-1),
        }
    }
    body.to_vec()
}

fn values(frame: &Bytes) -> Vec<Option<Vec<u8>>> {
    let mut c = Cursor::new(&frame[5..], "DataRow");
    let n = c.i16().unwrap();
    (0..n)
        .map(|_| {
            let len = c.i32().unwrap();
            (len >= 0).then(|| c.take(len as usize).unwrap().to_vec())
        })
        .collect()
}

fn col(name: &str, type_oid: u32) -> Column {
    Column { name: name.into(), type_oid, format: 0 }
}

#[test]
fn text_values_are_masked_in_place_and_lengths_recomputed() {
    let masker = Masker::strict();
    let body = data_row(&[Some(b"42"), Some(b"alice@example.com"), None]);
    let columns = [col("id", 23), col("contact", 25), col("note", 25)];
    let mut found = Findings::default();
    let out = mask_data_row(&masker, &body, Some(&columns), None, &mut found).unwrap().unwrap();
    assert_eq!(values(&out), vec![Some(b"42".to_vec()), Some(b"[masked:email]".to_vec()), None]);
    assert_eq!(u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize, out.len() - 1);
    let counts = found.tally.into_counts();
    assert_eq!(
        (counts[0].detector.as_str(), counts[0].column.as_deref(), counts[0].count),
        ("email", Some("contact"), 1)
    );
}

#[test]
fn untouched_rows_are_not_rebuilt() {
    let masker = Masker::strict();
    let body = data_row(&[Some(b"42"), Some(b"shipped")]);
    let mut found = Findings::default();
    assert!(mask_data_row(&masker, &body, None, None, &mut found).unwrap().is_none());
}

#[test]
fn binary_values_with_findings_become_null() {
    let masker = Masker::strict();
    let card = 4111111111111111i64.to_be_bytes();
    let order = 4111111111111112i64.to_be_bytes();
    let body = data_row(&[Some(&card), Some(&order), Some(b"bob@example.com")]);
    let columns = [col("card", 20), col("order_no", 20), col("mail", 25)];
    let mut found = Findings::default();
    let out = mask_data_row(&masker, &body, Some(&columns), Some(&[1]), &mut found).unwrap().unwrap();
    assert_eq!(values(&out), vec![None, Some(order.to_vec()), Some(b"[masked:email]".to_vec())]);
    assert_eq!(found.nulled, 1, "text in binary format carries the marker; a bigint cannot");
}

#[test]
fn column_rules_mask_by_name_and_fail_closed_without_a_description() {
    let policy = Masking { columns: vec![ColumnRule::Name("*password*".into())], ..Default::default() };
    let masker = Masker::new(&policy).unwrap();
    let body = data_row(&[Some(b"1"), Some(b"hunter2")]);
    let columns = [col("id", 23), col("password_hash", 25)];
    let mut found = Findings::default();
    let out = mask_data_row(&masker, &body, Some(&columns), None, &mut found).unwrap().unwrap();
    assert_eq!(values(&out), vec![Some(b"1".to_vec()), Some(COLUMN_MARKER.to_vec())]);
    let unknown = mask_data_row(&masker, &body, None, Some(&[]), &mut found).unwrap().unwrap();
    assert_eq!(values(&unknown), vec![Some(COLUMN_MARKER.to_vec()), Some(COLUMN_MARKER.to_vec())]);
}

#[test]
fn error_fields_are_masked_but_codes_kept() {
    let masker = Masker::strict();
    let mut body = BytesMut::new();
    for (field, value) in [
        (b'S', "ERROR"),
        (b'C', "22P02"),
        (b'M', "invalid input syntax for type integer: \"123-45-6789\""),
        (b'W', "PL/pgSQL function leak() line 3 at RAISE: card 4111111111111111"),
    ] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut found = Findings::default();
    let out = mask_fields(&masker, b'E', &body, &mut found).unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("123-45-6789") && !text.contains("4111111111111111"), "{text}");
    assert!(text.contains("22P02") && text.contains("[masked:ssn]") && text.contains("[masked:card]"));
    assert_eq!(out[0], b'E');
}

#[test]
fn notifications_are_masked() {
    let masker = Masker::strict();
    let mut body = BytesMut::new();
    body.put_i32(77);
    body.put_slice(b"orders\0new customer carol@example.com\0");
    let mut found = Findings::default();
    let out = mask_notification(&masker, &body, &mut found).unwrap().unwrap();
    assert_eq!(&out[5..9], &77i32.to_be_bytes());
    assert_eq!(&out[9..], b"orders\0new customer [masked:email]\0");
}

#[test]
fn copy_rows_are_masked_text_and_binary() {
    let masker = Masker::strict();
    let mut found = Findings::default();
    let out = mask_copy_data(&masker, b"1\tdave@example.com\t123-45-6789\n", false, &mut found).unwrap().unwrap();
    assert_eq!(&out[5..], b"1\t[masked:email]\t[masked:ssn]\n");

    let mut binary = BytesMut::new();
    binary.put_slice(b"PGCOPY\n\xff\r\n\0");
    binary.put_i32(0);
    binary.put_i32(0);
    binary.put_i16(2);
    binary.put_i32(4);
    binary.put_i32(7);
    binary.put_i32(15);
    binary.put_slice(b"eve@example.com");
    let out = mask_copy_data(&masker, &binary, true, &mut found).unwrap().unwrap();
    assert!(out.ends_with(&[0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff]), "{out:?}");
    assert!(
        mask_copy_data(&masker, b"\0\x02\0\0\0\x1eeve@example.com", true, &mut found).is_err(),
        "split rows fail closed"
    );
}

#[test]
fn numeric_digits_are_readable_to_detectors() {
    // 4111111111111111 in base-10000 groups: 4111 1111 1111 1111, weight 3.
    let mut raw = BytesMut::new();
    for v in [4i16, 3, 0, 0, 4111, 1111, 1111, 1111] {
        raw.put_i16(v);
    }
    assert_eq!(binary_text(1700, &raw).unwrap(), b"4111111111111111");
    let mut small = BytesMut::new();
    for v in [2i16, 0, 0, 2, 19, 9900] {
        small.put_i16(v);
    }
    assert_eq!(binary_text(1700, &small).unwrap(), b"19.9900");
}

#[test]
fn row_description_names_are_masked() {
    let masker = Masker::strict();
    let mut body = BytesMut::new();
    body.put_i16(1);
    body.put_slice(b"frank@example.com\0");
    body.put_slice(&[0u8; 18]);
    let mut found = Findings::default();
    let out = mask_row_description(&masker, &body, &mut found).unwrap().unwrap();
    assert_eq!(row_description(&out[5..]).unwrap()[0].name, "[masked:email]");
}
