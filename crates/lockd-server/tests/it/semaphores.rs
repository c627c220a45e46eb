//! Semaphores over TCP: permits taken and handed on in FIFO order, mixed with locks in
//! one request, errors for a key of the other kind or capacity, introspection, release
//! by token, and the limits of the syntax.

use crate::harness::*;

#[tokio::test]
async fn permits_are_shared_out_in_order() {
    let srv = TestServer::start_with(|c| c.http_address = Some("127.0.0.1:0".into())).await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let mut c = Resp::authed(srv.addr).await;
    let ta = a
        .call(&["ACQUIRE", "PERMITS", "pool", "2", "3", "0"])
        .await
        .int();
    // One permit left: b asks for 2 and waits; c asks for 1 and waits behind b.
    b.send(&["ACQUIRE", "PERMITS", "pool", "2", "3", "60000"])
        .await;
    srv.eventually("b waits", |s| s.waiters == 1).await;
    assert_eq!(
        c.call(&["ACQUIRE", "PERMITS", "pool", "1", "3", "0"]).await,
        R::Null,
        "a try does not overtake the queue"
    );
    c.send(&["ACQUIRE", "PERMITS", "pool", "1", "3", "60000"])
        .await;
    srv.eventually("c waits", |s| s.waiters == 2).await;
    let info = a.call(&["INSPECT", "pool"]).await;
    assert_eq!(info.get("capacity").int(), 3);
    let holders = info.get("holders").items();
    assert_eq!(holders[0].get("mode").text(), "PERMITS");
    assert_eq!(holders[0].get("permits").int(), 2);
    let waiters = info.get("waiters").items();
    assert_eq!(
        waiters
            .iter()
            .map(|w| w.get("permits").int())
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
    // A release by a stale token lets go of nothing; by the grant's token, of the permits.
    assert_eq!(
        a.call(&["RELEASE", "TOKEN", "1", "PERMITS", "pool"])
            .await
            .int(),
        0
    );
    let t = ta.to_string();
    assert_eq!(
        a.call(&["RELEASE", "TOKEN", &t, "PERMITS", "pool"])
            .await
            .int(),
        1
    );
    let tb = b.recv().await.int();
    let tc = c.recv().await.int();
    assert!(ta < tb && tb < tc, "granted in queue order: {ta} {tb} {tc}");
    let locks = b.call(&["LOCKS"]).await;
    assert_eq!(locks.items()[0].get("permits").int(), 2);
    // A lock release does not take permits.
    assert_eq!(b.call(&["RELEASE", "SH", "pool"]).await.int(), 0);
    assert_eq!(b.call(&["RELEASEALL"]).await.int(), 1);
    let stats = a.call(&["STATS"]).await;
    assert!(stats.get("grants").int() >= 3);
    // c's permit: a semaphore hold, in neither mode of the locks.
    let snap = srv.snapshot();
    assert_eq!(
        (snap.semaphore_holds, snap.locks_held, snap.locks_sh),
        (1, 1, 0)
    );
    let (_, text) = http_get(srv.admin.unwrap(), "/metrics", None).await;
    assert!(text.contains("lockd_semaphore_holds 1"), "{text}");
    assert!(text.contains("lockd_locks_held{mode=\"EX\"} 0"), "{text}");
}

#[tokio::test]
async fn locks_and_permits_in_one_request_and_the_errors() {
    let srv = TestServer::start().await;
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let t = a
        .call(&[
            "ACQUIRE", "PERMITS", "pool", "1", "1", "EX", "0", "job", "log",
        ])
        .await
        .int();
    let locks = a.call(&["LOCKS"]).await;
    assert_eq!(locks.items().len(), 3);
    assert!(locks.items().iter().all(|l| l.get("token").int() == t));
    // All or nothing: the permit is free for nobody else, the lock is held: nothing taken.
    assert_eq!(
        b.call(&["ACQUIRE", "PERMITS", "pool2", "1", "1", "EX", "0", "job"])
            .await,
        R::Null
    );
    assert_eq!(
        b.call(&["INSPECT", "pool2"])
            .await
            .get("holders")
            .items()
            .len(),
        0
    );
    for (args, want) in [
        (
            vec!["ACQUIRE", "PERMITS", "pool", "1", "2", "0"],
            "WRONGTYPE key 'pool' is a semaphore of 1 permits, not a semaphore of 2",
        ),
        (
            vec!["ACQUIRE", "EX", "0", "pool"],
            "WRONGTYPE key 'pool' is a semaphore of 1 permits, not a lock",
        ),
        (
            vec!["ACQUIRE", "PERMITS", "job", "1", "2", "0"],
            "WRONGTYPE key 'job' is a lock, not a semaphore of 2",
        ),
        (
            vec!["ACQUIRE", "PERMITS", "p", "3", "2", "0"],
            "ERR permits must be 1 to the semaphore's capacity (2)",
        ),
        (
            vec!["ACQUIRE", "PERMITS", "p", "0", "2", "0"],
            "ERR permits must be 1 to the semaphore's capacity (2)",
        ),
        (
            vec!["ACQUIRE", "PERMITS", "p", "1", "65536", "0"],
            "ERR a semaphore's capacity must be 1 to 65535",
        ),
        (
            vec!["ACQUIRE", "PERMITS", "p", "1", "2", "0", "k"],
            "ERR lock keys need a mode: ACQUIRE [PERMITS ...] SH|EX timeout key [key ...]",
        ),
        (
            vec![
                "ACQUIRE", "PERMITS", "p", "1", "2", "PERMITS", "p", "1", "2", "0",
            ],
            "ERR key 'p' is named twice: a semaphore is asked for once, and is not also a lock",
        ),
        (
            vec!["ACQUIRE", "PERMITS", "p", "1", "2", "EX", "0", "p"],
            "ERR key 'p' is named twice: a semaphore is asked for once, and is not also a lock",
        ),
        (
            vec!["ACQUIRE", "PERMITS", "p", "1"],
            "ERR wrong number of arguments for 'acquire' command",
        ),
        (
            vec!["ACQUIRE", "PERMITS", "p", "1", "2"],
            "ERR wrong number of arguments for 'acquire' command",
        ),
    ] {
        assert_eq!(b.call(&args).await.err(), want, "{args:?}");
    }
    assert_eq!(srv.snapshot().waiters, 0);
    // A semaphore named SH, and a lock key named PERMITS, are just keys.
    assert!(
        b.call(&["ACQUIRE", "PERMITS", "SH", "1", "2", "0"])
            .await
            .int()
            > 0
    );
    assert!(b.call(&["ACQUIRE", "EX", "0", "PERMITS"]).await.int() > 0);
}

#[tokio::test]
async fn a_dead_holders_permits_wait_out_its_grace() {
    let srv = TestServer::start_with(|c| c.lock_timeout = std::time::Duration::from_secs(5)).await;
    let mut a = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "PERMITS", "pool", "1", "1", "0"])
        .await
        .int();
    drop(a);
    srv.eventually("a dead", |s| s.dead_sessions == 1).await;
    let mut b = Resp::authed(srv.addr).await;
    b.send(&["ACQUIRE", "PERMITS", "pool", "1", "1", "60000"])
        .await;
    srv.eventually("b waits", |s| s.waiters == 1).await;
    srv.clock.advance(4_999);
    assert!(b.nothing_to_read().await);
    srv.clock.advance(1);
    assert!(b.recv().await.int() > 0);
}
