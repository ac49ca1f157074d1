use super::*;

#[test]
fn tag_rows_reads_the_count() {
    for (tag, rows) in [
        ("SELECT 3", 3),
        ("INSERT 0 5", 5),
        ("UPDATE 12", 12),
        ("COPY 7", 7),
        ("CREATE TABLE", 0),
        ("BEGIN", 0),
        ("DELETE x", 0),
    ] {
        assert_eq!(tag_rows(tag), rows, "{tag}");
    }
}

#[test]
fn bind_renders_text_null_and_binary_parameters() {
    let mut body = Vec::new();
    body.extend_from_slice(b"p1\0s1\0");
    body.extend_from_slice(&3i16.to_be_bytes());
    for f in [0i16, 0, 1] {
        body.extend_from_slice(&f.to_be_bytes());
    }
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(&2i32.to_be_bytes());
    body.extend_from_slice(b"42");
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&2i32.to_be_bytes());
    body.extend_from_slice(&[0xde, 0xad]);
    body.extend_from_slice(&0i16.to_be_bytes());
    let bind = bind_message(&body).unwrap();
    assert_eq!((bind.portal, bind.statement), ("p1", "s1"));
    assert_eq!(bind.params, vec![Some("42".into()), None, Some("\\xdead".into())]);
    assert!(bind.result_formats.is_empty());
}

#[test]
fn truncated_bind_is_malformed() {
    let body = b"p\0s\0\0\x01\0\0\0\x01\0\0\0\x09ab";
    assert_eq!(bind_message(body).err(), Some(Malformed("Bind")));
}

#[test]
fn error_response_round_trips() {
    let frame = error_response(Severity::Fatal, "28P01", "tollgate: token expired 3 s ago");
    assert_eq!(frame[0], b'E');
    let (code, message) = error_fields(&frame[5..]).unwrap();
    assert_eq!(code, "28P01");
    assert_eq!(message, "tollgate: token expired 3 s ago");
}
