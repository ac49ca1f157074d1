//! The console's sign-in and approvals inbox, over HTTP as a browser speaks it: the control plane
//! sends people to the development issuer (authorization code with PKCE), opens a session in a
//! cookie, shows held commands, and takes an approver's decision from a form. What it refuses:
//! a form without the session's CSRF token, a form from another origin, a reviewer's decision, a
//! replayed sign-in, a signed-out cookie.

use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::{json, Value};
use std::process::{Child, Output};
use tollgate_tests::{eventually, Stack};

const CLIENT: &str = "tollgate-console";

fn policy() -> Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [
            { "name": "destructive", "hold_classes": ["drop"], "approver_groups": ["dba"], "timeout_secs": 120 }
        ]}],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    })
}

/// A stack whose control plane serves the console at a known address, with two people at the
/// development issuer: an approver in `dba`, and a reviewer.
async fn stack() -> (Stack, String) {
    let mut stack = Stack::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let base = format!("http://127.0.0.1:{port}");
    let mut config = stack.control_config();
    config.listen = format!("127.0.0.1:{port}");
    config.console = Some(tollgate_control_plane::config::ConsoleConfig {
        issuer: stack.issuer.url().to_owned(),
        client_id: CLIENT.into(),
        client_secret: None,
        public_url: base.clone(),
        scopes: vec!["openid".into(), "groups".into()],
        session_minutes: 60,
    });
    stack.issuer.add_client(CLIENT, &format!("{base}/console/callback"));
    let claims = |groups: &[&str]| json!({ "groups": groups }).as_object().cloned().unwrap_or_default();
    stack.issuer.add_user("ada", "ada-password", claims(&["approvers", "dba"]));
    stack.issuer.add_user("rita", "rita-password", claims(&["reviewers"]));
    stack.control = tollgate_control_plane::Control::start(config).await.expect("the control plane with a console");
    stack.pg.admin_sql("demo", "CREATE TABLE victims (id int); ALTER TABLE victims OWNER TO app");
    let version = stack.put_policy(&policy()).await;
    eventually(10, "the proxy to load the approval rule", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    (stack, base)
}

/// One person's browser: no redirect followed on its own, the console's cookie kept.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

impl Browser {
    fn new(base: &str) -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Browser { http, base: base.to_owned(), cookie: None }
    }

    async fn read(response: reqwest::Response) -> Page {
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (status, location, set_cookie) = (response.status().as_u16(), header(LOCATION), header(SET_COOKIE));
        Page { status, location, set_cookie, body: response.text().await.expect("body") }
    }

    /// GET `url` (a path of the console, or a whole URL), with the cookie when it is the console's.
    async fn get(&self, url: &str) -> Page {
        let url = if url.starts_with('/') { format!("{}{url}", self.base) } else { url.to_owned() };
        let mut request = self.http.get(&url);
        if let (Some(cookie), true) = (&self.cookie, url.starts_with(&self.base)) {
            request = request.header(COOKIE, cookie);
        }
        Self::read(request.send().await.expect("GET")).await
    }

    /// POST a form to a console path, from the console's origin unless `origin` says otherwise.
    async fn post(&self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
        let mut request =
            self.http.post(format!("{}{path}", self.base)).form(form).header(ORIGIN, origin.unwrap_or(&self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        Self::read(request.send().await.expect("POST")).await
    }

    /// Sign in through the development issuer's form; returns the callback URL it used.
    async fn sign_in(&mut self, user: &str, password: &str) -> String {
        let start = self.get("/console").await;
        assert_eq!((start.status, start.location.as_deref()), (303, Some("/console/login")), "{}", start.body);
        let login = self.get("/console/login").await;
        assert_eq!(login.status, 303, "{}", login.body);
        let authorize = login.location.expect("the identity provider's address");
        assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("nonce="), "{authorize}");
        let form = self.get(&authorize).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let mut fields = hidden_fields(&form.body);
        fields.push(("username".into(), user.into()));
        fields.push(("password".into(), password.into()));
        let issuer = authorize.split("/authorize").next().expect("issuer base").to_owned();
        let sent =
            Self::read(self.http.post(format!("{issuer}/authorize")).form(&fields).send().await.expect("login")).await;
        assert_eq!(sent.status, 303, "{}", sent.body);
        let callback = sent.location.expect("back to the console");
        assert!(callback.starts_with(&format!("{}/console/callback?code=", self.base)), "{callback}");
        let landed = self.get(&callback).await;
        assert_eq!((landed.status, landed.location.as_deref()), (303, Some("/console")), "{}", landed.body);
        let cookie = landed.set_cookie.expect("a session cookie");
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(cookie.contains(attribute), "{attribute} in {cookie}");
        }
        self.cookie = Some(cookie.split(';').next().expect("name=value").to_owned());
        callback
    }

    /// The session's CSRF token, from the sign-out form every page carries.
    async fn csrf(&self) -> String {
        let page = self.get("/console").await;
        let fields = hidden_fields(&page.body);
        fields.into_iter().find(|(k, _)| k == "csrf").map(|(_, v)| v).expect("a CSRF token on the page")
    }
}

/// `name`/`value` of every hidden input.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split(r#"<input type="hidden" name=""#)
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('"')?;
            let value = rest.split_once(r#"value=""#)?.1.split_once('"')?.0;
            let value = value.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">");
            Some((name.to_owned(), value.replace("&amp;", "&")))
        })
        .collect()
}

async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql output")).await.expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_signs_in_and_approves_a_held_command_from_the_inbox() {
    let (stack, base) = stack().await;
    let mut ada = Browser::new(&base);
    let callback = ada.sign_in("ada", "ada-password").await;
    let inbox = ada.get("/console").await;
    assert_eq!(inbox.status, 200, "{}", inbox.body);
    assert!(inbox.body.contains(r#"id="empty""#), "nothing held yet: {}", inbox.body);
    assert!(inbox.body.contains("ada (approver)"), "{}", inbox.body);

    // A sign-in works once: its state and code are spent.
    let replay = Browser::new(&base).get(&callback).await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert!(replay.body.contains("unknown or expired"), "{}", replay.body);

    let child = stack.psql_spawn(&stack.agent_token("deploy-bot"), None, &["-c", "DROP TABLE victims"]);
    let id = eventually(20, "the held command in the inbox", || async {
        let page = ada.get("/console").await;
        let at = page.body.find(r#"id="approve-"#)?;
        Some(page.body[at + 12..at + 48].to_owned())
    })
    .await;
    let inbox = ada.get("/console").await;
    assert!(inbox.body.contains(r#"<code class="statement">DROP TABLE victims</code>"#), "{}", inbox.body);
    assert!(inbox.body.contains("deploy-bot") && inbox.body.contains("rule destructive"), "{}", inbox.body);

    // A reviewer sees the request but no button, and a decision she forges is refused.
    let mut rita = Browser::new(&base);
    rita.sign_in("rita", "rita-password").await;
    let seen = rita.get("/console").await;
    assert!(seen.body.contains("DROP TABLE victims") && !seen.body.contains("id=\"approve-"), "{}", seen.body);
    let rita_csrf = rita.csrf().await;
    let forged = rita.post(&format!("/console/approvals/{id}/approve"), &[("csrf", &rita_csrf)], None).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("approver role"), "{}", forged.body);

    // The approver's own forms: without the CSRF token, or from another site, refused.
    let csrf = ada.csrf().await;
    let no_token = ada.post(&format!("/console/approvals/{id}/approve"), &[("reason", "ok")], None).await;
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    let other_site =
        ada.post(&format!("/console/approvals/{id}/approve"), &[("csrf", &csrf)], Some("https://evil.example")).await;
    assert_eq!(other_site.status, 403, "{}", other_site.body);
    let (_, request) = stack.api(&format!("/api/v1/approvals/{id}")).await;
    assert_eq!(request["status"], "pending", "nothing refused was counted: {request}");
    assert!(!stack.pg.database_log("demo").contains("DROP TABLE victims"), "still held");

    let decided = ada
        .post(&format!("/console/approvals/{id}/approve"), &[("csrf", &csrf), ("reason", "planned cleanup")], None)
        .await;
    assert_eq!(
        (decided.status, decided.location.clone()),
        (303, Some(format!("/console?decided={id}"))),
        "{}",
        decided.body
    );
    let out = finish(child).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stack.pg.database_log("demo").contains("DROP TABLE victims"), "it ran once approved");
    let approved = eventually(20, "the decision to be projected", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (a["status"] == "approved").then_some(a)
    })
    .await;
    assert_eq!(approved["decisions"][0]["channel"], "console", "{approved}");
    assert_eq!(approved["decisions"][0]["approver_name"], "ada", "{approved}");
    assert_eq!(approved["decisions"][0]["reason"], "planned cleanup", "{approved}");
    let after = ada.get("/console").await;
    assert!(after.body.contains(r#"id="empty""#), "the inbox is empty again: {}", after.body);

    // Signing out ends the session on the server: the old cookie leads to the sign-in.
    let out = ada.post("/console/logout", &[("csrf", &csrf)], None).await;
    assert_eq!((out.status, out.location.as_deref()), (303, Some("/console/signed-out")), "{}", out.body);
    assert!(out.set_cookie.as_deref().is_some_and(|c| c.contains("Max-Age=0")), "the cookie is cleared");
    let again = ada.get("/console").await;
    assert_eq!((again.status, again.location.as_deref()), (303, Some("/console/login")), "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_issuer_refuses_a_wrong_password_and_an_unregistered_redirect() {
    let (_stack, base) = stack().await;
    let browser = Browser::new(&base);
    let login = browser.get("/console/login").await;
    let authorize = login.location.expect("the identity provider's address");
    let form = browser.get(&authorize).await;
    let mut fields = hidden_fields(&form.body);
    fields.push(("username".into(), "ada".into()));
    fields.push(("password".into(), "guess".into()));
    let issuer = authorize.split("/authorize").next().expect("issuer base").to_owned();
    let refused =
        Browser::read(browser.http.post(format!("{issuer}/authorize")).form(&fields).send().await.expect("login"))
            .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.location.is_none() && refused.body.contains("wrong password"), "{}", refused.body);

    let elsewhere =
        authorize.replace(&urlencode(&format!("{base}/console/callback")), &urlencode("https://evil.example/cb"));
    assert_ne!(elsewhere, authorize, "the redirect URI was replaced");
    let page = browser.get(&elsewhere).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("redirect_uri is not registered"), "{}", page.body);
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
