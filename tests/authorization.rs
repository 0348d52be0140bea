//! Authorization per route (axum) and per service (tonic): two identities
//! the listener admits, two routes or services, each outcome.

mod common;
#[path = "common/greet.rs"]
mod greet;
#[path = "../examples/greeter/mod.rs"]
mod greeter;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use common::web::{endpoint, reqwest_builder, serve_axum, serve_grpc, url};
use common::{Pki, TD, shop};
use meshtls::{Allow, ClientTls, RejectReason, ServerTls};
use tonic::service::interceptor::InterceptedService;

fn server(pki: &Pki) -> ServerTls {
    // Both identities may connect.
    pki.server_td().build().unwrap()
}

async fn get_status(client: &ClientTls, addr: SocketAddr, path: &str) -> (u16, String) {
    let http = reqwest_builder(client, addr).build().unwrap();
    let response = http.get(url(addr, path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn axum_routes_admit_only_their_rules() {
    let pki = Pki::new();
    let server = server(&pki);
    let admins = server
        .require_peer(["spiffe://prod.example/ns/shop/sa/admin"
            .parse::<Allow>()
            .unwrap()])
        .unwrap();
    let mut events = server.subscribe();
    let app = Router::new()
        .route("/admin", get(|| async { "admin area" }).route_layer(admins))
        .route("/public", get(|| async { "hello" }));
    let addr = serve_axum(&server, app).await;

    let admin = pki.client(&shop("admin")).build().unwrap();
    let web = pki.client(&shop("web")).build().unwrap();
    assert_eq!(
        get_status(&admin, addr, "/admin").await,
        (200, "admin area".into())
    );
    assert_eq!(
        get_status(&admin, addr, "/public").await,
        (200, "hello".into())
    );
    assert_eq!(
        get_status(&web, addr, "/public").await,
        (200, "hello".into())
    );
    let (status, body) = get_status(&web, addr, "/admin").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&shop("web")) && body.contains("may not call this route"),
        "{body}"
    );
    // The rules are not told to the caller.
    assert!(!body.contains("sa/admin"), "{body}");
    // The server reports it: the event names the route and the caller, the
    // counter counts it.
    let (reason, detail) = next_rejection(&mut events).await;
    assert_eq!(reason, RejectReason::NotAllowed);
    assert!(
        detail.contains("route /admin") && detail.contains(&shop("web")),
        "{detail}"
    );
    // Counted apart from refused handshakes (there were none).
    assert_eq!(server.stats().requests_refused, 1);
    assert_eq!(server.stats().rejected_for(RejectReason::NotAllowed), 0);
}

/// The next refusal among a server's events.
async fn next_rejection(
    events: &mut tokio::sync::broadcast::Receiver<meshtls::Event>,
) -> (RejectReason, String) {
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
            .await
            .expect("no refusal reported")
            .unwrap();
        if let meshtls::Event::RequestRefused { reason, detail } = event {
            return (reason, detail);
        }
    }
}

#[test]
fn route_rules_follow_the_servers_settings() {
    let pki = Pki::new();
    // A server built with default settings refuses a cn: rule here as its
    // builder would in the allow-list.
    let default = server(&pki);
    let err = default.require_peer([Allow::cn("batch")]).unwrap_err();
    assert!(err.to_string().contains("allow_legacy_cn"), "{err}");
    // One that allows legacy CN rules takes it.
    let legacy = pki
        .server()
        .dangerous()
        .allow_legacy_cn()
        .allow(Allow::spiffe_trust_domain(TD))
        .build()
        .unwrap();
    legacy.require_peer([Allow::cn("batch")]).unwrap();
}

#[tokio::test]
async fn a_route_layer_outside_meshtls_refuses_rather_than_admits() {
    // Served by plain axum (no mTLS, no connect info): the layer cannot
    // know the caller, and must not let the request through.
    let admins = meshtls::axum::RequirePeer::new([Allow::spiffe_id(&shop("admin"))]).unwrap();
    let app = Router::new().route("/admin", get(|| async { "admin area" }).route_layer(admins));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(!response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("no mTLS peer identity"), "{response}");
}

#[tokio::test]
async fn tonic_services_admit_only_their_rules() {
    let pki = Pki::new();
    let server = server(&pki);
    let only_web = server
        .require_peer([Allow::spiffe_id(&shop("web"))])
        .unwrap();
    let mut events = server.subscribe();
    let service = InterceptedService::new(greeter::server(), only_web);
    let (addr, _serving) = serve_grpc(&server, tonic::service::Routes::new(service)).await;
    let endpoint = endpoint(addr);

    let web = pki.client(&shop("web")).build().unwrap();
    let reply = greet::hello(&web, endpoint.clone()).await.unwrap();
    assert!(reply.contains(&shop("web")), "{reply}");

    let other = pki.client(&shop("other")).build().unwrap();
    let failed = greet::hello(&other, endpoint).await.unwrap_err();
    let status = failed
        .status
        .unwrap_or_else(|| panic!("the connection itself failed: {}", failed.said));
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(&shop("other")), "{status:?}");
    let (reason, detail) = next_rejection(&mut events).await;
    assert_eq!(reason, RejectReason::NotAllowed);
    assert!(detail.contains(&shop("other")), "{detail}");
    // Counted apart from refused handshakes (there were none).
    assert_eq!(server.stats().requests_refused, 1);
    assert_eq!(server.stats().rejected_for(RejectReason::NotAllowed), 0);
}
