//! One judgment on every path: a peer is admitted only while a full handshake
//! with its chain would be admitted, whether it arrives with a full
//! handshake, a resumed one, or one that straddles a policy change; on both
//! sides, through the acceptor/connector and through the bare rustls configs.
//!
//! The straddle and late-ticket cases are driven record by record in memory
//! ([`Wire`]), the way a hostile peer would time them.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{
    BuilderExt, Pki, TD, Wire, bare_client, current_thread, records, replace, serve, server_id,
    shop, start,
};
use meshtls::rustls;
use meshtls::{Allow, Event, ManualClock, RejectReason, ReloadOutcome};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A bare rustls client config presenting `cert`, trusting the PKI's CA.
fn bare(pki: &Pki, cert: &meshtls::dev::DevCert) -> Arc<rustls::ClientConfig> {
    bare_client(pki.ca.cert_pem(), Some(cert), &[&rustls::version::TLS13])
}

/// The server's client verifier runs on the client's Certificate message, its
/// ticket is made at the client's Finished, and the client decides how long
/// to wait in between. A revocation landing in that gap must be seen by the
/// acceptor and must keep the session from being sealed.
#[test]
fn a_handshake_that_straddles_a_revocation_is_judged_by_the_new_policy() {
    let pki = Pki::new();
    let client_cert = pki.client_cert(&shop("web"));
    let crl = pki.write("ca.crl", pki.ca.crl(&[], HOUR).unwrap());
    let server = pki
        .server()
        .crl_file(&crl)
        .allow(Allow::spiffe_id(&shop("web")))
        .handshake_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let acceptor = server.acceptor();
    let mut small = (*bare(&pki, &client_cert)).clone();
    small.max_fragment_size = Some(64);
    let client = Arc::new(small);

    let mut wire = Wire::new(server.config(), client.clone());
    let hello = wire.client_out();
    wire.feed_server(&hello).unwrap();
    let flight = wire.server_out();
    wire.feed_client(&flight).unwrap();
    // Certificate, CertificateVerify (verifier runs), then Finished, held back.
    let second = wire.client_out();
    let recs = records(&second);
    let (finished, before) = recs.split_last().unwrap();
    wire.feed_server(&before.concat()).unwrap();
    assert!(wire.server.is_handshaking());

    replace(&crl, pki.ca.crl(&[&client_cert], HOUR).unwrap());
    assert!(matches!(
        server.reload().unwrap(),
        ReloadOutcome::Swapped {
            policy_changed: true,
            ..
        }
    ));
    // Longer than the handshake timeout: no settling window helps.
    std::thread::sleep(Duration::from_millis(400));
    wire.feed_server(finished).unwrap();
    let tickets = wire.server_out();
    wire.feed_client(&tickets).unwrap();

    // The bare config completes this one handshake (its client was judged
    // before the change, like a connection opened before it): the window the
    // reload docs state. The acceptor judges it again and refuses it.
    assert!(!wire.server.is_handshaking());
    let err = acceptor
        .identify(&wire.server)
        .expect_err("a client revoked before its Finished was admitted");
    assert_eq!(err.reason(), RejectReason::Revoked, "{err}");

    // And no session was sealed for it: the next attempt is a full handshake,
    // refused.
    let mut again = Wire::new(server.config(), client);
    let result = again.complete();
    assert!(!again.resumed(), "the straddling client resumed");
    let err = result.expect_err("the revoked client got in");
    assert!(err.contains("Revoked"), "{err}");
}

/// A server sends NewSessionTicket whenever it likes. A ticket held back
/// until after the client revoked that server must not resume it.
#[test]
fn a_late_ticket_does_not_resume_a_server_revoked_since() {
    let pki = Pki::new();
    let server_cert = pki.server_cert();
    let (cert, key) = pki.write_cert("server", &server_cert);
    let server = meshtls::ServerTls::builder()
        .identity_files(cert, key)
        .client_roots_file(pki.ca_file())
        .allow(Allow::spiffe_id(&shop("web")))
        .build()
        .unwrap();
    let crl = pki.write("client-ca.crl", pki.ca.crl(&[], HOUR).unwrap());
    let client = pki
        .client(&shop("web"))
        .crl_file(&crl)
        .expect_server(Allow::spiffe_id(&server_id()))
        .build()
        .unwrap();
    let connector = client.connector();

    let mut first = Wire::new(server.config(), client.config());
    let hello = first.client_out();
    first.feed_server(&hello).unwrap();
    let flight = first.server_out();
    first.feed_client(&flight).unwrap();
    let finished = first.client_out();
    first.feed_server(&finished).unwrap();
    let held = first.server_out(); // the tickets, held back
    assert!(!held.is_empty(), "the server sent no ticket");
    connector.identify(&first.client, "localhost").unwrap();

    replace(&crl, pki.ca.crl(&[&server_cert], HOUR).unwrap());
    assert!(matches!(
        client.reload().unwrap(),
        ReloadOutcome::Swapped {
            policy_changed: true,
            ..
        }
    ));
    let mut fresh = Wire::new(server.config(), client.config());
    let err = fresh.complete().expect_err("a revoked server was trusted");
    assert!(err.contains("Revoked"), "{err}");

    first.feed_client(&held).unwrap();
    let mut events = client.subscribe();
    let mut again = Wire::new(server.config(), client.config());
    let result = again.complete();
    // The late ticket was not kept: no resumption, a full handshake, and the
    // client refuses the server as revoked.
    assert!(
        !again.resumed() && again.client.handshake_kind() != Some(rustls::HandshakeKind::Resumed),
        "a late ticket resumed a revoked server ({result:?})"
    );
    let err = result.expect_err("the client completed a handshake with a revoked server");
    assert!(
        err.starts_with("client: "),
        "refused by the wrong side: {err}"
    );
    assert!(err.contains("Revoked"), "{err}");
    let refusal = std::iter::from_fn(|| events.try_recv().ok()).find_map(|e| match e {
        Event::Rejected { reason, detail } => Some((reason, detail)),
        _ => None,
    });
    assert!(
        matches!(refusal, Some((RejectReason::Revoked, _))),
        "the client refused for another reason: {refusal:?} ({err})"
    );
}

/// A CRL past its nextUpdate refuses new clients; it must refuse a client
/// holding a ticket too, through the acceptor and through the bare config.
#[test]
fn a_stale_crl_is_enforced_on_resumption() {
    let pki = Pki::new();
    let client_cert = pki.client_cert(&shop("web"));
    let crl = pki.write("ca.crl", pki.ca.crl(&[], Duration::from_secs(2)).unwrap());
    let time = ManualClock::new(SystemTime::now());
    let server = pki
        .server()
        .crl_file(&crl)
        .allow(Allow::spiffe_id(&shop("web")))
        .on_clock(&time)
        .build()
        .unwrap();
    let acceptor = server.acceptor();
    let client = bare(&pki, &client_cert);
    let mut wire = Wire::new(server.config(), client.clone());
    wire.complete().unwrap();
    acceptor.identify(&wire.server).unwrap();

    time.advance(Duration::from_secs(3));
    let newcomer = bare(&pki, &pki.client_cert(&shop("web")));
    let err = Wire::new(server.config(), newcomer)
        .complete()
        .expect_err("a new client was admitted under a stale CRL");
    assert!(err.contains("Revocation"), "{err}");

    let mut again = Wire::new(server.config(), client);
    let result = again.complete();
    assert!(
        !again.resumed(),
        "the bare config resumed a session under a stale CRL"
    );
    let err = result.expect_err("admitted under a stale CRL");
    assert!(
        err.contains("Revocation"),
        "refused for another reason: {err}"
    );
}

/// A client certificate that expires after its session was made: no
/// resumption, on the bare config too.
#[test]
fn an_expired_client_does_not_resume_on_the_bare_config() {
    let pki = Pki::new();
    let now = SystemTime::now();
    let short = pki.client_cert_between(
        &shop("web"),
        now - Duration::from_secs(60),
        now + Duration::from_secs(2),
    );
    let time = ManualClock::new(now);
    let server = pki
        .server_admitting(&shop("web"))
        .on_clock(&time)
        .build()
        .unwrap();
    let client = bare(&pki, &short);
    Wire::new(server.config(), client.clone())
        .complete()
        .unwrap();
    time.advance(Duration::from_secs(3));
    let mut again = Wire::new(server.config(), client);
    let result = again.complete();
    assert!(!again.resumed(), "an expired client resumed");
    let err = result.expect_err("an expired client got in");
    assert!(err.contains("Expired"), "{err}");
}

/// The client side of the same: a server whose CRL entry goes stale after
/// the client stored its ticket is not resumed to.
#[test]
fn a_client_does_not_resume_to_a_server_under_a_stale_crl() {
    let pki = Pki::new();
    let server = pki.server_admitting(&shop("web")).build().unwrap();
    let crl = pki.write(
        "client.crl",
        pki.ca.crl(&[], Duration::from_secs(2)).unwrap(),
    );
    let time = ManualClock::new(SystemTime::now());
    let client = pki
        .client(&shop("web"))
        .crl_file(&crl)
        .expect_server(Allow::spiffe_id(&server_id()))
        .on_clock(&time)
        .build()
        .unwrap();
    let connector = client.connector();
    let mut first = Wire::new(server.config(), client.config());
    first.complete().unwrap();
    connector.identify(&first.client, "localhost").unwrap();

    time.advance(Duration::from_secs(3));
    let mut events = client.subscribe();
    let mut again = Wire::new(server.config(), client.config());
    let result = again.complete();
    // The ticket went with the verdict that ran out: no resumption, a full
    // handshake, and the client refuses the server, for the stale CRL.
    assert!(
        !again.resumed() && again.client.handshake_kind() != Some(rustls::HandshakeKind::Resumed),
        "resumed to a server under a stale CRL ({result:?})"
    );
    let err = result.expect_err("the client completed a handshake under a stale CRL");
    assert!(
        err.starts_with("client: "),
        "refused by the wrong side: {err}"
    );
    let refusal = std::iter::from_fn(|| events.try_recv().ok()).find_map(|e| match e {
        Event::Rejected { reason, detail } => Some((reason, detail)),
        _ => None,
    });
    assert!(
        matches!(refusal, Some((RejectReason::RevocationUnknown, _))),
        "the client refused for another reason: {refusal:?} ({err})"
    );
}

/// An older CRL before a newer one from the same CA must not hide the newer
/// revocations (rustls-webpki takes the first CRL whose issuer name matches).
#[tokio::test]
async fn an_older_crl_listed_first_does_not_hide_a_newer_revocation() {
    let pki = Pki::new();
    let revoked = pki.client_cert(&shop("web"));
    let now = SystemTime::now();
    let older = pki
        .ca
        .crl_between(&[], now - Duration::from_secs(120), now + HOUR)
        .unwrap();
    let newer = pki
        .ca
        .crl_between(
            &[revoked.serial()],
            now - Duration::from_secs(60),
            now + HOUR,
        )
        .unwrap();
    let crl = pki.write("ca.crl", format!("{older}{newer}"));
    let (_server, mut running) = start(pki.server_td().crl_file(&crl)).await;
    running
        .assert_revoked(&pki.client_with(&revoked).build().unwrap())
        .await;
}

/// A CA key rotation under the same subject name, both CAs trusted, each
/// with its CRL: clients of either CA are admitted, a revoked one is not.
#[tokio::test]
async fn same_named_ca_rotation_works_with_crls() {
    let old = Pki::named("rotating root");
    let new = Pki::named("rotating root");
    let roots = old.write(
        "roots.crt",
        format!("{}{}", old.ca.cert_pem(), new.ca.cert_pem()),
    );
    let revoked = new.client_cert(&shop("web"));
    let crl = old.write(
        "ca.crl",
        format!(
            "{}{}",
            old.ca.crl(&[], HOUR).unwrap(),
            new.ca.crl(&[&revoked], HOUR).unwrap()
        ),
    );
    let (cert, key) = old.write_cert("server", &old.server_cert());
    let (_server, mut running) = start(
        meshtls::ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_file(&roots)
            .crl_file(&crl)
            .allow(Allow::spiffe_trust_domain(TD)),
    )
    .await;
    let client_of = |pki: &Pki, cert: &meshtls::dev::DevCert| {
        let (c, k) = pki.write_cert(&format!("client-{}", cert.serial().replace(':', "")), cert);
        meshtls::ClientTls::builder()
            .identity_files(c, k)
            .server_roots_file(&roots)
            .build()
            .unwrap()
    };
    for pki in [&old, &new] {
        let client = client_of(pki, &pki.client_cert(&shop("web")));
        let seen = running.call(&client).await;
        let result = running.next().await;
        assert!(result.is_ok(), "a client of a trusted CA: {result:?}");
        assert!(seen.reply().starts_with("hello"), "{seen:?}");
    }
    let client = client_of(&new, &revoked);
    running
        .assert_refused(&client, "CertificateRevoked", RejectReason::Revoked)
        .await;
}

/// What an unverified peer puts in its certificate reaches logs and events
/// only bounded and escaped.
#[tokio::test]
async fn unverified_names_are_bounded_and_escaped_in_events() {
    let pki = Pki::new();
    let intruder_ca = Pki::named("intruder");
    let mut forged = String::from("evil\n2026-12-03T00:00:00Z INFO admitted admin\u{1b}[0m");
    forged.push_str(&"A".repeat(30_000));
    let mut leaf = intruder_ca.ca.leaf().cn(&forged).client();
    for i in 0..200 {
        leaf = leaf.dns(&format!("n{i}.{}.example", "x".repeat(40)));
    }
    let intruder = leaf.issue().unwrap();
    let server = pki.server_td().build().unwrap();
    let mut events = server.subscribe();
    let mut running = serve(&server).await;
    let client = meshtls::ClientTls::builder()
        .identity(
            meshtls::Source::pem("intruder.crt", intruder.chain_pem()),
            meshtls::Source::pem("intruder.key", intruder.key_pem()),
        )
        .server_roots(meshtls::Source::pem("ca", pki.ca.cert_pem()))
        .build()
        .unwrap();
    let _ = running.call(&client).await;
    let err = running.expect_refused(RejectReason::UnknownIssuer).await;
    let detail = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(Event::Rejected { detail, .. })) => break detail,
            Ok(Ok(_)) => continue,
            other => panic!("no rejection event: {other:?}"),
        }
    };
    for text in [detail.as_str(), err.detail(), &err.to_string()] {
        assert!(text.len() <= 2048, "{} bytes: {}", text.len(), &text[..200]);
        assert!(
            !text.chars().any(char::is_control),
            "control characters reached the log: {text:?}"
        );
    }
    assert!(detail.contains("evil"), "{detail}");
}

/// The refusal a verifier notes for the acceptor must not be picked up by an
/// unrelated failure later on the same thread.
#[test]
fn a_refusal_left_behind_is_not_attributed_to_another_handshake() {
    let runtime = current_thread();
    runtime.block_on(async {
        let pki = Pki::new();
        let server = pki.server_td().build().unwrap();
        let mut events = server.subscribe();

        // 1. On this thread, the bare config refuses a client whose chain does
        //    not verify (a CA with the same name and another key); nobody
        //    collects the refusal's specifics.
        let impostor = Pki::named("meshtls test root");
        let forged = impostor.client_cert(&format!("spiffe://{TD}/ns/impostor/sa/x"));
        let err = Wire::new(server.config(), bare(&pki, &forged))
            .complete()
            .unwrap_err();
        assert!(err.contains("BadEncoding"), "{err}");
        while events.try_recv().is_ok() {}

        // 2. The acceptor, on the same thread, sees a handshake fail with the
        //    same rustls error for another reason: a client whose
        //    CertificateVerify signature is made with the wrong key.
        let honest = pki.client_cert(&shop("web"));
        let other_key = pki.client_cert(&shop("web"));
        let client = wrong_key_client(&pki, &honest, &other_key);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = server.acceptor();
        let dial = async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            if let Ok(stream) = meshtls::tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
            {
                let _ = common::exchange(stream).await;
            }
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await
        };
        let (_, accepted) = tokio::join!(dial, accept);
        let err = accepted.expect_err("a bad signature was admitted");
        assert!(
            !err.to_string().contains("impostor"),
            "misattributed to the earlier peer: {err}"
        );
        let reported = events.try_recv();
        assert!(
            matches!(reported, Ok(Event::Rejected { .. })),
            "the refusal was not reported: {reported:?}"
        );
    });
}

/// A client presenting `cert`'s chain but signing with `key_of`'s key.
fn wrong_key_client(
    pki: &Pki,
    cert: &meshtls::dev::DevCert,
    key_of: &meshtls::dev::DevCert,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Fixed {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.chain_pem().as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::from_pem_slice(key_of.key_pem().as_bytes()).unwrap())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.cert_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Fixed(Arc::new(rustls::sign::CertifiedKey::new(
            chain, key,
        )))));
    Arc::new(config)
}

/// The window a bare `ClientConfig` (as reqwest uses it) keeps, exactly as
/// the reload docs state it: a late ticket is kept only when another server
/// of the same name has passed the new policy. The connector closes it.
#[test]
fn the_bare_client_window_is_exactly_the_documented_one() {
    let pki = Pki::new();
    let serving = |cert: &meshtls::dev::DevCert| {
        let (c, k) = pki.write_cert(&format!("server-{}", cert.serial().replace(':', "")), cert);
        meshtls::ServerTls::builder()
            .identity_files(c, k)
            .client_roots_file(pki.ca_file())
            .allow(Allow::spiffe_id(&shop("web")))
            .build()
            .unwrap()
    };
    // Two servers answer to one name.
    let (cert_one, cert_two) = (pki.server_cert(), pki.server_cert());
    let (one, two) = (serving(&cert_one), serving(&cert_two));
    let crl = pki.write("client.crl", pki.ca.crl(&[], HOUR).unwrap());
    let client = pki
        .client(&shop("web"))
        .crl_file(&crl)
        .expect_server(Allow::spiffe_id(&server_id()))
        .build()
        .unwrap();

    let mut first = Wire::new(one.config(), client.config());
    let hello = first.client_out();
    first.feed_server(&hello).unwrap();
    let flight = first.server_out();
    first.feed_client(&flight).unwrap();
    let finished = first.client_out();
    first.feed_server(&finished).unwrap();
    let held = first.server_out();

    replace(&crl, pki.ca.crl(&[&cert_one], HOUR).unwrap());
    client.reload().unwrap();
    Wire::new(two.config(), client.config()).complete().unwrap();
    first.feed_client(&held).unwrap();

    let mut again = Wire::new(one.config(), client.config());
    again.complete().unwrap();
    assert!(
        again.resumed(),
        "the bare config resumes: the documented window"
    );
    let err = client
        .connector()
        .identify(&again.client, "localhost")
        .expect_err("the connector admitted a revoked server");
    assert_eq!(err.reason(), RejectReason::Revoked, "{err}");
}

// ---------------------------------------------------------------------------
// Found by the second red team of issue 19: a remembered verdict had no
// lower bound in time. After the clock stepped back before a peer's
// notBefore, a full handshake refused the peer (not yet valid) while a
// resumed one and the acceptor's check were answered from the memo. A
// verdict now holds from the latest notBefore of its path.
// ---------------------------------------------------------------------------

/// A client whose certificate is valid from a minute ago gets a ticket;
/// the clock steps back an hour; then the client comes back with its
/// ticket (`resume`) or without one.
fn after_step_back(resume: bool) -> (Result<(), String>, bool) {
    let pki = Pki::new();
    let now = SystemTime::now();
    let time = ManualClock::new(now);
    let server = pki
        .server_admitting(&shop("web"))
        .on_clock(&time)
        .build()
        .unwrap();
    let cert = pki.client_cert_between(&shop("web"), now - Duration::from_secs(60), now + DAY);
    let client = bare_client(pki.ca.cert_pem(), Some(&cert), &[&rustls::version::TLS13]);
    Wire::new(server.config(), client.clone())
        .complete()
        .expect("admitted before the step");
    time.set(now - HOUR);
    let client = if resume {
        client
    } else {
        bare_client(pki.ca.cert_pem(), Some(&cert), &[&rustls::version::TLS13])
    };
    let mut again = Wire::new(server.config(), client);
    let result = again.complete();
    (result, again.resumed())
}

#[test]
fn control_a_not_yet_valid_client_is_refused_on_a_full_handshake() {
    let (result, _) = after_step_back(false);
    let err = result.expect_err("a client not valid for another hour was admitted");
    assert!(err.contains("NotValidYet"), "{err}");
}

#[test]
fn a_not_yet_valid_client_is_refused_on_resumption_too() {
    let (result, resumed) = after_step_back(true);
    assert!(
        result.is_err() && !resumed,
        "the clock stepped back an hour, before the client's notBefore: a full handshake is \
         refused (not yet valid) but the client's ticket was accepted (resumed: {resumed}, \
         result: {result:?}): the memo's verdict has no lower bound"
    );
}
