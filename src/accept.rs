//! The acceptor: the TLS handshake under a timeout, the peer admitted by
//! the judgment of the current policy epoch (a remembered verdict, or the
//! full judgment for a peer judged under an earlier epoch, a resumed one
//! whose verdict has run out, ...), and a failure classified with its
//! specifics.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::judge::{Presented, classify_tls, take_refusal};
use crate::live::Live;
use crate::track::{Guard, Socket, Tracked};

/// Accepts mutual-TLS connections; cheap to clone, one per listener or task.
///
/// Made by [`ServerTls::acceptor`](crate::ServerTls::acceptor).
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    live: Arc<Live>,
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
    pub(crate) fn new(config: Arc<ServerConfig>, live: Arc<Live>, timeout: Duration) -> Self {
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
        let deadline = tokio::time::Instant::from_std(started + self.timeout);
        // A peer that sends nothing, or its ClientHello a byte at a time,
        // holds its slot only this long.
        let hello_within = self.live.fixed.hello_timeout.min(self.timeout);
        let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = match tokio::time::timeout(hello_within, lazy).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => return Err(failed(&self.live, e, None)),
            Err(_) => {
                let detail = format!("no complete ClientHello within {hello_within:?}");
                self.live
                    .observer
                    .rejected(RejectReason::Timeout, detail.clone());
                return Err(HandshakeError::new(RejectReason::Timeout, detail, None));
            }
        };
        hello();
        let accept = start.into_stream(self.config.clone());
        let stream = handshake(&self.live, self.timeout, deadline, accept).await?;
        // Only now a second descriptor (to close it if the policy changes):
        // a flood of handshakes that never finish costs one each.
        let socket = Socket::of(stream.get_ref().0, &self.live.fixed.closing);
        let conn = stream.get_ref().1;
        let (peer, guard) = admit(&self.live, conn, None, Some(socket))?;
        self.live.observer.handshake_time(
            conn.handshake_kind() == Some(HandshakeKind::Resumed),
            started.elapsed(),
        );
        Ok((Tracked::new(stream, guard), peer))
    }
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
    live: &Live,
    timeout: Duration,
    deadline: tokio::time::Instant,
    handshake: impl Future<Output = io::Result<T>>,
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
        Ok(Err((e, noted))) => Err(failed(live, e, noted)),
        Err(_) => {
            let detail = format!("no handshake within {timeout:?}");
            live.observer
                .rejected(RejectReason::Timeout, detail.clone());
            Err(HandshakeError::new(RejectReason::Timeout, detail, None))
        }
    }
}

/// Classifies a handshake that failed inside rustls or on the socket.
/// `noted` is what our verifier noted in the poll that failed, if it
/// refused: it reported the refusal already, with more detail.
fn failed(
    live: &Live,
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
            let reason = classify_tls(&tls);
            let detail = tls.to_string();
            live.observer.rejected(reason, detail.clone());
            HandshakeError::new(reason, detail, Some(e))
        }
        None => {
            let detail = format!("connection failed during the handshake: {e}");
            live.observer.rejected(RejectReason::Io, detail.clone());
            HandshakeError::new(RejectReason::Io, detail, Some(e))
        }
    }
}

/// After a completed handshake, full or resumed: who the peer is, admitted
/// by the current epoch now (for a full handshake judged in this epoch, a
/// lookup). With `socket`, the connection is tracked from now on.
pub(crate) fn admit(
    live: &Arc<Live>,
    conn: &CommonState,
    server_name: Option<&ServerName<'_>>,
    socket: Option<Socket>,
) -> Result<(PeerIdentity, Guard), HandshakeError> {
    let Some((leaf, intermediates)) = conn
        .peer_certificates()
        .and_then(<[CertificateDer<'_>]>::split_first)
    else {
        let detail = "the peer presented no certificate".to_owned();
        live.observer
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
        Ok((epoch, admitted)) => {
            live.observer.admitted();
            let guard = match socket {
                Some(socket) => live.track(epoch, &admitted, peer, socket.0),
                None => Guard::none(),
            };
            Ok((admitted.peer, guard))
        }
        Err(refusal) => {
            let detail = match conn.handshake_kind() {
                Some(HandshakeKind::Resumed) => format!("resumed session: {}", refusal.detail),
                _ => refusal.detail,
            };
            live.observer.rejected(refusal.reason, detail.clone());
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

/// The handshakes an [`Incoming`] has in flight, oldest first, so that the
/// oldest can be shed when there are too many or descriptors run out.
#[derive(Default)]
struct Pending {
    slots: std::sync::Mutex<std::collections::BTreeMap<u64, Slot>>,
    next: std::sync::atomic::AtomicU64,
}

struct Slot {
    /// Whether its ClientHello is in (peers that sent one are shed last).
    hello: Arc<AtomicBool>,
    abort: Option<tokio::task::AbortHandle>,
}

/// Removes its handshake from [`Pending`] when the handshake ends.
struct SlotGuard {
    pending: Arc<Pending>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// A slot for a new handshake: its guard and its hello flag.
    fn add(self: &Arc<Self>) -> (SlotGuard, Arc<AtomicBool>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let hello = Arc::new(AtomicBool::new(false));
        self.lock().insert(
            id,
            Slot {
                hello: hello.clone(),
                abort: None,
            },
        );
        let guard = SlotGuard {
            pending: self.clone(),
            id,
        };
        (guard, hello)
    }

    /// Lets the slot's handshake be aborted (if it has not ended already).
    fn set_abort(&self, id: u64, abort: tokio::task::AbortHandle) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.abort = Some(abort);
        }
    }

    /// Ends the oldest handshake whose peer has sent no complete ClientHello
    /// yet, or failing that the oldest. Returns how long it had been pending.
    fn shed_oldest(&self) -> Option<(u64, bool)> {
        let mut slots = self.lock();
        let id = slots
            .iter()
            .find(|(_, s)| !s.hello.load(Ordering::Relaxed) && s.abort.is_some())
            .or_else(|| slots.iter().find(|(_, s)| s.abort.is_some()))
            .map(|(id, _)| *id)?;
        let slot = slots.remove(&id)?;
        if let Some(abort) = slot.abort {
            abort.abort();
        }
        Some((id, slot.hello.load(Ordering::Relaxed)))
    }
}

/// A stream of verified connections from a TCP listener.
///
/// Handshakes run concurrently on their own tasks; refused ones are reported
/// as events and never show up here. Dropping it stops accepting.
///
/// A slow or silent peer holds up only itself: it must send a complete
/// ClientHello within the hello timeout (3 s,
/// [`client_hello_timeout`](crate::ServerTlsBuilder::client_hello_timeout))
/// and finish within the handshake timeout (10 s). Handshakes in flight are
/// bounded by [`max_pending_handshakes`](crate::ServerTlsBuilder::max_pending_handshakes)
/// (8,192, a few KiB each); past it, and whenever the process runs out of
/// file descriptors, the oldest pending handshake is shed (one whose peer has
/// sent nothing first), so new connections are never refused for old ones.
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
        let max_pending = self.live.fixed.max_pending_handshakes.max(1);
        let task = tokio::spawn(async move {
            let pending = Arc::new(Pending::default());
            let shed = |why: &str| {
                if let Some((_, hello)) = pending.shed_oldest() {
                    let detail = format!(
                        "handshake shed ({why}): the oldest pending one{} made room",
                        if hello { "" } else { ", silent so far," }
                    );
                    acceptor
                        .live
                        .observer
                        .rejected(RejectReason::Timeout, detail);
                    true
                } else {
                    false
                }
            };
            loop {
                let (tcp, remote_addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: make room
                        // by shedding the oldest pending handshake, back
                        // off, and keep serving.
                        let made_room = shed(&format!("accept failed: {e}"));
                        tracing::warn!(error = %e, made_room, "accept failed");
                        let pause = if made_room { 1 } else { 50 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        continue;
                    }
                };
                if pending.len() >= max_pending {
                    shed(&format!("{max_pending} handshakes pending"));
                }
                let (slot, hello) = pending.add();
                let id = slot.id;
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                let handle = tokio::spawn(async move {
                    let accepted = acceptor
                        .accept_noting(tcp, || hello.store(true, Ordering::Relaxed))
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
