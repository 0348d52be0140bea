//! Red team of issue 23 ("one judgment in fact"): holes where the change
//! meets the features already there. Each finding has a test asserting the
//! secure behaviour (it failed on the reviewed commit, 9048dd3; fixed since)
//! and a control beside it that passes.

mod common;

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::get;
use common::{
    Open, Pki, TD, assert_closed, bare_presenting, chain_of, closed_as, closed_within,
    echo_incoming, shop,
};
use meshtls::{Allow, Event, ManualClock, RejectReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

fn id(name: &str) -> String {
    shop(name)
}

// ---------------------------------------------------------------------------
// Finding 1: a kept verdict holds "from 0" (judge/mod.rs, `judge_live`'s
// `kept`). With `close_at_peer_expiry`, a certificate that is not valid yet
// closes a live connection (the table's KeptUnlessCloseAtExpiry row), and an
// admitted verdict (from = the path's notBefore) is judged again once the
// clock stands before it. A peer kept under a stale CRL carries
// `Holds { from: 0, .. }` instead, so `Holds::at` keeps saying "holds" when
// the clock steps back before its notBefore: a fresh handshake is refused
// (NotYetValid, which closes when asked) while the live connection stays.
// ---------------------------------------------------------------------------

/// A peer valid from `start - 60 s` is connected at `start`; with
/// `stale_first`, the CRL goes stale first (the peer is kept). Then the clock
/// steps back to before the peer's notBefore (the CRL is fresh again there),
/// and a bystander connects, which makes the sweeper sweep. Returns the
/// closing seen, if any, and whether the peer still talks.
async fn stepped_back_before_not_before(
    stale_first: bool,
) -> (Option<(RejectReason, String)>, bool) {
    let pki = Pki::new();
    let start = SystemTime::now();
    let time = ManualClock::new(start);
    let hour = Duration::from_secs(3600);
    let crl = pki.write(
        "ca.crl",
        pki.ca
            .crl_between(&[], start - 2 * hour, start + hour)
            .unwrap(),
    );
    let server = pki
        .server()
        .allow(Allow::spiffe_trust_domain(TD))
        .crl_file(&crl)
        .close_at_peer_expiry()
        .live_connection_grace(Duration::ZERO)
        .dangerous()
        .clock(time.clock())
        .build()
        .unwrap();
    let mut events = server.subscribe();
    let (addr, _echo) = echo_incoming(&server).await;

    let victim = pki
        .ca
        .leaf()
        .spiffe(&id("victim"))
        .client()
        .valid_between(start - Duration::from_secs(60), start + 24 * hour)
        .issue()
        .unwrap();
    let mut v = Open::connect(
        bare_presenting(pki.ca.cert_pem(), chain_of(&victim), victim.key_pem()),
        addr,
    )
    .await
    .unwrap();

    if stale_first {
        // The CRL goes stale: a kept reason, the connection stays.
        time.set(start + 2 * hour);
        if let Some(closed) = closed_within(&mut events, Duration::from_millis(500)).await {
            panic!("closed under a stale CRL: {closed:?}");
        }
        v.ping().await.unwrap();
    }

    // NTP steps the clock back ten minutes before the peer's notBefore (the
    // CRL is fresh again then). A fresh handshake by the peer is refused as
    // not yet valid, which closes under close_at_peer_expiry.
    time.set(start - 10 * 60 * Duration::from_secs(1));
    let bystander = pki
        .ca
        .leaf()
        .spiffe(&id("bystander"))
        .client()
        .valid_between(start - 3 * hour, start + hour / 2)
        .issue()
        .unwrap();
    // Tracking the bystander (a shorter verdict) rings the sweeper.
    let mut b = Open::connect(
        bare_presenting(pki.ca.cert_pem(), chain_of(&bystander), bystander.key_pem()),
        addr,
    )
    .await
    .expect("the bystander is admitted at the stepped-back time");
    let closed = closed_within(&mut events, Duration::from_secs(3)).await;
    let still_talks = v.ping().await.is_ok();
    b.ping().await.expect("the bystander stays");
    (closed, still_talks)
}

#[tokio::test]
async fn control_an_admitted_peer_is_closed_when_the_clock_steps_back_before_its_not_before() {
    assert_closed(
        stepped_back_before_not_before(false).await,
        "3 s",
        RejectReason::NotYetValid,
        "a peer not yet valid is still connected",
    );
}

#[tokio::test]
async fn a_peer_kept_under_a_stale_crl_is_closed_when_the_clock_steps_back_before_its_not_before() {
    let (closed, still_talks) = stepped_back_before_not_before(true).await;
    assert!(
        closed_as(&closed, RejectReason::NotYetValid) && !still_talks,
        "with close_at_peer_expiry, a peer kept under a stale CRL stayed connected 3 s after the \
         clock stepped back before its notBefore (a fresh handshake is refused NotYetValid, and an \
         admitted peer in the same place is closed): the kept verdict holds from 0 (closing seen: \
         {closed:?}, still answers: {still_talks})"
    );
}

// ---------------------------------------------------------------------------
// Finding 2: `RequirePeer` (axum) now reports a refused request as an
// `Event::Rejected` whose detail is "route {path}: ..." with the request's
// path as the peer sent it: up to 64 KiB, raw UTF-8 (no-break spaces, bidi
// controls), neither bounded nor escaped as other peer-chosen text is
// (`untrusted`: 128 characters). An admitted peer refused on one route
// writes what it likes into the server's events and its "handshake
// refused" lines, ahead of its own name.
// ---------------------------------------------------------------------------

/// Sends `GET {path}` as `web` (admitted by the listener, refused on
/// `/admin/...`) and returns the status line and the refusal's detail.
async fn refused_route(path: &str) -> (String, String) {
    let pki = Pki::new();
    let server = pki
        .server()
        .allow(Allow::spiffe_trust_domain(TD))
        .build()
        .unwrap();
    let admins = server
        .require_peer([Allow::spiffe_id(&id("admin"))])
        .unwrap();
    let mut events = server.subscribe();
    let app = Router::new().route(
        "/admin/{*rest}",
        get(|| async { "admin area" }).route_layer(admins),
    );
    let listener = meshtls::axum::MtlsListener::bind("127.0.0.1:0", &server)
        .await
        .unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(async move { meshtls::axum::serve(listener, app).await.unwrap() });

    let web = pki.client(&id("web")).build().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tls, _) = web.connector().connect("localhost", tcp).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.lines().next().unwrap_or_default().to_owned();
    let detail = next_rejection(&mut events).await;
    (status, detail)
}

async fn next_rejection(events: &mut broadcast::Receiver<Event>) -> String {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("no refusal reported within 10 s")
            .unwrap();
        if let Event::RequestRefused { reason, detail } = event {
            assert_eq!(reason, RejectReason::NotAllowed, "{detail}");
            return detail;
        }
    }
}

#[tokio::test]
async fn control_a_refused_route_is_reported_with_its_path_and_caller() {
    let (status, detail) = refused_route("/admin/reload").await;
    assert!(status.contains("403"), "{status}");
    assert!(
        detail.contains("route /admin/reload") && detail.contains(&id("web")),
        "{detail}"
    );
}

#[tokio::test]
async fn a_refused_routes_path_is_bounded_in_the_event() {
    // What the peer writes: a line that reads like another refusal, in
    // no-break spaces (U+00A0, which http accepts raw in a path) and a
    // right-to-left override, then 30 KB of padding before its own name.
    let nbsp = '\u{a0}';
    let fake = format!(
        "/admin/x:{nbsp}peer{nbsp}{}{nbsp}matches{nbsp}none\u{202e}",
        id("admin")
    );
    let path = format!("{fake}{}", "~".repeat(30_000));
    let (status, detail) = refused_route(&path).await;
    assert!(status.contains("403"), "{status}");
    let chars = detail.chars().count();
    assert!(
        chars <= 1024 && !detail.contains(&"~".repeat(200)) && !detail.contains('\u{202e}'),
        "an admitted peer refused on a route wrote its request path verbatim into the server's \
         Event::RequestRefused: {chars} characters, its own name only after them (a right-to-left \
         override kept too: {}), starting {:?}",
        detail.contains('\u{202e}'),
        detail.chars().take(160).collect::<String>()
    );
}
