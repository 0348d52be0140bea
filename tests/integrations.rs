//! axum, tonic, reqwest and hyper over meshtls, on loopback.

mod common;
#[path = "common/greet.rs"]
mod greet;
#[path = "../examples/greeter/mod.rs"]
mod greeter;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use common::web::{h2, reqwest_builder, serve_axum, url};
use common::{Pki, replace, server_id, shop, svid, td_pattern};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use meshtls::{Allow, ClientTls, PeerIdentity, PeerInfo, ServerTls};

async fn whoami(
    peer: PeerIdentity,
    ConnectInfo(info): ConnectInfo<PeerInfo>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "spiffe_id": peer.spiffe_id().map(|i| i.to_string()),
        "serial": peer.serial(),
        "from_loopback": info.remote_addr.ip().is_loopback(),
    }))
}

async fn start_axum(server: &ServerTls) -> SocketAddr {
    // A finer, per-route decision on the identity meshtls verified.
    let admins = meshtls::axum::RequirePeer::new([Allow::spiffe_id(&shop("ops"))]).unwrap();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/admin", get(|| async { "welcome" }).route_layer(admins));
    serve_axum(server, app).await
}

fn reqwest_client(client: &ClientTls, addr: SocketAddr) -> reqwest::Client {
    reqwest_builder(client, addr)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn get_json(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), reqwest::Error> {
    let response = client.get(url(addr, path)).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

#[tokio::test]
async fn axum_handlers_see_who_calls() {
    let pki = Pki::new();
    let server = pki.server_allow(td_pattern("ns/shop/**")).build().unwrap();
    let addr = start_axum(&server).await;

    let web = reqwest_client(&pki.client(&shop("web")).build().unwrap(), addr);
    let ops = reqwest_client(&pki.client(&shop("ops")).build().unwrap(), addr);

    let (status, body) = get_json(&web, addr, "/whoami").await.unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["spiffe_id"], shop("web"));
    assert_eq!(json["from_loopback"], true);
    let (_, body) = get_json(&ops, addr, "/whoami").await.unwrap();
    assert!(body.contains(&shop("ops")), "{body}");

    // Two identities, two answers from the same route.
    let (status, body) = get_json(&web, addr, "/admin").await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not call this route"), "{body}");
    assert_eq!(
        get_json(&ops, addr, "/admin").await.unwrap(),
        (200, "welcome".into())
    );

    // Outside the allow-list: no HTTP at all.
    let outsider = reqwest_client(&pki.client(&svid("other", "x")).build().unwrap(), addr);
    let err = get_json(&outsider, addr, "/whoami").await.unwrap_err();
    assert!(format!("{err:?}").contains("AccessDenied"), "{err:?}");
}

#[tokio::test]
async fn reqwest_presents_the_rotated_client_certificate() {
    let pki = Pki::new();
    let server = pki.server_admitting(&shop("web")).build().unwrap();
    let addr = start_axum(&server).await;

    let first = pki.client_cert(&shop("web"));
    let (cert, key) = pki.write_cert("web", &first);
    // A resumed session carries the identity it was made with: resumption
    // is off, to see each handshake's certificate.
    let client = pki.rotating_client(&cert, &key, Duration::from_millis(20));
    let http = reqwest_client(&client, addr);
    let serial = |body: String| {
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    assert_eq!(
        serial(get_json(&http, addr, "/whoami").await.unwrap().1),
        first.serial()
    );
    let next = pki.client_cert(&shop("web"));
    replace(&cert, next.chain_pem());
    replace(&key, next.key_pem());
    let mut seen = String::new();
    for _ in 0..100 {
        seen = serial(get_json(&http, addr, "/whoami").await.unwrap().1);
        if seen == next.serial() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        next.serial(),
        "the same reqwest client never presented the new certificate"
    );
}

#[tokio::test]
async fn hyper_over_the_meshtls_connector() {
    let pki = Pki::new();
    let server = pki.server_admitting(&shop("web")).build().unwrap();
    let addr = start_axum(&server).await;
    let client = pki
        .client(&shop("web"))
        .expect_server(Allow::spiffe_id(&server_id()))
        .build()
        .unwrap();

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tls, server_id) = client.connector().connect("localhost", tcp).await.unwrap();
    assert_eq!(server_id.spiffe_id().unwrap().path(), "/ns/billing/sa/api");
    // No ALPN asked for by this client: none chosen.
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);

    // MtlsListener offers h2 and http/1.1 though the server set no ALPN.
    for (offer, chosen) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], b"h2".as_slice()),
        (vec![b"http/1.1".to_vec()], b"http/1.1".as_slice()),
    ] {
        let alpn_client = pki
            .client(&shop("web"))
            .alpn_protocols(offer)
            .build()
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (alpn_tls, _) = alpn_client
            .connector()
            .connect("localhost", tcp)
            .await
            .unwrap();
        assert_eq!(alpn_tls.get_ref().1.alpn_protocol(), Some(chosen));
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get("/whoami")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains(&shop("web")));
}

#[tokio::test]
async fn tonic_handler_reads_the_caller_identity() {
    let pki = Pki::new();
    let server = pki.grpc_server_admitting(&shop("web")).build().unwrap();
    let (endpoint, _serving) = greet::serve_greeter(&server).await;

    let api = server_id();
    let web = pki
        .client(&shop("web"))
        .expect_server(Allow::spiffe_id(&api))
        .alpn_protocols(h2())
        .build()
        .unwrap();
    let reply = greet::hello(&web, endpoint.clone()).await.unwrap();
    assert_eq!(reply, format!("hello {}, you said \"hi\"", shop("web")));

    // Another identity never reaches the handler.
    let other = pki
        .client(&shop("intruder"))
        .expect_server(Allow::spiffe_id(&api))
        .alpn_protocols(h2())
        .build()
        .unwrap();
    let refused = greet::hello(&other, endpoint).await.unwrap_err().said;
    assert!(refused.contains("AccessDenied"), "{refused}");
}
