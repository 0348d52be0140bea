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
//!
//! # Authorization per route
//!
//! The listener's allow-list says who may connect at all; [`RequirePeer`]
//! says who may call a route, with the same rules (`Allow` values or their
//! text), judged with the server's settings. Others get `403 Forbidden`
//! naming them, and the server reports the refusal as it reports a refused
//! handshake (event, counter, metric).
//!
//! ```no_run
//! use axum::{Router, routing::{get, post}};
//! use meshtls::Allow;
//!
//! # fn app(server: &meshtls::ServerTls) -> Result<Router, meshtls::error::RuleError> {
//! let admins = server.require_peer([Allow::spiffe_pattern("spiffe://prod.example/ns/ops/**")])?;
//! let app = Router::new()
//!     .route("/admin/reload", post(|| async { "reloaded" }).route_layer(admins))
//!     .route("/healthz", get(|| async { "ok" }));
//! # Ok(app)
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, Connected, IntoMakeServiceWithConnectInfo};
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
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

pub use crate::judge::RequirePeer;

impl<S> tower::Layer<S> for RequirePeer {
    type Service = RequirePeerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequirePeerService {
            inner,
            require: self.clone(),
        }
    }
}

/// The service [`RequirePeer`] wraps around a route.
#[derive(Clone, Debug)]
pub struct RequirePeerService<S> {
    inner: S,
    require: RequirePeer,
}

/// What a refused request gets.
fn forbidden(text: String) -> Response {
    (StatusCode::FORBIDDEN, text).into_response()
}

impl<S, B> tower::Service<Request<B>> for RequirePeerService<S>
where
    S: tower::Service<Request<B>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let verdict = match request.extensions().get::<ConnectInfo<PeerInfo>>() {
            Some(ConnectInfo(info)) => self
                .require
                .judge(&info.identity, &format!("route {}", request.uri().path()))
                .map_err(|refusal| {
                    forbidden(format!(
                        "forbidden: {} may not call this route\n",
                        refusal.peer
                    ))
                }),
            None => Err(NoPeerIdentity.into_response()),
        };
        match verdict {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(response) => Box::pin(std::future::ready(Ok(response))),
        }
    }
}
