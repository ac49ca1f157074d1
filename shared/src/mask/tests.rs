use super::*;
use crate::policy::{ColumnRule, CustomDetector, TypedColumnRule};

fn masked(masker: &Masker, value: &str) -> String {
    let mut tally = Tally::default();
    masker.mask_str(value, None, &mut tally).into_owned()
}

fn all() -> Arc<Masker> {
    Masker::strict()
}

/// Each value holds a secret that must disappear, and the detector that must report it.
#[test]
fn detectors_find_what_they_are_for() {
    let cases: &[(&str, &str, &str)] = &[
        ("mail alice.smith+ci@example.co.uk now", "alice.smith+ci@example.co.uk", "email"),
        ("ALICE@EXAMPLE.COM", "ALICE@EXAMPLE.COM", "email"),
        ("card 4111 1111 1111 1111", "4111 1111 1111 1111", "card"),
        ("4111-1111-1111-1111", "4111-1111-1111-1111", "card"),
        ("x5500000000000004y", "5500000000000004", "card"),
        ("amex 378282246310005.", "378282246310005", "card"),
        ("iban DE89 3704 0044 0532 0130 00 paid", "DE89 3704 0044 0532 0130 00", "iban"),
        ("gb82west12345698765432", "gb82west12345698765432", "iban"),
        ("ssn 123-45-6789", "123-45-6789", "ssn"),
        ("Alice123-45-6789x", "123-45-6789", "ssn"),
        ("call +1 415 555 0100", "+1 415 555 0100", "phone"),
        ("(415) 555-0100", "(415) 555-0100", "phone"),
        ("tel:+44-20-7946-0958", "+44-20-7946-0958", "phone"),
        (
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaS1ib3QifQ.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaS1ib3QifQ.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "jwt",
        ),
        ("key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "aws_key"),
        ("AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "gcp_key"),
        ("ghp_1234567890abcdefghijklmnopqrstuvwxyz", "ghp_1234567890abcdefghijklmnopqrstuvwxyz", "github_token"),
        ("xoxb-123456789012-abcdefghijkl", "xoxb-123456789012-abcdefghijkl", "slack_token"),
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe_key"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
            "MIIEpAIBAAKCAQEA",
            "private_key",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
            "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
            "private_key",
        ),
        ("db_password=hunter2;", "hunter2", "password"),
        (r#"{"api_key": "s3cr3t-value"}"#, "s3cr3t-value", "password"),
        ("ALTER ROLE app PASSWORD 'it''s-secret'", "it''s-secret", "password"),
        ("postgres://app:Sup3rS3cret@db:5432/prod", "Sup3rS3cret", "connection_string"),
        ("token Zx9Qw2Er7Ty1Ui8Op3As6Df4Gh5Jk0Lz", "Zx9Qw2Er7Ty1Ui8Op3As6Df4Gh5Jk0Lz", "high_entropy"),
        ("MTIzLTQ1LTY3ODk=", "MTIzLTQ1LTY3ODk=", "encoded"),
        ("\\x3132332d34352d36373839", "3132332d34352d36373839", "encoded"),
    ];
    let masker = all();
    for (value, secret, detector) in cases {
        let mut tally = Tally::default();
        let out = masker.mask_str(value, Some("c"), &mut tally).into_owned();
        assert!(!out.contains(secret), "{detector}: {value:?} → {out:?}");
        let counts = tally.into_counts();
        assert!(counts.iter().any(|c| c.detector == *detector), "{value:?}: expected {detector}, tallied {counts:?}");
        assert!(counts.iter().all(|c| c.column.as_deref() == Some("c")));
    }
}

/// Ordinary values an agent reads every day pass untouched.
#[test]
fn ordinary_values_pass() {
    let values = [
        "ORD-2026-000123",
        "order 4111111111111112 rejected", // fails Luhn
        "1234567890123456789012345",       // too long for a card
        "2026-11-26 06:26:58.123456+00",
        "2026-11-26T06:26:58Z",
        "0198d0a2-7c3e-7b51-9a64-3f1e2d4c5b6a",
        "19.99",
        "-1234.5678",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", // sha256, hex
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",                         // sha1, hex
        "8bf3168e4d387e1f2c3b",
        "The quick brown fox jumps over the lazy dog",
        "internationalization",
        "AbstractSingletonProxyFactoryBean",
        "192.168.100.200",
        "000-00-0000",
        "666-12-3456",
        "v1.2.3-rc.4",
        "SELECT id, total FROM orders WHERE id = $1",
        "password_changed_at",
        "{\"id\": 42, \"status\": \"shipped\", \"total\": 129.5}",
        "/usr/lib/postgresql/15/bin/postgres",
        "https://example.com/orders/42?page=2",
        "ACME Corporation GmbH",
    ];
    let masker = all();
    for value in values {
        assert_eq!(masked(&masker, value), value, "false positive");
    }
}

/// Random tokens of the lengths keys come in are found; the check is statistical, so the
/// bar is 99%, with a fixed generator so the test is repeatable.
#[test]
fn random_tokens_are_high_entropy() {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for len in [24usize, 32, 40, 64] {
        let found = (0..1000)
            .filter(|_| {
                let token: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
                checks::opaque_token(&token)
            })
            .count();
        assert!(found >= 990, "length {len}: {found}/1000 found");
    }
}

#[test]
fn checks_validate() {
    assert!(checks::luhn(b"4111111111111111"));
    assert!(!checks::luhn(b"4111111111111112"));
    assert!(!checks::luhn(b"0000000000000000"), "all one digit is a placeholder, not a card");
    assert_eq!(checks::iban(b"DE89370400440532013000"), Some(22));
    assert_eq!(checks::iban(b"DE89370400440532013000 AB"), Some(22));
    assert_eq!(checks::iban(b"DE89 3704 0044 0532 0130 00"), Some(27));
    assert_eq!(checks::iban(b"DE893704004405320130001"), None, "longer than a German IBAN");
    assert_eq!(checks::iban(b"DE89370400440532013001"), None);
    assert!(checks::ssn(b"123-45-6789"));
    assert!(!checks::ssn(b"900-45-6789"));
    assert!(!checks::ssn(b"123-00-6789"));
    assert_eq!(checks::decode(b"MTIzLTQ1LTY3ODk=").as_deref(), Some("123-45-6789"));
    assert_eq!(checks::decode(b"\\x3132332d34352d36373839").as_deref(), Some("123-45-6789"));
    assert_eq!(checks::decode(b"AAECAwQFBgcICQoLDA0ODw=="), None, "binary is not text");
}

#[test]
fn numbers_that_pass_luhn_are_cards_only_with_an_issuer_prefix_and_a_card_shape() {
    let masker = Masker::new(&Masking::default()).unwrap();
    // Each of these passes Luhn.
    assert_eq!(masked(&masker, "id 123456789012347"), "id 123456789012347", "no issuer starts with 1");
    assert_eq!(
        masked(&masker, "ansible-tmp-1796238392.4283621-14427-1442712345678902"),
        "ansible-tmp-1796238392.4283621-14427-1442712345678902"
    );
    assert_eq!(masked(&masker, "4111-111111-111111"), "4111-111111-111111", "not how cards are grouped");
    assert_eq!(masked(&masker, "amex 378282246310005"), "amex [masked:card]");
    assert_eq!(masked(&masker, "amex 3782 822463 10005"), "amex [masked:card]");
    assert_eq!(masked(&masker, "3782822463100052"), "3782822463100052", "American Express numbers have 15 digits");
    assert_eq!(masked(&masker, "411111111111111100"), "411111111111111100", "Visa numbers have 13, 16 or 19 digits");
    for card in ["4111111111111111", "5500000000000004", "6011111111111117", "3530111333300000", "30569309025904"] {
        assert_eq!(masked(&masker, card), "[masked:card]", "{card}");
    }
}

#[test]
fn partial_masking_keeps_the_last_four() {
    let policy = Masking { partial: vec!["card".into()], ..Default::default() };
    let masker = Masker::new(&policy).unwrap();
    assert_eq!(masked(&masker, "card 4111 1111 1111 1234"), "card 4111 1111 1111 1234", "fails Luhn: untouched");
    assert_eq!(masked(&masker, "card 4111111111111111"), "card ****1111");
    assert_eq!(masked(&masker, "a@example.com"), "[masked:email]");
}

#[test]
fn allow_list_and_custom_detectors() {
    let policy = Masking {
        custom: vec![CustomDetector { name: "order_secret".into(), pattern: r"OS-(?P<v>[0-9]{6})".into() }],
        allow_values: vec!["support@acme.example".into()],
        ..Default::default()
    };
    let masker = Masker::new(&policy).unwrap();
    assert_eq!(masked(&masker, "write to support@acme.example"), "write to support@acme.example");
    assert_eq!(masked(&masker, "bob@acme.example"), "[masked:email]");
    assert_eq!(masked(&masker, "ref OS-123456"), "ref OS-[masked:order_secret]");
}

#[test]
fn detectors_can_be_chosen() {
    let policy = Masking { detectors: Some(vec!["email".into()]), ..Default::default() };
    let masker = Masker::new(&policy).unwrap();
    assert_eq!(masked(&masker, "123-45-6789 a@b.example"), "123-45-6789 [masked:email]");
    let none = Masker::new(&Masking { detectors: Some(vec![]), ..Default::default() }).unwrap();
    assert_eq!(masked(&none, "a@b.example"), "a@b.example");
}

#[test]
fn column_rules_match_names_and_types() {
    let policy = Masking {
        columns: vec![
            ColumnRule::Name("*password*".into()),
            ColumnRule::Typed(TypedColumnRule { name: "*".into(), type_name: Some("bytea".into()) }),
        ],
        ..Default::default()
    };
    let masker = Masker::new(&policy).unwrap();
    assert!(masker.masks_column("Password_Hash", Some("text")));
    assert!(masker.masks_column("blob", Some("bytea")));
    assert!(!masker.masks_column("blob", Some("text")));
    assert!(!masker.masks_column("email", None));
}

#[test]
fn bad_policies_name_the_field() {
    let policy = Masking {
        detectors: Some(vec!["emial".into()]),
        partial: vec!["nope".into()],
        columns: vec![ColumnRule::Typed(TypedColumnRule { name: "x".into(), type_name: Some("blob".into()) })],
        custom: vec![
            CustomDetector { name: "email".into(), pattern: "x".into() },
            CustomDetector { name: "empty".into(), pattern: "a*".into() },
            CustomDetector { name: "broken".into(), pattern: "(".into() },
        ],
        ..Default::default()
    };
    let problems = Masker::new(&policy).err().unwrap();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["custom[0].name", "detectors[0]", "partial[0]", "columns[0].type", "custom[1].pattern", "custom[2].pattern"]
    );
}

#[test]
fn tally_is_bounded() {
    let mut tally = Tally::default();
    for i in 0..200 {
        tally.add("email", Some(&format!("c{i}")), 1);
    }
    let counts = tally.into_counts();
    assert!(counts.len() <= MAX_ENTRIES + 1);
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 200);
}

#[test]
fn cards_are_found_inside_runs_of_digit_groups() {
    let masker = all();
    assert_eq!(masked(&masker, "219-09-9999 4111111111111111"), "[masked:ssn] [masked:card]");
    assert_eq!(
        masked(&masker, "4111 1111 1111 1111 5500 0000 0000 0004"),
        "[masked:card] [masked:card]",
        "two cards in one run"
    );
    assert_eq!(masked(&masker, "41111111111111110"), "41111111111111110", "part of a longer number");
}

#[test]
#[ignore]
fn profile_detectors() {
    let sample: Vec<String> = (0..2000)
        .map(|i| format!("user{i}@example.com 2026-01-0{} 12:00:00+00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 customer asked to deliver after 5pm {}", i % 9, i * 7919))
        .collect();
    for b in detectors::BUILTINS {
        let re = Regex::new(b.pattern).unwrap();
        let t = std::time::Instant::now();
        let mut n = 0;
        for s in &sample {
            n += re.find_iter(s.as_bytes()).count();
        }
        println!(
            "{:20} {:>8.1} µs/value  ({n} matches)",
            b.name,
            t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64
        );
    }
    let masker = all();
    for v in [
        "0198d0a2-7c3e-7b51-9a64-3f1e2d4c5b6a",
        "2026-03-17 13:42:05.123456+00",
        "Chloé Dubois",
        "user42@example.com",
        "1234.56",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "customer asked to deliver after 5pm card 4111 1111 1111 1111",
        "address verified by phone contact: +44 20 7946 0958",
        "gift wrap requested, no invoice in the box password=Winter2026!",
        "shipped",
        "123456",
    ] {
        let t = std::time::Instant::now();
        for _ in 0..2000 {
            let _ = masker.mask(v.as_bytes(), None, &mut Tally::default());
        }
        println!("{v:60} {:>8.2} µs", t.elapsed().as_secs_f64() * 1e6 / 2000.0);
    }
    let t = std::time::Instant::now();
    for s in &sample {
        let _ = masker.mask(s.as_bytes(), None, &mut Tally::default());
    }
    println!("mask {:>8.1} µs/value", t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64);
}

/// A small deterministic generator for the property tests below.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn findings(masker: &Masker, text: &[u8]) -> Vec<(Range<usize>, usize)> {
    let mut spans = Vec::new();
    masker.scan(text, true, &mut spans);
    spans.into_iter().map(|s| (s.range, s.detector)).collect()
}

/// Every gate is a necessary condition: each detector finds exactly what it finds with every
/// gate open, on values drawn from the characters the patterns care about and on the known
/// secrets with random edits (near misses of every shape).
#[test]
fn gates_never_hide_a_finding() {
    let gated = Masker::new(&Masking::default()).expect("built-in detectors");
    let open = Masker::new(&Masking::default()).expect("built-in detectors").without_gates();
    let seeds: &[&str] = &[
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "gb82west12345698765432",
        "NO93 8601 1117 947",
        "BE68 5390 0754 7034",
        "123-45-6789",
        "+1 415 555 0100",
        "(415) 555-0100",
        "+44-20-7946-0958",
        "415.555.0100",
        "Zx9Qw2Er7Ty1Ui8Op3As6Df4Gh5Jk0Lz",
        "MTIzLTQ1LTY3ODk=",
        "\\x3132332d34352d36373839",
        "2026-11-26 12:34:56.123456+00",
        "0f3a9c2e-41d7-7b21-8c3e-9d2a4f6b8e01",
    ];
    let alphabet = b"0123456789012345678901234567890123456789 -.()+/_=@:aAbBdDeEgGkKxXzZ\\\n'";
    let mut rng = Xorshift(0x2545_F491_4F6C_DD1D);
    let mut differences = Vec::new();
    for round in 0..60_000 {
        let mut text: Vec<u8> = if round % 2 == 0 {
            (0..6 + rng.below(40)).map(|_| alphabet[rng.below(alphabet.len())]).collect()
        } else {
            seeds[rng.below(seeds.len())].as_bytes().to_vec()
        };
        for _ in 0..rng.below(4) {
            let at = rng.below(text.len() + 1);
            let byte = alphabet[rng.below(alphabet.len())];
            match rng.below(3) {
                0 => text.insert(at, byte),
                1 if at < text.len() => text[at] = byte,
                _ if at < text.len() => {
                    text.remove(at);
                }
                _ => {}
            }
        }
        let (with, without) = (findings(&gated, &text), findings(&open, &text));
        if with != without {
            differences.push((String::from_utf8_lossy(&text).into_owned(), with, without));
        }
    }
    assert!(
        differences.is_empty(),
        "{} values differ, e.g. {:?}",
        differences.len(),
        &differences[..differences.len().min(5)]
    );
}

/// The positive control for the property above: the generated values do reach the shaped
/// detectors, so an equal result is not two empty ones.
#[test]
fn shaped_detectors_fire_on_generated_near_misses() {
    let masker = Masker::new(&Masking::default()).expect("built-in detectors");
    for (value, detector) in [
        ("x 123 45 6789 y", "ssn"),
        ("(415) 555.0100", "phone"),
        ("+49 (30) 1234-5678", "phone"),
        ("ch93 0076 2011 6238 5295 7", "iban"),
        ("aB3dE5fG7hJ9kL1mN3pQ5rS7", "high_entropy"),
    ] {
        let found = findings(&masker, value.as_bytes());
        let names: Vec<&str> = found.iter().map(|(_, d)| &*masker.detectors[*d].name).collect();
        assert!(names.contains(&detector), "{value:?}: {names:?}");
    }
}

#[test]
fn iban_countries_are_sorted_for_lookup() {
    assert_eq!(checks::iban_length(*b"DE"), Some(22));
    assert_eq!(checks::iban_length(*b"XK"), Some(20));
    assert_eq!(checks::iban_length(*b"AD"), Some(24));
    assert_eq!(checks::iban_length(*b"US"), None);
}

/// Decoding everything, then asking whether it is text: what `checks::decode` must agree with
/// (it rejects binary from the first bytes).
fn decode_everything(candidate: &[u8]) -> Option<String> {
    use base64::Engine;
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes).ok().filter(|t| !t.chars().any(|c| c.is_control() && !c.is_whitespace()))
    };
    let hex_body = candidate.strip_prefix(b"\\x").unwrap_or(candidate);
    if let Some(found) = hex::decode(hex_body).ok().and_then(text) {
        return Some(found);
    }
    let compact: Vec<u8> = candidate.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let engines = [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::STANDARD_NO_PAD];
    engines.iter().find_map(|engine| engine.decode(&compact).ok()).and_then(text)
}

#[test]
fn decoding_ahead_rejects_only_binary() {
    use base64::Engine;
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let texts = ["123-45-6789", "password=hunter2 and more", "été: 4111 1111 1111 1111", "plain words, nothing else"];
    let (mut agreed, mut found) = (0, 0);
    for round in 0..40_000 {
        let candidate: Vec<u8> = match round % 4 {
            0 => {
                let mut bytes: Vec<u8> = texts[rng.below(texts.len())].bytes().collect();
                if rng.below(2) == 0 {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.below(256) as u8;
                }
                base64::engine::general_purpose::STANDARD.encode(&bytes).into_bytes()
            }
            1 => {
                let text = texts[rng.below(texts.len())];
                let cut = rng.below(text.len() + 1);
                hex::encode(&text.as_bytes()[..cut]).into_bytes()
            }
            2 => (0..12 + rng.below(60)).map(|_| b"0123456789abcdef"[rng.below(16)]).collect(),
            _ => (0..12 + rng.below(60))
                .map(|_| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/\n"[rng.below(65)])
                .collect(),
        };
        let expected = decode_everything(&candidate);
        found += usize::from(expected.is_some());
        assert_eq!(checks::decode(&candidate), expected, "{:?}", String::from_utf8_lossy(&candidate));
        agreed += 1;
    }
    assert_eq!(agreed, 40_000);
    assert!(found > 10_000, "the generated candidates hold text often enough to test both ways: {found}");
}

#[test]
fn transpose8_moves_bit_k_of_byte_i_to_bit_i_of_byte_k() {
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..1000 {
        let x = (0..8).fold(0u64, |acc, _| (acc << 8) | rng.below(256) as u64);
        let t = super::transpose8(x);
        for i in 0..8 {
            for k in 0..8 {
                assert_eq!((x >> (8 * i + k)) & 1, (t >> (8 * k + i)) & 1, "{x:#018x}: byte {i} bit {k}");
            }
        }
    }
}

#[test]
fn runs_of_a_mask_cover_its_bits() {
    assert_eq!(super::runs(u64::MAX).collect::<Vec<_>>(), vec![(0, 64)]);
    assert_eq!(super::runs(0).count(), 0);
    assert_eq!(super::runs(0b1101_1000_0001).collect::<Vec<_>>(), vec![(0, 1), (7, 2), (10, 2)]);
    assert_eq!(super::runs(1 << 63).collect::<Vec<_>>(), vec![(63, 1)]);
    assert_eq!(super::run_mask(7, 2), 0b1_1000_0000);
    assert_eq!(super::run_mask(0, 64), u64::MAX);
}

/// The bit-mask shape pass (values of up to 64 bytes) measures exactly what the byte-by-byte
/// one does: on values drawn from the bytes the shapes care about, of every length up to 64,
/// and on the known secrets with edits.
#[test]
fn bit_masks_measure_what_bytes_measure() {
    let alphabet = "0123456789012345678901234567890123456789  --.()+/_=\r\n\t:aAbBdDeEgGkKxXzZ\u{e9}'".as_bytes();
    let mut rng = Xorshift(0xD1B5_4A32_D192_ED03);
    // Digits and the separators of digit groups only, so SSN and phone shapes come up often.
    let groups = b"0123456789 -().+a";
    let mut opened = [0usize; 6];
    for round in 0..200_000 {
        let len = round % 65;
        let alphabet = if round % 3 == 0 { &groups[..] } else { alphabet };
        let mut text: Vec<u8> = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        if round % 5 == 1 {
            // An IBAN (with or without its spaces) somewhere in the value, often edited.
            let iban: &[u8] = if round % 2 == 0 { b"DE89 3704 0044 0532 0130 00" } else { b"gb82west12345698765432" };
            let at = rng.below(text.len().saturating_sub(iban.len()) + 1);
            text.splice(at..(at + iban.len()).min(text.len()), iban.iter().copied());
            text.truncate(64);
            if rng.below(2) == 0 {
                let edit = rng.below(text.len());
                text[edit] = alphabet[rng.below(alphabet.len())];
            }
        }
        let (bits, bytes) = (super::Shape::of_bits(&text), super::Shape::of_bytes(&text));
        assert_eq!(bits, bytes, "{:?}", String::from_utf8_lossy(&text));
        for (count, open) in opened.iter_mut().zip([
            bytes.digit_run >= 13,
            bytes.phone,
            bytes.ssn,
            bytes.iban,
            bytes.mixed_token,
            bytes.base64_run >= 12,
        ]) {
            *count += usize::from(open);
        }
    }
    for text in [
        "4111 1111 1111 1111",
        "x 123 45 6789 y",
        "(415) 555.0100",
        "+49 (30) 1234-5678",
        "ch93 0076 2011 6238 5295 7",
        "aB3dE5fG7hJ9kL1mN3pQ5rS7",
        "MTIzLTQ1LTY3ODk=",
        "0f3a9c2e-41d7-7b21-8c3e-9d2a4f6b8e01",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(super::Shape::of_bits(text.as_bytes()), super::Shape::of_bytes(text.as_bytes()), "{text:?}");
    }
    // The positive control: the generated values open every shape many times.
    assert!(opened.iter().all(|&n| n > 100), "{opened:?}");
}

/// A value of hex digits and punctuation only is scanned for the literals spelled so (`ACCA`
/// of an AWS key), and still found.
#[test]
fn plain_values_are_scanned_for_the_literals_they_can_hold() {
    let masker = all();
    let words: Vec<&str> = masker.plain_literals.owner.iter().map(|&d| &*masker.detectors[d].name).collect();
    assert_eq!(words, ["aws_key", "connection_string"]);
    assert!(super::Shape::of(b"ACCA0123456789ABCDEF").plain);
    assert_eq!(masked(&masker, "ACCA0123456789ABCDEF"), "[masked:aws_key]");
    assert!(!super::Shape::of(b"AKIA0123456789ABCDEF").plain);
    assert_eq!(masked(&masker, "AKIA0123456789ABCDEF"), "[masked:aws_key]");
}
