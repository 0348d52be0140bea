//! The accept/reject matrix, seen from both sides: what the client gets, and
//! what the server reports.

mod common;

use std::time::{Duration, SystemTime};

use common::{
    Pki, Seen, TD, bare_client, billing_web, call, call_bare, client_of, serve, start, svid,
};
use meshtls::dev::DevCa;
use meshtls::rustls;
use meshtls::{Allow, Event, RejectReason};

#[tokio::test]
async fn allowed_client_is_accepted_and_told_who_it_is() {
    let pki = Pki::new();
    let (server, mut running) = start(pki.server_admitting(&billing_web())).await;
    let client = pki.client(&billing_web()).build().unwrap();

    let seen = running.call(&client).await;
    assert!(
        seen.reply()
            .starts_with(&format!("hello {}", billing_web())),
        "{seen:?}"
    );
    let Seen::Reply(_, server_identity) = &seen else {
        unreachable!()
    };
    assert_eq!(
        server_identity.spiffe_id().map(|i| i.as_str()),
        Some(format!("spiffe://{TD}/ns/billing/sa/api").as_str())
    );

    let peer = running.expect_admitted().await;
    assert_eq!(peer.spiffe_id().unwrap().as_str(), billing_web());
    assert_eq!(server.stats().handshakes_ok, 1);
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let pki = Pki::new();
    let (server, mut running) = start(pki.server_any()).await;

    let config = bare_client(pki.ca.cert_pem(), None, &[&rustls::version::TLS13]);
    let err = call_bare(config, running.addr).await.unwrap_err();
    assert!(err.contains("CertificateRequired"), "client saw: {err}");

    running
        .expect_refused(RejectReason::NoClientCertificate)
        .await;
    assert_eq!(
        server
            .stats()
            .rejected_for(RejectReason::NoClientCertificate),
        1
    );
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let pki = Pki::new();
    let server = pki.server_any().build().unwrap();
    let mut events = server.subscribe();
    let mut running = serve(&server).await;

    let other_ca = DevCa::new("someone else").unwrap();
    let stranger = client_of(&other_ca, &billing_web());
    let client = pki.client_with(&stranger).build().unwrap();
    running
        .assert_refused(&client, "UnknownCA", RejectReason::UnknownIssuer)
        .await;
    let detail = rejected_detail(&mut events).await;
    assert!(
        detail.contains(&billing_web()),
        "event should name the peer: {detail}"
    );
    assert!(detail.contains("no chain to a trusted root"), "{detail}");
}

#[tokio::test]
async fn identity_not_on_the_allow_list_is_refused_with_access_denied() {
    let pki = Pki::new();
    let server = pki.server_admitting(&billing_web()).build().unwrap();
    let mut events = server.subscribe();
    let mut running = serve(&server).await;

    let intruder = svid("billing", "web-canary");
    let client = pki.client(&intruder).build().unwrap();
    let refused = running
        .assert_refused(&client, "AccessDenied", RejectReason::NotAllowed)
        .await;
    assert!(
        refused.detail().contains(&intruder),
        "the acceptor's error names the peer: {refused}"
    );
    let detail = rejected_detail(&mut events).await;
    assert!(
        detail.contains(&intruder) && detail.contains("matches none of the 1 allow rule"),
        "{detail}"
    );
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_any()).await;

    let cert = pki.client_cert(&billing_web());
    let config = bare_client(pki.ca.cert_pem(), Some(&cert), &[&rustls::version::TLS12]);
    let err = call_bare(config, running.addr).await.unwrap_err();
    assert!(err.contains("ProtocolVersion"), "client saw: {err}");

    running.expect_refused(RejectReason::ProtocolVersion).await;
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_any()).await;

    let now = SystemTime::now();
    let expired = pki.client_cert_between(
        &billing_web(),
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    );
    // The client refuses to load an expired certificate of its own, so present
    // it with a bare rustls client.
    let config = bare_client(
        pki.ca.cert_pem(),
        Some(&expired),
        &[&rustls::version::TLS13],
    );
    let err = call_bare(config, running.addr).await.unwrap_err();
    assert!(err.contains("CertificateExpired"), "client saw: {err}");
    running.expect_refused(RejectReason::Expired).await;
}

#[tokio::test]
async fn revoked_client_is_refused() {
    let pki = Pki::new();
    let revoked = pki.client_cert(&billing_web());
    let crl = pki.write_crl(&[&revoked]);
    let (_server, mut running) = start(pki.server_any().crl_file(crl)).await;

    running
        .assert_revoked(&pki.client_with(&revoked).build().unwrap())
        .await;

    // Someone else from the same CA still gets in.
    let fine = running
        .call(&pki.client(&billing_web()).build().unwrap())
        .await;
    assert!(fine.reply().starts_with("hello"), "{fine:?}");
}

#[tokio::test]
async fn client_verifies_server_by_spiffe_id() {
    let pki = Pki::new();
    let (_server, running) = start(pki.server_any()).await;
    let api = svid("billing", "api");

    let right = pki
        .client(&billing_web())
        .expect_server(Allow::spiffe_id(&api))
        .build()
        .unwrap();
    // The dialled name does not matter when the identity is pinned.
    let seen = call(&right, running.addr, "10.9.8.7").await;
    assert!(seen.reply().starts_with("hello"), "{seen:?}");

    let wrong_id = pki
        .client(&billing_web())
        .expect_server(Allow::spiffe_id(&format!(
            "spiffe://{TD}/ns/billing/sa/other"
        )))
        .build()
        .unwrap();
    let mut events = wrong_id.subscribe();
    running
        .assert_client_refuses(&wrong_id, RejectReason::NotAllowed)
        .await;
    let detail = rejected_detail(&mut events).await;
    assert!(detail.contains(&api), "{detail}");

    let wrong_domain = pki
        .client(&billing_web())
        .expect_server(Allow::spiffe_trust_domain("staging.example"))
        .build()
        .unwrap();
    running
        .assert_client_refuses(&wrong_domain, RejectReason::NotAllowed)
        .await;
}

#[tokio::test]
async fn client_without_expectations_checks_the_dialled_name() {
    let pki = Pki::new();
    let (_server, running) = start(pki.server_any()).await;
    let client = pki.client(&billing_web()).build().unwrap();

    assert!(running.call(&client).await.reply().starts_with("hello"));
    let err = call(&client, running.addr, "not-localhost.example").await;
    err.assert_handshake(RejectReason::NotAllowed);
    assert!(
        err.handshake().to_string().contains("NotValidForName"),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_refuses_server_from_unknown_ca() {
    let pki = Pki::new();
    let other = Pki::named("another root");
    let (_server, mut running) = start(other.server_any()).await;

    let client = pki.client(&billing_web()).build().unwrap();
    running
        .assert_client_refuses(&client, RejectReason::UnknownIssuer)
        .await;
    // And the server hears the client's alert.
    let refused = running.expect_refused(RejectReason::RefusedByPeer).await;
    assert!(refused.to_string().contains("UnknownCA"), "{refused}");
}

#[tokio::test]
async fn same_named_ca_with_another_key_is_refused() {
    let pki = Pki::new();
    let impostor = Pki::new(); // same CA name, different key
    let (_server, running) = start(impostor.server_any()).await;
    let client = pki.client(&billing_web()).build().unwrap();
    running
        .assert_client_refuses(&client, RejectReason::BadCertificate)
        .await;
}

#[tokio::test]
async fn server_without_allow_list_does_not_build() {
    let pki = Pki::new();
    let err = pki.server().build().unwrap_err();
    assert!(
        matches!(
            err,
            meshtls::Error::Config(meshtls::error::ConfigError::NoAllowList)
        ),
        "{err}"
    );
    assert!(err.to_string().contains("allow_any_authenticated"), "{err}");
}

#[tokio::test]
async fn handshake_timeout_is_reported() {
    let pki = Pki::new();
    let (_server, mut running) = start(
        pki.server_any()
            .handshake_timeout(Duration::from_millis(200)),
    )
    .await;
    let _silent = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    running.expect_refused(RejectReason::Timeout).await;
}

#[tokio::test]
async fn resumption_works_and_is_rechecked() {
    let pki = Pki::new();
    let (server, mut running) = start(pki.server_admitting(&billing_web())).await;
    let client = pki.client(&billing_web()).build().unwrap();

    for _ in 0..3 {
        running.assert_admitted(&client).await;
    }
    // A resumed handshake shows up as such on the client's side.
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let (stream, _) = client.connector().connect("localhost", tcp).await.unwrap();
    assert_eq!(
        stream.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert!(running.expect_admitted().await.spiffe_id().is_some());

    // Rechecked: off the list now, the client holding tickets is refused.
    server
        .set_allow_list([Allow::spiffe_id(&svid("other", "x"))])
        .unwrap();
    running
        .assert_refused(&client, "AccessDenied", RejectReason::NotAllowed)
        .await;
}

async fn rejected_detail(events: &mut tokio::sync::broadcast::Receiver<Event>) -> String {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("no event within 5 s")
            .expect("event channel closed");
        if let Event::Rejected { detail, .. } = event {
            return detail;
        }
    }
}

#[test]
fn certificate_facts_read_as_one_line_with_rfc3339_dates() {
    let pki = Pki::new();
    let server = pki.server_td().build().unwrap();
    let facts = server.certificate();
    let text = facts.to_string();
    assert!(text.contains(&format!("serial {}", facts.serial)), "{text}");
    // `valid 2026-12-04T10:00:00Z to 2026-12-05T10:00:00Z`
    let dates: Vec<&str> = text
        .split(' ')
        .filter(|w| w.ends_with('Z') && w.contains('T'))
        .collect();
    assert_eq!(dates.len(), 2, "{text}");
    assert!(
        dates
            .iter()
            .all(|d| d.len() == 20 && &d[4..5] == "-" && &d[13..14] == ":"),
        "{text}"
    );
    // The test leaf has no subject: it is named by its SANs, never `""`.
    assert!(
        text.starts_with(&format!(
            "(empty; SANs spiffe://{TD}/ns/billing/sa/api, DNS:localhost), serial"
        )),
        "{text}"
    );
}

// Found by the red team of issue 19: deadlines saturate on both sides.

/// Control: the acceptor's handshake deadline saturates (issue 19 fixed it
/// there).
#[tokio::test]
async fn control_a_server_with_a_huge_handshake_timeout_accepts() {
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_td().handshake_timeout(Duration::MAX)).await;
    let client = pki.client(&format!("spiffe://{TD}/a")).build().unwrap();
    running.assert_admitted(&client).await;
}

/// The connector computes `Instant + timeout` unchecked (src/client.rs):
/// a client built with a timeout meant as "no limit" panics on connect.
#[tokio::test]
async fn a_client_with_a_huge_handshake_timeout_connects_without_panicking() {
    let pki = Pki::new();
    let (_server, running) = start(pki.server_td()).await;
    let client = pki
        .client(&format!("spiffe://{TD}/a"))
        .handshake_timeout(Duration::MAX)
        .build()
        .unwrap();
    let addr = running.addr;
    let joined = tokio::spawn(async move { call(&client, addr, "localhost").await }).await;
    match joined {
        Ok(seen) => assert!(seen.reply().starts_with("hello"), "{seen:?}"),
        Err(e) => panic!(
            "Connector::connect panicked with handshake_timeout(Duration::MAX): {e} (the acceptor \
             saturates the same deadline)"
        ),
    }
}
