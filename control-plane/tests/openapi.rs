//! openapi/openapi.json is generated from the code; this fails when it is stale.

#[test]
fn checked_in_openapi_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = tollgate_control_plane::api::openapi_json();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is stale; regenerate it with:\n  cargo run -q -p tollgate-control-plane -- openapi > openapi/openapi.json"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).expect("valid JSON");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for path in ["/api/v1/sessions", "/api/v1/sessions/{id}/events", "/api/v1/agents", "/healthz", "/readyz"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
}
