use super::*;

#[derive(Debug, Deserialize)]
struct Sample {
    nats: Nats,
    #[serde(default)]
    resources: Vec<Resource>,
}
#[derive(Debug, Deserialize)]
struct Nats {
    url: String,
    #[serde(default)]
    timeout_ms: u64,
}
#[derive(Debug, Deserialize)]
struct Resource {
    name: String,
    port: u16,
    password: SecretRef,
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Sample, ConfigError> {
    let mut doc: toml::Value = toml::from_str(text).unwrap();
    apply_overrides(&mut doc, "TOLLGATE_", vars(env))?;
    doc.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
}

const BASE: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"
[[resources]]
name = "orders"
port = 5432
password = "env:ORDERS_PW"
"#;

#[test]
fn overrides_reach_tables_and_array_items() {
    let cfg = parse(
        BASE,
        &[
            ("TOLLGATE_NATS__URL", "nats://x:1"),
            ("TOLLGATE_NATS__TIMEOUT_MS", "250"),
            ("TOLLGATE_RESOURCES__0__PORT", "6543"),
            ("OTHER", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.nats.url, "nats://x:1");
    assert_eq!(cfg.nats.timeout_ms, 250);
    assert_eq!(cfg.resources[0].port, 6543);
    assert_eq!(cfg.resources[0].name, "orders");
    assert_eq!(cfg.resources[0].password, SecretRef::Env("ORDERS_PW".into()));
}

#[test]
fn override_past_the_array_is_an_error() {
    let err = parse(BASE, &[("TOLLGATE_RESOURCES__3__PORT", "1")]).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
}

#[test]
fn inline_secrets_are_refused() {
    let err = parse(&BASE.replace("env:ORDERS_PW", "hunter2"), &[]).unwrap_err();
    assert!(err.to_string().contains("by reference"), "{err}");
}

#[test]
fn secret_from_file_drops_trailing_newline() {
    let dir = std::env::temp_dir().join(format!("tollgate-secret-{}", std::process::id()));
    std::fs::write(&dir, "s3cret\n").unwrap();
    let secret = SecretRef::File(dir.clone()).resolve().unwrap();
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(secret, "s3cret");
}

#[test]
fn load_ignores_prefixed_variables_outside_the_sections() {
    let dir = tempfile_path("load");
    std::fs::write(&dir, BASE).unwrap();
    let vars = vars(&[("TOLLGATE_NATS__URL", "nats://y:2"), ("TOLLGATE_PROXY_CONFIG", "/etc/x.toml")]);
    let cfg: Sample = load(Some(&dir), "TOLLGATE_", &["nats", "resources"], vars).unwrap();
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(cfg.nats.url, "nats://y:2");
}

fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tollgate-config-{name}-{}", std::process::id()))
}
