//! `lockctl` as a user runs it, against a real lockd.

use std::process::{Command, Output};

const KEY: &str = "lockctl-test-key";

/// Starts a lockd on 127.0.0.1:0 in a background thread; returns its address.
fn server() -> String {
    in_thread(lockd_server::ServerConfig::new("127.0.0.1", 0, KEY)).0
}

/// Runs a server with `config` in a background thread of its own: its client address,
/// its admin HTTP address (empty without one), and the token that stops it.
fn in_thread(
    config: lockd_server::ServerConfig,
) -> (String, String, lockd_server::CancellationToken) {
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = lockd_server::CancellationToken::new();
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let s = lockd_server::Server::bind(config).await.unwrap();
            let admin = s.admin_addr().map(|a| a.to_string()).unwrap_or_default();
            tx.send((s.local_addr().to_string(), admin)).unwrap();
            s.run(s2).await;
        });
    });
    let (addr, admin) = rx.recv().unwrap();
    (addr, admin, stop)
}

fn lockctl(addr: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LOCKD_")) {
        c.env_remove(k);
    }
    c.args(["--addr", addr, "--auth-key", KEY]).args(args);
    c
}

fn run(addr: &str, args: &[&str]) -> Output {
    lockctl(addr, args).output().unwrap()
}

/// A cluster node in a background thread, with fast timeouts: its client address, its
/// admin HTTP address, and the token that stops it. `initial` empty: a node that waits to
/// be added.
fn cluster_node(
    id: u64,
    raft: &str,
    dir: &std::path::Path,
    initial: std::collections::BTreeMap<u64, String>,
) -> (String, String, lockd_server::CancellationToken) {
    let mut c = lockd_server::ClusterConfig::new(id, raft, dir.to_path_buf(), KEY.as_bytes());
    c.initial = initial;
    c.heartbeat_ms = 50;
    c.election_min_ms = 300;
    c.election_max_ms = 600;
    c.detect_ms = 1000;
    let mut config = lockd_server::ServerConfig::new("127.0.0.1", 0, KEY);
    config.cluster = Some(c);
    config.http_address = Some("127.0.0.1:0".into());
    in_thread(config)
}

fn free_port() -> u16 {
    lockd_server::free_port().unwrap()
}

/// One RESP request on a new connection after AUTH: the reply's first line.
fn resp_once(addr: &str, args: &[&str]) -> String {
    use std::io::{BufRead, Write};
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut r = std::io::BufReader::new(s);
    let cmd = |args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        out
    };
    r.get_mut()
        .write_all(format!("{}{}", cmd(&["AUTH", KEY]), cmd(args)).as_bytes())
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap_or(0);
    line.trim_end().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn ping_and_where_the_key_comes_from() {
    let addr = server();
    let o = run(&addr, &["ping"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("PONG"));
    // From the environment.
    let o = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .env("LOCKD_ADDR", &addr)
        .env("LOCKD_AUTH_KEY", KEY)
        .arg("ping")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    // From the key file lockd writes by default under $HOME.
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".local/state/lockd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("auth-key"), format!("{KEY}\n")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .env_remove("LOCKD_AUTH_KEY")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", home.path())
        .args(["--addr", &addr, "ping"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn exit_codes_for_wrong_key_unreachable_server_and_usage() {
    let addr = server();
    let o = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .args(["--addr", &addr, "--auth-key", "nope", "ping"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(77), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("authentication"));
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let o = run(&dead, &["ping"]);
    assert_eq!(o.status.code(), Some(69), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect"));
    let o = run(&addr, &["lock", "k"]);
    assert_eq!(o.status.code(), Some(2), "no command: {o:?}");
    let o = run(&addr, &["lock", "--timeout", "soon", "k", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = run(&addr, &["lock", "k", "--", "/nonexistent/program"]);
    assert_eq!(o.status.code(), Some(127), "{o:?}");
}

#[test]
fn lock_runs_the_command_with_the_token_and_passes_its_status() {
    let addr = server();
    let o = run(
        &addr,
        &[
            "lock",
            "k",
            "--",
            "sh",
            "-c",
            "test \"$LOCKD_FENCING_TOKEN\" -gt 0 && exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let o = run(
        &addr,
        &[
            "lock",
            "--shared",
            "k",
            "j",
            "--",
            "sh",
            "-c",
            "echo $LOCKD_FENCING_TOKEN",
        ],
    );
    assert!(o.status.success());
    assert!(stdout(&o).trim().parse::<u64>().unwrap() > 0);
    // Released after: another exclusive lock is had at once.
    let o = run(&addr, &["lock", "--timeout", "0", "k", "--", "true"]);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn lock_that_cannot_be_had_exits_75_or_as_told() {
    let addr = server();
    let mut holder = lockctl(&addr, &["lock", "busy", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    // Wait until the holder has it.
    let mut held = false;
    for _ in 0..200 {
        if stdout(&run(&addr, &["inspect", "busy"])).contains("holder") {
            held = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(held, "the first lockctl never held the lock");
    let o = run(&addr, &["lock", "--timeout", "0", "busy", "--", "true"]);
    assert_eq!(o.status.code(), Some(75), "{o:?}");
    let o = run(
        &addr,
        &[
            "lock",
            "--timeout",
            "200ms",
            "-E",
            "9",
            "busy",
            "--",
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(9), "{o:?}");
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn concurrent_lockers_never_lose_an_increment() {
    let addr = server();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("counter");
    std::fs::write(&file, "0\n").unwrap();
    let script = format!(
        "n=$(cat {f}); sleep 0.001; echo $((n+1)) > {f}",
        f = file.display()
    );
    const PROCS: usize = 8;
    const EACH: usize = 10;
    let workers: Vec<_> = (0..PROCS)
        .map(|_| {
            let (addr, script) = (addr.clone(), script.clone());
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    let o = run(
                        &addr,
                        &[
                            "lock",
                            "--timeout",
                            "60s",
                            "counter",
                            "--",
                            "sh",
                            "-c",
                            &script,
                        ],
                    );
                    assert!(o.status.success(), "{o:?}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let n: usize = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, PROCS * EACH);
}

#[test]
fn acquire_then_release_by_session_with_json() {
    let addr = server();
    let o = run(&addr, &["--json", "acquire", "--grace", "30s", "a", "b"]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let session = v["session"].as_str().unwrap().to_string();
    assert!(v["token"].as_u64().unwrap() > 0);
    let o = run(&addr, &["--json", "inspect", "a"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["holders"][0]["session"], session.as_str());
    assert_eq!(info["holders"][0]["mode"], "EX");
    let o = run(&addr, &["--json", "locks", "--session", &session]);
    let locks: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(locks.as_array().unwrap().len(), 2);
    let o = run(&addr, &["--json", "stats"]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["locks_held"], 2);
    let o = run(&addr, &["release", "--session", &session, "a"]);
    assert!(stdout(&o).contains("released 1"), "{o:?}");
    let o = run(&addr, &["--json", "release", "--session", &session]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["released"], 1);
    assert!(stdout(&run(&addr, &["inspect", "a"])).contains("free"));
    let o = run(
        &addr,
        &["release", "--session", "nosuchsessionnosuchsessionnosuch"],
    );
    assert_eq!(o.status.code(), Some(70), "{o:?}");
}

#[test]
fn talks_tls_when_given_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (c2, k2) = (cert.clone(), key.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut config = lockd_server::ServerConfig::new("127.0.0.1", 0, KEY);
            config.tls_cert = Some(c2);
            config.tls_key = Some(k2);
            config.tls_required = true;
            let s = lockd_server::Server::bind(config).await.unwrap();
            tx.send(s.local_addr().port()).unwrap();
            s.run(lockd_server::CancellationToken::new()).await;
        });
    });
    let addr = format!("localhost:{}", rx.recv().unwrap());
    let o = run(
        &addr,
        &[
            "--tls-ca",
            cert.to_str().unwrap(),
            "lock",
            "tls",
            "--",
            "true",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let o = run(&addr, &["ping"]);
    assert_eq!(o.status.code(), Some(69), "plaintext is refused: {o:?}");
    let o = run(
        &addr,
        &[
            "--tls-ca",
            cert.to_str().unwrap(),
            "--tls-name",
            "other.example",
            "ping",
        ],
    );
    assert_eq!(o.status.code(), Some(69), "{o:?}");
}

/// A TCP proxy to `upstream` that can cut every connection through it, refuse new ones,
/// or stall them all (open, forwarding nothing), as a silent network fault would.
struct Cut {
    addr: String,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cut {
    fn new(upstream: String) -> Cut {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::net::TcpStream>::new()));
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c2, o2, s2) = (conns.clone(), open.clone(), stalled.clone());
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                if !o2.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut list = c2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let stalled = s2.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            while stalled.load(Ordering::SeqCst) {
                                std::thread::sleep(std::time::Duration::from_millis(10));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cut {
            addr,
            conns,
            open,
            stalled,
        }
    }

    /// Stops forwarding, keeping every connection open.
    fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection through the proxy; with `refuse`, new ones too.
    fn cut(&self, refuse: bool) {
        self.open
            .store(!refuse, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn held_by_someone(addr: &str, key: &str) -> bool {
    stdout(&run(addr, &["inspect", key])).contains("holder")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..250 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// Issue 12, defect 4: SIGTERM to lockctl goes to the command, and the lock is released
/// only after the command has exited.
#[test]
fn sigterm_to_lockctl_goes_to_the_command_and_the_lock_outlives_it() {
    let addr = server();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("got-term");
    let ready = dir.path().join("ready");
    let script = format!(
        // At most 10 s, so that an orphan (the defect) ends by itself and the test fails.
        "trap 'touch {m}; sleep 0.5; exit 3' TERM; touch {r}; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        m = mark.display(),
        r = ready.display()
    );
    let mut child = lockctl(&addr, &["lock", "sigk", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_for("the command running, its trap set", || ready.exists());
    assert!(held_by_someone(&addr, "sigk"));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for("the command got SIGTERM", || mark.exists());
    assert!(
        held_by_someone(&addr, "sigk"),
        "released before the command exited"
    );
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "lockctl exits with the command's status"
    );
    assert!(!held_by_someone(&addr, "sigk"), "released after it exited");
}

/// Issue 12, defect 4: a lost connection that lockctl resumes within the grace keeps the
/// lock, and the command runs on to its end.
#[test]
fn a_resumed_connection_keeps_the_command_running() {
    let addr = server();
    let proxy = Cut::new(addr.clone());
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "i=0; while [ ! -e {g} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; exit 0",
        g = go.display()
    );
    let child = lockctl(
        &proxy.addr,
        &["lock", "--grace", "10s", "resk", "--", "sh", "-c", &script],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    wait_for("the lock held", || held_by_someone(&addr, "resk"));
    proxy.cut(false);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        held_by_someone(&addr, "resk"),
        "the session keeps the lock through the loss"
    );
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("resumed"), "{err}");
    assert!(!held_by_someone(&addr, "resk"));
}

/// Issue 12, defect 4: a lost connection that cannot be resumed stops the command (its
/// --signal, within half the grace), says why, and exits 69.
#[test]
fn a_lost_lock_stops_the_command() {
    let addr = server();
    let proxy = Cut::new(addr.clone());
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("got-usr1");
    let script = format!(
        "trap 'touch {m}; exit 0' USR1; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        m = mark.display()
    );
    let args = [
        "lock", "--grace", "2s", "--signal", "USR1", "lostk", "--", "sh", "-c", &script,
    ];
    let child = lockctl(&proxy.addr, &args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the lock held", || held_by_someone(&addr, "lostk"));
    let cut_at = std::time::Instant::now();
    proxy.cut(true);
    let out = child.wait_with_output().unwrap();
    let waited = cut_at.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(mark.exists(), "the command got the signal asked for");
    assert!(err.contains("not resumed in time"), "{err}");
    // Told before the server's 2 s grace could pass the lock on.
    assert!(waited < std::time::Duration::from_secs(2), "{waited:?}");
}

/// Issue 12, defect 4 ("cannot tell"): a connection that stalls without an error (no
/// reply, no close) is a loss too: lockctl's PINGs go unanswered, it cannot resume, and it
/// stops the command within half the grace.
#[test]
fn a_silently_stalled_connection_stops_the_command() {
    let addr = server();
    let proxy = Cut::new(addr.clone());
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("got-term");
    let script = format!(
        "trap 'touch {m}; exit 0' TERM; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        m = mark.display()
    );
    let args = ["lock", "--grace", "2s", "stallk", "--", "sh", "-c", &script];
    let child = lockctl(&proxy.addr, &args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the lock held", || held_by_someone(&addr, "stallk"));
    let stalled_at = std::time::Instant::now();
    proxy.stall();
    let out = child.wait_with_output().unwrap();
    let waited = stalled_at.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(mark.exists(), "the command was stopped");
    // Noticed within a quarter of the grace, given up a quarter later: told within half
    // of it, before the server could pass the lock on.
    assert!(
        waited < std::time::Duration::from_millis(1500),
        "{waited:?}"
    );
}

/// Issue 13: `lockctl lock` against a cluster (`--addr n1,n2,n3`) keeps its command's lock
/// through the loss of the node it was connected to: it resumes the session on another
/// node, the command goes on, and nobody else gets the lock meanwhile.
#[test]
fn lock_keeps_its_lock_through_the_loss_of_its_cluster_node() {
    let raft: std::collections::BTreeMap<u64, String> = (1..=3)
        .map(|i| (i, format!("127.0.0.1:{}", free_port())))
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    for i in 1..=3u64 {
        let (addr, _, stop) =
            cluster_node(i, &raft[&i], dirs[(i - 1) as usize].path(), raft.clone());
        addrs.push(addr);
        stops.push(stop);
    }
    let all = addrs.join(",");
    // The command says when it runs: lockctl is then past its set-up (a loss before that
    // ends lockctl without running the command, which is right, but not this test).
    let mark = dirs[0].path().join("running");
    // The command outlives every check below by far: each check may wait for a commit
    // (up to the 5 s commit timeout during the election), and a check made after the
    // command ended would find the lock rightly released. CI saw exactly that with an 8 s
    // command and 30 checks, and took it for a lost lock.
    let script = format!("touch {}; sleep 20; echo finished", mark.display());
    let child = lockctl(&all, &["lock", "deploy", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Held (once lockctl got it), seen from node 3.
    let held = |addr: &str| resp_once(addr, &["ACQUIRE", "EX", "0", "deploy"]) == "$-1";
    let t0 = std::time::Instant::now();
    while !mark.exists() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "the command never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(held(&addrs[2]), "the command runs without the lock");
    // lockctl is connected to node 1 (the first that answered): it dies.
    stops[0].cancel();
    // A grant (an integer reply) is the failure looked for. While the cluster elects a new
    // leader (node 1 may have led), node 3 may answer CLUSTERDOWN instead of a refusal.
    // Checks start for 7 s after the stop, so the last ends well before the command does.
    let mut refused = 0;
    let mut last = String::new();
    let stopped = std::time::Instant::now();
    while stopped.elapsed() < std::time::Duration::from_secs(7) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let r = resp_once(&addrs[2], &["ACQUIRE", "EX", "0", "deploy"]);
        assert!(
            !r.starts_with(':'),
            "the lock passed to another session: {r}"
        );
        if r == "$-1" {
            refused += 1;
        } else {
            assert!(r.starts_with("-CLUSTERDOWN"), "unexpected reply: {r}");
        }
        last = r;
    }
    assert!(
        refused >= 3 && last == "$-1",
        "the cluster did not come back to refusing: {refused} refusals, the last reply {last}"
    );
    let out = child.wait_with_output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "lockctl: {:?}\n{so}\n{se}",
        out.status
    );
    assert!(so.contains("finished"), "{so}");
    assert!(se.contains("resumed"), "{se}");
    for s in &stops {
        s.cancel();
    }
}

/// Issue 16: completions and the man page come from the flags' definitions, without a
/// server; bash accepts the bash script.
#[test]
fn completions_and_the_man_page_need_no_server() {
    for (shell, marker) in [
        ("bash", "complete -F _lockctl"),
        ("zsh", "#compdef lockctl"),
        ("fish", "complete -c lockctl"),
    ] {
        let o = run("127.0.0.1:1", &["completions", shell]);
        assert!(o.status.success(), "{shell}: {o:?}");
        assert!(stdout(&o).contains(marker), "{shell}: {}", stdout(&o));
        assert!(
            stdout(&o).contains("cluster"),
            "{shell}: subcommands are completed"
        );
    }
    let script = stdout(&run("127.0.0.1:1", &["completions", "bash"]));
    let check = std::process::Command::new("bash")
        .args(["-n", "-c", &script])
        .status()
        .unwrap();
    assert!(check.success(), "bash rejects the completion script");
    let man = stdout(&run("127.0.0.1:1", &["man"]));
    assert!(
        man.contains(".TH lockctl 1") && man.contains("LOCKD_ADDR"),
        "{man}"
    );
}

/// Issue 16: a refused key says where lockctl got it, so that a stale key file (left by an
/// earlier lockd that generated its key) is found at once.
#[test]
fn a_refused_key_names_where_it_came_from() {
    let addr = server();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth-key");
    std::fs::write(&file, "an-old-generated-key\n").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LOCKD_")) {
        c.env_remove(k);
    }
    let o = c
        .args([
            "--addr",
            &addr,
            "--key-file",
            file.to_str().unwrap(),
            "ping",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("WRONGPASS") && err.contains(file.to_str().unwrap()),
        "{err}"
    );
    let o = run(&addr, &["ping"]);
    assert!(o.status.success(), "{o:?}");
}

/// Issue 16: the README's synopsis of `lockctl lock` matches `--help`: every flag it shows
/// exists, with the default it shows.
#[test]
fn the_readmes_synopsis_matches_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let synopsis = readme
        .lines()
        .find_map(|l| l.strip_prefix("`lockctl lock ["))
        .and_then(|l| l.split('`').next())
        .expect("the README has a synopsis of lockctl lock");
    let help = stdout(&run("127.0.0.1:1", &["lock", "--help"]));
    let mut flags = 0;
    for part in format!("[{synopsis}").split('[').skip(1) {
        let inner = part.split(']').next().unwrap();
        let mut words = inner.split_whitespace();
        let flag = words.next().unwrap();
        assert!(
            help.contains(flag),
            "the README shows {flag}; --help has no such flag:\n{help}"
        );
        flags += 1;
        if let Some(default) = words.next() {
            let after = &help[help.find(flag).unwrap()..];
            let shown = after
                .split("[default: ")
                .nth(1)
                .and_then(|d| d.split(']').next())
                .unwrap_or("");
            assert_eq!(shown, default, "the README's default of {flag}");
        }
    }
    assert!(flags >= 3, "{synopsis}");
}

/// An HTTP request to the admin server; the status code and the body.
fn http(admin: &str, method: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    let auth = bearer.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (code, body)
}

/// Issue 14: `lockctl cluster add` makes a new node (started with no initial list) a
/// voter, `cluster status` shows it, a second add is refused; the admin HTTP removes it
/// (with the key only, on loopback too); the removed node serves no client and its id is
/// never given again.
#[test]
fn cluster_members_are_added_and_removed_by_lockctl_and_http() {
    let raft: std::collections::BTreeMap<u64, String> = (1..=4)
        .map(|i| (i, format!("127.0.0.1:{}", free_port())))
        .collect();
    let first: std::collections::BTreeMap<u64, String> = raft
        .iter()
        .filter(|(i, _)| **i <= 3)
        .map(|(i, a)| (*i, a.clone()))
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for i in 1..=4u64 {
        let initial = if i <= 3 {
            first.clone()
        } else {
            Default::default()
        };
        nodes.push(cluster_node(
            i,
            &raft[&i],
            dirs[(i - 1) as usize].path(),
            initial,
        ));
    }
    let (n2, n4) = (nodes[1].0.clone(), nodes[3].0.clone());
    let o = run(&n2, &["cluster", "add", "4", &raft[&4]]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains("node 4 (") && stdout(&o).contains("is a voter: 4 voters"),
        "{}",
        stdout(&o)
    );
    // The new node serves once it has joined.
    let t0 = std::time::Instant::now();
    while !resp_once(&n4, &["ACQUIRE", "EX", "0", "on-4"]).starts_with(':') {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "node 4 never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = stdout(&run(&n4, &["cluster", "status"]));
    assert!(status.contains("node 4 is follower"), "{status}");
    assert_eq!(status.matches(" voter ").count(), 4, "{status}");
    let again = run(&n2, &["cluster", "add", "4", &raft[&4]]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("node 4 is already a voter"),
        "{again:?}"
    );

    let admin = nodes[0].1.clone();
    assert_eq!(
        http(&admin, "DELETE", "/v1/cluster/members/4", None, "").0,
        401
    );
    let (code, body) = http(&admin, "DELETE", "/v1/cluster/members/4", Some(KEY), "");
    assert_eq!(
        (code, body.trim()),
        (200, "node 4 removed: 3 voters, a quorum is 2")
    );
    let t0 = std::time::Instant::now();
    let refused = loop {
        let r = resp_once(&n4, &["ACQUIRE", "EX", "0", "on-4b"]);
        if r.contains("removed") || t0.elapsed() > std::time::Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        refused.starts_with("-CLUSTERDOWN this node was removed from the cluster"),
        "{refused}"
    );
    let body = format!(r#"{{"id":4,"raft_address":"127.0.0.1:{}"}}"#, free_port());
    let (code, said) = http(&admin, "POST", "/v1/cluster/members", Some(KEY), &body);
    assert_eq!(code, 409, "{said}");
    assert!(said.contains("ids are never reused"), "{said}");
    for (_, _, stop) in &nodes {
        stop.cancel();
    }
}

/// Issue 15: `lock --lease` keeps its lease extended while the command runs (the lock
/// outlives several lease lengths); `revoke` (an operator's command) frees the lock, and
/// the command is stopped at once, as for a lost lock; `session kill` ends a session.
#[test]
fn a_leased_lock_runs_until_revoked_and_the_command_is_told() {
    let addr = server();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("got-term");
    let script = format!(
        "trap 'touch {m}; exit 0' TERM; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        m = mark.display()
    );
    let args = [
        "lock", "--lease", "300ms", "leasek", "--", "sh", "-c", &script,
    ];
    let child = lockctl(&addr, &args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the lock held", || held_by_someone(&addr, "leasek"));
    // Four lease lengths later it is still held: the lease was extended.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(
        held_by_someone(&addr, "leasek"),
        "the lease lapsed while the command ran"
    );
    let revoked = run(&addr, &["--json", "revoke", "leasek"]);
    // (This server has no admin key: the auth key carries the right.)
    assert_eq!(stdout(&revoked), "{\"released\":1}\n");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(mark.exists(), "the command got --signal");
    assert!(
        err.contains("the lock is lost: an operator revoked the lock"),
        "{err}"
    );
    // session kill: a session left holding a lock by `acquire` is ended.
    let acq = stdout(&run(&addr, &["acquire", "--grace", "60s", "killk"]));
    let session = acq
        .lines()
        .find_map(|l| l.strip_prefix("session "))
        .unwrap()
        .to_string();
    assert!(held_by_someone(&addr, "killk"));
    let killed = run(&addr, &["session", "kill", &session]);
    assert_eq!(stdout(&killed), "session ended, 1 locks released\n");
    assert!(!held_by_someone(&addr, "killk"));
    let again = run(&addr, &["session", "kill", &session]);
    assert_ne!(again.status.code(), Some(0));
}

/// Issue 15: `lock -n N` takes one of N permits of a semaphore, as `consul lock -n`: N
/// commands run at once, the next one waits (or, with --timeout 0, exits 75).
#[test]
fn lock_with_a_limit_runs_at_most_that_many_commands() {
    let addr = server();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "i=0; while [ ! -e {g} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        g = go.display()
    );
    let args = ["lock", "-n", "2", "pool", "--", "sh", "-c", &script];
    let mut running: Vec<_> = (0..2)
        .map(|_| lockctl(&addr, &args).spawn().unwrap())
        .collect();
    wait_for("two permits held", || {
        stdout(&run(&addr, &["inspect", "pool"]))
            .matches("holder")
            .count()
            == 2
    });
    let third = run(
        &addr,
        &["lock", "-n", "2", "--timeout", "0", "pool", "--", "true"],
    );
    assert_eq!(third.status.code(), Some(75), "{third:?}");
    let wrong = run(
        &addr,
        &["lock", "-n", "3", "--timeout", "0", "pool", "--", "true"],
    );
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("WRONGTYPE"),
        "{wrong:?}"
    );
    let two_keys = run(&addr, &["lock", "-n", "2", "a", "b", "--", "true"]);
    assert_eq!(two_keys.status.code(), Some(2), "{two_keys:?}");
    std::fs::write(&go, "").unwrap();
    for c in &mut running {
        assert_eq!(c.wait().unwrap().code(), Some(0));
    }
    assert!(!held_by_someone(&addr, "pool"));
}

/// Issue 15: with an admin key, `revoke` and `session kill` need it (exit 77 otherwise,
/// saying why); the admin key also works for everything else.
#[test]
fn revocation_needs_the_admin_key_when_there_is_one() {
    let mut config = lockd_server::ServerConfig::new("127.0.0.1", 0, KEY);
    config.admin_key = Some("ops-key".into());
    let addr = in_thread(config).0;
    assert_eq!(
        run(&addr, &["acquire", "--grace", "60s", "adm"])
            .status
            .code(),
        Some(0)
    );
    let refused = run(&addr, &["revoke", "adm"]);
    assert_eq!(refused.status.code(), Some(77));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("NOPERM"),
        "{refused:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .env_remove("LOCKD_AUTH_KEY")
        .args(["--addr", &addr, "--auth-key", "ops-key", "revoke", "adm"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "revoked 1\n", "{out:?}");
}
