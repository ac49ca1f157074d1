//! Defaults for well-known agent issuers: the claims that tell their bots apart become the agent
//! name, and the claims a reviewer needs are kept. Every default can be overridden.

use super::mapping::IdentityMapping;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// GitHub Actions OIDC tokens (`permissions: id-token: write`).
    GithubActions,
    /// GitLab CI `id_tokens` (`issuer` defaults to gitlab.com; set it for self-managed GitLab).
    GitlabCi,
    /// Kubernetes projected service-account tokens (`issuer` is the cluster's).
    Kubernetes,
    /// An IdP's OAuth client-credentials tokens (`issuer` is the IdP's).
    ClientCredentials,
}

pub struct PresetDefaults {
    pub issuer: Option<String>,
    pub algorithms: Vec<String>,
    pub mapping: IdentityMapping,
}

fn list(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

impl Preset {
    pub fn defaults(self) -> PresetDefaults {
        let rs256 = vec!["RS256".to_owned()];
        match self {
            Preset::GithubActions => PresetDefaults {
                issuer: Some("https://token.actions.githubusercontent.com".into()),
                algorithms: rs256,
                mapping: IdentityMapping {
                    name: Some("{repository}/{workflow}@{ref}".into()),
                    keep: list(&[
                        "repository",
                        "repository_owner",
                        "workflow",
                        "job_workflow_ref",
                        "ref",
                        "sha",
                        "environment",
                        "run_id",
                        "run_attempt",
                        "run_number",
                        "actor",
                        "event_name",
                    ]),
                    ..Default::default()
                },
            },
            Preset::GitlabCi => PresetDefaults {
                issuer: Some("https://gitlab.com".into()),
                algorithms: rs256,
                mapping: IdentityMapping {
                    name: Some("{project_path}@{ref}".into()),
                    keep: list(&[
                        "project_path",
                        "namespace_path",
                        "ref",
                        "ref_type",
                        "environment",
                        "pipeline_id",
                        "pipeline_source",
                        "job_id",
                        "user_login",
                        "runner_id",
                    ]),
                    ..Default::default()
                },
            },
            Preset::Kubernetes => PresetDefaults {
                issuer: None,
                algorithms: vec!["RS256".into(), "ES256".into()],
                mapping: IdentityMapping {
                    name: Some("{kubernetes.io/namespace}/{kubernetes.io/serviceaccount/name}".into()),
                    keep: list(&["kubernetes.io"]),
                    ..Default::default()
                },
            },
            Preset::ClientCredentials => PresetDefaults {
                issuer: None,
                algorithms: vec!["RS256".into(), "ES256".into(), "PS256".into(), "EdDSA".into()],
                mapping: IdentityMapping {
                    name: Some("{sub}".into()),
                    keep: list(&["azp", "client_id", "scope", "scp"]),
                    ..Default::default()
                },
            },
        }
    }
}
