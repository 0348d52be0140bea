//! axum integration (feature `axum`): serve a `Router` over meshtls, with the
//! caller's [`PeerIdentity`] as an extractor.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use meshtls::{Allow, PeerIdentity, ServerTls};
//!
//! async fn whoami(peer: PeerIdentity) -> String {
//!     format!("you are {peer}")
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = ServerTls::builder()
//!     .identity_files("tls/tls.crt", "tls/tls.key")
//!     .client_roots_file("tls/ca.crt")
//!     .allow(Allow::spiffe_trust_domain("prod.example"))
//!     .watch()?;
//! let listener = meshtls::axum::MtlsListener::bind("127.0.0.1:8443", &server).await?;
//! meshtls::axum::serve(listener, Router::new().route("/whoami", get(whoami))).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Handlers take `PeerIdentity` (or `ConnectInfo<PeerInfo>` for the address
//! too). Both need the router served with connect info, which [`serve`] does;
//! with `axum::serve` directly, use
//! `router.into_make_service_with_connect_info::<PeerInfo>()`.

use std::io;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, Connected, IntoMakeServiceWithConnectInfo};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::AddExtension;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener, Serve};
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::accept::{Incoming, MtlsStream, PeerInfo};
use crate::identity::PeerIdentity;
use crate::server::ServerTls;

/// An axum [`Listener`] that yields only verified mTLS connections.
///
/// Handshakes run concurrently in the background; refused ones are reported
/// through the server's events and never reach axum.
#[derive(Debug)]
pub struct MtlsListener {
    incoming: Incoming,
}

impl MtlsListener {
    /// Wraps a bound TCP listener; handshakes run on spawned tasks.
    ///
    /// ALPN: a server built without [`alpn_protocols`](crate::Builder::alpn_protocols)
    /// offers `h2` and `http/1.1` here (axum serves both), so curl, browsers
    /// and gRPC-web clients get HTTP/2; a server built with a list keeps it.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the accept loop).
    pub fn new(listener: TcpListener, server: &ServerTls) -> Self {
        let acceptor = if server.config().alpn_protocols.is_empty() {
            server.acceptor_with_alpn(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
        } else {
            server.acceptor()
        };
        Self {
            incoming: acceptor.incoming(listener),
        }
    }

    /// Binds `addr` and wraps it.
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs, server: &ServerTls) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, server))
    }
}

impl Listener for MtlsListener {
    type Io = MtlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.next().await {
            Some(stream) => {
                let addr = stream.remote_addr();
                (stream, addr)
            }
            // The accept loop only ends with the runtime; wait with it.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.incoming.local_addr()
    }
}

impl Connected<IncomingStream<'_, MtlsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, MtlsListener>) -> Self {
        stream.io().info().clone()
    }
}

/// The service `serve` runs: the router with [`PeerInfo`] as connect info.
pub type MtlsService = IntoMakeServiceWithConnectInfo<Router, PeerInfo>;

/// Serves `router` on `listener`, with [`PeerIdentity`] and
/// `ConnectInfo<PeerInfo>` available to handlers. Await it, or call
/// `.with_graceful_shutdown(..)` on it first.
pub fn serve(
    listener: MtlsListener,
    router: Router,
) -> Serve<MtlsListener, MtlsService, AddExtension<Router, ConnectInfo<PeerInfo>>> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<PeerInfo>(),
    )
}

/// The request did not come through meshtls (or not with connect info).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct NoPeerIdentity;

impl IntoResponse for NoPeerIdentity {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no mTLS peer identity on this request: serve the router with meshtls::axum::serve \
             (or into_make_service_with_connect_info::<meshtls::PeerInfo>())",
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerIdentity {
    type Rejection = NoPeerIdentity;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ConnectInfo<PeerInfo>>()
            .map(|ConnectInfo(info)| info.identity.clone())
            .ok_or(NoPeerIdentity)
    }
}
