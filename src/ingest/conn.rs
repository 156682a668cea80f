//! Connections, before and around HTTP/2: how many may be open, how long one may take to show
//! it is a real client, and the process's open-files limit they all draw on.
//!
//! An idle socket costs the collector a file descriptor and nothing else, so an unbounded number
//! of them (a port scan, a misbehaving client, an attack) ends with `accept` failing for
//! everyone, the admin port included. Hence:
//!
//! - **A bound** ([`ConnLimits`], `als_max_connections`, itself capped by what the open-files
//!   limit leaves after [`FD_RESERVE`]): a connection over it is closed as soon as it is
//!   accepted, counted (`als_connections_refused_total`) and logged at WARN (at most every
//!   [`WARN_EVERY`]). Its slot is a semaphore permit held by the connection's IO ([`Guarded`])
//!   and given back when hyper drops it, whatever the reason the connection ended.
//! - **A deadline to prove itself** (`als_handshake_timeout_secs`, from `accept`): the TLS
//!   handshake (when TLS is on) and the first [`PREFACE_BYTES`] bytes of HTTP/2 (the client
//!   preface and the header of the SETTINGS frame every client sends with it) must arrive within
//!   it, or the connection is closed and counted. A raw TCP connection that sends nothing, or
//!   only the 24-byte preface, holds its descriptor for at most that long.
//! - **Idle connections** past that point are a live HTTP/2 peer or a dead one: hyper's
//!   keepalive pings (`als_keepalive_interval_secs`/`als_keepalive_timeout_secs`, set in
//!   `serve.rs`) close the dead ones.
//! - **A TLS client without a certificate**, where the client CA requires one, still completes
//!   the handshake so it gets a readable `UNAUTHENTICATED` status at its first stream
//!   (`peer_auth`), but its connection is closed at the same deadline: it never holds a slot.
//! - **The open-files limit**: [`raise_open_files_limit`] lifts the soft `RLIMIT_NOFILE` to the
//!   hard one at start-up (as servers commonly do), and `accept` failing for lack of descriptors
//!   is logged at WARN and counted (`accept_errors_total{reason="open_files"}`).
//!
//! Nothing here runs per message: the preface deadline is dropped once the bytes arrived, and
//! the IO wrapper then only forwards.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use crate::telemetry::Metrics;

/// The HTTP/2 client preface (24 bytes) plus the 9-byte header of the SETTINGS frame that
/// RFC 9113 §3.4 requires right after it. Every real client sends both in its first write.
pub const PREFACE_BYTES: usize = 24 + 9;

/// Descriptors kept out of the ALS connection budget: spool segments, open Parquet files (one
/// per hour partition being written), Postgres connections, key fetches, the admin listener and
/// its connections ([`crate::admin::MAX_CONNECTIONS`]), logs.
pub const FD_RESERVE: u64 = 256;

/// A refusal or an out-of-files `accept` is logged at most this often (each is counted).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The process's open-files limit after start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit in force (`None`: unlimited).
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. A failure only leaves the soft limit as
/// it was (logged): the connection budget is then computed from what is in force.
pub fn raise_open_files_limit() -> OpenFiles {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => info!(
                from = ?before.current,
                to = ?before.maximum,
                "raised the open-files limit (RLIMIT_NOFILE) to its hard limit"
            ),
            Err(e) => warn!(
                error = %e,
                soft = ?before.current,
                hard = ?before.maximum,
                "cannot raise the open-files limit (RLIMIT_NOFILE) to its hard limit"
            ),
        }
    }
    let now = getrlimit(Resource::Nofile);
    OpenFiles {
        soft: now.current,
        hard: now.maximum,
    }
}

/// How many ALS connections the open-files limit allows: what is left after [`FD_RESERVE`], or
/// half the limit when it is too low to leave a useful number (the collector still runs, with
/// a warning).
pub fn connection_budget(open_files: OpenFiles) -> Option<usize> {
    let soft = open_files.soft?;
    let budget = if soft >= 2 * FD_RESERVE {
        soft - FD_RESERVE
    } else {
        soft / 2
    };
    Some(usize::try_from(budget).unwrap_or(usize::MAX))
}

/// A connection's place under a bound; given back on drop. ALS slots also keep the
/// `als_connections_open` gauge.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: Option<Arc<Metrics>>,
}

impl Slot {
    /// A slot that is not counted on the ALS gauge (the admin listener's).
    pub fn uncounted(permit: OwnedSemaphorePermit) -> Self {
        Slot {
            _permit: permit,
            gauge: None,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(m) = &self.gauge {
            m.als_connections_open.fetch_sub(1, Relaxed);
        }
    }
}

/// The connection bound and deadlines of one listener.
#[derive(Debug)]
pub struct ConnLimits {
    permits: Arc<Semaphore>,
    max: usize,
    handshake_timeout: Duration,
    last_warn: Mutex<Option<Instant>>,
}

impl ConnLimits {
    pub fn new(max: usize, handshake_timeout: Duration) -> Arc<Self> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnLimits {
            permits: Arc::new(Semaphore::new(max)),
            max,
            handshake_timeout,
            last_warn: Mutex::new(None),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A slot for a new connection, or `None` (counted, logged) when all are taken.
    fn admit(&self, metrics: &Arc<Metrics>, peer: std::net::SocketAddr) -> Option<Slot> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => {
                metrics.als_connections_open.fetch_add(1, Relaxed);
                Some(Slot {
                    _permit: p,
                    gauge: Some(Arc::clone(metrics)),
                })
            }
            Err(_) => {
                metrics.als_connections_refused.fetch_add(1, Relaxed);
                if self.should_warn() {
                    warn!(
                        %peer,
                        open = self.max,
                        refused_total = metrics.als_connections_refused.load(Relaxed),
                        "refusing ALS connections: the connection limit is reached (als_max_connections, capped by the open-files limit); idle connections are closed after als_handshake_timeout_secs or by keepalive"
                    );
                }
                None
            }
        }
    }

    fn should_warn(&self) -> bool {
        should_warn(&self.last_warn)
    }
}

/// True at most once per [`WARN_EVERY`] for one `last` cell.
pub fn should_warn(last: &Mutex<Option<Instant>>) -> bool {
    let now = Instant::now();
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match *last {
        Some(t) if now < t + WARN_EVERY => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

/// Counts and logs a failed `accept`. Out of descriptors (EMFILE/ENFILE) is a WARN: the process
/// is at its open-files limit and every listener suffers.
pub fn accept_failed(
    listener: &'static str,
    e: &io::Error,
    metrics: &Metrics,
    last_warn: &Mutex<Option<Instant>>,
) {
    let out_of_files = matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error() || code == rustix::io::Errno::NFILE.raw_os_error());
    if out_of_files {
        metrics.accept_out_of_files.fetch_add(1, Relaxed);
        if should_warn(last_warn) {
            warn!(
                listener,
                error = %e,
                total = metrics.accept_out_of_files.load(Relaxed),
                "cannot accept connections: the process is out of file descriptors (RLIMIT_NOFILE); lower als_max_connections or raise the limit"
            );
        }
    } else {
        debug!(listener, error = %e, "accept failed");
    }
}

/// Why a guarded connection was closed by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No complete HTTP/2 preface within the handshake timeout.
    Preface,
    /// A TLS client without a certificate where one is required: closed once it had time to
    /// read its `UNAUTHENTICATED` status.
    NoClientCert,
    /// An admin connection that moved no bytes for the idle timeout.
    AdminIdle,
}

impl Deadline {
    fn count(self, m: &Metrics) {
        let c = match self {
            Deadline::Preface => &m.als_closed_preface_timeout,
            Deadline::NoClientCert => &m.als_closed_no_client_cert,
            Deadline::AdminIdle => &m.admin_closed_idle,
        };
        c.fetch_add(1, Relaxed);
    }
}

struct Timer {
    why: Deadline,
    sleep: Pin<Box<Sleep>>,
}

impl Timer {
    fn new(why: Deadline, at: Instant) -> Self {
        Timer {
            why,
            sleep: Box::pin(tokio::time::sleep_until(at)),
        }
    }
}

/// Idle tracking for admin connections: re-armed only when it fires (no reset per read).
struct Idle {
    after: Duration,
    last_progress: Instant,
    timer: Timer,
}

/// A connection's IO with its slot and deadlines. Reads and writes go straight to `inner`; a
/// deadline that passes fails the next read or write with `TimedOut`, which ends the connection.
pub struct Guarded<T> {
    inner: T,
    _slot: Option<Slot>,
    /// Bytes of the preface still to come, and when they are due.
    preface: Option<(usize, Timer)>,
    /// A hard end (a TLS client without a required certificate).
    end: Option<Timer>,
    idle: Option<Idle>,
    metrics: Arc<Metrics>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, slot: Option<Slot>, metrics: Arc<Metrics>) -> Self {
        Guarded {
            inner,
            _slot: slot,
            preface: None,
            end: None,
            idle: None,
            metrics,
        }
    }

    /// The first [`PREFACE_BYTES`] must be read by `at`.
    pub fn preface_by(mut self, at: Instant) -> Self {
        self.preface = Some((PREFACE_BYTES, Timer::new(Deadline::Preface, at)));
        self
    }

    /// The connection ends at `at`, whatever it does.
    pub fn end_at(mut self, why: Deadline, at: Instant) -> Self {
        self.end = Some(Timer::new(why, at));
        self
    }

    /// The connection ends after `after` without a byte read or written.
    pub fn idle_after(mut self, after: Duration) -> Self {
        let now = Instant::now();
        self.idle = Some(Idle {
            after,
            last_progress: now,
            timer: Timer::new(Deadline::AdminIdle, now + after),
        });
        self
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// `Err(TimedOut)` when a deadline has passed (counted once: the connection ends with it).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut fired = None;
        if let Some(t) = &mut self.end {
            if t.sleep.as_mut().poll(cx).is_ready() {
                fired = Some(t.why);
            }
        }
        if let Some((_, t)) = &mut self.preface {
            if fired.is_none() && t.sleep.as_mut().poll(cx).is_ready() {
                fired = Some(t.why);
            }
        }
        if let Some(idle) = &mut self.idle {
            while fired.is_none() && idle.timer.sleep.as_mut().poll(cx).is_ready() {
                let due = idle.last_progress + idle.after;
                if Instant::now() >= due {
                    fired = Some(Deadline::AdminIdle);
                } else {
                    idle.timer.sleep.as_mut().reset(due);
                }
            }
        }
        match fired {
            None => Ok(()),
            Some(why) => {
                why.count(&self.metrics);
                // Fire once: the connection is ending.
                self.end = None;
                self.preface = None;
                self.idle = None;
                debug!(deadline = ?why, "closing a connection at its deadline");
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connection closed: {why:?} deadline passed"),
                ))
            }
        }
    }

    fn progressed(&mut self) {
        if let Some(idle) = &mut self.idle {
            idle.last_progress = Instant::now();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            if n > 0 {
                this.progressed();
            }
            if let Some((need, _)) = &mut this.preface {
                *need = need.saturating_sub(n);
                if *need == 0 || n == 0 {
                    // Preface complete (or EOF, which ends the connection anyway).
                    this.preface = None;
                }
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.idle.is_some() || this.end.is_some() {
            this.check(cx)?;
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.progressed();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.idle.is_some() || this.end.is_some() {
            this.check(cx)?;
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.progressed();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Guarded<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What to do with an accepted TCP connection that has a slot.
pub trait Upgrade: Clone + Send + Sync + 'static {
    type Io: Send + 'static;
    /// Turns the connection into the server's IO (a TLS handshake, or nothing), by `deadline`.
    /// `None` drops it (failure already counted and logged).
    fn upgrade(
        &self,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        slot: Slot,
        deadline: Instant,
    ) -> impl Future<Output = Option<Guarded<Self::Io>>> + Send;
}

/// Plaintext h2c: the connection as it is, with its preface deadline.
#[derive(Clone)]
pub struct Plain(pub Arc<Metrics>);

impl Upgrade for Plain {
    type Io = TcpStream;

    async fn upgrade(
        &self,
        tcp: TcpStream,
        _peer: std::net::SocketAddr,
        slot: Slot,
        deadline: Instant,
    ) -> Option<Guarded<TcpStream>> {
        Some(Guarded::new(tcp, Some(slot), Arc::clone(&self.0)).preface_by(deadline))
    }
}

/// Accepts connections on `listener` until `stop` is cancelled or the server goes away, admits
/// each under `limits`, upgrades it (each in its own task, holding its slot, so a slow one
/// delays no other and their number is bounded by the slots) and yields it to the server.
pub fn incoming<U: Upgrade>(
    listener: TcpListener,
    limits: Arc<ConnLimits>,
    upgrade: U,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Guarded<U::Io>>> + Send + 'static {
    // A handful suffices: the server takes connections as fast as they come.
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let last_warn = Mutex::new(None);
        loop {
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        accept_failed("als", &e, &metrics, &last_warn);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let deadline = Instant::now() + limits.handshake_timeout();
            let Some(slot) = limits.admit(&metrics, peer) else {
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tx, upgrade) = (tx.clone(), upgrade.clone());
            tokio::spawn(async move {
                if let Some(io) = upgrade.upgrade(tcp, peer, slot, deadline).await {
                    // Fails only when the server is gone; the connection just closes.
                    let _ = tx.send(io).await;
                }
            });
        }
    });
    ReceiverStream::new(rx).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn budget_leaves_the_reserve_or_half() {
        let of = |soft| OpenFiles {
            soft: Some(soft),
            hard: Some(soft),
        };
        assert_eq!(
            connection_budget(of(1024)),
            Some(1024 - FD_RESERVE as usize)
        );
        assert_eq!(connection_budget(of(300)), Some(150));
        let unlimited = OpenFiles {
            soft: None,
            hard: None,
        };
        assert_eq!(connection_budget(unlimited), None);
    }

    #[tokio::test]
    async fn a_connection_without_its_preface_times_out_and_one_with_it_does_not() {
        let m = Metrics::new();
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g =
            Guarded::new(server, None, Arc::clone(&m)).preface_by(Instant::now() + 200 * MS);
        client.write_all(&[0u8; 20]).await.expect("write");
        let mut buf = [0u8; 64];
        assert_eq!(g.read(&mut buf).await.expect("early bytes"), 20);
        let err = g.read(&mut buf).await.expect_err("deadline");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(m.als_closed_preface_timeout.load(Relaxed), 1);

        let (mut client, server) = tokio::io::duplex(1024);
        let mut g =
            Guarded::new(server, None, Arc::clone(&m)).preface_by(Instant::now() + 200 * MS);
        client
            .write_all(&[0u8; PREFACE_BYTES])
            .await
            .expect("write");
        let mut got = 0;
        while got < PREFACE_BYTES {
            got += g.read(&mut buf).await.expect("preface");
        }
        tokio::time::sleep(400 * MS).await;
        client.write_all(b"later").await.expect("write");
        assert_eq!(g.read(&mut buf).await.expect("no deadline any more"), 5);
        assert_eq!(m.als_closed_preface_timeout.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn idle_counts_from_the_last_byte_and_the_slot_comes_back() {
        let m = Metrics::new();
        let limits = ConnLimits::new(1, Duration::from_secs(5));
        let slot = limits
            .admit(&m, "127.0.0.1:1".parse().expect("addr"))
            .expect("free slot");
        assert!(limits
            .admit(&m, "127.0.0.1:2".parse().expect("addr"))
            .is_none());
        assert_eq!(m.als_connections_refused.load(Relaxed), 1);
        assert_eq!(limits.open(), 1);

        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, Some(slot), Arc::clone(&m)).idle_after(300 * MS);
        let mut buf = [0u8; 8];
        tokio::time::sleep(200 * MS).await;
        client.write_all(b"x").await.expect("write");
        assert_eq!(g.read(&mut buf).await.expect("active"), 1);
        let activity = Instant::now();
        let err = g.read(&mut buf).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            activity.elapsed() >= 250 * MS,
            "idle counts from the last byte, not from the start"
        );
        assert_eq!(m.admin_closed_idle.load(Relaxed), 1);
        drop(g);
        assert_eq!(limits.open(), 0, "the slot is released with the connection");
    }

    #[tokio::test]
    async fn a_hard_end_closes_even_an_active_connection() {
        let m = Metrics::new();
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, None, Arc::clone(&m))
            .end_at(Deadline::NoClientCert, Instant::now() + 200 * MS);
        client.write_all(b"abc").await.expect("write");
        let mut buf = [0u8; 8];
        assert_eq!(g.read(&mut buf).await.expect("before the end"), 3);
        tokio::time::sleep(300 * MS).await;
        client.write_all(b"abc").await.expect("write");
        let err = g.read(&mut buf).await.expect_err("past the end");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(m.als_closed_no_client_cert.load(Relaxed), 1);
    }
}
