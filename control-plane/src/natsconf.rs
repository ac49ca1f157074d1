//! The NATS server configuration Tollgate runs with, generated so that the secure way is the
//! default way: one user per component, each an nkey (the server holds only public keys; each
//! component holds its seed, by reference), with only the subjects it needs:
//!
//! - a proxy publishes its own node's events (`tollgate.events.<node>.>`), reads the policy and
//!   standing-approval buckets, and hears the control plane's decisions;
//! - the control plane publishes its own events, manages the stream, its consumers and the
//!   buckets, and writes the policy and standing approvals;
//! - nobody else gets anything: an anonymous client is refused.
//!
//! Replies come on an inbox prefix per component (`_INBOX_<name>`), so no component can read
//! another's replies.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tollgate_shared::names;

/// Where and how the server listens, and who may connect.
pub struct Plan {
    /// The directory the configuration and the seed files are written to.
    pub dir: PathBuf,
    /// Proxy node names, one user each.
    pub nodes: Vec<String>,
    pub listen: String,
    pub store_dir: PathBuf,
    /// `server_name` (required in a JetStream cluster).
    pub server_name: Option<String>,
    /// TLS for clients: certificate and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub cluster: Option<Cluster>,
    /// Extra `users` entries written as they are (tests add a user of their own).
    pub extra_users: Vec<String>,
}

/// A JetStream cluster: its name, where this server listens for routes, the other servers.
/// Routes authenticate with a secret shared by the cluster's servers (`route.secret` in the
/// plan's directory: generate every server's configuration from the same directory).
pub struct Cluster {
    pub name: String,
    pub listen: String,
    pub routes: Vec<String>,
}

/// The seed file of a component (`control`, or a node name) in `dir`.
pub fn seed_file(dir: &Path, component: &str) -> PathBuf {
    dir.join(format!("{component}.nk"))
}

/// A component's public nkey, from its seed file, made when missing (mode 0600).
fn user_key(dir: &Path, component: &str) -> Result<String, String> {
    let path = seed_file(dir, component);
    let (seed, _) = tollgate_shared::keys::load_or_create(&path, || {
        nkeys::KeyPair::new_user().seed().map(String::into_bytes).map_err(|e| e.to_string())
    })?;
    let seed = String::from_utf8(seed).map_err(|_| format!("{}: not an nkey seed", path.display()))?;
    let pair = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(pair.public_key())
}

/// The secret the servers of a cluster authenticate their routes with, made when missing.
fn route_secret(dir: &Path) -> Result<String, String> {
    let path = dir.join("route.secret");
    let (secret, _) = tollgate_shared::keys::load_or_create(&path, || {
        // From the operating system's generator (ids come from a faster one).
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "no randomness for the route secret".to_owned())?;
        Ok(hex::encode(bytes).into_bytes())
    })?;
    let secret = String::from_utf8(secret).map_err(|_| format!("{}: not a route secret", path.display()))?;
    let secret = secret.trim().to_owned();
    if secret.is_empty() || !secret.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("{}: a route secret is letters and digits", path.display()));
    }
    Ok(secret)
}

/// A route URL with the cluster's credentials (`nats-route://host:port` → `nats-route://route:<secret>@host:port`).
fn route_with_credentials(route: &str, secret: &str) -> Result<String, String> {
    let rest = route
        .strip_prefix("nats-route://")
        .ok_or_else(|| format!("route {route:?}: write it as nats-route://host:port"))?;
    if rest.contains('@') {
        return Err(format!("route {route:?}: credentials come from route.secret, leave them out"));
    }
    Ok(format!("nats-route://route:{secret}@{rest}"))
}

fn quoted(list: &[String]) -> String {
    list.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

/// What a proxy node may do.
pub fn proxy_permissions(node: &str) -> (Vec<String>, Vec<String>) {
    let mut publish = vec![format!("{}.{node}.>", names::SUBJECT_PREFIX), "$JS.API.INFO".into(), "$JS.FC.>".into()];
    publish.push(format!("$JS.API.STREAM.INFO.{}", names::STREAM));
    for bucket in [names::POLICY_BUCKET, names::GRANTS_BUCKET] {
        let stream = format!("KV_{bucket}");
        publish.extend([
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.>"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
        ]);
    }
    let subscribe = vec![format!("_INBOX_{node}.>"), names::decisions_subject(), names::session_ends_subject()];
    (publish, subscribe)
}

/// What the control plane may do.
pub fn control_permissions() -> (Vec<String>, Vec<String>) {
    let control = names::CONTROL_NODE;
    let publish = vec![
        format!("{}.{control}.>", names::SUBJECT_PREFIX),
        "$JS.API.>".into(),
        "$JS.ACK.>".into(),
        "$JS.FC.>".into(),
        format!("$KV.{}.>", names::POLICY_BUCKET),
        format!("$KV.{}.>", names::GRANTS_BUCKET),
    ];
    (publish, vec![format!("_INBOX_{control}.>")])
}

fn user(nkey: &str, (publish, subscribe): (Vec<String>, Vec<String>)) -> String {
    format!(
        "    {{ nkey: \"{nkey}\", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}",
        quoted(&publish),
        quoted(&subscribe)
    )
}

/// The configuration text; makes the seed files it names when missing.
pub fn render(plan: &Plan) -> Result<String, String> {
    for node in &plan.nodes {
        if !names::valid_node(node) {
            return Err(format!("node {node:?}: use letters, digits, - and _ (and not \"control\")"));
        }
    }
    let mut users = vec![user(&user_key(&plan.dir, names::CONTROL_NODE)?, control_permissions())];
    for node in &plan.nodes {
        users.push(user(&user_key(&plan.dir, node)?, proxy_permissions(node)));
    }
    users.extend(plan.extra_users.iter().cloned());
    let mut text = String::from("# Generated by `tollgate-control nats-config`: one nkey user per component.\n");
    let _ = writeln!(text, "listen: \"{}\"", plan.listen);
    if let Some(name) = &plan.server_name {
        let _ = writeln!(text, "server_name: \"{name}\"");
    }
    let _ = writeln!(text, "jetstream {{ store_dir: \"{}\" }}", plan.store_dir.display());
    if let Some((cert, key)) = &plan.tls {
        let _ = writeln!(text, "tls {{ cert_file: \"{}\", key_file: \"{}\" }}", cert.display(), key.display());
    }
    if let Some(cluster) = &plan.cluster {
        if plan.server_name.is_none() {
            return Err("a cluster needs a server name".into());
        }
        let secret = route_secret(&plan.dir)?;
        let routes =
            cluster.routes.iter().map(|r| route_with_credentials(r, &secret)).collect::<Result<Vec<_>, _>>()?;
        let _ = writeln!(
            text,
            "cluster {{ name: \"{}\", listen: \"{}\", authorization {{ user: \"route\", password: \"{secret}\" }}, routes: [{}] }}",
            cluster.name,
            cluster.listen,
            quoted(&routes)
        );
    }
    let _ = writeln!(text, "authorization {{\n  users: [\n{}\n  ]\n}}", users.join(",\n"));
    Ok(text)
}

/// Write `nats-server.conf` (and the seed files) into the plan's directory.
pub fn write(plan: &Plan) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&plan.dir).map_err(|e| format!("{}: {e}", plan.dir.display()))?;
    let text = render(plan)?;
    let path = plan.dir.join("nats-server.conf");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_gets_its_own_key_and_only_its_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            dir: dir.path().to_owned(),
            nodes: vec!["proxy-a".into(), "proxy-b".into()],
            listen: "127.0.0.1:4222".into(),
            store_dir: dir.path().join("store"),
            server_name: None,
            tls: None,
            cluster: None,
            extra_users: Vec::new(),
        };
        let text = render(&plan).unwrap();
        assert!(text.contains("\"tollgate.events.proxy-a.>\""), "{text}");
        assert!(text.contains("\"_INBOX_proxy-b.>\""));
        assert_eq!(text.matches("nkey: \"U").count(), 3, "{text}");
        // The seeds stay where they were made: a second render names the same keys.
        assert_eq!(render(&plan).unwrap(), text);
        let (publish, subscribe) = proxy_permissions("proxy-a");
        assert!(!publish.iter().any(|s| s.starts_with("$KV.") || s.contains("control")), "{publish:?}");
        assert_eq!(
            subscribe,
            [
                "_INBOX_proxy-a.>",
                "tollgate.events.control.approval.decided",
                "tollgate.events.control.session.end_requested"
            ]
        );
        let bad = Plan { nodes: vec!["control".into()], ..plan };
        assert!(render(&bad).is_err());
    }

    #[test]
    fn cluster_routes_carry_the_shared_secret() {
        let dir = tempfile::tempdir().unwrap();
        let plan = |name: &str, route: &str| Plan {
            dir: dir.path().to_owned(),
            nodes: vec!["proxy-a".into()],
            listen: "127.0.0.1:4222".into(),
            store_dir: dir.path().join("store"),
            server_name: Some(name.into()),
            tls: None,
            cluster: Some(Cluster {
                name: "tollgate".into(),
                listen: "0.0.0.0:6222".into(),
                routes: vec![route.into()],
            }),
            extra_users: Vec::new(),
        };
        let one = render(&plan("nats-1", "nats-route://nats-2:6222")).unwrap();
        let two = render(&plan("nats-2", "nats-route://nats-1:6222")).unwrap();
        let secret = std::fs::read_to_string(dir.path().join("route.secret")).unwrap();
        assert_eq!(secret.len(), 64);
        assert!(one.contains(&format!("nats-route://route:{secret}@nats-2:6222")), "{one}");
        assert!(two.contains(&format!("password: \"{secret}\"")), "{two}");
        assert!(render(&plan("nats-1", "nats-route://x:y@nats-2:6222")).is_err(), "credentials in a route");
        assert!(render(&plan("nats-1", "nats://nats-2:6222")).is_err(), "not a route URL");
        let nameless = Plan { server_name: None, ..plan("nats-1", "nats-route://nats-2:6222") };
        assert!(render(&nameless).is_err());
    }
}
