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
    stack.issuer.add_user("ada", "ada-password", claims(&["reviewers", "approvers", "dba"]));
    stack.issuer.add_user("rita", "rita-password", claims(&["reviewers"]));
    stack.issuer.add_user("olga", "olga-password", claims(&["approvers"]));
    stack.control = tollgate_control_plane::Control::start(config).await.expect("the control plane with a console");
    stack.pg.admin_sql("demo", "CREATE TABLE victims (id int); ALTER TABLE victims OWNER TO app");
    let version = stack.put_policy(&policy()).await;
    eventually(10, "the proxy to load the approval rule", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    (stack, base)
}

/// One person's browser: no redirect followed on its own, the console's cookies kept.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: std::collections::BTreeMap<String, String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    /// Every `Set-Cookie` of the answer.
    set_cookies: Vec<String>,
    body: String,
}

const SESSION: &str = "__Host-tollgate_console";

impl Browser {
    fn new(base: &str) -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Browser { http, base: base.to_owned(), cookies: Default::default() }
    }

    async fn read(response: reqwest::Response) -> Page {
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let set_cookies =
            response.headers().get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
        Page { status: response.status().as_u16(), location, set_cookies, body: response.text().await.expect("body") }
    }

    /// Keep (or drop, at `Max-Age=0`) what the console set.
    fn keep(&mut self, page: &Page) {
        for cookie in &page.set_cookies {
            let Some((name, value)) = cookie.split(';').next().and_then(|p| p.split_once('=')) else { continue };
            if cookie.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.cookies.is_empty())
            .then(|| self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }

    /// GET `url` (a path of the console, or a whole URL), with the cookie when it is the console's.
    async fn get(&self, url: &str) -> Page {
        let url = if url.starts_with('/') { format!("{}{url}", self.base) } else { url.to_owned() };
        let mut request = self.http.get(&url);
        if let (Some(cookie), true) = (self.cookie_header(), url.starts_with(&self.base)) {
            request = request.header(COOKIE, cookie);
        }
        Self::read(request.send().await.expect("GET")).await
    }

    /// GET and keep the cookies the console set.
    async fn visit(&mut self, url: &str) -> Page {
        let page = self.get(url).await;
        self.keep(&page);
        page
    }

    /// POST a form to a console path, from the console's origin unless `origin` says otherwise.
    async fn post(&self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
        let mut request =
            self.http.post(format!("{}{path}", self.base)).form(form).header(ORIGIN, origin.unwrap_or(&self.base));
        if let Some(cookie) = self.cookie_header() {
            request = request.header(COOKIE, cookie);
        }
        Self::read(request.send().await.expect("POST")).await
    }

    /// Go as far as the identity provider's answer: the callback URL it sends the browser to.
    async fn until_callback(&mut self, user: &str, password: &str) -> String {
        let start = self.get("/console").await;
        assert_eq!((start.status, start.location.as_deref()), (303, Some("/console/login")), "{}", start.body);
        let login = self.visit("/console/login").await;
        assert_eq!(login.status, 303, "{}", login.body);
        assert!(self.cookies.contains_key("__Host-tollgate_login"), "the sign-in is tied to this browser");
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
        callback
    }

    /// Sign in through the development issuer's form; returns the callback URL it used.
    async fn sign_in(&mut self, user: &str, password: &str) -> String {
        let callback = self.until_callback(user, password).await;
        let landed = self.visit(&callback).await;
        assert_eq!((landed.status, landed.location.as_deref()), (303, Some("/console")), "{}", landed.body);
        let cookie = landed.set_cookies.iter().find(|c| c.starts_with(SESSION)).expect("a session cookie");
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(cookie.contains(attribute), "{attribute} in {cookie}");
        }
        assert!(!self.cookies.contains_key("__Host-tollgate_login"), "the sign-in's cookie is spent");
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

/// The request once its approval is projected, decided in the console.
async fn approved_in_the_console(stack: &Stack, id: &str) -> Value {
    let approved = eventually(20, "the decision to be projected", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (a["status"] == "approved").then_some(a)
    })
    .await;
    assert_eq!(approved["decisions"][0]["channel"], "console", "{approved}");
    approved
}

async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql output")).await.expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_signs_in_and_approves_a_held_command_from_the_inbox() {
    let (stack, base) = stack().await;
    // A callback URL seen elsewhere (a log, a link sent to someone) signs no one in, and does
    // not spend the sign-in of the browser that started it.
    let mut ada = Browser::new(&base);
    let early = ada.until_callback("ada", "ada-password").await;
    let mut mallory = Browser::new(&base);
    let stolen = mallory.visit(&early).await;
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    assert!(!mallory.cookies.contains_key(SESSION), "no session for another browser");
    let landed = ada.visit(&early).await;
    assert_eq!((landed.status, landed.location.as_deref()), (303, Some("/console")), "{}", landed.body);
    let session = ada.cookies.get(SESSION).cloned().expect("ada's session");
    let callback = early;
    let inbox = ada.get("/console").await;
    assert_eq!(inbox.status, 200, "{}", inbox.body);
    assert!(inbox.body.contains(r#"id="empty""#), "nothing held yet: {}", inbox.body);
    assert!(inbox.body.contains("ada (reviewer, approver)"), "{}", inbox.body);

    // A sign-in works once: its state and code are spent.
    let mut again = Browser::new(&base);
    again.visit("/console/login").await;
    let replay = again.get(&callback).await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert!(replay.body.contains("unknown, expired"), "{}", replay.body);

    // The statement as the agent wrote it, markup and a right-to-left override included: shown
    // as text, never as markup, and the override as its code.
    // The live stream: only for a signed-in person, and it says when approvals change.
    let anonymous = Browser::new(&base).get("/console/events").await;
    assert_eq!(anonymous.status, 204, "no stream, and no reconnecting, without a sign-in");
    let mut events = ada
        .http
        .get(format!("{base}/console/events"))
        .header(COOKIE, ada.cookie_header().expect("ada's cookie"))
        .send()
        .await
        .expect("the event stream");
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let statement = "DROP TABLE victims /* <script>alert(1)</script> \"><form action=x> \u{202E}kcab */";
    let child = stack.psql_spawn(&stack.agent_token("deploy-bot"), None, &["-c", statement]);
    let mut streamed = String::new();
    while !streamed.contains("event: approvals") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), events.chunk())
            .await
            .expect("an event within 20 s")
            .expect("the stream reads")
            .expect("the stream stays open");
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(events);
    let id = eventually(20, "the held command in the inbox", || async {
        let page = ada.get("/console").await;
        let at = page.body.find(r#"id="approve-"#)?;
        Some(page.body[at + 12..at + 48].to_owned())
    })
    .await;
    let inbox = ada.get("/console").await;
    assert!(
        inbox.body.contains(
            r#"<code class="statement">DROP TABLE victims /* &lt;script&gt;alert(1)&lt;/script&gt; &quot;&gt;&lt;form action=x&gt; \u{202E}kcab */</code>"#
        ),
        "{}",
        inbox.body
    );
    assert!(!inbox.body.contains("<script>") && !inbox.body.contains('\u{202E}'), "{}", inbox.body);
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

    // An approver outside the request's approver groups is refused too.
    let mut olga = Browser::new(&base);
    olga.sign_in("olga", "olga-password").await;
    let olga_csrf = olga.csrf().await;
    let outside = olga.post(&format!("/console/approvals/{id}/approve"), &[("csrf", &olga_csrf)], None).await;
    assert_eq!(outside.status, 403, "{}", outside.body);

    // The approver's own forms: without the CSRF token, with another session's, or from another
    // site, refused.
    let csrf = ada.csrf().await;
    let borrowed = ada.post(&format!("/console/approvals/{id}/approve"), &[("csrf", &rita_csrf)], None).await;
    assert_eq!(borrowed.status, 403, "{}", borrowed.body);
    let no_token = ada.post(&format!("/console/approvals/{id}/approve"), &[("reason", "ok")], None).await;
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    let other_site =
        ada.post(&format!("/console/approvals/{id}/approve"), &[("csrf", &csrf)], Some("https://evil.example")).await;
    assert_eq!(other_site.status, 403, "{}", other_site.body);
    let (_, request) = stack.api(&format!("/api/v1/approvals/{id}")).await;
    assert_eq!(request["status"], "pending", "nothing refused was counted: {request}");
    let control = stack.psql(&stack.agent_token("deploy-bot"), None, &["-c", "SELECT 'positive-control'"], None);
    assert!(control.status.success(), "{}", String::from_utf8_lossy(&control.stderr));
    assert!(stack.pg.database_log("demo").contains("positive-control"), "the log holds what ran (positive control)");
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
    let approved = approved_in_the_console(&stack, &id).await;
    assert_eq!(approved["decisions"][0]["approver_name"], "ada", "{approved}");
    assert_eq!(approved["decisions"][0]["reason"], "planned cleanup", "{approved}");
    let after = ada.get("/console").await;
    assert!(after.body.contains(r#"id="empty""#), "the inbox is empty again: {}", after.body);

    // The approvals report for the last hour shows her decision; its CSV is the API's.
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M").to_string();
    let report = ada.get(&format!("/console/reports?report=approvals&from={from}")).await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(report.body.contains(r#"id="report""#) && report.body.contains("planned cleanup"), "{}", report.body);
    assert!(!report.body.contains("<script>alert"), "agent text is escaped in reports: {}", report.body);
    labelled(&report.body);
    let csv = ada
        .http
        .get(format!("{base}/console/reports?report=approvals&from={from}&format=csv"))
        .header(COOKIE, ada.cookie_header().expect("cookie"))
        .send()
        .await
        .expect("the CSV");
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(csv.headers()["content-disposition"]
        .to_str()
        .expect("ascii")
        .starts_with("attachment; filename=\"tollgate-approvals-"));
    let downloaded = csv.text().await.expect("text");
    let api_from = format!("{from}:00Z");
    let (_, _, from_api) =
        stack.api_text(&format!("/api/v1/reviews/approvals?from={api_from}&format=csv&limit=1000")).await;
    assert_eq!(downloaded.lines().next(), from_api.lines().next(), "the same columns as the API's CSV");
    assert!(
        downloaded.contains("planned cleanup") && downloaded.lines().count() == from_api.lines().count(),
        "{downloaded}"
    );
    let bad = ada.get("/console/reports?report=approvals&from=yesterday").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    // The policy page: the version in force and what each version changed.
    let policy = ada.get("/console/policy").await;
    assert_eq!(policy.status, 200, "{}", policy.body);
    assert!(
        policy.body.contains("In force: version 2") && policy.body.contains(r#"id="version-1""#),
        "{}",
        policy.body
    );
    assert!(policy.body.contains("destructive"), "the approval rule in the live policy: {}", policy.body);

    // Signing out ends the session on the server: the old cookie leads to the sign-in.
    let out = ada.post("/console/logout", &[("csrf", &csrf)], None).await;
    assert_eq!((out.status, out.location.as_deref()), (303, Some("/console/signed-out")), "{}", out.body);
    assert!(out.set_cookies.iter().any(|c| c.starts_with(SESSION) && c.contains("Max-Age=0")), "the cookie is cleared");
    ada.keep(&out);
    ada.cookies.insert(SESSION.into(), session.clone());
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

/// chromedriver on a free port, stopped with the test.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver runs (scripts/install-deps.sh installs chromium-driver)");
    eventually(20, "chromedriver to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    Driver { child, url: format!("http://127.0.0.1:{port}") }
}

async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({ "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,900",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
        ] }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshot(name: &str, png: &[u8]) {
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/screenshots"));
    std::fs::create_dir_all(&dir).expect("the screenshots directory");
    std::fs::write(dir.join(name), png).expect("a screenshot");
    assert!(png.len() > 10_000, "{name}: a rendered page ({} bytes)", png.len());
}

/// Every visible form control has a label naming it (`<label for=id>`).
fn labelled(html: &str) {
    for input in html.split("<input").skip(1) {
        let tag = input.split('>').next().unwrap_or_default();
        if tag.contains(r#"type="hidden""#) {
            continue;
        }
        let id = tag.split(r#"id=""#).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
        assert!(!id.is_empty() && html.contains(&format!(r#"for="{id}""#)), "an unlabelled control: <input{tag}>");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_an_approver_signs_in_sees_the_held_command_and_approves_it() {
    use fantoccini::Locator;
    let (stack, base) = stack().await;
    let driver = chromedriver().await;
    let browser = browser(&driver).await;

    browser.goto(&format!("{base}/console")).await.expect("open the console");
    browser.wait().for_element(Locator::Id("username")).await.expect("the sign-in form");
    assert!(browser.current_url().await.expect("url").as_str().contains("/authorize?"), "sent to the issuer");
    labelled(&browser.source().await.expect("source"));
    browser.find(Locator::Id("username")).await.expect("user field").send_keys("ada").await.expect("type");
    browser.find(Locator::Id("password")).await.expect("password field").send_keys("ada-password").await.expect("type");
    browser.find(Locator::Id("sign-in")).await.expect("button").click().await.expect("sign in");
    if browser.wait().for_element(Locator::Id("who")).await.is_err() {
        panic!("not signed in: {}", browser.source().await.unwrap_or_default());
    }
    assert_eq!(browser.current_url().await.expect("url").as_str(), format!("{base}/console"));

    // The inbox is live: once its script listens, a held command appears without a reload
    // (the marker set on this page survives).
    browser.wait().for_element(Locator::Css("#live[data-listening='yes']")).await.expect("the live script listens");
    browser.execute("window.tollgateMarker = 'this page'; return true;", vec![]).await.expect("script runs");
    assert!(browser.source().await.expect("source").contains(r#"id="empty""#), "nothing held yet");
    let child = stack.psql_spawn(&stack.agent_token("deploy-bot"), None, &["-c", "DROP TABLE victims"]);
    browser.wait().for_element(Locator::Css("tr.pending")).await.expect("the held command appears by itself");
    let marker = browser.execute("return window.tollgateMarker;", vec![]).await.expect("script runs");
    assert_eq!(marker, json!("this page"), "the page was updated in place, not reloaded");
    let status = browser.find(Locator::Id("live-status")).await.expect("status").text().await.expect("text");
    assert!(status.starts_with("Updated at"), "{status}");
    let source = browser.source().await.expect("source");
    let at = source.find(r#"id="approve-"#).expect("an approve button");
    let id = source[at + 12..at + 48].to_owned();
    assert!(source.contains("DROP TABLE victims"), "{source}");
    labelled(&source);
    screenshot("console-inbox.png", &browser.screenshot().await.expect("screenshot"));

    // With the keyboard only: type the reason and press Enter (the form's first button approves).
    let reason = browser.find(Locator::Id(&format!("reason-{id}"))).await.expect("reason");
    reason.send_keys(&format!("planned{}", char::from(fantoccini::key::Key::Enter))).await.expect("type and submit");
    browser.wait().for_element(Locator::Id("decided")).await.expect("the decision acknowledged");
    let out = finish(child).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stack.pg.database_log("demo").contains("DROP TABLE victims"), "the statement ran once approved");
    approved_in_the_console(&stack, &id).await;

    browser.goto(&format!("{base}/console/sessions?decision=hold")).await.expect("sessions");
    browser.wait().for_element(Locator::Css("tr.session")).await.expect("a session listed");
    labelled(&browser.source().await.expect("source"));
    screenshot("console-sessions.png", &browser.screenshot().await.expect("screenshot"));
    // Its transcript: the held statement, its approval by ada in the console, and a record
    // that verifies (once the session's end is projected).
    browser.find(Locator::Css("tr.session a")).await.expect("the session's link").click().await.expect("open");
    browser.wait().for_element(Locator::Id("transcript")).await.expect("the transcript");
    let mut page = String::new();
    for _ in 0..40 {
        browser.refresh().await.expect("reload");
        page = browser.source().await.expect("source");
        if page.contains("Trusted: complete") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(page.contains("Trusted: complete"), "the session's record verifies: {page}");
    assert!(page.contains("DROP TABLE victims"), "{page}");
    assert!(page.contains("approve by ada via console"), "{page}");
    screenshot("console-session.png", &browser.screenshot().await.expect("screenshot"));
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M").to_string();
    browser.goto(&format!("{base}/console/reports?report=approvals&from={from}")).await.expect("reports");
    browser.wait().for_element(Locator::Css("#report tr.row")).await.expect("the approvals report");
    screenshot("console-reports.png", &browser.screenshot().await.expect("screenshot"));
    browser.goto(&format!("{base}/console/policy")).await.expect("policy");
    browser.wait().for_element(Locator::Id("live-policy")).await.expect("the policy in force");
    labelled(&browser.source().await.expect("source"));
    screenshot("console-policy.png", &browser.screenshot().await.expect("screenshot"));

    browser.find(Locator::Id("sign-out")).await.expect("sign out").click().await.expect("sign out");
    browser.wait().for_element(Locator::Id("message")).await.expect("signed out");
    browser.goto(&format!("{base}/console")).await.expect("open the console again");
    browser.wait().for_element(Locator::Id("username")).await.expect("back at the sign-in form");
    browser.close().await.expect("close the browser");
}

/// Live sessions in the console: listed while they run, with their transcript; an approver
/// ends one (a reviewer may not, and neither may a form without the session's CSRF token), and
/// the agent is told who ended it and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_ends_a_live_session_from_the_console() {
    let (stack, base) = stack().await;
    let (client, connection) =
        tokio_postgres::connect(&stack.agent_dsn(&stack.agent_token("night-bot")), tokio_postgres::NoTls)
            .await
            .expect("the agent connects");
    let ended = tokio::spawn(async move {
        connection.await.err().and_then(|e| e.as_db_error().map(|db| db.message().to_owned())).unwrap_or_default()
    });
    client.simple_query("SELECT 'working late'").await.expect("a statement runs");

    let mut ada = Browser::new(&base);
    ada.sign_in("ada", "ada-password").await;
    let id = eventually(15, "the live session in the console", || async {
        let page = ada.get("/console/sessions?live=true&agent=night-bot").await;
        let at = page.body.find(r#"id="session-"#)?;
        Some(page.body[at + 12..at + 48].to_owned())
    })
    .await;
    let detail = eventually(15, "the session's statement in its transcript", || async {
        let page = ada.get(&format!("/console/sessions/{id}")).await;
        (page.status == 200 && page.body.contains("SELECT &#39;working late&#39;")).then_some(page)
    })
    .await;
    assert!(detail.body.contains("still running"), "{}", detail.body);
    assert!(detail.body.contains(r#"id="end-session""#), "an approver may end it: {}", detail.body);
    labelled(&detail.body);

    let mut rita = Browser::new(&base);
    rita.sign_in("rita", "rita-password").await;
    let seen = rita.get(&format!("/console/sessions/{id}")).await;
    assert!(seen.status == 200 && !seen.body.contains(r#"id="end-session""#), "{}", seen.body);
    let rita_csrf = rita.csrf().await;
    let forged = rita.post(&format!("/console/sessions/{id}/end"), &[("csrf", &rita_csrf)], None).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let no_token = ada.post(&format!("/console/sessions/{id}/end"), &[("reason", "x")], None).await;
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    // Positive control: after both refusals the session still runs statements.
    client.simple_query("SELECT 'still working'").await.expect("the session goes on");

    let csrf = ada.csrf().await;
    let done =
        ada.post(&format!("/console/sessions/{id}/end"), &[("csrf", &csrf), ("reason", "after hours")], None).await;
    assert_eq!(
        (done.status, done.location.as_deref()),
        (303, Some(format!("/console/sessions/{id}?ending=1").as_str()))
    );
    let told = tokio::time::timeout(std::time::Duration::from_secs(10), ended).await.expect("ends").expect("joined");
    assert_eq!(told, "tollgate: this session was ended by ada: after hours");
    let page = eventually(15, "the end in the console", || async {
        let page = ada.get(&format!("/console/sessions/{id}")).await;
        page.body.contains("ended_by_person").then_some(page)
    })
    .await;
    assert!(!page.body.contains(r#"id="end-session""#), "an ended session offers no end: {}", page.body);
    let (_, session) = stack.api(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(session["end_detail"], "ended by ada: after hours", "{session}");
}

/// The development issuer's code exchange: PKCE required and checked, the client named, each
/// code used once, the nonce carried into the ID token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_issuer_exchanges_a_code_once_with_its_verifier() {
    use base64::Engine;
    let (stack, base) = stack().await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let issuer = stack.issuer.url().to_owned();
    let redirect = format!("{base}/console/callback");
    let verifier = "a-verifier-of-at-least-forty-three-characters-0123456789";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    let code = || async {
        let fields = [
            ("response_type", "code"),
            ("client_id", CLIENT),
            ("redirect_uri", redirect.as_str()),
            ("scope", "openid"),
            ("state", "s"),
            ("nonce", "n-123"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("username", "ada"),
            ("password", "ada-password"),
        ];
        let sent =
            Browser::read(http.post(format!("{issuer}/authorize")).form(&fields).send().await.expect("login")).await;
        assert_eq!(sent.status, 303, "{}", sent.body);
        let location = sent.location.expect("redirect");
        let url = url::Url::parse(&location).expect("a URL");
        url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("a code")
    };
    let exchange = |code: String, verifier: &'static str, client: Option<&'static str>| {
        let (http, issuer, redirect) = (http.clone(), issuer.clone(), redirect.clone());
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", redirect),
                ("code_verifier", verifier.to_owned()),
            ];
            if let Some(client) = client {
                form.push(("client_id", client.to_owned()));
            }
            let response = http.post(format!("{issuer}/token")).form(&form).send().await.expect("token");
            (response.status().as_u16(), response.json::<Value>().await.expect("json"))
        }
    };

    let first = code().await;
    let (status, body) =
        exchange(first.clone(), "the-wrong-verifier-of-forty-three-characters-0123456789", Some(CLIENT)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let (status, body) = exchange(first, verifier, Some(CLIENT)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "a code is spent by any attempt: {body}"
    );

    let (status, body) = exchange(code().await, verifier, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "the client must be named: {body}");

    let (status, body) = exchange(code().await, verifier, Some(CLIENT)).await;
    assert_eq!(status, 200, "{body}");
    let claims = tollgate_shared::token::peek_claims(body["id_token"].as_str().expect("an ID token")).expect("claims");
    assert_eq!(
        (claims["nonce"].as_str(), claims["aud"].as_str(), claims["sub"].as_str()),
        (Some("n-123"), Some(CLIENT), Some("ada"))
    );
    assert_eq!(claims["groups"], json!(["reviewers", "approvers", "dba"]));
}
