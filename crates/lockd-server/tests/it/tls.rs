//! TLS on the shared listener: both protocols through a Rust TLS client and `redis-cli
//! --tls`, plaintext beside it or refused with `tls_required`, and certificate reload.

use std::path::PathBuf;
use std::sync::Arc;

use lockd_server::TlsError;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::rustls;

use crate::harness::*;

struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

/// A fresh self-signed certificate for "localhost", written as PEM files.
fn certs(tag: &str) -> Certs {
    let dir = std::env::temp_dir().join(format!("lockd-tls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Certs {
        der: ck.cert.der().clone(),
        dir,
        cert,
        key,
    }
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    trust: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

async fn tls_server(c: &Certs, required: bool) -> TestServer {
    let (cert, key) = (c.cert.clone(), c.key.clone());
    TestServer::start_with(move |cfg| {
        cfg.tls_cert = Some(cert);
        cfg.tls_key = Some(key);
        cfg.tls_required = required;
    })
    .await
}

async fn line_call<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    req: &[u8],
) -> String {
    s.get_mut().write_all(req).await.unwrap();
    s.get_mut().flush().await.unwrap();
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    line.trim_end().to_string()
}

#[tokio::test]
async fn both_protocols_over_tls_and_plaintext_beside() {
    let c = certs("both");
    let srv = tls_server(&c, false).await;
    let mut legacy = BufReader::new(tls_connect(srv.addr, &c.der).await.unwrap());
    let req = line(&session('a'), "ACQUIRE", "EX", &key(1));
    assert_eq!(line_call(&mut legacy, req.as_bytes()).await, "ACQUIRED");
    let mut native = BufReader::new(tls_connect(srv.addr, &c.der).await.unwrap());
    let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{AUTH_KEY}\r\n", AUTH_KEY.len());
    assert_eq!(line_call(&mut native, auth.as_bytes()).await, "+OK");
    let k = key(1);
    let acq = format!("*4\r\n$7\r\nACQUIRE\r\n$2\r\nEX\r\n$1\r\n0\r\n$31\r\n{k}\r\n");
    assert_eq!(
        line_call(&mut native, acq.as_bytes()).await,
        "$-1",
        "held by the TLS legacy client"
    );
    // Plaintext clients are served on the same port.
    let mut plain = srv.connect().await;
    assert_eq!(
        plain.call(&session('b'), "ACQUIRE", "SH", &key(1)).await,
        "CANT_ACQUIRE"
    );
    assert_eq!(
        plain.call(&session('b'), "ACQUIRE", "SH", &key(2)).await,
        "ACQUIRED"
    );
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[tokio::test]
async fn tls_required_refuses_plaintext() {
    let c = certs("required");
    let srv = tls_server(&c, true).await;
    let mut plain = srv.connect().await;
    plain
        .send(line(&session('a'), "STAT", "", "").as_bytes())
        .await;
    assert_eq!(plain.recv().await, "-ERR TLS is required\r");
    assert!(plain.closed_by_server().await);
    let mut ok = BufReader::new(tls_connect(srv.addr, &c.der).await.unwrap());
    assert!(
        line_call(&mut ok, line(&session('a'), "STAT", "", "").as_bytes())
            .await
            .contains(':')
    );
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[tokio::test]
async fn reload_switches_certificates_for_new_connections() {
    let c = certs("reload");
    let srv = tls_server(&c, true).await;
    let old = c.der.clone();
    assert!(tls_connect(srv.addr, &old).await.is_ok());
    // New certificate and key in the same files.
    let fresh = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&c.cert, fresh.cert.pem()).unwrap();
    std::fs::write(&c.key, fresh.signing_key.serialize_pem()).unwrap();
    assert!(srv.handle.reload_tls().unwrap());
    assert!(
        tls_connect(srv.addr, &old).await.is_err(),
        "the old certificate is gone"
    );
    assert!(tls_connect(srv.addr, fresh.cert.der()).await.is_ok());
    // A broken file keeps the current certificate.
    std::fs::write(&c.key, "not a key").unwrap();
    assert!(matches!(srv.handle.reload_tls(), Err(TlsError::Key { .. })));
    assert!(tls_connect(srv.addr, fresh.cert.der()).await.is_ok());
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[tokio::test]
async fn bad_tls_files_are_clear_errors() {
    let mut config = lockd_server::ServerConfig::new("127.0.0.1", 0, AUTH_KEY);
    config.tls_cert = Some("/nonexistent/cert.pem".into());
    config.tls_key = Some("/nonexistent/key.pem".into());
    let err = lockd_server::Server::bind(config)
        .await
        .err()
        .expect("fails");
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cli_over_tls() {
    let has_tls = std::process::Command::new("redis-cli")
        .arg("--help")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains("--tls")
                || String::from_utf8_lossy(&o.stderr).contains("--tls")
        });
    if skip_unless("redis-cli with TLS", has_tls) {
        return;
    }
    let c = certs("cli");
    let srv = tls_server(&c, true).await;
    let (port, ca) = (srv.addr.port().to_string(), c.cert.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                ca.to_str().unwrap(),
                "-h",
                "localhost",
                "-p",
                &port,
            ])
            .args([
                "-a",
                AUTH_KEY,
                "--no-auth-warning",
                "ACQUIRE",
                "EX",
                "0",
                "tls-key",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim().parse::<i64>().is_ok_and(|t| t > 0), "{out:?}");
    assert_eq!(srv.snapshot().locks_held, 1);
    let _ = std::fs::remove_dir_all(&c.dir);
}

/// Issue 10, defect 8: off loopback with TLS configured, the admin server speaks TLS with
/// the same certificate; the key never travels in the clear.
#[tokio::test]
async fn a_non_loopback_admin_server_uses_tls() {
    let c = certs("admin");
    let (cert, key) = (c.cert.clone(), c.key.clone());
    let srv = TestServer::start_with(move |cfg| {
        cfg.tls_cert = Some(cert);
        cfg.tls_key = Some(key);
        cfg.http_address = Some("0.0.0.0:0".into());
    })
    .await;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", srv.admin.unwrap().port())
        .parse()
        .unwrap();
    // Plain HTTP gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AUTH_KEY}\r\nConnection: close\r\n\r\n"
    );
    plain.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut got).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "plaintext was served: {:?}",
        String::from_utf8_lossy(&got)
    );
    // TLS with the server's certificate is.
    let mut s = tls_connect(admin, &c.der).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("\"locks held\""), "{got}");
    std::fs::remove_dir_all(&c.dir).ok();
}

/// Issue 11, defect 4: with TLS on, a connection that sends nothing, or stalls in its
/// handshake, is closed by the login timeout instead of holding its slot for ever.
#[tokio::test]
async fn silent_and_stalled_tls_connections_are_closed_by_the_login_timeout() {
    let c = certs("silent");
    let (cert, key) = (c.cert.clone(), c.key.clone());
    let srv = TestServer::start_with(move |cfg| {
        cfg.tls_cert = Some(cert);
        cfg.tls_key = Some(key);
        cfg.max_clients = 3;
        cfg.login_timeout = Some(std::time::Duration::from_secs(1));
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    // The first byte of a TLS handshake record, and then nothing.
    stalled.write_all(&[0x16]).await.unwrap();
    for s in [&mut silent, &mut stalled] {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        .expect("closed by the login timeout, not held");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    srv.eventually("the slots are free", |s| s.connections == 0)
        .await;
    // A TLS client that logs in is not closed by it.
    let mut s = BufReader::new(tls_connect(srv.addr, &c.der).await.unwrap());
    let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{AUTH_KEY}\r\n", AUTH_KEY.len());
    assert_eq!(line_call(&mut s, auth.as_bytes()).await, "+OK");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(line_call(&mut s, b"*1\r\n$4\r\nPING\r\n").await, "+PONG");
    std::fs::remove_dir_all(&c.dir).ok();
}

/// A cluster node serves TLS clients as a standalone server does (one node that makes
/// its own cluster here): the commit path is behind the same connection code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_serves_tls_clients() {
    let c = certs("cluster");
    let dir = tempfile::tempdir().unwrap();
    let node = one_node_cluster(dir.path());
    let (cert, key_file) = (c.cert.clone(), c.key.clone());
    let srv = TestServer::start_with(move |cfg| {
        cfg.tls_cert = Some(cert);
        cfg.tls_key = Some(key_file);
        cfg.cluster = Some(node);
    })
    .await;
    let mut native = BufReader::new(tls_connect(srv.addr, &c.der).await.unwrap());
    let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{AUTH_KEY}\r\n", AUTH_KEY.len());
    assert_eq!(line_call(&mut native, auth.as_bytes()).await, "+OK");
    let acq = "*4\r\n$7\r\nACQUIRE\r\n$2\r\nEX\r\n$1\r\n0\r\n$4\r\njobs\r\n";
    let got = line_call(&mut native, acq.as_bytes()).await;
    assert!(got.starts_with(':'), "{got}");
    let mut legacy = BufReader::new(tls_connect(srv.addr, &c.der).await.unwrap());
    let req = line(&session('a'), "ACQUIRE", "EX", &key(1));
    assert_eq!(line_call(&mut legacy, req.as_bytes()).await, "ACQUIRED");
    srv.shutdown.cancel();
    let _ = std::fs::remove_dir_all(&c.dir);
}
