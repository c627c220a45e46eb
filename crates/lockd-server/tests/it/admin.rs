//! The admin HTTP server: metrics, health, JSON views, the status page, and its token.

use crate::harness::*;

async fn admin_server() -> TestServer {
    TestServer::start_with(|c| c.http_address = Some("127.0.0.1:0".into())).await
}

#[tokio::test]
async fn health_and_readiness() {
    let srv = admin_server().await;
    let admin = srv.admin.unwrap();
    // The admin server may answer before the listener runs: wait for ready, bounded.
    let mut ready = 0;
    for _ in 0..100 {
        ready = http_get(admin, "/readyz", None).await.0;
        if ready == 200 {
            break;
        }
        assert_eq!(ready, 503, "only 503 before ready");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 200);
    assert_eq!(
        http_get(admin, "/healthz", None).await,
        (200, "ok\n".into())
    );
    let (code, _) = http_get(admin, "/readyz", None).await;
    assert_eq!(code, 200);
    assert_eq!(http_get(admin, "/nope", None).await.0, 404);
}

#[tokio::test]
async fn metrics_reflect_traffic() {
    let srv = admin_server().await;
    let admin = srv.admin.unwrap();
    let mut legacy = srv.connect().await;
    assert_eq!(
        legacy.call(&session('a'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    legacy.send(b"garbage\n").await;
    assert_eq!(legacy.recv().await, "BAD_FORMAT");
    let mut n = Resp::connect(srv.addr).await;
    assert!(n
        .call(&["AUTH", "wrong"])
        .await
        .err()
        .starts_with("WRONGPASS"));
    assert!(n.call(&["AUTH", AUTH_KEY]).await == R::Simple("OK".into()));
    assert!(n.call(&["ACQUIRE", "SH", "0", "s1", "s2"]).await.int() > 0);
    n.send(&["ACQUIRE", "SH", "5000", &key(1)]).await;
    srv.eventually("queued", |s| s.waiters == 1).await;
    srv.clock.advance(5000);
    assert_eq!(n.recv().await, R::Null);
    let (code, body) = http_get(admin, "/metrics", None).await;
    assert_eq!(code, 200);
    for line in [
        "lockd_locks_held{mode=\"EX\"} 1",
        "lockd_locks_held{mode=\"SH\"} 2",
        "lockd_connections{protocol=\"legacy\"} 1",
        "lockd_connections{protocol=\"native\"} 1",
        "lockd_bad_requests_total{code=\"BAD_FORMAT\"} 1",
        "lockd_bad_requests_total{code=\"WRONGPASS\"} 1",
        "lockd_auth_failures_total 1",
        "lockd_timeouts_total 1",
        "lockd_grants_total 2",
        "lockd_sessions{state=\"live\"} 2",
        "lockd_lock_wait_seconds_count 1",
        "lockd_request_duration_seconds_count{protocol=\"legacy\"} 2",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
}

#[tokio::test]
async fn json_views() {
    let srv = admin_server().await;
    let admin = srv.admin.unwrap();
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let token = a
        .call(&["ACQUIRE", "EX", "0", "orders/1", "orders/2", "users/1"])
        .await
        .int();
    b.send(&["ACQUIRE", "SH", "60000", "orders/2"]).await;
    srv.eventually("queued", |s| s.waiters == 1).await;
    let (code, body) = http_get(admin, "/v1/locks?prefix=orders/", None).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["orders/1", "orders/2"]);
    assert_eq!(v[0]["holders"][0]["token"], token);
    assert_eq!(v[1]["waiters"][0]["mode"], "SH");
    let (_, body) = http_get(admin, "/v1/locks/users%2F1", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["holders"][0]["mode"], "EX");
    let (_, body) = http_get(admin, "/v1/sessions", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sessions = v.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions
        .iter()
        .any(|s| s["waiting"] == true && s["locks"] == 0));
    let (_, body) = http_get(admin, "/v1/status", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["contended"][0]["key"], "orders/2");
    assert_eq!(v["longest_waiters"][0]["keys"][0], "orders/2");
    let (code, page) = http_get(admin, "/", None).await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>lockd status</title>"));
}

#[tokio::test]
async fn a_non_loopback_admin_address_needs_the_key() {
    let srv = TestServer::start_with(|c| c.http_address = Some("0.0.0.0:0".into())).await;
    let port = srv.admin.unwrap().port();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http_get(admin, "/metrics", None).await.0, 401);
    // Probes are open: a load balancer has no key, and they tell nothing.
    assert_eq!(
        http_get(admin, "/healthz", None).await,
        (200, "ok\n".into())
    );
    assert_eq!(http_get(admin, "/readyz", None).await.0, 200);
    assert_eq!(
        srv.snapshot().auth_failures,
        1,
        "the key-less /metrics counted"
    );
    assert_eq!(http_get(admin, "/metrics", Some("wrong")).await.0, 401);
    assert_eq!(
        srv.snapshot().auth_failures,
        2,
        "a wrong key over HTTP is counted"
    );
    assert_eq!(http_get(admin, "/metrics", Some(AUTH_KEY)).await.0, 200);
    // A browser is asked for the key (HTTP Basic, any user name) and can open the page.
    let (code, head, _) = http_get_with(admin, "/", None).await;
    assert_eq!(code, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"lockd\""),
        "{head}"
    );
    use base64::Engine;
    let basic = |user_pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };
    let ok = basic(&format!("operator:{AUTH_KEY}"));
    let (code, _, page) = http_get_with(admin, "/", Some(&ok)).await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>lockd status</title>"));
    assert_eq!(http_get_with(admin, "/v1/status", Some(&ok)).await.0, 200);
    let wrong = basic("operator:wrong");
    assert_eq!(
        http_get_with(admin, "/v1/status", Some(&wrong)).await.0,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_renders_in_a_browser() {
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if skip_unless("chromium", chromium.is_some()) {
        return;
    }
    let chromium = chromium.expect("checked");
    let srv = admin_server().await;
    let admin = srv.admin.unwrap();
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    a.call(&["ACQUIRE", "EX", "0", "payroll"]).await.int();
    b.send(&["ACQUIRE", "EX", "60000", "payroll"]).await;
    srv.eventually("queued", |s| s.waiters == 1).await;
    let dir = std::env::temp_dir().join(format!("lockd-chromium-{}", std::process::id()));
    let shot = dir.join("status.png");
    let url = format!("http://{admin}/");
    let (dir2, url2) = (dir.clone(), url.clone());
    let run = move |extra: Vec<String>| {
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            "--window-size=1200,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!(
            "--user-data-dir={}",
            dir2.join("profile").display()
        ));
        args.extend(extra);
        args.push(url2.clone());
        std::process::Command::new(chromium)
            .args(args)
            .output()
            .unwrap()
    };
    let dom = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(vec!["--dump-dom".into()])
    })
    .await
    .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(html.contains("locks held"), "counts rendered: {html}");
    assert!(
        html.contains("payroll"),
        "the contended key rendered: {html}"
    );
    assert!(html.contains("updated "), "the refresh ran: {html}");
    let out = tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || run(vec![format!("--screenshot={}", shot.display())])
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {out:?}"));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 11, defect 5: a half-sent request does not hold shutdown.
#[tokio::test]
async fn a_half_sent_request_does_not_hold_shutdown() {
    let srv = admin_server().await;
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(srv.admin.unwrap())
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    srv.shutdown.cancel();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(6), srv.task).await;
    assert!(ended.is_ok(), "shutdown waited on stalled admin requests");
}

/// Issue 11, defect 5: a connection that sends no complete request is closed after the
/// header timeout, and connections past the limit wait for a slot rather than pile up.
#[tokio::test]
async fn silent_admin_connections_are_closed_and_bounded() {
    let srv = admin_server().await;
    let admin = srv.admin.unwrap();
    let mut silent = Vec::new();
    for _ in 0..70 {
        silent.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    let started = std::time::Instant::now();
    // Served once the silent ones time out (5 s), not never.
    let (code, _) = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        http_get(admin, "/healthz", None),
    )
    .await
    .expect("a request behind 70 silent connections is served after their timeout");
    assert_eq!(code, 200);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "the limit held the 65th"
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut silent[0], &mut buf),
    )
    .await
    .expect("a silent connection is closed by the server");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

/// Issue 16: every metric the shipped Grafana dashboard and Prometheus rules name is one
/// lockd exports (scraped from a running node of a one-node cluster, after a bad request,
/// so that every family has a sample).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_rules_name_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let node = one_node_cluster(dir.path());
    let srv = TestServer::start_with(move |c| {
        c.http_address = Some("127.0.0.1:0".into());
        c.cluster = Some(node);
    })
    .await;
    let mut legacy = srv.connect().await;
    assert_eq!(
        legacy.call(&session('a'), "ACQUIRE", "EX", &key(1)).await,
        "ACQUIRED"
    );
    legacy.send(b"garbage\n").await;
    assert_eq!(legacy.recv().await, "BAD_FORMAT");
    let (code, body) = http_get(srv.admin.unwrap(), "/metrics", None).await;
    assert_eq!(code, 200);
    // Sample names: a counter is exposed as NAME_total, a histogram as NAME_bucket etc.
    let mut exported = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            match kind {
                "counter" => {
                    exported.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        exported.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    exported.insert(name.to_string());
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in ["dist/grafana/lockd.json", "dist/prometheus/lockd-rules.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut named = 0;
        for (i, _) in text.match_indices("lockd_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            named += 1;
            assert!(
                exported.contains(&name),
                "{file} names {name}, which lockd does not export; it does: {exported:?}"
            );
        }
        assert!(named > 10, "{file} names only {named} metrics");
    }
    srv.shutdown.cancel();
}
