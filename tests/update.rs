//! Material handed over by the application (`Mtls::update`): validated with
//! the rest, all or nothing, exactly as a reload from disk, with the same
//! events, and live connections judged again.

mod common;

use std::time::Duration;

use common::{Open, Pki, TD, echo_incoming, next_closed, shop};
use meshtls::error::{ConfigError, MaterialError};
use meshtls::{Allow, ClientTls, Event, RejectReason, ReloadOutcome, ServerTls, Source, Update};

/// A server whose material is all in memory, as an application that reads
/// it from a secret manager builds it.
fn in_memory_server(pki: &Pki) -> ServerTls {
    let cert = pki.server_cert();
    ServerTls::builder()
        .identity(
            Source::pem("vault: server chain", cert.chain_pem()),
            Source::pem("vault: server key", cert.key_pem()),
        )
        .client_roots(Source::pem("vault: client CA", pki.ca.cert_pem()))
        .allow(Allow::spiffe_trust_domain(TD))
        .live_connection_grace(Duration::ZERO)
        .build()
        .unwrap()
}

/// The serial of the certificate the server presents to `client` now.
async fn served_serial(client: &ClientTls, addr: std::net::SocketAddr) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_, server) = client.connector().connect("localhost", tcp).await.unwrap();
    server.serial().to_owned()
}

/// The next reload event (`Reloaded` or `ReloadFailed`), as text.
async fn next_reload(events: &mut tokio::sync::broadcast::Receiver<Event>) -> Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("no reload event within 10 s")
            .unwrap();
        if matches!(event, Event::Reloaded { .. } | Event::ReloadFailed { .. }) {
            return event;
        }
    }
}

#[tokio::test]
async fn a_pushed_identity_is_served_with_the_reload_events() {
    let pki = Pki::new();
    let server = in_memory_server(&pki);
    let mut events = server.subscribe();
    let (addr, _echo) = echo_incoming(&server).await;
    let client = pki.client(&shop("web")).build().unwrap();
    let first = served_serial(&client, addr).await;
    let client = pki.client(&shop("web")).build().unwrap();

    let renewed = pki.server_cert();
    let outcome = server
        .update(Update::new().identity(renewed.chain_pem(), renewed.key_pem()))
        .unwrap();
    assert_eq!(
        outcome,
        ReloadOutcome::Swapped {
            generation: 2,
            policy_changed: false
        }
    );
    assert!(matches!(
        next_reload(&mut events).await,
        Event::Reloaded { generation: 2, .. }
    ));
    assert_eq!(served_serial(&client, addr).await, renewed.serial());
    assert_ne!(first, renewed.serial());
    // The first generation counts as a reload too.
    assert_eq!(server.stats().reloads_ok, 2);

    // The same material again changes nothing.
    let outcome = server
        .update(Update::new().identity(renewed.chain_pem(), renewed.key_pem()))
        .unwrap();
    assert_eq!(outcome, ReloadOutcome::Unchanged { generation: 2 });
}

#[tokio::test]
async fn a_bad_update_is_refused_whole_and_nothing_of_it_is_kept() {
    let pki = Pki::new();
    let server = in_memory_server(&pki);
    let mut events = server.subscribe();
    let (addr, _echo) = echo_incoming(&server).await;
    let client = pki.client(&shop("web")).build().unwrap();
    let serving = served_serial(&client, addr).await;

    // A key that is not the certificate's, with new roots that would lock
    // every current client out: refused as a whole.
    let one = pki.server_cert();
    let other = pki.server_cert();
    let stranger = Pki::named("another root");
    let err = server
        .update(
            Update::new()
                .identity(one.chain_pem(), other.key_pem())
                .roots(stranger.ca.cert_pem()),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            meshtls::Error::Material(MaterialError::KeyMismatch { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("pushed"), "{err}");
    assert!(matches!(
        next_reload(&mut events).await,
        Event::ReloadFailed { serving: 1, .. }
    ));
    assert_eq!(server.generation(), 1);
    assert_eq!(server.stats().reloads_failed, 1);
    // The old certificate and roots still serve.
    assert_eq!(served_serial(&client, addr).await, serving);

    // Nothing of the refused update was kept: a reload reads what served.
    assert_eq!(
        server.reload().unwrap(),
        ReloadOutcome::Unchanged { generation: 1 }
    );

    // Named by where it came from, when the application says.
    let err = server
        .update(
            Update::new()
                .origin("vault: pki/issue/billing")
                .identity(one.chain_pem(), other.key_pem()),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("from vault: pki/issue/billing"),
        "{err}"
    );

    // A malformed trust domain is refused before anything is read.
    let err = server
        .update(Update::new().roots_for("spiffe://td/with/path", pki.ca.cert_pem()))
        .unwrap_err();
    assert!(
        matches!(err, meshtls::Error::Config(ConfigError::TrustDomain { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_pushed_crl_closes_the_revoked_peers_live_connection() {
    let pki = Pki::new();
    let server = in_memory_server(&pki);
    let mut events = server.subscribe();
    let (addr, _echo) = echo_incoming(&server).await;
    let victim = pki.client_cert(&shop("victim"));
    let bystander = pki.client(&shop("bystander")).build().unwrap();
    let mut victim_conn = Open::meshtls(&pki.client_with(&victim).build().unwrap(), addr).await;
    victim_conn.ping().await.unwrap();
    let mut bystander_conn = Open::meshtls(&bystander, addr).await;
    bystander_conn.ping().await.unwrap();

    let crl = pki.ca.crl(&[&victim], Duration::from_secs(3600)).unwrap();
    let outcome = server.update(Update::new().crls(crl)).unwrap();
    assert_eq!(
        outcome,
        ReloadOutcome::Swapped {
            generation: 2,
            policy_changed: true
        }
    );
    let (reason, detail) = next_closed(&mut events).await;
    assert_eq!(reason, RejectReason::Revoked, "{detail}");
    assert!(
        victim_conn.ping().await.is_err(),
        "the revoked peer still talks"
    );
    bystander_conn.ping().await.unwrap();
    // And a new handshake of the revoked peer is refused.
    let refused = common::call(
        &pki.client_with(&victim).build().unwrap(),
        addr,
        "localhost",
    )
    .await;
    assert!(
        refused.refused().contains("CertificateRevoked"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn roots_for_a_trust_domain_come_and_go() {
    let pki = Pki::new();
    let partner = Pki::named("partner root");
    let partner_id = "spiffe://partner.test/ns/billing/sa/api";
    let cert = pki.server_cert();
    let server = ServerTls::builder()
        .identity(
            Source::pem("server chain", cert.chain_pem()),
            Source::pem("server key", cert.key_pem()),
        )
        .client_roots_for(TD, pki.ca_file())
        .allow(Allow::spiffe_trust_domain(TD))
        .allow(Allow::spiffe_id(partner_id))
        .build()
        .unwrap();
    let mut running = common::serve(&server).await;
    // The partner's workload, trusting our CA.
    let partner_client = pki
        .client_with(&partner.client_cert(partner_id))
        .build()
        .unwrap();

    // No roots for partner.test yet: refused, naming the configured ones.
    let err = running
        .assert_refused(&partner_client, "UnknownCA", RejectReason::UnknownIssuer)
        .await;
    assert!(err.to_string().contains("partner.test"), "{err}");

    // The federation starts: the partner's bundle is pushed.
    server
        .update(Update::new().roots_for("spiffe://partner.test", partner.ca.cert_pem()))
        .unwrap();
    running.assert_admitted(&partner_client).await;

    // And ends: refused again, as a trust domain with no roots here.
    server
        .update(Update::new().remove_roots_for("partner.test"))
        .unwrap();
    let err = running
        .assert_refused(&partner_client, "UnknownCA", RejectReason::UnknownIssuer)
        .await;
    assert!(err.to_string().contains("has no roots here"), "{err}");
}

#[tokio::test]
async fn pushed_parts_survive_a_reload_of_the_files() {
    // Identity from files (rotated on disk), roots pushed in memory.
    let pki = Pki::new();
    let server = pki.server_td().build().unwrap();
    let (addr, _echo) = echo_incoming(&server).await;
    let next_ca = Pki::named("next root");
    let both = format!("{}{}", pki.ca.cert_pem(), next_ca.ca.cert_pem());
    server.update(Update::new().roots(both)).unwrap();
    // A client of the next CA, trusting our server's CA.
    let newcomer = pki
        .client_with(&next_ca.client_cert(&shop("web")))
        .build()
        .unwrap();
    let mut conn = Open::meshtls(&newcomer, addr).await;
    conn.ping().await.unwrap();

    // The server's own files rotate; a reload reads them, and the pushed
    // roots still admit the newcomer.
    let renewed = pki.server_cert();
    pki.write_cert("server", &renewed);
    assert!(matches!(
        server.reload().unwrap(),
        ReloadOutcome::Swapped { .. }
    ));
    // (A fresh client: one holding a ticket would resume, and be shown the
    // certificate of the session it resumes.)
    let fresh = pki
        .client_with(&next_ca.client_cert(&shop("web")))
        .build()
        .unwrap();
    assert_eq!(served_serial(&fresh, addr).await, renewed.serial());
    let mut again = Open::meshtls(&fresh, addr).await;
    again
        .ping()
        .await
        .expect("after a reload of the files, the pushed roots no longer admit the newcomer");
    conn.ping().await.unwrap();
}
