use super::*;

const GOOD: &str = r#"
resources:
  - name: orders-prod
    kind: postgres
    labels: { env: prod, team: orders }
    guardrails:
      deny_classes: [drop, truncate, copy_program, alter_system]
      deny_unbounded_writes: true
      deny_functions: [pg_read_file, lo_export]
    approvals:
      - name: schema-changes
        hold_classes: [alter, create]
        approver_groups: [dba]
        quorum: 2
    masking:
      columns: ["*password*", ssn]
      custom: [{ name: order-token, pattern: "ot_[0-9a-f]{32}" }]
grants:
  - name: ci-read
    who: { groups: [ci], claims: { repository: "acme/*" } }
    resources: { labels: { env: prod } }
    access: read-only
  - name: deployers
    who: { agents: ["acme/orders/deploy@*"] }
    resources: { names: [orders-prod] }
    access: read-write
    expires: 2027-01-01T00:00:00Z
"#;

#[test]
fn a_good_document_parses_in_yaml_and_json_alike() {
    let yaml = PolicyDocument::parse(GOOD, Format::Yaml).unwrap();
    assert_eq!(yaml.resources[0].approvals[0].quorum, 2);
    assert_eq!(yaml.resources[0].approvals[0].timeout_secs, 900);
    assert_eq!(yaml.grants[1].access, Access::ReadWrite);
    let json = serde_json::to_string(&yaml).unwrap();
    assert_eq!(PolicyDocument::parse(&json, Format::Json).unwrap(), yaml);
}

fn problems(text: &str, format: Format) -> Vec<String> {
    PolicyDocument::parse(text, format).unwrap_err().0.iter().map(ToString::to_string).collect()
}

#[test]
fn errors_name_the_offending_path() {
    let cases: &[(&str, Format, &str)] = &[
        ("resources: [{ name: a, kind: mysql }]", Format::Yaml, "resources[0].kind: unknown variant `mysql`"),
        ("resources: [{ name: a, kind: postgres, guardrails: { deny_clases: [drop] } }]", Format::Yaml, "resources[0].guardrails: unknown field `deny_clases`"),
        ("resources: [{ name: a, kind: postgres, guardrails: { deny_classes: [dorp] } }]", Format::Yaml, "resources[0].guardrails.deny_classes[0]: unknown statement class \"dorp\""),
        ("resources: [{ name: a, kind: postgres, guardrails: { max_rows_written: 0 } }]", Format::Yaml, "resources[0].guardrails.max_rows_written: 0 would refuse every write"),
        ("resources: [{ name: a, kind: ssh, guardrails: { max_rows_written: 10 } }]", Format::Yaml, "resources[0].guardrails.max_rows_written: a row limit applies to postgres resources only"),
        ("resources: [{ name: a, kind: postgres, guardrails: { max_rows_written: -1 } }]", Format::Yaml, "max_rows_written"),
        ("resources: [{ name: a, kind: postgres }, { name: a, kind: postgres }]", Format::Yaml, "resources[1].name: resource \"a\" is defined twice"),
        ("grants: [{ name: g, who: { groups: [ci] }, resources: { names: [nope] }, access: read-only }]", Format::Yaml, "grants[0].resources.names[0]: no resource named \"nope\""),
        ("grants: [{ name: g, who: {}, resources: { labels: { a: b } }, access: read-only }]", Format::Yaml, "grants[0].who: must match something"),
        ("grants: [{ name: g, who: { groups: [x] }, resources: { labels: { a: b } }, access: superuser }]", Format::Yaml, "grants[0].access: unknown variant `superuser`"),
        ("grants: [{ name: g, who: { groups: [x] }, resources: { labels: { a: b } }, access: read-only, expires: soon }]", Format::Yaml, "grants[0].expires"),
        ("resources: [{ name: a, kind: postgres, approvals: [{ name: r, quorum: 0 }] }]", Format::Yaml, "resources[0].approvals[0].quorum: must be at least 1"),
        ("resources: [{ name: a, kind: postgres, masking: { custom: [{ name: x, pattern: \"(\" }] } }]", Format::Yaml, "resources[0].masking.custom[0].pattern: invalid regular expression"),
        (r#"{"resources": [{"name": "a", "kind": "postgres", "recording": {"mode": "sometimes"}}]}"#, Format::Json, "resources[0].recording.mode: unknown variant `sometimes`"),
        (r#"{"grants": 7}"#, Format::Json, "grants: invalid type"),
        ("resources: [", Format::Yaml, ""),
    ];
    for (text, format, expected) in cases {
        let found = problems(text, *format);
        assert!(found.iter().any(|p| p.contains(expected)), "{text}\n  expected {expected:?}\n  got {found:?}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "resources: [{ name: a, kind: postgres, guardrails: { deny_classes: [x, y] } }]\n\
                grants: [{ name: g, who: {}, resources: { names: [b] }, access: admin }]";
    assert_eq!(problems(text, Format::Yaml).len(), 4);
}

#[test]
fn diff_names_what_changed_by_item_name() {
    let before = PolicyDocument::parse(GOOD, Format::Yaml).unwrap();
    let mut after = before.clone();
    after.resources[0].guardrails.deny_classes.push("grant".into());
    after.grants.remove(0);
    after.grants[0].access = Access::Admin;
    let changes = diff(&before, &after);
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        ["grants[ci-read]", "grants[deployers].access", "resources[orders-prod].guardrails.deny_classes"]
    );
    assert!(changes[0].after.is_none(), "a removed grant has no after");
    assert_eq!(changes[1].after, Some(serde_json::json!("admin")));
    let mut reordered = before.clone();
    reordered.grants.reverse();
    assert!(diff(&before, &reordered).is_empty(), "reordering named items is not a change");
}

fn agent(name: &str, groups: &[&str], repository: &str) -> crate::identity::AgentIdentity {
    crate::identity::AgentIdentity {
        issuer: "https://issuer.test".into(),
        subject: "sub".into(),
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attributes: [("repository".to_string(), serde_json::json!(repository))].into(),
    }
}

#[test]
fn grants_are_judged_by_who_resource_and_expiry() {
    let doc = PolicyDocument::parse(GOOD, Format::Yaml).unwrap();
    let now = chrono::Utc::now();
    let reader = agent("acme/orders/ci@main", &["ci"], "acme/orders");
    assert!(matches!(doc.judge(&reader, "orders-prod", now), Judgement::Allowed { access: Access::ReadOnly, .. }));
    let outsider = agent("evil/x@main", &["ci"], "evil/x");
    assert_eq!(doc.judge(&outsider, "orders-prod", now), Judgement::NoGrant);
    let deployer = agent("acme/orders/deploy@refs/heads/main", &["ci"], "acme/orders");
    match doc.judge(&deployer, "orders-prod", now) {
        Judgement::Allowed { access, grant, .. } => {
            assert_eq!((access, grant.name.as_str()), (Access::ReadWrite, "deployers"))
        }
        other => panic!("{other:?}"),
    }
    let later: chrono::DateTime<chrono::Utc> = "2027-06-01T00:00:00Z".parse().unwrap();
    assert!(
        matches!(doc.judge(&deployer, "orders-prod", later), Judgement::Allowed { access: Access::ReadOnly, .. }),
        "the expired grant no longer counts"
    );
    assert_eq!(doc.judge(&reader, "payroll", now), Judgement::UnknownResource);
}

#[test]
fn approval_rules_hold_by_class_relation_and_agent_group() {
    let doc = PolicyDocument::parse(
        r#"
resources:
  - name: db
    kind: postgres
    approvals:
      - { name: wipes, hold_classes: [unbounded_write], approver_groups: [dba] }
      - { name: orders-ddl, hold_classes: [alter, drop], relations: [orders], agent_groups: [deployers], approver_groups: [dba] }
"#,
        Format::Yaml,
    )
    .unwrap();
    let db = doc.resource("db").unwrap();
    let class = |classes: &[&str], relations: &[&str], unbounded: bool| crate::event::Classification {
        statements: 1,
        classes: classes.iter().map(|c| c.to_string()).collect(),
        relations: relations.iter().map(|r| r.to_string()).collect(),
        functions: Default::default(),
        unbounded_write: unbounded,
        writes: true,
        escapes_read_only: false,
    };
    let deployers = vec!["deployers".to_string()];
    let held = |groups: &[String], c: &crate::event::Classification| db.hold(groups, c).map(|r| r.name.clone());
    assert_eq!(held(&[], &class(&["delete"], &["orders"], true)), Some("wipes".into()));
    assert_eq!(held(&[], &class(&["delete"], &["orders"], false)), None, "a bounded delete runs");
    assert_eq!(held(&deployers, &class(&["drop"], &["orders"], false)), Some("orders-ddl".into()));
    assert_eq!(held(&deployers, &class(&["drop"], &["customers"], false)), None, "another table");
    assert_eq!(held(&[], &class(&["drop"], &["orders"], false)), None, "another agent group");

    let empty = PolicyDocument::parse(
        "resources: [{ name: a, kind: postgres, approvals: [{ name: x, approver_groups: [dba] }] }]",
        Format::Yaml,
    );
    assert!(empty.unwrap_err().to_string().contains("resources[0].approvals[0].hold_classes"));
}

/// A standing approval opens exactly what was approved: the relations as they were named.
#[test]
fn standing_approvals_cover_relations_exactly() {
    let now = chrono::Utc::now();
    let standing = StandingApproval {
        approval_id: uuid::Uuid::nil(),
        agent_issuer: Some("https://issuer".into()),
        agent_name: "bot".into(),
        resource: "demo".into(),
        rule: "writes".into(),
        classes: vec!["delete".into()],
        relations: vec!["public.orders".into()],
        until: now + chrono::Duration::minutes(5),
        approvers: vec!["alice".into()],
    };
    let covered = |relations: &[&str]| {
        let what = Covered {
            issuer: "https://issuer",
            agent: "bot",
            resource: "demo",
            rule: "writes",
            classes: &["delete"],
            relations,
        };
        standing.covers(&what, now)
    };
    assert!(covered(&["public.orders"]), "the approved relation, named as approved");
    assert!(!covered(&["public.\"Orders\""]), "a quoted mixed-case name is another relation");
    assert!(!covered(&["orders"]), "a bare name could resolve to another schema");
    assert!(!covered(&["evil.orders"]));
    assert!(!covered(&["public.orders", "public.customers"]), "every relation must be approved");
}

fn ssh_resource(guardrails: serde_json::Value) -> ResourcePolicy {
    serde_json::from_value(serde_json::json!({ "name": "web-1", "kind": "ssh", "guardrails": guardrails })).unwrap()
}

#[test]
fn forwarding_matches_hosts_label_by_label_and_addresses_only_as_addresses() {
    let r = ssh_resource(serde_json::json!({ "allow_forwarding": ["db-*:5432", "10.0.0.*:*", "*.internal:443"] }));
    let allowed = |host: &str, port: u32| r.deny_forward(host, port).is_none();
    assert!(allowed("db-1", 5432));
    assert!(allowed("DB-1", 5432));
    assert!(!allowed("db-1", 5433));
    assert!(!allowed("db-x.attacker.example", 5432), "a star never spans a dot");
    assert!(allowed("10.0.0.7", 22));
    assert!(!allowed("10.0.0.1.169.254.169.254.nip.io", 22), "digits match addresses only");
    assert!(allowed("api.internal", 443));
    assert!(!allowed("a.b.internal", 443));
    assert!(!allowed("169.254.169.254\0.internal", 443), "no control characters in a host");
    assert!(ssh_resource(serde_json::json!({})).deny_forward("db-1", 5432).is_some(), "none unless named");
}

#[test]
fn path_rules_see_absolute_paths_and_moves_of_what_they_cover() {
    let r = ssh_resource(serde_json::json!({ "deny_paths": ["/home/u/.ssh/*", "*/private/*"] }));
    let denied = |paths: &[&str], relinks: bool| {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        r.deny_paths(&paths, relinks).is_some()
    };
    assert!(denied(&["/home/u/.ssh/authorized_keys"], false));
    assert!(denied(&["/home/u/x/../.ssh//authorized_keys"], false), "normalised first");
    assert!(denied(&["relative/path"], false), "a relative path cannot be placed");
    assert!(!denied(&["/home/u/notes.txt"], false));
    assert!(denied(&["/home/u/.ssh", "/home/u/s"], true), "renaming the folder a rule covers");
    assert!(denied(&["/home/u", "/home/v"], true), "renaming an ancestor");
    assert!(denied(&["/srv/private", "/srv/open"], true));
    assert!(!denied(&["/srv/a", "/srv/b"], true));
    assert!(!denied(&["/home/u/.ssh"], false), "the folder itself is not in it");
}
