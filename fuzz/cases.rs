//! What each fuzz target does with its input, shared by the libFuzzer
//! targets (`fuzz/fuzz_targets/`, nightly) and `tests/fuzz_corpus.rs`, which
//! replays the corpus and every crash input kept in `fuzz/regressions/` on
//! stable. Each case must never panic, whatever the bytes; where meshtls
//! promises a property (a rule displays as text that parses back to it), the
//! case asserts it.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use meshtls::rustls::client::ResolvesClientCert;
use meshtls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use meshtls::rustls::crypto::aws_lc_rs;
use meshtls::rustls::pki_types::pem::PemObject;
use meshtls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use meshtls::rustls::sign::CertifiedKey;
use meshtls::rustls::{
    self, ClientConfig, ClientConnection, DigitallySignedStruct, ServerConnection, SignatureScheme,
};
use meshtls::{Allow, PeerIdentity, Policy, ServerTls, Source, SpiffeId, TrustDomain};

/// Parts of an input, separated by this line (seeds are PEM files joined
/// with it).
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
        if parts.len() == 7 {
            break;
        }
    }
    parts.push(rest);
    parts
}

/// Loading material from bytes: a chain, a key, roots and CRLs (PEM; DER
/// and anything else inside them as it comes), or a PKCS#12 keystore
/// (input starting with `PKCS12\n`, password `changeit`).
pub fn material(data: &[u8]) {
    if let Some(p12) = data.strip_prefix(b"PKCS12\n".as_slice()) {
        let path = std::env::temp_dir().join(format!(
            "meshtls-fuzz-{}-{:?}.p12",
            std::process::id(),
            std::thread::current().id()
        ));
        if std::fs::write(&path, p12).is_ok() {
            let source = Source::pkcs12_file(&path, "changeit");
            let _ = ServerTls::builder()
                .identity_keystore(source.clone())
                .client_roots(source)
                .dangerous()
                .allow_any_authenticated()
                .build();
            let _ = std::fs::remove_file(&path);
        }
        return;
    }
    let parts = split(data);
    let part = |i: usize| parts.get(i).copied().unwrap_or_default().to_vec();
    let mut builder = ServerTls::builder()
        .identity(Source::pem("chain", part(0)), Source::pem("key", part(1)))
        .client_roots(Source::pem("roots", part(2)));
    if parts.len() > 3 {
        builder = builder.crl(Source::pem("crl", part(3)));
    }
    let _ = builder.dangerous().allow_any_authenticated().build();
}

/// SPIFFE IDs, trust domains and allow rules from text: never a panic, and
/// what parses displays as text that parses back to the same thing.
pub fn identifiers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<SpiffeId>() {
        let again: SpiffeId = id
            .to_string()
            .parse()
            .expect("a SPIFFE ID's display parses");
        assert_eq!(again, id);
    }
    if let Ok(td) = text.parse::<TrustDomain>() {
        let again: TrustDomain = td
            .to_string()
            .parse()
            .expect("a trust domain's display parses");
        assert_eq!(again, td);
    }
    if let Ok(rule) = text.parse::<Allow>() {
        let shown = rule.to_string();
        let again: Allow = shown.parse().expect("a rule's display parses");
        assert_eq!(again.to_string(), shown);
        let _ = Policy::new([rule]);
    }
}

fn rules() -> Vec<Allow> {
    [
        "spiffe://prod.example/ns/billing/sa/api",
        "spiffe://prod.example/ns/*/sa/web",
        "spiffe://prod.example/ns/shop/**",
        "spiffe://other.example/**",
        "dns:api.example.com",
        "dns:*.svc.cluster.local",
    ]
    .iter()
    .filter_map(|r| r.parse().ok())
    .collect()
}

/// A policy check on a `PeerIdentity` read from arbitrary DER: the policy
/// admits a peer exactly when one of its rules matches it alone.
pub fn policy(data: &[u8]) {
    let Ok(peer) = PeerIdentity::from_leaf_der(data) else {
        return;
    };
    let _ = (
        peer.to_string(),
        peer.display_name(),
        peer.subject(),
        peer.serial(),
    );
    let rules = rules();
    let Ok(policy) = Policy::new(rules.clone()) else {
        return;
    };
    let any = rules.iter().any(|r| r.matches(&peer));
    assert_eq!(
        policy.check(&peer).is_ok(),
        any,
        "policy and its rules disagree on {peer}"
    );
}

const CA: &str = include_str!("fixtures/ca.crt");
const CRL: &str = include_str!("fixtures/ca.crl");
const SERVER_CRT: &str = include_str!("fixtures/server.crt");
const SERVER_KEY: &str = include_str!("fixtures/server.key");
const CLIENT_KEY: &str = include_str!("fixtures/client.key");

fn server() -> &'static ServerTls {
    static SERVER: OnceLock<ServerTls> = OnceLock::new();
    SERVER.get_or_init(|| {
        ServerTls::builder()
            .identity(
                Source::pem("server.crt", SERVER_CRT),
                Source::pem("server.key", SERVER_KEY),
            )
            .client_roots(Source::pem("ca.crt", CA))
            .crl(Source::pem("ca.crl", CRL))
            .allow(Allow::spiffe_trust_domain("fuzz.example"))
            .build()
            .expect("the fuzz fixtures are valid")
    })
}

/// Presents whatever chain the input holds, signed with the fixture key.
#[derive(Debug)]
struct Presenting(Arc<CertifiedKey>);

impl ResolvesClientCert for Presenting {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client side does not judge the server here.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The judgment on an arbitrary client chain (DER certificates separated by
/// [`SEPARATOR`]): a real in-memory handshake against a meshtls server, then
/// the acceptor's post-handshake identification. Whatever the chain, the
/// handshake ends in a verdict, never a panic, and a chain that does not
/// lead to the fixture CA is never admitted.
pub fn judgment(data: &[u8]) {
    let _ = judgment_admits(data);
}

/// [`judgment`], saying whether the peer was admitted in the end.
pub fn judgment_admits(data: &[u8]) -> bool {
    let chain: Vec<CertificateDer<'static>> = split(data)
        .into_iter()
        .take(5)
        .map(|der| CertificateDer::from(der.to_vec()))
        .collect();
    let provider = Arc::new(aws_lc_rs::default_provider());
    let Ok(key) = PrivateKeyDer::from_pem_slice(CLIENT_KEY.as_bytes()) else {
        return false;
    };
    let Ok(signer) = provider.key_provider.load_private_key(key) else {
        return false;
    };
    let certified = Arc::new(CertifiedKey::new(chain.clone(), signer));
    let Ok(config) = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
    else {
        return false;
    };
    let config = config
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_cert_resolver(Arc::new(Presenting(certified)));
    let server = server();
    let Ok(name) = ServerName::try_from("localhost") else {
        return false;
    };
    let (Ok(mut client), Ok(mut conn)) = (
        ClientConnection::new(Arc::new(config), name),
        ServerConnection::new(server.config()),
    ) else {
        return false;
    };
    for _ in 0..10 {
        let mut wire = Vec::new();
        while client.wants_write() {
            if client.write_tls(&mut wire).is_err() {
                return false;
            }
        }
        let mut bytes = wire.as_slice();
        while !bytes.is_empty() {
            if conn.read_tls(&mut bytes).is_err() || conn.process_new_packets().is_err() {
                return false; // refused: a verdict
            }
        }
        let mut wire = Vec::new();
        while conn.wants_write() {
            if conn.write_tls(&mut wire).is_err() {
                return false;
            }
        }
        let mut bytes = wire.as_slice();
        while !bytes.is_empty() {
            if client.read_tls(&mut bytes).is_err() || client.process_new_packets().is_err() {
                return false;
            }
        }
        if !conn.is_handshaking() {
            break;
        }
    }
    if conn.is_handshaking() {
        return false;
    }
    // Admitted by the verifier: the acceptor's check must agree, and the
    // chain must be the fixture CA's.
    match server.acceptor().identify(&conn) {
        Ok(peer) => {
            assert!(
                peer.spiffe_id()
                    .is_some_and(|id| id.trust_domain() == "fuzz.example"),
                "admitted a peer outside the allow-list: {peer}"
            );
            true
        }
        Err(_) => false,
    }
}
