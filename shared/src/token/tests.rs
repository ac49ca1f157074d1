//! A corpus of bad tokens, each refused for the right reason, and the good ones accepted.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

const ISS: &str = "https://issuer.test";

/// jsonwebtoken reads the system clock, so the tests do too.
/// One instant for the whole test run: tokens are made and verified at the same `now`, so a
/// second ticking between signing (slow in debug builds) and verifying changes no expected
/// figure (CI once saw `Expired(3601)` for a token made an hour stale).
fn now() -> u64 {
    static NOW: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())
}

/// An RSA key made by openssl for this test run: (private PEM, public PEM, JWK).
fn rsa_key(kid: &str, alg: &str) -> (Vec<u8>, Vec<u8>, Value) {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tollgate-rsa-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem"]);
    run(&["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
    let modulus = String::from_utf8(run(&["rsa", "-in", "key.pem", "-noout", "-modulus"])).unwrap();
    let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
    let jwk = json!({"kty": "RSA", "kid": kid, "alg": alg, "use": "sig", "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"});
    let private = std::fs::read(dir.join("key.pem")).unwrap();
    let public = std::fs::read(dir.join("pub.pem")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (private, public, jwk)
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "repo:acme/orders", "aud": "tollgate", "iat": now(), "nbf": now() - 10, "exp": now() + 600})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

fn sign_rs(private: &[u8], kid: &str, alg: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(private).unwrap()).unwrap()
}

fn sign_hs(secret: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn raw_token(header: &Value, claims: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

fn swap_part(token: &str, index: usize, replacement: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = replacement;
    parts.join(".")
}

#[test]
fn bad_token_corpus_is_refused_for_the_right_reason() {
    let (private, public, jwk) = rsa_key("k1", "RS256");
    let (other_private, _, _) = rsa_key("k2", "RS256");
    let (_, _, rs384_jwk) = rsa_key("k384", "RS384");
    let keys: JwkSet = serde_json::from_value(json!({"keys": [jwk, rs384_jwk]})).unwrap();
    let config = IssuerConfig::new(ISS, "tollgate");
    let good = sign_rs(&private, "k1", Algorithm::RS256, &claims());
    let verified = verify(&config, &keys, &good, now()).expect("the good token verifies");
    assert_eq!(verified.subject, "repo:acme/orders");

    let tampered_claims = URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("admin")).to_string());
    let mut sig = URL_SAFE_NO_PAD.decode(good.split('.').nth(2).unwrap()).unwrap();
    sig[0] ^= 0xff;
    let tampered_sig = swap_part(&good, 2, &URL_SAFE_NO_PAD.encode(&sig));
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": "k1"});

    use TokenError::*;
    let corpus: Vec<(&str, String, TokenError)> = vec![
        ("empty", String::new(), Missing),
        ("garbage", "not a token".into(), Malformed),
        ("four parts", format!("{good}.extra"), Malformed),
        (
            "header not JSON",
            format!("{}.{}", URL_SAFE_NO_PAD.encode("{nope"), good.split_once('.').unwrap().1),
            Malformed,
        ),
        ("alg none, no signature", raw_token(&none_header, &claims(), ""), DisallowedAlgorithm("none".into())),
        ("alg none, with signature", raw_token(&none_header, &claims(), "c2ln"), DisallowedAlgorithm("none".into())),
        (
            "HS256 signed with the RSA public key (key confusion)",
            sign_hs(&public, "k1", &claims()),
            DisallowedAlgorithm("HS256".into()),
        ),
        ("HS256 with an empty secret", sign_hs(b"", "k1", &claims()), DisallowedAlgorithm("HS256".into())),
        (
            "RS256 with a kid the issuer lacks",
            sign_rs(&private, "nope", Algorithm::RS256, &claims()),
            UnknownKey("nope".into()),
        ),
        (
            "signed by another key under a known kid",
            sign_rs(&other_private, "k1", Algorithm::RS256, &claims()),
            BadSignature,
        ),
        (
            "RS256 under a key declared RS384",
            sign_rs(&private, "k384", Algorithm::RS256, &claims()),
            DisallowedAlgorithm("RS256".into()),
        ),
        ("tampered payload", swap_part(&good, 1, &tampered_claims), BadSignature),
        ("tampered signature", tampered_sig, BadSignature),
        (
            "expired",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "exp", json!(now() - 3600))),
            Expired(3600),
        ),
        (
            "not yet valid",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "nbf", json!(now() + 900))),
            NotYetValid(900),
        ),
        (
            "wrong issuer",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "iss", json!("https://evil.test"))),
            WrongIssuer,
        ),
        (
            "wrong audience",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "aud", json!("other"))),
            WrongAudience,
        ),
        (
            "audience list without ours",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "aud", json!(["a", "b"]))),
            WrongAudience,
        ),
        (
            "missing exp",
            sign_rs(&private, "k1", Algorithm::RS256, &without(claims(), "exp")),
            MissingClaim("exp".into()),
        ),
        (
            "exp as a fraction",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "exp", json!(now() as f64 + 600.5))),
            BadTime("exp".into()),
        ),
        (
            "nbf as a string",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "nbf", json!("0"))),
            BadTime("nbf".into()),
        ),
        (
            "missing sub",
            sign_rs(&private, "k1", Algorithm::RS256, &without(claims(), "sub")),
            MissingClaim("sub".into()),
        ),
        (
            "empty sub",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "sub", json!(""))),
            MissingClaim("sub".into()),
        ),
        (
            "a crit header the verifier does not understand",
            {
                let header = json!({"alg": "RS256", "typ": "JWT", "kid": "k1", "crit": ["exp"], "exp": 1});
                let encoded = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(header.to_string()),
                    URL_SAFE_NO_PAD.encode(claims().to_string())
                );
                let key = EncodingKey::from_rsa_pem(&private).unwrap();
                let signature = jsonwebtoken::crypto::sign(encoded.as_bytes(), &key, Algorithm::RS256).unwrap();
                format!("{encoded}.{signature}")
            },
            CriticalHeader("[\"exp\"]".into()),
        ),
        (
            "no kid while the issuer publishes several keys",
            jsonwebtoken::encode(
                &Header::new(Algorithm::RS256),
                &claims(),
                &EncodingKey::from_rsa_pem(&private).unwrap(),
            )
            .unwrap(),
            MissingKeyId,
        ),
        (
            "issued an hour in the future",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "iat", json!(now() + 3600))),
            IssuedInFuture(3600),
        ),
        (
            "oversized",
            sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "pad", json!("x".repeat(9000)))),
            TooLarge { len: 0, max: 8192 },
        ),
    ];
    assert!(corpus.len() >= 15);
    for (name, token, expected) in corpus {
        let got = verify(&config, &keys, &token, now()).err().unwrap_or_else(|| panic!("{name}: accepted"));
        match (&got, &expected) {
            (TooLarge { max, .. }, TooLarge { max: want, .. }) => assert_eq!(max, want, "{name}"),
            _ => assert_eq!(got, expected, "{name}"),
        }
    }
}

#[test]
fn a_whole_number_of_seconds_written_as_a_float_is_accepted() {
    let (private, _, jwk) = rsa_key("k1", "RS256");
    let keys: JwkSet = serde_json::from_value(json!({"keys": [jwk]})).unwrap();
    let config = IssuerConfig::new(ISS, "tollgate");
    let exp = now() + 600;
    let token = sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "exp", json!(exp as f64)));
    assert_eq!(verify(&config, &keys, &token, now()).unwrap().expires_at, exp);
}

#[test]
fn leeway_tolerates_small_skew_only() {
    let (private, _, jwk) = rsa_key("k1", "RS256");
    let keys: JwkSet = serde_json::from_value(json!({"keys": [jwk]})).unwrap();
    let config = IssuerConfig::new(ISS, "tollgate");
    let just_expired = sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "exp", json!(now() - 10)));
    assert!(verify(&config, &keys, &just_expired, now()).is_ok(), "10 s of skew is within the 30 s leeway");
    let mut strict = config.clone();
    strict.leeway_secs = 0;
    assert_eq!(verify(&strict, &keys, &just_expired, now()).unwrap_err(), TokenError::Expired(10));
}

#[test]
fn configs_refuse_hmac_unknown_algorithms_and_wild_leeway() {
    let mut config = IssuerConfig::new(ISS, "tollgate");
    config.algorithms = vec!["HS256".into()];
    assert!(config.clone().resolve().unwrap_err().contains("HMAC"));
    config.algorithms = vec!["XX999".into()];
    assert!(config.clone().resolve().unwrap_err().contains("unknown algorithm"));
    let mut config = IssuerConfig::new(ISS, "tollgate");
    config.leeway_secs = 3600;
    assert!(config.resolve().unwrap_err().contains("leeway"));
    let mut empty_audience = IssuerConfig::new(ISS, "tollgate");
    empty_audience.audience.clear();
    assert!(empty_audience.resolve().is_err());
}

#[test]
fn presets_fill_issuer_algorithms_and_mapping() {
    let github: IssuerConfig = toml::from_str("preset = \"github-actions\"\naudience = [\"tollgate\"]").unwrap();
    let github = github.resolve().unwrap();
    assert_eq!(github.issuer, "https://token.actions.githubusercontent.com");
    assert_eq!(github.algorithms, vec!["RS256"]);
    assert_eq!(github.mapping.as_ref().unwrap().name.as_deref(), Some("{repository}/{workflow}@{ref}"));
    let k8s: IssuerConfig = toml::from_str("preset = \"kubernetes\"\naudience = [\"tollgate\"]").unwrap();
    assert!(k8s.resolve().unwrap_err().contains("needs `issuer`"));
    let custom: IssuerConfig =
        toml::from_str("preset = \"gitlab-ci\"\nissuer = \"https://gitlab.acme.dev\"\naudience = [\"t\"]\n[mapping]\nname = \"{project_path}\"")
            .unwrap();
    let custom = custom.resolve().unwrap();
    assert_eq!(custom.issuer, "https://gitlab.acme.dev");
    assert_eq!(custom.mapping.as_ref().unwrap().name.as_deref(), Some("{project_path}"), "explicit settings win");
    assert!(custom.mapping.as_ref().unwrap().keep.as_ref().unwrap().contains(&"pipeline_id".to_owned()));
}

#[test]
fn a_token_without_kid_verifies_only_against_a_single_key() {
    let (private, _, jwk) = rsa_key("k1", "RS256");
    let no_kid =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), &EncodingKey::from_rsa_pem(&private).unwrap())
            .unwrap();
    let config = IssuerConfig::new(ISS, "tollgate");
    let one: JwkSet = serde_json::from_value(json!({"keys": [jwk.clone()]})).unwrap();
    assert!(verify(&config, &one, &no_kid, now()).is_ok());
    // An EC key beside it: a different family, but still a second key the issuer publishes.
    let ec = json!({"kty": "EC", "crv": "P-256", "kid": "e1", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
    let two: JwkSet = serde_json::from_value(json!({"keys": [jwk, ec]})).unwrap();
    assert_eq!(verify(&config, &two, &no_kid, now()).unwrap_err(), TokenError::MissingKeyId);
    let slightly_early = sign_rs(&private, "k1", Algorithm::RS256, &with(claims(), "iat", json!(now() + 10)));
    assert!(verify(&config, &one, &slightly_early, now()).is_ok(), "10 s of skew is within the leeway");
}
