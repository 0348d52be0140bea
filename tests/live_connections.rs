//! Live connections follow policy: a connection whose peer the policy stops
//! admitting (revoked, removed from the allow-list, its CA dropped) is
//! closed after the grace period, with an event and a counted reason; other
//! connections are untouched; with `keep_live_connections` nothing closes.

mod common;
#[path = "../examples/greeter/mod.rs"]
mod greeter;

use std::net::SocketAddr;
use std::time::Duration;

use common::web::{endpoint, h2, serve_axum, serve_grpc};
use common::{
    BuilderExt, Kept, Open, Pki, TD, assert_nothing_closed, client_of, current_thread,
    echo_reporting, events_and_echo, next_closed, replace, shop,
};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use meshtls::dev::DevCa;
use meshtls::{Allow, ClientTls, RejectReason, ServerTls};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_millis(300);
const DEBOUNCE: Duration = Duration::from_millis(50);

/// A new connection by `client` is refused by the server as revoked (the
/// client sees the certificate_revoked alert on its first read).
async fn assert_victim_refused(client: &ClientTls, addr: SocketAddr) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let error = match client.connector().connect("localhost", tcp).await {
        Err(e) => meshtls::refused(&e),
        Ok((tls, _)) => {
            let mut line = BufReader::new(tls);
            line.get_mut().write_all(b"ping\n").await.unwrap();
            let mut answer = String::new();
            match line.read_line(&mut answer).await {
                Err(e) => meshtls::refused(&e),
                Ok(n) => panic!("admitted after revocation: read {n} bytes"),
            }
        }
    };
    let refused = error.expect("no refusal in the error");
    assert_eq!(refused.reason, RejectReason::Revoked, "{refused}");
}

fn revoking_server(pki: &Pki, crl: &std::path::Path) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
    pki.server_td()
        .crl_file(crl)
        .debounce(DEBOUNCE)
        .live_connection_grace(GRACE)
}

#[tokio::test]
async fn a_revoked_clients_connection_is_closed_and_the_others_stay() {
    let pki = Pki::new();
    let crl = pki.write_crl(&[]);
    let server = revoking_server(&pki, &crl).watch().unwrap();
    let mut events = server.subscribe();
    let (addr, mut ended) = echo_reporting(&server).await;

    let victim_cert = pki.client_cert(&shop("victim"));
    let victim = pki.client_with(&victim_cert).build().unwrap();
    let bystander = pki.client(&shop("bystander")).build().unwrap();
    let mut victim_line = Open::meshtls(&victim, addr).await;
    let mut bystander_line = Open::meshtls(&bystander, addr).await;
    victim_line.ping().await.unwrap();
    bystander_line.ping().await.unwrap();
    assert_eq!(server.stats().live_connections, 2);

    let revoked_at = std::time::Instant::now();
    replace(
        &crl,
        pki.ca
            .crl(&[&victim_cert], Duration::from_secs(3600))
            .unwrap(),
    );
    let (reason, detail) = next_closed(&mut events).await;
    assert_eq!(reason, RejectReason::Revoked);
    assert!(detail.contains(&shop("victim")), "{detail}");
    assert!(
        revoked_at.elapsed() >= GRACE,
        "closed before the grace period was over"
    );

    // The server's side of the connection ends with the reason...
    let server_side = tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        server_side.contains("closed by meshtls: certificate revoked"),
        "{server_side}"
    );
    // ... the client's next request fails ...
    assert!(victim_line.ping().await.is_err());
    // ... another client's connection is untouched, and counted.
    bystander_line.ping().await.unwrap();
    let stats = server.stats();
    assert_eq!(stats.closed_for(RejectReason::Revoked), 1);
    assert_eq!(stats.live_connections, 1);
    // A new handshake by the victim is refused too, as revoked.
    assert_victim_refused(&victim, addr).await;
}

#[tokio::test]
async fn revoked_http1_keep_alive_and_grpc_channel_close_others_stay() {
    let pki = Pki::new();
    let crl = pki.write_crl(&[]);
    let server = revoking_server(&pki, &crl)
        .alpn_protocols([b"h2".to_vec(), b"http/1.1".to_vec()])
        .watch()
        .unwrap();
    let mut events = server.subscribe();

    // axum, HTTP/1.1 keep-alive.
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let http_addr = serve_axum(&server, app).await;
    // tonic, HTTP/2.
    let (grpc_addr, _serving) =
        serve_grpc(&server, tonic::service::Routes::new(greeter::server())).await;

    let http_cert = pki.client_cert(&shop("http-victim"));
    let grpc_cert = pki.client_cert(&shop("grpc-victim"));
    let http_victim = pki
        .client_with(&http_cert)
        .alpn_protocols([b"http/1.1".to_vec()])
        .build()
        .unwrap();
    let grpc_victim = pki
        .client_with(&grpc_cert)
        .alpn_protocols(h2())
        .build()
        .unwrap();
    let bystander = pki.grpc_client(&shop("bystander")).build().unwrap();

    let tcp = TcpStream::connect(http_addr).await.unwrap();
    let (tls, _) = http_victim
        .connector()
        .connect("localhost", tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let http_conn = tokio::spawn(conn);
    let get = || {
        hyper::Request::get("/")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let response = sender.send_request(get()).await.unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );

    let endpoint = endpoint(grpc_addr);
    let grpc = meshtls::tonic::channel(&grpc_victim, endpoint.clone(), "localhost")
        .await
        .unwrap();
    greeter::say_hello(grpc.clone(), "hi").await.unwrap();
    let other = meshtls::tonic::channel(&bystander, endpoint, "localhost")
        .await
        .unwrap();
    greeter::say_hello(other.clone(), "hi").await.unwrap();
    assert_eq!(server.stats().live_connections, 3);

    replace(
        &crl,
        pki.ca
            .crl(&[&http_cert, &grpc_cert], Duration::from_secs(3600))
            .unwrap(),
    );
    let mut closed = vec![
        next_closed(&mut events).await,
        next_closed(&mut events).await,
    ];
    closed.sort_by(|a, b| a.1.cmp(&b.1));
    assert!(closed.iter().all(|(r, _)| *r == RejectReason::Revoked));
    assert!(closed[0].1.contains(&shop("grpc-victim")), "{closed:?}");
    assert!(closed[1].1.contains(&shop("http-victim")), "{closed:?}");

    // The HTTP/1.1 connection has ended; a request on it fails.
    let ended = tokio::time::timeout(Duration::from_secs(10), http_conn)
        .await
        .expect("the keep-alive connection stayed open");
    drop(ended);
    assert!(sender.send_request(get()).await.is_err());
    // The revoked gRPC caller's next call fails (the channel's reconnect is
    // refused: revoked); the bystander's channel is untouched.
    let refused = greeter::say_hello(grpc, "hi").await.unwrap_err();
    assert_ne!(refused.code(), tonic::Code::Ok);
    greeter::say_hello(other, "still here").await.unwrap();
    assert_eq!(server.stats().closed_for(RejectReason::Revoked), 2);
}

#[tokio::test]
async fn removal_from_the_allow_list_closes_the_connection() {
    let pki = Pki::new();
    let server = pki
        .server_admitting_shop(&["a", "b"])
        .live_connection_grace(GRACE)
        .build()
        .unwrap();
    let (mut events, addr) = events_and_echo(&server).await;
    let mut a = Open::meshtls(&pki.client(&shop("a")).build().unwrap(), addr).await;
    let mut b = Open::meshtls(&pki.client(&shop("b")).build().unwrap(), addr).await;
    a.ping().await.unwrap();
    b.ping().await.unwrap();

    server
        .set_allow_list([Allow::spiffe_id(&shop("b"))])
        .unwrap();
    let (reason, detail) = next_closed(&mut events).await;
    assert_eq!(reason, RejectReason::NotAllowed);
    assert!(detail.contains(&shop("a")), "{detail}");
    assert!(a.ping().await.is_err());
    b.ping().await.unwrap();
    assert_eq!(server.stats().closed_for(RejectReason::NotAllowed), 1);
}

#[tokio::test]
async fn a_ca_dropped_from_the_bundle_closes_its_clients_connections() {
    let pki = Pki::new();
    let other_ca = DevCa::new("meshtls second root").unwrap();
    let roots = pki.roots_with(&other_ca);
    let server = pki
        .server_with_roots(&roots)
        .allow(Allow::spiffe_trust_domain(TD))
        .debounce(DEBOUNCE)
        .live_connection_grace(GRACE)
        .watch()
        .unwrap();
    let (mut events, addr) = events_and_echo(&server).await;

    let from_old = pki.client(&shop("old-ca")).build().unwrap();
    let new_cert = client_of(&other_ca, &shop("new-ca"));
    let from_new = pki.client_with(&new_cert).build().unwrap();
    let mut old_line = Open::meshtls(&from_old, addr).await;
    let mut new_line = Open::meshtls(&from_new, addr).await;
    old_line.ping().await.unwrap();
    new_line.ping().await.unwrap();

    // The rotation of the client CA ends: only the new root is trusted.
    replace(&roots, other_ca.cert_pem());
    let (reason, detail) = next_closed(&mut events).await;
    assert_eq!(reason, RejectReason::UnknownIssuer);
    assert!(detail.contains(&shop("old-ca")), "{detail}");
    assert!(old_line.ping().await.is_err());
    new_line.ping().await.unwrap();
}

#[tokio::test]
async fn with_keep_live_connections_nothing_closes() {
    let pki = Pki::new();
    let crl = pki.write_crl(&[]);
    let server = revoking_server(&pki, &crl)
        .keep_live_connections()
        .watch()
        .unwrap();
    let (mut events, addr) = events_and_echo(&server).await;
    let cert = pki.client_cert(&shop("victim"));
    let client = pki.client_with(&cert).build().unwrap();
    let mut line = Open::meshtls(&client, addr).await;
    line.ping().await.unwrap();

    replace(
        &crl,
        pki.ca.crl(&[&cert], Duration::from_secs(3600)).unwrap(),
    );
    // The reload happened (new handshakes are refused) ...
    for _ in 0..100 {
        if server.stats().generation > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.stats().generation, 2, "the CRL was not reloaded");
    assert_victim_refused(&client, addr).await;
    // ... but the live connection stays.
    assert_nothing_closed(&mut events, GRACE * 4).await;
    line.ping().await.unwrap();
    assert!(server.stats().connections_closed.is_empty());
    assert_eq!(server.stats().live_connections, 1);
}

#[tokio::test]
async fn a_client_closes_its_connection_to_a_revoked_server_with_the_reason() {
    let pki = Pki::new();
    let server_cert = pki.server_cert();
    let (cert, key) = pki.write_cert("server", &server_cert);
    let server = ServerTls::builder()
        .identity_files(cert, key)
        .client_roots_file(pki.ca_file())
        .allow(Allow::spiffe_trust_domain(TD))
        .build()
        .unwrap();
    let (addr, _ended) = echo_reporting(&server).await;
    let crl = pki.write_crl(&[]);
    let client = pki
        .client(&shop("caller"))
        .crl_file(&crl)
        .debounce(DEBOUNCE)
        .live_connection_grace(Duration::ZERO)
        .watch()
        .unwrap();
    let mut events = client.subscribe();
    let mut line = Open::meshtls(&client, addr).await;
    line.ping().await.unwrap();

    replace(
        &crl,
        pki.ca
            .crl(&[&server_cert], Duration::from_secs(3600))
            .unwrap(),
    );
    let (reason, _) = next_closed(&mut events).await;
    assert_eq!(reason, RejectReason::Revoked);
    let error = line.ping().await.unwrap_err();
    assert!(
        error.contains("closed by meshtls: certificate revoked"),
        "{error}"
    );
    assert!(line.get_ref().closed_by_policy().is_some());
}

#[tokio::test]
async fn closing_at_the_peers_expiry_is_opt_in() {
    let pki = Pki::new();
    let now = std::time::SystemTime::now();
    let short = pki.client_cert_between(
        &shop("short"),
        now - Duration::from_secs(60),
        now + Duration::from_secs(2),
    );
    let client = pki.client_with(&short).build().unwrap();

    let closing = pki
        .server_td()
        .live_connection_grace(Duration::ZERO)
        .close_at_peer_expiry()
        .build()
        .unwrap();
    let keeping = pki
        .server_td()
        .live_connection_grace(Duration::ZERO)
        .build()
        .unwrap();
    let mut closing_events = closing.subscribe();
    let mut keeping_events = keeping.subscribe();
    let (closing_addr, _a) = echo_reporting(&closing).await;
    let (keeping_addr, _b) = echo_reporting(&keeping).await;
    let mut closed_line = Open::meshtls(&client, closing_addr).await;
    let mut kept_line = Open::meshtls(&client, keeping_addr).await;
    closed_line.ping().await.unwrap();
    kept_line.ping().await.unwrap();

    let (reason, _) = next_closed(&mut closing_events).await;
    assert_eq!(reason, RejectReason::Expired);
    assert!(closed_line.ping().await.is_err());
    assert_nothing_closed(&mut keeping_events, Duration::from_secs(1)).await;
    kept_line.ping().await.unwrap();
}

/// Issue 19, defect 1: two peers whose certificates expire on live
/// connections (kept, by default) must not stop the sweeper; a peer revoked
/// afterwards is still disconnected.
#[tokio::test]
async fn expired_peers_on_live_connections_do_not_stop_the_sweeper() {
    let pki = Pki::new();
    let crl = pki.write_crl(&[]);
    let server = revoking_server(&pki, &crl).watch().unwrap();
    let (mut events, addr) = events_and_echo(&server).await;
    let now = std::time::SystemTime::now();
    let short = |name: &str, secs: u64| {
        let cert = pki.client_cert_between(
            &shop(name),
            now - Duration::from_secs(60),
            now + Duration::from_secs(secs),
        );
        pki.client_with(&cert).build().unwrap()
    };
    let mut first = Open::meshtls(&short("first", 2), addr).await;
    let mut second = Open::meshtls(&short("second", 3), addr).await;
    let victim_cert = pki.client_cert(&shop("victim"));
    let mut victim = Open::meshtls(&pki.client_with(&victim_cert).build().unwrap(), addr).await;
    first.ping().await.unwrap();
    second.ping().await.unwrap();
    victim.ping().await.unwrap();

    // Both short certificates expire; their connections are kept.
    tokio::time::sleep(Duration::from_secs(5)).await;
    first.ping().await.unwrap();
    second.ping().await.unwrap();

    replace(
        &crl,
        pki.ca
            .crl(&[&victim_cert], Duration::from_secs(3600))
            .unwrap(),
    );
    let (reason, detail) = next_closed(&mut events).await;
    assert_eq!(reason, RejectReason::Revoked, "{detail}");
    assert!(detail.contains(&shop("victim")), "{detail}");
    assert!(
        victim.ping().await.is_err(),
        "the revoked peer is still connected"
    );
}

/// Issue 19, defect 5: the sweeper must not depend on the runtime that
/// tracked the first connection. That runtime ends; a connection accepted
/// on another runtime is still closed when its peer is revoked.
#[tokio::test]
async fn the_sweeper_outlives_the_runtime_of_the_first_connection() {
    let pki = Pki::new();
    let crl = pki.write_crl(&[]);
    let server = revoking_server(&pki, &crl).watch().unwrap();
    let mut events = server.subscribe();

    // A start-up self-check on a runtime of its own, which then ends.
    {
        let server = server.clone();
        let check = pki.client(&shop("self-check")).build().unwrap();
        std::thread::spawn(move || {
            let runtime = current_thread();
            runtime.block_on(async {
                let (addr, _ended) = echo_reporting(&server).await;
                let mut line = Open::meshtls(&check, addr).await;
                line.ping().await.unwrap();
            });
        })
        .join()
        .unwrap();
    }

    let (addr, _ended) = echo_reporting(&server).await;
    let victim_cert = pki.client_cert(&shop("victim"));
    let mut victim = Open::meshtls(&pki.client_with(&victim_cert).build().unwrap(), addr).await;
    victim.ping().await.unwrap();
    replace(
        &crl,
        pki.ca
            .crl(&[&victim_cert], Duration::from_secs(3600))
            .unwrap(),
    );
    let (reason, _) = next_closed(&mut events).await;
    assert_eq!(reason, RejectReason::Revoked);
    assert!(
        victim.ping().await.is_err(),
        "the revoked peer is still connected"
    );
}

/// Issue 19, defect 3: a CA key rotation under one name ends by dropping the
/// old CA. Its clients' chains no longer verify (webpki says the signature
/// fails, not "unknown issuer"): their live connections must close too.
#[tokio::test]
async fn dropping_a_ca_after_a_same_name_rotation_closes_its_clients() {
    let old = Pki::named("rotating root");
    let new = DevCa::new("rotating root").unwrap();
    let roots = old.write(
        "roots.crt",
        format!("{}{}", old.ca.cert_pem(), new.cert_pem()),
    );
    // The server's own certificate comes from elsewhere (its own chain is
    // checked against these roots at every reload).
    let server_pki = Pki::named("server root");
    let (cert, key) = old.write_cert("server", &server_pki.server_cert());
    let server = ServerTls::builder()
        .identity_files(cert, key)
        .client_roots_file(&roots)
        .allow(Allow::spiffe_trust_domain(TD))
        .debounce(DEBOUNCE)
        .live_connection_grace(GRACE)
        .watch()
        .unwrap();
    let (mut events, addr) = events_and_echo(&server).await;
    let client_for = |cert: &meshtls::dev::DevCert| {
        let (c, k) = old.write_cert(&cert.serial().replace(':', ""), cert);
        ClientTls::builder()
            .identity_files(c, k)
            .server_roots_file(server_pki.ca_file())
            .build()
            .unwrap()
    };
    let mut of_old = Open::meshtls(&client_for(&old.client_cert(&shop("old-key"))), addr).await;
    let new_cert = client_of(&new, &shop("new-key"));
    let mut of_new = Open::meshtls(&client_for(&new_cert), addr).await;
    of_old.ping().await.unwrap();
    of_new.ping().await.unwrap();

    replace(&roots, new.cert_pem());
    let (reason, detail) = next_closed(&mut events).await;
    assert!(detail.contains(&shop("old-key")), "{reason}: {detail}");
    assert!(
        of_old.ping().await.is_err(),
        "the old CA's client is still connected"
    );
    of_new.ping().await.unwrap();
}

/// A server that closes at the peer's expiry, on a clock the test moves.
fn expiring_server(pki: &Pki, time: &meshtls::ManualClock) -> ServerTls {
    pki.server_td()
        .live_connection_grace(Duration::ZERO)
        .close_at_peer_expiry()
        .on_clock(time)
        .build()
        .unwrap()
}

/// A client whose certificate is valid for `life` from `start`.
fn client_valid_for(
    pki: &Pki,
    name: &str,
    start: std::time::SystemTime,
    life: Duration,
) -> ClientTls {
    let cert = pki.client_cert_between(&shop(name), start - Duration::from_secs(60), start + life);
    pki.client_with(&cert).build().unwrap()
}

/// Issue 19, defect 4: a connection opened while the sweeper sleeps toward
/// a later deadline must be scheduled for its own peer's expiry.
#[tokio::test]
async fn a_connection_opened_while_the_sweeper_waits_is_closed_at_its_peers_expiry() {
    let pki = Pki::new();
    let start = std::time::SystemTime::now();
    let time = meshtls::ManualClock::new(start);
    let server = expiring_server(&pki, &time);
    let (mut events, addr) = events_and_echo(&server).await;

    // The first connection's peer is valid for a day: the sweeper sleeps
    // toward that.
    let mut long = Open::meshtls(
        &client_valid_for(&pki, "long", start, Duration::from_secs(86_400)),
        addr,
    )
    .await;
    long.ping().await.unwrap();
    // Then a peer valid for an hour connects.
    let mut short = Open::meshtls(
        &client_valid_for(&pki, "short", start, Duration::from_secs(3600)),
        addr,
    )
    .await;
    short.ping().await.unwrap();

    time.advance(Duration::from_secs(2 * 3600));
    let (reason, detail) = next_closed(&mut events).await;
    assert_eq!(reason, RejectReason::Expired, "{detail}");
    assert!(detail.contains(&shop("short")), "{detail}");
    assert!(
        short.ping().await.is_err(),
        "the expired peer is still connected"
    );
    long.ping().await.unwrap();
}

/// Found while fixing issue 19: a connection kept because its peer expired
/// (expiry does not close by default) must still close when the peer is
/// then revoked; the judgment used to report only the expiry.
#[tokio::test]
async fn a_connection_kept_past_its_peers_expiry_closes_when_the_peer_is_revoked() {
    let mut kept = Kept::new(Duration::from_secs(86_400), revoking_server).await;
    let cert = kept.expiring_cert(&shop("expiring"));
    let mut line = Open::meshtls(&kept.pki.client_with(&cert).build().unwrap(), kept.addr).await;
    line.ping().await.unwrap();

    // Expired, and kept (the default).
    kept.two_hours_later();
    assert_nothing_closed(&mut kept.events, Duration::from_millis(300)).await;
    line.ping().await.unwrap();

    // Then revoked: the connection closes, as revoked.
    kept.revoke(&[&cert]);
    let (reason, detail) = next_closed(&mut kept.events).await;
    assert_eq!(reason, RejectReason::Revoked, "{detail}");
    assert!(
        line.ping().await.is_err(),
        "an expired, revoked peer is still connected"
    );
}

/// The same for a connection kept because its CRL went stale: removing the
/// peer from the allow-list closes it.
#[tokio::test]
async fn a_connection_kept_under_a_stale_crl_closes_when_the_peer_leaves_the_allow_list() {
    let mut kept = Kept::new(Duration::from_secs(3600), |pki, crl| {
        pki.server_admitting_shop(&["a", "b"]).crl_file(crl)
    })
    .await;
    let mut a = Open::meshtls(&kept.pki.client(&shop("a")).build().unwrap(), kept.addr).await;
    a.ping().await.unwrap();

    // The CRL goes stale: kept (a CRL publisher's outage closes nothing).
    kept.two_hours_later();
    assert_nothing_closed(&mut kept.events, Duration::from_millis(300)).await;
    a.ping().await.unwrap();

    kept.server
        .set_allow_list([Allow::spiffe_id(&shop("b"))])
        .unwrap();
    let (reason, detail) = next_closed(&mut kept.events).await;
    assert_eq!(reason, RejectReason::NotAllowed, "{detail}");
    assert!(
        a.ping().await.is_err(),
        "a peer off the allow-list is still connected"
    );
}
