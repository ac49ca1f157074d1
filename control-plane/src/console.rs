//! The console: web pages for the people who review and approve, signed in with their identity
//! provider by the authorization code flow with PKCE (`openidconnect`: discovery, ID token
//! signature, audience, expiry and nonce).
//!
//! Sessions live in Postgres, so any replica serves them and a restart signs no one out. The
//! cookie (`HttpOnly`, `Secure`, `SameSite=Lax`) holds a random id that the database keeps only
//! as its hash. Every form that changes something carries the session's CSRF token, and a
//! request from another origin is refused as well. Roles come from the same group mapping as
//! bearer tokens: the identity provider must be one of the reviewer issuers.

// The helpers below return the page to answer with when they refuse; it is sent at once, never
// stored or passed around, so its size does not matter.
#![allow(clippy::result_large_err)]

mod pages;
mod reports;

use crate::api::{ApiError, AppState, Caller, Role};
use crate::config::ConsoleConfig;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::Deserialize;
use std::time::Duration;
use tollgate_shared::identity::AgentIdentity;
use uuid::Uuid;

/// The session cookie's name (`__Host-`: only this origin may set it, for the whole site).
pub const COOKIE: &str = "__Host-tollgate_console";
/// The cookie that ties a sign-in's callback to the browser that started it.
pub const LOGIN_COOKIE: &str = "__Host-tollgate_login";
/// How long a sign-in may take at the identity provider.
const LOGIN_MINUTES: i64 = 10;
/// Sign-ins under way at once (each waits at most `LOGIN_MINUTES`).
const MAX_PENDING_LOGINS: i64 = 10_000;

type OidcClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// The console of one control plane: its configuration and, once discovered, its client at the
/// identity provider.
pub struct Console {
    config: ConsoleConfig,
    client_secret: Option<String>,
    /// Redirects are never followed (a token endpoint that redirects is refused).
    http: reqwest::Client,
    /// The client as last discovered, and when (discovery runs again, at most once a minute,
    /// when an ID token names a key it does not hold: the provider rotated its keys).
    client: tokio::sync::Mutex<Option<(std::sync::Arc<OidcClient>, std::time::Instant)>>,
    /// The origin forms must come from (`scheme://host[:port]` of `public_url`).
    origin: String,
    /// What changed in the views (`approvals`, `sessions`), for the live pages.
    changes: tokio::sync::broadcast::Sender<&'static str>,
}

impl Console {
    pub fn new(config: ConsoleConfig) -> anyhow::Result<Self> {
        let public = url::Url::parse(&config.public_url)
            .map_err(|e| anyhow::anyhow!("console.public_url {:?}: {e}", config.public_url))?;
        let origin = public.origin().ascii_serialization();
        let client_secret = config.client_secret.as_ref().map(|s| s.resolve()).transpose()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        if !(1..=1440).contains(&config.session_minutes) {
            anyhow::bail!("console.session_minutes is {}: use 1 to 1440", config.session_minutes);
        }
        let loopback = public
            .host_str()
            .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()));
        if public.scheme() != "https" && !loopback {
            anyhow::bail!("console.public_url must be https (plain http only on a loopback address, for development)");
        }
        let (changes, _) = tokio::sync::broadcast::channel(64);
        Ok(Console { config, client_secret, http, client: Default::default(), origin, changes })
    }

    fn redirect_uri(&self) -> String {
        format!("{}/console/callback", self.config.public_url.trim_end_matches('/'))
    }

    /// The client, discovering the provider on first use (it may start after the control plane),
    /// or again when `stale` and the last discovery is over a minute old.
    async fn client(&self, stale: bool) -> Result<std::sync::Arc<OidcClient>, String> {
        let mut cached = self.client.lock().await;
        if let Some((client, at)) = cached.as_ref() {
            if !stale || at.elapsed() < Duration::from_secs(60) {
                return Ok(client.clone());
            }
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| format!("issuer URL: {e}"))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| format!("discovery of {}: {e}", self.config.issuer))?;
        let redirect = RedirectUrl::new(self.redirect_uri()).map_err(|e| format!("redirect URI: {e}"))?;
        let client = std::sync::Arc::new(
            CoreClient::from_provider_metadata(
                metadata,
                ClientId::new(self.config.client_id.clone()),
                self.client_secret.clone().map(ClientSecret::new),
            )
            .set_redirect_uri(redirect),
        );
        *cached = Some((client.clone(), std::time::Instant::now()));
        Ok(client)
    }
}

/// Signatures an ID token may carry: public-key ones only (an HMAC would be keyed with the
/// client secret, which the API never accepts either).
fn allowed_algorithms() -> Vec<openidconnect::core::CoreJwsSigningAlgorithm> {
    use openidconnect::core::CoreJwsSigningAlgorithm as A;
    vec![
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EdDsa,
    ]
}

/// A signed-in person, from their session.
pub struct Person {
    pub identity: AgentIdentity,
    pub caller: Caller,
    pub csrf: String,
}

impl Person {
    pub fn can(&self, roles: &[Role]) -> bool {
        self.caller.has_any(roles)
    }
}

/// Pass on what the views' notifications say changed (migration 0019: the projector's writes
/// notify, whichever replica made them) to the live pages of this replica, until it stops.
pub async fn listen(db: sqlx::PgPool, console: std::sync::Arc<Console>) {
    loop {
        let listened = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&db).await?;
            listener.listen("tollgate_console").await?;
            // Anything may have changed while no one listened.
            let _ = console.changes.send("changed");
            loop {
                let notice = listener.recv().await?;
                let kind = match notice.payload() {
                    "approvals" => "approvals",
                    "sessions" => "sessions",
                    _ => "changed",
                };
                let _ = console.changes.send(kind);
            }
        };
        let result: Result<(), sqlx::Error> = listened.await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "console: listening for view changes failed; again in a second");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::inbox))
        .route("/console/sessions", get(pages::sessions))
        .route("/console/sessions/{id}", get(pages::session))
        .route("/console/events", get(events))
        .route("/console/reports", get(reports::reports))
        .route("/console/policy", get(reports::policy))
        .route("/console/live.js", get(pages::live_script))
        .route("/console/login", get(login))
        .route("/console/callback", get(callback))
        .route("/console/logout", post(logout))
        .route("/console/signed-out", get(pages::signed_out))
        .route("/console/approvals/{id}/{verdict}", post(decide))
        .route("/console/sessions/{id}/end", post(end_session))
}

fn console(state: &AppState) -> Result<&Console, Response> {
    state.console.as_deref().ok_or_else(|| {
        pages::message(StatusCode::NOT_FOUND, "Console not configured", "This control plane has no [console] section.")
    })
}

fn sha256(text: &str) -> String {
    tollgate_shared::event::sha256_hex(text.as_bytes())
}

fn random() -> Result<String, Response> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| pages::message(StatusCode::INTERNAL_SERVER_ERROR, "Error", "No randomness available."))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "console request failed");
    pages::message(StatusCode::INTERNAL_SERVER_ERROR, "Error", "The request failed; the control plane's log says why.")
}

/// The value of the request's cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// The session id in the request's cookie.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

/// The person signed in with this request's cookie, if any.
pub async fn person(state: &AppState, headers: &HeaderMap) -> Result<Option<Person>, Response> {
    let Some(id) = session_cookie(headers) else { return Ok(None) };
    let row: Option<(serde_json::Value, String)> =
        sqlx::query_as("SELECT identity, csrf FROM console_sessions WHERE id_hash = $1 AND expires_at > now()")
            .bind(sha256(id))
            .fetch_optional(&state.db)
            .await
            .map_err(internal)?;
    let Some((identity, csrf)) = row else { return Ok(None) };
    let identity: AgentIdentity = serde_json::from_value(identity).map_err(internal)?;
    let caller = Caller {
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        roles: state.roles.roles_of(&identity.groups),
        identity: identity.clone(),
    };
    Ok(Some(Person { identity, caller, csrf }))
}

/// The signed-in person, or the way to the sign-in.
pub async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Person, Response> {
    match person(state, headers).await? {
        Some(person) => Ok(person),
        None => Err(redirect("/console/login")),
    }
}

/// The signed-in person when they hold one of `roles` (`needs` says what for, in the refusal).
pub async fn signed_in_as(
    state: &AppState,
    headers: &HeaderMap,
    roles: &[Role],
    needs: &str,
) -> Result<Person, Response> {
    let person = signed_in(state, headers).await?;
    if !person.can(roles) {
        return Err(pages::message(StatusCode::FORBIDDEN, "Refused", needs));
    }
    Ok(person)
}

/// Start a sign-in: remember the state, PKCE verifier and nonce, and send the browser to the
/// identity provider.
async fn login(State(state): State<AppState>) -> Response {
    let _ = sqlx::query("DELETE FROM console_logins WHERE expires_at < now()").execute(&state.db).await;
    let console = match console(&state) {
        Ok(c) => c,
        Err(page) => return page,
    };
    // Each call stores a sign-in under way for ten minutes: their number is bounded (the oldest
    // give way), so a flood of calls neither grows the table without end nor locks people out.
    let evicted = sqlx::query(
        "DELETE FROM console_logins WHERE state_hash IN (SELECT state_hash FROM console_logins
         ORDER BY expires_at DESC OFFSET $1)",
    )
    .bind(MAX_PENDING_LOGINS - 1)
    .execute(&state.db)
    .await;
    match evicted {
        Ok(done) if done.rows_affected() > 0 => {
            tracing::warn!(evicted = done.rows_affected(), "console: too many sign-ins under way; the oldest dropped")
        }
        Ok(_) => {}
        Err(e) => return internal(e),
    }
    let client = match console.client(false).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in unavailable");
            return pages::message(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                "The identity provider could not be reached; try again shortly.",
            );
        }
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scopes(console.config.scopes.iter().filter(|s| *s != "openid").map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(challenge)
        .url();
    // The callback counts only in the browser that started the sign-in: a callback URL seen
    // elsewhere (a log, a link sent to someone) signs no one in.
    let browser = match random() {
        Ok(b) => b,
        Err(page) => return page,
    };
    let stored = sqlx::query(
        "INSERT INTO console_logins (state_hash, browser_hash, verifier, nonce, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(mins => $5::int))",
    )
    .bind(sha256(csrf.secret()))
    .bind(sha256(&browser))
    .bind(verifier.secret())
    .bind(nonce.secret())
    .bind(LOGIN_MINUTES as i32)
    .execute(&state.db)
    .await;
    if let Err(e) = stored {
        return internal(e);
    }
    let cookie =
        format!("{LOGIN_COOKIE}={browser}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={}", LOGIN_MINUTES * 60);
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, url.to_string())]).into_response()
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The identity provider sent the browser back: exchange the code (with the PKCE verifier),
/// check the ID token (signature, issuer, audience, expiry, nonce), map its claims to the
/// person and their roles, and open a session.
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Callback>, QueryRejection>,
) -> Response {
    let console = match console(&state) {
        Ok(c) => c,
        Err(page) => return page,
    };
    let refused = |why: &str| {
        tracing::info!(reason = why, "console sign-in refused");
        pages::message(StatusCode::BAD_REQUEST, "Sign-in failed", &format!("{why} Start again from the console."))
    };
    let Ok(Query(callback)) = query else { return refused("The identity provider's answer was malformed.") };
    if let Some(error) = callback.error {
        // Only the standard codes are shown: the parameter is anyone's text.
        const CODES: &[&str] = &[
            "access_denied",
            "login_required",
            "consent_required",
            "interaction_required",
            "server_error",
            "temporarily_unavailable",
            "invalid_request",
            "unauthorized_client",
            "invalid_scope",
        ];
        let code = CODES.iter().find(|c| **c == error).copied().unwrap_or("an error");
        return refused(&format!("The identity provider refused ({code})."));
    }
    let (Some(code), Some(login_state)) = (callback.code, callback.state) else {
        return refused("The answer had no code or no state.");
    };
    let Some(browser) = cookie(&headers, LOGIN_COOKIE) else {
        return refused("This browser did not start this sign-in.");
    };
    // The state is used once, whatever happens next, and only by the browser that started it.
    let pending: Option<(String, String)> = match sqlx::query_as(
        "DELETE FROM console_logins WHERE state_hash = $1 AND browser_hash = $2 AND expires_at > now()
         RETURNING verifier, nonce",
    )
    .bind(sha256(&login_state))
    .bind(sha256(browser))
    .fetch_optional(&state.db)
    .await
    {
        Ok(p) => p,
        Err(e) => return internal(e),
    };
    let Some((verifier, nonce)) = pending else {
        return refused("This sign-in is unknown, expired or not this browser's (each works once, for ten minutes).");
    };
    let client = match console.client(false).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let request = match client.exchange_code(AuthorizationCode::new(code)) {
        Ok(r) => r,
        Err(e) => return internal(format!("the provider has no token endpoint: {e}")),
    };
    let tokens = match request.set_pkce_verifier(PkceCodeVerifier::new(verifier)).request_async(&console.http).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(error = %e, "console code exchange failed");
            return refused("The code could not be exchanged.");
        }
    };
    let Some(id_token) = tokens.id_token() else { return refused("The provider sent no ID token.") };
    let nonce = Nonce::new(nonce);
    let verify = |client: &OidcClient| {
        id_token
            .claims(&client.id_token_verifier().set_allowed_algs(allowed_algorithms()), &nonce)
            .map(|claims| claims.subject().as_str().to_owned())
    };
    let subject = match verify(&client) {
        Ok(subject) => subject,
        Err(first) => {
            // Perhaps a key the provider rotated in since discovery: discover again, once.
            let retried = match console.client(true).await {
                Ok(fresh) if !std::sync::Arc::ptr_eq(&fresh, &client) => verify(&fresh).map_err(|e| e.to_string()),
                _ => Err(first.to_string()),
            };
            match retried {
                Ok(subject) => subject,
                Err(e) => {
                    tracing::info!(error = %e, "console ID token refused");
                    return refused("The ID token did not verify.");
                }
            }
        }
    };
    // Its signature verified above: read every claim of that exact token for the mapping.
    let identity = match tollgate_shared::token::peek_claims(&id_token.to_string())
        .map_err(|e| e.to_string())
        .and_then(|claims| state.reviewers.identify_claims(&console.config.issuer, &subject, &claims))
    {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!(error = %e, "console identity mapping refused");
            return refused("Your identity provider's claims map to no identity here.");
        }
    };
    let (session, csrf) = match (random(), random()) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(page), _) | (_, Err(page)) => return page,
    };
    let identity_json = match serde_json::to_value(&identity) {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let opened = sqlx::query(
        "INSERT INTO console_sessions (id_hash, identity, csrf, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(mins => $4::int))",
    )
    .bind(sha256(&session))
    .bind(identity_json)
    .bind(&csrf)
    .bind(i32::try_from(console.config.session_minutes).unwrap_or(i32::MAX))
    .execute(&state.db)
    .await;
    if let Err(e) = opened {
        return internal(e);
    }
    // A session this browser had before is over (no one keeps a session they did not open).
    if let Some(previous) = session_cookie(&headers) {
        let _ = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(sha256(previous))
            .execute(&state.db)
            .await;
    }
    let _ = sqlx::query("DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'")
        .execute(&state.db)
        .await;
    tracing::info!(person = %identity.name, issuer = %identity.issuer, "console sign-in");
    let cookie = format!(
        "{COOKIE}={session}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={}",
        console.config.session_minutes * 60
    );
    let spent = format!("{LOGIN_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0");
    let mut response = redirect("/console");
    for value in [cookie, spent] {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Live pages hear about changes at most this often.
const EVENT_SPACING: Duration = Duration::from_secs(1);

/// One live page's stream: what changed, its session to re-check, when it last heard.
struct Watch {
    changes: tokio::sync::broadcast::Receiver<&'static str>,
    ticks: tokio::time::Interval,
    db: sqlx::PgPool,
    id_hash: String,
    last: tokio::time::Instant,
}

/// Server-sent events for the live pages: `approvals` or `sessions` when the views change
/// (`changed` when the replica may have missed some), for as long as the console session that
/// opened the stream lasts.
async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, Sse};
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    // Not signed in (any more): 204 tells the browser's EventSource to stop reconnecting.
    let person = match person(&state, &headers).await {
        Ok(Some(p)) => p,
        Ok(None) => return StatusCode::NO_CONTENT.into_response(),
        Err(page) => return page,
    };
    if !person.can(crate::api::READ_APPROVAL_ROLES) {
        return pages::message(StatusCode::FORBIDDEN, "Refused", "Live updates need a console role.");
    }
    let (Ok(console), Some(id)) = (console(&state), session_cookie(&headers)) else {
        return redirect("/console/login");
    };
    let watch = Watch {
        changes: console.changes.subscribe(),
        ticks: tokio::time::interval(Duration::from_secs(15)),
        db: state.db.clone(),
        id_hash: sha256(id),
        last: tokio::time::Instant::now() - EVENT_SPACING,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        let event = tokio::select! {
            change = w.changes.recv() => {
                let mut kind = match change {
                    Ok(kind) => kind,
                    Err(RecvError::Lagged(_)) => "changed",
                    Err(RecvError::Closed) => return None,
                };
                // At most one event a second per page, whatever agents do: what changed
                // meanwhile is folded into it.
                tokio::time::sleep_until(w.last + EVENT_SPACING).await;
                loop {
                    match w.changes.try_recv() {
                        Ok(more) if more == kind => {}
                        Ok(_) | Err(TryRecvError::Lagged(_)) => kind = "changed",
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Closed) => return None,
                    }
                }
                w.last = tokio::time::Instant::now();
                Event::default().event(kind).data(kind)
            },
            _ = w.ticks.tick() => {
                let alive: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM console_sessions WHERE id_hash = $1 AND expires_at > now())",
                )
                .bind(&w.id_hash)
                .fetch_one(&w.db)
                .await
                .unwrap_or(false);
                if !alive {
                    return None;
                }
                Event::default().comment("open")
            }
        };
        Some((Ok::<_, std::convert::Infallible>(event), w))
    });
    Sse::new(stream).into_response()
}

/// A form that changes something: the CSRF token it carries, and where it comes from.
#[derive(Deserialize)]
pub struct Change {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    grant_minutes: Option<String>,
}

/// Refuse a form without this session's CSRF token, or sent from another origin.
fn check_form(state: &AppState, person: &Person, headers: &HeaderMap, form: &Change) -> Result<(), Response> {
    let console = console(state)?;
    let same_origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).is_none_or(|o| o == console.origin);
    let token_ok = crate::web::same_secret(form.csrf.as_bytes(), person.csrf.as_bytes());
    if !same_origin || !token_ok {
        return Err(pages::message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form is not from your console session (missing or wrong CSRF token, or another site).",
        ));
    }
    Ok(())
}

/// The person and the form of a request that changes something, once its CSRF token and origin
/// checked out.
async fn change(
    state: &AppState,
    headers: &HeaderMap,
    form: Result<Form<Change>, FormRejection>,
) -> Result<(Person, Change), Response> {
    let person = signed_in(state, headers).await?;
    let Ok(Form(form)) = form else {
        return Err(pages::message(StatusCode::BAD_REQUEST, "Refused", "Malformed form."));
    };
    check_form(state, &person, headers, &form)?;
    Ok((person, form))
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Change>, FormRejection>,
) -> Response {
    if let Err(page) = change(&state, &headers, form).await {
        return page;
    }
    if let Some(id) = session_cookie(&headers) {
        if let Err(e) =
            sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1").bind(sha256(id)).execute(&state.db).await
        {
            return internal(e);
        }
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0");
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/console/signed-out".to_owned())])
        .into_response()
}

/// Approve or deny from the inbox: an approver's decision, taken exactly as the REST API takes
/// it (approver groups, one vote per person, self-approval rules), recorded with channel
/// `console`.
async fn decide(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, verdict)): Path<(Uuid, String)>,
    form: Result<Form<Change>, FormRejection>,
) -> Response {
    let verdict = match verdict.as_str() {
        "approve" => tollgate_shared::event::Verdict::Approve,
        "deny" => tollgate_shared::event::Verdict::Deny,
        _ => return pages::message(StatusCode::NOT_FOUND, "Not found", "Decide with approve or deny."),
    };
    let (person, form) = match change(&state, &headers, form).await {
        Ok(checked) => checked,
        Err(page) => return page,
    };
    if !person.can(crate::api::APPROVE_ROLES) {
        return pages::message(StatusCode::FORBIDDEN, "Refused", "Deciding needs the approver role.");
    }
    let grant_minutes = match form.grant_minutes.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        None => None,
        Some(text) => match text.parse::<u32>() {
            Ok(minutes) => Some(minutes),
            Err(_) => return pages::message(StatusCode::BAD_REQUEST, "Refused", "Minutes must be a whole number."),
        },
    };
    let reason = form.reason.filter(|r| !r.trim().is_empty());
    let decision = crate::api::approvals::Decision {
        verdict,
        channel: tollgate_shared::event::Channel::Console,
        reason,
        grant_minutes,
    };
    match crate::api::approvals::decide_or_refuse(&state, &person.identity, id, decision).await {
        Ok(_) => redirect(&format!("/console?decided={id}")),
        Err(e) => refusal(e),
    }
}

/// The page for what the API refused.
fn refusal(e: ApiError) -> Response {
    match e {
        ApiError::Forbidden(why) => pages::message(StatusCode::FORBIDDEN, "Refused", &why),
        ApiError::NotFound(why) => pages::message(StatusCode::NOT_FOUND, "Not found", &why),
        ApiError::Conflict(why) => pages::message(StatusCode::CONFLICT, "Already done", &why),
        ApiError::BadRequest(why) => pages::message(StatusCode::BAD_REQUEST, "Refused", &why),
        e => internal(e),
    }
}

/// End a live session (approvers): the same request as the REST API's, recorded with channel
/// `console`; the proxy holding the session closes it.
async fn end_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    form: Result<Form<Change>, FormRejection>,
) -> Response {
    let Ok(Path(id)) = id else { return pages::message(StatusCode::NOT_FOUND, "Not found", "No such session.") };
    let (person, form) = match change(&state, &headers, form).await {
        Ok(checked) => checked,
        Err(page) => return page,
    };
    if !person.can(crate::api::APPROVE_ROLES) {
        return pages::message(StatusCode::FORBIDDEN, "Refused", "Ending a session needs the approver role.");
    }
    let channel = tollgate_shared::event::Channel::Console;
    match crate::api::sessions::end(&state, &person.identity, id, channel, form.reason).await {
        Ok(_) => redirect(&format!("/console/sessions/{id}?ending=1")),
        Err(e) => refusal(e),
    }
}
