use super::*;
use serde_json::json;

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

fn github(workflow: &str, run_id: &str) -> Map<String, Value> {
    claims(json!({
        "iss": "https://token.actions.githubusercontent.com", "sub": "repo:acme/orders:environment:prod",
        "aud": "tollgate", "exp": 1, "repository": "acme/orders", "workflow": workflow, "ref": "refs/heads/main",
        "run_id": run_id, "environment": "prod", "actor": "octocat", "sha": "abc123"
    }))
}

#[test]
fn globs() {
    for (pattern, text, expected) in [
        ("acme/*", "acme/orders", true),
        ("acme/*", "acme", false),
        ("*", "", true),
        ("prod?", "prod1", true),
        ("prod?", "prod", false),
        ("*-deploy-*", "x-deploy-y", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "aXbY", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ] {
        assert_eq!(glob_match(pattern, text), expected, "{pattern} ~ {text}");
    }
}

#[test]
fn two_workflows_sharing_a_subject_are_two_agents() {
    let mapping = IdentityMapping { name: Some("{repository}/{workflow}@{ref}".into()), ..Default::default() };
    let deploy = mapping.identify("gh", "repo:acme/orders:environment:prod", &github("deploy", "1")).unwrap();
    let migrate = mapping.identify("gh", "repo:acme/orders:environment:prod", &github("migrate", "1")).unwrap();
    assert_eq!(deploy.subject, migrate.subject);
    assert_eq!(deploy.name, "acme/orders/deploy@refs/heads/main");
    assert_ne!(deploy.name, migrate.name);
}

#[test]
fn rules_grant_groups_and_refuse_strangers() {
    let mapping = IdentityMapping {
        rules: vec![
            Rule { matchers: [("repository".into(), "acme/*".into())].into(), groups: vec!["ci".into()] },
            Rule {
                matchers: [("repository".into(), "acme/*".into()), ("environment".into(), "prod*".into())].into(),
                groups: vec!["deployers".into()],
            },
        ],
        keep: Some(vec!["repository".into(), "run_id".into()]),
        ..Default::default()
    };
    let id = mapping.identify("gh", "s", &github("deploy", "7")).unwrap();
    assert_eq!(id.groups, vec!["ci", "deployers"]);
    assert_eq!(id.attributes.keys().collect::<Vec<_>>(), vec!["repository", "run_id"]);
    let mut stranger = github("deploy", "7");
    stranger.insert("repository".into(), "evil/repo".into());
    assert_eq!(mapping.identify("gh", "s", &stranger), Err(MappingError::NoRuleMatched));
}

#[test]
fn nested_claims_lists_and_groups_claim() {
    let k8s = claims(json!({
        "sub": "system:serviceaccount:prod:deployer",
        "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "deployer"}},
        "groups": ["ops", "oncall"]
    }));
    let mapping = IdentityMapping {
        name: Some("{kubernetes.io/namespace}:{kubernetes.io/serviceaccount/name}".into()),
        groups_claim: Some("groups".into()),
        rules: vec![Rule { matchers: [("groups".into(), "on*".into())].into(), groups: vec!["pagers".into()] }],
        ..Default::default()
    };
    let id = mapping.identify("k8s", "system:serviceaccount:prod:deployer", &k8s).unwrap();
    assert_eq!(id.name, "prod:deployer");
    assert_eq!(id.groups, vec!["oncall", "ops", "pagers"]);
}

#[test]
fn templates_fail_clearly() {
    let missing = IdentityMapping { name: Some("{repository}@{environment}".into()), ..Default::default() };
    let mut c = github("deploy", "1");
    c.remove("environment");
    assert_eq!(missing.identify("gh", "s", &c), Err(MappingError::MissingClaim("environment".into())));
    assert!(IdentityMapping { name: Some("{unclosed".into()), ..Default::default() }.validate().is_err());
    assert!(IdentityMapping { name: Some("a}b".into()), ..Default::default() }.validate().is_err());
    assert!(IdentityMapping { name: Some("{{literal}} {sub}".into()), ..Default::default() }.validate().is_ok());
}

#[test]
fn without_mapping_the_subject_names_the_agent_and_claims_are_kept() {
    let id = IdentityMapping::default().identify("gh", "repo:acme/orders", &github("deploy", "1")).unwrap();
    assert_eq!(id.name, "repo:acme/orders");
    assert!(id.attributes.contains_key("workflow"));
    assert!(!id.attributes.contains_key("exp") && !id.attributes.contains_key("aud"));
}
