//! The native protocol over TCP: every command, blocking waits, timeouts (manual clock),
//! disconnects, resume, deadlocks, and legacy and native traffic on the same keys.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn authentication_comes_first() {
    let srv = TestServer::start().await;
    let mut c = Resp::connect(srv.addr).await;
    assert_eq!(c.call(&["PING"]).await, R::Simple("PONG".into()));
    assert_eq!(c.call(&["ping", "hi"]).await, R::Bulk(b"hi".to_vec()));
    assert_eq!(
        c.call(&["ACQUIRE", "EX", "0", "k"]).await.err(),
        "NOAUTH Authentication required."
    );
    assert_eq!(
        c.call(&["SESSION"]).await.err(),
        "NOAUTH Authentication required."
    );
    assert!(c
        .call(&["AUTH", "wrong"])
        .await
        .err()
        .starts_with("WRONGPASS"));
    assert!(c
        .call(&["AUTH", "default", "wrong"])
        .await
        .err()
        .starts_with("WRONGPASS"));
    // HELLO is answered before AUTH (and switches protocol), but does not authenticate.
    let hello = c.call(&["HELLO", "3"]).await;
    assert_eq!(hello.get("proto").int(), 3);
    assert_eq!(
        c.call(&["LOCKS"]).await.err(),
        "NOAUTH Authentication required."
    );
    assert_eq!(
        c.call(&["AUTH", "default", AUTH_KEY]).await,
        R::Simple("OK".into())
    );
    assert!(c.call(&["ACQUIRE", "EX", "0", "k"]).await.int() > 0);
    assert_eq!(srv.snapshot().auth_failures, 2, "two wrong passwords");
}

#[tokio::test]
async fn hello_switches_to_resp3_and_authenticates() {
    let srv = TestServer::start().await;
    let mut c = Resp::connect(srv.addr).await;
    assert!(c.call(&["HELLO", "4"]).await.err().starts_with("NOPROTO"));
    let hello = c
        .call(&["HELLO", "3", "AUTH", "default", AUTH_KEY, "SETNAME", "t"])
        .await;
    assert!(matches!(hello, R::Map(_)), "{hello:?}");
    assert_eq!(hello.get("server").text(), "lockd");
    assert_eq!(hello.get("proto").int(), 3);
    assert!(hello.get("id").int() > 0);
    assert_eq!(c.call(&["CLIENT", "GETNAME"]).await, R::Bulk(b"t".to_vec()));
    let mut other = Resp::authed(srv.addr).await;
    assert!(other.call(&["ACQUIRE", "EX", "0", "k"]).await.int() > 0);
    // RESP3 null for a refused try-lock; RESP2 for the other connection.
    assert_eq!(c.call(&["ACQUIRE", "SH", "0", "k"]).await, R::Null);
    assert!(matches!(c.call(&["STATS"]).await, R::Map(_)));
    let hello2 = other.call(&["HELLO"]).await;
    assert_eq!(hello2.get("proto").int(), 2, "{hello2:?}");
}

#[tokio::test]
async fn acquire_release_inspect_locks() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let t1 = a.call(&["ACQUIRE", "SH", "0", "k1", "k2"]).await.int();
    let t2 = b.call(&["acquire", "sh", "0", "k2"]).await.int();
    assert!(t2 > t1 && t1 > 0);
    assert_eq!(b.call(&["ACQUIRE", "EX", "0", "k1"]).await, R::Null);
    let info = a.call(&["INSPECT", "k2"]).await;
    let holders = info.get("holders").items();
    assert_eq!(holders.len(), 2);
    assert_eq!(holders[0].get("mode").text(), "SH");
    assert_eq!(holders[0].get("token").int(), t1);
    let sa = a.call(&["SESSION"]).await.text();
    assert_eq!(sa.len(), 32);
    assert_eq!(holders[0].get("session").text(), sa);
    let locks = b.call(&["LOCKS", &sa]).await;
    assert_eq!(locks.items().len(), 2);
    assert_eq!(locks.items()[0].get("key").text(), "k1");
    assert_eq!(a.call(&["RELEASE", "SH", "k1", "nothere"]).await.int(), 1);
    assert_eq!(
        a.call(&["RELEASE", "EX", "k2"]).await.int(),
        0,
        "held SH, not EX"
    );
    assert_eq!(a.call(&["RELEASEALL"]).await.int(), 1);
    assert_eq!(a.call(&["LOCKS"]).await.items().len(), 0);
    let stats = a.call(&["STATS"]).await;
    for field in [
        "uptime",
        "connections",
        "sessions",
        "dead_sessions",
        "locks_held",
        "waiters",
        "grants",
        "conflicts",
        "timeouts",
        "deadlocks",
        "expired_sessions",
        "memory",
    ] {
        stats.get(field);
    }
    assert_eq!(stats.get("locks_held").int(), 1);
    assert_eq!(stats.get("grants").int(), 2);
    assert_eq!(stats.get("conflicts").int(), 1);
    assert_eq!(stats.get("connections").int(), 2);
}

#[tokio::test]
async fn a_waiter_is_granted_on_release_with_a_larger_token() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let t1 = a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    b.send(&["ACQUIRE", "EX", "60000", "k"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    assert_no_reply(&mut b, &mut a, "still waiting").await;
    let info = a.call(&["INSPECT", "k"]).await;
    assert_eq!(info.get("waiters").items().len(), 1);
    assert_eq!(a.call(&["RELEASE", "EX", "k"]).await.int(), 1);
    let t2 = b.recv().await.int();
    assert!(t2 > t1);
}

#[tokio::test]
async fn a_wait_times_out_with_null_and_nothing_held() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    b.send(&["ACQUIRE", "EX", "5000", "k", "free"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    srv.clock.advance(4_999);
    assert_no_reply(&mut b, &mut a, "1 ms before the timeout").await;
    srv.clock.advance(1);
    assert_eq!(b.recv().await, R::Null);
    assert_eq!(b.call(&["LOCKS"]).await.items().len(), 0);
    let s = srv.snapshot();
    assert_eq!((s.waiters, s.table.timeouts, s.locks_held), (0, 1, 1));
    // "free" was promised to b while it waited; now it is free again.
    assert!(a.call(&["ACQUIRE", "EX", "0", "free"]).await.int() > 0);
}

#[tokio::test]
async fn commands_after_a_blocking_acquire_wait_for_it() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    b.send(&["ACQUIRE", "EX", "60000", "k"]).await;
    b.send(&["PING"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    assert_no_reply(&mut b, &mut a, "PING is not answered before the ACQUIRE").await;
    a.call(&["RELEASEALL"]).await;
    assert!(b.recv().await.int() > 0);
    assert_eq!(b.recv().await, R::Simple("PONG".into()));
}

#[tokio::test]
async fn disconnecting_cancels_the_wait_at_once() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let mut c = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    b.send(&["ACQUIRE", "EX", "60000", "k"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    drop(b);
    srv.eventually("b's wait withdrawn", |s| s.waiters == 0)
        .await;
    a.call(&["RELEASEALL"]).await;
    assert!(
        c.call(&["ACQUIRE", "EX", "0", "k"]).await.int() > 0,
        "nobody else got it"
    );
}

#[tokio::test]
async fn deadlock_is_refused_and_nothing_queued() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "x"]).await.int();
    b.call(&["ACQUIRE", "EX", "0", "y"]).await.int();
    let sa = a.call(&["SESSION"]).await.text();
    a.send(&["ACQUIRE", "EX", "60000", "y"]).await;
    srv.eventually("a queued", |s| s.waiters == 1).await;
    let e = b.call(&["ACQUIRE", "EX", "60000", "x"]).await;
    assert!(e.err().starts_with("DEADLOCK"), "{e:?}");
    assert!(e.err().contains(&sa), "names the other session: {e:?}");
    assert_eq!(srv.snapshot().waiters, 1);
    b.call(&["RELEASEALL"]).await;
    assert!(a.recv().await.int() > 0);
}

#[tokio::test]
async fn resume_takes_over_a_dead_session_with_its_locks() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(30)).await;
    let mut a = Resp::authed(srv.addr).await;
    let token = a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    let id = a.call(&["SESSION"]).await.text();
    let mut live = Resp::authed(srv.addr).await;
    let live_id = live.call(&["SESSION"]).await.text();
    let mut b = Resp::authed(srv.addr).await;
    assert!(b
        .call(&["SESSION", "RESUME", &id])
        .await
        .err()
        .starts_with("BUSYSESSION"));
    assert!(b
        .call(&["SESSION", "RESUME", &live_id])
        .await
        .err()
        .starts_with("BUSYSESSION"));
    assert!(b
        .call(&["SESSION", "RESUME", "nosuchsessionnosuchsessionnosuch"])
        .await
        .err()
        .starts_with("NOSESSION"));
    drop(a);
    srv.eventually("a dead", |s| s.dead_sessions == 1).await;
    srv.clock.advance(20_000);
    assert_eq!(
        b.call(&["SESSION", "RESUME", &id]).await,
        R::Simple("OK".into())
    );
    assert_eq!(b.call(&["SESSION"]).await.text(), id);
    let locks = b.call(&["LOCKS"]).await;
    assert_eq!(locks.items()[0].get("token").int(), token);
    srv.clock.advance(60_000);
    assert_eq!(
        live.call(&["ACQUIRE", "EX", "0", "k"]).await,
        R::Null,
        "kept: no longer dead"
    );
    assert_eq!(b.call(&["RELEASE", "EX", "k"]).await.int(), 1);
}

#[tokio::test]
async fn session_grace_sets_how_long_locks_outlive_the_connection() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(60)).await;
    let mut a = Resp::authed(srv.addr).await;
    assert_eq!(
        a.call(&["SESSION", "GRACE", "1000"]).await,
        R::Simple("OK".into())
    );
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    drop(a);
    srv.eventually("a dead", |s| s.dead_sessions == 1).await;
    let mut b = Resp::authed(srv.addr).await;
    assert_eq!(b.call(&["ACQUIRE", "EX", "0", "k"]).await, R::Null);
    srv.clock.advance(1_000);
    assert!(b.call(&["ACQUIRE", "EX", "0", "k"]).await.int() > 0);
}

#[tokio::test]
async fn a_waiter_on_a_dead_sessions_lock_is_granted_when_it_expires() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(5)).await;
    let mut a = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    drop(a);
    srv.eventually("a dead", |s| s.dead_sessions == 1).await;
    let mut b = Resp::authed(srv.addr).await;
    b.send(&["ACQUIRE", "EX", "60000", "k"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    srv.clock.advance(5_000);
    assert!(
        b.recv().await.int() > 0,
        "the expiry timer hands the lock over"
    );
}

#[tokio::test]
async fn legacy_and_native_share_the_lock_table() {
    let srv = TestServer::start().await;
    let mut legacy = srv.connect().await;
    let mut native = Resp::authed(srv.addr).await;
    let k = key(7);
    assert_eq!(
        legacy.call(&session('L'), "ACQUIRE", "EX", &k).await,
        "ACQUIRED"
    );
    assert_eq!(native.call(&["ACQUIRE", "SH", "0", &k]).await, R::Null);
    native.send(&["ACQUIRE", "SH", "60000", &k]).await;
    srv.eventually("native queued", |s| s.waiters == 1).await;
    // A legacy try-lock does not overtake the queued native request.
    assert_eq!(
        legacy.call(&session('M'), "ACQUIRE", "EX", &k).await,
        "CANT_ACQUIRE"
    );
    assert_eq!(
        legacy.call(&session('L'), "RELEASE", "EX", &k).await,
        "RELEASED"
    );
    assert!(native.recv().await.int() > 0);
    assert_eq!(
        legacy.call(&session('M'), "ACQUIRE", "EX", &k).await,
        "CANT_ACQUIRE"
    );
    assert_eq!(
        legacy.call(&session('M'), "ACQUIRE", "SH", &k).await,
        "ACQUIRED"
    );
    // A native session id is a valid legacy session: legacy can act for it.
    let id = native.call(&["SESSION"]).await.text();
    assert_eq!(legacy.call(&id, "RELEASE", "SH", &k).await, "RELEASED");
    assert_eq!(native.call(&["LOCKS"]).await.items().len(), 0);
    let stats = native.call(&["STATS"]).await;
    assert!(stats.get("legacy_requests").int() >= 5);
    assert_eq!(stats.get("locks_held").int(), 1);
}

#[tokio::test]
async fn a_native_connection_can_resume_a_dead_legacy_session() {
    let srv = TestServer::start_with(|c| c.lock_timeout = Duration::from_secs(30)).await;
    let mut legacy = srv.connect().await;
    assert_eq!(
        legacy.call(&session('L'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    drop(legacy);
    srv.eventually("legacy session dead", |s| s.dead_sessions == 1)
        .await;
    let mut n = Resp::authed(srv.addr).await;
    assert_eq!(
        n.call(&["SESSION", "RESUME", &session('L')]).await,
        R::Simple("OK".into())
    );
    assert_eq!(n.call(&["RELEASEALL"]).await.int(), 1);
}

#[tokio::test]
async fn limits_and_bad_arguments_get_clear_errors() {
    let srv = TestServer::start_with(|c| c.max_locks = 2).await;
    let mut c = Resp::authed(srv.addr).await;
    assert!(c
        .call(&["ACQUIRE", "EX", "0", "a", "b", "c"])
        .await
        .err()
        .starts_with("TOOMANYLOCKS"));
    assert!(c
        .call(&["ACQUIRE", "XX", "0", "a"])
        .await
        .err()
        .starts_with("ERR"));
    assert!(c
        .call(&["ACQUIRE", "EX", "-1", "a"])
        .await
        .err()
        .starts_with("ERR"));
    assert!(c
        .call(&["ACQUIRE", "EX", "soon", "a"])
        .await
        .err()
        .starts_with("ERR"));
    assert!(c
        .call(&["ACQUIRE", "EX", "0"])
        .await
        .err()
        .starts_with("ERR wrong number"));
    assert!(c
        .call(&["ACQUIRE", "EX", "0", ""])
        .await
        .err()
        .contains("invalid key"));
    let long = "k".repeat(1025);
    assert!(c
        .call(&["ACQUIRE", "EX", "0", &long])
        .await
        .err()
        .contains("invalid key"));
    assert!(
        c.call(&["ACQUIRE", "EX", "0", &"k".repeat(1024)])
            .await
            .int()
            > 0
    );
    assert!(c
        .call(&["RELEASEALL", "x"])
        .await
        .err()
        .starts_with("ERR wrong number"));
    assert!(c.call(&["SESSION", "FLY"]).await.err().starts_with("ERR"));
    assert!(c
        .call(&["NOPE", "a"])
        .await
        .err()
        .starts_with("ERR unknown command 'NOPE'"));
    assert_eq!(srv.snapshot().locks_held, 1);
}

#[tokio::test]
async fn too_many_waiters_on_a_key_is_an_error() {
    let srv = TestServer::start_with(|c| c.max_waiters_per_key = 1).await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let mut c = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    b.send(&["ACQUIRE", "EX", "60000", "k"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    assert!(c
        .call(&["ACQUIRE", "EX", "60000", "k"])
        .await
        .err()
        .contains("too many waiters"));
}

#[tokio::test]
async fn a_protocol_error_is_answered_then_the_connection_closes() {
    let srv = TestServer::start().await;
    let mut c = Resp::authed(srv.addr).await;
    tokio::io::AsyncWriteExt::write_all(&mut c.writer, b"*1\r\n+PING\r\n")
        .await
        .unwrap();
    assert!(c.recv().await.err().starts_with("ERR Protocol error"));
    assert!(c.closed_by_server().await);
    let mut d = Resp::authed(srv.addr).await;
    assert_eq!(d.call(&["QUIT"]).await, R::Simple("OK".into()));
    assert!(d.closed_by_server().await);
}

#[tokio::test]
async fn fencing_tokens_keep_increasing_across_restarts_with_a_data_dir() {
    let dir = std::env::temp_dir().join(format!("lockd-it-tokens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut last = 0u64;
    for _ in 0..3 {
        let d = dir.clone();
        let srv = TestServer::start_with(move |c| c.data_dir = Some(d)).await;
        let mut c = Resp::authed(srv.addr).await;
        let t = c.call(&["ACQUIRE", "EX", "0", "k"]).await.int() as u64;
        // The data dir is what keeps them increasing: the token is within the range the
        // directory records, and above everything the previous run recorded.
        let limit: u64 = std::fs::read_to_string(dir.join("token-limit"))
            .expect("the data dir records a limit")
            .trim()
            .parse()
            .unwrap();
        assert!(
            t > last && t <= limit,
            "token {t}, previous limit {last}, limit {limit}"
        );
        last = limit;
        srv.shutdown.cancel();
        srv.task.await.unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn without_a_data_dir_tokens_start_from_the_clock() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let srv = TestServer::start().await;
    let mut c = Resp::authed(srv.addr).await;
    assert!(c.call(&["ACQUIRE", "EX", "0", "k"]).await.int() >= before);
}

#[tokio::test]
async fn a_huge_timeout_waits_without_trouble() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
    b.send(&["ACQUIRE", "EX", "18446744073709551615", "k"])
        .await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    srv.clock.advance(u64::MAX / 2);
    assert_no_reply(&mut b, &mut a, "a huge timeout has not passed").await;
    a.call(&["RELEASEALL"]).await;
    assert!(b.recv().await.int() > 0);
    assert!(b
        .call(&["ACQUIRE", "EX", "18446744073709551616", "k"])
        .await
        .err()
        .starts_with("ERR"));
}

#[tokio::test]
async fn repeated_auth_failures_cost_the_failing_connection_only() {
    let srv = TestServer::start().await;
    let mut c = Resp::connect(srv.addr).await;
    for _ in 0..19 {
        assert!(c
            .call(&["AUTH", "guess"])
            .await
            .err()
            .starts_with("WRONGPASS"));
    }
    // The 20th failure in 10 s puts the address past the limit: answered, then closed.
    assert!(c
        .call(&["AUTH", "guess"])
        .await
        .err()
        .starts_with("WRONGPASS"));
    assert!(c.closed_by_server().await);
    // Correct keys and signatures from the same address are served all along.
    let mut d = Resp::connect(srv.addr).await;
    assert_eq!(d.call(&["AUTH", AUTH_KEY]).await, R::Simple("OK".into()));
    let mut legacy = srv.connect().await;
    assert!(legacy
        .call(&session('a'), "STAT", "", "")
        .await
        .contains(':'));
    // A failure while past the limit closes at once; after the block it no longer does.
    let mut e = Resp::connect(srv.addr).await;
    assert!(e.call(&["AUTH", "x"]).await.err().starts_with("WRONGPASS"));
    assert!(e.closed_by_server().await);
    srv.clock.advance(30_000);
    let mut f = Resp::connect(srv.addr).await;
    assert!(f.call(&["AUTH", "x"]).await.err().starts_with("WRONGPASS"));
    assert_eq!(f.call(&["AUTH", AUTH_KEY]).await, R::Simple("OK".into()));
    assert_eq!(srv.snapshot().auth_failures, 22);
}

#[tokio::test]
async fn legacy_bad_signatures_count_as_auth_failures() {
    let srv = TestServer::start().await;
    let mut legacy = srv.connect().await;
    legacy
        .send(format!("{}:{}:STAT::\n", session('a'), "0".repeat(40)).as_bytes())
        .await;
    assert_eq!(legacy.recv().await, "BAD_KEY");
    assert_eq!(srv.snapshot().auth_failures, 1);
}

#[tokio::test]
async fn what_redis_clients_send_on_connect_is_answered() {
    let srv = TestServer::start().await;
    let mut c = Resp::authed(srv.addr).await;
    assert_eq!(c.call(&["SELECT", "0"]).await, R::Simple("OK".into()));
    assert!(c.call(&["SELECT", "1"]).await.err().starts_with("ERR"));
    assert_eq!(c.call(&["COMMAND", "DOCS"]).await, R::Array(vec![]));
    assert_eq!(
        c.call(&["CLIENT", "SETINFO", "LIB-NAME", "x"]).await,
        R::Simple("OK".into())
    );
    assert_eq!(
        c.call(&["CLIENT", "SETNAME", "worker-7"]).await,
        R::Simple("OK".into())
    );
    assert_eq!(
        c.call(&["CLIENT", "GETNAME"]).await,
        R::Bulk(b"worker-7".to_vec())
    );
    assert!(c.call(&["CLIENT", "ID"]).await.int() > 0);
    assert!(c
        .call(&["CLIENT", "KILL", "x"])
        .await
        .err()
        .starts_with("ERR"));
}

#[tokio::test]
async fn with_busy_polling_requests_and_hand_offs_are_served_the_same() {
    let srv = TestServer::start_with(|c| c.busy_poll = Some(Duration::from_micros(200))).await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    for round in 0..50 {
        let t1 = a.call(&["ACQUIRE", "EX", "0", "k"]).await.int();
        b.send(&["ACQUIRE", "EX", "60000", "k"]).await;
        srv.eventually("b queued", |s| s.waiters == 1).await;
        assert_eq!(
            a.call(&["RELEASE", "EX", "k"]).await.int(),
            1,
            "round {round}"
        );
        let t2 = b.recv().await.int();
        assert!(t2 > t1);
        assert_eq!(b.call(&["RELEASE", "EX", "k"]).await.int(), 1);
    }
    // After the window a new client is served as before.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut c = Resp::authed(srv.addr).await;
    assert!(c.call(&["ACQUIRE", "EX", "0", "k"]).await.int() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_connection_that_never_stops_sending() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start().await;
    let (mut r, mut w) = tokio::net::TcpStream::connect(srv.addr)
        .await
        .unwrap()
        .into_split();
    let flood = b"*1\r\n$4\r\nPING\r\n".repeat(256);
    let writer = tokio::spawn(async move { while w.write_all(&flood).await.is_ok() {} });
    let reader = tokio::spawn(async move {
        let (mut buf, mut total) = (vec![0u8; 64 * 1024], 0usize);
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    srv.eventually("the flood is being answered", |s| {
        s.native_requests > 10_000
    })
    .await;
    srv.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), srv.task)
        .await
        .expect("run returns while a client floods")
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    assert!(answered > 0);
    writer.abort();
}

#[tokio::test]
async fn a_queued_acquire_whose_turn_comes_without_room_gets_toomanylocks() {
    let srv = TestServer::start_with(|c| c.max_locks = 3).await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let mut c = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "k1"]).await.int();
    b.send(&["ACQUIRE", "EX", "60000", "k1", "k2"]).await;
    srv.eventually("b queued", |s| s.waiters == 1).await;
    c.call(&["ACQUIRE", "EX", "0", "k3", "k4"]).await.int();
    assert_eq!(a.call(&["RELEASE", "EX", "k1"]).await.int(), 1);
    assert!(
        b.recv().await.err().starts_with("TOOMANYLOCKS"),
        "granting b would hold 4 locks, max 3"
    );
    let s = srv.snapshot();
    assert_eq!((s.locks_held, s.waiters), (2, 0));
    // b's connection is usable again, and a request that fits is granted.
    assert!(b.call(&["ACQUIRE", "EX", "0", "k1"]).await.int() > 0);
}

/// Issue 12: a release that names its grant's token lets go only while the lock carries
/// that token, so a stale holder's release cannot free a newer grant.
#[tokio::test]
async fn release_token_lets_go_only_of_that_grant() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let t1 = a.call(&["ACQUIRE", "EX", "0", "k"]).await.int().to_string();
    let t2 = a.call(&["ACQUIRE", "EX", "0", "k"]).await.int().to_string();
    assert_eq!(
        a.call(&["RELEASE", "TOKEN", &t1, "EX", "k"]).await,
        R::Int(0)
    );
    assert_eq!(a.call(&["LOCKS"]).await.items().len(), 1, "still held");
    assert_eq!(
        a.call(&["RELEASE", "TOKEN", &t2, "SH", "k"]).await,
        R::Int(0),
        "other mode"
    );
    assert_eq!(
        a.call(&["RELEASE", "TOKEN", &t2, "EX", "k"]).await,
        R::Int(1)
    );
    assert_eq!(a.call(&["LOCKS"]).await.items().len(), 0);
    assert!(a
        .call(&["RELEASE", "TOKEN", "x", "EX", "k"])
        .await
        .err()
        .starts_with("ERR token"));
    assert!(a
        .call(&["RELEASE", "TOKEN", &t2, "EX"])
        .await
        .err()
        .starts_with("ERR wrong number"));
}

/// A standalone lockd refuses CLUSTER as a Redis without cluster mode does, so that a
/// Redis Cluster client does not take it for one.
#[tokio::test]
async fn cluster_subcommands_are_refused_on_a_standalone_server() {
    let srv = TestServer::start().await;
    let mut c = Resp::authed(srv.addr).await;
    assert!(c
        .call(&["CLUSTER", "INFO"])
        .await
        .err()
        .contains("cluster support disabled"));
    assert!(c
        .call(&["CLUSTER", "STATUS"])
        .await
        .err()
        .contains("not a cluster node"));
}
