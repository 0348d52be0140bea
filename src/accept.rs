//! The acceptor: the TLS handshake under a timeout, the peer admitted by
//! the judgment of the current policy epoch (a remembered verdict, or the
//! full judgment for a peer judged under an earlier epoch, a resumed one
//! whose verdict has run out, ...), and a failure classified with its
//! specifics.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::server::ServerConfig;
use rustls::{CommonState, HandshakeKind};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::{HandshakeError, RejectReason};
use crate::identity::PeerIdentity;
use crate::judge::{Presented, from_tls, take_refusal};
use crate::live::Live;
use crate::observe::Observer;
use crate::side::{Server, Side};
use crate::track::{Guard, Socket, Tracked};

/// Accepts mutual-TLS connections; cheap to clone, one per listener or task.
///
/// Made by [`ServerTls::acceptor`](crate::ServerTls::acceptor).
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    live: Arc<Live<Server>>,
    timeout: Duration,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    pub(crate) fn new(
        config: Arc<ServerConfig>,
        live: Arc<Live<Server>>,
        timeout: Duration,
    ) -> Self {
        Self {
            config,
            live,
            timeout,
        }
    }

    /// Runs the server handshake on `io` and returns the encrypted stream and
    /// who is on the other end.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`] with the reason: no client certificate, unknown CA,
    /// expired, revoked, identity not allowed, TLS version, timeout, I/O. The
    /// client receives the matching TLS alert; refused handshakes are also
    /// counted and sent as [`Event::Rejected`](crate::Event::Rejected).
    ///
    /// The stream is [`Tracked`]: if the policy later stops admitting the
    /// client (a CRL revokes it, it leaves the allow-list, its CA is
    /// dropped), meshtls closes the connection after the grace period (see
    /// [`keep_live_connections`](crate::Builder::keep_live_connections)).
    /// Closing needs a tokio `TcpStream` under the TLS; other transports are
    /// judged but not closed.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<(Tracked<TlsStream<IO>>, PeerIdentity), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        self.accept_noting(io, || {}).await
    }

    /// [`accept`](Self::accept), calling `hello` once the ClientHello is in.
    async fn accept_noting<IO>(
        &self,
        io: IO,
        hello: impl FnOnce(),
    ) -> Result<(Tracked<TlsStream<IO>>, PeerIdentity), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let started = Instant::now();
        // A peer that sends nothing, or its ClientHello a byte at a time,
        // holds its slot only this long.
        let hello_within = self.live.hello_timeout().min(self.timeout);
        let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = match tokio::time::timeout(hello_within, lazy).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => return Err(failed(self.live.observer(), e, None)),
            Err(_) => {
                let detail = format!("no complete ClientHello within {hello_within:?}");
                self.live
                    .observer()
                    .rejected(RejectReason::Timeout, detail.clone());
                return Err(HandshakeError::new(RejectReason::Timeout, detail, None));
            }
        };
        hello();
        // The rest of the handshake has a deadline of its own, the hello
        // timeout again (within the handshake timeout): a peer that sends a
        // hello and stalls holds its slot no longer than one that sends
        // nothing, twice over at most.
        let hello_at = Instant::now();
        let rest = self
            .timeout
            .saturating_sub(hello_at.saturating_duration_since(started))
            .min(hello_within);
        let deadline = deadline_after(hello_at, rest);
        let accept = start.into_stream(self.config.clone());
        let stream = handshake_until(self.live.observer(), deadline, accept, || {
            format!("no completed handshake within {rest:?} after its ClientHello")
        })
        .await?;
        established(&self.live, stream, None, started)
    }
}

/// A tokio-rustls stream of either side: its socket and its connection.
pub(crate) trait TlsParts {
    /// The socket under the TLS stream.
    type Io: 'static;
    /// The socket, and the connection's state.
    fn parts(&self) -> (&Self::Io, &CommonState);
}

impl<IO: 'static> TlsParts for TlsStream<IO> {
    type Io = IO;
    fn parts(&self) -> (&IO, &CommonState) {
        let (io, conn) = self.get_ref();
        (io, conn)
    }
}

impl<IO: 'static> TlsParts for tokio_rustls::client::TlsStream<IO> {
    type Io = IO;
    fn parts(&self) -> (&IO, &CommonState) {
        let (io, conn) = self.get_ref();
        (io, conn)
    }
}

/// After a completed tokio-rustls handshake, on either side: the peer
/// admitted by the current epoch, the connection tracked, the handshake
/// timed.
pub(crate) fn established<S: Side, T: TlsParts>(
    live: &Arc<Live<S>>,
    stream: T,
    server_name: Option<&ServerName<'_>>,
    started: Instant,
) -> Result<(Tracked<T>, PeerIdentity), HandshakeError> {
    let (io, conn) = stream.parts();
    // Only now a second descriptor (to close it if the policy changes): a
    // flood of handshakes that never finish costs one each.
    let socket = live.socket_of(io);
    let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
    let (peer, guard) = admit(live, conn, server_name, Some(socket))?;
    live.observer().handshake_time(resumed, started.elapsed());
    Ok((Tracked::new(stream, guard), peer))
}

impl Acceptor {
    /// Who the peer of a completed handshake is, for servers that drive the
    /// rustls connection themselves (a blocking server, a custom transport):
    /// the check [`accept`](Self::accept) makes after its handshake, with the
    /// re-check of resumed sessions. Call it once `is_handshaking()` is false,
    /// before trusting the connection.
    ///
    /// # Errors
    ///
    /// As for `accept`: no certificate, or a resumed peer the current policy
    /// no longer admits.
    pub fn identify(
        &self,
        conn: &rustls::ServerConnection,
    ) -> Result<PeerIdentity, HandshakeError> {
        admit(&self.live, conn, None, None).map(|(peer, _)| peer)
    }
}

/// Runs a tokio-rustls handshake under `timeout`, classifying a failure.
///
/// A verifier that refuses notes its specifics for us on this thread; the
/// handshake fails in the very poll that ran it. The note is cleared around
/// every poll, so a refusal noted elsewhere on this thread (by a bare config,
/// say) can never be taken for this handshake's.
pub(crate) async fn handshake<T>(
    observer: &Observer,
    timeout: Duration,
    deadline: tokio::time::Instant,
    handshake: impl Future<Output = io::Result<T>>,
) -> Result<T, HandshakeError> {
    handshake_until(observer, deadline, handshake, || {
        format!("no handshake within {timeout:?}")
    })
    .await
}

/// [`handshake`], saying `timed_out()` when `deadline` passes.
async fn handshake_until<T>(
    observer: &Observer,
    deadline: tokio::time::Instant,
    handshake: impl Future<Output = io::Result<T>>,
    timed_out: impl FnOnce() -> String,
) -> Result<T, HandshakeError> {
    let mut handshake = std::pin::pin!(handshake);
    let polled = std::future::poll_fn(|cx| {
        take_refusal();
        let poll = handshake.as_mut().poll(cx);
        let noted = take_refusal();
        poll.map(|result| result.map_err(|e| (e, noted)))
    });
    match tokio::time::timeout_at(deadline, polled).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err((e, noted))) => Err(failed(observer, e, noted)),
        Err(_) => {
            let detail = timed_out();
            observer.rejected(RejectReason::Timeout, detail.clone());
            Err(HandshakeError::new(RejectReason::Timeout, detail, None))
        }
    }
}

/// `from + after`, or a moment far beyond any handshake when that is past
/// what an `Instant` can hold ("never" is not a point in time).
pub(crate) fn deadline_after(from: Instant, after: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let at = from
        .checked_add(after)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from);
    tokio::time::Instant::from_std(at)
}

/// Classifies a handshake that failed inside rustls or on the socket.
/// `noted` is what our verifier noted in the poll that failed, if it
/// refused: it reported the refusal already, with more detail.
fn failed(
    observer: &Observer,
    e: io::Error,
    noted: Option<(rustls::CertificateError, RejectReason, String)>,
) -> HandshakeError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match tls {
        Some(tls) => {
            if let (rustls::Error::InvalidCertificate(c), Some((alert, reason, detail))) =
                (&tls, noted)
                && *c == alert
            {
                return HandshakeError::new(reason, detail, Some(e));
            }
            let reason = from_tls(&tls);
            let detail = tls.to_string();
            observer.rejected(reason, detail.clone());
            HandshakeError::new(reason, detail, Some(e))
        }
        None => {
            let detail = format!("connection failed during the handshake: {e}");
            observer.rejected(RejectReason::Io, detail.clone());
            HandshakeError::new(RejectReason::Io, detail, Some(e))
        }
    }
}

/// After a completed handshake, full or resumed: who the peer is, admitted
/// by the current epoch now (for a full handshake judged in this epoch, a
/// lookup). With `socket`, the connection is tracked from now on.
pub(crate) fn admit<S: Side>(
    live: &Arc<Live<S>>,
    conn: &CommonState,
    server_name: Option<&ServerName<'_>>,
    socket: Option<Socket>,
) -> Result<(PeerIdentity, Guard), HandshakeError> {
    let Some((leaf, intermediates)) = conn
        .peer_certificates()
        .and_then(<[CertificateDer<'_>]>::split_first)
    else {
        let detail = "the peer presented no certificate".to_owned();
        live.observer()
            .rejected(RejectReason::NoClientCertificate, detail.clone());
        return Err(HandshakeError::new(
            RejectReason::NoClientCertificate,
            detail,
            None,
        ));
    };
    let peer = Presented {
        end_entity: leaf,
        intermediates,
        server_name,
    };
    match live.admit(peer) {
        Ok(admitted) => {
            live.observer().admitted();
            let guard = match socket {
                Some(socket) => live.track(&admitted, peer, socket.0),
                None => Guard::none(),
            };
            Ok((admitted.peer, guard))
        }
        Err(refusal) => {
            let detail = match conn.handshake_kind() {
                Some(HandshakeKind::Resumed) => format!("resumed session: {}", refusal.detail),
                _ => refusal.detail,
            };
            live.observer().rejected(refusal.reason, detail.clone());
            Err(HandshakeError::new(refusal.reason, detail, None))
        }
    }
}

/// An accepted, verified connection: the TLS stream, who is on the other end,
/// and from where. Reads and writes go straight to the TLS stream.
#[derive(Debug)]
pub struct MtlsStream {
    inner: Tracked<TlsStream<TcpStream>>,
    info: PeerInfo,
}

/// Who a connection is with: what integrations put in request extensions
/// (axum `ConnectInfo<PeerInfo>`, tonic request extensions).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The verified identity of the peer.
    pub identity: PeerIdentity,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
}

impl MtlsStream {
    /// The peer's verified identity.
    #[must_use]
    pub fn peer(&self) -> &PeerIdentity {
        &self.info.identity
    }

    /// Identity and address of the peer.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// The peer's socket address.
    #[must_use]
    pub fn remote_addr(&self) -> SocketAddr {
        self.info.remote_addr
    }

    /// The TLS stream (for ALPN, the negotiated suite, ...).
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.inner
    }

    /// Whether meshtls closed this connection because the policy stopped
    /// admitting its peer, and why.
    #[must_use]
    pub fn closed_by_policy(&self) -> Option<String> {
        self.inner.closed_by_policy()
    }

    /// The TLS stream (still tracked) and the peer's identity.
    #[must_use]
    pub fn into_parts(self) -> (Tracked<TlsStream<TcpStream>>, PeerInfo) {
        (self.inner, self.info)
    }
}

impl AsyncRead for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How long a new handshake is never shed for: long enough for a valid
/// client on a sane network to send its hello and finish, so that peers
/// arriving after it cannot push it out before it had its chance.
const SHED_GRACE: Duration = Duration::from_millis(500);

/// The handshakes an [`Incoming`] has in flight, in the order they were
/// accepted, apart by whether the peer's ClientHello is in, so that the
/// oldest of either kind is found at once when one must be shed.
#[derive(Default)]
struct Pending {
    slots: std::sync::Mutex<Slots>,
    next: std::sync::atomic::AtomicU64,
}

/// The slots, by id (ids grow: the first is the oldest).
#[derive(Default)]
struct Slots {
    /// No complete ClientHello yet.
    silent: std::collections::BTreeMap<u64, Slot>,
    /// The ClientHello is in, the handshake not finished.
    stalled: std::collections::BTreeMap<u64, Slot>,
}

struct Slot {
    /// When it was accepted: never shed before the grace has passed.
    born: Instant,
    abort: Option<tokio::task::AbortHandle>,
}

/// What [`Pending::shed_oldest`] did.
#[derive(Debug, PartialEq, Eq)]
enum Shed {
    /// Ended a handshake: whether its hello was in, and how old it was.
    Ended { hello: bool, age: Duration },
    /// Every handshake is younger than the grace: the oldest reaches it then.
    NotBefore(Instant),
    /// Nothing to shed.
    Nothing,
}

/// Removes its handshake from [`Pending`] when the handshake ends.
struct SlotGuard {
    pending: Arc<Pending>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = self.pending.lock();
        if slots.silent.remove(&self.id).is_none() {
            slots.stalled.remove(&self.id);
        }
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        let slots = self.lock();
        slots.silent.len().saturating_add(slots.stalled.len())
    }

    /// A slot for a new handshake (silent until [`hello`](Self::hello)).
    fn add(self: &Arc<Self>) -> SlotGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().silent.insert(
            id,
            Slot {
                born: Instant::now(),
                abort: None,
            },
        );
        SlotGuard {
            pending: self.clone(),
            id,
        }
    }

    /// The peer of slot `id` has sent its whole ClientHello.
    fn hello(&self, id: u64) {
        let mut slots = self.lock();
        if let Some(slot) = slots.silent.remove(&id) {
            slots.stalled.insert(id, slot);
        }
    }

    /// Lets the slot's handshake be aborted (if it has not ended already).
    fn set_abort(&self, id: u64, abort: tokio::task::AbortHandle) {
        let mut slots = self.lock();
        let Slots { silent, stalled } = &mut *slots;
        if let Some(slot) = silent.get_mut(&id).or_else(|| stalled.get_mut(&id)) {
            slot.abort = Some(abort);
        }
    }

    /// Ends the oldest handshake older than `grace` whose peer has sent no
    /// complete ClientHello yet, or failing that the oldest older than
    /// `grace` (its peer sent a hello and has not finished). A handshake
    /// younger than `grace` is never ended: when every one is, says when
    /// the oldest will not be.
    fn shed_oldest(&self, now: Instant, grace: Duration) -> Shed {
        let mut slots = self.lock();
        // The oldest of each kind that can be aborted (only the newest slot
        // can still lack its handle).
        let oldest = |map: &std::collections::BTreeMap<u64, Slot>| {
            map.iter()
                .find(|(_, s)| s.abort.is_some())
                .map(|(id, s)| (*id, s.born))
        };
        let (silent, stalled) = (oldest(&slots.silent), oldest(&slots.stalled));
        let past = |born: Instant| now.saturating_duration_since(born) >= grace;
        let (id, hello) = match (silent, stalled) {
            (Some((id, born)), _) if past(born) => (id, false),
            (_, Some((id, born))) if past(born) => (id, true),
            (None, None) => return Shed::Nothing,
            _ => {
                let first = [silent, stalled]
                    .into_iter()
                    .flatten()
                    .map(|(_, born)| born)
                    .min()
                    .unwrap_or(now);
                return Shed::NotBefore(first.checked_add(grace).unwrap_or(now));
            }
        };
        let map = if hello {
            &mut slots.stalled
        } else {
            &mut slots.silent
        };
        let Some(slot) = map.remove(&id) else {
            return Shed::Nothing;
        };
        if let Some(abort) = slot.abort {
            abort.abort();
        }
        Shed::Ended {
            hello,
            age: now.saturating_duration_since(slot.born),
        }
    }
}

/// A stream of verified connections from a TCP listener.
///
/// Handshakes run concurrently on their own tasks; refused ones are reported
/// as events and never show up here. Dropping it stops accepting.
///
/// A slow or silent peer holds up only itself: it must send a complete
/// ClientHello within the hello timeout (3 s,
/// [`client_hello_timeout`](crate::ServerTlsBuilder::client_hello_timeout)),
/// and then finish within the hello timeout again (and within the handshake
/// timeout, 10 s): a peer that stalls holds its slot 6 s at most by default.
/// Handshakes in flight are bounded by
/// [`max_pending_handshakes`](crate::ServerTlsBuilder::max_pending_handshakes)
/// (8,192, a few KiB each). Past it, and whenever the process runs out of
/// file descriptors, the oldest pending handshake is shed to make room: one
/// whose peer has sent nothing first, then one whose peer sent its
/// ClientHello and has not finished. A handshake younger than 500 ms is
/// never shed, so a new client has its chance to finish however many peers
/// arrive after it; when every pending handshake is younger, accepting
/// pauses until the oldest is 500 ms old (new connections wait in the
/// listener's backlog). Each shed handshake is reported as an
/// [`Event::Rejected`](crate::Event::Rejected) saying why and which.
///
/// ```no_run
/// # async fn run(server: meshtls::ServerTls) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// let mut incoming = server.acceptor().incoming(listener);
/// while let Some(conn) = incoming.next().await {
///     println!("{} from {}", conn.peer(), conn.remote_addr());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<MtlsStream>,
    local_addr: io::Result<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Incoming {
    /// The next verified connection; `None` once the listener has failed for good.
    pub async fn next(&mut self) -> Option<MtlsStream> {
        self.rx.recv().await
    }

    /// Polls for the next verified connection (for the tonic stream).
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))]
    pub(crate) fn poll_next_conn(&mut self, cx: &mut Context<'_>) -> Poll<Option<MtlsStream>> {
        self.rx.poll_recv(cx)
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local_addr {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

impl Acceptor {
    /// Accepts from `listener` and yields verified connections.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the accept loop).
    #[must_use]
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        let (tx, rx) = mpsc::channel(64);
        let local_addr = listener.local_addr();
        let acceptor = self.clone();
        let max_pending = self.live.max_pending_handshakes().max(1);
        let task = tokio::spawn(async move {
            let pending = Arc::new(Pending::default());
            // Sheds one handshake past the grace; otherwise says how long
            // to wait before trying again (until the oldest is past it, at
            // most 50 ms: a handshake may end sooner).
            let shed = |why: &str| match pending.shed_oldest(Instant::now(), SHED_GRACE) {
                Shed::Ended { hello, age } => {
                    let which = if hello {
                        "its ClientHello in but unfinished"
                    } else {
                        "silent so far"
                    };
                    let detail = format!(
                        "handshake shed ({why}): the oldest pending one ({which}, after {age:?}) made room"
                    );
                    acceptor
                        .live
                        .observer()
                        .rejected(RejectReason::Timeout, detail);
                    None
                }
                Shed::NotBefore(at) => Some(
                    at.saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(1), Duration::from_millis(50)),
                ),
                Shed::Nothing => Some(Duration::from_millis(50)),
            };
            loop {
                let (tcp, remote_addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: make room
                        // by shedding the oldest pending handshake (past
                        // the grace), back off, and keep serving.
                        let wait = shed(&format!("accept failed: {e}"));
                        tracing::warn!(error = %e, made_room = wait.is_none(), "accept failed");
                        tokio::time::sleep(wait.unwrap_or(Duration::from_millis(1))).await;
                        continue;
                    }
                };
                // At the bound: shed the oldest handshake past the grace. If
                // every one is younger, accept nothing more until the oldest
                // is past it (or a handshake ends), so a flood can push out
                // no handshake before its grace and memory stays bounded.
                while pending.len() >= max_pending {
                    let Some(pause) = shed(&format!("{max_pending} handshakes pending")) else {
                        break;
                    };
                    tokio::time::sleep(pause).await;
                }
                let slot = pending.add();
                let id = slot.id;
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                let handle = tokio::spawn(async move {
                    let accepted = acceptor
                        .accept_noting(tcp, || slot.pending.hello(slot.id))
                        .await;
                    drop(slot);
                    if let Ok((inner, identity)) = accepted {
                        let info = PeerInfo {
                            identity,
                            remote_addr,
                        };
                        // The receiver may be gone; the connection then just closes.
                        let _ = sender.send(MtlsStream { inner, info }).await;
                    }
                });
                pending.set_abort(id, handle.abort_handle());
            }
        });
        Incoming {
            rx,
            local_addr,
            task,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots for `hellos` (whether each peer sent its hello), each with a
    /// task to abort.
    fn slots(pending: &Arc<Pending>, hellos: &[bool]) -> Vec<SlotGuard> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        hellos
            .iter()
            .map(|&sent| {
                let guard = pending.add();
                if sent {
                    pending.hello(guard.id);
                }
                let task = runtime.spawn(std::future::pending::<()>());
                pending.set_abort(guard.id, task.abort_handle());
                guard
            })
            .collect()
    }

    #[test]
    fn sheds_silent_first_then_stalled_and_never_inside_the_grace() {
        let pending = Arc::new(Pending::default());
        let _guards = slots(&pending, &[true, false, true]);
        let now = Instant::now();
        let grace = Duration::from_secs(60);
        // All younger than the grace: nothing shed, and when to try.
        match pending.shed_oldest(now, grace) {
            Shed::NotBefore(at) => assert!(at > now, "{at:?}"),
            other => panic!("shed inside the grace: {other:?}"),
        }
        assert_eq!(pending.len(), 3);
        // Past it: the silent one first, though a stalled one is older.
        let later = now + grace + Duration::from_secs(1);
        assert!(matches!(
            pending.shed_oldest(later, grace),
            Shed::Ended { hello: false, .. }
        ));
        assert!(matches!(
            pending.shed_oldest(later, grace),
            Shed::Ended { hello: true, .. }
        ));
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_young_silent_slot_is_not_shed_for_an_old_stalled_one() {
        let pending = Arc::new(Pending::default());
        let _old = slots(&pending, &[true]);
        let born = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let _young = slots(&pending, &[false]);
        let grace = Duration::from_millis(20);
        let now = born + Duration::from_millis(25);
        // The young silent one is inside its grace: the stalled one goes.
        match pending.shed_oldest(now, grace) {
            Shed::Ended { hello: true, .. } => {}
            other => panic!("expected the old stalled slot to be shed: {other:?}"),
        }
        assert_eq!(pending.len(), 1);
        assert!(matches!(
            pending.shed_oldest(now, grace),
            Shed::NotBefore(_)
        ));
    }

    #[test]
    fn an_ended_handshake_leaves_its_slot_whatever_its_kind() {
        let pending = Arc::new(Pending::default());
        let guards = slots(&pending, &[true, false]);
        assert_eq!(pending.len(), 2);
        drop(guards);
        assert_eq!(pending.len(), 0);
        assert_eq!(
            pending.shed_oldest(Instant::now(), Duration::ZERO),
            Shed::Nothing
        );
    }

    #[test]
    fn deadlines_past_an_instant_do_not_panic() {
        let now = Instant::now();
        assert!(deadline_after(now, Duration::MAX).into_std() > now);
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)).into_std(),
            now + Duration::from_secs(1)
        );
    }
}
