//! Live connections follow policy: the connections meshtls accepted or
//! opened are remembered (weakly), judged again when the policy changes or a
//! verdict's time runs out, and closed after a grace period when the
//! judgment no longer admits their peer.
//!
//! Closing costs the data path nothing: a tracked TCP connection keeps a
//! duplicate of its socket's descriptor, and closing is `shutdown(2)` on it,
//! which the connection's own task sees as the end of the stream on its next
//! read and an error on its next write. The duplicate goes away with the
//! connection: the tracker holds only a `Weak` reference to it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock::{Alarm, at_unix, unix_time};
use crate::error::RejectReason;
use crate::judge::{Admitted, Epoch, Holds, LiveVerdict, Options, Presented};

/// What to do with live connections whose peer the policy stops admitting.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Closing {
    /// Close them at all (revocation, removal from the allow-list, CA
    /// removal).
    pub(crate) enabled: bool,
    /// How long a refused connection may finish what it is doing.
    pub(crate) grace: Duration,
    /// Also close when the peer's certificate (or its chain) expires.
    pub(crate) at_expiry: bool,
}

impl Default for Closing {
    fn default() -> Self {
        Self {
            enabled: true,
            grace: Duration::from_secs(10),
            at_expiry: false,
        }
    }
}

/// One tracked connection.
struct Entry {
    chain: Vec<CertificateDer<'static>>,
    server_name: Option<ServerName<'static>>,
    /// A duplicate of the socket, to shut it down; `None` when the
    /// transport is not TCP (then the connection is judged but not closed).
    socket: Option<std::net::TcpStream>,
    state: Mutex<State>,
    /// The tracker's count of live connections, decremented on drop.
    live: Arc<AtomicU64>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    side: &'static str,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!("meshtls_live_connections", "side" => self.side).decrement(1.0);
    }
}

struct State {
    /// The last verdict on the peer (admitted, or kept), and when it holds.
    holds: Holds,
    /// The path (positions among the chain's intermediates) the peer was
    /// last admitted through.
    path: Vec<usize>,
    /// Refused: close at this moment, for this reason. The grace is a real
    /// duration (time to finish requests), so it runs on the monotonic
    /// clock: a wall clock stepped back does not stretch it.
    closing: Option<(Instant, RejectReason, String)>,
    /// Closed, and why (for the connection's own error).
    closed: Option<String>,
}

impl Entry {
    fn closed_reason(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed
            .clone()
    }
}

/// The connections of one server or client.
pub(crate) struct Tracker {
    entries: Mutex<Vec<Weak<Entry>>>,
    /// Wakes the sweeper: a policy change, or the state going away.
    alarm: Arc<Alarm>,
    /// Whether the sweeper thread runs (or is being started).
    started: std::sync::atomic::AtomicBool,
    pub(crate) closing: Closing,
    live: Arc<AtomicU64>,
    /// Entries kept after the last pruning of dead ones (pruning again when
    /// the list has doubled keeps tracking amortized O(1)).
    pruned: AtomicU64,
    /// When the sweeper will look next for a verdict running out (Unix
    /// seconds, rounded up; `NEVER`: at the next ring; 0 while it sweeps).
    /// A connection whose verdict runs out sooner rings it.
    scheduled: AtomicU64,
    /// The epoch the last finished sweep judged by: a connection admitted
    /// under another (a policy change landed between its admission and its
    /// tracking, and was swept already) rings the sweeper.
    swept_epoch: AtomicU64,
    side: &'static str,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.alarm.ring();
    }
}

/// A verdict that holds until the next policy change: no wake-up for it.
const NEVER: u64 = Holds::NEVER;

/// What a sweep reports: connections closed now, and when to look again:
/// a verdict running out (by the clock) or a grace ending (monotonic);
/// `None` for both: at the next ring.
pub(crate) struct Swept {
    pub(crate) closed: Vec<(RejectReason, String)>,
    pub(crate) next: Option<SystemTime>,
    pub(crate) next_grace: Option<Instant>,
}

/// The soonest a verdict's deadline wakes the sweeper: a verdict that has
/// run out already (it should not) is looked at again a second later, not
/// in a loop.
const MIN_WAKE: Duration = Duration::from_secs(1);

impl Tracker {
    pub(crate) fn new(closing: Closing, side: &'static str) -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            alarm: Arc::new(Alarm::default()),
            started: std::sync::atomic::AtomicBool::new(false),
            closing,
            live: Arc::new(AtomicU64::new(0)),
            pruned: AtomicU64::new(0),
            scheduled: AtomicU64::new(0),
            swept_epoch: AtomicU64::new(0),
            side,
        }
    }

    /// Connections being tracked now.
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// What the sweeper sleeps on.
    pub(crate) fn alarm(&self) -> Arc<Alarm> {
        self.alarm.clone()
    }

    /// Starts tracking a connection whose peer was `admitted` (in the
    /// verdict's epoch). `start` starts the sweeper, once per tracker (again
    /// with the next connection if it returns false: the thread did not
    /// start).
    pub(crate) fn track(
        &self,
        admitted: &Admitted,
        peer: Presented<'_>,
        socket: Option<std::net::TcpStream>,
        start: impl FnOnce() -> bool,
    ) -> Guard {
        let entry = Arc::new(Entry {
            chain: std::iter::once(peer.end_entity)
                .chain(peer.intermediates)
                .map(|c| c.clone().into_owned())
                .collect(),
            server_name: peer.server_name.map(|n| n.to_owned()),
            socket,
            state: Mutex::new(State {
                holds: admitted.holds,
                path: admitted.path.clone(),
                closing: None,
                closed: None,
            }),
            live: self.live.clone(),
            side: self.side,
        });
        self.live.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!("meshtls_live_connections", "side" => self.side).increment(1.0);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let pruned = self.pruned.load(Ordering::Relaxed).max(64);
        if entries.len() as u64 >= 2 * pruned {
            entries.retain(|w| w.strong_count() > 0);
            self.pruned.store(entries.len() as u64, Ordering::Relaxed);
        }
        entries.push(Arc::downgrade(&entry));
        drop(entries);
        if !self.started.swap(true, Ordering::SeqCst) && !start() {
            self.started.store(false, Ordering::SeqCst);
        }
        // The sweeper may be asleep toward a later deadline (or none): this
        // connection's must reach it. A sweep in progress reads `scheduled`
        // as 0 (anything rings) until it stores what it found, which covers
        // an entry it did not see.
        let scheduled = self.scheduled.load(Ordering::SeqCst);
        if scheduled == 0
            || admitted.holds.until < scheduled
            || admitted.holds.epoch != self.swept_epoch.load(Ordering::SeqCst)
        {
            self.alarm.ring();
        }
        Guard(Some(entry))
    }

    /// The policy changed: judge every connection again now.
    pub(crate) fn policy_changed(&self) {
        self.alarm.ring();
    }

    /// Judges the connections whose verdict is from another epoch or has run
    /// out, schedules the refused ones for closing, and closes those whose
    /// grace is over.
    pub(crate) fn sweep(&self, epoch: &Epoch, options: &Options, now: SystemTime) -> Swept {
        let entries: Vec<Arc<Entry>> = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            self.scheduled.store(0, Ordering::SeqCst);
            entries.retain(|w| w.strong_count() > 0);
            self.pruned.store(entries.len() as u64, Ordering::Relaxed);
            if !self.closing.enabled {
                self.swept_epoch.store(epoch.number, Ordering::SeqCst);
                self.scheduled.store(NEVER, Ordering::SeqCst);
                return Swept {
                    closed: Vec::new(),
                    next: None,
                    next_grace: None,
                };
            }
            entries.iter().filter_map(Weak::upgrade).collect()
        };
        let unix = unix_time(now);
        let instant = Instant::now();
        let soonest = now.checked_add(MIN_WAKE).unwrap_or(now);
        // A verdict's deadline as a moment; one already past (it should not
        // be) is looked at again a second later, not in a loop; "never" (or
        // past what the platform can hold) is no wake-up at all.
        let at = |secs: u64| {
            if secs == NEVER {
                None
            } else {
                at_unix(secs).map(|t| if t <= now { soonest } else { t })
            }
        };
        let mut next: Option<SystemTime> = None;
        let mut next_grace: Option<Instant> = None;
        let mut closed = Vec::new();
        let mut wake_at = |t: Option<SystemTime>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        let mut grace_ends = |t: Instant| {
            next_grace = Some(next_grace.map_or(t, |n| n.min(t)));
        };
        for entry in entries {
            let mut state = entry.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.closed.is_some() {
                continue;
            }
            if let Some((when, reason, detail)) = state.closing.clone() {
                if instant >= when {
                    if let Some(socket) = &entry.socket {
                        // Already gone is fine: the connection ended itself.
                        let _ = socket.shutdown(std::net::Shutdown::Both);
                    }
                    state.closed = Some(format!("closed by meshtls: {reason}: {detail}"));
                    closed.push((reason, detail));
                } else {
                    grace_ends(when);
                }
                continue;
            }
            if state.holds.at(epoch.number, unix.as_secs()) {
                wake_at(at(state.holds.until));
                continue;
            }
            let (end_entity, intermediates) = match entry.chain.split_first() {
                Some(split) => split,
                None => continue,
            };
            let peer = Presented {
                end_entity,
                intermediates,
                server_name: entry.server_name.as_ref(),
            };
            let path = std::mem::take(&mut state.path);
            match epoch.judge_live(options, peer, &path, unix, self.closing.at_expiry) {
                LiveVerdict::Admitted(admitted) => {
                    state.holds = admitted.holds;
                    state.path = admitted.path;
                    wake_at(at(admitted.holds.until));
                }
                LiveVerdict::Kept(holds) => {
                    // A stale CRL, an expiry not asked to close: judged
                    // again at the next policy change (or when the kept
                    // verdict runs out), on the path it was admitted through.
                    state.holds = holds;
                    state.path = path;
                    wake_at(at(holds.until));
                }
                LiveVerdict::Closes(refusal) => {
                    // A grace past what the platform can hold closes now.
                    let when = instant.checked_add(self.closing.grace).unwrap_or(instant);
                    state.closing = Some((when, refusal.reason, refusal.detail));
                    grace_ends(when);
                }
            }
        }
        // The next verdict deadline, which new connections' are compared
        // with (rounded up; a grace ending is the monotonic clock's).
        let scheduled = next.map_or(NEVER, |t| {
            let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            secs.as_secs()
                .saturating_add(u64::from(secs.subsec_nanos() > 0))
                .max(1)
        });
        self.swept_epoch.store(epoch.number, Ordering::SeqCst);
        self.scheduled.store(scheduled, Ordering::SeqCst);
        Swept {
            closed,
            next,
            next_grace,
        }
    }
}

/// Holds a tracked connection's entry for as long as the connection lives.
#[derive(Default)]
pub(crate) struct Guard(Option<Arc<Entry>>);

impl Guard {
    /// Not tracked.
    pub(crate) fn none() -> Self {
        Self(None)
    }

    fn closed_reason(&self) -> Option<String> {
        self.0.as_ref().and_then(|e| e.closed_reason())
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "tracked"
        } else {
            "untracked"
        })
    }
}

/// A connection's socket, to close it from outside (`None` inside for
/// transports other than TCP).
pub(crate) struct Socket(pub(crate) Option<std::net::TcpStream>);

impl Socket {
    /// A duplicate of `io`'s socket if `io` is a tokio `TcpStream` and
    /// connections may be closed (none with `keep_live_connections`: no
    /// second descriptor then).
    pub(crate) fn of<IO: 'static>(io: &IO, closing: &Closing) -> Self {
        if !closing.enabled {
            return Self(None);
        }
        match duplicate(io) {
            Ok(socket) => Self(socket),
            Err(e) => {
                // Out of descriptors: the connection is served, judged
                // again on policy changes, but cannot be closed by meshtls.
                tracing::warn!(error = %e, "no descriptor left to track this connection for closing");
                Self(None)
            }
        }
    }
}

/// A duplicate of a tokio `TcpStream`'s socket; `Ok(None)` for other
/// transports (and platforms without descriptors to duplicate).
fn duplicate<IO: 'static>(io: &IO) -> io::Result<Option<std::net::TcpStream>> {
    let Some(tcp) = (io as &dyn std::any::Any).downcast_ref::<tokio::net::TcpStream>() else {
        return Ok(None);
    };
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        tcp.as_fd()
            .try_clone_to_owned()
            .map(|fd| Some(std::net::TcpStream::from(fd)))
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsSocket;
        tcp.as_socket()
            .try_clone_to_owned()
            .map(|s| Some(std::net::TcpStream::from(s)))
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = tcp;
        Ok(None)
    }
}

/// A TLS stream that meshtls tracks: when the policy stops admitting its
/// peer (a revocation, removal from the allow-list, its CA dropped), the
/// connection is closed after the grace period, and reading or writing then
/// fails with the reason. Reads and writes go straight to the inner stream;
/// everything of it is reachable through `Deref` (`stream.get_ref()`, ...).
///
/// Made by [`Acceptor::accept`](crate::Acceptor::accept),
/// [`Connector::connect`](crate::Connector::connect) and, inside
/// [`MtlsStream`](crate::MtlsStream), by [`Incoming`](crate::Incoming).
pub struct Tracked<S> {
    inner: S,
    guard: Guard,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, guard: Guard) -> Self {
        Self { inner, guard }
    }

    /// The inner stream, no longer tracked: meshtls will not close it.
    #[must_use]
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether meshtls closed this connection, and why.
    #[must_use]
    pub fn closed_by_policy(&self) -> Option<String> {
        self.guard.closed_reason()
    }

    /// An end of stream or an error, told as the reason when meshtls closed
    /// the connection.
    fn explain(&self, e: io::Error) -> io::Error {
        match self.guard.closed_reason() {
            Some(reason) => io::Error::new(io::ErrorKind::ConnectionAborted, reason),
            None => e,
        }
    }
}

impl<S> std::ops::Deref for Tracked<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.inner
    }
}

impl<S> std::ops::DerefMut for Tracked<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Tracked<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("inner", &self.inner)
            .field("guard", &self.guard)
            .finish()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            // The end of the stream: say why, if meshtls ended it.
            Poll::Ready(Ok(())) if buf.filled().len() == before && before < buf.capacity() => {
                match self.guard.closed_reason() {
                    Some(reason) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        reason,
                    ))),
                    None => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(e))),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(e))),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(e))),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(e))),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
