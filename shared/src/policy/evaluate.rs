//! Judging an agent against a policy: which grant (if any) lets it reach a resource, and how.

use super::{Access, ApprovalRule, Grant, MaskTarget, PolicyDocument, RelationName, ResourcePolicy};
use crate::identity::mapping::{claim, glob_match};
use crate::identity::AgentIdentity;
use chrono::{DateTime, Utc};

/// The outcome of judging a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement<'a> {
    Allowed {
        access: Access,
        grant: &'a Grant,
        resource: &'a ResourcePolicy,
    },
    /// The policy does not list the resource at all.
    UnknownResource,
    /// No live grant matches the agent and the resource.
    NoGrant,
}

impl Grant {
    /// Does this grant's `who` describe the agent?
    pub fn covers(&self, agent: &AgentIdentity) -> bool {
        let who = &self.who;
        if who.is_empty() {
            return false;
        }
        if who.issuer.as_ref().is_some_and(|issuer| *issuer != agent.issuer) {
            return false;
        }
        if !who.groups.is_empty() && !who.groups.iter().any(|g| agent.groups.contains(g)) {
            return false;
        }
        if !who.agents.is_empty() && !who.agents.iter().any(|pattern| glob_match(pattern, &agent.name)) {
            return false;
        }
        let attributes: serde_json::Map<String, serde_json::Value> =
            agent.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        who.claims.iter().all(|(path, pattern)| match claim(&attributes, path) {
            Some(serde_json::Value::String(value)) => glob_match(pattern, value),
            Some(other) => glob_match(pattern, &other.to_string()),
            None => false,
        })
    }

    /// Does this grant's resource selector pick `resource`?
    pub fn selects(&self, resource: &ResourcePolicy) -> bool {
        let by_name = self.resources.names.contains(&resource.name);
        let by_labels = !self.resources.labels.is_empty()
            && self
                .resources
                .labels
                .iter()
                .all(|(k, v)| resource.labels.get(k).is_some_and(|have| glob_match(v, have)));
        by_name || by_labels
    }
}

impl PolicyDocument {
    pub fn resource(&self, name: &str) -> Option<&ResourcePolicy> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// The widest access any unexpired grant gives `agent` on `resource` at `now`.
    pub fn judge(&self, agent: &AgentIdentity, resource: &str, now: DateTime<Utc>) -> Judgement<'_> {
        let Some(resource) = self.resource(resource) else { return Judgement::UnknownResource };
        self.grants
            .iter()
            .filter(|g| g.expires.is_none_or(|at| at > now))
            .filter(|g| g.selects(resource) && g.covers(agent))
            .max_by_key(|g| g.access)
            .map_or(Judgement::NoGrant, |grant| Judgement::Allowed { access: grant.access, grant, resource })
    }
}

/// Why a statement must not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The rule, as recorded: `deny_classes:drop`, `deny_functions:pg_read_file`, `read_only_grant`...
    pub rule: String,
    pub reason: String,
}

fn named_in(list: &[String], names: &std::collections::BTreeSet<String>) -> Option<String> {
    list.iter().find(|n| names.contains(&n.to_lowercase())).cloned()
}

/// The first rule relation that covers a relation the statement uses (names as SQL reads them:
/// `Orders` is `orders`, `"Orders"` is not; see [`RelationName::covers`]).
fn relation_named_in(rules: &[String], used: &std::collections::BTreeSet<String>) -> Option<String> {
    let used: Vec<RelationName> = used.iter().filter_map(|r| RelationName::parse(r)).collect();
    rules
        .iter()
        .find(|rule| match RelationName::parse(rule) {
            Some(rule) => used.iter().any(|u| rule.covers(u)),
            // Validation refuses such a rule; should one get here, it covers everything.
            None => true,
        })
        .cloned()
}

/// A pseudo-class approval rules may hold: a write no condition bounds (see `Classification::unbounded_write`).
pub const UNBOUNDED_WRITE: &str = "unbounded_write";

use super::command::{CommandLine, Pattern};

impl ResourcePolicy {
    /// The first approval rule that holds this statement for an agent in these groups.
    pub fn hold(&self, agent_groups: &[String], c: &crate::event::Classification) -> Option<&ApprovalRule> {
        self.holds(agent_groups, c).into_iter().next()
    }

    /// Every approval rule that holds this statement for an agent in these groups: each needs
    /// its own quorum (or a standing approval granted under it).
    pub fn holds(&self, agent_groups: &[String], c: &crate::event::Classification) -> Vec<&ApprovalRule> {
        self.holds_line(agent_groups, c, None)
    }

    /// `holds`, for a command line too: a rule naming commands holds only lines matching one.
    pub fn holds_line(
        &self,
        agent_groups: &[String],
        c: &crate::event::Classification,
        line: Option<&CommandLine>,
    ) -> Vec<&ApprovalRule> {
        self.approvals
            .iter()
            // A rule that holds by rows written judges after the statement ran.
            .filter(|rule| rule.rows_over.is_none())
            .filter(|rule| {
                let command = rule.commands.is_empty()
                    || line.is_some_and(|line| {
                        rule.commands.iter().filter_map(|p| Pattern::parse(p).ok()).any(|p| line.matches(&p))
                    });
                let class = rule
                    .hold_classes
                    .iter()
                    .any(|h| c.classes.contains(h) || (h == UNBOUNDED_WRITE && c.unbounded_write));
                let relation = rule.relations.is_empty() || relation_named_in(&rule.relations, &c.relations).is_some();
                let agent = rule.agent_groups.is_empty() || rule.agent_groups.iter().any(|g| agent_groups.contains(g));
                class && relation && agent && command
            })
            .collect()
    }

    /// Approval rules that hold this statement by the rows it writes (`rows_over`), judged
    /// once it ran: its classes, relations and the agent's groups match.
    pub fn holds_after(&self, agent_groups: &[String], c: &crate::event::Classification) -> Vec<&ApprovalRule> {
        self.approvals
            .iter()
            .filter(|rule| rule.rows_over.is_some())
            .filter(|rule| {
                let class = rule.hold_classes.iter().any(|h| c.classes.contains(h));
                let relation = rule.relations.is_empty() || relation_named_in(&rule.relations, &c.relations).is_some();
                let agent = rule.agent_groups.is_empty() || rule.agent_groups.iter().any(|g| agent_groups.contains(g));
                class && relation && agent
            })
            .collect()
    }

    /// Judge the paths an sftp operation touches against `deny_paths`. Paths are compared in
    /// their plain absolute form (`//` and `.` collapsed, `..` resolved); a relative path cannot
    /// be placed, so where there are path rules it is refused. (Symbolic links on the host can
    /// still lead elsewhere: path rules are guardrails, file permissions are the boundary.)
    /// An operation that `relinks` (rename, symlink, hardlink) could move a denied path, or
    /// make a way to one: refused when a path is, or is an ancestor of, what a rule covers.
    pub fn deny_paths(&self, paths: &[String], relinks: bool) -> Option<Denial> {
        let patterns = &self.guardrails.deny_paths;
        if patterns.is_empty() {
            return None;
        }
        for path in paths {
            let Some(plain) = plain_path(path) else {
                return Some(Denial {
                    rule: "deny_paths".into(),
                    reason: format!("{path:?} is not an absolute path; path rules on {} need one", self.name),
                });
            };
            if let Some(pattern) = patterns.iter().find(|p| crate::identity::mapping::glob_match(p, &plain)) {
                return Some(Denial {
                    rule: format!("deny_paths:{pattern}"),
                    reason: format!("{plain} is off limits on {}", self.name),
                });
            }
            if relinks {
                let inside = format!("{}/", plain.trim_end_matches('/'));
                let covers = |pattern: &&String| {
                    let literal = &pattern[..pattern.find(['*', '?']).unwrap_or(pattern.len())];
                    crate::identity::mapping::glob_match(pattern, &format!("{inside}x"))
                        || (!literal.is_empty() && literal.starts_with(&inside))
                };
                if let Some(pattern) = patterns.iter().find(covers) {
                    return Some(Denial {
                        rule: format!("deny_paths:{pattern}"),
                        reason: format!("{plain} holds what {pattern} puts off limits on {}", self.name),
                    });
                }
            }
        }
        None
    }

    /// Judge a forwarded connection to `host:port`: only destinations the resource allows.
    pub fn deny_forward(&self, host: &str, port: u32) -> Option<Denial> {
        let destination = format!("{host}:{port}");
        // A host name is matched label by label (`*` never spans a dot, so `db-*` is not
        // `db-x.attacker.example`); a pattern of digits is matched only by an IPv4 address;
        // a name with anything but letters, digits, `.`, `-`, `_`, `:` matches nothing.
        let host = host.to_ascii_lowercase();
        let plain =
            !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        let host_matches = |pattern: &str| {
            let numeric = pattern.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '*'));
            if numeric && host.parse::<std::net::Ipv4Addr>().is_err() {
                return false;
            }
            let (want, have): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), host.split('.').collect());
            want.len() == have.len() && want.iter().zip(&have).all(|(w, h)| crate::identity::mapping::glob_match(w, h))
        };
        let allowed = plain
            && self.guardrails.allow_forwarding.iter().any(|pattern| {
                pattern.rsplit_once(':').is_some_and(|(h, p)| {
                    host_matches(&h.to_ascii_lowercase()) && crate::identity::mapping::glob_match(p, &port.to_string())
                })
            });
        (!allowed).then(|| Denial {
            rule: "allow_forwarding".into(),
            reason: format!("forwarding to {destination} is not allowed on {}", self.name),
        })
    }

    /// Judge a command line under this resource's command rules: a line matching a denied
    /// pattern is refused, and so is a line the rules cannot see into (opaque) wherever there
    /// are command rules to see with.
    pub fn deny_line(&self, line: &CommandLine) -> Option<Denial> {
        let patterns = &self.guardrails.deny_commands;
        if let Some(pattern) = patterns.iter().find(|p| Pattern::parse(p).is_ok_and(|p| line.matches(&p))) {
            return Some(Denial {
                rule: format!("deny_commands:{pattern}"),
                reason: format!("commands like {pattern:?} are not allowed on {}", self.name),
            });
        }
        let allowed = &self.guardrails.allow_commands;
        if !allowed.is_empty() {
            let allowed: Vec<Pattern> = allowed.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
            if let Some(why) = line.outside(&allowed) {
                return Some(Denial {
                    rule: "allow_commands".into(),
                    reason: format!("{why}; only allowed commands run on {}", self.name),
                });
            }
        }
        let has_rules = !patterns.is_empty() || self.approvals.iter().any(|r| !r.commands.is_empty());
        match &line.opaque {
            Some(why) if has_rules => Some(Denial {
                rule: "opaque_command".into(),
                reason: format!("{why}: the command rules of {} cannot judge it; run the command itself", self.name),
            }),
            _ => None,
        }
    }

    /// Judge one classified statement under this resource's guardrails and the session's access.
    pub fn deny(&self, access: Access, c: &crate::event::Classification) -> Option<Denial> {
        let g = &self.guardrails;
        let deny = |rule: String, reason: String| Some(Denial { rule, reason });
        if let Some(class) = g.deny_classes.iter().find(|class| c.classes.contains(*class)) {
            return deny(
                format!("deny_classes:{class}"),
                format!("{class} statements are not allowed on {}", self.name),
            );
        }
        if g.deny_unbounded_writes && c.unbounded_write {
            return deny(
                "deny_unbounded_writes".into(),
                "a write no condition bounds (no WHERE, or one true for every row)".into(),
            );
        }
        if let Some(function) = named_in(&g.deny_functions, &c.functions) {
            return deny(format!("deny_functions:{function}"), format!("function {function} is not allowed"));
        }
        if let Some(relation) = relation_named_in(&g.deny_relations, &c.relations) {
            return deny(format!("deny_relations:{relation}"), format!("relation {relation} is off limits"));
        }
        // COPY output carries no column names, so column rules could not be applied to it.
        let column_masking = !self.masking.columns.is_empty() && self.masking.apply_to == MaskTarget::AgentAndRecords;
        if column_masking && c.classes.iter().any(|class| class == "copy_to") {
            return deny(
                "masking:copy_to".into(),
                "COPY TO is refused where column masking rules apply (COPY output has no column names); use SELECT"
                    .into(),
            );
        }
        if access == Access::ReadOnly && (c.writes || c.escapes_read_only) {
            return deny("read_only_grant".into(), "the agent's grant is read-only".into());
        }
        None
    }
}

/// An absolute path with `//` and `.` collapsed and `..` resolved; `None` for a relative one.
fn plain_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    Some(format!("/{}", parts.join("/")))
}
