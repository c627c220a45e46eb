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

/// The value of a counter or gauge line `name value` in a Prometheus scrape.
fn scraped(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the scrape"))
}

/// The attribute `name` of the element whose id is `id`, in a serialized DOM.
fn dom_attr(html: &str, id: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let tag = &html[html[..at].rfind('<')?..at + html[at..].find('>')?];
    let v = tag.split(&format!(" {name}=\"")).nth(1)?;
    Some(v[..v.find('"')?].to_string())
}

/// The text of the element whose id is `id` up to its end (the rest of the DOM after it,
/// cut at the next section), for "is this shown there" checks.
fn dom_section<'a>(html: &'a str, id: &str) -> &'a str {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page: {html}"));
    let rest = &html[at..];
    &rest[..rest.find("</table>").unwrap_or(rest.len())]
}

/// How many pixels of `png` are within a small distance of `rgb`.
fn pixels_like(png: &[u8], rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 12))
        .count()
}

/// Debian's Chromium, if it is here (CI installs it; elsewhere the browser tests skip
/// unless LOCKD_REQUIRE_INTEROP is set).
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Opens `url` in headless Chromium (its own profile under `dir`), lets the page run for
/// 3 s of virtual time, and returns what `extra` asks for (`--dump-dom` on stdout, or a
/// `--screenshot=`). Run on a blocking thread: the server under test keeps running.
async fn in_chromium(
    chromium: &'static str,
    dir: &std::path::Path,
    url: &str,
    extra: &str,
) -> std::process::Output {
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
        "--window-size=1280,1100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", dir.join("profile").display()));
    args.push(extra.to_string());
    args.push(url.to_string());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(chromium)
            .args(args)
            .output()
            .expect("chromium runs")
    })
    .await
    .unwrap()
}

/// Issue 16: the status page in headless Chromium. Holders next to waiters for a contended
/// key, the charts drawn from the server's ring of samples with their last points equal to
/// what /metrics says, the lookup box (run from the address's #key=), and a screenshot
/// with the chart and mode colours in it.
#[tokio::test(flavor = "multi_thread")]
async fn status_page_renders_in_a_browser() {
    let chromium = chromium();
    if skip_unless("chromium", chromium.is_some()) {
        return;
    }
    let chromium = chromium.expect("checked");
    let srv = admin_server().await;
    let admin = srv.admin.unwrap();
    let mut a = Resp::authed(srv.addr).await;
    let mut b = Resp::authed(srv.addr).await;
    let mut c = Resp::authed(srv.addr).await;
    let mut d = Resp::authed(srv.addr).await;
    let token = a.call(&["ACQUIRE", "EX", "0", "payroll"]).await.int();
    // A conflict, and a wait that times out: each chart has something to count.
    assert_eq!(d.call(&["ACQUIRE", "EX", "0", "payroll"]).await, R::Null);
    d.send(&["ACQUIRE", "EX", "1000", "payroll"]).await;
    srv.eventually("queued", |s| s.waiters == 1).await;
    srv.clock.advance(1000);
    assert_eq!(d.recv().await, R::Null);
    b.send(&["ACQUIRE", "SH", "600000", "payroll"]).await;
    srv.eventually("queued", |s| s.waiters == 1).await;
    c.send(&["ACQUIRE", "EX", "600000", "payroll"]).await;
    srv.eventually("queued", |s| s.waiters == 2).await;
    // The sessions, as the page should show them (holder; queue in order).
    let (_, body) = http_get(admin, "/v1/locks/payroll", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let holder = v["holders"][0]["session"].as_str().unwrap().to_string();
    let first = v["waiters"][0]["session"].as_str().unwrap().to_string();
    let second = v["waiters"][1]["session"].as_str().unwrap().to_string();
    assert_eq!(v["holders"][0]["token"], token);

    // Nothing changes from here on: wait for a sample taken after the last change, so the
    // chart's last point and the scrape must agree exactly.
    let metrics = http_get(admin, "/metrics", None).await.1;
    let want = |name| scraped(&metrics, name);
    let (grants, conflicts, timeouts, waiters) = (
        want("lockd_grants_total"),
        want("lockd_conflicts_total"),
        want("lockd_timeouts_total"),
        want("lockd_waiters"),
    );
    assert_eq!((grants, conflicts, timeouts, waiters), (1, 1, 1, 2));
    let mut sampled = false;
    for _ in 0..50 {
        let h: serde_json::Value =
            serde_json::from_str(&http_get(admin, "/v1/history", None).await.1).unwrap();
        let last = h["samples"].as_array().and_then(|s| s.last().cloned());
        if last.is_some_and(|l| l["timeouts"] == 1 && l["waiters"] == 2) {
            sampled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(sampled, "the ring took a sample within 5 s");

    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("status.png");
    let url = format!("http://{admin}/#key=payroll");
    let dom = in_chromium(chromium, dir.path(), &url, "--dump-dom").await;
    let html = String::from_utf8_lossy(&dom.stdout).into_owned();
    let updated = dom_section(&html, "updated");
    assert!(
        updated.starts_with("id=\"updated\">updated "),
        "the refresh ran and reached lockd: {updated}"
    );
    assert!(html.contains("locks held"), "counts rendered: {html}");

    // The charts: drawn, and their data is the scrape's.
    for (chart, total) in [
        ("chart-grants", grants),
        ("chart-conflicts", conflicts),
        ("chart-timeouts", timeouts),
    ] {
        assert_eq!(
            dom_attr(&html, chart, "data-total").as_deref(),
            Some(total.to_string().as_str()),
            "{chart}'s last sample against /metrics: {html}"
        );
        let points: usize = dom_attr(&html, chart, "data-points")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        assert!(points >= 1, "{chart} has points: {html}");
    }
    assert_eq!(
        dom_attr(&html, "chart-waiters", "data-last").as_deref(),
        Some(waiters.to_string().as_str()),
        "the waiters chart's last point against lockd_waiters: {html}"
    );
    assert!(
        dom_section(&html, "chart-waiters").contains("<polyline"),
        "the waiters line is drawn: {html}"
    );

    // Who holds the contended key next to who waits, in queue order.
    let contended = dom_section(&html, "contended-table");
    for s in [&holder, &first, &second] {
        assert!(contended.contains(s.as_str()), "{s} shown: {contended}");
    }
    assert!(
        contended.find(&first) < contended.find(&second),
        "queue in order: {contended}"
    );
    assert!(
        contended.contains(&format!("token {token}")),
        "the holder's token: {contended}"
    );
    assert!(contended.contains(">EX<") && contended.contains(">SH<"));

    // The lookup box, run from the address: the key's holder and queue.
    let looked = dom_section(&html, "lookup-table");
    assert!(looked.contains("payroll") && looked.contains(&holder) && looked.contains(&second));

    let screenshot = format!("--screenshot={}", shot.display());
    let out = in_chromium(chromium, dir.path(), &url, &screenshot).await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {out:?}"));
    // The waiters chart's line (#0f766e) and the EX tag's background (#fee2e2) are painted.
    assert!(
        pixels_like(&png, [0x0f, 0x76, 0x6e]) > 50,
        "the waiters chart is in the screenshot"
    );
    assert!(
        pixels_like(&png, [0xfe, 0xe2, 0xe2]) > 50,
        "an EX holder is in the screenshot"
    );
}

/// Issue 16: on a cluster node the page shows the members, which is the leader, and this
/// node; on a standalone server (above) the cluster section stays hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_cluster() {
    let chromium = chromium();
    if skip_unless("chromium", chromium.is_some()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = one_node_cluster(dir.path());
    let raft = node.raft_addr.clone();
    let srv = TestServer::start_with(move |c| {
        c.http_address = Some("127.0.0.1:0".into());
        c.cluster = Some(node);
    })
    .await;
    let url = format!("http://{}/", srv.admin.unwrap());
    let html = String::from_utf8_lossy(
        &in_chromium(chromium.unwrap(), dir.path(), &url, "--dump-dom")
            .await
            .stdout,
    )
    .into_owned();
    assert!(
        !dom_section(&html, "cluster").starts_with("id=\"cluster\" hidden"),
        "the cluster section is shown: {html}"
    );
    let members = dom_section(&html, "members");
    assert!(
        members.contains("1 (this node) leader") && members.contains(&raft),
        "{members}"
    );
    assert!(dom_section(&html, "node").contains("(leader)"), "{html}");
    srv.shutdown.cancel();
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
