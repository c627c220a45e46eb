//! What the binary's test files share: the binary, free ports, a blocking native client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// The binary under test, with no `LOCKD_*` from whoever runs the tests.
pub fn lockd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lockd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("LOCKD_") {
            c.env_remove(k);
        }
    }
    c
}

pub fn free_port() -> u16 {
    lockd_server::free_port().unwrap()
}

/// Waits (10 s at most) until something listens on `port`.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "lockd did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) with a pid we own.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Waits (10 s at most) for the child to exit.
pub fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "lockd did not exit within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Retries `f` until it answers `want` (10 s at most): a node serves once it joined.
pub fn eventually(mut f: impl FnMut() -> String, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = f();
        if want(&got) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A blocking native client that reads one-line replies.
pub struct Native {
    pub r: BufReader<TcpStream>,
}

impl Native {
    pub fn connect(port: u16, key: &str) -> Native {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut n = Native {
            r: BufReader::new(s),
        };
        assert_eq!(n.call(&["AUTH", key]), "+OK");
        n
    }

    pub fn call(&mut self, args: &[&str]) -> String {
        self.r.get_mut().write_all(&resp(args)).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// The fencing token of a granted try-lock of `key`.
    pub fn token(&mut self, key: &str) -> u64 {
        let r = self.call(&["ACQUIRE", "EX", "0", key]);
        r.strip_prefix(':')
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("not granted: {r}"))
    }
}

/// Whether a prerequisite of a test is missing: a test that needs it says so on standard
/// error (visible even when the harness captures output) and returns, unless
/// `LOCKD_REQUIRE_INTEROP` is set (as in CI, which installs everything), where it fails.
pub fn missing(what: &str, available: bool) -> bool {
    if available {
        return false;
    }
    assert!(
        std::env::var_os("LOCKD_REQUIRE_INTEROP").is_none(),
        "{what} is required (LOCKD_REQUIRE_INTEROP is set)"
    );
    // Straight to standard error: the test harness captures eprintln!, not this, so the
    // skip shows in every run.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what} is not available");
    true
}

/// A lockd started on port 0 (so parallel tests never race for a port), with the port it
/// bound read from its start-up line and the rest of its log collected meanwhile.
pub struct Running {
    pub child: std::process::Child,
    pub port: u16,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Starts `cmd` (which must not name a port) with `--port 0` and standard error
    /// piped; waits (10 s at most) for its start-up line.
    pub fn start(cmd: &mut Command) -> Running {
        let mut child = cmd
            .args(["--port", "0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::thread::spawn(move || {
            let mut all = String::new();
            let mut line = String::new();
            let mut told = false;
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                if !told {
                    if let Some(port) = listening_port(&line) {
                        let _ = tx.send(port);
                        told = true;
                    }
                }
                all.push_str(&line);
                line.clear();
            }
            all
        });
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("lockd logs the address it listens on within 10 s");
        Running {
            child,
            port,
            log: Some(log),
        }
    }

    /// Waits (10 s at most) for lockd to exit; its status and everything it logged.
    pub fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let status = wait_exit(&mut self.child);
        let log = self
            .log
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (status, log)
    }
}

/// A test that fails half-way leaves no lockd running behind it.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The port in a `lockd listening` line, text (`address=IP:PORT`) or JSON
/// (`"address":"IP:PORT"`).
fn listening_port(line: &str) -> Option<u16> {
    if !line.contains("lockd listening") {
        return None;
    }
    let rest = line
        .split_once("address=")
        .or_else(|| line.split_once("\"address\":\""))?
        .1;
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    addr.rsplit_once(':')?.1.parse().ok()
}
