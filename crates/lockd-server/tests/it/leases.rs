//! Leases, revocation and events over TCP: ACQUIRE LEASE and EXTEND on the manual clock,
//! REVOKE and SESSION KILL with and without the admin right, and the RESP3 pushes a
//! subscribed holder gets (never inside a reply; never on RESP2).

use crate::harness::*;

const ADMIN_KEY: &str = "test-admin-secret";

async fn resp3(srv: &TestServer, key: &str) -> Resp {
    let mut c = Resp::connect(srv.addr).await;
    let hello = c.call(&["HELLO", "3", "AUTH", "default", key]).await;
    assert_eq!(hello.get("proto").int(), 3);
    c
}

fn push(r: &R) -> Vec<String> {
    match r {
        R::Push(items) => items
            .iter()
            .map(|i| match i {
                R::Int(n) => n.to_string(),
                other => other.text(),
            })
            .collect(),
        other => panic!("expected a push, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_ends_the_lock_unless_extended() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let t = a
        .call(&["ACQUIRE", "LEASE", "1000", "EX", "0", "k"])
        .await
        .int();
    let t_str = t.to_string();
    srv.clock.advance(900);
    assert_eq!(a.call(&["EXTEND", &t_str]).await, R::Simple("OK".into()));
    srv.clock.advance(900);
    assert_eq!(
        b.call(&["ACQUIRE", "EX", "0", "k"]).await,
        R::Null,
        "extended to 1900"
    );
    // A waiter is handed the lock when the lease passes, by the timer alone.
    b.send(&["ACQUIRE", "EX", "60000", "k"]).await;
    srv.eventually("b waits", |s| s.waiters == 1).await;
    srv.clock.advance(100);
    let granted = b.recv().await.int();
    assert!(granted > t);
    assert_eq!(
        a.call(&["EXTEND", &t_str, "5000"]).await.err(),
        format!(
            "NOLEASE no lease with token {t} is held by this session: it passed, or its locks \
             were released or revoked, or the grant had no lease"
        )
    );
    assert_eq!(a.call(&["LOCKS"]).await, R::Array(vec![]));
    assert_eq!(srv.snapshot().table.leases_expired, 1);
    assert_eq!(srv.snapshot().table.lease_extensions, 1);
    // Bad leases are refused before anything is taken.
    for (args, want) in [
        (
            vec!["ACQUIRE", "LEASE", "0", "EX", "0", "j"],
            "ERR lease must be 1 to 86400000 ms",
        ),
        (
            vec!["ACQUIRE", "LEASE", "86400001", "EX", "0", "j"],
            "ERR lease must be 1 to 86400000 ms",
        ),
        (
            vec!["ACQUIRE", "LEASE", "x", "EX", "0", "j"],
            "ERR lease is not a non-negative integer",
        ),
        (
            vec!["ACQUIRE", "LEASE", "10", "EX", "0"],
            "ERR wrong number of arguments for 'acquire' command",
        ),
        (
            vec!["EXTEND"],
            "ERR wrong number of arguments for 'extend' command",
        ),
        (
            vec!["EXTEND", "1", "0"],
            "ERR lease must be 1 to 86400000 ms",
        ),
    ] {
        assert_eq!(a.call(&args).await.err(), want, "{args:?}");
    }
    // A key named LEASE is still a key after the mode.
    assert!(a.call(&["ACQUIRE", "EX", "0", "LEASE"]).await.int() > 0);
    assert_eq!(srv.snapshot().leases, 0);
}

#[tokio::test]
async fn revocation_needs_the_admin_right() {
    let srv = TestServer::start_with(|c| c.admin_key = Some(ADMIN_KEY.into())).await;
    let mut holder = Resp::authed(srv.addr).await;
    let id = holder.call(&["SESSION"]).await.text();
    let t = holder.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    let mut waiter = Resp::authed(srv.addr).await;
    waiter.send(&["ACQUIRE", "SH", "60000", "k"]).await;
    srv.eventually("a waiter", |s| s.waiters == 1).await;
    let mut client = Resp::authed(srv.addr).await;
    let noperm = "NOPERM this command needs the admin right: AUTH with the admin key (--admin-key)";
    assert_eq!(client.call(&["REVOKE", "k"]).await.err(), noperm);
    assert_eq!(client.call(&["SESSION", "KILL", &id]).await.err(), noperm);
    let mut admin = Resp::connect(srv.addr).await;
    assert_eq!(
        admin.call(&["AUTH", ADMIN_KEY]).await,
        R::Simple("OK".into())
    );
    assert_eq!(
        admin.call(&["REVOKE", "k", "BOGUS", "x"]).await.err(),
        "ERR syntax: REVOKE key [SESSION id]"
    );
    assert_eq!(admin.call(&["REVOKE", "k"]).await.int(), 1);
    assert!(waiter.recv().await.int() > t, "the waiter moved up at once");
    // The holder's stale release is a no-op; it holds nothing.
    assert_eq!(holder.call(&["RELEASE", "EX", "k"]).await.int(), 0);
    assert_eq!(srv.snapshot().table.revoked, 1);
    // SESSION KILL of a waiting session: the wait is answered, the session is gone, and
    // the connection's next lock request is refused rather than making it again.
    let wid = waiter.call(&["SESSION"]).await.text();
    holder.call(&["ACQUIRE", "EX", "0", "other"]).await.int();
    waiter.send(&["ACQUIRE", "EX", "60000", "other"]).await;
    srv.eventually("waits", |s| s.waiters == 1).await;
    assert_eq!(admin.call(&["SESSION", "KILL", &wid]).await.int(), 1);
    assert_eq!(
        waiter.recv().await.err(),
        "REVOKED an operator ended this session while it waited (SESSION KILL)"
    );
    assert_eq!(
        waiter.call(&["ACQUIRE", "EX", "0", "third"]).await.err(),
        "NOSESSION this connection's session was let go"
    );
    assert!(admin
        .call(&["SESSION", "KILL", &wid])
        .await
        .err()
        .starts_with("NOSESSION"));
    let snap = srv.snapshot();
    assert_eq!(snap.table.sessions_ended, 1);
    assert_eq!(snap.table.revoked, 2);
    assert_eq!(snap.waiters, 0);
}

#[tokio::test]
async fn without_an_admin_key_the_auth_key_may_revoke() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "SH", "0", "k"]).await.int();
    let mut b = Resp::authed(srv.addr).await;
    assert_eq!(b.call(&["REVOKE", "k"]).await.int(), 1);
    assert_eq!(b.call(&["REVOKE", "k"]).await.int(), 0);
}

#[tokio::test]
async fn holders_are_told_of_contention_and_loss_by_push() {
    let srv = TestServer::start().await;
    let mut a = resp3(&srv, AUTH_KEY).await;
    assert_eq!(a.call(&["EVENTS", "ON"]).await, R::Simple("OK".into()));
    let ta = a
        .call(&["ACQUIRE", "LEASE", "500", "EX", "0", "k"])
        .await
        .int();
    let tj = a.call(&["ACQUIRE", "SH", "0", "j"]).await.int();
    let mut b = Resp::authed(srv.addr).await;
    b.send(&["ACQUIRE", "SH", "60000", "k"]).await;
    let got = push(&a.recv().await);
    assert_eq!(got, ["contended", "k", &ta.to_string(), "EX", "SH"]);
    // A second waiter does not tell again.
    let mut c = Resp::authed(srv.addr).await;
    c.send(&["ACQUIRE", "EX", "60000", "k"]).await;
    srv.eventually("two waiters", |s| s.waiters == 2).await;
    assert_eq!(
        a.call(&["PING"]).await,
        R::Simple("PONG".into()),
        "no push first"
    );
    // The lease passes: told, and the first waiter gets the key.
    srv.clock.advance(500);
    assert_eq!(
        push(&a.recv().await),
        ["lost", "k", &ta.to_string(), "EX", "lease-expired"]
    );
    assert!(b.recv().await.int() > ta);
    // Revoked: told with the token.
    let mut admin = Resp::authed(srv.addr).await;
    assert_eq!(admin.call(&["REVOKE", "j"]).await.int(), 1);
    assert_eq!(
        push(&a.recv().await),
        ["lost", "j", &tj.to_string(), "SH", "revoked"]
    );
    // EVENTS OFF: nothing more is pushed.
    assert_eq!(a.call(&["EVENTS", "OFF"]).await, R::Simple("OK".into()));
    a.call(&["ACQUIRE", "EX", "0", "j"]).await.int();
    admin.call(&["REVOKE", "j"]).await.int();
    assert_eq!(a.call(&["PING"]).await, R::Simple("PONG".into()));
    assert!(srv.snapshot().events_queued >= 3);
}

#[tokio::test]
async fn a_push_never_splits_a_reply_and_resp2_gets_none() {
    let srv = TestServer::start().await;
    // RESP2 cannot subscribe, and loses nothing else.
    let mut two = Resp::authed(srv.addr).await;
    assert_eq!(
        two.call(&["EVENTS", "ON"]).await.err(),
        "ERR EVENTS needs RESP3 push messages: send HELLO 3 first"
    );
    let t2 = two.call(&["ACQUIRE", "EX", "0", "r2"]).await.int();
    let mut a = resp3(&srv, AUTH_KEY).await;
    a.call(&["EVENTS", "ON"]).await;
    let mut admin = Resp::authed(srv.addr).await;
    // Many locks lost while a long reply is being written: every frame read is whole
    // (the reader would fail on a push inside a reply), pushes and replies interleave
    // only at frame boundaries.
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    let mut args = vec!["ACQUIRE", "SH", "0"];
    args.extend(keys.iter().map(String::as_str));
    let t = a.call(&args).await.int();
    for k in &keys {
        admin.send(&["REVOKE", k]).await;
        a.send(&["LOCKS"]).await;
    }
    let (mut lost, mut replies) = (0, 0);
    while replies < keys.len() || lost < keys.len() {
        match a.recv().await {
            R::Push(p) => {
                assert_eq!(p[0].text(), "lost");
                assert_eq!(p[2].int(), t);
                lost += 1;
            }
            R::Array(_) => replies += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admin.call(&["REVOKE", "r2"]).await.int(), 1);
    assert_eq!(
        two.call(&["PING"]).await,
        R::Simple("PONG".into()),
        "no push on RESP2"
    );
    assert!(two.nothing_to_read().await);
    assert!(t2 > 0);
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_told_what_it_missed() {
    let srv = TestServer::start().await;
    let mut a = resp3(&srv, AUTH_KEY).await;
    a.call(&["EVENTS", "ON"]).await;
    let mut admin = Resp::authed(srv.addr).await;
    // More events than the queue holds, before the connection reads any: the server's
    // connection task is busy with nothing, so it would drain them; hold it instead on a
    // wait, which still lets pushes through, so use revocations in one request burst.
    let n = 1500;
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let mut args = vec!["ACQUIRE", "SH", "0"];
    args.extend(keys.iter().map(String::as_str));
    a.call(&args).await.int();
    let id = a.call(&["SESSION"]).await.text();
    // One command, 1,500 lost events at once: past the 1,024 a queue holds.
    assert_eq!(admin.call(&["SESSION", "KILL", &id]).await.int(), n);
    let mut seen = 0;
    let mut overflow = 0;
    while seen + overflow < n {
        let p = a.recv().await;
        match push(&p)[0].as_str() {
            "lost" => seen += 1,
            "overflow" => overflow += p.items()[1].int(),
            other => panic!("{other}"),
        }
    }
    assert_eq!(seen, 1024);
    assert_eq!(overflow, n - 1024);
    assert_eq!(srv.snapshot().events_dropped, (n - 1024) as u64);
}

#[tokio::test]
async fn the_admin_http_revokes_and_ends_sessions_with_the_admin_key() {
    let srv = TestServer::start_with(|c| {
        c.http_address = Some("127.0.0.1:0".into());
        c.admin_key = Some(ADMIN_KEY.into());
    })
    .await;
    let http = srv.admin.unwrap();
    let mut a = resp3(&srv, AUTH_KEY).await;
    a.call(&["EVENTS", "ON"]).await;
    let t = a.call(&["ACQUIRE", "EX", "0", "k/1"]).await.int();
    let id = a.call(&["SESSION"]).await.text();
    let bearer = |k: &str| format!("Bearer {k}");
    // Loopback reads need no key, but revocation needs the admin key: not the auth key.
    for auth in [None, Some(bearer(AUTH_KEY))] {
        let (status, _, body) =
            http_request(http, "DELETE", "/v1/locks/k%2F1", auth.as_deref()).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            body.contains("revoking locks needs the admin key"),
            "{body}"
        );
    }
    let admin = Some(bearer(ADMIN_KEY));
    let (status, _, body) = http_request(
        http,
        "DELETE",
        "/v1/locks/k%2F1?session=short",
        admin.as_deref(),
    )
    .await;
    assert_eq!((status, body.as_str()), (400, "session ids are 32 bytes\n"));
    let (status, _, body) = http_request(http, "DELETE", "/v1/locks/k%2F1", admin.as_deref()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"released":1}"#));
    assert_eq!(
        push(&a.recv().await),
        ["lost", "k/1", &t.to_string(), "EX", "revoked"]
    );
    // Ending the session: its locks go, told as session-ended; then it is not found.
    let t2 = a.call(&["ACQUIRE", "SH", "0", "k/2"]).await.int();
    let path = format!("/v1/sessions/{id}");
    assert_eq!(http_request(http, "DELETE", &path, None).await.0, 401);
    let (status, _, body) = http_request(http, "DELETE", &path, admin.as_deref()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"released":1}"#));
    assert_eq!(
        push(&a.recv().await),
        ["lost", "k/2", &t2.to_string(), "SH", "session-ended"]
    );
    assert_eq!(
        http_request(http, "DELETE", &path, admin.as_deref())
            .await
            .0,
        404
    );
    // The metrics count them.
    let (_, metrics) = http_get(http, "/metrics", None).await;
    assert!(metrics.contains("lockd_revoked_total 2"), "{metrics}");
    assert!(
        metrics.contains("lockd_sessions_ended_total 1"),
        "{metrics}"
    );
}
