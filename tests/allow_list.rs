//! Allow-list semantics on real certificates, and over real handshakes where
//! the wire matters.

mod common;

use common::{Pki, TD, bare_client_pem, call_bare, identity_of, serve, start, svid, td_pattern};
use meshtls::error::RuleError;
use meshtls::rustls;
use meshtls::{Allow, Policy, RejectReason};

fn policy(rules: &[&str]) -> Policy {
    Policy::new(rules.iter().map(|r| r.parse::<Allow>().unwrap())).unwrap()
}

#[test]
fn dns_wildcard_matches_exactly_one_label() {
    let pki = Pki::new();
    let p = policy(&["dns:*.svc.cluster.local"]);
    let with_dns = |name: &str| identity_of(&pki.ca.leaf().dns(name).client().issue().unwrap());

    assert!(p.check(&with_dns("billing.svc.cluster.local")).is_ok());
    assert!(
        p.check(&with_dns("Billing.SVC.Cluster.Local")).is_ok(),
        "case-insensitive"
    );
    assert!(
        p.check(&with_dns("billing.svc.cluster.local.")).is_err(),
        "a SAN with a trailing dot is not preferred name syntax (RFC 5280)"
    );
    assert!(
        p.check(&with_dns("a.b.svc.cluster.local")).is_err(),
        "two labels"
    );
    assert!(p.check(&with_dns("svc.cluster.local")).is_err(), "no label");
    assert!(p.check(&with_dns("billing.svc.cluster.localhost")).is_err());
    assert!(p.check(&with_dns("billingsvc.cluster.local")).is_err());
}

#[test]
fn wildcard_san_in_peer_certificate_never_satisfies_a_rule() {
    let pki = Pki::new();
    let wildcard_peer = identity_of(&pki.ca.leaf().dns("*.example.com").client().issue().unwrap());
    assert!(
        policy(&["dns:api.example.com"])
            .check(&wildcard_peer)
            .is_err()
    );
    assert!(
        policy(&["dns:*.example.com"])
            .check(&wildcard_peer)
            .is_err()
    );
}

#[test]
fn rules_are_typed() {
    let pki = Pki::new();
    // A DNS rule does not look at the CN...
    let cn_only = identity_of(
        &pki.ca
            .leaf()
            .cn("billing.internal")
            .client()
            .issue()
            .unwrap(),
    );
    assert!(policy(&["dns:billing.internal"]).check(&cn_only).is_err());
    // ...nor at a URI SAN whose host is that name.
    let uri = identity_of(&pki.client_cert("spiffe://billing.internal/x"));
    assert!(policy(&["dns:billing.internal"]).check(&uri).is_err());
    // A SPIFFE rule does not look at DNS SANs.
    let dns = identity_of(&pki.ca.leaf().dns("prod.example").client().issue().unwrap());
    assert!(policy(&[&format!("spiffe://{TD}/**")]).check(&dns).is_err());
}

#[test]
fn spiffe_patterns_match_on_segment_boundaries_with_real_svids() {
    let pki = Pki::new();
    let svid = |id: &str| identity_of(&pki.client_cert(id));
    let p = policy(&["spiffe://td/ns/prod/**", "spiffe://td/ns/*/sa/api"]);
    assert!(p.check(&svid("spiffe://td/ns/prod/sa/web")).is_ok());
    assert!(p.check(&svid("spiffe://td/ns/staging/sa/api")).is_ok());
    assert!(p.check(&svid("spiffe://td/ns/production/sa/web")).is_err());
    assert!(p.check(&svid("spiffe://td/ns/staging/sa/api/v2")).is_err());

    let domain = policy(&["spiffe://td/**"]);
    assert!(domain.check(&svid("spiffe://td/anything")).is_ok());
    assert!(domain.check(&svid("spiffe://td.evil/anything")).is_err());
    assert!(domain.check(&svid("spiffe://evil.td/anything")).is_err());
}

#[test]
fn a_thousand_rules_still_match_exactly() {
    let pki = Pki::new();
    let rules: Vec<Allow> = (0..1000)
        .map(|i| Allow::spiffe_id(&format!("spiffe://{TD}/ns/n{i}/sa/s{i}")))
        .chain((0..1000).map(|i| Allow::dns(&format!("svc{i}.internal"))))
        .collect();
    let p = Policy::new(rules).unwrap();
    assert!(
        p.check(&identity_of(&pki.client_cert(&svid("n999", "s999"))))
            .is_ok()
    );
    assert!(
        p.check(&identity_of(&pki.client_cert(&svid("n999", "s998"))))
            .is_err()
    );
    let dns = identity_of(
        &pki.ca
            .leaf()
            .dns("svc500.internal")
            .client()
            .issue()
            .unwrap(),
    );
    assert!(p.check(&dns).is_ok());
    let err = p
        .check(&identity_of(&pki.client_cert("spiffe://x/y")))
        .unwrap_err();
    assert_eq!(err.rules, 2000);
}

#[test]
fn custom_rules_see_the_peer() {
    let pki = Pki::new();
    let cert = pki.client_cert("spiffe://td/a");
    let serial = cert.serial().to_owned();
    let p = Policy::new([Allow::custom("one serial", move |peer| {
        peer.serial() == serial
    })])
    .unwrap();
    assert!(p.check(&identity_of(&cert)).is_ok());
    assert!(
        p.check(&identity_of(&pki.client_cert("spiffe://td/a")))
            .is_err()
    );
}

#[tokio::test]
async fn cn_rules_are_off_by_default() {
    let pki = Pki::new();
    let err = pki
        .server_allow(Allow::cn("legacy-batch"))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            meshtls::Error::Config(meshtls::error::ConfigError::Rule(
                RuleError::CnNotEnabled { .. }
            ))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("allow_legacy_cn()"), "{err}");

    // Opted in, a CN-only client certificate (no SAN) is admitted by its CN.
    let (_server, mut running) = start(
        pki.server()
            .dangerous()
            .allow_legacy_cn()
            .allow(Allow::cn("legacy-batch")),
    )
    .await;
    let legacy = pki.ca.leaf().cn("legacy-batch").client().issue().unwrap();
    let seen = running
        .call(&pki.client_with(&legacy).build().unwrap())
        .await;
    assert!(seen.reply().starts_with("hello legacy-batch"), "{seen:?}");
    assert_eq!(
        running.expect_admitted().await.common_name(),
        Some("legacy-batch")
    );
}

#[tokio::test]
async fn path_prefix_is_not_a_string_prefix_over_the_wire() {
    let pki = Pki::new();
    let server = pki.server_allow(td_pattern("ns/prod/**")).build().unwrap();
    let mut running = serve(&server).await;

    let inside = pki.client(&svid("prod", "api")).build().unwrap();
    running.assert_admitted(&inside).await;

    let lookalike = pki.client(&svid("production", "api")).build().unwrap();
    running
        .assert_refused(&lookalike, "AccessDenied", RejectReason::NotAllowed)
        .await;
}

#[tokio::test]
async fn certificate_with_two_uri_sans_is_not_an_svid() {
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_any()).await;
    let two = pki
        .ca
        .leaf()
        .spiffe(&format!("spiffe://{TD}/a"))
        .uri("https://example.com/b")
        .client()
        .issue()
        .unwrap();
    let seen = running.call(&pki.client_with(&two).build().unwrap()).await;
    assert!(seen.refused().contains("AccessDenied"), "{seen:?}");
    let err = running
        .expect_refused(RejectReason::NotAWorkloadCertificate)
        .await;
    assert!(err.to_string().contains("exactly one"), "{err}");
}

#[tokio::test]
async fn ca_certificate_presented_as_client_leaf_is_refused() {
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_any()).await;
    // The CA's own certificate and key, presented as if they were a client's.
    let config = bare_client_pem(
        pki.ca.cert_pem(),
        Some((pki.ca.cert_pem(), pki.ca.key_pem())),
        &[&rustls::version::TLS13],
    );
    let err = call_bare(config, running.addr).await.unwrap_err();
    assert!(!err.is_empty());
    running
        .expect_refused(RejectReason::NotAWorkloadCertificate)
        .await;
}

#[tokio::test]
async fn allow_list_replaced_at_runtime() {
    let pki = Pki::new();
    let a = format!("spiffe://{TD}/a");
    let b = format!("spiffe://{TD}/b");
    let (server, mut running) = start(pki.server_admitting(&a)).await;
    let client_a = pki.client(&a).build().unwrap();
    let client_b = pki.client(&b).build().unwrap();

    running.assert_admitted(&client_a).await;
    running.refused_late(&client_b, "AccessDenied").await;

    server.set_allow_list([Allow::spiffe_id(&b)]).unwrap();
    // a holds a ticket from before; it must not resume past the new list.
    running
        .assert_refused(&client_a, "AccessDenied", RejectReason::NotAllowed)
        .await;
    running.assert_admitted(&client_b).await;

    assert!(matches!(
        server.set_allow_list([]),
        Err(meshtls::Error::Config(
            meshtls::error::ConfigError::NoAllowList
        ))
    ));
}

#[test]
fn a_dns_san_with_a_trailing_dot_matches_no_rule() {
    let pki = Pki::new();
    let dotted = identity_of(
        &pki.ca
            .leaf()
            .dns("api.example.test.")
            .client()
            .issue()
            .unwrap(),
    );
    for rule in [
        "dns:api.example.test",
        "dns:api.example.test.",
        "dns:*.example.test",
    ] {
        assert!(policy(&[rule]).check(&dotted).is_err(), "{rule}");
        assert!(!rule.parse::<Allow>().unwrap().matches(&dotted), "{rule}");
    }
}

#[test]
fn a_leaf_named_after_a_bare_trust_domain_is_not_a_workload() {
    // X509-SVID 5.2: a leaf's SPIFFE ID has a path.
    let pki = Pki::new();
    let leaf = pki
        .ca
        .leaf()
        .uri(&format!("spiffe://{TD}"))
        .client()
        .issue()
        .unwrap();
    let admitted_by = |rule: &str| {
        meshtls::PeerIdentity::from_leaf_der(leaf.der())
            .map(|peer| policy(&[rule]).check(&peer).is_ok())
            .unwrap_or(false)
    };
    assert!(!admitted_by(&format!("spiffe://{TD}/**")));
    let by_trust_domain = meshtls::PeerIdentity::from_leaf_der(leaf.der())
        .map(|peer| {
            Policy::new([Allow::spiffe_trust_domain(TD)])
                .unwrap()
                .check(&peer)
                .is_ok()
        })
        .unwrap_or(false);
    assert!(!by_trust_domain);
}

#[tokio::test]
async fn a_bare_trust_domain_client_is_refused_over_the_wire() {
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_td()).await;
    let leaf = pki
        .ca
        .leaf()
        .uri(&format!("spiffe://{TD}"))
        .client()
        .issue()
        .unwrap();
    let seen = running.call(&pki.client_with(&leaf).build().unwrap()).await;
    assert!(seen.refused().contains("AccessDenied"), "{seen:?}");
    let err = running
        .expect_refused(RejectReason::NotAWorkloadCertificate)
        .await;
    assert!(err.detail().contains("path"), "{err}");
}

#[test]
fn a_cn_rule_never_matches_a_certificate_with_sans() {
    // CN is never a fallback: it names only certificates with no SAN at all.
    let pki = Pki::new();
    let legacy = Policy::with_legacy_cn([Allow::cn("billing")]).unwrap();
    for leaf in [
        pki.ca.leaf().cn("billing").dns("other.example").client(),
        pki.ca
            .leaf()
            .cn("billing")
            .spiffe(&format!("spiffe://{TD}/x"))
            .client(),
        pki.ca.leaf().cn("billing").dns("10.0.0.1").client(),
    ] {
        let peer = identity_of(&leaf.issue().unwrap());
        assert!(legacy.check(&peer).is_err(), "{peer:?}");
        assert!(!Allow::cn("billing").matches(&peer), "{peer:?}");
    }
    let cn_only = identity_of(&pki.ca.leaf().cn("billing").client().issue().unwrap());
    assert!(legacy.check(&cn_only).is_ok());
    // One rule alone is judged as a default builder judges it: without
    // `allow_legacy_cn` a cn: rule admits nobody (it used to admit here,
    // disagreeing with every server built with default settings).
    assert!(!Allow::cn("billing").matches(&cn_only));
}

#[test]
fn expected_servers_are_replaced_only_on_a_client_built_with_them() {
    // A client built without expect_server checks the name it dials: it has
    // no rules to replace (found by the model test when a refactor inverted
    // this check).
    let pki = Pki::new();
    let dialling = pki.client(&svid("a", "b")).build().unwrap();
    let err = dialling
        .set_expected_servers([Allow::dns("localhost")])
        .unwrap_err();
    assert!(
        matches!(
            err,
            meshtls::Error::Config(meshtls::error::ConfigError::NotBuiltWithRules)
        ),
        "{err:?}"
    );
    let expecting = pki
        .client(&svid("a", "b"))
        .expect_server(Allow::dns("localhost"))
        .build()
        .unwrap();
    expecting
        .set_expected_servers([Allow::dns("other.example")])
        .unwrap();
}
