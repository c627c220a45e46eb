//! The legacy protocol over TCP: replies, pipelining, sessions and the grace period,
//! limits and malformed input.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::harness::*;

#[tokio::test]
async fn acquire_conflict_release_over_tcp() {
    let srv = TestServer::start().await;
    let mut a = srv.connect().await;
    let mut b = srv.connect().await;
    let (sa, sb) = (session('a'), session('b'));
    let ks = format!("{}|{}", key(1), key(2));
    assert_eq!(a.call(&sa, "ACQUIRE", "EX", &ks).await, "ACQUIRED");
    assert_eq!(b.call(&sb, "ACQUIRE", "SH", &key(2)).await, "CANT_ACQUIRE");
    assert_eq!(b.call(&sb, "ACQUIRE", "SH", &key(3)).await, "ACQUIRED");
    assert_eq!(a.call(&sa, "RELEASE", "EX", &key(2)).await, "RELEASED");
    assert_eq!(
        a.call(&sa, "RELEASE", "EX", &key(9)).await,
        "RELEASED",
        "not held: still RELEASED"
    );
    assert_eq!(b.call(&sb, "ACQUIRE", "SH", &key(2)).await, "ACQUIRED");
    assert_eq!(a.call(&sa, "RELEASE_ALL", "", "").await, "RELEASED_ALL");
    assert_eq!(srv.snapshot().locks_held, 2);
}

#[tokio::test]
async fn pipelined_requests_are_each_answered_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let (sa, sb) = (session('a'), session('b'));
    let mut batch = String::new();
    let mut want = Vec::new();
    for i in 0..200 {
        batch += &line(&sa, "ACQUIRE", "EX", &key(i));
        want.push("ACQUIRED");
        batch += &line(&sb, "ACQUIRE", "EX", &key(i));
        want.push("CANT_ACQUIRE");
    }
    batch += "not a request\r\n";
    want.push("BAD_FORMAT");
    batch += &line(&sa, "RELEASE_ALL", "", "");
    want.push("RELEASED_ALL");
    c.send(batch.as_bytes()).await;
    for (i, w) in want.iter().enumerate() {
        assert_eq!(c.recv().await, *w, "reply {i}");
    }
    assert_eq!(srv.snapshot().locks_held, 0);
}

#[tokio::test]
async fn a_request_split_across_writes_is_one_request() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let l = line(&session('a'), "ACQUIRE", "EX", &key(1));
    for chunk in l.as_bytes().chunks(7) {
        c.send(chunk).await;
        c.writer.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(c.recv().await, "ACQUIRED");
}

#[tokio::test]
async fn dead_session_keeps_locks_for_lock_timeout_then_loses_them() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(60)).await;
    let mut a = srv.connect().await;
    let mut b = srv.connect().await;
    assert_eq!(
        a.call(&session('a'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    drop(a);
    srv.eventually("session a dead", |s| s.dead_sessions == 1)
        .await;
    srv.clock.advance(59_999);
    assert_eq!(
        b.call(&session('b'), "ACQUIRE", "EX", &key(1)).await,
        "CANT_ACQUIRE"
    );
    srv.clock.advance(1);
    assert_eq!(
        b.call(&session('b'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    assert_eq!(srv.snapshot().table.expired_sessions, 1);
}

#[tokio::test]
async fn expiry_happens_on_an_idle_server() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(5)).await;
    let mut a = srv.connect().await;
    assert_eq!(
        a.call(&session('a'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    drop(a);
    srv.eventually("session a dead", |s| s.dead_sessions == 1)
        .await;
    srv.clock.advance(5_000);
    // No request is sent: only the timer can release the lock.
    srv.eventually("lock released by the timer", |s| {
        s.locks_held == 0 && s.dead_sessions == 0
    })
    .await;
}

#[tokio::test]
async fn dead_session_revives_on_any_connection_and_keeps_locks() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(10)).await;
    let mut a = srv.connect().await;
    assert_eq!(
        a.call(&session('a'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    drop(a);
    srv.eventually("session a dead", |s| s.dead_sessions == 1)
        .await;
    srv.clock.advance(9_000);
    let mut a2 = srv.connect().await;
    let stat = a2.call(&session('a'), "STAT", "", "").await;
    assert!(stat.contains(':'), "{stat}");
    assert_eq!(srv.snapshot().dead_sessions, 0);
    srv.clock.advance(100_000);
    let mut b = srv.connect().await;
    assert_eq!(
        b.call(&session('b'), "ACQUIRE", "SH", &key(1)).await,
        "CANT_ACQUIRE"
    );
    // Still a's: it can release what it took on the first connection.
    assert_eq!(
        a2.call(&session('a'), "RELEASE", "EX", &key(1)).await,
        "RELEASED"
    );
    assert_eq!(
        b.call(&session('b'), "ACQUIRE", "SH", &key(1)).await,
        "ACQUIRED"
    );
}

#[tokio::test]
async fn every_session_used_on_a_closed_connection_expires() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(1)).await;
    let mut c = srv.connect().await;
    for (i, s) in ['a', 'b', 'c', 'd'].into_iter().enumerate() {
        assert_eq!(
            c.call(&session(s), "ACQUIRE", "EX", &key(i as u32)).await,
            "ACQUIRED"
        );
    }
    drop(c);
    srv.eventually("four dead sessions", |s| s.dead_sessions == 4)
        .await;
    srv.clock.advance(1_000);
    srv.eventually("all released", |s| s.locks_held == 0 && s.sessions == 0)
        .await;
}

#[tokio::test]
async fn too_many_locks_counts_distinct_locks() {
    let srv = TestServer::start_with(|c| c.max_locks = 2).await;
    let mut c = srv.connect().await;
    let s = session('a');
    assert_eq!(c.call(&s, "ACQUIRE", "EX", &key(1)).await, "ACQUIRED");
    for _ in 0..5 {
        assert_eq!(c.call(&s, "ACQUIRE", "EX", &key(1)).await, "ACQUIRED");
    }
    assert_eq!(c.call(&s, "ACQUIRE", "SH", &key(2)).await, "ACQUIRED");
    assert_eq!(c.call(&s, "ACQUIRE", "SH", &key(3)).await, "TOO_MANY_LOCKS");
    assert_eq!(c.call(&s, "RELEASE", "SH", &key(2)).await, "RELEASED");
    assert_eq!(c.call(&s, "ACQUIRE", "SH", &key(3)).await, "ACQUIRED");
}

#[tokio::test]
async fn max_clients_refuses_at_once_and_frees_on_close() {
    let srv = TestServer::start_with(|c| c.max_clients = 2).await;
    let mut a = srv.connect().await;
    let mut b = srv.connect().await;
    assert!(a.call(&session('a'), "STAT", "", "").await.contains(':'));
    assert!(b.call(&session('b'), "STAT", "", "").await.contains(':'));
    let mut c = srv.connect().await;
    assert_eq!(c.recv().await, "-ERR max number of clients reached\r");
    assert!(c.closed_by_server().await);
    assert_eq!(srv.snapshot().refused_clients, 1);
    drop(a);
    srv.eventually("a's connection gone", |s| s.connections == 1)
        .await;
    let mut d = srv.connect().await;
    assert!(d.call(&session('d'), "STAT", "", "").await.contains(':'));
}

#[tokio::test]
async fn oversize_line_closes_the_connection_and_a_maximal_one_does_not() {
    let srv = TestServer::start().await;
    let mut ok = srv.connect().await;
    // The longest line the original can answer: 131,070 bytes with its newline.
    let mut line = vec![b'x'; 131_069];
    line.push(b'\n');
    ok.send(&line).await;
    assert_eq!(ok.recv().await, "BAD_FORMAT");
    let mut big = srv.connect().await;
    // Written in pieces, as a slow client would.
    for chunk in vec![b'y'; 140_000].chunks(10_000) {
        let _ = big.writer.write_all(chunk).await;
    }
    assert!(big.closed_by_server().await);
    assert_eq!(
        ok.call(&session('a'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected() {
    let srv = TestServer::start_with(|c| c.max_pending_output = 64 * 1024).await;
    let mut hog = srv.connect().await;
    let mut good = srv.connect().await;
    assert_eq!(
        good.call(&session('g'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    // "x\n" is answered with "BAD_FORMAT\n": 5.5 bytes out for each byte in.
    let chunk = "x\n".repeat(32 * 1024);
    for _ in 0..200 {
        if hog.writer.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        if srv.snapshot().connections == 1 {
            break;
        }
    }
    srv.eventually("the hog is disconnected", |s| s.connections == 1)
        .await;
    // Others are unaffected, and locks are intact.
    assert_eq!(
        good.call(&session('g'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    assert_eq!(srv.snapshot().locks_held, 1);
}

#[tokio::test]
async fn malformed_requests_get_each_reply_code() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let s = session('a');
    let sig = |sess: &str, cmd: &str, ty: &str, vals: &str| line(sess, cmd, ty, vals);
    let cases: Vec<(String, &str)> = vec![
        ("\n".into(), "BAD_FORMAT"),
        ("\r\n".into(), "BAD_FORMAT"),
        ("a:b:c:d\n".into(), "BAD_FORMAT"),
        ("a:b:c:d:e:f\n".into(), "BAD_FORMAT"),
        (format!("{s}:0123:ACQUIRE:EX:{}\n", key(1)), "BAD_KEY"),
        ("\u{0}\u{1}\u{2}:\u{ff}:x:y:z\n".into(), "BAD_KEY"),
        (sig("short", "STAT", "", ""), "BAD_SESSION"),
        (sig(&s, "LOCK", "EX", &key(1)), "BAD_COMMAND"),
        (sig(&s, "acquire", "EX", &key(1)), "BAD_COMMAND"),
        (sig(&s, "ACQUIRE", "XX", &key(1)), "BAD_TYPE"),
        (sig(&s, "RELEASE", "sh", &key(1)), "BAD_TYPE"),
        (sig(&s, "ACQUIRE", "EX", ""), "BAD_FORMAT"),
        (sig(&s, "ACQUIRE", "EX", "short"), "BAD_FORMAT"),
        (
            sig(&s, "ACQUIRE", "EX", &format!("{}|", key(1))),
            "BAD_FORMAT",
        ),
        (
            sig(&s, "RELEASE_ALL", "any", "thing|at all"),
            "RELEASED_ALL",
        ),
    ];
    for (req, want) in &cases {
        c.send(req.as_bytes()).await;
        assert_eq!(c.recv().await, *want, "request {req:?}");
    }
    // Binary garbage with no newline in it, then a newline: one BAD_FORMAT.
    let garbage: Vec<u8> = (0..=255u8)
        .filter(|&b| b != b'\n' && b != b':')
        .cycle()
        .take(3000)
        .collect();
    c.send(&garbage).await;
    c.send(b"\n").await;
    assert_eq!(c.recv().await, "BAD_FORMAT");
    // Nothing was locked by any of it, and the connection still works.
    assert_eq!(srv.snapshot().locks_held, 0);
    assert_eq!(c.call(&s, "ACQUIRE", "EX", &key(1)).await, "ACQUIRED");
    assert!(srv.snapshot().bad_requests >= cases.len() as u64);
}

#[tokio::test]
async fn stat_reports_uptime_and_memory() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    srv.clock.advance(1_803_000);
    let stat = c.call(&session('a'), "STAT", "", "").await;
    let (up, mem) = stat.split_once(':').unwrap();
    assert_eq!(up, "1803");
    let mem: u64 = mem.parse().unwrap();
    assert!(mem > 0);
}

#[tokio::test]
async fn sha1_scheme_and_crlf_work_on_the_wire() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let s1 = lockd_proto::legacy::Signer::new(
        AUTH_KEY.as_bytes(),
        lockd_proto::legacy::AuthScheme::Sha1,
    );
    let mut l = s1.sign_line(
        session('a').as_bytes(),
        b"ACQUIRE",
        b"SH",
        key(1).as_bytes(),
    );
    l.extend_from_slice(b"\r\n");
    c.send(&l).await;
    assert_eq!(c.recv().await, "ACQUIRED");
}

#[tokio::test]
async fn half_closed_client_gets_its_replies() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let s = session('a');
    c.send((line(&s, "ACQUIRE", "EX", &key(1)) + &line(&s, "STAT", "", "")).as_bytes())
        .await;
    c.writer.shutdown().await.unwrap();
    assert_eq!(c.recv().await, "ACQUIRED");
    assert!(c.recv().await.contains(':'));
    assert!(c.closed_by_server().await);
}

#[tokio::test]
async fn shutdown_closes_connections_and_returns() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    assert_eq!(
        c.call(&session('a'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    srv.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), srv.task)
        .await
        .expect("run returns")
        .unwrap();
    assert!(c.closed_by_server().await);
}
