//! The acceptor: the TLS handshake under a timeout, the peer's identity
//! re-checked against the current policy, and the failure classified.
//!
//! rustls does not run the client verifier on a resumed TLS 1.3 session.
//! Session keys belong to a policy epoch, so a session from before a policy
//! change does not resume at all; the acceptor adds two checks for the
//! moments in between:
//!
//! - every resumed peer is re-checked cheaply: allow-list and validity
//!   window, no signatures;
//! - when the generation's policy epoch changed *during* the handshake, the
//!   peer gets the full check (chain, revocation, allow-list) under the new
//!   one.
//!
//! And for one handshake timeout after a policy change no session state is
//! created at all (no ticket sealed, nothing cached), since a handshake that
//! straddles the change may have had its peer judged by the old policy.
//!
//! A framework that uses the bare `ServerConfig` gets the epoch-scoped session
//! keys and the settling time, but not the two re-checks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::ServerConfig;
use rustls::{CommonState, HandshakeKind};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;

use crate::error::HandshakeError;
use crate::identity::PeerIdentity;
use crate::live::{Live, Sessions};
use crate::observe::{RejectReason, classify_tls, recall_refusal};
use crate::server::ServerSessions;

/// Accepts mutual-TLS connections; cheap to clone, one per listener or task.
///
/// Made by [`ServerTls::acceptor`](crate::ServerTls::acceptor).
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    live: Arc<Live<ServerSessions>>,
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
        live: Arc<Live<ServerSessions>>,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: tokio_rustls::TlsAcceptor::from(config),
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
    pub async fn accept<IO>(&self, io: IO) -> Result<(TlsStream<IO>, PeerIdentity), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let epoch = self.live.current().epoch;
        let stream = handshake(&self.live, self.timeout, self.inner.accept(io)).await?;
        let peer = admit(&self.live, epoch, stream.get_ref().1, None)?;
        Ok((stream, peer))
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
        admit(&self.live, self.live.current().epoch, conn, None)
    }
}

/// Runs a tokio-rustls handshake under `timeout`, classifying a failure.
pub(crate) async fn handshake<S: Sessions, T>(
    live: &Live<S>,
    timeout: Duration,
    handshake: impl Future<Output = io::Result<T>>,
) -> Result<T, HandshakeError> {
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(failed(live, e)),
        Err(_) => {
            let detail = format!("no handshake within {timeout:?}");
            live.observer
                .rejected(RejectReason::Timeout, detail.clone());
            Err(HandshakeError::new(RejectReason::Timeout, detail, None))
        }
    }
}

/// Classifies a handshake that failed inside rustls or on the socket.
/// Refusals our verifiers made were reported there, with more detail.
pub(crate) fn failed<S: Sessions>(live: &Live<S>, e: io::Error) -> HandshakeError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match tls {
        Some(tls) => {
            if let rustls::Error::InvalidCertificate(c) = &tls
                && let Some((reason, detail)) = recall_refusal(c)
            {
                // Our verifier refused, and reported it already.
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

/// After a completed handshake: who the peer is, re-checked where rustls did
/// not check (resumption) or checked under an older policy (a swap landed
/// during the handshake).
pub(crate) fn admit<S: Sessions>(
    live: &Live<S>,
    epoch_before: u64,
    conn: &CommonState,
    server_name: Option<&ServerName<'_>>,
) -> Result<PeerIdentity, HandshakeError> {
    let refuse = |reason: RejectReason, detail: String| {
        live.observer.rejected(reason, detail.clone());
        HandshakeError::new(reason, detail, None)
    };
    let Some((leaf, intermediates)) = conn
        .peer_certificates()
        .and_then(<[CertificateDer<'_>]>::split_first)
    else {
        return Err(refuse(
            RejectReason::NoClientCertificate,
            "the peer presented no certificate".into(),
        ));
    };
    let generation = live.current();
    let checked = if generation.epoch != epoch_before {
        live.judge(
            &generation,
            leaf,
            intermediates,
            server_name,
            UnixTime::now(),
        )
    } else if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
        live.recheck(&generation, leaf, server_name)
    } else {
        // A full handshake judged by this same epoch's verifier.
        return match live.identity(leaf) {
            Ok(peer) => {
                live.observer.admitted();
                Ok(peer)
            }
            Err(e) => Err(refuse(RejectReason::NotAWorkloadCertificate, e.to_string())),
        };
    };
    match checked {
        Ok(peer) => {
            live.observer.admitted();
            Ok(peer)
        }
        Err(rejection) => Err(refuse(rejection.reason, rejection.detail)),
    }
}

/// An accepted, verified connection: the TLS stream, who is on the other end,
/// and from where. Reads and writes go straight to the TLS stream.
#[derive(Debug)]
pub struct MtlsStream {
    inner: TlsStream<TcpStream>,
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
    pub fn peer(&self) -> &PeerIdentity {
        &self.info.identity
    }

    /// Identity and address of the peer.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// The peer's socket address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.info.remote_addr
    }

    /// The TLS stream (for ALPN, the negotiated suite, ...).
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.inner
    }

    /// The TLS stream and the peer's identity.
    pub fn into_parts(self) -> (TlsStream<TcpStream>, PeerInfo) {
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

/// Handshakes in flight at once per [`Incoming`]; more connections wait in
/// the kernel's backlog.
const MAX_HANDSHAKES_IN_FLIGHT: usize = 1024;

/// A stream of verified connections from a TCP listener.
///
/// Handshakes run concurrently on their own tasks (a slow or silent client
/// holds up only itself, for at most the handshake timeout); refused ones are
/// reported as events and never show up here. Dropping it stops accepting.
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

    /// Polls for the next verified connection.
    pub fn poll_next_conn(&mut self, cx: &mut Context<'_>) -> Poll<Option<MtlsStream>> {
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
    /// Accepts from `listener` and yields verified connections. Must be called
    /// inside a tokio runtime (it spawns the accept loop).
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        let (tx, rx) = mpsc::channel(64);
        let local_addr = listener.local_addr();
        let acceptor = self.clone();
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES_IN_FLIGHT));
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, remote_addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, retry.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Ok((inner, identity)) = acceptor.accept(tcp).await {
                        let info = PeerInfo {
                            identity,
                            remote_addr,
                        };
                        // The receiver may be gone; the connection then just closes.
                        let _ = sender.send(MtlsStream { inner, info }).await;
                    }
                });
            }
        });
        Incoming {
            rx,
            local_addr,
            task,
        }
    }
}
