//! [`Client`]: one connection, one session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockd_proto::resp::Value;

use crate::conn::Conn;
use crate::error::Error;
use crate::guard::Guard;
use crate::lease::{Event, Loss};
use crate::tls::TlsOptions;
use crate::types::{Holder, KeyInfo, LockInfo, Mode, Waiter};

/// A connection to lockd, with its session. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// One address, or several (the nodes of a cluster), comma-separated.
    addr: String,
    /// Which of them the current connection is to.
    at: std::sync::atomic::AtomicUsize,
    auth_key: String,
    tls: Option<TlsOptions>,
    conn: Mutex<Arc<Conn>>,
    session: Mutex<String>,
    /// Bumped when the session (and so its locks) is gone for good.
    pub(crate) generation: std::sync::atomic::AtomicU64,
    /// The session's locks as its guards know them, and the acquisitions under way.
    pub(crate) held: Mutex<Book>,
    /// Source of [`Held::epoch`].
    pub(crate) epochs: std::sync::atomic::AtomicU64,
    /// The guards' loss cells, by grant token (see `lease`).
    pub(crate) losses: crate::lease::Losses,
    /// While subscribed: where events go (see [`Client::subscribe`]).
    events: Mutex<Option<tokio::sync::mpsc::Sender<Event>>>,
    /// Semaphores this client holds permits of (one [`Permit`] each).
    permits: Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// Most events a subscriber's channel holds; past it they are dropped (and counted in an
/// [`Event::Overflow`] when there is room again).
const MAX_CLIENT_EVENTS: usize = 1024;

/// What this client's session holds and is acquiring, per (key, mode). The server never
/// makes a session wait for itself, so tasks sharing one `Client` would all be granted one
/// EX lock; the book refuses an acquisition that conflicts with one a guard holds or one
/// under way ([`Error::HeldHere`]), so that mutual exclusion holds between them too.
#[derive(Default)]
pub(crate) struct Book {
    /// The server counts a re-acquired lock once, so it is released only when the last
    /// guard for it goes.
    pub locks: HashMap<(Vec<u8>, Mode), Held>,
    /// Acquisitions sent and not yet answered (or cancelled), counted per (key, mode).
    pending: HashMap<(Vec<u8>, Mode), usize>,
}

impl Book {
    fn busy(&self, key: &[u8], mode: Mode) -> bool {
        let k = (key.to_vec(), mode);
        self.locks.get(&k).is_some_and(|h| h.count > 0) || self.pending.contains_key(&k)
    }

    /// The first of `keys` where taking `mode` would conflict with this client's own locks:
    /// EX conflicts with anything, SH with EX (shared locks may be taken again, counted).
    fn conflict<'k>(&self, mode: Mode, keys: &'k [Vec<u8>]) -> Option<&'k [u8]> {
        keys.iter()
            .find(|k| self.busy(k, Mode::Ex) || (mode == Mode::Ex && self.busy(k, Mode::Sh)))
            .map(Vec::as_slice)
    }
}

/// An acquisition under way in the [`Book`]; it leaves the book when dropped, whether the
/// acquire was answered, failed or was cancelled.
struct Reservation {
    inner: Arc<Inner>,
    mode: Mode,
    keys: Vec<Vec<u8>>,
}

impl Reservation {
    fn take(inner: &Arc<Inner>, mode: Mode, keys: &[Vec<u8>]) -> Result<Reservation, Error> {
        let mut book = inner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = book.conflict(mode, keys) {
            return Err(Error::HeldHere(String::from_utf8_lossy(k).into_owned()));
        }
        for k in keys {
            *book.pending.entry((k.clone(), mode)).or_default() += 1;
        }
        Ok(Reservation {
            inner: inner.clone(),
            mode,
            keys: keys.to_vec(),
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut book = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
        for k in std::mem::take(&mut self.keys) {
            let entry = (k, self.mode);
            if let Some(n) = book.pending.get_mut(&entry) {
                *n -= 1;
                if *n == 0 {
                    book.pending.remove(&entry);
                }
            }
        }
    }
}

/// One lock of the session, as its guards know it.
pub(crate) struct Held {
    /// Guards that count on it.
    pub count: usize,
    /// The token the server's lock carries now (that of its latest grant): a release names
    /// it, so a release that comes after a newer grant of the same lock lets go of nothing.
    pub token: u64,
    /// Which life of the lock this is: a guard counts only on the one it was made in, so a
    /// guard left from before `release_all` or `release` is inert.
    pub epoch: u64,
}

impl Inner {
    /// A [`Permit`] of `key` is gone.
    pub(crate) fn forget_permit(&self, key: &[u8]) {
        self.permits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Records a grant of `keys` in `mode` with `token`: the epochs the new guard counts on.
    pub(crate) fn granted(&self, mode: Mode, keys: &[Vec<u8>], token: u64) -> Vec<u64> {
        let mut book = self.held.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .map(|k| {
                let h = book.locks.entry((k.clone(), mode)).or_insert_with(|| Held {
                    count: 0,
                    token,
                    epoch: self
                        .epochs
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                });
                h.count += 1;
                h.token = token;
                h.epoch
            })
            .collect()
    }

    /// A grant nobody waits for any more (its acquire was cancelled after it was sent):
    /// where a guard holds the lock, it now carries this grant's token; elsewhere nothing
    /// holds it on this side, so it is let go at once.
    fn orphaned(&self, conn: &Conn, mode: Mode, keys: &[Vec<u8>], token: u64) {
        let mut book = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut free: Vec<&[u8]> = Vec::new();
        for k in keys {
            match book.locks.get_mut(&(k.clone(), mode)) {
                Some(h) => h.token = token,
                None => free.push(k),
            }
        }
        drop(book);
        if !free.is_empty() {
            conn.send_only(&as_args(&release_args(mode, token, &free)));
        }
    }
}

/// Borrowed arguments of a request built as owned ones.
pub(crate) fn as_args(args: &[Vec<u8>]) -> Vec<&[u8]> {
    args.iter().map(Vec::as_slice).collect()
}

/// `RELEASE TOKEN token mode key...`
pub(crate) fn release_args(mode: Mode, token: u64, keys: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut args = vec![
        b"RELEASE".to_vec(),
        b"TOKEN".to_vec(),
        token.to_string().into_bytes(),
        mode.as_str().as_bytes().to_vec(),
    ];
    args.extend(keys.iter().map(|k| k.to_vec()));
    args
}

impl Client {
    /// Connects and authenticates with the server's auth key.
    pub async fn connect(addr: &str, auth_key: &str) -> Result<Client, Error> {
        Client::connect_with(addr, auth_key, None).await
    }

    /// Connects over TLS (see [`TlsOptions`]) and authenticates.
    pub async fn connect_tls(addr: &str, auth_key: &str, tls: TlsOptions) -> Result<Client, Error> {
        Client::connect_with(addr, auth_key, Some(tls)).await
    }

    async fn connect_with(
        addr: &str,
        auth_key: &str,
        tls: Option<TlsOptions>,
    ) -> Result<Client, Error> {
        let (conn, at) = open_any(addr, 0, auth_key, tls.as_ref()).await?;
        let session = text(conn.call(&[b"SESSION"]).await?)?;
        Ok(Client {
            inner: Arc::new(Inner {
                addr: addr.to_string(),
                at: at.into(),
                auth_key: auth_key.to_string(),
                tls,
                conn: Mutex::new(Arc::new(conn)),
                session: Mutex::new(session),
                generation: Default::default(),
                held: Mutex::new(Book::default()),
                epochs: Default::default(),
                losses: Default::default(),
                events: Mutex::new(None),
                permits: Default::default(),
            }),
        })
    }

    /// Connects and takes over an existing session that has no live connection (one whose
    /// connection was lost, within its grace period), with its locks.
    pub async fn resume(addr: &str, auth_key: &str, session: &str) -> Result<Client, Error> {
        let c = Client::connect(addr, auth_key).await?;
        c.resume_session(session).await?;
        Ok(c)
    }

    /// This client takes over `session` (which has no live connection), with its locks;
    /// its own session until now is let go as at a disconnect.
    pub async fn resume_session(&self, session: &str) -> Result<(), Error> {
        ok(self
            .conn()
            .call(&[b"SESSION", b"RESUME", session.as_bytes()])
            .await?)?;
        *self.inner.session.lock().unwrap_or_else(|p| p.into_inner()) = session.to_string();
        Ok(())
    }

    pub(crate) fn conn(&self) -> Arc<Conn> {
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this is the only handle on the client: no clone, and so no guard, uses it.
    pub(crate) fn is_unused(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// This client's session id (32 characters).
    pub fn session_id(&self) -> String {
        self.inner
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the connection is lost (calls fail until [`Client::reconnect`]).
    pub fn is_connection_lost(&self) -> bool {
        self.conn().is_lost()
    }

    /// Resolves when the connection is lost.
    pub async fn connection_lost(&self) {
        self.conn().lost().await
    }

    /// Opens a new connection and resumes this client's session on it. Returns true if
    /// the session, and so every lock of its guards, survived; false if it had expired
    /// (its locks are gone; the client now has a new, empty session and every older guard
    /// reports [`Guard::may_be_lost`]).
    ///
    /// With several addresses (a cluster's nodes), the next one after the node of the lost
    /// connection is tried first. A session still bound to a node that died is resumed once
    /// the cluster has declared that node down (a few seconds): until then this answers
    /// [`Error::Session`] (`BUSYSESSION`), and calling it again later succeeds.
    pub async fn reconnect(&self) -> Result<bool, Error> {
        use std::sync::atomic::Ordering::SeqCst;
        let start = self.inner.at.load(SeqCst) + 1;
        let (conn, at) = open_any(
            &self.inner.addr,
            start,
            &self.inner.auth_key,
            self.inner.tls.as_ref(),
        )
        .await?;
        self.inner.at.store(at, SeqCst);
        let old = self.session_id();
        let resumed = match conn.call(&[b"SESSION", b"RESUME", old.as_bytes()]).await? {
            Value::Simple(_) => true,
            Value::Error(e) if e.starts_with("NOSESSION") => false,
            other => return Err(unexpected(other)),
        };
        if self.subscribed() {
            self.listen(&conn).await?;
        }
        if resumed {
            self.reconcile(&conn).await?;
        } else {
            self.inner.losses.all_lost(Loss::SessionLost);
            let fresh = text(conn.call(&[b"SESSION"]).await?)?;
            *self.inner.session.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
            self.inner
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .locks
                .clear();
        }
        *self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(conn);
        Ok(resumed)
    }

    /// Makes the resumed session's locks agree with the guards, on the new connection
    /// before anyone else can use it: a grant whose reply was lost with the old connection
    /// is let go (its acquire failed, so no guard owns it), and a lock that a lost reply
    /// granted again keeps its guards with the token it carries now, so that their release
    /// names it.
    async fn reconcile(&self, conn: &Conn) -> Result<(), Error> {
        let on_server = parse_locks(conn.call(&[b"LOCKS"]).await?)?;
        let mut free: Vec<(Mode, u64, Vec<&[u8]>)> = Vec::new();
        {
            let mut book = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
            // Semaphores' permits belong to their guards (see `Permit`), not to the book.
            for l in on_server.iter().filter(|l| l.permits == 0) {
                match book.locks.get_mut(&(l.key.clone(), l.mode)) {
                    Some(h) => h.token = l.token,
                    None => match free
                        .iter_mut()
                        .find(|(m, t, _)| *m == l.mode && *t == l.token)
                    {
                        Some((_, _, keys)) => keys.push(&l.key),
                        None => free.push((l.mode, l.token, vec![&l.key])),
                    },
                }
            }
            // Locks the server no longer has (let go while the connection was down: not
            // possible within the grace, but never counted on): their guards are inert.
            book.locks.retain(|(k, m), _| {
                on_server
                    .iter()
                    .any(|l| l.permits == 0 && l.key == *k && l.mode == *m)
            });
        }
        for (mode, token, keys) in free {
            conn.call(&as_args(&release_args(mode, token, &keys)))
                .await?;
        }
        Ok(())
    }

    fn subscribed(&self) -> bool {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Subscribes this client's session to its events (RESP3 pushes, `EVENTS ON`): a
    /// guard whose lock the server lets go (revoked, session ended, lease passed) learns
    /// it at once through [`Guard::lost`], and every event is also sent on the channel
    /// returned (at most 1,024 wait there; past that they are dropped and an
    /// [`Event::Overflow`] says how many). Kept across [`Client::reconnect`].
    pub async fn subscribe(&self) -> Result<tokio::sync::mpsc::Receiver<Event>, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_CLIENT_EVENTS);
        *self.inner.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        self.listen(&self.conn()).await?;
        Ok(rx)
    }

    /// Switches `conn` to RESP3 and subscribes it, routing its pushes to the guards and
    /// the subscriber.
    async fn listen(&self, conn: &Conn) -> Result<(), Error> {
        let inner = Arc::downgrade(&self.inner);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        conn.on_push(Arc::new(move |items| {
            let (Some(inner), Some(e)) = (inner.upgrade(), Event::parse(&items)) else {
                return;
            };
            if let Event::Lost { token, reason, .. } = &e {
                inner.losses.lost(*token, crate::lease::loss_of(reason));
            }
            let tx = inner
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(tx) = tx {
                use std::sync::atomic::Ordering::Relaxed;
                let missed = dropped.load(Relaxed);
                if missed > 0 && tx.try_send(Event::Overflow(missed)).is_ok() {
                    dropped.fetch_sub(missed, Relaxed);
                }
                if tx.try_send(e).is_err() {
                    dropped.fetch_add(1, Relaxed);
                }
            }
        }));
        match conn.call(&[b"HELLO", b"3"]).await? {
            Value::Map(_) => {}
            other => return Err(unexpected(other)),
        }
        ok(conn.call(&[b"EVENTS", b"ON"]).await?)
    }

    /// Acquires `keys` in `mode`, all or nothing, waiting up to `timeout` (zero: try once).
    /// A timeout is [`Error::Timeout`]. An acquisition that conflicts with a lock this
    /// client already holds or is acquiring (EX on a key it has in any mode, SH on one it
    /// has in EX) is refused at once with [`Error::HeldHere`]: the session would be granted
    /// it, and two holders of one EX lock in one process are as wrong as in two.
    pub async fn acquire<K: AsRef<[u8]>>(
        &self,
        mode: Mode,
        keys: &[K],
        timeout: Duration,
    ) -> Result<Guard, Error> {
        self.try_acquire_for(mode, keys, timeout, None)
            .await?
            .ok_or(Error::Timeout)
    }

    /// [`Client::acquire`] with a lease: the server lets the locks go `lease` after the
    /// grant unless extended. The guard extends it (every third of `lease`) for as long as
    /// it lives; when it cannot, [`Guard::lost`] resolves with the reason. The lease
    /// guards against a holder that hangs with its connection open; a lost connection is
    /// still the session's grace (whichever ends first).
    pub async fn acquire_leased<K: AsRef<[u8]>>(
        &self,
        mode: Mode,
        keys: &[K],
        timeout: Duration,
        lease: Duration,
    ) -> Result<Guard, Error> {
        self.try_acquire_for(mode, keys, timeout, Some(lease))
            .await?
            .ok_or(Error::Timeout)
    }

    /// Tries once: `None` if the locks are not free now.
    pub async fn try_acquire<K: AsRef<[u8]>>(
        &self,
        mode: Mode,
        keys: &[K],
    ) -> Result<Option<Guard>, Error> {
        self.try_acquire_for(mode, keys, Duration::ZERO, None).await
    }

    async fn try_acquire_for<K: AsRef<[u8]>>(
        &self,
        mode: Mode,
        keys: &[K],
        timeout: Duration,
        lease: Option<Duration>,
    ) -> Result<Option<Guard>, Error> {
        let ms = timeout
            .as_millis()
            .max(u128::from(!timeout.is_zero()))
            .to_string();
        let lease_ms = lease.map(|l| l.as_millis().max(1).to_string());
        let mut args: Vec<&[u8]> = vec![b"ACQUIRE"];
        if let Some(l) = &lease_ms {
            args.extend([b"LEASE".as_slice(), l.as_bytes()]);
        }
        args.extend([mode.as_str().as_bytes(), ms.as_bytes()]);
        args.extend(keys.iter().map(|k| k.as_ref()));
        let owned: Vec<Vec<u8>> = keys.iter().map(|k| k.as_ref().to_vec()).collect();
        // Held until the grant is in the book (or the acquire ends another way).
        let _reserved = Reservation::take(&self.inner, mode, &owned)?;
        // If this future is dropped after the request went out, a grant that comes back
        // anyway is handed over or let go: nothing stays held that no guard owns.
        let conn = self.conn();
        let orphan: crate::conn::Orphan = {
            let (inner, conn, keys) = (
                Arc::downgrade(&self.inner),
                Arc::downgrade(&conn),
                owned.clone(),
            );
            Box::new(move |v| {
                if let (Value::Integer(t), Some(inner), Some(conn)) =
                    (v, inner.upgrade(), conn.upgrade())
                {
                    inner.orphaned(&conn, mode, &keys, t as u64);
                }
            })
        };
        match conn.call_or(&args, Some(orphan)).await? {
            Value::Integer(token) => {
                let epochs = self.inner.granted(mode, &owned, token as u64);
                Ok(Some(Guard::new(
                    self.clone(),
                    mode,
                    owned,
                    token as u64,
                    epochs,
                    lease,
                )))
            }
            Value::Null => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// Takes `permits` of semaphore `key`, whose capacity is `capacity` (every client of
    /// a semaphore names the same; a different one is refused with a `WRONGTYPE` server
    /// error), waiting up to `timeout` in FIFO order (a large request is not overtaken by
    /// small ones). With `lease`, the server lets the permits go when it passes, and the
    /// permit extends it while it lives (see [`Client::acquire_leased`]). One client holds
    /// one [`Permit`] of a semaphore at a time: a second is refused with
    /// [`Error::HeldHere`] (the server counts a session's permits together, so two permits
    /// of one session could not be released apart).
    pub async fn acquire_permits(
        &self,
        key: impl AsRef<[u8]>,
        permits: u16,
        capacity: u16,
        timeout: Duration,
        lease: Option<Duration>,
    ) -> Result<crate::Permit, Error> {
        let key = key.as_ref().to_vec();
        if !self
            .inner
            .permits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return Err(Error::HeldHere(String::from_utf8_lossy(&key).into_owned()));
        }
        // Leaves the set unless a Permit takes the key over.
        struct Claim<'a>(&'a Inner, Option<Vec<u8>>);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                if let Some(k) = self.1.take() {
                    self.0.forget_permit(&k);
                }
            }
        }
        let mut claim = Claim(&self.inner, Some(key.clone()));
        let ms = timeout
            .as_millis()
            .max(u128::from(!timeout.is_zero()))
            .to_string();
        let (p, c) = (permits.to_string(), capacity.to_string());
        let lease_ms = lease.map(|l| l.as_millis().max(1).to_string());
        let mut args: Vec<&[u8]> = vec![b"ACQUIRE"];
        if let Some(l) = &lease_ms {
            args.extend([b"LEASE".as_slice(), l.as_bytes()]);
        }
        args.extend([
            b"PERMITS".as_slice(),
            &key,
            p.as_bytes(),
            c.as_bytes(),
            ms.as_bytes(),
        ]);
        let conn = self.conn();
        // A grant that comes back after this future was dropped is let go.
        let orphan: crate::conn::Orphan = {
            let (conn, key) = (Arc::downgrade(&conn), key.clone());
            Box::new(move |v| {
                if let (Value::Integer(t), Some(conn)) = (v, conn.upgrade()) {
                    let t = t.to_string();
                    conn.send_only(&[b"RELEASE", b"TOKEN", t.as_bytes(), b"PERMITS", &key]);
                }
            })
        };
        match conn.call_or(&args, Some(orphan)).await? {
            Value::Integer(token) => {
                claim.1 = None;
                Ok(crate::Permit::new(
                    self.clone(),
                    key,
                    permits,
                    token as u64,
                    lease,
                ))
            }
            Value::Null => Err(Error::Timeout),
            other => Err(unexpected(other)),
        }
    }

    /// Releases `keys` in `mode` for this session directly, whatever guards say; returns
    /// how many locks were held and released.
    pub async fn release<K: AsRef<[u8]>>(&self, mode: Mode, keys: &[K]) -> Result<u64, Error> {
        let mut args: Vec<&[u8]> = vec![b"RELEASE", mode.as_str().as_bytes()];
        args.extend(keys.iter().map(|k| k.as_ref()));
        let n = int(self.conn().call(&args).await?)?;
        let mut book = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            book.locks.remove(&(k.as_ref().to_vec(), mode));
        }
        Ok(n)
    }

    /// The operator's REVOKE: releases the locks on `key` of every holder, or of one
    /// session; returns how many. Needs a client connected with the admin key.
    pub async fn revoke(&self, key: impl AsRef<[u8]>, session: Option<&str>) -> Result<u64, Error> {
        let mut args: Vec<&[u8]> = vec![b"REVOKE", key.as_ref()];
        if let Some(s) = session {
            args.extend([b"SESSION".as_slice(), s.as_bytes()]);
        }
        int(self.conn().call(&args).await?)
    }

    /// The operator's SESSION KILL: `session` ends now (its locks released, its wait
    /// cancelled); returns how many locks it held. Needs the admin key.
    pub async fn kill_session(&self, session: &str) -> Result<u64, Error> {
        int(self
            .conn()
            .call(&[b"SESSION", b"KILL", session.as_bytes()])
            .await?)
    }

    /// Releases every lock of this session; returns how many.
    pub async fn release_all(&self) -> Result<u64, Error> {
        let n = int(self.conn().call(&[b"RELEASEALL"]).await?)?;
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .locks
            .clear();
        Ok(n)
    }

    /// Sets how long this session keeps its locks after its connection is lost; returns
    /// the grace the server applied (it caps what it allows, `--max-grace`).
    pub async fn set_grace(&self, grace: Duration) -> Result<Duration, Error> {
        let ms = grace.as_millis().to_string();
        match self
            .conn()
            .call(&[b"SESSION", b"GRACE", ms.as_bytes()])
            .await?
        {
            Value::Simple(s) => Ok(s
                .strip_prefix("OK capped at ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .map_or(grace, Duration::from_millis)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn ping(&self) -> Result<(), Error> {
        ok(self.conn().call(&[b"PING"]).await?)
    }

    /// Holders and waiters of a key.
    pub async fn inspect(&self, key: impl AsRef<[u8]>) -> Result<KeyInfo, Error> {
        let v = self.conn().call(&[b"INSPECT", key.as_ref()]).await?;
        let m = map(v)?;
        let list = |name: &str| -> Result<Vec<HashMap<String, Value>>, Error> {
            match m.get(name) {
                Some(Value::Array(items)) => items.iter().cloned().map(map).collect(),
                _ => Err(Error::Protocol(format!("INSPECT reply without {name}"))),
            }
        };
        let holders = list("holders")?
            .into_iter()
            .map(|h| {
                let (mode, permits) = field_mode_permits(&h, Mode::Sh)?;
                Ok(Holder {
                    session: field_text(&h, "session")?,
                    mode,
                    token: field_int(&h, "token")?,
                    held_ms: field_int(&h, "held_ms")?,
                    permits,
                })
            })
            .collect::<Result<_, Error>>()?;
        let waiters = list("waiters")?
            .into_iter()
            .map(|w| {
                let (mode, permits) = field_mode_permits(&w, Mode::Ex)?;
                Ok(Waiter {
                    session: field_text(&w, "session")?,
                    mode,
                    waited_ms: field_int(&w, "waited_ms")?,
                    permits,
                })
            })
            .collect::<Result<_, Error>>()?;
        let capacity = match m.get("capacity") {
            Some(Value::Integer(c)) => *c as u16,
            _ => 0,
        };
        Ok(KeyInfo {
            holders,
            waiters,
            capacity,
        })
    }

    /// The locks of a session (this one when `None`).
    pub async fn locks(&self, session: Option<&str>) -> Result<Vec<LockInfo>, Error> {
        let mut args: Vec<&[u8]> = vec![b"LOCKS"];
        if let Some(s) = session {
            args.push(s.as_bytes());
        }
        parse_locks(self.conn().call(&args).await?)
    }

    /// A cluster node's view of the cluster, as JSON (see docs/cluster.md): role, leader,
    /// term, log and applied index, members and their lag.
    pub async fn cluster_status(&self) -> Result<String, Error> {
        text(self.conn().call(&[b"CLUSTER", b"STATUS"]).await?)
    }

    /// Adds node `id`, whose Raft port is at `raft_addr`, to the cluster this node is in: a
    /// learner until it has caught up, then a voter. Returns what the cluster did; a
    /// refusal (an id used before, a node that did not catch up) is `Error::Server`. Takes
    /// as long as the new node needs to catch up (up to a minute).
    pub async fn cluster_add(&self, id: u64, raft_addr: &str) -> Result<String, Error> {
        let id = id.to_string();
        text(
            self.conn()
                .call(&[b"CLUSTER", b"ADD", id.as_bytes(), raft_addr.as_bytes()])
                .await?,
        )
    }

    /// Removes node `id` from the cluster (refused if it would leave no live quorum).
    pub async fn cluster_remove(&self, id: u64) -> Result<String, Error> {
        let id = id.to_string();
        text(
            self.conn()
                .call(&[b"CLUSTER", b"REMOVE", id.as_bytes()])
                .await?,
        )
    }

    /// The server's counters, by name.
    pub async fn stats(&self) -> Result<Vec<(String, i64)>, Error> {
        let v = self.conn().call(&[b"STATS"]).await?;
        let pairs = pairs(v)?;
        pairs
            .into_iter()
            .map(|(k, v)| match v {
                Value::Integer(i) => Ok((k, i)),
                other => Err(unexpected(other)),
            })
            .collect()
    }
}

/// Connects to the first of the comma-separated `addrs`, from the `start`-th on (round
/// robin), that answers: the connection and that address's position.
async fn open_any(
    addrs: &str,
    start: usize,
    auth_key: &str,
    tls: Option<&TlsOptions>,
) -> Result<(Conn, usize), Error> {
    let list: Vec<&str> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if list.is_empty() {
        return Err(Error::Connect {
            addr: addrs.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"),
        });
    }
    let mut last = None;
    for k in 0..list.len() {
        let i = (start + k) % list.len();
        match open(list[i], auth_key, tls).await {
            Ok(c) => return Ok((c, i)),
            // A wrong key is wrong on every node.
            Err(e @ Error::Auth(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one address was tried"))
}

async fn open(addr: &str, auth_key: &str, tls: Option<&TlsOptions>) -> Result<Conn, Error> {
    let conn = Conn::open(addr, tls).await?;
    ok(conn.call(&[b"AUTH", auth_key.as_bytes()]).await?)?;
    Ok(conn)
}

pub(crate) fn unexpected(v: Value) -> Error {
    match v {
        Value::Error(e) => Error::from_server(&e),
        other => Error::Protocol(format!("{other:?}")),
    }
}

fn ok(v: Value) -> Result<(), Error> {
    match v {
        Value::Simple(_) | Value::Bulk(_) => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn int(v: Value) -> Result<u64, Error> {
    match v {
        Value::Integer(i) if i >= 0 => Ok(i as u64),
        other => Err(unexpected(other)),
    }
}

fn text(v: Value) -> Result<String, Error> {
    match v {
        Value::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Value::Simple(s) => Ok(s),
        other => Err(unexpected(other)),
    }
}

/// Key-value pairs of a map (RESP3) or flat array (RESP2).
fn pairs(v: Value) -> Result<Vec<(String, Value)>, Error> {
    match v {
        Value::Map(m) => m.into_iter().map(|(k, v)| Ok((text(k)?, v))).collect(),
        Value::Array(a) if a.len() % 2 == 0 => {
            let mut out = Vec::new();
            let mut it = a.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((text(k)?, v));
            }
            Ok(out)
        }
        other => Err(unexpected(other)),
    }
}

fn map(v: Value) -> Result<HashMap<String, Value>, Error> {
    Ok(pairs(v)?.into_iter().collect())
}

fn field_int(m: &HashMap<String, Value>, name: &str) -> Result<u64, Error> {
    match m.get(name) {
        Some(Value::Integer(i)) => Ok(*i as u64),
        _ => Err(Error::Protocol(format!("missing integer field {name}"))),
    }
}

fn field_text(m: &HashMap<String, Value>, name: &str) -> Result<String, Error> {
    m.get(name)
        .cloned()
        .ok_or_else(|| Error::Protocol(format!("missing field {name}")))
        .and_then(text)
}

/// A mode and, for a semaphore's entry (mode `PERMITS`), its permits; such an entry gets
/// `as_mode` (SH for a holder, EX for a waiter, as the server keeps them).
fn field_mode_permits(m: &HashMap<String, Value>, as_mode: Mode) -> Result<(Mode, u16), Error> {
    if field_text(m, "mode")? == "PERMITS" {
        return Ok((as_mode, field_int(m, "permits")? as u16));
    }
    Ok((field_mode(m)?, 0))
}

fn field_mode(m: &HashMap<String, Value>) -> Result<Mode, Error> {
    let t = field_text(m, "mode")?;
    Mode::parse(&t).ok_or_else(|| Error::Protocol(format!("bad mode {t}")))
}

/// A `LOCKS` reply.
fn parse_locks(v: Value) -> Result<Vec<LockInfo>, Error> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| {
                let m = map(i)?;
                Ok(LockInfo {
                    key: match m.get("key") {
                        Some(Value::Bulk(b)) => b.to_vec(),
                        _ => return Err(Error::Protocol("LOCKS entry without key".into())),
                    },
                    mode: field_mode_permits(&m, Mode::Sh)?.0,
                    token: field_int(&m, "token")?,
                    permits: field_mode_permits(&m, Mode::Sh)?.1,
                })
            })
            .collect(),
        other => Err(unexpected(other)),
    }
}
