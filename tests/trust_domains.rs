//! Roots per trust domain (SPIFFE federation): a CA of trust domain A
//! cannot mint identities for trust domain B, a peer of a trust domain
//! without roots is refused saying so, bundles reload, flat roots keep
//! working as before.

mod common;

use std::time::Duration;

use common::{Pki, Seen, ServerBuilderExt, client_of, replace, serve, start, watched};
use meshtls::dev::DevCa;
use meshtls::error::ConfigError;
use meshtls::{Allow, ClientTls, Error, RejectReason, ServerTls, VouchedBy};

const A: &str = "td-a.example";
const B: &str = "td-b.example";

struct Federation {
    pki: Pki,
    b: DevCa,
}

impl Federation {
    fn new() -> Self {
        Self {
            pki: Pki::named("trust domain A root"),
            b: DevCa::new("trust domain B root").unwrap(),
        }
    }

    fn client(&self, ca: &DevCa, id: &str) -> ClientTls {
        let cert = client_of(ca, id);
        self.pki.client_with(&cert).build().unwrap()
    }

    fn server(&self) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        let (cert, key) = self.pki.write_cert("server", &self.pki.server_cert());
        let a = self.pki.write("a.pem", self.pki.ca.cert_pem());
        let b = self.pki.write("b.pem", self.b.cert_pem());
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_for(A, a)
            .client_roots_for(B, b)
            .allow(Allow::spiffe_trust_domain(A))
            .allow(Allow::spiffe_trust_domain(B))
            .allow(Allow::spiffe_trust_domain("td-c.example"))
    }
}

#[tokio::test]
async fn a_ca_of_one_trust_domain_cannot_mint_for_another() {
    let f = Federation::new();
    let (_server, mut running) = start(f.server()).await;

    let alice = f.client(&f.pki.ca, &format!("spiffe://{A}/ns/app/sa/alice"));
    let bob = f.client(&f.b, &format!("spiffe://{B}/ns/app/sa/bob"));
    running.assert_admitted(&alice).await;
    running.assert_admitted(&bob).await;

    // A's CA mints an identity of B: refused, though A's CA is trusted.
    let forged = f.client(&f.pki.ca, &format!("spiffe://{B}/ns/app/sa/bob"));
    let refusal = running
        .assert_refused(&forged, "UnknownCA", RejectReason::UnknownIssuer)
        .await;
    assert!(
        refusal.to_string().contains("no chain to a trusted root"),
        "{refusal}"
    );

    // A trust domain with no roots here: refused, saying which.
    let carol = f.client(&f.pki.ca, "spiffe://td-c.example/ns/app/sa/carol");
    let refusal = running
        .assert_refused(&carol, "UnknownCA", RejectReason::UnknownIssuer)
        .await;
    let text = refusal.to_string();
    assert!(
        text.contains("trust domain td-c.example has no roots here")
            && text.contains("td-a.example, td-b.example"),
        "{text}"
    );
}

#[tokio::test]
async fn with_one_flat_bundle_the_forgery_goes_through() {
    // The hole the feature closes, shown with the flat bundle of old.
    let f = Federation::new();
    let (cert, key) = f.pki.write_cert("server", &f.pki.server_cert());
    let both = f.pki.write(
        "both.pem",
        format!("{}{}", f.pki.ca.cert_pem(), f.b.cert_pem()),
    );
    let (_server, mut running) = start(
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_file(both)
            .allow(Allow::spiffe_trust_domain(B)),
    )
    .await;
    let forged = f.client(&f.pki.ca, &format!("spiffe://{B}/ns/app/sa/bob"));
    running.assert_admitted(&forged).await;
}

#[tokio::test]
async fn a_trust_domains_bundle_reloads_on_its_own() {
    let f = Federation::new();
    let server = watched(f.server(), Duration::from_millis(50));
    let mut running = serve(&server).await;
    let bob = f.client(&f.b, &format!("spiffe://{B}/ns/app/sa/bob"));
    running.assert_admitted(&bob).await;

    // B rotates to a new root; the old one is dropped.
    let b2 = DevCa::new("trust domain B root, rotated").unwrap();
    replace(&f.pki.path("b.pem"), b2.cert_pem());
    let bob2 = f.client(&b2, &format!("spiffe://{B}/ns/app/sa/bob"));
    for _ in 0..100 {
        if server.generation() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.generation(), 2, "the bundle of {B} was not reloaded");
    running
        .assert_refused(&bob, "UnknownCA", RejectReason::UnknownIssuer)
        .await;
    running.assert_admitted(&bob2).await;
    // A's clients are untouched.
    let alice = f.client(&f.pki.ca, &format!("spiffe://{A}/ns/app/sa/alice"));
    running.assert_admitted(&alice).await;
}

#[tokio::test]
async fn a_trust_domain_is_given_bare_or_as_spiffe_td_and_nothing_else() {
    let f = Federation::new();
    let (cert, key) = f.pki.write_cert("server", &f.pki.server_cert());
    let build = |td: &str| {
        ServerTls::builder()
            .identity_files(&cert, &key)
            .client_roots_for(td, f.pki.ca_file())
            .allow(Allow::spiffe_trust_domain(A))
            .build()
    };
    for bad in ["spiffe://td-a.example/ns", "td a.example", ""] {
        let err = build(bad).unwrap_err();
        assert!(
            matches!(err, Error::Config(ConfigError::TrustDomain { .. })),
            "{bad:?}: {err}"
        );
        assert!(
            err.to_string().contains("give it as `prod.example`"),
            "{err}"
        );
    }
    // `spiffe://td-a.example` names the same trust domain as `td-a.example`.
    let server = build("spiffe://td-a.example").unwrap();
    let mut running = serve(&server).await;
    let alice = f.client(&f.pki.ca, &format!("spiffe://{A}/ns/app/sa/alice"));
    running.assert_admitted(&alice).await;
}

#[tokio::test]
async fn a_client_checks_servers_against_their_trust_domains_roots() {
    let f = Federation::new();
    // A server of trust domain B whose certificate A's CA signed.
    let forged_server = f
        .pki
        .ca
        .leaf()
        .spiffe(&format!("spiffe://{B}/ns/app/sa/api"))
        .dns("localhost")
        .server()
        .issue()
        .unwrap();
    let (cert, key) = f.pki.write_cert("forged-server", &forged_server);
    let (_server, running) = start(
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_file(f.pki.ca_file())
            .allow(Allow::spiffe_trust_domain(A)),
    )
    .await;

    let client_cert = f.pki.client_cert(&format!("spiffe://{A}/ns/app/sa/alice"));
    let (c, k) = f.pki.write_cert("alice", &client_cert);
    let a = f.pki.write("a.pem", f.pki.ca.cert_pem());
    let b = f.pki.write("b.pem", f.b.cert_pem());
    let client = ClientTls::builder()
        .identity_files(c, k)
        .server_roots_for(A, a)
        .server_roots_for(B, b)
        .expect_server(Allow::spiffe_trust_domain(B))
        .build()
        .unwrap();
    running
        .assert_client_refuses(&client, RejectReason::UnknownIssuer)
        .await;
}

/// Issue 19, defect 2 (server side): a partner CA trusted only for its
/// trust domain mints a leaf with its own SPIFFE ID plus an internal DNS
/// name. The bundle vouches for the SPIFFE ID only: a DNS rule meant for
/// peers of the flat roots does not admit it.
#[tokio::test]
async fn a_trust_domain_bundle_does_not_vouch_for_dns_names() {
    let f = Federation::new();
    let (cert, key) = f.pki.write_cert("server", &f.pki.server_cert());
    let b = f.pki.write("b.pem", f.b.cert_pem());
    let (_server, mut running) = start(
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_file(f.pki.ca_file())
            .client_roots_for(B, b)
            .allow(Allow::dns("billing.internal")),
    )
    .await;

    let impostor =
        f.b.leaf()
            .spiffe(&format!("spiffe://{B}/ns/partner/sa/app"))
            .dns("billing.internal")
            .client()
            .issue()
            .unwrap();
    let client = f.pki.client_with(&impostor).build().unwrap();
    let refusal = running
        .assert_refused(&client, "AccessDenied", RejectReason::NotAllowed)
        .await;
    assert!(refusal.to_string().contains(B), "{refusal}");

    // The same name from the flat roots is believed.
    let billing = f
        .pki
        .ca
        .leaf()
        .dns("billing.internal")
        .client()
        .issue()
        .unwrap();
    let peer = running
        .assert_admitted(&f.pki.client_with(&billing).build().unwrap())
        .await;
    assert_eq!(peer.vouched_by(), &meshtls::VouchedBy::FlatRoots);
}

/// Issue 19, defect 2 (client side): a client with flat roots and a
/// partner's bundle, dialling an internal name with no expected identity,
/// must not accept a partner-signed server that claims that name.
#[tokio::test]
async fn a_trust_domain_bundle_does_not_vouch_for_a_dialled_name() {
    let f = Federation::new();
    let impostor =
        f.b.leaf()
            .spiffe(&format!("spiffe://{B}/ns/partner/sa/api"))
            .dns("billing.internal")
            .server()
            .issue()
            .unwrap();
    let (cert, key) = f.pki.write_cert("impostor", &impostor);
    let (_server, running) = start(
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_file(f.pki.ca_file())
            .any_authenticated(),
    )
    .await;

    let b = f.pki.write("b.pem", f.b.cert_pem());
    let client_cert = f
        .pki
        .ca
        .leaf()
        .dns("caller.internal")
        .client()
        .issue()
        .unwrap();
    let (c, k) = f.pki.write_cert("caller", &client_cert);
    let client = ClientTls::builder()
        .identity_files(c, k)
        .server_roots_file(f.pki.ca_file())
        .server_roots_for(B, b)
        .build()
        .unwrap();
    let seen = common::call(&client, running.addr, "billing.internal").await;
    let refusal = seen.handshake();
    assert_eq!(refusal.reason(), RejectReason::NotAllowed, "{refusal}");
    assert!(refusal.to_string().contains(B), "{refusal}");

    // A server of the flat roots with that name is accepted.
    let honest = f
        .pki
        .ca
        .leaf()
        .dns("billing.internal")
        .server()
        .issue()
        .unwrap();
    let (cert, key) = f.pki.write_cert("honest", &honest);
    let (_honest_server, running) = start(
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_file(f.pki.ca_file())
            .any_authenticated(),
    )
    .await;
    let seen = common::call(&client, running.addr, "billing.internal").await;
    assert!(seen.reply().starts_with("hello"), "{seen:?}");
}

/// What a peer of a trust domain's bundle is believed to be: its SPIFFE ID,
/// and the identity says which bundle vouched.
#[tokio::test]
async fn a_peer_identity_says_which_bundle_vouched_for_it() {
    let f = Federation::new();
    let (_server, mut running) = start(f.server()).await;
    let cert =
        f.b.leaf()
            .spiffe(&format!("spiffe://{B}/ns/app/sa/bob"))
            .dns("bob.internal")
            .client()
            .issue()
            .unwrap();
    let peer = running
        .assert_admitted(&f.pki.client_with(&cert).build().unwrap())
        .await;
    match peer.vouched_by() {
        meshtls::VouchedBy::TrustDomain(td) => assert_eq!(td.to_string(), B),
        other => panic!("vouched by {other:?}"),
    }
    assert!(peer.dns_names().is_empty(), "{:?}", peer.dns_names());
    assert_eq!(
        peer.spiffe_id().unwrap().to_string(),
        format!("spiffe://{B}/ns/app/sa/bob")
    );
}

// Found by the red team of issue 19: the subject of a peer a trust domain's
// bundle vouched for must not reach a rule either.

const PARTNER: &str = "partner.example";

/// A server trusting our CA as flat roots and a partner CA for the
/// partner's trust domain only, with `rule`; a client of the partner CA
/// whose leaf carries the partner's SPIFFE ID and the subject CN=billing.
async fn partner_calls_with(
    rule: Allow,
) -> (Seen, Result<meshtls::PeerIdentity, meshtls::HandshakeError>) {
    let pki = Pki::new();
    let partner = DevCa::new("partner root").unwrap();
    let partner_roots = pki.write("partner.crt", partner.cert_pem());
    let (_server, mut running) = start(
        pki.server()
            .client_roots_for(PARTNER, partner_roots)
            .allow(rule),
    )
    .await;
    let cert = partner
        .leaf()
        .spiffe(&format!("spiffe://{PARTNER}/ns/anything/sa/anything"))
        .cn("billing")
        .client()
        .issue()
        .unwrap();
    let client = pki.client_with(&cert).build().unwrap();
    let seen = running.call(&client).await;
    let server_side = running.next().await;
    (seen, server_side)
}

#[tokio::test]
async fn control_a_partner_cn_satisfies_no_custom_rule_on_common_name() {
    let rule = Allow::custom("billing by CN", |p| p.common_name() == Some("billing"));
    let (_, server_side) = partner_calls_with(rule).await;
    let err = server_side.expect_err("a partner-vouched CN satisfied a custom rule");
    assert_eq!(err.reason(), RejectReason::NotAllowed, "{err}");
}

#[tokio::test]
async fn a_partner_cn_satisfies_no_custom_rule_on_the_subject() {
    // What an application that authorizes on the subject DN writes (the
    // docs' own example of `subject()` is `CN=billing, O=Example`).
    let rule = Allow::custom("billing by subject", |p| p.subject() == "CN=billing");
    let (seen, server_side) = partner_calls_with(rule).await;
    if let Ok(peer) = &server_side {
        assert!(
            !matches!(peer.vouched_by(), VouchedBy::TrustDomain(_)),
            "a leaf vouched for by the bundle of trust domain {PARTNER} only was admitted by a \
             rule on its subject: PeerIdentity::subject() still reports {:?} (common_name() is \
             {:?}, dns_names() {:?}); client saw {seen:?}",
            peer.subject(),
            peer.common_name(),
            peer.dns_names(),
        );
    }
}
