//! DEVELOPMENT ONLY: a local OIDC issuer for the quickstart and the tests. It serves a discovery
//! document and a JWKS, and mints ES256 tokens for any subject on request. Anyone who can run it
//! can mint tokens, so it is off unless started explicitly, binds to loopback only, and must
//! never be listed as an issuer in production.
//!
//! For people it also signs in test users with the authorization code flow (PKCE S256 required):
//! `/authorize` shows a login form, `/token` exchanges the code for an ID token carrying the
//! user's claims and the request's nonce. For command lines it runs the device authorization
//! grant (RFC 8628): `/device_authorization` hands out a device code and a user code, the user
//! signs in at `/device` with that code, and `/token` answers the polling client.

use axum::extract::{Form, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// One signing key.
struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    /// Uncompressed P-256 point: 0x04 || x || y.
    public: Vec<u8>,
}

impl SigningKey {
    fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        Self::from_pkcs8(doc.as_ref().to_vec())
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| anyhow::anyhow!("not a P-256 PKCS#8 key"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = tollgate_shared::event::sha256_hex(&public)[..16].to_owned();
        Ok(SigningKey { kid, pkcs8, public })
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&self.public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.public[33..65]),
        })
    }
}

/// The issuer: its URL and its keys (the newest signs; older ones stay published).
pub struct DevIssuer {
    url: String,
    keys: RwLock<Vec<SigningKey>>,
    /// How often the JWKS was fetched (tests check that verifiers do not hammer issuers).
    jwks_fetches: std::sync::atomic::AtomicU64,
    people: RwLock<People>,
}

/// Test users, registered clients and codes not yet exchanged.
#[derive(Default)]
struct People {
    /// User name → password and the claims their tokens carry.
    users: BTreeMap<String, (String, serde_json::Map<String, Value>)>,
    /// Client id → the redirect URIs it registered.
    clients: BTreeMap<String, Vec<String>>,
    codes: HashMap<String, IssuedCode>,
    /// Clients that sign in with the device grant (command lines); no browser client may.
    device_clients: std::collections::BTreeSet<String>,
    /// Device code → a device authorization waiting for its user.
    devices: HashMap<String, DeviceGrant>,
}

/// A device authorization (RFC 8628): the code its user types, and what they answered.
struct DeviceGrant {
    client_id: String,
    user_code: String,
    until: Instant,
    /// When the client may poll again (polling sooner gets `slow_down`).
    next_poll: Instant,
    answer: DeviceAnswer,
}

#[derive(Clone)]
enum DeviceAnswer {
    Waiting,
    Allowed { user: String },
    Denied,
}

/// How long a device code and its user code last.
const DEVICE_TTL: Duration = Duration::from_secs(600);
/// Device sign-ins under way at once.
const MAX_DEVICE_GRANTS: usize = 1000;
/// The polling interval device clients are told to keep.
const DEVICE_INTERVAL: Duration = Duration::from_secs(1);
/// The grant type a device client polls with.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

impl People {
    /// A test user's password, compared in constant time.
    fn check_password(&self, user: &str, password: &str) -> Result<(), String> {
        let valid = self
            .users
            .get(user)
            .is_some_and(|(expected, _)| crate::web::same_secret(expected.as_bytes(), password.as_bytes()));
        if valid {
            Ok(())
        } else {
            Err("unknown user name or wrong password".into())
        }
    }
}

/// A code handed to a client, for one exchange within a minute.
struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    user: String,
    until: Instant,
}

/// How long a code may wait for its exchange.
const CODE_TTL: Duration = Duration::from_secs(60);
/// How long the ID tokens of signed-in users last.
const ID_TOKEN_TTL_SECS: i64 = 600;

/// The parameters of an authorization request (as query, then as hidden form fields).
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizeParams {
    #[serde(default)]
    response_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
}

#[derive(Debug, Deserialize)]
pub struct Login {
    #[serde(flatten)]
    request: AuthorizeParams,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    code_verifier: String,
    #[serde(default)]
    device_code: String,
}

/// A device authorization request.
#[derive(Debug, Deserialize)]
pub struct DeviceRequest {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    scope: String,
}

/// The user's answer at the verification page.
#[derive(Debug, Deserialize)]
pub struct DeviceLogin {
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// `allow` or `deny`.
    #[serde(default)]
    answer: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct DevicePage {
    #[serde(default)]
    user_code: String,
}

impl DevIssuer {
    pub fn new(url: impl Into<String>) -> anyhow::Result<Self> {
        Ok(DevIssuer {
            url: url.into(),
            keys: RwLock::new(vec![SigningKey::generate()?]),
            jwks_fetches: Default::default(),
            people: Default::default(),
        })
    }

    /// Use the key stored at `path`, creating it on first use (so tokens survive restarts).
    pub fn with_key_file(url: impl Into<String>, path: &Path) -> anyhow::Result<Self> {
        let key = match std::fs::read(path) {
            Ok(der) => SigningKey::from_pkcs8(der)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate()?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, &key.pkcs8)?;
                key
            }
            Err(e) => return Err(e.into()),
        };
        Ok(DevIssuer {
            url: url.into(),
            keys: RwLock::new(vec![key]),
            jwks_fetches: Default::default(),
            people: Default::default(),
        })
    }

    /// JWKS requests served so far.
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks_fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Start signing with a new key; `keep_old` leaves the previous keys in the JWKS.
    pub fn rotate(&self, keep_old: bool) -> anyhow::Result<()> {
        let key = SigningKey::generate()?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if !keep_old {
            keys.clear();
        }
        keys.push(key);
        Ok(())
    }

    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        json!({ "keys": keys.iter().map(SigningKey::jwk).collect::<Vec<_>>() })
    }

    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/jwks", self.url),
            "authorization_endpoint": format!("{}/authorize", self.url),
            "token_endpoint": format!("{}/token", self.url),
            "device_authorization_endpoint": format!("{}/device_authorization", self.url),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["code", "id_token"],
            "grant_types_supported": ["authorization_code", DEVICE_GRANT],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": ["openid", "profile", "groups"],
            "subject_types_supported": ["public"],
        })
    }

    /// A test user who can sign in with `password`; their ID tokens carry `claims` (`groups`,
    /// `name`...) besides the standard ones.
    pub fn add_user(&self, name: &str, password: &str, claims: serde_json::Map<String, Value>) {
        self.people().users.insert(name.to_owned(), (password.to_owned(), claims));
    }

    /// A client (public, PKCE) allowed to receive codes at `redirect_uri`.
    pub fn add_client(&self, client_id: &str, redirect_uri: &str) {
        self.people().clients.entry(client_id.to_owned()).or_default().push(redirect_uri.to_owned());
    }

    /// A client that signs in with the device grant only (a command line: no redirect URI).
    pub fn add_device_client(&self, client_id: &str) {
        self.people().device_clients.insert(client_id.to_owned());
    }

    fn people(&self) -> std::sync::RwLockWriteGuard<'_, People> {
        self.people.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Why an authorization request cannot go on (before any redirect: the client or its
    /// redirect URI is not known, so errors are shown here, not sent there).
    fn check_request(&self, request: &AuthorizeParams) -> Result<(), String> {
        let people = self.people.read().unwrap_or_else(|p| p.into_inner());
        let registered = people.clients.get(&request.client_id).ok_or("unknown client_id")?;
        if !registered.contains(&request.redirect_uri) {
            return Err("redirect_uri is not registered for this client".into());
        }
        if request.response_type != "code" {
            return Err("response_type must be code".into());
        }
        if !request.scope.split(' ').any(|s| s == "openid") {
            return Err("scope must include openid".into());
        }
        if request.code_challenge_method != "S256" || request.code_challenge.len() < 43 {
            return Err("PKCE with code_challenge_method S256 is required".into());
        }
        Ok(())
    }

    /// The login form for an authorization request.
    fn login_page(&self, request: &AuthorizeParams, error: Option<&str>) -> Response {
        let hidden = |name: &str, value: &str| {
            format!(r#"<input type="hidden" name="{name}" value="{}">"#, crate::web::escape(value))
        };
        let fields = [
            hidden("response_type", &request.response_type),
            hidden("client_id", &request.client_id),
            hidden("redirect_uri", &request.redirect_uri),
            hidden("scope", &request.scope),
            hidden("state", request.state.as_deref().unwrap_or("")),
            hidden("nonce", request.nonce.as_deref().unwrap_or("")),
            hidden("code_challenge", &request.code_challenge),
            hidden("code_challenge_method", &request.code_challenge_method),
        ]
        .concat();
        let error =
            error.map(|e| format!(r#"<p role="alert" id="error">{}</p>"#, crate::web::escape(e))).unwrap_or_default();
        let body = format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in (development issuer)</title></head>
<body><main><h1>Sign in</h1><p><strong>Development issuer: never use it in production.</strong></p>{error}
<form method="post" action="/authorize">{fields}
<p><label for="username">User name</label> <input id="username" name="username" autocomplete="username" required autofocus></p>
<p><label for="password">Password</label> <input id="password" name="password" type="password" autocomplete="current-password" required></p>
<p><button type="submit" id="sign-in">Sign in</button></p></form></main></body></html>"#
        );
        let status = if error.is_empty() { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
        // The form posts here and is redirected to the client: browsers hold redirects after a
        // form to the same policy, so the (registered) redirect URI's origin is allowed too.
        let client =
            url::Url::parse(&request.redirect_uri).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
        let policy = format!("default-src 'none'; form-action 'self' {client}; frame-ancestors 'none'");
        (status, [(header::CONTENT_SECURITY_POLICY, policy)], Html(body)).into_response()
    }

    /// Check the user's password and send the browser back to the client with a code.
    fn sign_in(&self, login: &Login) -> Result<String, String> {
        let mut people = self.people();
        people.check_password(&login.username, &login.password)?;
        let code = random_token()?;
        let now = Instant::now();
        people.codes.retain(|_, c| c.until > now);
        let request = &login.request;
        people.codes.insert(
            code.clone(),
            IssuedCode {
                client_id: request.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                challenge: request.code_challenge.clone(),
                nonce: request.nonce.clone().filter(|n| !n.is_empty()),
                user: login.username.clone(),
                until: now + CODE_TTL,
            },
        );
        let mut target = url::Url::parse(&request.redirect_uri).map_err(|e| format!("redirect_uri: {e}"))?;
        target.query_pairs_mut().append_pair("code", &code);
        if let Some(state) = request.state.as_deref().filter(|s| !s.is_empty()) {
            target.query_pairs_mut().append_pair("state", state);
        }
        Ok(target.to_string())
    }

    /// Exchange a code (once, by the client it was issued to, with the PKCE verifier) for an
    /// ID token.
    fn exchange(&self, request: &TokenRequest) -> Result<Value, &'static str> {
        if request.grant_type == DEVICE_GRANT {
            return self.poll_device(request);
        }
        if request.grant_type != "authorization_code" {
            return Err("unsupported_grant_type");
        }
        let mut people = self.people();
        let issued = people.codes.remove(&request.code).ok_or("invalid_grant")?;
        let verifier_hash =
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, request.code_verifier.as_bytes()));
        let valid = issued.until > Instant::now()
            && issued.redirect_uri == request.redirect_uri
            && request.client_id.as_deref() == Some(issued.client_id.as_str())
            && crate::web::same_secret(verifier_hash.as_bytes(), issued.challenge.as_bytes());
        if !valid {
            return Err("invalid_grant");
        }
        let (_, claims) = people.users.get(&issued.user).ok_or("invalid_grant")?;
        let mut extra = claims.clone();
        if let Some(nonce) = &issued.nonce {
            extra.insert("nonce".into(), Value::String(nonce.clone()));
        }
        self.tokens_for(&issued.user, &issued.client_id, extra)
    }

    /// The token response for `user` at `client_id`: an ID token, which is also the access token.
    fn tokens_for(
        &self,
        user: &str,
        client_id: &str,
        extra: serde_json::Map<String, Value>,
    ) -> Result<Value, &'static str> {
        let id_token = self.mint(user, client_id, ID_TOKEN_TTL_SECS, &extra).map_err(|_| "server_error")?;
        Ok(
            json!({ "access_token": id_token, "id_token": id_token, "token_type": "Bearer", "expires_in": ID_TOKEN_TTL_SECS }),
        )
    }

    /// Start a device authorization for a registered client: a device code for it to poll with,
    /// and a short code for its user to type at the verification page.
    fn start_device(&self, request: &DeviceRequest) -> Result<Value, &'static str> {
        if !request.scope.is_empty() && !request.scope.split(' ').any(|s| s == "openid") {
            return Err("invalid_scope");
        }
        let mut people = self.people();
        if !people.device_clients.contains(&request.client_id) {
            return Err("invalid_client");
        }
        let device_code = random_token().map_err(|_| "server_error")?;
        let user_code = user_code().map_err(|_| "server_error")?;
        let now = Instant::now();
        people.devices.retain(|_, d| d.until > now);
        if people.devices.len() >= MAX_DEVICE_GRANTS {
            return Err("slow_down");
        }
        people.devices.insert(
            device_code.clone(),
            DeviceGrant {
                client_id: request.client_id.clone(),
                user_code: user_code.clone(),
                until: now + DEVICE_TTL,
                next_poll: now,
                answer: DeviceAnswer::Waiting,
            },
        );
        Ok(json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": format!("{}/device", self.url),
            "verification_uri_complete": format!("{}/device?user_code={user_code}", self.url),
            "expires_in": DEVICE_TTL.as_secs(),
            "interval": DEVICE_INTERVAL.as_secs(),
        }))
    }

    /// A device client polls: still waiting, too soon, refused, expired, or its tokens (once).
    fn poll_device(&self, request: &TokenRequest) -> Result<Value, &'static str> {
        let mut people = self.people();
        let now = Instant::now();
        let grant = people.devices.get_mut(&request.device_code).ok_or("invalid_grant")?;
        if request.client_id.as_deref() != Some(grant.client_id.as_str()) {
            return Err("invalid_grant");
        }
        if grant.until <= now {
            people.devices.remove(&request.device_code);
            return Err("expired_token");
        }
        let answer = grant.answer.clone();
        if matches!(answer, DeviceAnswer::Waiting) {
            let early = now < grant.next_poll;
            grant.next_poll = now + DEVICE_INTERVAL;
            return Err(if early { "slow_down" } else { "authorization_pending" });
        }
        let Some(grant) = people.devices.remove(&request.device_code) else { return Err("invalid_grant") };
        let DeviceAnswer::Allowed { user } = answer else { return Err("access_denied") };
        let (_, claims) = people.users.get(&user).ok_or("invalid_grant")?;
        let claims = claims.clone();
        drop(people);
        self.tokens_for(&user, &grant.client_id, claims)
    }

    /// The user's answer at the verification page: their password, the code their device shows,
    /// and allow or deny.
    fn answer_device(&self, login: &DeviceLogin) -> Result<&'static str, String> {
        let mut people = self.people();
        people.check_password(&login.username, &login.password)?;
        let typed = normalize_user_code(&login.user_code);
        let now = Instant::now();
        let grant = people
            .devices
            .values_mut()
            .find(|d| d.until > now && matches!(d.answer, DeviceAnswer::Waiting) && d.user_code == typed)
            .ok_or("this code is unknown, expired or already used")?;
        if login.answer == "deny" {
            grant.answer = DeviceAnswer::Denied;
            Ok("Refused. The device is not signed in.")
        } else {
            grant.answer = DeviceAnswer::Allowed { user: login.username.clone() };
            Ok("Signed in. You may go back to your device.")
        }
    }

    /// The verification page: the code from the device, the user's name and password, and
    /// which client asked (a code someone else sent you signs *them* in as you).
    fn device_page(&self, user_code: &str, status: StatusCode, note: Option<&str>) -> Response {
        let typed = normalize_user_code(user_code);
        let client = self
            .people
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .devices
            .values()
            .find(|d| !typed.is_empty() && d.user_code == typed)
            .map(|d| d.client_id.clone());
        let asking = match client {
            Some(client) => format!(
                "<p id=\"client\">Client <strong>{}</strong> asks to sign in as you.</p>",
                crate::web::escape(&client)
            ),
            None => String::new(),
        };
        let note =
            note.map(|n| format!(r#"<p role="alert" id="note">{}</p>"#, crate::web::escape(n))).unwrap_or_default();
        let body = format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in a device (development issuer)</title></head>
<body><main><h1>Sign in a device</h1><p><strong>Development issuer: never use it in production.</strong></p>{note}{asking}
<p>Only enter a code that your own terminal showed you.</p>
<form method="post" action="/device">
<p><label for="user_code">Code shown by the device</label> <input id="user_code" name="user_code" value="{code}" required autocomplete="off"></p>
<p><label for="username">User name</label> <input id="username" name="username" autocomplete="username" required></p>
<p><label for="password">Password</label> <input id="password" name="password" type="password" autocomplete="current-password" required></p>
<p><button type="submit" name="answer" value="allow" id="allow">Allow</button> <button type="submit" name="answer" value="deny" id="deny">Deny</button></p></form></main></body></html>"#,
            code = crate::web::escape(user_code),
        );
        let policy = "default-src 'none'; form-action 'self'; frame-ancestors 'none'";
        (status, [(header::CONTENT_SECURITY_POLICY, policy)], Html(body)).into_response()
    }

    /// Sign `claims` as they are (the caller sets iss, sub, aud, exp...).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.last().ok_or_else(|| anyhow::anyhow!("no signing key"))?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8))?)
    }

    /// Sign `claims` under a header given as JSON, exactly as given (tests build tokens with
    /// headers a real issuer would not send: `crit`, no `kid`...).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> anyhow::Result<String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.last().ok_or_else(|| anyhow::anyhow!("no signing key"))?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
        );
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8),
            jsonwebtoken::Algorithm::ES256,
        )?;
        Ok(format!("{signing_input}.{signature}"))
    }

    /// The id of the key that signs now.
    pub fn current_kid(&self) -> Option<String> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).last().map(|k| k.kid.clone())
    }

    /// A token for `subject` and `audience`, valid for `ttl_secs`, with extra claims merged in.
    pub fn mint(
        &self,
        subject: &str,
        audience: &str,
        ttl_secs: i64,
        extra: &serde_json::Map<String, Value>,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let mut claims =
            json!({ "iss": self.url, "sub": subject, "aud": audience, "iat": now, "nbf": now, "exp": now + ttl_secs });
        if let Value::Object(map) = &mut claims {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        self.sign(&claims)
    }

    pub fn router(self: Arc<Self>) -> Router {
        let discovery = self.clone();
        let people = Router::new()
            .route("/authorize", get(authorize_form).post(authorize))
            .route("/token", axum::routing::post(token))
            .route("/device_authorization", axum::routing::post(device_authorization))
            .route("/device", get(device_form).post(device_answer))
            .with_state(self.clone());
        Router::new()
            .merge(people)
            .route("/.well-known/openid-configuration", get(move || async move { Json(discovery.discovery()) }))
            .route(
                "/jwks",
                get(move || async move {
                    self.jwks_fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Json(self.jwks())
                }),
            )
    }
}

async fn authorize_form(State(issuer): State<Arc<DevIssuer>>, Query(request): Query<AuthorizeParams>) -> Response {
    match issuer.check_request(&request) {
        Ok(()) => issuer.login_page(&request, None),
        Err(e) => (StatusCode::BAD_REQUEST, format!("authorization request refused: {e}")).into_response(),
    }
}

async fn authorize(State(issuer): State<Arc<DevIssuer>>, Form(login): Form<Login>) -> Response {
    if let Err(e) = issuer.check_request(&login.request) {
        return (StatusCode::BAD_REQUEST, format!("authorization request refused: {e}")).into_response();
    }
    match issuer.sign_in(&login) {
        Ok(target) => (StatusCode::SEE_OTHER, [(header::LOCATION, target)]).into_response(),
        Err(e) => issuer.login_page(&login.request, Some(&e)),
    }
}

async fn token(State(issuer): State<Arc<DevIssuer>>, Form(request): Form<TokenRequest>) -> Response {
    match issuer.exchange(&request) {
        Ok(body) => ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response(),
    }
}

async fn device_authorization(State(issuer): State<Arc<DevIssuer>>, Form(request): Form<DeviceRequest>) -> Response {
    match issuer.start_device(&request) {
        Ok(body) => ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response(),
    }
}

async fn device_form(
    State(issuer): State<Arc<DevIssuer>>,
    query: Result<Query<DevicePage>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let page = query.map(|Query(p)| p).unwrap_or_default();
    issuer.device_page(&page.user_code, StatusCode::OK, None)
}

async fn device_answer(State(issuer): State<Arc<DevIssuer>>, Form(login): Form<DeviceLogin>) -> Response {
    match issuer.answer_device(&login) {
        Ok(done) => issuer.device_page("", StatusCode::OK, Some(done)),
        Err(e) => issuer.device_page(&login.user_code, StatusCode::UNAUTHORIZED, Some(&e)),
    }
}

/// A user code: eight letters a person reads without confusion (no vowels, no look-alikes),
/// shown as two groups of four.
fn user_code() -> Result<String, String> {
    const LETTERS: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut letters = Vec::with_capacity(8);
    while letters.len() < 8 {
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).map_err(|_| "no randomness".to_owned())?;
        // 240 is the largest multiple of 20 below 256: bytes above it are dropped, so every
        // letter is as likely as the others.
        let wanted = 8 - letters.len();
        letters.extend(bytes.iter().filter(|b| **b < 240).map(|b| LETTERS[usize::from(b % 20)]).take(wanted));
    }
    let (head, tail) = letters.split_at(4);
    Ok(format!("{}-{}", String::from_utf8_lossy(head), String::from_utf8_lossy(tail)))
}

/// A typed user code as issued: capitals, one dash after four (people type it in any case and
/// with or without the dash).
fn normalize_user_code(typed: &str) -> String {
    let letters: String = typed.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
    match (letters.get(..4), letters.get(4..)) {
        (Some(head), Some(tail)) if !tail.is_empty() => format!("{head}-{tail}"),
        _ => letters,
    }
}

/// 32 random bytes, base64url.
fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).map_err(|_| "no randomness".to_owned())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}
