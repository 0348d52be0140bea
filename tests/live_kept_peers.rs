//! Live connections whose peer is kept (expired, a stale CRL) are closed for
//! any other reason, whatever the peer appends to its chain; deadlines hold
//! when the clock steps back or a connection arrives during a sweep. Found
//! by the red team of issue 19: each hole has a test asserting the secure
//! behaviour (it failed before the fix) and a control beside it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{Pki, TD};
use meshtls::rustls;
use meshtls::rustls::pki_types::pem::PemObject;
use meshtls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use meshtls::{Allow, Event, ManualClock, RejectReason, ServerTls};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

fn id(name: &str) -> String {
    format!("spiffe://{TD}/ns/shop/sa/{name}")
}

/// Bytes in the chain that are no certificate at all (an empty SEQUENCE):
/// a peer may send anything after its leaf.
fn garbage() -> CertificateDer<'static> {
    CertificateDer::from(vec![0x30, 0x00])
}

/// A CA certificate unrelated to anyone's chain, expired in 2001: a peer
/// may send it after its leaf; webpki never uses it.
fn expired_unrelated_ca() -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "an unrelated CA, long expired");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    params.self_signed(&key).unwrap().der().clone()
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A plain rustls client (what an attacker runs) trusting `ca_pem` and
/// presenting exactly `chain`.
fn bare(
    ca_pem: &str,
    chain: Vec<CertificateDer<'static>>,
    key_pem: &str,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    )
}

/// An echo server on the acceptor's `Incoming`.
async fn echo_server(server: &ServerTls) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = server.acceptor().incoming(listener);
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    match conn.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if conn.get_mut().write_all(line.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A connection kept open by a bare client.
struct Line<S>(BufReader<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Line<S> {
    async fn ping(&mut self) -> Result<(), String> {
        self.0
            .get_mut()
            .write_all(b"ping\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_secs(10), self.0.read_line(&mut line)).await {
            Err(_) => Err("no answer within 10 s".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(0)) => Err("end of stream".into()),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

async fn open(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Line<meshtls::tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = meshtls::tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    Line(BufReader::new(tls))
}

/// The first `ConnectionClosed` within `within`, skipping other events.
async fn closed_within(
    events: &mut broadcast::Receiver<Event>,
    within: Duration,
) -> Option<(RejectReason, String)> {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(Event::ConnectionClosed { reason, detail }) => return (reason, detail),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    })
    .await
    .ok()
}

// ---------------------------------------------------------------------------
// Finding 1: an extra certificate the peer appends to its chain decides the
// moment `judge_live` re-judges a kept peer at (`last_valid` reads every
// presented certificate, not the verified path). An unparsable one makes it
// judge at `now` (expired again: kept); an unrelated CA that expired in 2001
// makes it judge in 2001 (the leaf not yet valid: kept). Either way the
// reason that should close (revoked, off the allow-list) is never seen.
// ---------------------------------------------------------------------------

/// Runs "expired (kept), then revoked" for a peer that presents `extra`
/// after its leaf; returns the closing seen, if any, and whether the peer
/// could still talk afterwards.
async fn expired_then_revoked(
    extra: Option<CertificateDer<'static>>,
) -> (Option<(RejectReason, String)>, bool) {
    let pki = Pki::new();
    let start = SystemTime::now();
    let time = ManualClock::new(start);
    let day = Duration::from_secs(86_400);
    let crl = pki.write("ca.crl", pki.ca.crl(&[], day).unwrap());
    let server = pki
        .server()
        .allow(Allow::spiffe_trust_domain(TD))
        .crl_file(&crl)
        .live_connection_grace(Duration::ZERO)
        .dangerous()
        .clock(time.clock())
        .build()
        .unwrap();
    let mut events = server.subscribe();
    let addr = echo_server(&server).await;
    let cert = pki
        .ca
        .leaf()
        .spiffe(&id("expiring"))
        .client()
        .valid_between(
            start - Duration::from_secs(60),
            start + Duration::from_secs(3600),
        )
        .issue()
        .unwrap();
    let mut chain = vec![CertificateDer::from(cert.der().to_vec())];
    chain.extend(extra);
    let mut line = open(bare(pki.ca.cert_pem(), chain, cert.key_pem()), addr).await;
    line.ping().await.unwrap();

    // Expired, and kept (the default).
    time.advance(Duration::from_secs(2 * 3600));
    if let Some(closed) = closed_within(&mut events, Duration::from_millis(300)).await {
        panic!("closed at expiry without close_at_peer_expiry: {closed:?}");
    }
    line.ping().await.unwrap();

    // Then revoked.
    std::fs::write(&crl, pki.ca.crl(&[&cert], day).unwrap()).unwrap();
    server.reload().unwrap();
    let closed = closed_within(&mut events, Duration::from_secs(5)).await;
    let still_talks = line.ping().await.is_ok();
    (closed, still_talks)
}

#[tokio::test]
async fn control_expired_then_revoked_peer_is_closed() {
    let (closed, still_talks) = expired_then_revoked(None).await;
    let (reason, detail) = closed.expect("no ConnectionClosed within 5 s");
    assert_eq!(reason, RejectReason::Revoked, "{detail}");
    assert!(!still_talks, "an expired, revoked peer is still connected");
}

#[tokio::test]
async fn expired_then_revoked_peer_with_garbage_after_its_leaf_is_closed() {
    let (closed, still_talks) = expired_then_revoked(Some(garbage())).await;
    assert!(
        closed
            .as_ref()
            .is_some_and(|(r, _)| *r == RejectReason::Revoked)
            && !still_talks,
        "an expired peer that appended two garbage bytes to its chain was revoked and is still \
         connected 5 s later (closing seen: {closed:?}, still answers: {still_talks})"
    );
}

/// Runs "CRL goes stale (kept), then the peer leaves the allow-list" for a
/// peer that presents `extra` after its leaf.
async fn stale_crl_then_removed(
    extra: Option<CertificateDer<'static>>,
) -> (Option<(RejectReason, String)>, bool) {
    let pki = Pki::new();
    let start = SystemTime::now();
    let time = ManualClock::new(start);
    let crl = pki.write(
        "ca.crl",
        pki.ca.crl(&[], Duration::from_secs(3600)).unwrap(),
    );
    let server = pki
        .server()
        .crl_file(&crl)
        .allow(Allow::spiffe_id(&id("a")))
        .allow(Allow::spiffe_id(&id("b")))
        .live_connection_grace(Duration::ZERO)
        .dangerous()
        .clock(time.clock())
        .build()
        .unwrap();
    let mut events = server.subscribe();
    let addr = echo_server(&server).await;
    let cert = pki.client_cert(&id("a"));
    let mut chain = vec![CertificateDer::from(cert.der().to_vec())];
    chain.extend(extra);
    let mut a = open(bare(pki.ca.cert_pem(), chain, cert.key_pem()), addr).await;
    a.ping().await.unwrap();

    // The CRL goes stale: kept.
    time.advance(Duration::from_secs(2 * 3600));
    if let Some(closed) = closed_within(&mut events, Duration::from_millis(300)).await {
        panic!("closed under a stale CRL: {closed:?}");
    }
    a.ping().await.unwrap();

    server.set_allow_list([Allow::spiffe_id(&id("b"))]).unwrap();
    let closed = closed_within(&mut events, Duration::from_secs(5)).await;
    let still_talks = a.ping().await.is_ok();
    (closed, still_talks)
}

#[tokio::test]
async fn control_stale_crl_then_removed_peer_is_closed() {
    let (closed, still_talks) = stale_crl_then_removed(None).await;
    let (reason, detail) = closed.expect("no ConnectionClosed within 5 s");
    assert_eq!(reason, RejectReason::NotAllowed, "{detail}");
    assert!(!still_talks, "a peer off the allow-list is still connected");
}

#[tokio::test]
async fn stale_crl_then_removed_peer_with_an_expired_unrelated_ca_in_its_chain_is_closed() {
    let (closed, still_talks) = stale_crl_then_removed(Some(expired_unrelated_ca())).await;
    assert!(
        closed
            .as_ref()
            .is_some_and(|(r, _)| *r == RejectReason::NotAllowed)
            && !still_talks,
        "a peer that appended an unrelated CA expired in 2001 to its chain was removed from the \
         allow-list under a stale CRL and is still connected 5 s later (closing seen: {closed:?}, \
         still answers: {still_talks})"
    );
}

// ---------------------------------------------------------------------------
// Finding 3: the clock steps back before the peer's notBefore. NotYetValid
// is a kept reason, and the lenient pass judges at min(now, notAfter) =
// now: not yet valid again, so nothing behind it (allow-list, revocation,
// CA dropped) is ever seen.
// ---------------------------------------------------------------------------

async fn removed_after(step_back: Option<Duration>) -> (Option<(RejectReason, String)>, bool) {
    let pki = Pki::new();
    let start = SystemTime::now();
    let time = ManualClock::new(start);
    let server = pki
        .server()
        .allow(Allow::spiffe_id(&id("a")))
        .allow(Allow::spiffe_id(&id("b")))
        .live_connection_grace(Duration::ZERO)
        .dangerous()
        .clock(time.clock())
        .build()
        .unwrap();
    let mut events = server.subscribe();
    let addr = echo_server(&server).await;
    let cert = pki
        .ca
        .leaf()
        .spiffe(&id("a"))
        .client()
        .valid_between(
            start - Duration::from_secs(60),
            start + Duration::from_secs(86_400),
        )
        .issue()
        .unwrap();
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let mut a = open(bare(pki.ca.cert_pem(), chain, cert.key_pem()), addr).await;
    a.ping().await.unwrap();
    if let Some(back) = step_back {
        // NTP steps the clock back (a VM restored from a snapshot, ...).
        time.set(start - back);
        a.ping().await.unwrap();
    }
    server.set_allow_list([Allow::spiffe_id(&id("b"))]).unwrap();
    let mut closed = closed_within(&mut events, Duration::from_secs(3)).await;
    if closed.is_none() && step_back.is_some() {
        // The clock comes back to the right time: a fresh handshake is
        // refused as not allowed again; is the live connection?
        time.set(start + Duration::from_secs(60));
        closed = closed_within(&mut events, Duration::from_secs(3)).await;
    }
    let still_talks = a.ping().await.is_ok();
    (closed, still_talks)
}

#[tokio::test]
async fn control_removed_peer_is_closed() {
    let (closed, still_talks) = removed_after(None).await;
    let (reason, detail) = closed.expect("no ConnectionClosed within 5 s");
    assert_eq!(reason, RejectReason::NotAllowed, "{detail}");
    assert!(!still_talks);
}

#[tokio::test]
async fn removed_peer_is_closed_after_the_clock_stepped_back_before_its_not_before() {
    let (closed, still_talks) = removed_after(Some(Duration::from_secs(3600))).await;
    assert!(
        closed
            .as_ref()
            .is_some_and(|(r, _)| *r == RejectReason::NotAllowed)
            && !still_talks,
        "the clock stepped back an hour (the peer's certificate is not yet valid, a kept reason), \
         then the peer was removed from the allow-list: still connected 3 s later, and still 3 s \
         after the clock came back to the right time (closing seen: {closed:?}, still answers: \
         {still_talks})"
    );
}

// ---------------------------------------------------------------------------
// Finding 4: a connection tracked while a sweep runs. `Tracker::track` rings
// only when `until < scheduled`, and a sweep in progress stores 0 there:
// nothing is below 0, so it never rings, and the sweep stores a `next` that
// never saw the new entry. With a ManualClock (or until the 60 s cap of the
// system clock) the new peer's expiry is not scheduled: issue 19 defect 4,
// in a window as long as a sweep.
// ---------------------------------------------------------------------------

/// A duplex (in-memory) connection, tracked by the server's acceptor.
async fn duplex_connect(
    acceptor: &meshtls::Acceptor,
    config: Arc<rustls::ClientConfig>,
) -> (
    meshtls::Tracked<meshtls::tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>,
    meshtls::tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
) {
    let (c, s) = tokio::io::duplex(16 * 1024);
    let acceptor = acceptor.clone();
    let server = tokio::spawn(async move { acceptor.accept(s).await });
    let name = ServerName::try_from("localhost").unwrap();
    let client = meshtls::tokio_rustls::TlsConnector::from(config)
        .connect(name, c)
        .await
        .unwrap();
    let (server, _) = server.await.unwrap().unwrap();
    (server, client)
}

/// `long` connections whose peers are valid a day, each its own leaf under
/// an intermediate (so that a sweep after a policy change judges each in
/// full), then a policy change, then one peer valid an hour, connected
/// after `wait`. Returns the closing seen after the clock moves 2 h.
async fn short_peer_after_policy_change(
    long: usize,
    wait: Duration,
) -> Option<(RejectReason, String)> {
    let pki = Pki::new();
    let inter = pki.ca.intermediate("meshtls test intermediate").unwrap();
    let inter_der = der_of(inter.cert_pem());
    let start = SystemTime::now();
    let time = ManualClock::new(start);
    let server = pki
        .server()
        .allow(Allow::spiffe_trust_domain(TD))
        .close_at_peer_expiry()
        .live_connection_grace(Duration::ZERO)
        .dangerous()
        .clock(time.clock())
        .build()
        .unwrap();
    let mut events = server.subscribe();
    let acceptor = server.acceptor();
    let peer = |name: String, life: Duration| {
        let cert = inter
            .leaf()
            .spiffe(&id(&name))
            .client()
            .valid_between(start - Duration::from_secs(60), start + life)
            .issue()
            .unwrap();
        bare(
            pki.ca.cert_pem(),
            vec![CertificateDer::from(cert.der().to_vec()), inter_der.clone()],
            cert.key_pem(),
        )
    };
    let mut held = Vec::with_capacity(long);
    for i in 0..long {
        held.push(
            duplex_connect(
                &acceptor,
                peer(format!("long-{i}"), Duration::from_secs(86_400)),
            )
            .await,
        );
    }
    let short_config = peer("short".into(), Duration::from_secs(3600));
    // Let the sweeper settle: it sleeps toward the long peers' expiry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A policy change that still admits everyone: every connection is
    // judged again, in full.
    server
        .set_allow_list([
            Allow::spiffe_trust_domain(TD),
            Allow::spiffe_id("spiffe://elsewhere.example/x"),
        ])
        .unwrap();
    tokio::time::sleep(wait).await;
    let _short = duplex_connect(&acceptor, short_config).await;
    // Whatever sweep was running is over by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while events.try_recv().is_ok() {}
    time.advance(Duration::from_secs(2 * 3600));
    let closed = closed_within(&mut events, Duration::from_secs(5)).await;
    drop(held);
    closed
}

const LONG: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_peer_connected_after_the_sweep_is_closed_at_its_expiry() {
    let closed = short_peer_after_policy_change(LONG, Duration::from_secs(3)).await;
    let (reason, detail) =
        closed.expect("no ConnectionClosed within 5 s of the short peer's expiry");
    assert_eq!(reason, RejectReason::Expired, "{detail}");
    assert!(detail.contains(&id("short")), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_connected_while_a_sweep_runs_is_closed_at_its_expiry() {
    let closed = short_peer_after_policy_change(LONG, Duration::ZERO).await;
    assert!(
        closed
            .as_ref()
            .is_some_and(|(r, d)| *r == RejectReason::Expired && d.contains(&id("short"))),
        "a peer valid 1 h, connected while the sweeper re-judged {LONG} connections after a \
         policy change, is still connected 1 h past its expiry with close_at_peer_expiry (the \
         sweeper sleeps toward the others' expiry a day away; closing seen: {closed:?})"
    );
}

// ---------------------------------------------------------------------------
// Finding 5: the grace before closing was a wall-clock moment (`now + grace`
// by the clock), so a clock stepped back during the grace kept a refused peer
// connected for the grace plus the whole step. The grace is a real duration
// (time to finish requests): it runs on the monotonic clock.
// ---------------------------------------------------------------------------

async fn removed_then_clock_steps_back(
    step_back: Option<Duration>,
) -> Option<(RejectReason, String)> {
    let pki = Pki::new();
    let start = SystemTime::now();
    let time = ManualClock::new(start);
    let grace = Duration::from_secs(1);
    let server = pki
        .server()
        .allow(Allow::spiffe_id(&id("a")))
        .allow(Allow::spiffe_id(&id("b")))
        .live_connection_grace(grace)
        .dangerous()
        .clock(time.clock())
        .build()
        .unwrap();
    let mut events = server.subscribe();
    let addr = echo_server(&server).await;
    let cert = pki.client_cert(&id("a"));
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let mut a = open(bare(pki.ca.cert_pem(), chain, cert.key_pem()), addr).await;
    a.ping().await.unwrap();
    server.set_allow_list([Allow::spiffe_id(&id("b"))]).unwrap();
    // The sweeper schedules the closing at the end of the grace; meanwhile
    // the wall clock may step back an hour.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(back) = step_back {
        time.set(start - back);
    }
    closed_within(&mut events, Duration::from_secs(5)).await
}

#[tokio::test]
async fn control_a_removed_peer_is_closed_after_the_grace() {
    let (reason, detail) = removed_then_clock_steps_back(None)
        .await
        .expect("no ConnectionClosed 5 s into a 1 s grace");
    assert_eq!(reason, RejectReason::NotAllowed, "{detail}");
}

#[tokio::test]
async fn a_removed_peer_is_closed_after_the_grace_when_the_clock_steps_back() {
    let closed = removed_then_clock_steps_back(Some(Duration::from_secs(3600))).await;
    assert!(
        closed.is_some(),
        "a peer removed from the allow-list, with a 1 s grace, is still connected 5 s later \
         because the clock stepped back an hour during the grace"
    );
}
