//! Optional access control. With `API_KEYS` or `ADMIN_PASSWORD` set, writes (starting index
//! and evaluation jobs: any request that is not a read or an upload to analyse) need a
//! credential, and with `AUTH_READS=key` so does everything but the sign-in page, the health
//! check and static assets. A credential is a key in `Authorization: Bearer …` or `X-API-Key`,
//! or the session cookie the sign-in page (`/login`, the admin password or a key) sets.
//! Secrets are compared in constant time and never logged. Sessions are kept hashed in
//! `KADR_HOME/sessions.sqlite`, so a restart signs no one out.

use anyhow::Context;
use app::errors::ApiError;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use kadr_engine::settings::{Secret, Settings};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Name of the session cookie.
pub const COOKIE: &str = "kadr_session";
/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// The session store under `KADR_HOME`.
pub const SESSION_FILE: &str = "sessions.sqlite";
/// Delay before answering a wrong password, to slow guessing (with the rate limit).
const WRONG_PASSWORD_DELAY: Duration = Duration::from_millis(500);

/// Who may do what, and the open sessions.
pub struct Auth {
    secrets: Vec<Secret>,
    reads_need_key: bool,
    sessions: Sessions,
}

/// Open sign-ins, kept in `KADR_HOME/sessions.sqlite` so a restart signs no one out. Only a
/// hash of each token is stored (BLAKE3 of a 256-bit random token: nothing to guess or to
/// brute-force), so the file gives no one a session.
pub struct Sessions {
    db: Mutex<rusqlite::Connection>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

impl Sessions {
    /// Opens (or creates) the session file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = rusqlite::Connection::open(path)
            .with_context(|| format!("cannot open the session store {}", path.display()))?;
        Self::init(db).with_context(|| {
            format!(
                "the session store {} is unusable: move it aside",
                path.display()
            )
        })
    }

    /// Sessions that last only as long as the process (tests).
    pub fn in_memory() -> anyhow::Result<Self> {
        Self::init(rusqlite::Connection::open_in_memory()?)
    }

    fn init(db: rusqlite::Connection) -> anyhow::Result<Self> {
        db.busy_timeout(Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS sessions (
                 token_hash TEXT PRIMARY KEY,
                 expires INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires);",
        )?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn valid(&self, token: &str) -> bool {
        let Ok(db) = self.db.lock() else {
            return false;
        };
        let hash = token_hash(token);
        let expires: Option<i64> = db
            .query_row(
                "SELECT expires FROM sessions WHERE token_hash = ?1",
                [&hash],
                |r| r.get(0),
            )
            .ok();
        match expires {
            Some(e) if e > unix_now() => true,
            Some(_) => {
                let _ = db.execute("DELETE FROM sessions WHERE token_hash = ?1", [&hash]);
                false
            }
            None => false,
        }
    }

    fn insert(&self, token: &str) -> anyhow::Result<()> {
        let db = self
            .db
            .lock()
            .map_err(|_| anyhow::anyhow!("session store poisoned"))?;
        let now = unix_now();
        db.execute("DELETE FROM sessions WHERE expires <= ?1", [now])?;
        // The oldest go first beyond MAX_SESSIONS.
        db.execute(
            "DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions
                 ORDER BY expires DESC LIMIT -1 OFFSET ?1)",
            [MAX_SESSIONS as i64 - 1],
        )?;
        db.execute(
            "INSERT OR REPLACE INTO sessions (token_hash, expires) VALUES (?1, ?2)",
            rusqlite::params![token_hash(token), now + SESSION_TTL.as_secs() as i64],
        )?;
        Ok(())
    }

    fn remove(&self, token: &str) {
        if let Ok(db) = self.db.lock() {
            let _ = db.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                [token_hash(token)],
            );
        }
    }
}

/// What a request does.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// Sign-in, health check, static files.
    Public,
    Read,
    Write,
}

/// Sorts a request: uploads to analyse are reads (they change no index); other non-GET
/// requests are writes.
pub fn access(method: &Method, path: &str) -> Access {
    let public = matches!(path, "/login" | "/logout" | "/status" | "/favicon.ico")
        || path.starts_with("/pkg/")
        || path.starts_with("/vendor/");
    if public {
        Access::Public
    } else if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || path == "/api/v1/analyse"
    {
        Access::Read
    } else {
        Access::Write
    }
}

/// Equality that takes the same time wherever the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

impl Auth {
    /// From the settings; `None` when no key or password is set (everything open). Sessions
    /// are kept in `KADR_HOME/sessions.sqlite`.
    pub fn from_settings(s: &Settings) -> anyhow::Result<Option<Arc<Self>>> {
        let mut secrets = s.api_keys.clone();
        secrets.extend(s.admin_password.clone());
        if secrets.is_empty() {
            return Ok(None);
        }
        std::fs::create_dir_all(&s.home)
            .with_context(|| format!("cannot create {}", s.home.display()))?;
        Ok(Some(Arc::new(Self {
            secrets,
            reads_need_key: s.reads_need_key(),
            sessions: Sessions::open(&s.home.join(SESSION_FILE))?,
        })))
    }

    fn valid_secret(&self, given: &str) -> bool {
        // Every secret is compared, so the time says nothing about which one matched.
        self.secrets.iter().fold(false, |ok, s| {
            same(s.expose().as_bytes(), given.as_bytes()) | ok
        })
    }

    fn valid_session(&self, token: &str) -> bool {
        self.sessions.valid(token)
    }

    /// Whether the request carries a valid key or session.
    pub fn authorised(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if let Some(k) = bearer.or(key) {
            return self.valid_secret(k.trim());
        }
        cookie_value(headers, COOKIE).is_some_and(|t| self.valid_session(t))
    }

    fn new_session(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        match self.sessions.insert(&token) {
            Ok(()) => Some(token),
            Err(e) => {
                tracing::error!("cannot store a session: {e:#}");
                None
            }
        }
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(t) = cookie_value(headers, COOKIE) {
            self.sessions.remove(t);
        }
    }
}

/// Middleware: lets a request through, or answers 401 (JSON for the API, a redirect to the
/// sign-in page for a browser asking for a page).
pub async fn guard(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let needs_key = match access(req.method(), req.uri().path()) {
        Access::Public => false,
        Access::Read => auth.reads_need_key,
        Access::Write => true,
    };
    if !needs_key || auth.authorised(req.headers()) {
        return next.run(req).await;
    }
    let wants_page = req.method() == Method::GET
        && !req.uri().path().starts_with("/api/")
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
    if wants_page {
        let next_path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let q: String = url_encode(&next_path);
        return Redirect::to(&format!("/login?next={q}")).into_response();
    }
    let mut res = (
        StatusCode::UNAUTHORIZED,
        Json(ApiError {
            status: 401,
            message: "this needs a key: send `Authorization: Bearer <key>`, or sign in at /login"
                .into(),
            field: None,
            details: Vec::new(),
        }),
    )
        .into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to go after signing in: a path on this site only.
fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ => "/".to_string(),
    }
}

fn login_page(next: &str, error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!(r#"<p class="text-sm text-red-700" data-testid="login-error">{e}</p>"#))
        .unwrap_or_default();
    Html(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · kadr</title><link rel="stylesheet" href="/pkg/kadr.css"></head>
<body class="bg-slate-50 text-slate-900 antialiased">
<main class="mx-auto mt-24 max-w-sm rounded-lg border border-slate-200 bg-white p-6 shadow-sm">
<h1 class="mb-4 text-lg font-semibold">Sign in to kadr</h1>
<form method="post" action="/login" class="space-y-3">
<input type="hidden" name="next" value="{next}">
<label class="block text-sm">Password or API key
<input type="password" name="password" autocomplete="current-password" required autofocus
 class="mt-1 block w-full rounded border border-slate-300 px-2 py-1"></label>
{error}
<button type="submit" class="rounded bg-slate-900 px-3 py-1.5 text-sm text-white">Sign in</button>
</form></main></body></html>"#,
        next = app::escape_html(next),
    ))
}

/// `GET /login`: the sign-in form.
pub async fn login_form(Query(q): Query<HashMap<String, String>>) -> Html<String> {
    login_page(&safe_next(q.get("next")), None)
}

/// `POST /login` (form: `password`, `next`): sets the session cookie and goes to `next`.
pub async fn login(
    State(auth): State<Option<Arc<Auth>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let next = safe_next(form.get("next"));
    let Some(auth) = auth else {
        // Nothing to sign in to.
        return Redirect::to(&next).into_response();
    };
    let given = form.get("password").map(String::as_str).unwrap_or("");
    if !auth.valid_secret(given) {
        tracing::warn!("failed sign-in");
        tokio::time::sleep(WRONG_PASSWORD_DELAY).await;
        return (
            StatusCode::UNAUTHORIZED,
            login_page(&next, Some("Wrong password or key.")),
        )
            .into_response();
    }
    let Some(token) = auth.new_session() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot create a session").into_response();
    };
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut res = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// `GET|POST /logout`: ends the session.
pub async fn logout(State(auth): State<Option<Arc<Auth>>>, headers: HeaderMap) -> Response {
    if let Some(auth) = auth {
        auth.end_session(&headers);
    }
    let mut res = Redirect::to("/").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kadr_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(reads: bool) -> Auth {
        Auth {
            secrets: vec![Secret::new("k1"), Secret::new("pw")],
            reads_need_key: reads,
            sessions: Sessions::in_memory().unwrap(),
        }
    }

    #[test]
    fn requests_are_sorted_into_public_read_and_write() {
        assert_eq!(access(&Method::GET, "/status"), Access::Public);
        assert_eq!(access(&Method::GET, "/pkg/kadr.js"), Access::Public);
        assert_eq!(access(&Method::GET, "/api/v1/stats"), Access::Read);
        assert_eq!(access(&Method::POST, "/api/v1/analyse"), Access::Read);
        assert_eq!(access(&Method::POST, "/api/v1/jobs"), Access::Write);
        assert_eq!(access(&Method::DELETE, "/img/x"), Access::Write);
    }

    #[test]
    fn keys_headers_and_sessions() {
        let a = auth(false);
        let mut h = HeaderMap::new();
        assert!(!a.authorised(&h));
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert!(a.authorised(&h));
        h.insert(header::AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert!(
            !a.authorised(&h),
            "a wrong key is not overridden by anything else"
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "pw".parse().unwrap());
        assert!(a.authorised(&h));
        let token = a.new_session().unwrap();
        assert_eq!(token.len(), 64);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={token}").parse().unwrap(),
        );
        assert!(a.authorised(&h));
        a.end_session(&h);
        assert!(!a.authorised(&h));
    }

    #[test]
    fn sessions_survive_a_reopen_and_are_stored_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(SESSION_FILE);
        let open = || Auth {
            secrets: vec![Secret::new("pw")],
            reads_need_key: false,
            sessions: Sessions::open(&path).unwrap(),
        };
        let cookie = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, format!("{COOKIE}={t}").parse().unwrap());
            h
        };
        let a = open();
        let token = a.new_session().unwrap();
        let other = a.new_session().unwrap();
        drop(a);
        let raw = std::fs::read(&path).unwrap();
        let has = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!has(&token), "the token itself is on disk");
        assert!(has(&token_hash(&token)), "its hash is not");
        let a = open();
        assert!(
            a.authorised(&cookie(&token)),
            "a restart signed the user out"
        );
        assert!(
            !a.authorised(&cookie(&token_hash(&token))),
            "the hash is not a token"
        );
        a.end_session(&cookie(&token));
        drop(a);
        let a = open();
        assert!(
            !a.authorised(&cookie(&token)),
            "signed out stays signed out"
        );
        assert!(a.authorised(&cookie(&other)));
        // An expired session is refused and forgotten.
        a.sessions
            .db
            .lock()
            .unwrap()
            .execute("UPDATE sessions SET expires = 0", [])
            .unwrap();
        assert!(!a.authorised(&cookie(&other)));
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some(&"/dataset".into())), "/dataset");
        assert_eq!(safe_next(Some(&"//evil.example".into())), "/");
        assert_eq!(safe_next(Some(&"https://evil.example".into())), "/");
        assert_eq!(safe_next(Some(&"/\\evil".into())), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
