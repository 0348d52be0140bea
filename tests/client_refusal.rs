//! `meshtls::refused` finds the typed refusal in the errors a refused client
//! actually gets from reqwest, hyper and tonic, whichever side refused.

mod common;
#[path = "../examples/greeter/mod.rs"]
mod greeter;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Pki, TD, replace};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use meshtls::rustls::AlertDescription;
use meshtls::{Allow, ClientTls, RefusedBy, RejectReason, ServerTls, refused};

fn id(name: &str) -> String {
    format!("spiffe://{TD}/ns/shop/sa/{name}")
}

async fn axum_server(server: &ServerTls) -> SocketAddr {
    let listener = meshtls::axum::MtlsListener::bind("127.0.0.1:0", server)
        .await
        .unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { meshtls::axum::serve(listener, app).await.unwrap() });
    addr
}

async fn reqwest_get(client: &ClientTls, addr: SocketAddr) -> reqwest::Error {
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured((*client.config()).clone())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    http.get(format!("https://localhost:{}/", addr.port()))
        .send()
        .await
        .expect_err("the request went through")
}

#[tokio::test]
async fn reqwest_refused_by_the_allow_list_and_by_a_crl() {
    let pki = Pki::new();
    let crl = pki.write(
        "ca.crl",
        pki.ca.crl(&[], Duration::from_secs(3600)).unwrap(),
    );
    let server = pki
        .server()
        .allow(Allow::spiffe_id(&id("web")))
        .crl_file(&crl)
        .build()
        .unwrap();
    let addr = axum_server(&server).await;

    // Off the allow-list: the server's access_denied alert.
    let other = pki.client(&id("other")).build().unwrap();
    let error = reqwest_get(&other, addr).await;
    let found = refused(&error).unwrap_or_else(|| panic!("nothing found in {error:?}"));
    assert_eq!(found.reason, RejectReason::NotAllowed, "{found}");
    assert_eq!(found.by, RefusedBy::Peer);
    assert_eq!(found.alert, Some(AlertDescription::AccessDenied));
    assert!(found.to_string().contains("the peer refused us"), "{found}");

    // Revoked: certificate_revoked.
    let web_cert = pki.client_cert(&id("web"));
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

#[tokio::test]
async fn reqwest_refusing_a_server_from_another_ca() {
    let pki = Pki::new();
    let elsewhere = Pki::named("another root");
    let server = elsewhere
        .server()
        .allow(Allow::spiffe_trust_domain(TD))
        .build()
        .unwrap();
    let addr = axum_server(&server).await;
    let client = pki.client(&id("web")).build().unwrap();
    let error = reqwest_get(&client, addr).await;
    let found = refused(&error).unwrap_or_else(|| panic!("nothing found in {error:?}"));
    assert_eq!(found.reason, RejectReason::UnknownIssuer, "{found}");
    assert_eq!(found.by, RefusedBy::Us);
    assert_eq!(found.alert, None);
}

#[tokio::test]
async fn hyper_over_the_connector_refused_and_refusing() {
    let pki = Pki::new();
    let server = pki
        .server()
        .allow(Allow::spiffe_id(&id("web")))
        .build()
        .unwrap();
    let addr = axum_server(&server).await;

    // The server refuses us: seen on the first request, not on connect.
    let other = pki.client(&id("other")).build().unwrap();
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
        .client(&id("web"))
        .expect_server(Allow::spiffe_id(&id("someone-else")))
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
    let server = pki
        .server()
        .allow(Allow::spiffe_id(&id("web")))
        .alpn_protocols([b"h2".to_vec()])
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(greeter::server())
            .serve_with_incoming(server.acceptor().incoming(listener)),
    );
    let other = pki
        .client(&id("other"))
        .alpn_protocols([b"h2".to_vec()])
        .build()
        .unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let (found, said) = match meshtls::tonic::channel(&other, endpoint, "localhost").await {
        Err(e) => (refused(&e), format!("{e:?}")),
        Ok(channel) => {
            let status = greeter::say_hello(channel, "hi").await.unwrap_err();
            (refused(&status), format!("{status:?}"))
        }
    };
    let found = found.unwrap_or_else(|| panic!("no refusal found in tonic's error: {said}"));
    assert_eq!(found.reason, RejectReason::NotAllowed, "{found}");
    assert_eq!(found.by, RefusedBy::Peer);
    assert_eq!(found.alert, Some(AlertDescription::AccessDenied));
}
