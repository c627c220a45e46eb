//! Stock Redis clients against lockd: Python's `redis` package and `redis-cli`.
//! Where the tool is missing the test says so and passes, unless LOCKD_REQUIRE_INTEROP is
//! set (CI sets it, after installing both), so that CI cannot skip them silently.

use std::process::Command;

use crate::harness::*;

fn available(program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    !skip_unless(&format!("{program} {args:?}"), ok)
}

#[tokio::test(flavor = "multi_thread")]
async fn python_redis_client_works() {
    if !available("python3", &["-c", "import redis"]) {
        return;
    }
    let srv = TestServer::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/redis_py.py");
    let port = srv.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &port, AUTH_KEY])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

fn redis_cli(port: u16, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &port.to_string(), "-a", AUTH_KEY, "--no-auth-warning"])
        .args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cli_works() {
    if !available("redis-cli", &["--version"]) {
        return;
    }
    let srv = TestServer::start().await;
    let port = srv.addr.port();
    let out = tokio::task::spawn_blocking(move || {
        let token = redis_cli(port, &["ACQUIRE", "EX", "0", "cli:k"], None);
        let session_script =
            "ACQUIRE SH 0 cli:other\nSESSION\nINSPECT cli:k\nSTATS\nRELEASE SH cli:other\nPING\n";
        let piped = redis_cli(port, &[], Some(session_script));
        (token, piped)
    })
    .await
    .unwrap();
    let token: i64 = out.0.trim().parse().expect("a token");
    assert!(token > 0);
    let lines: Vec<&str> = out.1.lines().collect();
    assert!(lines[0].parse::<i64>().unwrap() > token, "{lines:?}");
    assert_eq!(lines[1].len(), 32, "session id: {lines:?}");
    assert!(
        lines.contains(&"holders") && lines.contains(&"waiters"),
        "{lines:?}"
    );
    assert!(lines.contains(&"locks_held"), "{lines:?}");
    // The last two replies, exactly: RELEASE's count, then PING's.
    assert_eq!(lines[lines.len() - 2..], ["1", "PONG"], "{lines:?}");
}
