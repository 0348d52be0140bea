//! HTTP and gRPC over meshtls: axum and tonic servers on loopback, reqwest
//! clients and tonic endpoints to call them.

use std::net::SocketAddr;

use meshtls::{ClientTls, ServerTls};

/// The ALPN of gRPC: HTTP/2 only.
pub fn h2() -> [Vec<u8>; 1] {
    [b"h2".to_vec()]
}

/// Serves `routes` with tonic on 127.0.0.1:0 through `server`'s acceptor;
/// the task is returned to be aborted.
pub async fn serve_grpc(
    server: &ServerTls,
    routes: tonic::service::Routes,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(server.acceptor().incoming(listener)),
    );
    (addr, serving)
}

/// A tonic endpoint for `addr` (plain `http://`: meshtls brings the TLS).
pub fn endpoint(addr: SocketAddr) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap()
}

/// Serves `app` with axum on a `MtlsListener` of `server` at 127.0.0.1:0.
pub async fn serve_axum(server: &ServerTls, app: axum::Router) -> SocketAddr {
    let listener = meshtls::axum::MtlsListener::bind("127.0.0.1:0", server)
        .await
        .unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(async move { meshtls::axum::serve(listener, app).await.unwrap() });
    addr
}

/// A reqwest client builder on `client`'s rustls config (its certificate
/// rotates with the files), resolving `localhost` to `addr`.
pub fn reqwest_builder(client: &ClientTls, addr: SocketAddr) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_preconfigured((*client.config()).clone())
        .resolve("localhost", addr)
}

/// `https://localhost:<port of addr><path>`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}
