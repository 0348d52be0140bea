//! The X509-SVID rules (the SPIFFE X509-SVID specification, with go-spiffe's
//! test vectors as the yardstick) and RFC 5280's rule for signing
//! certificates, over the wire: each refused with the reason, a control
//! beside each that passes.

mod common;

use std::time::{Duration, SystemTime};

use common::{Pki, serve, spiffe_in, start};
use meshtls::{Allow, ClientTls, RejectReason, ServerTls, Source};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

const TD: &str = "svid.test";

/// A leaf or CA certificate's shape, for rcgen.
struct Shape {
    uris: Vec<String>,
    dns: Vec<String>,
    key_usages: Vec<KeyUsagePurpose>,
    ca: bool,
}

impl Shape {
    fn leaf() -> Self {
        Self {
            uris: Vec::new(),
            dns: Vec::new(),
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            ca: false,
        }
    }

    fn spiffe(mut self, id: &str) -> Self {
        self.uris.push(id.to_owned());
        self
    }

    fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }

    fn key_usages(mut self, usages: Vec<KeyUsagePurpose>) -> Self {
        self.key_usages = usages;
        self
    }

    fn params(&self, cn: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for uri in &self.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().unwrap()));
        }
        for name in &self.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into().unwrap()));
        }
        params.key_usages = self.key_usages.clone();
        if self.ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + Duration::from_secs(3600)).into();
        params
    }
}

/// A client presenting `chain` (PEM, leaf first) with `key`, trusting the
/// PKI's CA for the server.
fn client(pki: &Pki, chain: String, key: String) -> ClientTls {
    ClientTls::builder()
        .identity(Source::pem("leaf.crt", chain), Source::pem("leaf.key", key))
        .server_roots(Source::pem("ca", pki.ca.cert_pem()))
        .build()
        .unwrap()
}

/// A leaf of `shape` signed by the PKI's root (no intermediate).
fn leaf(pki: &Pki, shape: &Shape) -> ClientTls {
    let ca_key = KeyPair::from_pem(pki.ca.key_pem()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(pki.ca.cert_pem(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = shape.params("leaf").signed_by(&key, &issuer).unwrap();
    client(pki, cert.pem(), key.serialize_pem())
}

/// A leaf of `leaf_shape` under an intermediate of `ca_shape`, signed by
/// the PKI's root; the client presents both.
fn under_intermediate(pki: &Pki, ca_shape: &Shape, leaf_shape: &Shape) -> ClientTls {
    let root_key = KeyPair::from_pem(pki.ca.key_pem()).unwrap();
    let root = Issuer::from_ca_cert_pem(pki.ca.cert_pem(), root_key).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let ca_params = ca_shape.params("issuing");
    let ca_cert = ca_params.signed_by(&ca_key, &root).unwrap();
    let issuing = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = leaf_shape.params("leaf").signed_by(&key, &issuing).unwrap();
    client(
        pki,
        format!("{}{}", cert.pem(), ca_cert.pem()),
        key.serialize_pem(),
    )
}

fn server(pki: &Pki) -> ServerTls {
    pki.server_allow(Allow::spiffe_trust_domain(TD))
        .allow(Allow::dns("plain.internal"))
        .build()
        .unwrap()
}

fn signing_ca() -> Shape {
    Shape {
        uris: Vec::new(),
        dns: Vec::new(),
        key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        ca: true,
    }
}

#[tokio::test]
async fn an_svid_leaf_needs_digital_signature() {
    let pki = Pki::new();
    let mut running = serve(&server(&pki)).await;
    let good = leaf(&pki, &Shape::leaf().spiffe(&spiffe_in(TD, "a", "good")));
    running.assert_admitted(&good).await;

    let no_ds = leaf(
        &pki,
        &Shape::leaf()
            .spiffe(&spiffe_in(TD, "a", "no-ds"))
            .key_usages(vec![KeyUsagePurpose::KeyEncipherment]),
    );
    let err = running
        .assert_refused(&no_ds, "", RejectReason::NotAWorkloadCertificate)
        .await;
    assert!(err.to_string().contains("digitalSignature"), "{err}");

    let no_ku = leaf(
        &pki,
        &Shape::leaf()
            .spiffe(&spiffe_in(TD, "a", "no-ku"))
            .key_usages(vec![]),
    );
    let err = running
        .assert_refused(&no_ku, "", RejectReason::NotAWorkloadCertificate)
        .await;
    assert!(err.to_string().contains("keyUsage"), "{err}");
}

#[tokio::test]
async fn a_leaf_without_a_spiffe_id_keeps_absent_key_usage_as_any() {
    let pki = Pki::new();
    let mut running = serve(&server(&pki)).await;
    let plain = leaf(
        &pki,
        &Shape::leaf().dns("plain.internal").key_usages(vec![]),
    );
    running.assert_admitted(&plain).await;
}

#[tokio::test]
async fn a_signing_certificate_with_key_usage_needs_key_cert_sign() {
    let pki = Pki::new();
    let mut running = serve(&server(&pki)).await;
    let good = under_intermediate(&pki, &signing_ca(), &Shape::leaf().dns("plain.internal"));
    running.assert_admitted(&good).await;

    let no_cert_sign = signing_ca().key_usages(vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ]);
    for leaf_shape in [
        Shape::leaf().dns("plain.internal"),
        Shape::leaf().spiffe(&spiffe_in(TD, "a", "under-bad-ca")),
    ] {
        let client = under_intermediate(&pki, &no_cert_sign, &leaf_shape);
        let err = running
            .assert_refused(&client, "", RejectReason::BadCertificate)
            .await;
        assert!(err.to_string().contains("keyCertSign"), "{err}");
    }
}

#[tokio::test]
async fn a_signing_certificate_has_no_spiffe_path() {
    let pki = Pki::new();
    let mut running = serve(&server(&pki)).await;
    // A signing certificate may name its trust domain ...
    let named = signing_ca().spiffe(&format!("spiffe://{TD}"));
    let good = under_intermediate(
        &pki,
        &named,
        &Shape::leaf().spiffe(&spiffe_in(TD, "a", "ok")),
    );
    running.assert_admitted(&good).await;
    // ... but not a workload.
    let with_path = signing_ca().spiffe(&format!("spiffe://{TD}/ns/a"));
    let client = under_intermediate(
        &pki,
        &with_path,
        &Shape::leaf().spiffe(&spiffe_in(TD, "a", "x")),
    );
    let err = running
        .assert_refused(&client, "", RejectReason::BadCertificate)
        .await;
    assert!(err.to_string().contains("path"), "{err}");
}

/// With roots per trust domain, a leaf whose SPIFFE URI does not parse is
/// refused as what it is, not as an unknown issuer.
#[tokio::test]
async fn a_malformed_spiffe_id_is_named_with_roots_per_trust_domain() {
    let pki = Pki::new();
    let (cert, key) = pki.write_cert("server", &pki.server_cert());
    let (_server, mut running) = start(
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_for(TD, pki.ca_file())
            .allow(Allow::spiffe_trust_domain(TD)),
    )
    .await;
    let bad = leaf(&pki, &Shape::leaf().spiffe(&format!("spiffe://{TD}/a//b")));
    let err = running
        .assert_refused(&bad, "", RejectReason::NotAWorkloadCertificate)
        .await;
    assert!(err.to_string().contains("not a valid SPIFFE ID"), "{err}");
}

/// A refused leaf that parses is named by what it says (bounded, escaped),
/// never "unreadable".
#[tokio::test]
async fn a_refused_readable_leaf_is_named() {
    let pki = Pki::new();
    let other = Pki::named("another root");
    let mut running = serve(&server(&pki)).await;
    // Two URI SANs: not an SVID, and from an unknown CA.
    let ca_key = KeyPair::from_pem(other.ca.key_pem()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(other.ca.cert_pem(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut shape = Shape::leaf().spiffe(&spiffe_in(TD, "a", "two"));
    shape.uris.push("https://two.example/".into());
    let cert = shape.params("leaf").signed_by(&key, &issuer).unwrap();
    let client = client(&pki, cert.pem(), key.serialize_pem());
    let err = running
        .assert_refused(&client, "", RejectReason::UnknownIssuer)
        .await;
    let text = err.to_string();
    assert!(!text.contains("unreadable"), "{text}");
    assert!(text.contains(&spiffe_in(TD, "a", "two")), "{text}");
}
