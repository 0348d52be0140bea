//! tonic integration (feature `tonic`): an incoming stream for
//! `Server::serve_with_incoming` whose connections carry the caller's
//! [`PeerIdentity`], and a `Channel` built on the meshtls connector.
//!
//! ```no_run
//! # async fn run<S>(svc: S) -> Result<(), Box<dyn std::error::Error>>
//! # where S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>
//! #     + tonic::server::NamedService + Clone + Send + Sync + 'static, S::Future: Send + 'static {
//! use meshtls::{Allow, ServerTls};
//!
//! let server = ServerTls::builder()
//!     .identity_files("tls/tls.crt", "tls/tls.key")
//!     .client_roots_file("tls/ca.crt")
//!     .allow(Allow::spiffe_trust_domain("prod.example"))
//!     .alpn_protocols([b"h2".to_vec()]) // gRPC clients in other languages insist on it
//!     .watch()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! tonic::transport::Server::builder()
//!     .add_service(svc)
//!     .serve_with_incoming(server.acceptor().incoming(listener))
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! In a handler, [`peer`] reads the caller's identity from the request.
//!
//! # A complete service, from a `.proto`, without `protoc`
//!
//! `examples/tonic_server.rs` and `examples/tonic_client.rs` are a whole
//! pair; this is what they are made of. The service code comes from a
//! normal `.proto`, compiled in pure Rust by protox in a build script:
//!
//! ```rust,ignore
//! // build.rs ([build-dependencies] protox = "0.9", tonic-prost-build = "0.14")
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let descriptors = protox::compile(["proto/greeter.proto"], ["proto"])?;
//!     tonic_prost_build::configure().compile_fds(descriptors)?;
//!     Ok(())
//! }
//! ```
//!
//! The server implements the generated trait and reads the caller:
//!
//! ```rust,ignore
//! pub mod proto { tonic::include_proto!("meshtls.example"); }
//! use proto::greeter_server::{Greeter, GreeterServer};
//! use proto::{HelloReply, HelloRequest};
//!
//! struct MyGreeter;
//!
//! #[tonic::async_trait]
//! impl Greeter for MyGreeter {
//!     async fn say_hello(&self, request: tonic::Request<HelloRequest>)
//!         -> Result<tonic::Response<HelloReply>, tonic::Status> {
//!         let caller = meshtls::tonic::peer(&request).map(|p| p.to_string()).unwrap_or_default();
//!         Ok(tonic::Response::new(HelloReply { message: format!("hello {caller}") }))
//!     }
//! }
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! tonic::transport::Server::builder()
//!     .add_service(GreeterServer::new(MyGreeter))
//!     .serve_with_incoming(server.acceptor().incoming(listener))
//!     .await?;
//! ```
//!
//! The client connects through meshtls and uses the generated client:
//!
//! ```rust,ignore
//! let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051");
//! let channel = meshtls::tonic::channel(&client, endpoint, "localhost").await?;
//! let reply = proto::greeter_client::GreeterClient::new(channel)
//!     .say_hello(HelloRequest { name: "world".into() })
//!     .await?;
//! ```
//!
//! (Both marked `ignore` here: they need the build script's output.)
//!
//! # Authorization per service
//!
//! The listener's allow-list says who may connect; [`RequirePeer`], an
//! interceptor, says who may call a service, with the same rules judged
//! with the server's settings. Others get `PermissionDenied` naming them,
//! and the server reports the refusal (event, counter, metric):
//!
//! ```no_run
//! # fn wrap<S>(server: &meshtls::ServerTls, svc: S) -> Result<(), meshtls::error::RuleError> {
//! use meshtls::Allow;
//! let admins = server.require_peer([Allow::spiffe_id("spiffe://prod.example/ns/ops/sa/admin")])?;
//! let guarded = tonic::service::interceptor::InterceptedService::new(svc, admins);
//! # let _ = guarded;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::accept::{Incoming, MtlsStream, PeerInfo};
use crate::client::ClientTls;
use crate::identity::PeerIdentity;

impl Connected for MtlsStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info().clone()
    }
}

impl futures_core::Stream for Incoming {
    type Item = Result<MtlsStream, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_next_conn(cx).map(|next| next.map(Ok))
    }
}

/// The caller's identity, in a handler (or interceptor) of a server fed by
/// [`Incoming`].
#[must_use]
pub fn peer<T>(request: &tonic::Request<T>) -> Option<&PeerIdentity> {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|info| &info.identity)
}

/// Connects a tonic `Channel` to `endpoint` through meshtls: the client's
/// current certificate is presented, and the server is verified as the
/// client was built to (dialled name, or `expect_server` identity).
/// `server_name` is sent as SNI (and checked, without `expect_server`).
///
/// Build the client with `.alpn_protocols([b"h2".to_vec()])` for servers
/// that require ALPN (most non-Rust gRPC servers).
///
/// **When a refusal shows.** If the server refuses *our* certificate (not
/// on its allow-list, revoked, from a CA it does not trust), TLS 1.3 lets
/// the client finish its handshake first: `channel()` succeeds, and the
/// first RPC fails with `Status` `Unknown` "transport error". Pass that
/// status to [`refused`](crate::refused) for the reason (`NotAllowed`,
/// `Revoked`, ... with the peer's alert). If *we* refuse the server, the
/// error comes from `channel()` itself (or the RPC that reconnects).
///
/// # Errors
///
/// If the first connection fails.
pub async fn channel(
    client: &ClientTls,
    endpoint: Endpoint,
    server_name: &str,
) -> Result<Channel, tonic::transport::Error> {
    let connector = client.connector();
    let server_name = server_name.to_owned();
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: http::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let host = uri.host().unwrap_or("localhost");
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = uri.port_u16().unwrap_or(443);
                let tcp = TcpStream::connect((host, port)).await?;
                let (tls, _server) = connector.connect(&server_name, tcp).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(tls))
            }
        }))
        .await
}

/// The interceptor for a service (`InterceptedService::new(svc, require)`,
/// or `Server::layer` with `tonic::service::InterceptorLayer` for every
/// service): `PermissionDenied` for peers its rules do not admit.
pub use crate::judge::RequirePeer;

impl tonic::service::Interceptor for RequirePeer {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(identity) = peer(&request) else {
            return Err(tonic::Status::permission_denied(
                "no mTLS peer identity on this request (serve with meshtls's Incoming)",
            ));
        };
        match self.judge(identity, "service call") {
            Ok(()) => Ok(request),
            Err(refusal) => Err(tonic::Status::permission_denied(format!(
                "{} may not call this service",
                refusal.peer
            ))),
        }
    }
}
