//! The admin HTTP server (`--http-address`): Prometheus metrics, health and readiness,
//! JSON introspection and a live status page. On a loopback address it is open; on any
//! other, everything but `/healthz` and `/readyz` (which a load balancer probes, and which
//! tell nothing) needs the auth key: `Authorization: Bearer <auth key>` for tools, or HTTP
//! Basic with the key as the password (any user name), which a browser asks for by
//! itself, so the status page can be opened from another machine. Failed keys count
//! towards the same per-address limit as the lock protocols'.
//!
//! Off loopback with TLS configured (`--tls-cert`), it is served over TLS with the same
//! certificate, so the key never crosses the network in the clear. Every connection is
//! bounded: [`MAX_CONNECTIONS`] at once (a permit is taken before accepting), its request
//! headers within [`HEADER_TIMEOUT`], its TLS handshake within [`HANDSHAKE_TIMEOUT`], its
//! life within [`MAX_CONNECTION_AGE`]; at shutdown, connections get [`SHUTDOWN_GRACE`] to
//! finish, then are dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Most admin connections at once; more wait in the listen backlog.
pub(crate) const MAX_CONNECTIONS: usize = 64;
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The peer of the connection a request came on (for the auth-failure limiter).
#[derive(Clone, Copy)]
struct Peer(std::net::IpAddr);

/// Serves the admin HTTP API on `listener` until `shutdown`, then returns within
/// [`SHUTDOWN_GRACE`] (plus a moment), whatever the clients do.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let tls = !loopback && shared.tls.is_some();
    let app = router(shared.clone(), loopback);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (app, shared, stop) = (app.clone(), shared.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let acceptor = tls
                .then(|| shared.tls.as_ref().map(|t| t.acceptor()))
                .flatten();
            match acceptor {
                None => connection(stream, peer, app, stop).await,
                Some(a) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, a.accept(stream)).await {
                    Ok(Ok(s)) => connection(s, peer, app, stop).await,
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "admin TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "admin TLS handshake timed out"),
                },
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(500), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("admin HTTP connections still open at shutdown were dropped");
    }
}

/// One HTTP/1.1 connection, with its bounds.
async fn connection<S>(stream: S, peer: SocketAddr, app: Router, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer.ip()));
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let age = tokio::time::sleep(MAX_CONNECTION_AGE);
    tokio::pin!(age);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = shutdown.cancelled() => None,
        _ = &mut age => None,
    };
    if ended.is_none() {
        // Finish the request in flight (if any), then close; past the grace, drop it.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
    }
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
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/members", axum::routing::post(add_member))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route("/v1/history", get(history))
        .route("/v1/locks", get(locks))
        .route("/v1/locks/{key}", get(lock).delete(revoke))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{id}", axum::routing::delete(kill_session))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Paths a load balancer probes: answered without the key, as they reveal nothing.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

async fn authorize(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    if st.need_token && !is_probe(req.uri().path()) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let config = &st.shared.config;
        if !key_given(given, config.auth_key.as_bytes())
            && !key_given(given, config.admin_key().as_bytes())
        {
            if let Some(Peer(ip)) = req.extensions().get::<Peer>() {
                let _ = st.shared.auth_failed(*ip, "http");
            }
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
    let cluster = st.shared.cluster().map(|c| c.status());
    let body = st
        .shared
        .metrics
        .render_with(&st.shared.snapshot(), cluster.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// The node's view of the cluster (404 on a standalone server).
async fn cluster(State(st): State<AdminState>) -> Response {
    match st.shared.cluster() {
        Some(c) => Json(c.status()).into_response(),
        None => (StatusCode::NOT_FOUND, "not a cluster node\n").into_response(),
    }
}

/// The charts' samples (see `history`).
async fn history(State(st): State<AdminState>) -> Json<crate::history::HistoryJson> {
    Json(
        st.shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .json(),
    )
}

#[derive(serde::Deserialize)]
struct NewMember {
    id: u64,
    raft_address: String,
}

/// A membership change over HTTP: as `CLUSTER ADD|REMOVE`. Changes need the auth key
/// (`Authorization: Bearer`) on every address, loopback included: reading is open there,
/// changing the cluster is not.
async fn add_member(
    State(st): State<AdminState>,
    req_headers: axum::http::HeaderMap,
    Json(m): Json<NewMember>,
) -> Response {
    let change = lockd_raft::network::MemberChange::Add {
        id: m.id,
        addr: m.raft_address,
    };
    member_change(&st, &req_headers, change).await
}

async fn remove_member(
    State(st): State<AdminState>,
    req_headers: axum::http::HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let change = lockd_raft::network::MemberChange::Remove { id };
    member_change(&st, &req_headers, change).await
}

async fn member_change(
    st: &AdminState,
    headers: &axum::http::HeaderMap,
    change: lockd_raft::network::MemberChange,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !key_given(given, st.shared.config.auth_key.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "changing the cluster's members needs the auth key: Authorization: Bearer <auth key>\n",
        )
            .into_response();
    }
    let Some(node) = st.shared.cluster() else {
        return (StatusCode::NOT_FOUND, "not a cluster node\n").into_response();
    };
    tracing::info!(?change, "membership change asked for over HTTP");
    match node.change_members(change).await {
        Ok(done) => (StatusCode::OK, format!("{done}\n")).into_response(),
        Err(lockd_raft::ClusterError::Refused(why)) => {
            (StatusCode::CONFLICT, format!("{why}\n")).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// An operator's request: refused unless it carries the admin key (`--admin-key`, else
/// the auth key), from loopback too.
fn admin_refusal(st: &AdminState, headers: &axum::http::HeaderMap, what: &str) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if key_given(given, st.shared.config.admin_key().as_bytes()) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("{what} needs the admin key: Authorization: Bearer <admin key>\n"),
        )
            .into_response(),
    )
}

#[derive(Serialize)]
struct Revoked {
    released: u32,
}

/// DELETE /v1/locks/{key}[?session=ID]: REVOKE.
async fn revoke(
    State(st): State<AdminState>,
    headers: axum::http::HeaderMap,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = admin_refusal(&st, &headers, "revoking locks") {
        return r;
    }
    let Ok(k) = lockd_core::Key::new(key.as_bytes()) else {
        return (StatusCode::BAD_REQUEST, "keys are 1 to 1024 bytes\n").into_response();
    };
    let session = match q.get("session") {
        None => None,
        Some(s) => match lockd_core::SessionId::from_bytes(s.as_bytes()) {
            Some(id) => Some(id),
            None => return (StatusCode::BAD_REQUEST, "session ids are 32 bytes\n").into_response(),
        },
    };
    match st
        .shared
        .execute(lockd_core::Command::Revoke { key: k, session })
        .await
    {
        Ok(lockd_core::Outcome::Released(n)) => {
            tracing::warn!(%key, ?session, released = n, "operator revoked locks (HTTP)");
            Json(Revoked { released: n }).into_response()
        }
        Ok(other) => unreachable!("REVOKE answered {other:?}"),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// DELETE /v1/sessions/{id}: SESSION KILL.
async fn kill_session(
    State(st): State<AdminState>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = admin_refusal(&st, &headers, "ending sessions") {
        return r;
    }
    let Some(session) = lockd_core::SessionId::from_bytes(id.as_bytes()) else {
        return (StatusCode::BAD_REQUEST, "session ids are 32 bytes\n").into_response();
    };
    match st
        .shared
        .execute(lockd_core::Command::EndSession { session })
        .await
    {
        Ok(lockd_core::Outcome::Ended(Some(n))) => {
            tracing::warn!(session = %id, released = n, "operator ended a session (HTTP)");
            Json(Revoked { released: n }).into_response()
        }
        Ok(lockd_core::Outcome::Ended(None)) => {
            (StatusCode::NOT_FOUND, "no such session\n").into_response()
        }
        Ok(other) => unreachable!("SESSION KILL answered {other:?}"),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn readyz(State(st): State<AdminState>) -> impl IntoResponse {
    if st.shared.cluster().is_some_and(|c| c.is_removed()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: removed from the cluster\n",
        );
    }
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
    /// On a semaphore (mode `PERMITS`).
    #[serde(skip_serializing_if = "is_zero")]
    permits: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct WaiterJson {
    session: String,
    mode: &'static str,
    waited_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    permits: u16,
}

#[derive(Serialize)]
struct KeyJson {
    key: String,
    holders: Vec<HolderJson>,
    waiters: Vec<WaiterJson>,
    /// A semaphore's.
    #[serde(skip_serializing_if = "is_zero")]
    capacity: u16,
}

/// Keys and session ids are bytes; JSON shows them as text, invalid UTF-8 replaced.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn key_json(key: &[u8], info: KeyInfo) -> KeyJson {
    let h = |h: HolderInfo| HolderJson {
        session: text(&h.session.0),
        mode: crate::native::mode_name(h.mode, h.permits),
        token: h.token,
        held_ms: h.held_ms,
        permits: h.permits,
    };
    let w = |w: WaiterInfo| WaiterJson {
        session: text(&w.session.0),
        mode: crate::native::mode_name(w.mode, w.permits),
        waited_ms: w.waited_ms,
        permits: w.permits,
    };
    KeyJson {
        key: text(key),
        holders: info.holders.into_iter().map(h).collect(),
        waiters: info.waiters.into_iter().map(w).collect(),
        capacity: info.capacity,
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

/// A contended key on the status page: who holds it next to who waits, the first
/// [`SHOWN`] of each (the totals say how many more).
#[derive(Serialize)]
struct Contended {
    key: String,
    holders_total: usize,
    waiters_total: usize,
    holders: Vec<HolderJson>,
    waiters: Vec<WaiterJson>,
}

/// Holders and waiters shown per contended key; the status answer stays small however
/// many SH holders a key has.
const SHOWN: usize = 5;

#[derive(Serialize)]
struct LongWaiter {
    session: String,
    mode: &'static str,
    keys: Vec<String>,
    waited_ms: u64,
}

#[derive(Serialize)]
struct StatusJson {
    version: &'static str,
    counts: Vec<(&'static str, u64)>,
    contended: Vec<Contended>,
    longest_waiters: Vec<LongWaiter>,
}

async fn status(State(st): State<AdminState>) -> Json<StatusJson> {
    let s = st.shared.snapshot();
    let (contended, waiters) = st.shared.read(|t, now| {
        let keys: Vec<_> = t
            .most_contended(10)
            .into_iter()
            .map(|(k, _)| {
                let info = t.inspect(k.as_bytes(), now);
                (k, info)
            })
            .collect();
        (keys, t.longest_waiters(10, now))
    });
    Json(StatusJson {
        version: env!("CARGO_PKG_VERSION"),
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
            .map(|(k, info)| {
                let (holders_total, waiters_total) = (info.holders.len(), info.waiters.len());
                let mut j = key_json(k.as_bytes(), info);
                j.holders.truncate(SHOWN);
                j.waiters.truncate(SHOWN);
                Contended {
                    key: j.key,
                    holders_total,
                    waiters_total,
                    holders: j.holders,
                    waiters: j.waiters,
                }
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

    /// Issue 17, defect 5: /readyz says 503 while lockd is not accepting (starting, or
    /// shutting down) and 200 while it is, and /healthz 200 throughout.
    #[tokio::test]
    async fn readyz_follows_readiness_both_ways() {
        use std::sync::atomic::Ordering;
        let shared = std::sync::Arc::new(crate::shared::Shared::new(
            crate::ServerConfig::new("127.0.0.1", 0, "k"),
            crate::Clock::real(),
        ));
        let app = super::router(shared.clone(), true);
        let get = |path: &'static str| {
            let app = app.clone();
            async move {
                let req = axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap();
                tower::ServiceExt::oneshot(app, req)
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(
            (get("/readyz").await, get("/healthz").await),
            (503, 200),
            "starting"
        );
        shared.ready.store(true, Ordering::SeqCst);
        assert_eq!(
            (get("/readyz").await, get("/healthz").await),
            (200, 200),
            "serving"
        );
        shared.ready.store(false, Ordering::SeqCst);
        assert_eq!(
            (get("/readyz").await, get("/healthz").await),
            (503, 200),
            "stopping"
        );
    }

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
