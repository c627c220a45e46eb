//! The `lockd` binary: help, option errors, the default start-up, graceful shutdown.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

mod common;
use common::{lockd, Running};

#[test]
fn help_explains_every_option() {
    let out = lockd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--address",
        "--port",
        "--auth-key",
        "--auth-scheme",
        "--lock-timeout",
        "--max-locks",
        "--max-clients",
        "--max-backlog",
        "--config",
        "--key-file",
        "--idle-timeout",
        "--busy-poll-us",
    ] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
}

#[test]
fn bad_options_exit_nonzero_naming_the_option() {
    for (args, name) in [
        (vec!["--port", "notaport"], "--port"),
        (vec!["--maxLocks=-1"], "--max-locks"),
        (vec!["--frobnicate"], "--frobnicate"),
        (vec!["--auth-key", ""], "--auth-key"),
        (vec!["--max-clients", "0"], "--max-clients"),
        (vec!["--busy-poll-us", "2000000"], "--busy-poll-us"),
    ] {
        let out = lockd().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{args:?}: {err}");
    }
}

#[test]
fn environment_sets_options() {
    let out = lockd().env("LOCKD_PORT", "notaport").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("notaport"));
}

#[test]
fn listen_failure_is_reported() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = lockd()
        .args(["--auth-key", "k", "--port", &port])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen"), "{err}");
}

/// Starts lockd with `args` on a port of its own choosing; waits for it to listen.
fn start(args: &[&str], home: &std::path::Path) -> Running {
    Running::start(
        lockd()
            .args(args)
            .env("HOME", home)
            .env_remove("XDG_STATE_HOME")
            .stdout(Stdio::piped()),
    )
}

/// Stops lockd with SIGTERM, checks it exits 0, and returns what it logged.
fn stop(mut r: Running) -> String {
    sigterm(&r.child);
    let (status, log) = r.wait();
    assert!(status.success(), "{status}: {log}");
    log
}

fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) with a pid we own.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

#[test]
fn default_start_generates_a_key_that_works_and_sigterm_exits_zero() {
    let home = tempfile::tempdir().unwrap();
    let mut running = start(&[], home.path());
    let port = running.port;
    let mut first = String::new();
    let mut stdout = BufReader::new(running.child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let key_path = home.path().join(".local/state/lockd/auth-key");
    let key = std::fs::read_to_string(&key_path)
        .unwrap()
        .trim()
        .to_string();
    assert!(first.contains(&key), "printed key: {first}");
    let mut second = String::new();
    stdout.read_line(&mut second).unwrap();
    assert!(
        second.contains(key_path.to_str().unwrap()),
        "printed path: {second}"
    );

    let signer =
        lockd_proto::legacy::Signer::new(key.as_bytes(), lockd_proto::legacy::AuthScheme::Hmac);
    let mut req = signer.sign_line(&[b's'; 32], b"ACQUIRE", b"EX", &[b'k'; 31]);
    req.push(b'\n');
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(&req).unwrap();
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply).unwrap();
    assert_eq!(reply, "ACQUIRED\n");

    let err = stop(running);
    assert!(err.contains("lockd listening"), "{err}");
    assert!(!err.contains(&key), "the key is never logged");
}

#[test]
fn given_key_is_not_logged() {
    let home = tempfile::tempdir().unwrap();
    let child = start(
        &["--authKey=supersecretvalue", "--address=127.0.0.1"],
        home.path(),
    );
    let err = stop(child);
    assert!(err.contains("lockd listening"));
    assert!(!err.contains("supersecretvalue"));
    assert!(
        !home.path().join(".local/state/lockd/auth-key").exists(),
        "no key file when a key is given"
    );
}

#[test]
fn check_config_validates_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "port = 9999\nauthKey = \"k\"\nlock-timeout = 5\nlog-format = \"json\"\n",
    )
    .unwrap();
    let out = lockd()
        .args(["--check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid: address 127.0.0.1:9999"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "port = \"high\"\n").unwrap();
    let out = lockd()
        .args(["--check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("port"),
        "{out:?}"
    );
    // No key given: checking does not generate or write one.
    let home = tempfile::tempdir().unwrap();
    let out = lockd()
        .arg("--check-config")
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!home.path().join(".local/state/lockd/auth-key").exists());
}

#[test]
fn json_logs_are_json() {
    let home = tempfile::tempdir().unwrap();
    let child = start(&["--auth-key", "k", "--log-format", "json"], home.path());
    let err = stop(child);
    let first = err.lines().next().expect("a log line");
    assert!(
        first.starts_with('{') && first.contains("\"lockd listening\""),
        "{first}"
    );
}

#[test]
fn the_shipped_sample_config_is_valid_once_its_key_is_set() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/lockd.toml");
    // As shipped it listens on 0.0.0.0 with a placeholder key: refused, saying why.
    let out = lockd()
        .args(["--check-config", "--config", sample])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("placeholder"),
        "{out:?}"
    );
    let out = lockd()
        .args([
            "--check-config",
            "--config",
            sample,
            "--auth-key",
            "a-real-secret",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/lockd.service"
    ))
    .unwrap();
    for flag in [
        "ExecStartPre=/usr/local/bin/lockd --check-config --config ${CREDENTIALS_DIRECTORY}/lockd.toml",
        "ExecStart=/usr/local/bin/lockd --config ${CREDENTIALS_DIRECTORY}/lockd.toml",
        "LoadCredential=lockd.toml:/etc/lockd/lockd.toml",
    ] {
        assert!(unit.contains(flag), "the unit has {flag}");
    }
}

#[test]
fn the_shipped_systemd_unit_passes_systemd_analyze() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if common::missing("systemd-analyze", probe.is_ok()) {
        return;
    }
    let probe = probe.expect("checked");
    assert!(probe.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/lockd.service"
    ))
    .unwrap();
    // verify checks that the commands exist: point them at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockd.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/lockd", env!("CARGO_BIN_EXE_lockd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    // It exits 0 even for unknown keys and bad values, but names each one.
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn sigterm_as_soon_as_the_port_opens_stops_gracefully() {
    // Signal handlers are installed before the port opens; a SIGTERM in between used to
    // kill lockd with the default action. A CI run under load caught it; the window was
    // narrow, so without the fix this loop fails only now and then: a guard, not a proof.
    for _ in 0..20 {
        let home = tempfile::tempdir().unwrap();
        let child = start(&["--auth-key", "k"], home.path());
        stop(child);
    }
}
