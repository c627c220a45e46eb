//! What a package ships besides the binary (issue 16): the man page and completions, made
//! from the flags' definitions; the PHP example beside the Python client.

mod common;

use common::*;

#[test]
fn lockd_prints_its_man_page_and_completions() {
    let out = lockd().arg("--print-man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    for flag in [".TH lockd 1", "node\\-id", "max\\-locks", "LOCKD_AUTH_KEY"] {
        assert!(man.contains(flag), "the man page lacks {flag}");
    }
    for (shell, marker) in [
        ("bash", "complete -F _lockd"),
        ("zsh", "#compdef lockd"),
        ("fish", "complete -c lockd"),
    ] {
        let out = lockd()
            .args(["--print-completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            s.contains(marker) && s.contains("lock-timeout"),
            "{shell}: {s}"
        );
    }
}

/// Issue 16: at start-up lockd prints (on standard output, for a person) the one line
/// needed to connect, and its redis-cli command works as printed.
#[test]
fn the_start_up_line_says_how_to_connect_and_works_as_printed() {
    use std::io::BufRead;
    let redis_cli = std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok();
    if missing("redis-cli", redis_cli) {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let mut child = lockd()
        .args(["--port", "0"])
        .env("XDG_STATE_HOME", state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("lockd: connect to") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no connect line");
    }
    let addr = line["lockd: connect to ".len()..]
        .split(':')
        .take(2)
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        line.contains(&format!("lockctl --addr {addr} ping")),
        "{line}"
    );
    let cmd = &line[line.find("redis-cli").unwrap()..line.find(" PING").unwrap() + 5];
    let got = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "PONG",
        "{cmd}: {got:?}"
    );
    signal(&child, libc::SIGTERM);
    wait_exit(&mut child);
}

/// Issue 16: boolean options read as people write them in the environment.
#[test]
fn boolean_environment_values_read_as_written() {
    for (v, required) in [
        ("1", true),
        ("yes", true),
        ("true", true),
        ("0", false),
        ("no", false),
    ] {
        let out = lockd()
            .args(["--check-config", "--auth-key", "k"])
            .env("LOCKD_TLS_REQUIRED", v)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.contains("--tls-required needs --tls-cert"),
            required,
            "LOCKD_TLS_REQUIRED={v}: {err}"
        );
        assert_eq!(
            out.status.success(),
            !required,
            "LOCKD_TLS_REQUIRED={v}: {err}"
        );
    }
}

/// Issue 16: clients/php/lock.php, run by PHP against a real lockd, takes an EX lock on a
/// resource's MediaWiki key (checked against a key computed independently, in Python),
/// holds it until its standard input ends (a second run is refused), then releases it (a
/// third run gets it). A wrong key is refused with BAD_KEY.
#[test]
fn the_php_example_locks_as_lslockmanager_does() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let php_here = Command::new("php")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if missing("php", php_here) {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/php/lock.php");
    let mut server = Running::start(lockd().args(["--auth-key", "php-key"]));
    let port = server.port.to_string();
    let resource = "mwstore://local-backend/images/a/ab/Example.jpg";
    let php = |key: &str| {
        let mut c = Command::new("php");
        c.args([script, "127.0.0.1", &port, key, resource])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let mut holder = php("php-key").spawn().unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // int(sha1(resource), 16) in base 36, padded to 31 (Python, not this script).
    assert_eq!(line, "ACQUIRED 1n4lk62juzpc36r5d2ib0umor7m38io\n");
    let refused = php("php-key").stdin(Stdio::null()).output().unwrap();
    assert_eq!(
        (
            refused.status.code(),
            String::from_utf8_lossy(&refused.stderr).trim()
        ),
        (Some(1), "not acquired: CANT_ACQUIRE")
    );
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "RELEASED\n");
    assert!(holder.wait().unwrap().success());
    let again = php("php-key").stdin(Stdio::null()).output().unwrap();
    assert!(again.status.success(), "{again:?}");
    let wrong = php("not-the-key").stdin(Stdio::null()).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&wrong.stderr).trim(),
        "not acquired: BAD_KEY"
    );
    signal(&server.child, libc::SIGTERM);
    assert!(server.wait().0.success());
}
