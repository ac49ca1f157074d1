use super::*;
use crate::identity::ResourceKind;

fn chain() -> Chain {
    let agent = AgentIdentity {
        issuer: "https://issuer.test".into(),
        subject: "repo:acme/orders".into(),
        name: "repo:acme/orders".into(),
        groups: vec![],
        attributes: Default::default(),
    };
    let resource = ResourceRef { name: "orders".into(), kind: ResourceKind::Postgres };
    Chain::new(Uuid::now_v7(), "proxy-a".into(), agent, resource)
}

fn sealed_session(signer: &SessionSigner) -> Vec<SealedEvent> {
    let mut chain = chain();
    let started = SessionStarted {
        client_addr: "127.0.0.1:5000".into(),
        client_tls: false,
        client_user: "ci".into(),
        application_name: None,
        upstream: UpstreamTarget { host: "db".into(), port: 5432, database: Some("orders".into()), user: "app".into() },
        node_key: signer.public_hex(),
        policy_version: Some(1),
        grant: Some("ci".into()),
        access: Some(crate::policy::Access::ReadOnly),
    };
    let command =
        Command { policy_version: Some(1), ..Command::new(Protocol::Simple, "select 1".into(), Decision::Allow) };
    let a = chain.seal(kind::SESSION_STARTED, &started).unwrap();
    let b = chain.seal(kind::COMMAND, &command).unwrap();
    let seq = chain.next_seq();
    let ended = SessionEnded {
        reason: EndReason::ClientClosed,
        detail: None,
        commands: 1,
        head: chain.head().to_owned(),
        signature: signer.sign_end(chain.session(), seq, chain.head()),
    };
    let c = chain.seal(kind::SESSION_ENDED, &ended).unwrap();
    vec![a, b, c]
}

fn raw(events: &[SealedEvent]) -> Vec<&[u8]> {
    events.iter().map(|e| &e.bytes[..]).collect()
}

#[test]
fn sealed_events_link_and_verify() {
    let (signer, _) = SessionSigner::generate().unwrap();
    let events = sealed_session(&signer);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
    let first: Envelope = serde_json::from_slice(&events[0].bytes).unwrap();
    assert_eq!(first.prev, "");
    let second: Envelope = serde_json::from_slice(&events[1].bytes).unwrap();
    assert_eq!(second.prev, events[0].hash);
    let report = verify_chain(&raw(&events));
    assert!(report.linked && report.complete, "{report:?}");
    assert_eq!(report.node_key, Some(signer.public_hex()));
}

#[test]
fn timestamps_carry_nanoseconds() {
    let (signer, _) = SessionSigner::generate().unwrap();
    let events = sealed_session(&signer);
    let value: serde_json::Value = serde_json::from_slice(&events[0].bytes).unwrap();
    let at = value["at"].as_str().unwrap();
    // 2026-11-26T04:01:07.123456789Z: nine fractional digits and a Z.
    let fraction = at.split('.').nth(1).unwrap();
    assert_eq!(fraction.len(), 10, "{at}");
    assert!(at.ends_with('Z'));
}

#[test]
fn tampering_is_detected() {
    let (signer, _) = SessionSigner::generate().unwrap();
    let events = sealed_session(&signer);
    let text = String::from_utf8(events[1].bytes.to_vec()).unwrap().replace("select 1", "select 2");
    let tampered = text.into_bytes();
    let report = verify_chain(&[&events[0].bytes, &tampered[..], &events[2].bytes]);
    assert!(!report.complete);
    assert!(report.problems.iter().any(|p| p.contains("head")), "{report:?}");
}

#[test]
fn missing_event_is_detected() {
    let (signer, _) = SessionSigner::generate().unwrap();
    let events = sealed_session(&signer);
    let report = verify_chain(&[&events[0].bytes, &events[2].bytes]);
    assert!(!report.linked);
}

#[test]
fn foreign_signature_is_rejected() {
    let (signer, _) = SessionSigner::generate().unwrap();
    let (other, _) = SessionSigner::generate().unwrap();
    let mut events = sealed_session(&signer);
    // Re-seal the end with a key the session did not announce.
    let ended: Envelope = serde_json::from_slice(&events[2].bytes).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&events[2].bytes).unwrap();
    value["payload"]["signature"] = other.sign_end(ended.session, ended.seq, &events[1].hash).into();
    events[2].bytes = serde_json::to_vec(&value).unwrap().into();
    let report = verify_chain(&raw(&events));
    assert!(report.linked && !report.complete, "{report:?}");
}

#[test]
fn a_command_recorded_before_postgres_fields_moved_reads_in_full() {
    let earlier = serde_json::json!({
        "protocol": "extended", "statement": "select $1", "params": ["1"], "prepared": "s1",
        "executes": [{"name": "e", "statement": "select 2"}], "step": "parse", "decision": "deny"
    });
    let read: Command = serde_json::from_value(earlier).unwrap();
    let pg = read.postgres.clone().unwrap();
    assert_eq!(pg.params, Some(vec![Some("1".to_owned())]));
    assert_eq!((pg.prepared.as_deref(), pg.step), (Some("s1"), Some(Step::Parse)));
    assert_eq!(pg.executes, vec![Executed { name: "e".into(), statement: "select 2".into() }]);
    // Written again, it takes today's layout, and reads back the same.
    let now = serde_json::to_value(&read).unwrap();
    assert!(now.get("params").is_none() && now["postgres"]["prepared"] == "s1", "{now}");
    assert_eq!(serde_json::from_value::<Command>(now).unwrap(), read);
}
