//! Shared by the benchmarks: certificates, meshtls and bare rustls configs
//! built on the same material, and an in-memory handshake pump that times
//! each side separately.
#![allow(dead_code, unreachable_pub)]

pub mod echo;
pub mod threads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtls::dev::{DevCa, KeyType};
use meshtls::rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use meshtls::rustls::pki_types::pem::PemObject;
use meshtls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use meshtls::rustls::server::WebPkiClientVerifier;
use meshtls::rustls::{
    self, ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection,
};
use meshtls::{Allow, ClientTls, ServerTls, Source};

pub const CLIENT_ID: &str = "spiffe://bench.example/ns/app/sa/client";
pub const SERVER_ID: &str = "spiffe://bench.example/ns/app/sa/server";

/// One benchmark scenario's material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub key: KeyType,
    pub intermediate: bool,
    pub post_quantum: bool,
}

impl Case {
    pub const BASE: Self = Self {
        key: KeyType::EcdsaP256,
        intermediate: false,
        post_quantum: true,
    };

    pub fn name(self) -> String {
        let key = match self.key {
            KeyType::EcdsaP256 => "ECDSA P-256",
            KeyType::Ed25519 => "Ed25519",
            KeyType::Rsa2048 => "RSA-2048",
            _ => "other",
        };
        format!(
            "{key}, {}, {}",
            if self.intermediate {
                "via intermediate"
            } else {
                "root-signed"
            },
            if self.post_quantum {
                "X25519MLKEM768"
            } else {
                "X25519"
            }
        )
    }

    /// The scenarios: a base case and one dimension varied at a time.
    pub fn all() -> Vec<Self> {
        let b = Self::BASE;
        vec![
            b,
            Self {
                key: KeyType::Ed25519,
                ..b
            },
            Self {
                key: KeyType::Rsa2048,
                ..b
            },
            Self {
                intermediate: true,
                ..b
            },
            Self {
                post_quantum: false,
                ..b
            },
        ]
    }
}

/// PEM material for both sides.
pub struct Material {
    root: DevCa,
    intermediate: Option<DevCa>,
    key_type: KeyType,
    pub ca_pem: String,
    pub server_chain: String,
    pub server_key: String,
    pub client_chain: String,
    pub client_key: String,
}

impl Material {
    pub fn new(case: Case) -> Self {
        let root = DevCa::new("bench root").unwrap();
        let intermediate = case
            .intermediate
            .then(|| root.intermediate("bench intermediate").unwrap());
        let issuer = intermediate.as_ref().unwrap_or(&root);
        let server = issuer
            .leaf()
            .spiffe(SERVER_ID)
            .dns("localhost")
            .server()
            .key_type(case.key)
            .issue()
            .unwrap();
        let client = issuer
            .leaf()
            .spiffe(CLIENT_ID)
            .client()
            .key_type(case.key)
            .issue()
            .unwrap();
        Self {
            ca_pem: root.cert_pem().to_owned(),
            server_chain: server.chain_pem().to_owned(),
            server_key: server.key_pem().to_owned(),
            client_chain: client.chain_pem().to_owned(),
            client_key: client.key_pem().to_owned(),
            root,
            intermediate,
            key_type: case.key,
        }
    }

    /// The same material with a newly minted client certificate.
    pub fn with_new_client(&self) -> (String, String) {
        let issuer = self.intermediate.as_ref().unwrap_or(&self.root);
        let client = issuer
            .leaf()
            .spiffe(CLIENT_ID)
            .client()
            .key_type(self.key_type)
            .issue()
            .unwrap();
        (client.chain_pem().to_owned(), client.key_pem().to_owned())
    }
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// The provider meshtls uses (TLS 1.3 suites, its group order), rebuilt for
/// the bare configs so both sides compare like with like.
pub fn bare_provider(post_quantum: bool) -> Arc<CryptoProvider> {
    use aws_lc_rs::cipher_suite::*;
    use aws_lc_rs::kx_group::*;
    let mut kx: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    if post_quantum {
        kx.push(X25519MLKEM768);
    }
    kx.extend([X25519, SECP256R1, SECP384R1]);
    Arc::new(CryptoProvider {
        cipher_suites: vec![TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256],
        kx_groups: kx,
        ..aws_lc_rs::default_provider()
    })
}

fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem) {
        roots.add(c).unwrap();
    }
    Arc::new(roots)
}

/// A hand-written rustls server: WebPkiClientVerifier, tickets, no allow-list.
pub fn bare_server(m: &Material, post_quantum: bool) -> Arc<ServerConfig> {
    let provider = bare_provider(post_quantum);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&m.ca_pem), provider.clone())
        .build()
        .unwrap();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&m.server_chain), key(&m.server_key))
        .unwrap();
    config.ticketer = aws_lc_rs::Ticketer::new().unwrap();
    Arc::new(config)
}

/// A hand-written rustls client: webpki server verification, a client cert.
pub fn bare_client(m: &Material, post_quantum: bool, resume: bool) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(bare_provider(post_quantum))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&m.ca_pem))
        .with_client_auth_cert(certs(&m.client_chain), key(&m.client_key))
        .unwrap();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

pub fn meshtls_server(m: &Material, post_quantum: bool) -> ServerTls {
    meshtls_server_builder(m, post_quantum).build().unwrap()
}

/// The builder of [`meshtls_server`], for benches that set more.
pub fn meshtls_server_builder(
    m: &Material,
    post_quantum: bool,
) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
    let b = ServerTls::builder()
        .identity(
            Source::pem("server chain", m.server_chain.clone()),
            Source::pem("server key", m.server_key.clone()),
        )
        .client_roots(Source::pem("roots", m.ca_pem.clone()))
        .allow(Allow::spiffe_id(CLIENT_ID));
    if post_quantum {
        b
    } else {
        b.dangerous().classical_key_exchange_only()
    }
}

pub fn meshtls_client(m: &Material, post_quantum: bool, resume: bool) -> ClientTls {
    meshtls_client_builder(m, post_quantum, resume)
        .build()
        .unwrap()
}

/// The builder of [`meshtls_client`], for benches that set more.
pub fn meshtls_client_builder(
    m: &Material,
    post_quantum: bool,
    resume: bool,
) -> meshtls::ClientTlsBuilder<meshtls::Ready> {
    let mut b = ClientTls::builder()
        .identity(
            Source::pem("client chain", m.client_chain.clone()),
            Source::pem("client key", m.client_key.clone()),
        )
        .server_roots(Source::pem("roots", m.ca_pem.clone()));
    if !resume {
        b = b.resumption(meshtls::Resumption::Disabled);
    }
    if post_quantum {
        b
    } else {
        b.dangerous().classical_key_exchange_only()
    }
}

/// Time spent by each side of one handshake.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sides {
    pub server: Duration,
    pub client: Duration,
}

/// Post-handshake identity checks, as the acceptor and connector make them.
pub struct Checks<'a> {
    pub server: Option<&'a meshtls::Acceptor>,
    pub client: Option<&'a meshtls::Connector>,
}

/// Runs one handshake in memory, timing each side (tickets included), and
/// returns the times and the handshake kind the server saw.
pub fn handshake(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<ClientConfig>,
    checks: &Checks<'_>,
) -> (Sides, HandshakeKind) {
    let mut t = Sides::default();
    let name = ServerName::try_from("localhost").unwrap();
    let start = Instant::now();
    let mut client = ClientConnection::new(client_config.clone(), name).unwrap();
    t.client += start.elapsed();
    let start = Instant::now();
    let mut server = ServerConnection::new(server_config.clone()).unwrap();
    t.server += start.elapsed();
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let start = Instant::now();
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        t.client += start.elapsed();
        let start = Instant::now();
        let mut input = &buf[..];
        while !input.is_empty() {
            server.read_tls(&mut input).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut out = Vec::with_capacity(16 * 1024);
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        t.server += start.elapsed();
        let start = Instant::now();
        let mut input = &out[..];
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets().unwrap();
        }
        t.client += start.elapsed();
        if !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write()
        {
            break;
        }
    }
    let kind = server.handshake_kind().unwrap();
    assert_eq!(client.handshake_kind(), Some(kind));
    if let Some(acceptor) = checks.server {
        let start = Instant::now();
        acceptor.identify(&server).unwrap();
        t.server += start.elapsed();
    }
    if let Some(connector) = checks.client {
        let start = Instant::now();
        connector.identify(&client, "localhost").unwrap();
        t.client += start.elapsed();
    }
    (t, kind)
}

/// Like [`handshake`], keeping the server connection for later checks.
pub fn handshake_keep(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<ClientConfig>,
    keep: &mut Option<ServerConnection>,
) -> (Sides, HandshakeKind) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(client_config.clone(), name).unwrap();
    let mut server = ServerConnection::new(server_config.clone()).unwrap();
    let mut buf = Vec::new();
    while client.is_handshaking()
        || server.is_handshaking()
        || client.wants_write()
        || server.wants_write()
    {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut input = &buf[..];
        while !input.is_empty() {
            server.read_tls(&mut input).unwrap();
            server.process_new_packets().unwrap();
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut input = &buf[..];
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets().unwrap();
        }
    }
    let kind = server.handshake_kind().unwrap();
    *keep = Some(server);
    (Sides::default(), kind)
}

/// Median of a list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn us(d: f64) -> String {
    format!("{:.1} µs", d * 1e6)
}
