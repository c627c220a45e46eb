//! The operator's first month (issue 11): the documented install as the unit's user,
//! fencing tokens that never go back, logs that cannot be written, `--check-config`,
//! slots bounded in time. Each test names the defect it guards against; each was seen
//! failing before its fix.

mod common;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "operator-test-key";

/// Starts lockd with `args` on a port of its own choosing.
fn spawn(args: &[&str]) -> Running {
    Running::start(
        lockd()
            .args(["--auth-key", KEY])
            .args(args)
            .stdout(Stdio::null()),
    )
}

/// Starts lockd with standard error on `stderr`. Its log cannot be read for the port, so
/// the port is picked free beforehand (a race with other tests, unlikely, and only here).
fn spawn_logging_to(args: &[&str], stderr: Stdio) -> (Child, u16) {
    let port = free_port();
    let child = lockd()
        .args(["--auth-key", KEY, "--port", &port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_listening(port);
    (child, port)
}

fn sigterm_exits_zero(mut r: Running) {
    signal(&r.child, libc::SIGTERM);
    let (status, log) = r.wait();
    assert!(status.success(), "{status}: {log}");
}

/// The Unix time in µs: the floor of tokens without a data directory.
fn clock_floor() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn recorded(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("token-limit"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Defect 2: a fresh data directory starts at the clock, as a start without one does, so
/// moving a service to the unit (or losing the directory) never makes tokens go back.
#[test]
fn a_fresh_or_lowered_data_dir_starts_at_the_clock_floor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let before = clock_floor();
    let r = spawn(&["--data-dir", d]);
    let t = Native::connect(r.port, KEY).token("k");
    assert!(t >= before, "token {t} below the clock floor {before}");
    sigterm_exits_zero(r);
    // A limit lowered by hand is raised to the floor, not obeyed.
    std::fs::write(dir.path().join("token-limit"), "5\n").unwrap();
    let before = clock_floor();
    let r = spawn(&["--data-dir", d]);
    let t2 = Native::connect(r.port, KEY).token("k");
    assert!(
        t2 >= before && t2 > t,
        "token {t2} after {t}, floor {before}"
    );
    sigterm_exits_zero(r);
}

/// Defect 2 (and issue 17, defect 3): after a kill -9 right after a reservation, the next
/// start issues tokens above everything the killed one could have issued.
#[test]
fn tokens_after_a_kill_are_above_the_recorded_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut r = spawn(&["--data-dir", d]);
    let t1 = Native::connect(r.port, KEY).token("k");
    let limit = recorded(dir.path());
    assert!(t1 <= limit, "token {t1} past the recorded limit {limit}");
    signal(&r.child, libc::SIGKILL);
    r.wait();
    let r = spawn(&["--data-dir", d]);
    let t2 = Native::connect(r.port, KEY).token("k");
    assert!(
        t2 > limit,
        "token {t2} not above the killed run's limit {limit}"
    );
    assert!(recorded(dir.path()) >= t2);
    sigterm_exits_zero(r);
}

/// Defect 2: a recorded limit near the top refuses the start, saying why; never wraps.
#[test]
fn a_limit_near_the_top_refuses_to_start() {
    for limit in [
        "18446744073709551615",
        "18446744073709551614",
        "9223372036854775807",
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token-limit"), limit).unwrap();
        let out = lockd()
            .args(["--auth-key", KEY, "--port", &free_port().to_string()])
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{limit}: started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing to start") && err.contains(limit),
            "{err}"
        );
        let check = lockd()
            .args(["--auth-key", KEY, "--check-config"])
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!check.status.success(), "{limit}: --check-config passed it");
    }
}

/// Defect 3: with standard error closed or full, lockd goes on: refuses clients past
/// --max-clients, releases a dead session's locks on time, and exits on SIGTERM.
#[test]
fn logs_that_cannot_be_written_never_stop_lockd() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
    let mut sinks: Vec<(&str, Stdio)> = vec![("a closed pipe", Stdio::piped())];
    if let Ok(f) = full {
        sinks.push(("a full disk (/dev/full)", Stdio::from(f)));
    }
    for (what, sink) in sinks {
        let args = [
            "--max-clients",
            "3",
            "--lock-timeout",
            "1",
            "--login-timeout",
            "1",
        ];
        let (mut child, port) = spawn_logging_to(&args, sink);
        // Close the reading end at once: every log write now fails.
        drop(child.stderr.take());
        let mut holder = Native::connect(port, KEY);
        holder.token("k");
        let mut other = Native::connect(port, KEY);
        // Past --max-clients: refused, and logged (the write fails); the one let in is
        // closed by the login timeout, also logged.
        let extra: Vec<_> = (0..5)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let mut refused = 0;
        for mut s in extra {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            refused += buf.starts_with(b"-ERR max number of clients") as usize;
        }
        assert!(refused >= 3, "{what}: {refused} refused");
        // The holder dies; its lock is released after its grace, and logged (fails).
        drop(holder);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = other.call(&["ACQUIRE", "EX", "0", "k"]);
            if r.starts_with(':') {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the lock was never released: {r}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(other.call(&["PING"]), "+PONG", "{what}: still serving");
        signal(&child, libc::SIGTERM);
        let status = wait_exit(&mut child);
        assert!(status.success(), "{what}: {status}");
    }
}

/// Defect 4: a connection that logs in to nothing holds its slot for --login-timeout at
/// most, so silent connections cannot lock everyone out.
#[test]
fn silent_connections_are_closed_after_the_login_timeout() {
    // Room for the start-up probe's connection too, which may not be closed yet.
    let r = spawn(&["--max-clients", "4", "--login-timeout", "1"]);
    let port = r.port;
    let mut silent: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let started = Instant::now();
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without a reply");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The slots are free again, and a logged-in connection is not closed by it.
    let mut ok = Native::connect(port, KEY);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ok.call(&["PING"]), "+PONG");
    sigterm_exits_zero(r);
}

/// Defect 7: --check-config refuses what a real start would refuse, and prints every
/// effective option but the key.
#[test]
fn check_config_checks_what_a_start_checks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--http-address".into(), "localhost:notaport".into()],
            "--http-address",
        ),
        (
            vec![
                "--tls-cert".into(),
                "/nonexistent/c.pem".into(),
                "--tls-key".into(),
                "/nonexistent/k.pem".into(),
            ],
            "/nonexistent/c.pem",
        ),
        (
            vec!["--data-dir".into(), file.display().to_string()],
            "not-a-dir",
        ),
        (
            vec!["--address".into(), "127.0.0.1:7830".into()],
            "has a port in it",
        ),
        (
            vec!["--address".into(), "no such host.invalid".into()],
            "--address",
        ),
    ];
    for (args, says) in cases {
        let out = lockd()
            .args(["--auth-key", KEY, "--check-config"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} passed the check");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // The placeholder key of the sample is an error off loopback, not on it.
    let placeholder = [
        "--auth-key",
        "change-me-to-a-long-random-string",
        "--check-config",
    ];
    let out = lockd()
        .args(placeholder)
        .args(["--address", "0.0.0.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("placeholder"));
    assert!(lockd().args(placeholder).output().unwrap().status.success());
    // A valid one prints every option, not the key.
    let out = lockd()
        .args([
            "--auth-key",
            KEY,
            "--check-config",
            "--port",
            &free_port().to_string(),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    for opt in [
        "lock-timeout",
        "max-grace",
        "login-timeout",
        "max-pending-output",
        "busy-poll-us",
        "data-dir",
        "tls-required",
        "threads",
    ] {
        assert!(said.contains(opt), "{opt} missing from: {said}");
    }
    assert!(!said.contains(KEY));
}

/// Defect 8: an OS error is said once, and text logs to a file carry no colour codes.
#[test]
fn errors_once_and_no_colour_in_files() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = lockd()
        .args(["--auth-key", KEY, "--port", &port])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("os error 98").count(), 1, "{err}");
    let mut r = spawn(&[]);
    Native::connect(r.port, KEY);
    signal(&r.child, libc::SIGTERM);
    let (_, log) = r.wait();
    assert!(log.contains("lockd listening"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a non-terminal log: {log:?}"
    );
    for opt in [
        "max-grace",
        "login-timeout",
        "max-waiters-per-key",
        "http-address",
    ] {
        assert!(log.contains(opt), "the start-up line lacks {opt}: {log}");
    }
}

/// Defect 1: the install docs/operations.md describes starts as the unprivileged user the
/// unit runs as: its ExecStartPre and ExecStart, run the way systemd would (the config
/// handed over through LoadCredential=, the state directory the dynamic user's), pass.
#[test]
fn the_documented_install_starts_as_the_units_user() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok();
    if missing(
        "root and setpriv (to run as the unit's user)",
        root && setpriv,
    ) {
        return;
    }
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let scratch = tempfile::tempdir().unwrap();
    let sr = scratch.path();
    // The scratch root is traversable by the unit's user, as / is.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sr, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rooted = |p: &str| format!("{}{p}", sr.display());
    // The install commands of docs/operations.md, run as written, under the scratch root.
    let ops = std::fs::read_to_string(repo.join("docs/operations.md")).unwrap();
    let block = ops
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an install block in docs/operations.md");
    let mut ran = 0;
    for line in block.lines().filter(|l| l.starts_with("install ")) {
        let cmd = line
            .split('#')
            .next()
            .unwrap()
            .replace("target/release/lockd", env!("CARGO_BIN_EXE_lockd"))
            .replace(" /usr/", &format!(" {}", rooted("/usr/")))
            .replace(" /etc/", &format!(" {}", rooted("/etc/")));
        let cmd = format!(
            "mkdir -p {0}/usr/local/bin {0}/etc/systemd/system && {cmd}",
            sr.display()
        );
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(&repo)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
        ran += 1;
    }
    assert!(
        ran >= 3,
        "the install block installs the binary, the config and the unit"
    );
    // "edit auth-key and address first", as the docs say.
    let conf = rooted("/etc/lockd/lockd.toml");
    let port = free_port();
    let http = free_port();
    let text = std::fs::read_to_string(&conf).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.split(' ').next() {
            Some("auth-key") => format!("auth-key = \"{KEY}\""),
            Some("address") => "address = \"127.0.0.1\"".to_string(),
            Some("port") => format!("port = {port}"),
            Some("http-address") => format!("http-address = \"127.0.0.1:{http}\""),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&conf, text).unwrap();
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode(&rooted("/etc/lockd")), mode(&conf)),
        (0o700, 0o600),
        "the secret stays root's"
    );
    // What systemd does for the unit: a dynamic user (uid 65534 stands in), its state
    // directory, and the credential: a copy of the config only that user can read.
    let unit = std::fs::read_to_string(rooted("/etc/systemd/system/lockd.service")).unwrap();
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(value("DynamicUser"), ["yes"]);
    let (uid, gid) = (65534u32, 65534u32);
    let creds = sr.join("run/credentials/lockd.service");
    std::fs::create_dir_all(&creds).unwrap();
    for cred in value("LoadCredential") {
        let (name, source) = cred.split_once(':').expect("NAME:PATH");
        let to = creds.join(name);
        std::fs::copy(rooted(source), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
    }
    std::os::unix::fs::chown(&creds, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o500)).unwrap();
    let state = sr.join("var/lib/lockd");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
    let env: Vec<(String, String)> = value("Environment")
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("/var/lib/", &rooted("/var/lib/"))))
        .collect();
    let command = |line: &str| {
        let line = line
            .replace("${CREDENTIALS_DIRECTORY}", creds.to_str().unwrap())
            .replace("/usr/local/bin/lockd", &rooted("/usr/local/bin/lockd"));
        let mut c = std::process::Command::new("setpriv");
        c.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
        ]);
        c.args(line.split_whitespace());
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CREDENTIALS_DIRECTORY", &creds);
        for (k, v) in &env {
            c.env(k, v);
        }
        c
    };
    let pre = value("ExecStartPre");
    assert_eq!(pre.len(), 1);
    // As root, on the root-owned file the docs install, the check passes too.
    let out = lockd()
        .args(["--check-config", "--config", &conf])
        .output()
        .unwrap();
    assert!(out.status.success(), "the check as root: {out:?}");
    let out = command(&pre[0]).output().unwrap();
    assert!(
        out.status.success(),
        "ExecStartPre as the unit's user: {out:?}"
    );
    let start = value("ExecStart");
    let mut child = command(&start[0])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(port);
    let mut c = Native::connect(port, KEY);
    assert!(
        c.token("k") >= clock_floor() / 2,
        "tokens from the state directory"
    );
    assert!(
        state.join("token-limit").exists(),
        "the data dir is the state directory"
    );
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child);
    let mut log = String::new();
    let mut r = std::io::BufReader::new(child.stderr.take().unwrap());
    while r.read_line(&mut log).unwrap_or(0) > 0 {}
    assert!(status.success(), "{status}: {log}");
}

/// Defect 9: the docs stand on their own: no pointer outside the repository for the
/// protocol, and the legacy rules are in the protocol reference itself.
#[test]
fn the_docs_stand_on_their_own() {
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    for doc in ["README.md", "docs/protocol.md", "docs/operations.md"] {
        let text = std::fs::read_to_string(repo.join(doc)).unwrap();
        assert!(
            !text.contains("../shared") && !text.contains("shared/protocol"),
            "{doc} points outside the repository"
        );
    }
    let protocol = std::fs::read_to_string(repo.join("docs/protocol.md")).unwrap();
    for rule in [
        "BAD_FORMAT",
        "BAD_KEY",
        "BAD_SESSION",
        "BAD_COMMAND",
        "BAD_TYPE",
        "131,070",
        "hmac_sha1",
        "TOO_MANY_LOCKS",
        "RELEASED_ALL",
    ] {
        assert!(protocol.contains(rule), "docs/protocol.md lacks {rule}");
    }
}
