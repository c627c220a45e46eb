//! The admin HTTP server (`--http-address`): Prometheus metrics, health and readiness,
//! JSON introspection and a live status page. On a loopback address it is open; on any
//! other it needs the auth key: `Authorization: Bearer <auth key>` for tools, or HTTP Basic
//! with the key as the password (any user name), which a browser asks for by itself, so
//! the status page can be opened from another machine.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{AppendHeaders, Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lockd_core::{HolderInfo, Key, KeyInfo, WaiterInfo};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::shared::Shared;

const PAGE: &str = include_str!("status.html");
const DEFAULT_LIMIT: usize = 1000;

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    need_token: bool,
}

pub(crate) fn router(shared: Arc<Shared>, loopback: bool) -> Router {
    let state = AdminState {
        shared,
        need_token: !loopback,
    };
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/locks", get(locks))
        .route("/v1/locks/{key}", get(lock))
        .route("/v1/sessions", get(sessions))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn authorize(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    if st.need_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !key_given(given, st.shared.config.auth_key.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                // Basic first: a browser answering it shows its login prompt. Appended, as
                // a plain header list would keep only the last of the two.
                AppendHeaders([
                    (
                        header::WWW_AUTHENTICATE,
                        r#"Basic realm="lockd", charset="UTF-8""#,
                    ),
                    (header::WWW_AUTHENTICATE, "Bearer"),
                ]),
                "this admin address needs the auth key: Authorization: Bearer <auth key>, \
                 or Basic with the key as the password\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Whether an Authorization header carries `key`, as a bearer token or as a Basic
/// password. Compared in constant time.
fn key_given(authorization: &[u8], key: &[u8]) -> bool {
    use base64::Engine;
    if let Some(token) = authorization.strip_prefix(b"Bearer ") {
        return bool::from(token.ct_eq(key));
    }
    if let Some(encoded) = authorization.strip_prefix(b"Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii())
        else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return false;
        };
        return bool::from(decoded[colon + 1..].ct_eq(key));
    }
    false
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn metrics(State(st): State<AdminState>) -> impl IntoResponse {
    let body = st.shared.metrics.render(&st.shared.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn readyz(State(st): State<AdminState>) -> impl IntoResponse {
    if st.shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[derive(Serialize)]
struct HolderJson {
    session: String,
    mode: &'static str,
    token: u64,
    held_ms: u64,
}

#[derive(Serialize)]
struct WaiterJson {
    session: String,
    mode: &'static str,
    waited_ms: u64,
}

#[derive(Serialize)]
struct KeyJson {
    key: String,
    holders: Vec<HolderJson>,
    waiters: Vec<WaiterJson>,
}

/// Keys and session ids are bytes; JSON shows them as text, invalid UTF-8 replaced.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn key_json(key: &[u8], info: KeyInfo) -> KeyJson {
    let h = |h: HolderInfo| HolderJson {
        session: text(&h.session.0),
        mode: h.mode.as_str(),
        token: h.token,
        held_ms: h.held_ms,
    };
    let w = |w: WaiterInfo| WaiterJson {
        session: text(&w.session.0),
        mode: w.mode.as_str(),
        waited_ms: w.waited_ms,
    };
    KeyJson {
        key: text(key),
        holders: info.holders.into_iter().map(h).collect(),
        waiters: info.waiters.into_iter().map(w).collect(),
    }
}

fn limit(q: &HashMap<String, String>) -> usize {
    q.get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(DEFAULT_LIMIT)
        .min(100_000)
}

async fn locks(
    State(st): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Vec<KeyJson>> {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let n = limit(&q);
    let found = st
        .shared
        .read(|t, now| t.keys_with_prefix(prefix.as_bytes(), n, now));
    Json(
        found
            .into_iter()
            .map(|(k, i)| key_json(k.as_bytes(), i))
            .collect(),
    )
}

async fn lock(State(st): State<AdminState>, Path(key): Path<String>) -> Response {
    if Key::new(key.as_bytes()).is_err() {
        return (StatusCode::BAD_REQUEST, "keys are 1 to 1024 bytes\n").into_response();
    }
    let info = st.shared.read(|t, now| t.inspect(key.as_bytes(), now));
    Json(key_json(key.as_bytes(), info)).into_response()
}

#[derive(Serialize)]
struct SessionJson {
    session: String,
    connected: bool,
    locks: u32,
    expires_in_ms: Option<u64>,
    waiting: bool,
}

async fn sessions(
    State(st): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Vec<SessionJson>> {
    let n = limit(&q);
    let (list, now) = st.shared.read(|t, now| (t.sessions_info(n), now));
    Json(
        list.into_iter()
            .map(|s| SessionJson {
                session: text(&s.session.0),
                connected: s.connected,
                locks: s.locks,
                expires_in_ms: s.expires_at.map(|at| at.saturating_sub(now)),
                waiting: s.waiting,
            })
            .collect(),
    )
}

#[derive(Serialize)]
struct Contended {
    key: String,
    waiters: usize,
}

#[derive(Serialize)]
struct LongWaiter {
    session: String,
    mode: &'static str,
    keys: Vec<String>,
    waited_ms: u64,
}

#[derive(Serialize)]
struct StatusJson {
    counts: Vec<(&'static str, u64)>,
    contended: Vec<Contended>,
    longest_waiters: Vec<LongWaiter>,
}

async fn status(State(st): State<AdminState>) -> Json<StatusJson> {
    let s = st.shared.snapshot();
    let (contended, waiters) = st
        .shared
        .read(|t, now| (t.most_contended(10), t.longest_waiters(10, now)));
    Json(StatusJson {
        counts: vec![
            ("uptime (s)", s.uptime_ms / 1000),
            ("connections", s.connections),
            ("sessions", s.sessions as u64),
            ("dead sessions", s.dead_sessions as u64),
            ("locks held", s.locks_held),
            ("waiters", s.waiters as u64),
            ("grants", s.table.grants),
            ("conflicts", s.table.conflicts),
            ("timeouts", s.table.timeouts),
            ("deadlocks", s.table.deadlocks),
            ("expired sessions", s.table.expired_sessions),
        ],
        contended: contended
            .into_iter()
            .map(|(k, n)| Contended {
                key: text(k.as_bytes()),
                waiters: n,
            })
            .collect(),
        longest_waiters: waiters
            .into_iter()
            .map(|w| LongWaiter {
                session: text(&w.session.0),
                mode: w.mode.as_str(),
                keys: w.keys.iter().map(|k| text(k.as_bytes())).collect(),
                waited_ms: w.waited_ms,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::key_given;

    #[test]
    fn the_key_is_taken_as_bearer_or_basic_password() {
        assert!(key_given(b"Bearer s3cret", b"s3cret"));
        assert!(!key_given(b"Bearer s3cre", b"s3cret"));
        assert!(!key_given(b"bearer s3cret", b"s3cret"));
        // "admin:s3cret" and ":s3cret"; the user name does not matter.
        assert!(key_given(b"Basic YWRtaW46czNjcmV0", b"s3cret"));
        assert!(key_given(b"Basic OnMzY3JldA==", b"s3cret"));
        // "admin:wrong", "s3cret" without a colon, and not base64 at all.
        assert!(!key_given(b"Basic YWRtaW46d3Jvbmc=", b"s3cret"));
        assert!(!key_given(b"Basic czNjcmV0", b"s3cret"));
        assert!(!key_given(b"Basic !!!", b"s3cret"));
        assert!(!key_given(b"", b"s3cret"));
        assert!(!key_given(b"s3cret", b"s3cret"));
    }
}
