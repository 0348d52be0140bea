//! `meshtls::refused` finds the typed refusal in the errors a refused client
//! actually gets from reqwest, hyper and tonic, whichever side refused.

mod common;
#[path = "common/greet.rs"]
mod greet;
#[path = "../examples/greeter/mod.rs"]
mod greeter;

use std::net::SocketAddr;
use std::time::Duration;

use common::web::{endpoint, reqwest_builder, serve_axum, serve_grpc, url};
use common::{Pki, replace, shop};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use meshtls::rustls::AlertDescription;
use meshtls::{Allow, ClientTls, RefusedBy, RejectReason, ServerTls, refused};

async fn axum_server(server: &ServerTls) -> SocketAddr {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    serve_axum(server, app).await
}

async fn reqwest_get(client: &ClientTls, addr: SocketAddr) -> reqwest::Error {
    let http = reqwest_builder(client, addr).build().unwrap();
    http.get(url(addr, "/"))
        .send()
        .await
        .expect_err("the request went through")
}

#[tokio::test]
async fn reqwest_refused_by_the_allow_list_and_by_a_crl() {
    let pki = Pki::new();
    let crl = pki.write_crl(&[]);
    let server = pki
        .server_admitting(&shop("web"))
        .crl_file(&crl)
        .build()
        .unwrap();
    let addr = axum_server(&server).await;

    // Off the allow-list: the server's access_denied alert.
    let other = pki.client(&shop("other")).build().unwrap();
    let error = reqwest_get(&other, addr).await;
    let found = refused(&error).unwrap_or_else(|| panic!("nothing found in {error:?}"));
    assert_eq!(found.reason, RejectReason::NotAllowed, "{found}");
    assert_eq!(found.by, RefusedBy::Peer);
    assert_eq!(found.alert, Some(AlertDescription::AccessDenied));
    assert!(found.to_string().contains("the peer refused us"), "{found}");

    // Revoked: certificate_revoked.
    let web_cert = pki.client_cert(&shop("web"));
    let web = pki.client_with(&web_cert).build().unwrap();
    replace(
        &crl,
        pki.ca.crl(&[&web_cert], Duration::from_secs(3600)).unwrap(),
    );
    server.reload().unwrap();
    let error = reqwest_get(&web, addr).await;
    let found = refused(&error).unwrap_or_else(|| panic!("nothing found in {error:?}"));
    assert_eq!(found.reason, RejectReason::Revoked, "{found}");
    assert_eq!(found.alert, Some(AlertDescription::CertificateRevoked));
}

/// Over HTTP/2 only the alert's words reach the client (h2 keeps an I/O
/// error as its kind and words): they are still found, there.
#[tokio::test]
async fn reqwest_over_http2_refused_by_the_allow_list() {
    let pki = Pki::new();
    let server = pki.grpc_server_admitting(&shop("web")).build().unwrap();
    let addr = axum_server(&server).await;
    let other = pki.grpc_client(&shop("other")).build().unwrap();
    let http = reqwest_builder(&other, addr)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let error = http
        .get(url(addr, "/"))
        .send()
        .await
        .expect_err("the request went through");
    let found = refused(&error).unwrap_or_else(|| panic!("nothing found in {error:?}"));
    assert_eq!(found.reason, RejectReason::NotAllowed, "{found}");
    assert_eq!(found.by, RefusedBy::Peer);
    assert_eq!(found.alert, Some(AlertDescription::AccessDenied));
}

#[tokio::test]
async fn reqwest_refusing_a_server_from_another_ca() {
    let pki = Pki::new();
    let elsewhere = Pki::named("another root");
    let server = elsewhere.server_td().build().unwrap();
    let addr = axum_server(&server).await;
    let client = pki.client(&shop("web")).build().unwrap();
    let error = reqwest_get(&client, addr).await;
    let found = refused(&error).unwrap_or_else(|| panic!("nothing found in {error:?}"));
    assert_eq!(found.reason, RejectReason::UnknownIssuer, "{found}");
    assert_eq!(found.by, RefusedBy::Us);
    assert_eq!(found.alert, None);
}

#[tokio::test]
async fn hyper_over_the_connector_refused_and_refusing() {
    let pki = Pki::new();
    let server = pki.server_admitting(&shop("web")).build().unwrap();
    let addr = axum_server(&server).await;

    // The server refuses us: seen on the first request, not on connect.
    let other = pki.client(&shop("other")).build().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tls, _) = other.connector().connect("localhost", tcp).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get("/")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let error = sender.send_request(request).await.unwrap_err();
    // The request's error, or the connection task's, which saw the alert.
    let found = match refused(&error) {
        Some(found) => found,
        None => match tokio::time::timeout(Duration::from_secs(10), conn).await {
            Ok(Ok(Err(conn_error))) => refused(&conn_error)
                .unwrap_or_else(|| panic!("nothing found in {error:?} or {conn_error:?}")),
            other => panic!("nothing found in {error:?}; connection: {other:?}"),
        },
    };
    assert_eq!(found.reason, RejectReason::NotAllowed, "{found}");
    assert_eq!(found.by, RefusedBy::Peer);

    // We refuse the server: not the identity we expect.
    let picky = pki
        .client(&shop("web"))
        .expect_server(Allow::spiffe_id(&shop("someone-else")))
        .build()
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let error = picky
        .connector()
        .connect("localhost", tcp)
        .await
        .unwrap_err();
    let found = refused(&error).unwrap();
    assert_eq!(found.reason, RejectReason::NotAllowed);
    assert_eq!(found.by, RefusedBy::Us);
    // The refusal names the rules it tried.
    assert!(
        found
            .detail
            .contains("matches none of the 1 allow rule(s): spiffe://"),
        "{found}"
    );
    assert!(found.detail.contains("someone-else"), "{found}");
}

#[tokio::test]
async fn tonic_refused_with_the_reason() {
    let pki = Pki::new();
    let server = pki.grpc_server_admitting(&shop("web")).build().unwrap();
    let (endpoint, _serving) = greet::serve_greeter(&server).await;
    let other = pki.grpc_client(&shop("other")).build().unwrap();
    let failed = greet::hello(&other, endpoint).await.unwrap_err();
    let found = failed
        .refused
        .unwrap_or_else(|| panic!("no refusal found in tonic's error: {}", failed.said));
    assert_eq!(found.reason, RejectReason::NotAllowed, "{found}");
    assert_eq!(found.by, RefusedBy::Peer);
    assert_eq!(found.alert, Some(AlertDescription::AccessDenied));
}

/// Words a server chose, made to look like rustls's.
const SPOOF: &str = "upstream said: received fatal alert: CertificateRevoked";

/// A Greeter whose every answer is an error status carrying [`SPOOF`].
struct Liar(tonic::Code);

#[tonic::async_trait]
impl greeter::proto::greeter_server::Greeter for Liar {
    async fn say_hello(
        &self,
        _request: tonic::Request<greeter::proto::HelloRequest>,
    ) -> Result<tonic::Response<greeter::proto::HelloReply>, tonic::Status> {
        Err(tonic::Status::new(self.0, SPOOF))
    }
}

/// A gRPC status message is the server's text, not a TLS alert: over a
/// connection both sides admitted, a status whose message quotes rustls's
/// words is not a refusal (issue 19, defect 7).
#[tokio::test]
async fn a_status_message_that_quotes_an_alert_is_not_a_refusal() {
    let pki = Pki::new();
    let server = pki.grpc_server_admitting(&shop("web")).build().unwrap();
    let web = pki.grpc_client(&shop("web")).build().unwrap();
    for code in [
        tonic::Code::PermissionDenied,
        tonic::Code::Unavailable,
        tonic::Code::Internal,
        tonic::Code::Unknown,
    ] {
        let service = greeter::proto::greeter_server::GreeterServer::new(Liar(code));
        let (addr, serving) = serve_grpc(&server, tonic::service::Routes::new(service)).await;
        let endpoint = endpoint(addr);
        let channel = meshtls::tonic::channel(&web, endpoint, "localhost")
            .await
            .expect("the mTLS connection itself was refused");
        let status = greeter::say_hello(channel, "hi").await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains("CertificateRevoked"),
            "{status:?}"
        );
        assert_eq!(
            refused(&status),
            None,
            "a {code:?} status whose message the server chose was read as a refusal: {status:?}"
        );
        serving.abort();
    }
}

/// An HTTP/2 server that admits the client (mTLS), then ends the connection
/// with a GOAWAY whose debug data (text the server chose) quotes rustls's
/// words for an alert.
async fn goaway_server(server: &ServerTls) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok((mut tls, _peer)) = acceptor.accept(tcp).await else {
                    return;
                };
                // The client's preface (24 bytes) and whatever follows.
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let debug = b"received fatal alert: CertificateRevoked";
                let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0]; // SETTINGS, empty
                let len = 8 + debug.len();
                frames.extend_from_slice(&[0, 0, len as u8, 0x7, 0, 0, 0, 0, 0]); // GOAWAY
                frames.extend_from_slice(&[0, 0, 0, 0]); // last stream: none
                frames.extend_from_slice(&[0, 0, 0, 0x2]); // INTERNAL_ERROR
                frames.extend_from_slice(debug);
                let _ = tls.write_all(&frames).await;
                let _ = tls.flush().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Text a peer put in an HTTP/2 GOAWAY, and I/O errors whose message
/// quotes an alert, are not TLS refusals either (issue 19, defect 7).
#[tokio::test]
async fn alert_words_outside_a_tls_failure_are_not_a_refusal() {
    let pki = Pki::new();
    let server = pki.grpc_server_admitting(&shop("web")).build().unwrap();
    let web = pki.grpc_client(&shop("web")).build().unwrap();
    let addr = goaway_server(&server).await;

    // reqwest over HTTP/2: the GOAWAY's debug data is in its error's words.
    let http = reqwest_builder(&web, addr)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let error = http
        .get(url(addr, "/"))
        .send()
        .await
        .expect_err("the GOAWAY server answered");
    let mut words = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = next {
        words.push_str(&format!("{e} / "));
        next = e.source();
    }
    assert!(words.contains("CertificateRevoked"), "{words}");
    assert_eq!(
        refused(&error),
        None,
        "a GOAWAY's debug data was read as a refusal: {words}"
    );

    // tonic over the same.
    let failed = greet::hello(&web, endpoint(addr)).await.unwrap_err();
    assert_eq!(failed.refused, None, "{}", failed.said);

    // I/O errors an application made, with rustls's words or close to them.
    for error in [
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRevoked",
        ),
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, SPOOF),
        std::io::Error::other(format!("body: {SPOOF}")),
    ] {
        assert_eq!(refused(&error), None, "{error}");
    }
}
