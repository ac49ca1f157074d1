//! The whole system for one test: PostgreSQL (upstream and projections), NATS JetStream, a test
//! OIDC issuer, one proxy and one control plane.

use super::{init, NatsServer, PgServer};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use tollgate_control_plane::config::ControlConfig;
use tollgate_control_plane::dev_issuer::DevIssuer;
use tollgate_control_plane::Control;
use tollgate_data_plane::config::ProxyConfig;
use tollgate_data_plane::Proxy;

/// Audience of agent tokens (what proxies accept).
pub const AGENT_AUDIENCE: &str = "tollgate";
/// Audience of reviewer tokens (what the API accepts): distinct, so an agent token is useless there.
pub const REVIEWER_AUDIENCE: &str = "tollgate-api";

pub struct Stack {
    pub pg: PgServer,
    pub nats: NatsServer,
    /// The other servers of a JetStream cluster (empty for a single server).
    pub peers: Vec<NatsServer>,
    pub issuer: Arc<DevIssuer>,
    pub proxy: Proxy,
    pub control: Control,
    pub upstream_password: String,
    pub dir: tempfile::TempDir,
    issuer_task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
    /// Whether dropping the stack checks the upstream's statement log against the record.
    check_log_at_drop: bool,
    /// Seeds and CA of a cluster (kept until the stack is dropped).
    cluster_keys: Option<tempfile::TempDir>,
}

impl Drop for Stack {
    /// Every test ends by proving the upstream's statement log against the record (unless it
    /// already failed): nothing ran upstream that the record does not show as allowed.
    fn drop(&mut self) {
        self.issuer_task.abort();
        if std::thread::panicking() || !self.check_log_at_drop {
            return;
        }
        if let Err(problem) = self.check_upstream_log() {
            panic!("the upstream's statement log does not match the record:\n{problem}");
        }
    }
}

impl Stack {
    pub async fn start() -> Stack {
        init();
        let nats = NatsServer::start().await;
        Self::start_on(nats, Vec::new(), 1).await
    }

    /// The stack on a three-server JetStream cluster, the stream and buckets replicated three times.
    pub async fn start_clustered() -> Stack {
        init();
        let keys = tempfile::tempdir().expect("cluster keys dir");
        let ports: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let peers: Vec<u16> = routes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect();
            let server =
                NatsServer::start_clustered(ports[i], keys.path(), &format!("nats-{i}"), routes[i], &peers).await;
            servers.push(server);
        }
        let nats = servers.remove(0);
        let mut stack = Self::start_on(nats, servers, 3).await;
        stack.cluster_keys = Some(keys);
        stack
    }

    async fn start_on(nats: NatsServer, peers: Vec<NatsServer>, replicas: usize) -> Stack {
        let pg = PgServer::start().await;
        let upstream_password = format!("upstream-{}", uuid::Uuid::new_v4().simple());
        pg.admin_sql("postgres", &format!("CREATE ROLE app LOGIN PASSWORD '{upstream_password}'"));
        pg.admin_sql("postgres", "CREATE DATABASE demo OWNER app");
        pg.admin_sql("postgres", "CREATE DATABASE tollgate");
        let urls = nats_urls(&nats, &peers);

        let (issuer, issuer_task) = start_issuer().await;

        let dir = tempfile::tempdir().expect("stack dir");
        std::fs::write(dir.path().join("upstream.pw"), format!("{upstream_password}\n")).expect("password file");

        // proxy-a's node key exists before the control plane starts, which trusts it by
        // configuration (other proxies' keys are pending until an admin trusts them).
        let node_key_file = dir.path().join("proxy-a.key");
        let (signer, der) = tollgate_shared::event::SessionSigner::generate().expect("node key");
        std::fs::write(&node_key_file, der).expect("node key file");
        // The control plane first, so the proxy finds a policy when it starts.
        let key_file = dir.path().join("control.key");
        let mut config = control_config(&pg, &nats, &urls, &issuer, &key_file);
        config.nodes.trusted = vec![signer.public_hex()];
        config.nats.replicas = replicas;
        let control = Control::start(config).await.expect("control plane starts");
        // The control plane creates the stream and buckets in the background (NATS may be away).
        let harness = nats.client().await;
        let js = async_nats::jetstream::new(harness);
        super::eventually(60, "the control plane to create the policy bucket", || async {
            js.get_key_value(tollgate_shared::names::POLICY_BUCKET).await.ok().map(|_| ())
        })
        .await;
        put_policy(&reqwest::Client::new(), control.addr, &issuer, 0, &default_policy()).await;
        let setup =
            ProxySetup { password_file: dir.path().join("upstream.pw"), control_key: control.public_key.clone() };
        let mut config = proxy_config(&pg, &nats, &urls, &issuer, &setup, "proxy-a");
        config.node.key_file = Some(node_key_file);
        let proxy = Proxy::start(config).await.expect("proxy starts");
        assert_eq!(proxy.policy_version(), Some(1), "the proxy loaded the policy at start");
        Stack {
            pg,
            nats,
            peers,
            issuer,
            proxy,
            control,
            upstream_password,
            dir,
            issuer_task,
            http: reqwest::Client::new(),
            check_log_at_drop: true,
            cluster_keys: None,
        }
    }

    /// Make `document` the next policy version (as an admin); returns the new version.
    pub async fn put_policy(&self, document: &Value) -> u64 {
        let (_, live) = self.api("/api/v1/policy").await;
        let base = live["version"].as_u64().unwrap_or(0);
        put_policy(&self.http, self.control.addr, &self.issuer, base, document).await
    }

    /// Make `document` the policy and wait until the proxy enforces it; returns its version.
    pub async fn enforce(&self, document: &Value) -> u64 {
        let version = self.put_policy(document).await;
        super::eventually(10, "the proxy to enforce the policy", || async {
            (self.proxy.policy_version() == Some(version)).then_some(())
        })
        .await;
        version
    }

    /// Wait for the one pending approval request, approve it as `who` (in `groups`) with
    /// `reason` over REST, and return its id.
    pub async fn approve_pending(&self, who: &str, groups: &[&str], reason: &str) -> String {
        let pending = super::eventually(20, "a pending approval request", || async {
            let (_, list) = self.api("/api/v1/approvals?status=pending").await;
            list.as_array().and_then(|items| items.first().cloned())
        })
        .await;
        let id = pending["id"].as_str().expect("approval id").to_owned();
        let token = self.person_token(who, groups);
        let body = serde_json::json!({ "reason": reason });
        let (status, answer) =
            self.api_send("POST", &format!("/api/v1/approvals/{id}/approve"), Some(&token), Some(&body)).await;
        assert_eq!(status, 202, "{answer}");
        id
    }

    /// Configuration for another proxy node on the same NATS, issuer and upstream.
    pub fn proxy_config(&self, node: &str) -> ProxyConfig {
        let setup = ProxySetup {
            password_file: self.dir.path().join("upstream.pw"),
            control_key: self.control.public_key.clone(),
        };
        proxy_config(&self.pg, &self.nats, &self.nats_urls(), &self.issuer, &setup, node)
    }

    /// Restart proxy-a (same node key) serving SSH too, with `host` as resource `name`, its
    /// host key pinned as `pinned` (the host's own key unless a test says otherwise).
    pub async fn serve_ssh(&mut self, host: &super::SshHost, name: &str, pinned: Option<&str>) {
        let mut config = self.proxy_config("proxy-a");
        config.node.key_file = Some(self.dir.path().join("proxy-a.key"));
        // The gateway's own host key (for `ssh-cert` to pin) and its user CA, made once.
        let (host_key, user_ca) = (self.dir.path().join("ssh_gateway_host"), self.dir.path().join("ssh_user_ca"));
        for key in [&host_key, &user_ca] {
            if !key.exists() {
                super::ssh::keygen(key);
            }
        }
        let listener = format!(
            "listen = \"127.0.0.1:0\"\nhost_key = \"file:{}\"\nuser_ca = \"file:{}\"\n",
            host_key.display(),
            user_ca.display()
        );
        config.ssh = Some(toml::from_str(&listener).expect("ssh listener config"));
        // The gateway logs in with the key it holds, or with a certificate from the host's CA.
        let credential = match &host.ca_key {
            Some(ca) => format!("ca = \"file:{}\"", ca.display()),
            None => format!("key = \"file:{}\"", host.gateway_key.display()),
        };
        let resource = format!(
            "name = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\n{credential}\nhost_key = \"{pinned}\"\n",
            port = host.port,
            user = host.user,
            pinned = pinned.unwrap_or(&host.host_key),
        );
        config.ssh_resources = vec![toml::from_str(&resource).expect("ssh resource config")];
        self.proxy = Proxy::start(config).await.expect("proxy with SSH starts");
    }

    /// The SSH gateway's host key (public, OpenSSH format), once `serve_ssh` ran.
    pub fn ssh_gateway_key(&self) -> String {
        let path = self.dir.path().join("ssh_gateway_host.pub");
        std::fs::read_to_string(path).expect("the gateway's host key (serve_ssh first)").trim().to_owned()
    }

    /// Configuration for another control-plane replica (same database, NATS and issuer).
    pub fn control_config(&self) -> ControlConfig {
        let mut config =
            control_config(&self.pg, &self.nats, &self.nats_urls(), &self.issuer, &self.dir.path().join("control.key"));
        // Trusts proxy-a's node key, as the first replica does.
        config.nodes.trusted = vec![self.proxy.node_key.clone()];
        config
    }

    /// A fresh agent token for `subject`, with GitHub-Actions-like claims.
    pub fn agent_token(&self, subject: &str) -> String {
        let mut extra = serde_json::Map::new();
        extra.insert("repository".into(), "acme/orders".into());
        extra.insert("workflow".into(), "deploy".into());
        extra.insert("run_id".into(), "4242".into());
        self.issuer.mint(subject, AGENT_AUDIENCE, 600, &extra).expect("mint agent token")
    }

    /// A reviewer's token (group `reviewers`, which grants the reviewer role).
    pub fn reviewer_token(&self) -> String {
        self.person_token("alice@example.com", &["reviewers"])
    }

    /// An API token for `subject` in `groups` (`reviewers`, `auditors`, `approvers`, `admins`
    /// grant the role of the same name).
    pub fn person_token(&self, subject: &str, groups: &[&str]) -> String {
        let mut extra = serde_json::Map::new();
        extra.insert("groups".into(), serde_json::json!(groups));
        self.issuer.mint(subject, REVIEWER_AUDIENCE, 600, &extra).expect("mint person token")
    }

    /// A libpq-style connection string to the proxy for the `demo` resource.
    pub fn agent_dsn(&self, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=demo user=ci-bot password={token} sslmode=disable",
            self.proxy.postgres_addr.port()
        )
    }

    /// Connect with tokio-postgres (extended protocol) through the proxy.
    pub async fn agent_client(&self, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.agent_dsn(token), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// psql as the `ci-bot` agent against the proxy (or `port`, e.g. a tap), output captured.
    fn psql_command(&self, token: &str, port: Option<u16>, args: &[&str], stdin: Stdio) -> Command {
        let port = port.unwrap_or(self.proxy.postgres_addr.port()).to_string();
        let mut command = Command::new(self.pg.bin("psql"));
        command
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port, "-U", "ci-bot", "-d", "demo"])
            .args(args)
            .env("PGPASSWORD", token)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Start psql through the proxy without waiting for it (for statements that are held).
    pub fn psql_spawn(&self, token: &str, port: Option<u16>, args: &[&str]) -> std::process::Child {
        self.psql_command(token, port, args, Stdio::null()).spawn().expect("psql runs")
    }

    /// Run the real psql through the proxy (or through `port` when given, e.g. a tap).
    pub fn psql(&self, token: &str, port: Option<u16>, args: &[&str], stdin: Option<&str>) -> Output {
        let input = if stdin.is_some() { Stdio::piped() } else { Stdio::null() };
        let mut command = self.psql_command(token, port, args, input);
        let mut child = command.spawn().expect("psql runs");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(input.as_bytes()).expect("psql stdin");
        }
        child.wait_with_output().expect("psql output")
    }

    /// GET an API path with a reviewer token.
    /// A value of the control plane's `/metrics` (0 when the line is absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let response =
            self.http.get(format!("http://{}/metrics", self.control.addr)).send().await.expect("metrics endpoint");
        let text = response.text().await.expect("metrics text");
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    }

    pub async fn api(&self, path: &str) -> (u16, Value) {
        self.api_as(path, Some(&self.reviewer_token())).await
    }

    pub async fn api_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.api_send("GET", path, token, None).await
    }

    /// GET an API path as a reviewer, as text: status, content type, body.
    pub async fn api_text(&self, path: &str) -> (u16, String, String) {
        let url = format!("http://{}{path}", self.control.addr);
        let response = self.http.get(url).bearer_auth(self.reviewer_token()).send().await.expect("API reachable");
        let status = response.status().as_u16();
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        (status, kind, response.text().await.expect("a text body"))
    }

    /// Any method, with a JSON body when given.
    pub async fn api_send(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut request = self.http.request(method, format!("http://{}{path}", self.control.addr));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("API reachable");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Wait until the API shows exactly `n` ended sessions for `resource`, newest first.
    pub async fn ended_sessions(&self, n: usize) -> Vec<Value> {
        super::eventually(30, "sessions to be projected", || async {
            let (status, page) = self.api("/api/v1/sessions?resource=demo").await;
            let items = page["items"].as_array()?.clone();
            let ended = items.iter().filter(|s| !s["ended_at"].is_null()).count();
            (status == 200 && items.len() >= n && ended >= n).then_some(items)
        })
        .await
    }

    /// For the test of the check itself, which runs statements behind the proxy's back.
    pub fn skip_log_check_at_drop(&mut self) {
        self.check_log_at_drop = false;
    }

    /// The statement-log check (see `upstream_log`), callable mid-test too. Reads the stream on
    /// a thread of its own, so it works from `Drop` inside a runtime.
    pub fn check_upstream_log(&self) -> Result<usize, String> {
        let (url, seed, ca) = (self.nats_urls(), self.nats.seed_file("harness"), self.nats.ca_file());
        let events = std::thread::spawn(move || -> Result<Vec<Value>, String> {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let read = tokio::time::timeout(std::time::Duration::from_secs(20), read_stream(&url, &seed, &ca));
                let messages = read.await.map_err(|_| "timed out reading the event stream".to_owned())??;
                messages
                    .iter()
                    .map(|m| serde_json::from_slice(m).map_err(|e| format!("unreadable event: {e}")))
                    .collect()
            })
        })
        .join()
        .map_err(|_| "the stream reader panicked".to_owned())??;
        let log = self.pg.json_log().map_err(|e| format!("cannot read the upstream's JSON log: {e}"))?;
        super::upstream_log::verify(&log, &events)
    }

    /// Every NATS server's URL, comma-separated (what components are configured with).
    pub fn nats_urls(&self) -> String {
        nats_urls(&self.nats, &self.peers)
    }

    /// Every event on the stream, as published (a batch message's events one by one).
    pub async fn stream_messages(&self) -> Vec<Vec<u8>> {
        let client = self.nats.client().await;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(tollgate_shared::names::STREAM).await.expect("stream");
        let last = stream.info().await.expect("stream info").state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(message) = stream.get_raw_message(seq).await {
                let events = tollgate_shared::stream::events_in(&message.subject, &message.payload);
                out.extend(events.into_iter().map(<[u8]>::to_vec));
            }
        }
        out
    }
}

/// The policy every test starts with: the test resources, and every agent may do anything.
pub fn default_policy() -> Value {
    let resources: Vec<Value> = ["demo", "demo_md5", "demo_clear"]
        .iter()
        .map(|name| serde_json::json!({ "name": name, "kind": "postgres", "labels": { "env": "test" } }))
        .collect();
    serde_json::json!({
        "resources": resources,
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "labels": { "env": "test" } }, "access": "admin" }]
    })
}

async fn put_policy(
    http: &reqwest::Client,
    api: std::net::SocketAddr,
    issuer: &DevIssuer,
    base: u64,
    document: &Value,
) -> u64 {
    let mut extra = serde_json::Map::new();
    extra.insert("groups".into(), serde_json::json!(["admins"]));
    let admin = issuer.mint("policy-admin@example.com", REVIEWER_AUDIENCE, 600, &extra).expect("mint admin token");
    let body = serde_json::json!({ "base_version": base, "document": document, "comment": "test setup" });
    let response = http
        .put(format!("http://{api}/api/v1/policy"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .expect("policy API");
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "policy refused: {status} {answer}");
    answer["version"].as_u64().expect("new version")
}

/// A test OIDC issuer (discovery + JWKS) on a free port; abort the task to stop it.
pub async fn start_issuer() -> (Arc<DevIssuer>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("issuer bind");
    let issuer_url = format!("http://{}", listener.local_addr().expect("issuer addr"));
    let issuer = Arc::new(DevIssuer::new(issuer_url).expect("issuer keys"));
    let router = issuer.clone().router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (issuer, task)
}

/// What a proxy of the stack is given besides the servers: the upstream password file and the
/// control plane's public key.
struct ProxySetup {
    password_file: std::path::PathBuf,
    control_key: String,
}

fn nats_urls(nats: &NatsServer, peers: &[NatsServer]) -> String {
    std::iter::once(nats).chain(peers).map(NatsServer::url).collect::<Vec<_>>().join(",")
}

fn proxy_config(
    pg: &PgServer,
    nats: &NatsServer,
    urls: &str,
    issuer: &DevIssuer,
    setup: &ProxySetup,
    node: &str,
) -> ProxyConfig {
    let text = format!(
        r#"
[node]
name = "{node}"
[nats]
url = "{nats}"
nkey = "file:{seed}"
ca_file = "{ca}"
publish_timeout_ms = 1500
[postgres]
listen = "127.0.0.1:0"
[[agent_issuers]]
issuer = "{issuer}"
audience = ["{AGENT_AUDIENCE}"]
min_refresh_secs = 1
[[resources]]
name = "demo"
host = "127.0.0.1"
port = {port}
database = "demo"
user = "app"
password = "file:{password}"
[control]
public_key = "{control_key}"
"#,
        nats = urls,
        seed = nats.seed_file(node).display(),
        ca = nats.ca_file().display(),
        issuer = issuer.url(),
        port = pg.port,
        password = setup.password_file.display(),
        control_key = setup.control_key,
    );
    toml::from_str(&text).expect("proxy config parses")
}

fn control_config(
    pg: &PgServer,
    nats: &NatsServer,
    urls: &str,
    issuer: &DevIssuer,
    key_file: &std::path::Path,
) -> ControlConfig {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
database_url = "{db}"
signing_key_file = "{key_file}"
[nats]
url = "{nats}"
nkey = "file:{seed}"
ca_file = "{ca}"
[[reviewer_issuers]]
issuer = "{issuer}"
audience = ["{REVIEWER_AUDIENCE}"]
mapping = {{ groups_claim = "groups" }}
[roles]
reviewer = ["reviewers"]
auditor = ["auditors"]
approver = ["approvers"]
admin = ["admins"]
"#,
        db = pg.superuser_url("tollgate"),
        nats = urls,
        seed = nats.seed_file("control").display(),
        ca = nats.ca_file().display(),
        issuer = issuer.url(),
        key_file = key_file.display(),
    );
    toml::from_str(&text).expect("control config parses")
}

/// Every event on the stream (batches split), or why it cannot be read.
async fn read_stream(url: &str, seed: &std::path::Path, ca: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let seed = std::fs::read_to_string(seed).map_err(|e| format!("harness seed: {e}"))?;
    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        .custom_inbox_prefix("_INBOX_harness")
        .add_root_certificates(ca.to_owned())
        .require_tls(true)
        .connect(tollgate_shared::stream::servers(url).as_slice())
        .await
        .map_err(|e| format!("cannot reach NATS for the event stream: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(tollgate_shared::names::STREAM).await.map_err(|e| format!("event stream: {e}"))?;
    let last = stream.info().await.map_err(|e| format!("event stream info: {e}"))?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        match stream.get_raw_message(seq).await {
            Ok(message) => {
                let events = tollgate_shared::stream::events_in(&message.subject, &message.payload);
                out.extend(events.into_iter().map(<[u8]>::to_vec));
            }
            // A deleted sequence (de-duplicated publish) holds nothing.
            Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(format!("event {seq}: {e}")),
        }
    }
    Ok(out)
}
