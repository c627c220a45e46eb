//! lockd-client against a real lockd on 127.0.0.1:0 with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use lockd_client::{Client, Error, Mode, QuorumClient};
use lockd_server::{CancellationToken, Clock, ManualClock, Server, ServerConfig, ServerHandle};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "client-test-key";

struct Srv {
    addr: String,
    clock: Arc<ManualClock>,
    handle: ServerHandle,
    shutdown: CancellationToken,
}

async fn server(grace: Duration) -> Srv {
    let mut config = ServerConfig::new("127.0.0.1", 0, KEY);
    config.lock_timeout = grace;
    config.max_locks = 100;
    let clock = ManualClock::new();
    let s = Server::bind_with_clock(config, Clock::Manual(clock.clone()))
        .await
        .unwrap();
    let addr = s.local_addr().to_string();
    let handle = s.handle();
    let shutdown = CancellationToken::new();
    tokio::spawn(s.run(shutdown.clone()));
    Srv {
        addr,
        clock,
        handle,
        shutdown,
    }
}

impl Srv {
    async fn eventually(&self, what: &str, f: impl Fn(&lockd_server::Snapshot) -> bool) {
        for _ in 0..500 {
            if f(&self.handle.snapshot()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

/// A TCP proxy whose current connections can be cut (new ones are still accepted), to
/// lose a client's connection on purpose.
struct Proxy {
    addr: String,
    current: Arc<std::sync::Mutex<CancellationToken>>,
    /// While set, what the server sends is thrown away: replies lost on the way.
    lose_replies: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn cut(&self) {
        let mut t = self.current.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }
}

async fn proxy(upstream: String) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let current = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
    let lose_replies = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (cur, lose) = (current.clone(), lose_replies.clone());
    tokio::spawn(async move {
        loop {
            let Ok((down, _)) = l.accept().await else {
                return;
            };
            let up = TcpStream::connect(&upstream).await.unwrap();
            let c = cur.lock().unwrap().clone();
            let lose = lose.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut down_r, mut down_w) = down.into_split();
                let (mut up_r, mut up_w) = up.into_split();
                let replies = async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n @ 1..) = up_r.read(&mut buf).await {
                        if !lose.load(std::sync::atomic::Ordering::SeqCst)
                            && down_w.write_all(&buf[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy(&mut down_r, &mut up_w) => {}
                    _ = replies => {}
                    _ = c.cancelled() => {}
                }
            });
        }
    });
    Proxy {
        addr,
        current,
        lose_replies,
    }
}

#[tokio::test]
async fn guard_holds_and_releases_on_drop() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let b = Client::connect(&srv.addr, KEY).await.unwrap();
    let g = a
        .acquire(Mode::Ex, &["k"], Duration::from_secs(1))
        .await
        .unwrap();
    assert!(g.token() > 0);
    assert!(!g.may_be_lost());
    assert!(b.try_acquire(Mode::Sh, &["k"]).await.unwrap().is_none());
    drop(g);
    let g2 = b
        .try_acquire(Mode::Sh, &["k"])
        .await
        .unwrap()
        .expect("released by drop");
    let info = a.inspect("k").await.unwrap();
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].session, b.session_id());
    assert_eq!(info.holders[0].token, g2.token());
    g2.release().await.unwrap();
    assert_eq!(a.inspect("k").await.unwrap().holders.len(), 0);
}

#[tokio::test]
async fn guards_of_one_key_are_counted() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let b = Client::connect(&srv.addr, KEY).await.unwrap();
    let g1 = a.acquire(Mode::Sh, &["k"], Duration::ZERO).await.unwrap();
    let g2 = a
        .acquire(Mode::Sh, &["k", "j"], Duration::ZERO)
        .await
        .unwrap();
    drop(g1);
    assert!(
        b.try_acquire(Mode::Ex, &["k"]).await.unwrap().is_none(),
        "g2 still holds k"
    );
    assert_eq!(a.locks(None).await.unwrap().len(), 2);
    drop(g2);
    assert!(b
        .try_acquire(Mode::Ex, &["k", "j"])
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_wait_is_granted_or_times_out() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let b = Client::connect(&srv.addr, KEY).await.unwrap();
    let g = a.acquire(Mode::Ex, &["k"], Duration::ZERO).await.unwrap();
    let b2 = b.clone();
    let waiting =
        tokio::spawn(async move { b2.acquire(Mode::Ex, &["k"], Duration::from_secs(5)).await });
    srv.eventually("b waits", |s| s.waiters == 1).await;
    srv.clock.advance(5_000);
    assert!(matches!(waiting.await.unwrap(), Err(Error::Timeout)));
    let b2 = b.clone();
    let waiting =
        tokio::spawn(async move { b2.acquire(Mode::Ex, &["k"], Duration::from_secs(5)).await });
    srv.eventually("b waits again", |s| s.waiters == 1).await;
    let first = g.token();
    drop(g);
    let got = waiting.await.unwrap().unwrap();
    assert!(got.token() > first);
}

#[tokio::test]
async fn typed_errors() {
    let srv = server(Duration::from_secs(60)).await;
    assert!(matches!(
        Client::connect(&srv.addr, "wrong").await,
        Err(Error::Auth(_))
    ));
    assert!(matches!(
        Client::connect("127.0.0.1:1", KEY).await,
        Err(Error::Connect { .. })
    ));
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let b = Client::connect(&srv.addr, KEY).await.unwrap();
    let _x = a.acquire(Mode::Ex, &["x"], Duration::ZERO).await.unwrap();
    let _y = b.acquire(Mode::Ex, &["y"], Duration::ZERO).await.unwrap();
    let a2 = a.clone();
    let waiting =
        tokio::spawn(async move { a2.acquire(Mode::Ex, &["y"], Duration::from_secs(60)).await });
    srv.eventually("a waits", |s| s.waiters == 1).await;
    match b.acquire(Mode::Ex, &["x"], Duration::from_secs(60)).await {
        Err(Error::Deadlock { session }) => assert_eq!(session, a.session_id()),
        other => panic!("expected a deadlock, got {other:?}"),
    }
    let many: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert!(matches!(
        b.try_acquire(Mode::Ex, &many).await,
        Err(Error::TooManyLocks)
    ));
    drop(_y);
    assert!(waiting.await.unwrap().is_ok());
}

#[tokio::test]
async fn a_lost_connection_is_reported_and_another_process_can_resume() {
    let srv = server(Duration::from_secs(30)).await;
    let p = proxy(srv.addr.clone()).await;
    let a = Client::connect(&p.addr, KEY).await.unwrap();
    let other = Client::connect(&srv.addr, KEY).await.unwrap();
    let g = a.acquire(Mode::Ex, &["k"], Duration::ZERO).await.unwrap();
    p.cut();
    tokio::time::timeout(Duration::from_secs(5), a.connection_lost())
        .await
        .expect("loss noticed");
    assert!(g.may_be_lost());
    assert!(matches!(a.ping().await, Err(Error::ConnectionLost)));
    srv.eventually("a's session dead", |s| s.dead_sessions == 1)
        .await;
    srv.clock.advance(20_000);
    // As a restarted process would: a new client takes over the session by its id.
    let a2 = Client::resume(&srv.addr, KEY, &a.session_id())
        .await
        .unwrap();
    assert_eq!(a2.locks(None).await.unwrap()[0].token, g.token());
    assert!(
        other.try_acquire(Mode::Ex, &["k"]).await.unwrap().is_none(),
        "still held"
    );
    assert!(
        matches!(g.release().await, Err(Error::ConnectionLost)),
        "the old guard reports the loss"
    );
    assert_eq!(a2.release(Mode::Ex, &["k"]).await.unwrap(), 1);
}

/// Issue 12: a grant whose reply was lost with the connection. The acquire fails with
/// ConnectionLost, but the server granted it; when the client resumes the session, the
/// lock no guard owns is let go, and a guard's lock whose token the lost reply changed is
/// kept with the server's token, so that its release still frees it.
#[tokio::test]
async fn a_grant_lost_with_the_connection_is_let_go_on_resume() {
    let srv = server(Duration::from_secs(30)).await;
    let p = proxy(srv.addr.clone()).await;
    let a = Client::connect(&p.addr, KEY).await.unwrap();
    let me = a.session_id();
    let kept = a.acquire(Mode::Sh, &["s"], Duration::ZERO).await.unwrap();
    p.lose_replies
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut lost = Box::pin(a.acquire(Mode::Ex, &["k"], Duration::ZERO));
    let mut again = Box::pin(a.acquire(Mode::Sh, &["s"], Duration::ZERO));
    assert!(poll_once(&mut lost).await && poll_once(&mut again).await);
    srv.eventually("granted on the server", |s| {
        s.locks_held == 2 && s.table.grants >= 3
    })
    .await;
    p.cut();
    assert!(matches!(lost.await, Err(Error::ConnectionLost)));
    assert!(matches!(again.await, Err(Error::ConnectionLost)));
    p.lose_replies
        .store(false, std::sync::atomic::Ordering::SeqCst);
    srv.eventually("a's session dead", |s| s.dead_sessions == 1)
        .await;
    assert!(a.reconnect().await.unwrap(), "resumed");
    assert!(!holds(&a, &me, "k").await, "a grant no guard owns was kept");
    assert!(holds(&a, &me, "s").await);
    drop(kept);
    assert!(
        !holds(&a, &me, "s").await,
        "the guard's release named a token the server's lock no longer carries"
    );
    srv.shutdown.cancel();
}

#[tokio::test]
async fn reconnect_within_grace_keeps_the_guard_valid() {
    let srv = server(Duration::from_secs(30)).await;
    let p = proxy(srv.addr.clone()).await;
    let a = Client::connect(&p.addr, KEY).await.unwrap();
    let other = Client::connect(&srv.addr, KEY).await.unwrap();
    let g = a.acquire(Mode::Ex, &["k"], Duration::ZERO).await.unwrap();
    p.cut();
    a.connection_lost().await;
    assert!(g.may_be_lost());
    srv.eventually("a's session dead", |s| s.dead_sessions == 1)
        .await;
    srv.clock.advance(29_999);
    assert!(
        a.reconnect().await.unwrap(),
        "resumed within the grace period"
    );
    assert!(!g.may_be_lost());
    srv.clock.advance(60_000);
    assert!(
        other.try_acquire(Mode::Ex, &["k"]).await.unwrap().is_none(),
        "still a's"
    );
    g.release().await.unwrap();
    assert!(other.try_acquire(Mode::Ex, &["k"]).await.unwrap().is_some());
}

#[tokio::test]
async fn reconnect_after_grace_reports_the_locks_lost() {
    let srv = server(Duration::from_secs(30)).await;
    let p = proxy(srv.addr.clone()).await;
    let a = Client::connect(&p.addr, KEY).await.unwrap();
    let g = a.acquire(Mode::Ex, &["k"], Duration::ZERO).await.unwrap();
    let old_session = a.session_id();
    p.cut();
    a.connection_lost().await;
    srv.eventually("a's session dead", |s| s.dead_sessions == 1)
        .await;
    srv.clock.advance(30_000);
    let b = Client::connect(&srv.addr, KEY).await.unwrap();
    let taken = b
        .try_acquire(Mode::Ex, &["k"])
        .await
        .unwrap()
        .expect("expired after the grace period");
    assert!(!a.reconnect().await.unwrap(), "the session expired");
    assert_ne!(a.session_id(), old_session);
    assert!(
        g.may_be_lost(),
        "stays lost after a reconnect to a new session"
    );
    assert!(matches!(g.release().await, Err(Error::ConnectionLost)));
    assert!(
        a.try_acquire(Mode::Ex, &["k"]).await.unwrap().is_none(),
        "b's lock untouched"
    );
    drop(taken);
}

#[tokio::test]
async fn quorum_with_one_of_three_down_and_with_two_down() {
    let s1 = server(Duration::from_secs(60)).await;
    let s2 = server(Duration::from_secs(60)).await;
    let s3 = server(Duration::from_secs(60)).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let k = |a: &str| (a.to_string(), KEY.to_string());
    let q = QuorumClient::new(vec![vec![k(&s1.addr), k(&s2.addr), k(&dead)]]);
    let g = q.acquire(Mode::Ex, &["q"], Duration::ZERO).await.unwrap();
    assert_eq!(g.grants(), 2);
    assert_eq!(g.tokens().len(), 2);
    // Another quorum client cannot get it: s1 and s2 say no.
    let q2 = QuorumClient::new(vec![vec![k(&s1.addr), k(&s2.addr), k(&s3.addr)]]);
    assert!(matches!(
        q2.acquire(Mode::Ex, &["q"], Duration::ZERO).await,
        Err(Error::NoQuorum {
            granted: 1,
            needed: 2
        })
    ));
    // What q2 took on s3 was released on failure.
    let direct = Client::connect(&s3.addr, KEY).await.unwrap();
    assert!(direct
        .try_acquire(Mode::Ex, &["q"])
        .await
        .unwrap()
        .is_some());
    g.release().await.unwrap();
    // Two of three down: no quorum, and nothing left behind on the live one.
    let q3 = QuorumClient::new(vec![vec![k(&s1.addr), k(&dead), k(&dead)]]);
    assert!(matches!(
        q3.acquire(Mode::Ex, &["z"], Duration::ZERO).await,
        Err(Error::NoQuorum {
            granted: 1,
            needed: 2
        })
    ));
    let d1 = Client::connect(&s1.addr, KEY).await.unwrap();
    assert!(d1.try_acquire(Mode::Ex, &["z"]).await.unwrap().is_some());
}

#[tokio::test]
async fn stats_and_ping() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    a.ping().await.unwrap();
    let _g = a.acquire(Mode::Sh, &["s"], Duration::ZERO).await.unwrap();
    let stats = a.stats().await.unwrap();
    assert!(
        stats.iter().any(|(k, v)| k == "locks_held" && *v == 1),
        "{stats:?}"
    );
    a.set_grace(Duration::from_millis(10)).await.unwrap();
}

#[tokio::test]
async fn a_server_going_away_is_reported_to_guards() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let g = a.acquire(Mode::Ex, &["k"], Duration::ZERO).await.unwrap();
    assert!(!g.may_be_lost());
    srv.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), a.connection_lost())
        .await
        .expect("loss noticed");
    assert!(g.may_be_lost());
    assert!(matches!(a.reconnect().await, Err(Error::Connect { .. })));
}

#[tokio::test]
async fn tls_connection_with_a_trusted_certificate() {
    let dir = std::env::temp_dir().join(format!("lockd-client-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut config = ServerConfig::new("127.0.0.1", 0, KEY);
    config.tls_cert = Some(cert.clone());
    config.tls_key = Some(key);
    config.tls_required = true;
    let s = Server::bind(config).await.unwrap();
    let port = s.local_addr().port();
    tokio::spawn(s.run(CancellationToken::new()));
    let addr = format!("localhost:{port}");
    let tls = lockd_client::TlsOptions::from_ca_file(&cert, "localhost").unwrap();
    let c = Client::connect_tls(&addr, KEY, tls.clone()).await.unwrap();
    let g = c
        .acquire(Mode::Ex, &["secure"], Duration::ZERO)
        .await
        .unwrap();
    assert!(g.token() > 0);
    assert_eq!(c.inspect("secure").await.unwrap().holders.len(), 1);
    // Plaintext is refused by this server; a wrong name fails the handshake.
    assert!(Client::connect(&addr, KEY).await.is_err());
    let wrong = lockd_client::TlsOptions::from_ca_file(&cert, "elsewhere.example").unwrap();
    assert!(matches!(
        Client::connect_tls(&addr, KEY, wrong).await,
        Err(Error::Tls(_))
    ));
    assert!(matches!(
        lockd_client::TlsOptions::from_ca_file(
            std::path::Path::new("/nonexistent.pem"),
            "localhost"
        ),
        Err(Error::Tls(_))
    ));
    g.release().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls `f` exactly once, without yielding to the runtime: true if it is still pending
/// (for an acquire: its request is queued on the connection, its reply not yet read).
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx).is_pending())
    })
    .await
}

/// Whether session `session` holds `key` on the server (checked through the client's own
/// connection, so every release queued before is processed first).
async fn holds(c: &Client, session: &str, key: &str) -> bool {
    c.locks(Some(session))
        .await
        .unwrap()
        .iter()
        .any(|l| l.key == key.as_bytes())
}

/// Issue 12, defect 1: a guard let go by release_all is inert: dropping or releasing it
/// does nothing to a later guard of the same lock, and release() says so.
#[tokio::test]
async fn a_stale_guard_never_releases_a_newer_lock() {
    let srv = server(Duration::from_secs(60)).await;
    let c = Client::connect(&srv.addr, KEY).await.unwrap();
    let me = c.session_id();
    let g1 = c.acquire(Mode::Ex, &["k"], Duration::ZERO).await.unwrap();
    c.release_all().await.unwrap();
    let g2 = c.acquire(Mode::Ex, &["k"], Duration::ZERO).await.unwrap();
    drop(g1);
    assert!(
        holds(&c, &me, "k").await,
        "the stale guard's drop freed g2's lock"
    );
    let g3 = c.acquire(Mode::Ex, &["j"], Duration::ZERO).await.unwrap();
    c.release(Mode::Ex, &["j"]).await.unwrap();
    let g4 = c.acquire(Mode::Ex, &["j"], Duration::ZERO).await.unwrap();
    assert!(matches!(g3.release().await, Err(Error::NotHeld)));
    assert!(
        holds(&c, &me, "j").await,
        "the stale guard's release freed g4's lock"
    );
    g2.release().await.unwrap();
    g4.release().await.unwrap();
    assert!(!holds(&c, &me, "k").await && !holds(&c, &me, "j").await);
    srv.shutdown.cancel();
}

/// Issue 12, defect 1: the last guard dropped while a re-acquire of the same lock is in
/// flight: its release (queued after the re-acquire) names the old grant's token, so it
/// lets go of nothing, and the new guard holds the lock.
#[tokio::test]
async fn dropping_the_last_guard_during_a_reacquire_keeps_the_new_grant() {
    let srv = server(Duration::from_secs(60)).await;
    let c = Client::connect(&srv.addr, KEY).await.unwrap();
    let me = c.session_id();
    let g1 = c.acquire(Mode::Sh, &["k"], Duration::ZERO).await.unwrap();
    let mut again = Box::pin(c.acquire(Mode::Sh, &["k"], Duration::ZERO));
    // Polled once: the ACQUIRE is on the connection, its reply not yet read.
    assert!(poll_once(&mut again).await);
    drop(g1);
    let g2 = again.await.unwrap();
    assert!(
        holds(&c, &me, "k").await,
        "the old guard's release freed the new grant"
    );
    drop(g2);
    assert!(!holds(&c, &me, "k").await, "the new guard releases it");
    srv.shutdown.cancel();
}

/// Issue 12, defect 2: an acquire cancelled after its request went out leaves nothing
/// held that no guard owns: a grant that comes back anyway is let go at once, or, when a
/// guard holds the same lock, handed to that guard (whose release then frees it).
#[tokio::test]
async fn a_cancelled_acquire_leaves_nothing_held() {
    let srv = server(Duration::from_secs(60)).await;
    let other = Client::connect(&srv.addr, KEY).await.unwrap();
    let c = Client::connect(&srv.addr, KEY).await.unwrap();
    let me = c.session_id();
    let held = other
        .acquire(Mode::Ex, &["k"], Duration::ZERO)
        .await
        .unwrap();
    // Waiting in the queue, then cancelled (as by a timeout or select!).
    let mut waiting = Box::pin(c.acquire(Mode::Ex, &["k"], Duration::from_secs(60)));
    assert!(poll_once(&mut waiting).await);
    srv.eventually("queued", |s| s.waiters == 1).await;
    drop(waiting);
    drop(held);
    // The server grants the queued request to c's session; nobody waits for it.
    srv.eventually("granted and let go", |s| {
        s.waiters == 0 && s.locks_held == 0
    })
    .await;
    assert!(!holds(&c, &me, "k").await);
    // Cancelled while a guard of c holds the same lock: the guard keeps it, then frees it.
    let g = c.acquire(Mode::Sh, &["j"], Duration::ZERO).await.unwrap();
    let mut again = Box::pin(c.acquire(Mode::Sh, &["j"], Duration::ZERO));
    assert!(poll_once(&mut again).await);
    drop(again);
    assert!(holds(&c, &me, "j").await, "the guard still holds it");
    drop(g);
    assert!(
        !holds(&c, &me, "j").await,
        "and its release frees it, token and all"
    );
    srv.shutdown.cancel();
}

/// Issue 12, defect 3, for a plain Client: tasks sharing one client (one session, which
/// the server never makes wait for itself) exclude each other all the same: an
/// acquisition that conflicts with a held lock or one under way is refused at once, SH
/// locks are shared, and once the guard is gone the next acquire is served.
#[tokio::test]
async fn tasks_sharing_one_client_exclude_each_other() {
    let srv = server(Duration::from_secs(60)).await;
    let other = Client::connect(&srv.addr, KEY).await.unwrap();
    let c = Client::connect(&srv.addr, KEY).await.unwrap();
    let both = tokio::join!(
        c.try_acquire(Mode::Ex, &["k"]),
        c.try_acquire(Mode::Ex, &["k"])
    );
    let (a, b) = (both.0, both.1);
    let (g, refused) = match (a, b) {
        (Ok(Some(g)), Err(e)) | (Err(e), Ok(Some(g))) => (g, e),
        (a, b) => panic!("two concurrent EX acquisitions on one client: {a:?} and {b:?}"),
    };
    assert!(
        matches!(refused, Error::HeldHere(ref k) if k == "k"),
        "{refused}"
    );
    assert!(matches!(
        c.try_acquire(Mode::Sh, &["j", "k"]).await,
        Err(Error::HeldHere(_))
    ));
    drop(g);
    // Shared locks are shared, and counted.
    let s1 = c.acquire(Mode::Sh, &["k"], Duration::ZERO).await.unwrap();
    let s2 = c.acquire(Mode::Sh, &["k"], Duration::ZERO).await.unwrap();
    assert!(matches!(
        c.try_acquire(Mode::Ex, &["k"]).await,
        Err(Error::HeldHere(_))
    ));
    drop((s1, s2));
    // An acquisition waiting on the server counts too: a second task is refused while
    // the first waits, and served once it has given up.
    let blocker = other
        .acquire(Mode::Ex, &["w"], Duration::ZERO)
        .await
        .unwrap();
    let mut waiting = Box::pin(c.acquire(Mode::Ex, &["w"], Duration::from_secs(60)));
    assert!(poll_once(&mut waiting).await);
    assert!(matches!(
        c.try_acquire(Mode::Ex, &["w"]).await,
        Err(Error::HeldHere(_))
    ));
    drop(waiting);
    drop(blocker);
    srv.eventually("the cancelled grant let go", |s| {
        s.waiters == 0 && s.locks_held == 0
    })
    .await;
    let g = c.acquire(Mode::Ex, &["w"], Duration::ZERO).await.unwrap();
    assert!(holds(&c, &c.session_id(), "w").await);
    drop(g);
    srv.shutdown.cancel();
}

/// Issue 12, defect 3: two tasks of one process acquiring EX on one key through one
/// QuorumClient exclude each other (each acquisition has its own sessions); once the
/// first guard is gone its sessions are reused.
#[tokio::test]
async fn concurrent_quorum_acquirers_exclude_each_other() {
    let (s1, s2, s3) = (
        server(Duration::from_secs(60)).await,
        server(Duration::from_secs(60)).await,
        server(Duration::from_secs(60)).await,
    );
    let k = |a: &str| (a.to_string(), KEY.to_string());
    let q = Arc::new(QuorumClient::new(vec![vec![
        k(&s1.addr),
        k(&s2.addr),
        k(&s3.addr),
    ]]));
    let g1 = q.acquire(Mode::Ex, &["q"], Duration::ZERO).await.unwrap();
    assert_eq!(g1.grants(), 3);
    let q2 = q.clone();
    let second = tokio::spawn(async move {
        q2.acquire(Mode::Ex, &["q"], Duration::ZERO)
            .await
            .map(|g| g.grants())
    });
    assert!(
        matches!(
            second.await.unwrap(),
            Err(Error::NoQuorum { granted: 0, .. })
        ),
        "a second task of the same process was granted EX too"
    );
    drop(g1);
    // Its release is queued first on the sessions the next acquire reuses.
    let g2 = q
        .acquire(Mode::Ex, &["q"], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(g2.grants(), 3);
    let live: usize = [&s1, &s2, &s3]
        .iter()
        .map(|s| s.handle.snapshot().sessions)
        .sum();
    assert!(live <= 6, "{live} sessions: released clients are reused");
}

/// Issue 12: a model of the guard bookkeeping. Random interleavings of acquire, guard drop,
/// guard release, release_all, direct release and cancelled acquires, on one client; after
/// every step the server holds exactly the locks that some live guard, not let go since,
/// holds: every such guard's lock is held, and nothing is held that no guard owns.
#[tokio::test]
async fn guards_and_the_servers_locks_always_agree() {
    let srv = server(Duration::from_secs(60)).await;
    let keys = ["a", "b", "c"];
    let modes = [Mode::Sh, Mode::Ex];
    for seed in 1..=6u64 {
        let c = Client::connect(&srv.addr, KEY).await.unwrap();
        let me = c.session_id();
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        // Live guards, each with the life of its lock it counts on.
        let mut guards: Vec<(lockd_client::Guard, (usize, usize), u64)> = Vec::new();
        // The current life of each (key, mode) lock; a release_all/release ends it.
        let mut life = std::collections::HashMap::<(usize, usize), u64>::new();
        let mut lives = 0u64;
        for step in 0..150 {
            let (k, m) = (next(keys.len()), next(modes.len()));
            // The client refuses what conflicts with its own live guards.
            let conflict = guards.iter().any(|(_, (gk, gm), l)| {
                *gk == k
                    && life.get(&(*gk, *gm)) == Some(l)
                    && (modes[m] == Mode::Ex || modes[*gm] == Mode::Ex)
            });
            match next(6) {
                0 | 1 => {
                    let got = c.try_acquire(modes[m], &[keys[k]]).await;
                    if conflict {
                        assert!(
                            matches!(got, Err(Error::HeldHere(_))),
                            "step {step}: a conflicting acquisition was not refused"
                        );
                    } else if let Some(g) = got.unwrap() {
                        let l = *life.entry((k, m)).or_insert_with(|| {
                            lives += 1;
                            lives
                        });
                        guards.push((g, (k, m), l));
                    }
                }
                2 if !guards.is_empty() => {
                    let i = next(guards.len());
                    drop(guards.swap_remove(i));
                }
                3 if !guards.is_empty() => {
                    let (g, lock, l) = guards.swap_remove(next(guards.len()));
                    let live = life.get(&lock) == Some(&l);
                    match g.release().await {
                        Ok(()) => assert!(live, "step {step}: an inert guard released"),
                        Err(Error::NotHeld) => {
                            assert!(!live, "step {step}: a live guard said NotHeld")
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                4 => {
                    match next(3) {
                        0 => {
                            c.release_all().await.unwrap();
                            life.clear();
                        }
                        1 => {
                            c.release(modes[m], &[keys[k]]).await.unwrap();
                            life.remove(&(k, m));
                        }
                        _ => {
                            // Cancelled after the request went out.
                            let one = [keys[k]];
                            let mut f = Box::pin(c.try_acquire(modes[m], &one));
                            assert_eq!(poll_once(&mut f).await, !conflict, "step {step}");
                        }
                    }
                }
                _ => {}
            }
            // A lock is owned when a live guard counts on its current life.
            let owned: std::collections::BTreeSet<(String, &str)> = guards
                .iter()
                .filter(|(_, lock, l)| life.get(lock) == Some(l))
                .map(|(_, (k, m), _)| (keys[*k].to_string(), modes[*m].as_str()))
                .collect();
            // Twice: a release a cancelled acquire's late grant queued is behind the first.
            c.locks(Some(&me)).await.unwrap();
            let held: std::collections::BTreeSet<(String, &str)> = c
                .locks(Some(&me))
                .await
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        String::from_utf8_lossy(&l.key).into_owned(),
                        l.mode.as_str(),
                    )
                })
                .collect();
            // Locks let go by release_all/release whose guards are gone: the model forgets
            // them, and so must the server.
            life.retain(|lock, l| guards.iter().any(|(_, g, gl)| g == lock && gl == l));
            assert_eq!(held, owned, "seed {seed}, step {step}");
        }
        drop(guards);
        c.release_all().await.unwrap();
    }
    srv.shutdown.cancel();
}

/// Issue 13: a client given the nodes of a cluster keeps its guard's lock through the loss
/// of the node it was connected to: `reconnect` moves to another node and resumes the
/// session there once the cluster has declared the dead node down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_survives_the_loss_of_its_cluster_node() {
    let free = || lockd_server::free_port().unwrap();
    let raft: std::collections::BTreeMap<u64, String> = (1..=3)
        .map(|i| (i, format!("127.0.0.1:{}", free())))
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for i in 1..=3u64 {
        let mut c = lockd_server::ClusterConfig::new(
            i,
            &raft[&i],
            dirs[(i - 1) as usize].path().to_path_buf(),
            KEY.as_bytes(),
        );
        c.initial = raft.clone();
        c.heartbeat_ms = 50;
        c.election_min_ms = 300;
        c.election_max_ms = 600;
        c.detect_ms = 1000;
        let mut config = ServerConfig::new("127.0.0.1", 0, KEY);
        config.cluster = Some(c);
        let s = Server::bind(config).await.unwrap();
        let addr = s.local_addr().to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(s.run(shutdown.clone()));
        nodes.push((addr, shutdown, task));
    }
    let all = nodes
        .iter()
        .map(|(a, _, _)| a.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let c = Client::connect(&all, KEY).await.unwrap();
    c.set_grace(Duration::from_secs(30)).await.unwrap();
    let g = c
        .acquire(Mode::Ex, &["deploy"], Duration::from_secs(10))
        .await
        .unwrap();
    // The client is on the first node; it dies.
    let (_, stop, task) = nodes.remove(0);
    stop.cancel();
    let _ = task.await;
    tokio::time::timeout(Duration::from_secs(5), c.connection_lost())
        .await
        .expect("loss noticed");
    assert!(g.may_be_lost());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match c.reconnect().await {
            Ok(true) => break,
            Ok(false) => panic!("the session was forgotten: its lock is lost"),
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "never resumed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(
        !g.may_be_lost(),
        "resumed on another node: the guard holds again"
    );
    let other = Client::connect(&nodes[1].0, KEY).await.unwrap();
    assert!(
        other
            .try_acquire(Mode::Ex, &["deploy"])
            .await
            .unwrap()
            .is_none(),
        "the lock was lost with its node"
    );
    g.release().await.unwrap();
    assert!(other
        .acquire(Mode::Ex, &["deploy"], Duration::from_secs(10))
        .await
        .is_ok());
    for (_, stop, _) in &nodes {
        stop.cancel();
    }
}

#[tokio::test]
async fn a_leased_guard_is_kept_alive_and_says_when_it_is_lost() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let admin = Client::connect(&srv.addr, KEY).await.unwrap();
    // A 300 ms lease (real time on the client, manual on the server): extended every
    // 100 ms while the guard lives.
    let g = a
        .acquire_leased(Mode::Ex, &["k"], Duration::ZERO, Duration::from_millis(300))
        .await
        .unwrap();
    srv.eventually("two extensions", |s| s.table.lease_extensions >= 2)
        .await;
    srv.clock.advance(250);
    assert_eq!(srv.handle.snapshot().table.leases_expired, 0);
    assert!(g.loss().is_none());
    // Revoked: the next extension is refused, and the guard says so.
    assert_eq!(admin.revoke("k", None).await.unwrap(), 1);
    let loss = tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .expect("reported within a few extensions");
    assert!(
        matches!(&loss, lockd_client::Loss::LeaseExpired(why) if why.contains("NOLEASE")),
        "{loss:?}"
    );
    assert!(g.may_be_lost());
    // The lease passing on the server (no revocation) is found the same way.
    let h = a
        .acquire_leased(Mode::Ex, &["j"], Duration::ZERO, Duration::from_millis(600))
        .await
        .unwrap();
    srv.clock.advance(600);
    let loss = tokio::time::timeout(Duration::from_secs(5), h.lost())
        .await
        .unwrap();
    assert!(
        matches!(loss, lockd_client::Loss::LeaseExpired(_)),
        "{loss:?}"
    );
    assert!(admin.try_acquire(Mode::Ex, &["j"]).await.unwrap().is_some());
}

#[tokio::test]
async fn a_subscribed_client_hears_of_contention_and_loss_at_once() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let mut events = a.subscribe().await.unwrap();
    let g = a
        .acquire(Mode::Ex, &["k"], Duration::from_secs(1))
        .await
        .unwrap();
    let b = Client::connect(&srv.addr, KEY).await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.acquire(Mode::Sh, &["k"], Duration::from_secs(30)).await;
        (b, g.map(|g| g.token()))
    });
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        e,
        lockd_client::Event::Contended {
            key: b"k".to_vec(),
            token: g.token(),
            mode: Mode::Ex,
            wanted: Mode::Sh
        }
    );
    // Calls on a subscribed (RESP3) connection still work.
    assert_eq!(a.inspect("k").await.unwrap().waiters.len(), 1);
    let id = a.session_id();
    let admin = Client::connect(&srv.addr, KEY).await.unwrap();
    assert_eq!(admin.kill_session(&id).await.unwrap(), 1);
    let loss = tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .unwrap();
    assert_eq!(loss, lockd_client::Loss::SessionEnded);
    let (_, granted) = waiter.await.unwrap();
    assert!(granted.unwrap() > g.token());
    match events.recv().await.unwrap() {
        lockd_client::Event::Lost { token, reason, .. } => {
            assert_eq!((token, reason.as_str()), (g.token(), "session-ended"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn permits_of_a_semaphore_are_shared_and_handed_on() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let b = Client::connect(&srv.addr, KEY).await.unwrap();
    let c = Client::connect(&srv.addr, KEY).await.unwrap();
    let pa = a
        .acquire_permits("reindex", 1, 2, Duration::ZERO, None)
        .await
        .unwrap();
    let pb = b
        .acquire_permits("reindex", 1, 2, Duration::ZERO, None)
        .await
        .unwrap();
    assert!(matches!(
        c.acquire_permits("reindex", 1, 2, Duration::ZERO, None)
            .await,
        Err(Error::Timeout)
    ));
    // One permit of a semaphore per client; a capacity that disagrees is refused.
    assert!(matches!(
        a.acquire_permits("reindex", 1, 2, Duration::ZERO, None)
            .await,
        Err(Error::HeldHere(_))
    ));
    match c
        .acquire_permits("reindex", 1, 3, Duration::ZERO, None)
        .await
    {
        Err(Error::Server(e)) => assert!(e.starts_with("WRONGTYPE"), "{e}"),
        other => panic!("{other:?}"),
    }
    let info = c.inspect("reindex").await.unwrap();
    assert_eq!(info.capacity, 2);
    assert_eq!(info.holders.iter().map(|h| h.permits).sum::<u16>(), 2);
    let waiting = tokio::spawn(async move {
        let p = c
            .acquire_permits("reindex", 1, 2, Duration::from_secs(30), None)
            .await;
        (c, p)
    });
    srv.eventually("c waits", |s| s.waiters == 1).await;
    drop(pa);
    let (c, granted) = waiting.await.unwrap();
    let pc = granted.unwrap();
    assert!(pc.token() > pb.token());
    assert_eq!(pc.permits(), 1);
    pb.release().await.unwrap();
    assert_eq!(c.inspect("reindex").await.unwrap().holders.len(), 1);
    // Its session's LOCKS shows the permits.
    let locks = c.locks(None).await.unwrap();
    assert_eq!((locks.len(), locks[0].permits), (1, 1));
    drop(pc);
    assert!(c.inspect("reindex").await.unwrap().holders.is_empty());
}

#[tokio::test]
async fn a_permit_hears_that_it_was_revoked() {
    let srv = server(Duration::from_secs(60)).await;
    let a = Client::connect(&srv.addr, KEY).await.unwrap();
    let _events = a.subscribe().await.unwrap();
    let p = a
        .acquire_permits("pool", 2, 3, Duration::ZERO, None)
        .await
        .unwrap();
    let admin = Client::connect(&srv.addr, KEY).await.unwrap();
    assert_eq!(admin.revoke("pool", None).await.unwrap(), 1);
    let loss = tokio::time::timeout(Duration::from_secs(5), p.lost())
        .await
        .expect("told by the push");
    assert_eq!(loss, lockd_client::Loss::Revoked);
    assert!(p.may_be_lost());
}
