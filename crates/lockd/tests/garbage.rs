//! Hostile input at a running lockd: random bytes, oversize lines, malformed RESP,
//! half-closed and reset connections, slow writers. Afterwards valid clients are
//! unaffected, no lock changed hands, connections and sessions are back to their baseline,
//! and resident memory is back near it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const KEY: &str = "garbage-test-key";

struct Lockd {
    child: Child,
    port: u16,
}

impl Drop for Lockd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Lockd {
    let port = lockd_server::free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lockd"))
        .args([
            "--port",
            &port.to_string(),
            "--auth-key",
            KEY,
            "--max-clients",
            "5000",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "lockd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Lockd { child, port }
}

fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A native client speaking line by line (every reply here is one line).
struct Native {
    r: BufReader<TcpStream>,
}

impl Native {
    fn connect(port: u16) -> Native {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut n = Native {
            r: BufReader::new(s),
        };
        assert_eq!(n.call(&["AUTH", KEY]), "+OK");
        n
    }

    fn call(&mut self, args: &[&str]) -> String {
        self.r.get_mut().write_all(&resp(args)).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// STATS as (name, value) pairs (RESP2: a flat array of bulk names and integers).
    fn stat(&mut self, name: &str) -> i64 {
        self.r.get_mut().write_all(&resp(&["STATS"])).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let n: usize = line.trim_end()[1..].parse().unwrap();
        let mut found = None;
        let mut last_name = String::new();
        for i in 0..n {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            if line.starts_with('$') {
                line.clear();
                self.r.read_line(&mut line).unwrap();
            }
            let v = line.trim_end().trim_start_matches(':').to_string();
            if i % 2 == 0 {
                last_name = v;
            } else if last_name == name {
                found = Some(v.parse().unwrap());
            }
        }
        found.unwrap()
    }
}

fn hostile(port: u16, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // From another loopback address: the wrong keys below get that address locked out,
    // which must not touch the valid clients on 127.0.0.1.
    let connect = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(
            &"127.0.0.2:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        TcpStream::from(s)
    };
    match seed % 7 {
        0 => {
            // Random bytes, any first byte, then close.
            let mut s = connect();
            let n = rng.gen_range(1..20_000);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            let _ = s.write_all(&bytes);
        }
        1 => {
            // An oversize legacy line: longer than the 131,070 bytes the original could
            // ever answer, so lockd closes the connection.
            let mut s = connect();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(&vec![b'x'; 140_000]);
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        }
        2 => {
            // Malformed RESP: a huge declared bulk length, a negative count, garbage types.
            let mut s = connect();
            let pick = [
                "*1\r\n$999999999\r\n",
                "*-5\r\n",
                "*2\r\n:1\r\n",
                "*3\r\n$3\r\nfoo\r\n$1\r\nx",
                "*99999999\r\n",
            ];
            let _ = s.write_all(pick[rng.gen_range(0..pick.len())].as_bytes());
        }
        3 => {
            // Half-closed after part of a request.
            let mut s = connect();
            let _ = s.write_all(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:0123:ACQ");
            let _ = s.shutdown(Shutdown::Write);
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
        }
        4 => {
            // Reset: linger 0 makes close send RST.
            let mut s = connect();
            let _ = s.write_all(&resp(&["AUTH", "nope"])[..7]);
            let s = socket2::Socket::from(s);
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
        5 => {
            // A slow writer: a valid native request one byte at a time.
            let mut s = connect();
            for b in resp(&["PING"]) {
                let _ = s.write_all(&[b]);
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf);
        }
        _ => {
            // Unauthenticated lock attempts and wrong-key legacy requests.
            let mut s = connect();
            let _ = s.write_all(&resp(&["ACQUIRE", "EX", "0", "guarded"]));
            let mut c = connect();
            let _ = c.write_all(
                format!(
                    "{}:{}:ACQUIRE:EX:{}\n",
                    "s".repeat(32),
                    "0".repeat(40),
                    "k".repeat(31)
                )
                .as_bytes(),
            );
        }
    }
}

#[test]
fn hostile_input_changes_nothing_and_leaks_nothing() {
    let lockd = start();
    let pid = lockd.child.id();
    let mut owner = Native::connect(lockd.port);
    let token = owner.call(&["ACQUIRE", "EX", "0", "guarded"]);
    assert!(token.starts_with(':'), "{token}");
    let mut observer = Native::connect(lockd.port);
    let baseline_conns = observer.stat("connections");
    let baseline_sessions = observer.stat("sessions");
    // Warm up the allocator with the same traffic before taking the memory baseline.
    for seed in 0..200 {
        hostile(lockd.port, seed);
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss(pid);
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let port = lockd.port;
            std::thread::spawn(move || {
                for seed in 0..500 {
                    hostile(port, 1000 + w * 1000 + seed);
                }
            })
        })
        .collect();
    // While the garbage flows, the lock never changes hands.
    let mut other = Native::connect(lockd.port);
    for _ in 0..50 {
        assert_eq!(other.call(&["ACQUIRE", "EX", "0", "guarded"]), "$-1");
        std::thread::sleep(Duration::from_millis(5));
    }
    for w in workers {
        w.join().unwrap();
    }
    drop(other);
    // Everything hostile is gone again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer.stat("connections") != baseline_conns
        || observer.stat("sessions") != baseline_sessions
    {
        assert!(
            Instant::now() < deadline,
            "connections or sessions did not return to the baseline"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(observer.stat("locks_held"), 1);
    assert_eq!(observer.stat("waiters"), 0);
    let info = observer.call(&["LOCKS"]);
    assert_eq!(info, "*0", "the observer holds nothing");
    assert_eq!(
        owner.call(&["RELEASE", "EX", "guarded"]),
        ":1",
        "still the owner's"
    );
    std::thread::sleep(Duration::from_millis(300));
    let rss1 = rss(pid);
    // 2,000 hostile connections came and went; allow allocator slack, not growth per
    // connection (2 MiB is about 1 KiB per connection).
    assert!(
        rss1 < rss0 + 2 * 1024 * 1024,
        "resident memory grew from {rss0} to {rss1}"
    );
}
