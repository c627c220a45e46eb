//! Regression tests for hostile and unlucky clients (issue 10): each names the defect it
//! guards against. Each was seen failing before the fix it guards.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::harness::*;

/// Keys `k0 .. k{n-1}` as native arguments after `prefix`.
fn with_keys<'a>(prefix: &[&'a str], keys: &'a [String]) -> Vec<&'a str> {
    prefix
        .iter()
        .copied()
        .chain(keys.iter().map(String::as_str))
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// Defect 1: an unauthenticated connection announcing a large request is answered and
/// closed at the header, instead of being buffered without bound.
#[tokio::test]
async fn an_unauthenticated_client_cannot_make_lockd_buffer_a_large_request() {
    let srv = TestServer::start().await;
    for header in [
        &b"*4097\r\n$65536\r\n"[..],
        &b"*2\r\n$4\r\nAUTH\r\n$60000\r\n"[..],
        &b"*40\r\n"[..],
    ] {
        let mut c = Resp::connect(srv.addr).await;
        c.writer.write_all(header).await.unwrap();
        let e = c.recv().await;
        assert!(
            e.err().starts_with("ERR Protocol error"),
            "{header:?}: {e:?}"
        );
        assert!(c.closed_by_server().await);
    }
    // AUTH and HELLO with AUTH still fit.
    let mut c = Resp::connect(srv.addr).await;
    let hello = ["HELLO", "3", "AUTH", "default", AUTH_KEY, "SETNAME", "n"];
    assert!(matches!(c.call(&hello).await, R::Map(_)));
}

/// Defect 1, after AUTH: one request may be as large as 4,096 keys of 1,024 bytes, and no
/// larger: a header that would take it past that is refused at once.
#[tokio::test]
async fn an_authenticated_request_is_bounded_by_the_largest_valid_one() {
    let srv = TestServer::start().await;
    let mut c = Resp::authed(srv.addr).await;
    // 4,099 arguments of 1,024 bytes fit; the 4,200 KiB this announces do not.
    let mut head = b"*4099\r\n$7\r\nACQUIRE\r\n$2\r\nEX\r\n$1\r\n0\r\n".to_vec();
    for _ in 0..70 {
        head.extend_from_slice(b"$65536\r\n");
        head.extend(std::iter::repeat_n(b'x', 65536));
        head.extend_from_slice(b"\r\n");
    }
    // The server stops reading once it has refused the request, so the write may stall or
    // fail; either way the refusal is already on its way.
    let _ = tokio::time::timeout(Duration::from_secs(2), c.writer.write_all(&head)).await;
    let e = c.recv().await;
    assert!(e.err().contains("request larger than"), "{e:?}");
    assert!(c.closed_by_server().await);
}

/// Defect 6: the documented 4,096 keys work; more get a clear error on an open connection.
#[tokio::test]
async fn exactly_4096_keys_work_and_more_are_refused_without_closing() {
    let srv = TestServer::start_with(|c| c.max_locks = 100_000).await;
    let mut c = Resp::authed(srv.addr).await;
    let ks = keys(4096);
    assert!(c.call(&with_keys(&["ACQUIRE", "EX", "0"], &ks)).await.int() > 0);
    assert_eq!(srv.snapshot().locks_held, 4096);
    assert_eq!(
        c.call(&with_keys(&["RELEASE", "EX"], &ks)).await,
        R::Int(4096)
    );
    let ks = keys(4097);
    let e = c.call(&with_keys(&["ACQUIRE", "EX", "0"], &ks)).await;
    assert!(e.err().starts_with("ERR too many"), "{e:?}");
    let e = c.call(&with_keys(&["RELEASE", "EX"], &keys(5000))).await;
    assert!(e.err().starts_with("ERR too many"), "{e:?}");
    assert_eq!(c.call(&["PING"]).await, R::Simple("PONG".into()));
    assert_eq!(srv.snapshot().locks_held, 0);
}

/// Defect 3: a waiter whose timeout is handled after the holder's grace ended (a stall over
/// both deadlines) is answered with the token it was granted, never null while holding.
#[tokio::test]
async fn a_stall_over_grace_end_and_timeout_answers_the_truth() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(1)).await;
    for round in 0..10 {
        let k = format!("k{round}");
        let mut a = Resp::authed(srv.addr).await;
        a.call(&["ACQUIRE", "EX", "0", &k]).await.int();
        drop(a);
        srv.eventually("a dead", |s| s.dead_sessions == 1).await;
        let mut b = Resp::authed(srv.addr).await;
        let b_session = b.call(&["SESSION"]).await.text();
        b.send(&["ACQUIRE", "EX", "2000", &k]).await;
        srv.eventually("b queued", |s| s.waiters == 1).await;
        // One step past both: the grace ends at +1 s, b's timeout at +2 s.
        srv.clock.advance(3_000);
        let reply = b.recv().await;
        let mut probe = Resp::authed(srv.addr).await;
        let held = probe.call(&["LOCKS", &b_session]).await.items().len();
        match reply {
            R::Int(t) => assert!(t > 0 && held == 1, "round {round}: token {t}, held {held}"),
            R::Null => assert_eq!(held, 0, "round {round}: told null while holding"),
            other => panic!("round {round}: {other:?}"),
        }
        b.call(&["RELEASEALL"]).await;
    }
}

/// Defect 4: the output bound holds while a batch is processed: a pipelined burst of large
/// replies is cut off once the bound is passed, not rendered whole first.
#[tokio::test]
async fn the_output_bound_holds_within_one_batch() {
    let srv = TestServer::start_with(|c| {
        c.max_pending_output = 64 * 1024;
        c.max_locks = 100_000;
    })
    .await;
    let mut c = Resp::authed(srv.addr).await;
    let ks = keys(2000);
    c.call(&with_keys(&["ACQUIRE", "EX", "0"], &ks)).await.int();
    // Each LOCKS reply is ~60 KB; 2,000 of them would be ~120 MB.
    let mut burst = bytes::BytesMut::new();
    for _ in 0..2000 {
        lockd_proto::resp::encode_request(&["LOCKS"], &mut burst);
    }
    c.writer.write_all(&burst).await.unwrap();
    assert!(c.closed_by_server().await || c.closed_by_server().await);
    let s = srv.snapshot();
    assert!(
        s.peak_output <= 64 * 1024 + 128 * 1024,
        "peak output {} bytes",
        s.peak_output
    );
}

/// Defect 5: failed signatures from an address never make lockd refuse correct ones; a
/// stream mixing both gets the original daemon's replies, line by line.
#[tokio::test]
async fn failed_signatures_never_refuse_correct_ones() {
    let srv = TestServer::start().await;
    let mut legacy = srv.connect().await;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (a, k) = (session('a'), key(1));
    for i in 0..200 {
        if next() % 3 == 0 {
            let bad = format!("{a}:{}:ACQUIRE:EX:{k}\n", "0".repeat(40));
            legacy.send(bad.as_bytes()).await;
            assert_eq!(legacy.recv().await, "BAD_KEY", "line {i}");
        } else if i % 2 == 0 {
            assert_eq!(legacy.call(&a, "ACQUIRE", "EX", &k).await, "ACQUIRED");
        } else {
            assert_eq!(legacy.call(&a, "RELEASE", "EX", &k).await, "RELEASED");
        }
    }
    assert!(srv.snapshot().auth_failures >= 40);
    // Native: a wrong password costs nothing to a right one, on the same address. This
    // address is past the failure limit now, so a failing connection is closed after its
    // WRONGPASS; guesses sent behind it are never answered.
    let mut c = Resp::connect(srv.addr).await;
    let mut burst = bytes::BytesMut::new();
    for _ in 0..30 {
        lockd_proto::resp::encode_request(&["AUTH", "guess"], &mut burst);
    }
    c.writer.write_all(&burst).await.unwrap();
    assert_eq!(
        c.recv().await,
        R::Err("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert!(c.closed_by_server().await);
    let mut d = Resp::connect(srv.addr).await;
    assert_eq!(d.call(&["AUTH", AUTH_KEY]).await, R::Simple("OK".into()));
    let mut legacy = srv.connect().await;
    assert!(legacy.call(&a, "STAT", "", "").await.contains(':'));
}

/// Defect 7: SESSION GRACE is capped by the server's maximum, and says so.
#[tokio::test]
async fn session_grace_is_capped_by_the_server_maximum() {
    let srv = TestServer::start_with(|c| c.max_grace = Duration::from_secs(3600)).await;
    let mut a = Resp::authed(srv.addr).await;
    let r = a.call(&["SESSION", "GRACE", "18446744073709551615"]).await;
    assert_eq!(
        r,
        R::Simple("OK capped at 3600000 ms (the server's --max-grace)".into())
    );
    assert_eq!(
        a.call(&["SESSION", "GRACE", "3600000"]).await,
        R::Simple("OK".into())
    );
    a.call(&["SESSION", "GRACE", "99999999999"]).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    drop(a);
    srv.eventually("a dead", |s| s.dead_sessions == 1).await;
    srv.clock.advance(3_600_000);
    srv.eventually("a expired", |s| s.locks_held == 0).await;
}

/// Defect 9: a legacy line as long as the original could answer (two reads of 65,535
/// bytes) is answered; trailing white space does not count against it.
#[tokio::test]
async fn legacy_lines_up_to_the_originals_maximum_are_answered() {
    let srv = TestServer::start_with(|c| c.max_locks = 100_000).await;
    let mut c = srv.connect().await;
    // 4,000 keys: 127,999 bytes of values, ~128 KB of line.
    let values: Vec<String> = (0..4000).map(key).collect();
    let l = line(&session('a'), "ACQUIRE", "EX", &values.join("|"));
    assert!(l.len() > 65_535 && l.len() <= 131_070, "{}", l.len());
    c.send(l.as_bytes()).await;
    assert_eq!(c.recv().await, "ACQUIRED");
    assert_eq!(srv.snapshot().locks_held, 4000);
    // Exactly 65,535 bytes and \r\n: the original answers it (BAD_FORMAT here).
    let mut long = "x".repeat(65_535);
    long.push_str("\r\n");
    c.send(long.as_bytes()).await;
    assert_eq!(c.recv().await, "BAD_FORMAT");
    // 131,070 bytes with no newline: the original can never answer it.
    c.send("y".repeat(131_070).as_bytes()).await;
    assert!(c.closed_by_server().await);
}

/// Defect 10: a QUIT behind a waiting ACQUIRE withdraws the wait: the ACQUIRE is answered
/// null, the QUIT OK, and the lock is never granted to the leaving session.
#[tokio::test]
async fn quit_behind_a_waiting_acquire_withdraws_it() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    let mut b = Resp::authed(srv.addr).await;
    let mut burst = bytes::BytesMut::new();
    lockd_proto::resp::encode_request(&["ACQUIRE", "EX", "600000", "k"], &mut burst);
    lockd_proto::resp::encode_request(&["PING"], &mut burst);
    lockd_proto::resp::encode_request(&["QUIT"], &mut burst);
    b.writer.write_all(&burst).await.unwrap();
    assert_eq!(b.recv().await, R::Null);
    assert_eq!(b.recv().await, R::Simple("PONG".into()));
    assert_eq!(b.recv().await, R::Simple("OK".into()));
    assert!(b.closed_by_server().await);
    assert_eq!(a.call(&["RELEASE", "EX", "k"]).await, R::Int(1));
    srv.eventually("nothing held", |s| s.locks_held == 0 && s.sessions == 1)
        .await;
}

/// Defect 10, half-closed: the wait is withdrawn and answered, then the connection closes.
#[tokio::test]
async fn a_half_close_behind_a_waiting_acquire_withdraws_it() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    let mut b = Resp::authed(srv.addr).await;
    b.send(&["ACQUIRE", "EX", "600000", "k"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    b.writer.shutdown().await.unwrap();
    assert_eq!(b.recv().await, R::Null);
    assert!(b.closed_by_server().await);
    assert_eq!(a.call(&["RELEASE", "EX", "k"]).await, R::Int(1));
    srv.eventually("nothing held", |s| s.locks_held == 0).await;
}

/// Issue 17, defect 6: `--idle-timeout` closes a connection idle that long, and only an
/// idle one: a connection whose ACQUIRE waits is not idle.
#[tokio::test]
async fn the_idle_timeout_closes_idle_connections_only() {
    let srv = TestServer::start_with(|c| c.idle_timeout = Some(Duration::from_secs(1))).await;
    let mut a = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    let mut b = Resp::authed(srv.addr).await;
    b.send(&["ACQUIRE", "EX", "600000", "k"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    let started = std::time::Instant::now();
    assert!(
        a.closed_by_server().await,
        "the idle holder's connection is closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // a's session is dead now (grace 60 s): b still waits, its connection open.
    srv.eventually("a dead", |s| s.dead_sessions == 1).await;
    let mut c = Resp::authed(srv.addr).await;
    assert_eq!(c.call(&["PING"]).await, R::Simple("PONG".into()));
    assert_no_reply(&mut b, &mut c, "a waiting connection is not idle").await;
    assert_eq!(srv.snapshot().waiters, 1);
}
