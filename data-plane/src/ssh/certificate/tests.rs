use super::*;

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
}

fn agent() -> AgentIdentity {
    AgentIdentity {
        issuer: "https://issuer.test".into(),
        subject: "repo:acme/orders".into(),
        name: "deploy-bot".into(),
        ..Default::default()
    }
}

fn request<'a>(agent: &'a AgentIdentity, public_key: &'a str, expiry: u64) -> Request<'a> {
    Request { agent, public_key, principals: vec!["web-1".into(), "web-2".into()], token_expiry: expiry }
}

const NOW: u64 = 1_800_000_000;

#[test]
fn a_signed_certificate_vouches_for_its_agent_on_its_resources_until_it_expires() {
    let ca = UserCa::new(key(1), 3600);
    let agent = agent();
    let public = key(2).public_key().to_openssh().unwrap();
    let cert = ca.sign(&request(&agent, &public, NOW + 600), NOW).unwrap();
    // The token's expiry comes first; a minute's skew before.
    assert_eq!((cert.valid_after(), cert.valid_before()), (NOW - 60, NOW + 600));
    assert_eq!(cert.valid_principals(), ["web-1", "web-2"]);
    assert_eq!(cert.key_id(), "deploy-bot (https://issuer.test repo:acme/orders)");
    assert_eq!(ca.vouch(&cert, "web-2", NOW + 10), Ok(agent.clone()));
    assert!(ca.vouch(&cert, "db-1", NOW).unwrap_err().contains("not valid for resource"));
    assert!(ca.vouch(&cert, "web-1", NOW + 600).is_err(), "expired");
    // Another CA's certificate for the same agent is refused.
    let other = UserCa::new(key(3), 3600).sign(&request(&agent, &public, NOW + 86_400), NOW).unwrap();
    assert!(ca.vouch(&other, "web-1", NOW).unwrap_err().contains("not signed by this gateway's CA"));
    // A token valid for longer than the TTL: the TTL bounds it.
    let cert = ca.sign(&request(&agent, &public, NOW + 86_400), NOW).unwrap();
    assert_eq!(cert.valid_before(), NOW + 3600);
}

#[test]
fn nothing_is_signed_for_no_resource_an_expired_token_or_a_bad_key() {
    let ca = UserCa::new(key(1), 3600);
    let agent = agent();
    let public = key(2).public_key().to_openssh().unwrap();
    let mut none = request(&agent, &public, NOW + 86_400);
    none.principals.clear();
    assert!(ca.sign(&none, NOW).unwrap_err().contains("no grant"));
    assert!(ca.sign(&request(&agent, &public, NOW), NOW).unwrap_err().contains("expired"));
    assert!(ca
        .sign(&request(&agent, "ssh-ed25519 nope", NOW + 600), NOW)
        .unwrap_err()
        .contains("not an OpenSSH public key"));
}

/// A certificate the CA signed by other means (as `ssh-keygen -s` would).
fn forged(ca: &PrivateKey, edit: impl FnOnce(&mut Builder)) -> Certificate {
    let subject = key(2);
    let mut builder =
        Builder::new([7u8; 32].to_vec(), subject.public_key().key_data().clone(), NOW - 60, NOW + 60).unwrap();
    builder.cert_type(CertType::User).unwrap();
    builder.valid_principal("web-1").unwrap();
    builder.extension(IDENTITY, serde_json::to_string(&agent()).unwrap()).unwrap();
    edit(&mut builder);
    builder.sign(ca).unwrap()
}

#[test]
fn host_certificates_unknown_critical_options_and_missing_identities_are_refused() {
    let ca_key = key(1);
    let ca = UserCa::new(key(1), 3600);
    assert!(ca.vouch(&forged(&ca_key, |_| {}), "web-1", NOW).is_ok(), "the control");
    let host = forged(&ca_key, |b| {
        let mut fresh =
            Builder::new([7u8; 32].to_vec(), key(2).public_key().key_data().clone(), NOW - 60, NOW + 60).unwrap();
        fresh.cert_type(CertType::Host).unwrap();
        fresh.valid_principal("web-1").unwrap();
        *b = fresh;
    });
    assert_eq!(ca.vouch(&host, "web-1", NOW), Err("not a user certificate".into()));
    let forced = forged(&ca_key, |b| {
        b.critical_option("force-command", "/bin/true").unwrap();
    });
    assert!(ca.vouch(&forced, "web-1", NOW).unwrap_err().contains("critical option"));
    let anonymous = forged(&ca_key, |b| {
        let mut fresh =
            Builder::new([7u8; 32].to_vec(), key(2).public_key().key_data().clone(), NOW - 60, NOW + 60).unwrap();
        fresh.cert_type(CertType::User).unwrap();
        fresh.valid_principal("web-1").unwrap();
        *b = fresh;
    });
    assert_eq!(ca.vouch(&anonymous, "web-1", NOW), Err("the certificate names no agent".into()));
}

#[test]
fn a_login_certificate_is_for_the_login_only_and_short() {
    let ca = key(1);
    let (key, cert) = login_certificate(&ca, "deploy", "tollgate web-1 for deploy").unwrap();
    assert_eq!(cert.public_key(), key.public_key().key_data());
    assert_eq!(cert.valid_principals(), ["deploy"]);
    assert!(cert.valid_before() - cert.valid_after() <= LOGIN_SECS + SKEW_SECS);
    let fingerprint = ca.public_key().fingerprint(HashAlg::Sha256);
    assert!(cert.validate_at(now(), [&fingerprint]).is_ok());
    assert!(cert.extensions().contains_key("permit-pty"));
}
