//! The machine that checks the trust invariant (DESIGN.md principle 4,
//! REDTEAM.md "The invariant"): random sequences of operations over a small
//! world, every step checked against an oracle that shares no code with
//! meshtls's judgment, and a failing sequence shrunk by proptest to a short
//! one that still fails.
//!
//! Run it: `cargo test --all-features --test model` runs 128 cases of up
//! to 32 operations (`PROPTEST_CASES` changes the number; about 15 s in a
//! debug build on 2 cores when nothing fails). Long mode:
//! `MESHTLS_MODEL_CASES=2000 cargo test --all-features --test model`
//! (`MESHTLS_MODEL_MAX_OPS` changes the length of the sequences). A failure found is
//! kept in `tests/model.proptest-regressions` and replayed first on every
//! run; commit that file. The shortest sequences found for each hole are
//! also kept by hand at the end of this file, next to a control sequence
//! that exercises every operation where meshtls holds.
//!
//! Exploring: `MESHTLS_MODEL_IGNORE=rule3,live-kept` (parts of the `tag:`
//! printed with a failure) goes past a divergence that is already known (a
//! divergence of state, such as a reload that should have failed, ends the
//! case instead); `MESHTLS_MODEL_TRACE=1` prints every step, what it came
//! to, and the divergences ignored. CI sets neither.
//!
//! # The world (minted once, valid relative to a fixed start time)
//!
//! - Flat roots: P ("mesh root"), P2 (the same name, another key: a key
//!   rotation), and an intermediate I under P. Trust domain `td-a.test` has
//!   root A, `td-b.test` root B (given with `client_roots_for` /
//!   `server_roots_for`); the flat roots are a subset of {P, P2} that
//!   operations change, per side.
//! - Workloads, each usable as a client and as a server (both EKUs):
//!   alpha (SPIFFE ID in td-a, URI SAN only, from A), beta (SPIFFE ID in
//!   td-b plus DNS:billing.internal, from B: a partner CA minting an internal
//!   name), billing (DNS:billing.internal from I), api (DNS:api.internal
//!   from P2), legacy (CN legacy-batch, no SAN, from P), short
//!   (DNS:short.internal from P, valid an hour), and the certificates that
//!   break the X509-SVID rules: no-digsig (keyUsage without
//!   digitalSignature), no-ku (no keyUsage), ku-ca (under an intermediate of
//!   A whose keyUsage lacks keyCertSign), path-ca (under an intermediate of A
//!   whose SPIFFE ID has a path), gamma (a SPIFFE ID of td-c.test, which has
//!   no bundle, plus DNS:api.internal, from P).
//! - The services under test (one `ServerTls`, one `ClientTls`, fresh each
//!   case, on a `ManualClock` standing at the start) present certificates
//!   from I with a SPIFFE ID of `td-sut.test`, a trust domain neither
//!   trusts: their own chain is then never judged against roots they trust
//!   (a service whose own chain runs through I under P refuses every reload
//!   that trusts P2 but not P: webpki reports a bad signature, which the
//!   material check does not tolerate the way it tolerates an unknown
//!   issuer), and their chain carries I, so I's CRL loads.
//! - CRLs (one file per side, optional per case): one CRL per CA (P, P2, I,
//!   A, B) while that CA is trusted. Operations revoke and unrevoke
//!   workloads (and I), shorten a CA's nextUpdate so that the clock passes
//!   it, refresh it, and publish two CRLs of one CA: an older one first, or
//!   two with the same thisUpdate and CRL number (two handles on the CA's key) and
//!   different contents, which must be refused at load.
//!
//! Every notAfter and nextUpdate is an odd number of seconds after the
//! start and the clock only ever stands an even number of seconds after it,
//! so no verdict depends on whether a bound is inclusive.
//!
//! # The oracle
//!
//! rustls's stock `WebPkiClientVerifier` (clients) and webpki's
//! `EndEntityCert::verify_for_usage` (servers; `WebPkiServerVerifier` refuses
//! URI-only SANs), given only the CRLs the model knows are current for the
//! CAs of the chain (the newest per CA; webpki never chooses among CRLs of
//! one name), plus these rules, written out below from what the certificate
//! was minted with (nothing is parsed back):
//!
//! 1. A leaf with a `spiffe://` URI SAN chains only to its trust domain's
//!    bundle; of a trust domain without one, it is refused. A leaf without
//!    one chains to the flat roots.
//! 2. A chain that ends in a trust-domain bundle is identified by its SPIFFE
//!    ID only: its DNS SANs and CN match no rule and satisfy no dialled name.
//! 3. X509-SVID: a leaf with a SPIFFE ID has exactly one URI SAN, a path, is
//!    not a CA, has keyUsage with digitalSignature and without
//!    keyCertSign/cRLSign; a signing certificate with keyUsage has
//!    keyCertSign; an intermediate's SPIFFE ID has no path.
//! 4. DNS rules match DNS SANs exactly (lowercase, no wildcard, no trailing
//!    dot); `cn:` rules match the CN of a leaf with no SAN at all.
//! 5. A client with no expected servers admits a server only if the dialled
//!    name is one of its (flat-vouched) DNS SANs.
//! 6. A live connection is closed iff a full handshake now would be refused
//!    for a reason other than the kept ones (revocation status unknown or a
//!    stale CRL; expiry unless `close_at_peer_expiry`): the oracle is asked
//!    again at min(now, notAfter) (or now, with `close_at_peer_expiry`),
//!    with CRL expiry not enforced and unknown revocation status allowed.
//!
//! The invariant, checked after every step: a peer is admitted (full
//! handshake, resumption, the acceptor's and connector's `identify`, a live
//! connection kept) only if the oracle admits it now, except for the kept
//! reasons and the window the reload docs state for a bare `ClientConfig`
//! (a late ticket kept because another server of its name passed the
//! current policy); every peer the oracle admits on a full handshake is
//! admitted; a refusal's reason is one of the oracle's; a reload succeeds
//! exactly when the files on disk are valid, and a failed one changes
//! nothing.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Wire, records};
use meshtls::dev::DevCa;
use meshtls::tokio_rustls::client::TlsStream as ClientStream;
use meshtls::tokio_rustls::server::TlsStream as ServerStream;
use meshtls::tokio_rustls::{TlsAcceptor, TlsConnector};
use meshtls::{
    Acceptor, Allow, ClientTls, Connector, ManualClock, RejectReason, ReloadOutcome, Resumption,
    ServerTls, Tracked,
};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, HandshakeKind, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// Time

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// Leaves, the services' own certificates included: 400 days (odd, see
/// the module docs), past what a case's clock usually reaches.
const LEAF_LIFE: u64 = 400 * DAY + 1;
/// The short-lived workload: an hour.
const SHORT_LIFE: u64 = HOUR + 1;
/// A CA certificate outlives every leaf.
const CA_LIFE: u64 = 5 * 365 * DAY + 1;
/// A fresh CRL's nextUpdate, from when it is written.
const CRL_FRESH: u64 = 20 * DAY + 1;
/// A CRL whose nextUpdate the clock is meant to pass.
const CRL_SHORT: u64 = 20 * MINUTE + 1;

/// How long a connection the oracle says must close may take to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);
/// How long the sweeper is given, after something that may wake it, before
/// a connection that must stay is looked at.
const SETTLE: Duration = Duration::from_millis(80);
/// How long a sweeper is given to finish a sweep before a new connection
/// is tracked.
const SWEEP: Duration = Duration::from_millis(25);

fn after(start: SystemTime, secs: u64) -> SystemTime {
    start + Duration::from_secs(secs)
}

fn secs_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from).unwrap_or_default().as_secs()
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

// ---------------------------------------------------------------------------
// The world: names, CAs, workloads

const TD_A: &str = "td-a.test";
const TD_B: &str = "td-b.test";
const BETA_ID: &str = "spiffe://td-b.test/ns/y/sa/beta";
const SPIFFE: &str = "spiffe://";

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum W {
    Alpha,
    Beta,
    Billing,
    Api,
    Legacy,
    Short,
    NoDigSig,
    NoKu,
    KuCa,
    PathCa,
    Gamma,
}

impl W {
    const ALL: [Self; 11] = [
        Self::Alpha,
        Self::Beta,
        Self::Billing,
        Self::Api,
        Self::Legacy,
        Self::Short,
        Self::NoDigSig,
        Self::NoKu,
        Self::KuCa,
        Self::PathCa,
        Self::Gamma,
    ];

    fn idx(self) -> usize {
        self as usize
    }
}

/// The CAs that publish CRLs meshtls can load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Ca {
    P,
    P2,
    I,
    A,
    B,
}

impl Ca {
    const ALL: [Self; 5] = [Self::P, Self::P2, Self::I, Self::A, Self::B];

    fn idx(self) -> usize {
        self as usize
    }
}

/// The flat roots operations add and remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Root {
    P,
    P2,
}

impl Root {
    fn ca(self) -> Ca {
        match self {
            Self::P => Ca::P,
            Self::P2 => Ca::P2,
        }
    }

    fn idx(self) -> usize {
        match self {
            Self::P => 0,
            Self::P2 => 1,
        }
    }
}

/// Who signed a leaf: a CA that publishes CRLs, or one of the two issuing
/// CAs of td-a.test that break the X509-SVID rules (their CRLs cannot be
/// loaded: meshtls takes CRLs only from roots and from the CAs of its own
/// chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signer {
    Ca(Ca),
    KuLessCa,
    PathCa,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ku {
    DigitalSignature,
    KeyAgreement,
    KeyCertSign,
    CrlSign,
}

impl Ku {
    fn rcgen(self) -> rcgen::KeyUsagePurpose {
        match self {
            Self::DigitalSignature => rcgen::KeyUsagePurpose::DigitalSignature,
            Self::KeyAgreement => rcgen::KeyUsagePurpose::KeyAgreement,
            Self::KeyCertSign => rcgen::KeyUsagePurpose::KeyCertSign,
            Self::CrlSign => rcgen::KeyUsagePurpose::CrlSign,
        }
    }
}

const CA_USAGE: &[Ku] = &[Ku::KeyCertSign, Ku::CrlSign, Ku::DigitalSignature];

/// What a certificate is minted with, and all the oracle knows about it.
#[derive(Clone, Debug)]
struct Spec {
    cn: Option<&'static str>,
    uris: Vec<&'static str>,
    dns: Vec<&'static str>,
    ca: bool,
    /// `None`: no keyUsage extension.
    key_usage: Option<Vec<Ku>>,
}

impl Spec {
    fn leaf() -> Self {
        Self {
            cn: None,
            uris: Vec::new(),
            dns: Vec::new(),
            ca: false,
            key_usage: Some(vec![Ku::DigitalSignature]),
        }
    }

    fn ca(cn: &'static str) -> Self {
        Self {
            cn: Some(cn),
            uris: Vec::new(),
            dns: Vec::new(),
            ca: true,
            key_usage: Some(CA_USAGE.to_vec()),
        }
    }

    fn uri(mut self, uri: &'static str) -> Self {
        self.uris.push(uri);
        self
    }

    fn dns(mut self, name: &'static str) -> Self {
        self.dns.push(name);
        self
    }

    fn cn(mut self, cn: &'static str) -> Self {
        self.cn = Some(cn);
        self
    }

    fn key_usage(mut self, ku: Option<&[Ku]>) -> Self {
        self.key_usage = ku.map(<[Ku]>::to_vec);
        self
    }

    /// The SPIFFE ID: the URI SAN with the `spiffe` scheme.
    fn spiffe(&self) -> Option<&'static str> {
        self.uris.iter().copied().find(|u| {
            u.get(..SPIFFE.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(SPIFFE))
        })
    }

    fn any_san(&self) -> bool {
        !self.uris.is_empty() || !self.dns.is_empty()
    }

    /// The DNS SANs a rule or a dialled name may match (rule 4).
    fn dns_names(&self) -> impl Iterator<Item = String> + '_ {
        self.dns
            .iter()
            .filter(|n| !n.contains('*') && !n.ends_with('.'))
            .map(|n| n.to_ascii_lowercase())
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.uris.iter().map(|u| (*u).to_owned()).collect();
        parts.extend(self.dns.iter().map(|d| format!("DNS:{d}")));
        if let Some(cn) = self.cn {
            parts.push(format!("CN={cn}"));
        }
        if self.key_usage.is_none() {
            parts.push("no keyUsage".into());
        } else if self.key_usage.as_deref() != Some(&[Ku::DigitalSignature]) {
            parts.push(format!(
                "keyUsage {:?}",
                self.key_usage.as_deref().unwrap_or(&[])
            ));
        }
        parts.join(" + ")
    }
}

fn trust_domain(id: &str) -> &str {
    id[SPIFFE.len()..].split('/').next().unwrap_or("")
}

fn spiffe_path(id: &str) -> &str {
    let rest = &id[SPIFFE.len()..];
    rest.find('/').map_or("", |i| &rest[i..])
}

/// A minted certificate.
struct Minted {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    serial: String,
}

fn hex_colon(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Serials unique within the process (CRLs name certificates by them).
fn next_serial() -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut bytes = vec![0x4d];
    bytes.extend(n.to_be_bytes());
    bytes
}

fn issuer_of(cert_pem: &str, key_pem: &str) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::from_pem(key_pem).expect("a CA key");
    rcgen::Issuer::from_ca_cert_pem(cert_pem, key).expect("a CA certificate")
}

/// Mints `spec`, signed by `issuer`, valid from a minute before `start` for
/// `life` seconds after it.
fn mint(
    spec: &Spec,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    start: SystemTime,
    life: u64,
) -> Minted {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, SanType, SerialNumber,
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = spec.cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    for uri in &spec.uris {
        let uri = (*uri).try_into().expect("a URI");
        params.subject_alt_names.push(SanType::URI(uri));
    }
    for name in &spec.dns {
        let name = (*name).try_into().expect("a DNS name");
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    if spec.ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    } else {
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    params.key_usages = spec.key_usage.iter().flatten().map(|k| k.rcgen()).collect();
    params.not_before = (start - Duration::from_secs(MINUTE)).into();
    params.not_after = after(start, life).into();
    let serial = next_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.signed_by(&key, issuer).expect("signing");
    Minted {
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
        serial: hex_colon(&serial),
    }
}

/// A workload: its certificate, and what the oracle knows of its chain.
struct Workload {
    w: W,
    spec: Spec,
    signer: Signer,
    /// The intermediates of its chain, leaf's issuer first.
    intermediates: Vec<Spec>,
    /// Leaf first, then the intermediates: what it presents.
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
    serial: String,
    not_after: SystemTime,
    /// The CAs whose CRLs cover the certificates of its chain.
    crl_cas: Vec<Ca>,
    /// Where its chain ends, for messages.
    root: &'static str,
}

impl Workload {
    fn label(&self) -> String {
        format!(
            "{:?} ({}; chain to {})",
            self.w,
            self.spec.describe(),
            self.root
        )
    }
}

/// One of a service's own identities (chain PEM and key PEM).
struct Own {
    chain_pem: String,
    key_pem: String,
}

struct World {
    start: SystemTime,
    provider: Arc<CryptoProvider>,
    cas: Vec<DevCa>,
    /// I's serial (P's CRL may revoke it).
    i_serial: String,
    workloads: Vec<Workload>,
    /// [server, client][which], all from I.
    own: [[Own; 2]; 2],
    /// P: what the workloads trust to verify the services under test.
    peer_roots: Arc<RootCertStore>,
}

impl World {
    fn ca(&self, ca: Ca) -> &DevCa {
        &self.cas[ca.idx()]
    }

    fn wl(&self, w: W) -> &Workload {
        &self.workloads[w.idx()]
    }

    fn root_der(&self, ca: Ca) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.ca(ca).cert_pem().as_bytes()).expect("a root")
    }

    fn new() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let start = UNIX_EPOCH + Duration::from_secs(secs - secs % 2);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let p = DevCa::new("mesh root").expect("P");
        let p2 = DevCa::new("mesh root").expect("P2");
        let a = DevCa::new("td-a.test root").expect("A");
        let b = DevCa::new("td-b.test root").expect("B");
        let p_issuer = issuer_of(p.cert_pem(), p.key_pem());
        let a_issuer = issuer_of(a.cert_pem(), a.key_pem());
        let i_spec = Spec::ca("mesh issuing I");
        let i_minted = mint(&i_spec, &p_issuer, start, CA_LIFE);
        let i = DevCa::from_pem(&i_minted.pem, &i_minted.key_pem).expect("I");
        let i_issuer = issuer_of(&i_minted.pem, &i_minted.key_pem);
        let ku_less_spec = Spec::ca("td-a.test issuing, keyUsage without keyCertSign")
            .key_usage(Some(&[Ku::DigitalSignature, Ku::CrlSign]));
        let ku_less = mint(&ku_less_spec, &a_issuer, start, CA_LIFE);
        let path_spec =
            Spec::ca("td-a.test issuing, SPIFFE ID with a path").uri("spiffe://td-a.test/ns/ca");
        let path_ca = mint(&path_spec, &a_issuer, start, CA_LIFE);
        let p2_issuer = issuer_of(p2.cert_pem(), p2.key_pem());
        let b_issuer = issuer_of(b.cert_pem(), b.key_pem());
        let ku_less_issuer = issuer_of(&ku_less.pem, &ku_less.key_pem);
        let path_issuer = issuer_of(&path_ca.pem, &path_ca.key_pem);

        let td_a = |path: &'static str| Spec::leaf().uri(path);
        let defs: Vec<(W, Spec, Signer, u64)> = vec![
            (
                W::Alpha,
                td_a("spiffe://td-a.test/ns/x/sa/alpha"),
                Signer::Ca(Ca::A),
                LEAF_LIFE,
            ),
            (
                W::Beta,
                Spec::leaf().uri(BETA_ID).dns("billing.internal"),
                Signer::Ca(Ca::B),
                LEAF_LIFE,
            ),
            (
                W::Billing,
                Spec::leaf().dns("billing.internal"),
                Signer::Ca(Ca::I),
                LEAF_LIFE,
            ),
            (
                W::Api,
                Spec::leaf().dns("api.internal"),
                Signer::Ca(Ca::P2),
                LEAF_LIFE,
            ),
            (
                W::Legacy,
                Spec::leaf().cn("legacy-batch"),
                Signer::Ca(Ca::P),
                LEAF_LIFE,
            ),
            (
                W::Short,
                Spec::leaf().dns("short.internal"),
                Signer::Ca(Ca::P),
                SHORT_LIFE,
            ),
            (
                W::NoDigSig,
                td_a("spiffe://td-a.test/ns/x/sa/no-digital-signature")
                    .key_usage(Some(&[Ku::KeyAgreement])),
                Signer::Ca(Ca::A),
                LEAF_LIFE,
            ),
            (
                W::NoKu,
                td_a("spiffe://td-a.test/ns/x/sa/no-key-usage").key_usage(None),
                Signer::Ca(Ca::A),
                LEAF_LIFE,
            ),
            (
                W::KuCa,
                td_a("spiffe://td-a.test/ns/x/sa/under-a-ku-less-ca"),
                Signer::KuLessCa,
                LEAF_LIFE,
            ),
            (
                W::PathCa,
                td_a("spiffe://td-a.test/ns/x/sa/under-a-path-ca"),
                Signer::PathCa,
                LEAF_LIFE,
            ),
            (
                W::Gamma,
                Spec::leaf()
                    .uri("spiffe://td-c.test/ns/z/sa/gamma")
                    .dns("api.internal"),
                Signer::Ca(Ca::P),
                LEAF_LIFE,
            ),
        ];
        let workloads = defs
            .into_iter()
            .map(|(w, spec, signer, life)| {
                let (issuer, intermediates, ints, crl_cas, root) = match signer {
                    Signer::Ca(Ca::P) => (&p_issuer, vec![], vec![], vec![Ca::P], "P"),
                    Signer::Ca(Ca::P2) => (&p2_issuer, vec![], vec![], vec![Ca::P2], "P2"),
                    Signer::Ca(Ca::I) => (
                        &i_issuer,
                        vec![i_spec.clone()],
                        vec![i_minted.der.clone()],
                        vec![Ca::I, Ca::P],
                        "P via I",
                    ),
                    Signer::Ca(Ca::A) => (&a_issuer, vec![], vec![], vec![Ca::A], "A"),
                    Signer::Ca(Ca::B) => (&b_issuer, vec![], vec![], vec![Ca::B], "B"),
                    Signer::KuLessCa => (
                        &ku_less_issuer,
                        vec![ku_less_spec.clone()],
                        vec![ku_less.der.clone()],
                        vec![Ca::A],
                        "A via an issuing CA without keyCertSign",
                    ),
                    Signer::PathCa => (
                        &path_issuer,
                        vec![path_spec.clone()],
                        vec![path_ca.der.clone()],
                        vec![Ca::A],
                        "A via an issuing CA whose SPIFFE ID has a path",
                    ),
                };
                let minted = mint(&spec, issuer, start, life);
                let mut chain = vec![minted.der];
                chain.extend(ints);
                Workload {
                    w,
                    spec,
                    signer,
                    intermediates,
                    chain,
                    key_pem: minted.key_pem,
                    serial: minted.serial,
                    not_after: after(start, life),
                    crl_cas,
                    root,
                }
            })
            .collect();
        let own = |uri: &'static str| {
            let spec = Spec::leaf().uri(uri).dns("localhost");
            let minted = mint(&spec, &i_issuer, start, LEAF_LIFE);
            Own {
                chain_pem: format!("{}{}", minted.pem, i_minted.pem),
                key_pem: minted.key_pem,
            }
        };
        let mut peer_roots = RootCertStore::empty();
        peer_roots
            .add(CertificateDer::from_pem_slice(p.cert_pem().as_bytes()).expect("P"))
            .expect("P as a root");
        Self {
            start,
            provider,
            i_serial: i_minted.serial,
            cas: vec![p, p2, i, a, b],
            workloads,
            own: [
                [
                    own("spiffe://td-sut.test/sut/server"),
                    own("spiffe://td-sut.test/sut/server-renewed"),
                ],
                [
                    own("spiffe://td-sut.test/sut/client"),
                    own("spiffe://td-sut.test/sut/client-renewed"),
                ],
            ],
            peer_roots: Arc::new(peer_roots),
        }
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(World::new)
}

// ---------------------------------------------------------------------------
// Allow rules, names, operations

/// The pool of allow rules (and expected servers), as a bit set.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Rules(u8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    TrustDomainA,
    Beta,
    DnsBilling,
    DnsApi,
    DnsShort,
    CnLegacy,
}

impl Rule {
    const ALL: [Self; 6] = [
        Self::TrustDomainA,
        Self::Beta,
        Self::DnsBilling,
        Self::DnsApi,
        Self::DnsShort,
        Self::CnLegacy,
    ];

    fn allow(self) -> Allow {
        match self {
            Self::TrustDomainA => Allow::spiffe_trust_domain(TD_A),
            Self::Beta => Allow::spiffe_id(BETA_ID),
            Self::DnsBilling => Allow::dns("billing.internal"),
            Self::DnsApi => Allow::dns("api.internal"),
            Self::DnsShort => Allow::dns("short.internal"),
            Self::CnLegacy => Allow::cn("legacy-batch"),
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::TrustDomainA => "spiffe://td-a.test/**",
            Self::Beta => BETA_ID,
            Self::DnsBilling => "dns:billing.internal",
            Self::DnsApi => "dns:api.internal",
            Self::DnsShort => "dns:short.internal",
            Self::CnLegacy => "cn:legacy-batch",
        }
    }

    /// Rules 2 and 4: whether this rule names the peer, when its chain ends
    /// in a trust-domain bundle (`by_bundle`) or in the flat roots.
    fn matches(self, spec: &Spec, by_bundle: bool) -> bool {
        let dns = |name: &str| !by_bundle && spec.dns_names().any(|d| d == name);
        match self {
            Self::TrustDomainA => spec.spiffe().is_some_and(|id| trust_domain(id) == TD_A),
            Self::Beta => spec.spiffe() == Some(BETA_ID),
            Self::DnsBilling => dns("billing.internal"),
            Self::DnsApi => dns("api.internal"),
            Self::DnsShort => dns("short.internal"),
            Self::CnLegacy => !by_bundle && !spec.any_san() && spec.cn == Some("legacy-batch"),
        }
    }
}

impl Rules {
    fn rules(self) -> impl Iterator<Item = Rule> {
        Rule::ALL
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, r)| r)
    }

    fn allows(self) -> Vec<Allow> {
        self.rules().map(Rule::allow).collect()
    }
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.rules().map(Rule::text))
            .finish()
    }
}

/// A subset of the flat roots {P, P2}.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Roots(u8);

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut set = f.debug_set();
        if self.0 & 1 != 0 {
            set.entry(&"P");
        }
        if self.0 & 2 != 0 {
            set.entry(&"P2");
        }
        set.finish()
    }
}

/// A name a client dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Name {
    Billing,
    Api,
    Short,
    Legacy,
}

impl Name {
    const ALL: [Self; 4] = [Self::Billing, Self::Api, Self::Short, Self::Legacy];

    fn as_str(self) -> &'static str {
        match self {
            Self::Billing => "billing.internal",
            Self::Api => "api.internal",
            Self::Short => "short.internal",
            Self::Legacy => "legacy-batch",
        }
    }

    fn server_name(self) -> ServerName<'static> {
        ServerName::try_from(self.as_str()).expect("a DNS name")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn idx(self) -> usize {
        match self {
            Self::Server => 0,
            Self::Client => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    S2,
    M1,
    M10,
    M30,
    H1,
    H2,
    H6,
}

impl Step {
    fn secs(self) -> u64 {
        match self {
            Self::S2 => 2,
            Self::M1 => MINUTE,
            Self::M10 => 10 * MINUTE,
            Self::M30 => 30 * MINUTE,
            Self::H1 => HOUR,
            Self::H2 => 2 * HOUR,
            Self::H6 => 6 * HOUR,
        }
    }
}

/// A moment the clock may be moved just past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    /// The short-lived workload's notAfter.
    ShortExpiry,
    /// The earliest nextUpdate still ahead among the loaded CRLs.
    NextCrlUpdate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum File {
    Cert,
    Key,
    Roots,
    Crl,
}

/// A policy change made while a handshake is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Allow(Rules),
    Revoke(W),
    DropRoot(Root),
    Advance(Step),
}

#[derive(Clone, Debug)]
enum Op {
    /// Workload `w` calls the server through its acceptor over TCP (a bare
    /// tokio-rustls client, with its own session store); `keep` holds the
    /// connection open; `throwaway` accepts it on a runtime that then ends.
    Accept {
        w: W,
        keep: bool,
        throwaway: bool,
    },
    /// The client's connector calls workload `w` (a bare rustls server)
    /// over TCP, dialling `name`.
    Connect {
        w: W,
        name: Name,
        keep: bool,
    },
    /// Workload `w`'s bare rustls client and the server's bare config, in
    /// memory, then `Acceptor::identify`.
    BareServer(W),
    /// The client's bare config and workload `w`'s server, in memory,
    /// dialling `name`, then `Connector::identify`.
    BareClient(W, Name),
    /// Workload `w`'s Certificate is judged, `Change` happens, then its
    /// Finished arrives; then `Acceptor::identify`.
    Straddle(W, Change),
    /// A full handshake whose tickets are held back.
    Hold {
        side: Side,
        w: W,
        name: Name,
    },
    /// The held tickets (the `n`th batch, modulo) arrive, and the peer tries
    /// to resume.
    Deliver(usize),
    AddRoot(Side, Root),
    DropRoot(Side, Root),
    Revoke(Side, W),
    Unrevoke(Side, W),
    RevokeI(Side, bool),
    CrlShort(Side, Ca),
    CrlFresh(Side, Ca),
    CrlRefreshAll(Side),
    CrlOlderFirst(Side, Ca),
    CrlSameNumber(Side, Ca),
    SetAllow(Rules),
    SetExpected(Rules),
    Advance(Step),
    AdvancePast(Moment),
    RotateOwn(Side),
    Torn(Side, File),
    Mismatched(Side),
}

/// What a case starts with.
#[derive(Clone, Debug)]
struct Setup {
    crls: bool,
    /// A server session cache instead of tickets.
    stateful: bool,
    /// `close_at_peer_expiry` on the server, on the client.
    close_at_expiry: (bool, bool),
    allow: Rules,
    /// `None`: the client checks the dialled name.
    expect: Option<Rules>,
    /// Flat roots of the server, of the client.
    flat: (Roots, Roots),
}

// ---------------------------------------------------------------------------
// The oracle

/// One reason the oracle refuses: the classes a refusal may report for it,
/// a tag (for failure messages and `MESHTLS_MODEL_IGNORE`), the words.
#[derive(Clone, Debug)]
struct Why {
    classes: &'static [RejectReason],
    tag: &'static str,
    text: String,
}

impl Why {
    fn new(classes: &'static [RejectReason], tag: &'static str, text: impl Into<String>) -> Self {
        Self {
            classes,
            tag,
            text: text.into(),
        }
    }
}

/// The oracle's verdicts on one peer, now.
struct Judged {
    /// Why a full handshake now is refused (empty: admitted).
    now: Vec<Why>,
    /// Why a live connection closes, without `close_at_peer_expiry`.
    live_keeping_expired: Vec<Why>,
    /// ... and with it.
    live_closing_expired: Vec<Why>,
}

impl Judged {
    fn admits(&self) -> bool {
        self.now.is_empty()
    }

    fn closing(&self, at_expiry: bool) -> Option<&Why> {
        if at_expiry {
            self.live_closing_expired.first()
        } else {
            self.live_keeping_expired.first()
        }
    }

    /// Every class a refusal may report: the oracle's reasons, with those
    /// that only show once the time-related ones are set aside.
    fn classes(&self) -> BTreeSet<String> {
        self.now
            .iter()
            .chain(&self.live_keeping_expired)
            .chain(&self.live_closing_expired)
            .flat_map(|w| w.classes.iter().map(|c| format!("{c:?}")))
            .collect()
    }

    fn tag(&self) -> &'static str {
        self.now.first().map_or("", |w| w.tag)
    }

    fn explain(&self) -> String {
        self.now
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

const UNKNOWN_ISSUER: &[RejectReason] = &[RejectReason::UnknownIssuer];
const BAD_SIGNATURE: &[RejectReason] = &[RejectReason::BadCertificate, RejectReason::UnknownIssuer];
const EXPIRED: &[RejectReason] = &[RejectReason::Expired];
const NOT_YET_VALID: &[RejectReason] = &[RejectReason::NotYetValid];
const REVOKED: &[RejectReason] = &[RejectReason::Revoked];
const REVOCATION_UNKNOWN: &[RejectReason] = &[RejectReason::RevocationUnknown];
const WRONG_USAGE: &[RejectReason] = &[RejectReason::WrongUsage];
const BAD_CERTIFICATE: &[RejectReason] = &[RejectReason::BadCertificate];
const NOT_A_WORKLOAD: &[RejectReason] = &[RejectReason::NotAWorkloadCertificate];
const NOT_ALLOWED: &[RejectReason] = &[RejectReason::NotAllowed];

/// The stock client verifier's refusal, as a reason.
fn why_rustls(e: &rustls::Error) -> Why {
    use rustls::CertificateError as C;
    let (classes, tag) = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => (UNKNOWN_ISSUER, "unknown-issuer"),
            C::BadSignature => (BAD_SIGNATURE, "bad-signature"),
            C::Expired | C::ExpiredContext { .. } => (EXPIRED, "expired"),
            C::NotValidYet | C::NotValidYetContext { .. } => (NOT_YET_VALID, "not-yet-valid"),
            C::Revoked => (REVOKED, "revoked"),
            C::UnknownRevocationStatus => (REVOCATION_UNKNOWN, "revocation-unknown"),
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                (REVOCATION_UNKNOWN, "stale-crl")
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => (WRONG_USAGE, "wrong-usage"),
            _ => (BAD_CERTIFICATE, "bad-certificate"),
        },
        _ => (BAD_CERTIFICATE, "bad-certificate"),
    };
    Why::new(
        classes,
        tag,
        format!("rustls's WebPkiClientVerifier refuses the chain: {e:?}"),
    )
}

/// webpki's refusal, as a reason.
fn why_webpki(e: &webpki::Error) -> Why {
    use webpki::Error as E;
    let (classes, tag) = match e {
        E::UnknownIssuer => (UNKNOWN_ISSUER, "unknown-issuer"),
        E::InvalidSignatureForPublicKey => (BAD_SIGNATURE, "bad-signature"),
        E::CertExpired { .. } => (EXPIRED, "expired"),
        E::CertNotValidYet { .. } => (NOT_YET_VALID, "not-yet-valid"),
        E::CertRevoked => (REVOKED, "revoked"),
        E::UnknownRevocationStatus => (REVOCATION_UNKNOWN, "revocation-unknown"),
        E::CrlExpired { .. } => (REVOCATION_UNKNOWN, "stale-crl"),
        E::RequiredEkuNotFoundContext(_) => (WRONG_USAGE, "wrong-usage"),
        _ => (BAD_CERTIFICATE, "bad-certificate"),
    };
    Why::new(classes, tag, format!("webpki refuses the chain: {e:?}"))
}

/// Rule 3, from what the certificates were minted with.
fn svid_rules(wl: &Workload) -> Vec<Why> {
    let mut whys = Vec::new();
    let mut refuse = |text: String| whys.push(Why::new(NOT_A_WORKLOAD, "rule3", text));
    let spec = &wl.spec;
    if let Some(id) = spec.spiffe() {
        if spec.uris.len() != 1 {
            refuse(format!(
                "rule 3: an X509-SVID has exactly one URI SAN; {} has {}",
                id,
                spec.uris.len()
            ));
        }
        if spiffe_path(id).is_empty() {
            refuse(format!("rule 3: the leaf's SPIFFE ID {id} has no path"));
        }
        if spec.ca {
            refuse("rule 3: the leaf is a CA".into());
        }
        match &spec.key_usage {
            None => refuse(
                "rule 3: an X509-SVID leaf has keyUsage with digitalSignature; this one has no keyUsage"
                    .into(),
            ),
            Some(ku) => {
                if ku.contains(&Ku::KeyCertSign) || ku.contains(&Ku::CrlSign) {
                    refuse("rule 3: the leaf's keyUsage has keyCertSign or cRLSign".into());
                }
                if !ku.contains(&Ku::DigitalSignature) {
                    refuse(format!(
                        "rule 3: the leaf's keyUsage {ku:?} lacks digitalSignature"
                    ));
                }
            }
        }
    }
    // A signing certificate that breaks its rules makes the chain bad, not
    // the leaf a non-workload: meshtls says BadCertificate.
    let mut refuse = |text: String| whys.push(Why::new(BAD_CERTIFICATE, "rule3", text));
    for int in &wl.intermediates {
        let name = int.cn.unwrap_or("an intermediate");
        if let Some(ku) = &int.key_usage
            && !ku.contains(&Ku::KeyCertSign)
        {
            refuse(format!(
                "rule 3: the signing certificate \"{name}\" has keyUsage {ku:?} without keyCertSign"
            ));
        }
        if let Some(id) = int.spiffe()
            && !spiffe_path(id).is_empty()
        {
            refuse(format!(
                "rule 3: the intermediate \"{name}\" has the SPIFFE ID {id}, with a path"
            ));
        }
    }
    whys
}

// ---------------------------------------------------------------------------
// The model of each side's files

/// One CA's CRL(s), as on disk.
#[derive(Clone)]
struct Crl {
    revoked: BTreeSet<W>,
    /// P's CRL only: the intermediate I is revoked.
    revoked_i: bool,
    next_update: SystemTime,
    /// What this CA puts in the CRL file: one CRL, or two.
    text: String,
    /// The CRL that decides (the newest), DER.
    newest: Vec<u8>,
    /// Two different CRLs with one number: the file must be refused.
    conflict: bool,
}

/// One side's material: as written on disk, or as loaded.
#[derive(Clone)]
struct Material {
    /// P, P2 trusted as flat roots.
    flat: [bool; 2],
    crls: Vec<Crl>,
    /// Which of its two certificates the side presents.
    own: usize,
}

impl Material {
    /// Whether `ca`'s CRL is in the file (a CA not trusted publishes none
    /// there: meshtls refuses a CRL no trusted CA signed).
    fn includes(&self, ca: Ca) -> bool {
        match ca {
            Ca::P => self.flat[0],
            Ca::P2 => self.flat[1],
            Ca::I | Ca::A | Ca::B => true,
        }
    }

    fn crl(&self, ca: Ca) -> &Crl {
        &self.crls[ca.idx()]
    }
}

/// The bytes of one side's files.
#[derive(Clone, PartialEq, Eq)]
struct Files {
    cert: String,
    key: String,
    flat: String,
    crl: Option<String>,
}

struct Paths {
    cert: PathBuf,
    key: PathBuf,
    flat: PathBuf,
    crl: PathBuf,
}

fn pem_crl_der(pem: &str) -> Vec<Vec<u8>> {
    CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.expect("a CRL").as_ref().to_vec())
        .collect()
}

/// Mints `ca`'s CRL revoking `revoked` (its leaves among them) and I if
/// `revoked_i`, plus `extra` serials; signed by `signer` (another handle on
/// `ca`'s key), or by `ca` itself.
#[allow(clippy::too_many_arguments)]
fn crl_pem(
    world: &World,
    signer: Option<&DevCa>,
    ca: Ca,
    revoked: &BTreeSet<W>,
    revoked_i: bool,
    extra: &[&str],
    this_update: SystemTime,
    next_update: SystemTime,
) -> String {
    let mut serials: Vec<&str> = revoked
        .iter()
        .map(|w| world.wl(*w))
        .filter(|wl| wl.signer == Signer::Ca(ca))
        .map(|wl| wl.serial.as_str())
        .collect();
    if revoked_i && ca == Ca::P {
        serials.push(&world.i_serial);
    }
    serials.extend(extra);
    signer
        .unwrap_or_else(|| world.ca(ca))
        .crl_between(&serials, this_update, next_update)
        .expect("a CRL")
}

impl Crl {
    fn fresh(world: &World, ca: Ca, now: SystemTime) -> Self {
        let mut crl = Self {
            revoked: BTreeSet::new(),
            revoked_i: false,
            next_update: after(now, CRL_FRESH),
            text: String::new(),
            newest: Vec::new(),
            conflict: false,
        };
        crl.publish(world, ca, now);
        crl
    }

    /// Publishes the current state as one CRL (a CA whose last CRL went
    /// stale publishes a fresh one).
    fn publish(&mut self, world: &World, ca: Ca, now: SystemTime) {
        if self.next_update <= now {
            self.next_update = after(now, CRL_FRESH);
        }
        self.text = crl_pem(
            world,
            None,
            ca,
            &self.revoked,
            self.revoked_i,
            &[],
            now - Duration::from_secs(10),
            self.next_update,
        );
        self.newest = pem_crl_der(&self.text).remove(0);
        self.conflict = false;
    }

    /// Publishes an older CRL (revoking nothing) before the current one.
    fn publish_older_first(&mut self, world: &World, ca: Ca, now: SystemTime) {
        if self.next_update <= now {
            self.next_update = after(now, CRL_FRESH);
        }
        let older = crl_pem(
            world,
            None,
            ca,
            &BTreeSet::new(),
            false,
            &[],
            now - Duration::from_secs(100),
            self.next_update,
        );
        self.publish(world, ca, now);
        self.text = format!("{older}{}", self.text);
    }

    /// Publishes two CRLs with one thisUpdate (one CRL number) and different
    /// contents: the second also revokes every leaf of the CA and one more
    /// serial. `DevCa` numbers each CA's CRLs strictly upward, so the two are
    /// signed by two fresh handles on the CA's key (a CA that reissued
    /// without moving its number on): each numbers its first CRL by the
    /// thisUpdate alone.
    fn publish_same_number(&mut self, world: &World, ca: Ca, now: SystemTime) {
        if self.next_update <= now {
            self.next_update = after(now, CRL_FRESH);
        }
        let this_update = now - Duration::from_secs(10);
        let handle = || {
            let ca = world.ca(ca);
            DevCa::from_pem(ca.cert_pem(), ca.key_pem()).expect("a second handle on a CA")
        };
        let (one, two) = (handle(), handle());
        let first = crl_pem(
            world,
            Some(&one),
            ca,
            &self.revoked,
            self.revoked_i,
            &[],
            this_update,
            self.next_update,
        );
        let all: BTreeSet<W> = W::ALL.into_iter().collect();
        let second = crl_pem(
            world,
            Some(&two),
            ca,
            &all,
            self.revoked_i,
            &["01:02:03:04"],
            this_update,
            self.next_update,
        );
        self.newest = pem_crl_der(&first).remove(0);
        self.text = format!("{first}{second}");
        self.conflict = true;
    }
}

// ---------------------------------------------------------------------------
// A case

/// A live connection held open.
enum Conn {
    /// Accepted by the server; the workload's end.
    Server {
        tracked: Tracked<ServerStream<TcpStream>>,
        peer: ClientStream<TcpStream>,
    },
    /// Opened by the client's connector; the workload server's end.
    Client {
        tracked: Tracked<ClientStream<TcpStream>>,
        peer: ServerStream<TcpStream>,
    },
}

struct Live {
    side: Side,
    w: W,
    name: Option<Name>,
    conn: Conn,
}

impl Live {
    fn closed_by_policy(&self) -> Option<String> {
        match &self.conn {
            Conn::Server { tracked, .. } => tracked.closed_by_policy(),
            Conn::Client { tracked, .. } => tracked.closed_by_policy(),
        }
    }

    /// Whether the peer's end sees the connection end (bounded).
    async fn peer_sees_end(&mut self) -> bool {
        match &mut self.conn {
            Conn::Server { peer, .. } => sees_end(peer).await,
            Conn::Client { peer, .. } => sees_end(peer).await,
        }
    }
}

async fn sees_end<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + CLOSE_WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A handshake whose tickets were held back.
enum Held {
    Server {
        w: W,
        wire: Wire,
        tickets: Vec<u8>,
    },
    Client {
        w: W,
        name: Name,
        wire: Wire,
        tickets: Vec<u8>,
    },
}

/// Why a step stopped the case.
enum Fail {
    Violation(String),
    /// An ignored divergence of state: the model can no longer follow.
    Stop,
}

fn ignored() -> &'static [String] {
    static IGNORED: OnceLock<Vec<String>> = OnceLock::new();
    IGNORED.get_or_init(|| {
        std::env::var("MESHTLS_MODEL_IGNORE")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

struct Case {
    world: &'static World,
    setup: Setup,
    time: ManualClock,
    server: ServerTls,
    client: ClientTls,
    acceptor: Acceptor,
    connector: Connector,
    /// [server, client]: as written, as loaded.
    disk: [Material; 2],
    loaded: [Material; 2],
    allow: Rules,
    expect: Option<Rules>,
    /// The client's policy epoch, and the names a server passed a full
    /// handshake with in it (the bare client config's documented window).
    client_epoch: u64,
    passed: HashMap<Name, u64>,
    /// Per workload: its bare client config (own session store), its
    /// server config.
    bare: Vec<Arc<ClientConfig>>,
    peers: Vec<Arc<ServerConfig>>,
    live: Vec<Live>,
    held: Vec<Held>,
    /// Something happened that may wake a side's sweeper.
    woken: [bool; 2],
    /// A side's sweeper may still be busy with what woke it (or with its
    /// first sweep): a new connection waits for it, so that whether the
    /// sweep sees the connection does not depend on thread timing.
    busy: [bool; 2],
    /// A side has tracked a connection (its sweeper runs).
    tracked: [bool; 2],
    /// What the last handshake came to (for `MESHTLS_MODEL_TRACE`).
    note: std::cell::RefCell<String>,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Case {
    fn new(setup: &Setup) -> Self {
        let world = world();
        let time = ManualClock::new(world.start);
        let dir = tempfile::tempdir().expect("a temp dir");
        let now = world.start;
        let material = |roots: Roots| Material {
            flat: [roots.0 & 1 != 0, roots.0 & 2 != 0],
            crls: Ca::ALL
                .into_iter()
                .map(|ca| Crl::fresh(world, ca, now))
                .collect(),
            own: 0,
        };
        let disk = [material(setup.flat.0), material(setup.flat.1)];
        let a = dir.path().join("td-a.pem");
        let b = dir.path().join("td-b.pem");
        std::fs::write(&a, world.ca(Ca::A).cert_pem()).expect("write");
        std::fs::write(&b, world.ca(Ca::B).cert_pem()).expect("write");
        for side in [Side::Server, Side::Client] {
            std::fs::create_dir_all(dir.path().join(side.name())).expect("a dir");
            write_files(
                &paths(&dir, side),
                &files(world, setup, side, &disk[side.idx()]),
            );
        }

        let p = paths(&dir, Side::Server);
        let mut server = ServerTls::builder()
            .identity_files(&p.cert, &p.key)
            .client_roots_file(&p.flat)
            .client_roots_for(TD_A, &a)
            .client_roots_for(TD_B, &b)
            .allow_all_of(setup.allow.allows())
            .live_connection_grace(Duration::ZERO);
        if setup.crls {
            server = server.crl_file(&p.crl);
        }
        if setup.close_at_expiry.0 {
            server = server.close_at_peer_expiry();
        }
        if setup.stateful {
            server = server.resumption(Resumption::Stateful);
        }
        let server = server
            .dangerous()
            .allow_legacy_cn()
            .dangerous()
            .clock(time.clock())
            .build()
            .expect("the server builds");

        let p = paths(&dir, Side::Client);
        let mut client = ClientTls::builder()
            .identity_files(&p.cert, &p.key)
            .server_roots_file(&p.flat)
            .server_roots_for(TD_A, &a)
            .server_roots_for(TD_B, &b)
            .live_connection_grace(Duration::ZERO);
        if let Some(expect) = setup.expect {
            for rule in expect.allows() {
                client = client.expect_server(rule);
            }
        }
        if setup.crls {
            client = client.crl_file(&p.crl);
        }
        if setup.close_at_expiry.1 {
            client = client.close_at_peer_expiry();
        }
        let client = client
            .dangerous()
            .allow_legacy_cn()
            .dangerous()
            .clock(time.clock())
            .build()
            .expect("the client builds");

        let bare = world
            .workloads
            .iter()
            .map(|wl| bare_client(world, wl))
            .collect();
        let peers = world
            .workloads
            .iter()
            .map(|wl| peer_server(world, wl))
            .collect();
        Self {
            world,
            setup: setup.clone(),
            acceptor: server.acceptor(),
            connector: client.connector(),
            server,
            client,
            time,
            loaded: disk.clone(),
            disk,
            allow: setup.allow,
            expect: setup.expect,
            client_epoch: 1,
            passed: HashMap::new(),
            bare,
            peers,
            live: Vec::new(),
            held: Vec::new(),
            woken: [false; 2],
            busy: [false; 2],
            tracked: [false; 2],
            note: std::cell::RefCell::default(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            dir,
        }
    }

    fn now(&self) -> SystemTime {
        self.time.now()
    }

    // --- the oracle -------------------------------------------------------

    fn judge(&self, side: Side, w: W, name: Option<Name>) -> Judged {
        let now = self.now();
        let wl = self.world.wl(w);
        Judged {
            now: self.oracle(side, wl, name, now, true),
            live_keeping_expired: self.oracle(side, wl, name, now.min(wl.not_after), false),
            live_closing_expired: self.oracle(side, wl, name, now, false),
        }
    }

    /// Every reason `side` must refuse `wl` at `at`. `strict`: as a full
    /// handshake (stale CRLs and unknown revocation status refuse); else
    /// as the judgment of a live connection, where they do not.
    fn oracle(
        &self,
        side: Side,
        wl: &Workload,
        name: Option<Name>,
        at: SystemTime,
        strict: bool,
    ) -> Vec<Why> {
        let material = &self.loaded[side.idx()];
        let mut whys = Vec::new();
        // Rule 1: which bundle vouches.
        let anchors: Vec<CertificateDer<'static>> = match wl.spec.spiffe() {
            Some(id) => match trust_domain(id) {
                TD_A => vec![self.world.root_der(Ca::A)],
                TD_B => vec![self.world.root_der(Ca::B)],
                other => {
                    whys.push(Why::new(
                        UNKNOWN_ISSUER,
                        "rule1",
                        format!(
                            "rule 1: trust domain {other} has no bundle here, and a leaf with a SPIFFE ID chains to its trust domain's bundle only"
                        ),
                    ));
                    Vec::new()
                }
            },
            None => {
                let flat: Vec<_> = [Root::P, Root::P2]
                    .into_iter()
                    .filter(|r| material.flat[r.idx()])
                    .map(|r| self.world.root_der(r.ca()))
                    .collect();
                if flat.is_empty() {
                    whys.push(Why::new(
                        UNKNOWN_ISSUER,
                        "unknown-issuer",
                        "no flat root is trusted",
                    ));
                }
                flat
            }
        };
        if !anchors.is_empty() {
            let crls: Vec<Vec<u8>> = if self.setup.crls {
                wl.crl_cas
                    .iter()
                    .filter(|ca| material.includes(**ca))
                    .map(|ca| material.crl(*ca).newest.clone())
                    .collect()
            } else {
                Vec::new()
            };
            let chain = match side {
                Side::Server => client_chain(self.world, &anchors, crls, &wl.chain, at, strict),
                Side::Client => server_chain(self.world, &anchors, crls, &wl.chain, at, strict),
            };
            if let Err(why) = chain {
                whys.push(why);
            }
        }
        // The validity window, on its own: a refusal may name it first
        // whatever else is wrong (webpki looks at the time before the
        // issuer).
        if at > wl.not_after {
            whys.push(Why::new(
                EXPIRED,
                "expired",
                format!("the leaf expired {}s ago", secs_between(wl.not_after, at)),
            ));
        }
        whys.extend(svid_rules(wl));
        if let Some(why) = self.names(side, wl, name) {
            whys.push(why);
        }
        whys
    }

    /// Rules 2, 4 and 5: the allow-list, the expected servers, or the
    /// dialled name.
    fn names(&self, side: Side, wl: &Workload, name: Option<Name>) -> Option<Why> {
        let spec = &wl.spec;
        // The services under test always have bundles per trust domain: a
        // chain ends in one exactly when its leaf has a SPIFFE ID.
        let by_bundle = spec.spiffe().is_some();
        let rules = match side {
            Side::Server => Some(self.allow),
            Side::Client => self.expect,
        };
        if let Some(rules) = rules {
            if rules.rules().any(|r| r.matches(spec, by_bundle)) {
                return None;
            }
            return Some(match rules.rules().find(|r| r.matches(spec, false)) {
                Some(rule) => Why::new(
                    NOT_ALLOWED,
                    "rule2",
                    format!(
                        "rule 2: only {} would match, by a name its chain does not prove (a chain that ends in a trust-domain bundle is identified by its SPIFFE ID only)",
                        rule.text()
                    ),
                ),
                None => Why::new(
                    NOT_ALLOWED,
                    "allow",
                    format!("no rule of {rules:?} matches"),
                ),
            });
        }
        let dialled = name.expect("a dialled name").as_str();
        match (spec.dns_names().any(|d| d == dialled), by_bundle) {
            (true, false) => None,
            (true, true) => Some(Why::new(
                NOT_ALLOWED,
                "rule2",
                format!(
                    "rule 2: DNS:{dialled} is vouched for only by a trust-domain bundle, which proves the SPIFFE ID alone (rule 5: no flat-vouched DNS SAN is the dialled name)"
                ),
            )),
            (false, _) => Some(Why::new(
                NOT_ALLOWED,
                "rule5",
                format!("rule 5: dialled {dialled}, which is not one of its DNS SANs"),
            )),
        }
    }

    // --- failures ---------------------------------------------------------

    /// Reports a violation (`divergence`: the model can no longer follow
    /// meshtls's state), unless its tag is ignored.
    fn fail(&self, tag: &str, divergence: bool, what: String) -> Result<(), Fail> {
        if ignored().iter().any(|p| tag.contains(p.as_str())) {
            if std::env::var_os("MESHTLS_MODEL_TRACE").is_some() {
                eprintln!("ignored [{tag}]: {what}\n    state: {}", self.describe());
            }
            return if divergence { Err(Fail::Stop) } else { Ok(()) };
        }
        Err(Fail::Violation(format!(
            "{what}\n    tag: {tag}\n    state: {}",
            self.describe()
        )))
    }

    fn describe(&self) -> String {
        let secs = self
            .now()
            .duration_since(self.world.start)
            .unwrap_or_default()
            .as_secs();
        let side = |s: Side| {
            let m = &self.loaded[s.idx()];
            let flat: Vec<&str> = [("P", 0), ("P2", 1)]
                .into_iter()
                .filter(|(_, i)| m.flat[*i])
                .map(|(n, _)| n)
                .collect();
            let mut crls = Vec::new();
            if self.setup.crls {
                for ca in Ca::ALL.into_iter().filter(|ca| m.includes(*ca)) {
                    let crl = m.crl(ca);
                    let left = crl
                        .next_update
                        .duration_since(self.now())
                        .map_or_else(|_| "stale".to_owned(), |d| format!("{}s left", d.as_secs()));
                    let mut revoked: Vec<String> =
                        crl.revoked.iter().map(|w| format!("{w:?}")).collect();
                    if crl.revoked_i {
                        revoked.push("I".into());
                    }
                    crls.push(format!("{ca:?} [{}] {left}", revoked.join(",")));
                }
            }
            format!("flat {flat:?}, CRLs {{{}}}", crls.join("; "))
        };
        let live: Vec<String> = self
            .live
            .iter()
            .map(|l| format!("{}<-{:?}", l.side.name(), l.w))
            .collect();
        format!(
            "clock start+{secs}s; server: {}, allow {:?}; client: {}, {}; live {live:?}",
            side(Side::Server),
            self.allow,
            side(Side::Client),
            match self.expect {
                Some(rules) => format!("expects {rules:?}"),
                None => "checks the dialled name".into(),
            }
        )
    }

    /// The oracle refuses and meshtls admitted, on `path`.
    fn admitted_wrongly(&self, path: &str, side: Side, w: W, judged: &Judged) -> Result<(), Fail> {
        self.fail(
            &format!("admit:{path}:{}", judged.tag()),
            false,
            format!(
                "the {} ADMITTED {} on the {path} path, but the oracle refuses it now: {}",
                side.name(),
                self.world.wl(w).label(),
                judged.explain()
            ),
        )
    }

    /// Checks a refusal by meshtls with `reason` on `path`.
    fn refused(
        &self,
        path: &str,
        side: Side,
        w: W,
        judged: &Judged,
        reason: RejectReason,
        detail: &str,
    ) -> Result<(), Fail> {
        self.noted(format!("{path}: refused {reason:?}"));
        if judged.admits() {
            return self.fail(
                &format!("refuse:{path}"),
                false,
                format!(
                    "the {} REFUSED {} on the {path} path ({reason:?}: {detail}), but the oracle admits it",
                    side.name(),
                    self.world.wl(w).label()
                ),
            );
        }
        let classes = judged.classes();
        if !classes.contains(&format!("{reason:?}")) {
            return self.fail(
                &format!("class:{path}"),
                false,
                format!(
                    "the {} refused {} on the {path} path as {reason:?} ({detail}); the oracle's reasons are {classes:?}: {}",
                    side.name(),
                    self.world.wl(w).label(),
                    judged.explain()
                ),
            );
        }
        Ok(())
    }

    /// A refusal on a bare config's path, where only rustls's error is seen
    /// (its class is not compared).
    fn bare_refusal(
        &self,
        path: &str,
        side: Side,
        w: W,
        judged: &Judged,
        error: &dyn fmt::Debug,
    ) -> Result<(), Fail> {
        self.noted(format!("{path}: refused"));
        if !judged.admits() {
            return Ok(());
        }
        self.fail(
            &format!("refuse:{path}"),
            false,
            format!(
                "the {} REFUSED {} on the {path} path ({error:?}), but the oracle admits it",
                side.name(),
                self.world.wl(w).label()
            ),
        )
    }

    fn noted(&self, what: String) {
        let mut note = self.note.borrow_mut();
        if !note.is_empty() {
            note.push_str(", ");
        }
        note.push_str(&what);
    }

    /// The identity meshtls reports is the workload's.
    fn same_peer(&self, path: &str, w: W, leaf: &[u8]) -> Result<(), Fail> {
        self.noted(format!("{path}: admitted"));
        if leaf == self.world.wl(w).chain[0].as_ref() {
            return Ok(());
        }
        self.fail(
            &format!("identity:{path}"),
            false,
            format!("{path}: the identity reported is not {w:?}'s certificate"),
        )
    }

    // --- operations -------------------------------------------------------

    fn apply(&mut self, op: &Op) -> Result<(), Fail> {
        let now = self.now();
        match *op {
            Op::Accept { w, keep, throwaway } => self.accept(w, keep, throwaway),
            Op::Connect { w, name, keep } => self.connect(w, name, keep),
            Op::BareServer(w) => self.bare_server(w),
            Op::BareClient(w, name) => self.bare_client(w, name),
            Op::Straddle(w, change) => self.straddle(w, change),
            Op::Hold { side, w, name } => self.hold(side, w, name),
            Op::Deliver(n) => self.deliver(n),
            Op::AddRoot(side, root) => {
                let world = self.world;
                let disk = &mut self.disk[side.idx()];
                if disk.flat[root.idx()] {
                    return Ok(());
                }
                disk.flat[root.idx()] = true;
                // A root comes with its current CRL.
                let crl = &mut disk.crls[root.ca().idx()];
                crl.next_update = after(now, CRL_FRESH);
                crl.publish(world, root.ca(), now);
                self.reload(side)
            }
            Op::DropRoot(side, root) => {
                self.disk[side.idx()].flat[root.idx()] = false;
                self.reload(side)
            }
            Op::Revoke(side, w) | Op::Unrevoke(side, w) => {
                let Signer::Ca(ca) = self.world.wl(w).signer else {
                    return Ok(());
                };
                if !self.setup.crls {
                    return Ok(());
                }
                let world = self.world;
                let crl = &mut self.disk[side.idx()].crls[ca.idx()];
                if matches!(op, Op::Revoke(..)) {
                    crl.revoked.insert(w);
                } else {
                    crl.revoked.remove(&w);
                }
                crl.publish(world, ca, now);
                self.reload(side)
            }
            Op::RevokeI(side, revoked) => self.edit_crl(side, Ca::P, |crl| crl.revoked_i = revoked),
            Op::CrlShort(side, ca) => {
                self.edit_crl(side, ca, |crl| crl.next_update = after(now, CRL_SHORT))
            }
            Op::CrlFresh(side, ca) => {
                self.edit_crl(side, ca, |crl| crl.next_update = after(now, CRL_FRESH))
            }
            Op::CrlRefreshAll(side) => {
                if !self.setup.crls {
                    return Ok(());
                }
                let world = self.world;
                for ca in Ca::ALL {
                    let crl = &mut self.disk[side.idx()].crls[ca.idx()];
                    crl.next_update = after(now, CRL_FRESH);
                    crl.publish(world, ca, now);
                }
                self.reload(side)
            }
            Op::CrlOlderFirst(side, ca) | Op::CrlSameNumber(side, ca) => {
                if !self.setup.crls {
                    return Ok(());
                }
                let world = self.world;
                let crl = &mut self.disk[side.idx()].crls[ca.idx()];
                if matches!(op, Op::CrlOlderFirst(..)) {
                    crl.publish_older_first(world, ca, now);
                } else {
                    crl.publish_same_number(world, ca, now);
                }
                self.reload(side)
            }
            Op::SetAllow(rules) => self.set_allow(rules),
            Op::SetExpected(rules) => self.set_expected(rules),
            Op::Advance(step) => {
                self.time.advance(Duration::from_secs(step.secs()));
                self.woken = [true; 2];
                Ok(())
            }
            Op::AdvancePast(moment) => {
                let target = match moment {
                    Moment::ShortExpiry => Some(self.world.wl(W::Short).not_after),
                    Moment::NextCrlUpdate => self
                        .loaded
                        .iter()
                        .flat_map(|m| {
                            Ca::ALL
                                .into_iter()
                                .filter(|ca| m.includes(*ca))
                                .map(|ca| m.crl(ca).next_update)
                        })
                        .filter(|t| *t > now && self.setup.crls)
                        .min(),
                };
                let to = target
                    .filter(|t| *t > now)
                    .map_or_else(|| after(now, 2), |t| t + Duration::from_secs(1));
                self.time.set(to);
                self.woken = [true; 2];
                Ok(())
            }
            Op::RotateOwn(side) => {
                let disk = &mut self.disk[side.idx()];
                disk.own = 1 - disk.own;
                self.reload(side)
            }
            Op::Torn(side, file) => self.torn(side, file),
            Op::Mismatched(side) => self.mismatched(side),
        }
    }

    fn edit_crl(&mut self, side: Side, ca: Ca, edit: impl FnOnce(&mut Crl)) -> Result<(), Fail> {
        if !self.setup.crls {
            return Ok(());
        }
        let (world, now) = (self.world, self.now());
        let crl = &mut self.disk[side.idx()].crls[ca.idx()];
        edit(crl);
        crl.publish(world, ca, now);
        self.reload(side)
    }

    // --- reloads ----------------------------------------------------------

    fn files(&self, side: Side, material: &Material) -> Files {
        files(self.world, &self.setup, side, material)
    }

    fn reload_now(&self, side: Side) -> (Result<ReloadOutcome, meshtls::Error>, u64) {
        match side {
            Side::Server => (self.server.reload(), self.server.generation()),
            Side::Client => (self.client.reload(), self.client.generation()),
        }
    }

    fn generation(&self, side: Side) -> u64 {
        match side {
            Side::Server => self.server.generation(),
            Side::Client => self.client.generation(),
        }
    }

    /// Why material on disk must be refused now, if it must.
    fn invalid(&self, material: &Material) -> Option<String> {
        let now = self.now();
        if now > after(self.world.start, LEAF_LIFE) {
            return Some("the service's own certificate has expired".into());
        }
        if !self.setup.crls {
            return None;
        }
        Ca::ALL
            .into_iter()
            .filter(|ca| material.includes(*ca))
            .find_map(|ca| {
                let crl = material.crl(ca);
                if crl.conflict {
                    Some(format!(
                        "the CRL file holds two different CRLs of {ca:?} with one CRL number and thisUpdate"
                    ))
                } else if crl.next_update < now {
                    Some(format!("{ca:?}'s CRL on disk is past its nextUpdate"))
                } else {
                    None
                }
            })
    }

    /// Writes the side's files from the model and reloads; the outcome must
    /// be the one the model predicts.
    fn reload(&mut self, side: Side) -> Result<(), Fail> {
        let s = side.idx();
        let disk = self.files(side, &self.disk[s]);
        let loaded = self.files(side, &self.loaded[s]);
        write_files(&paths(&self.dir, side), &disk);
        let before = self.generation(side);
        let (got, generation) = self.reload_now(side);
        let invalid = self.invalid(&self.disk[s]);
        let wrong = |expected: String| {
            format!(
                "{} reload: expected {expected}, got {}",
                side.name(),
                match &got {
                    Ok(outcome) => format!("{outcome:?}"),
                    Err(e) => format!("the error: {e}"),
                }
            )
        };
        if disk == loaded {
            if !matches!(got, Ok(ReloadOutcome::Unchanged { .. })) {
                return self.fail("reload:unchanged", true, wrong("Unchanged".into()));
            }
            return Ok(());
        }
        if let Some(why) = invalid {
            if got.is_ok() || generation != before {
                return self.fail(
                    "reload:accepted",
                    true,
                    wrong(format!(
                        "a refusal ({why}), the serving generation untouched"
                    )),
                );
            }
            return Ok(());
        }
        let policy = disk.flat != loaded.flat || disk.crl != loaded.crl;
        match got {
            Ok(ReloadOutcome::Swapped { policy_changed, .. }) if policy_changed == policy => {}
            _ => {
                return self.fail(
                    "reload:refused",
                    true,
                    wrong(format!("Swapped {{ policy_changed: {policy} }}")),
                );
            }
        }
        self.loaded[s] = self.disk[s].clone();
        if policy {
            self.woken[s] = true;
            if side == Side::Client {
                self.client_epoch += 1;
            }
        }
        Ok(())
    }

    /// A reload that must fail and change nothing, with `path` holding
    /// `bad` meanwhile (restored after).
    fn bad_reload(
        &mut self,
        side: Side,
        what: &str,
        bad: &[(PathBuf, String)],
    ) -> Result<(), Fail> {
        for (path, contents) in bad {
            std::fs::write(path, contents).expect("write");
        }
        let before = self.generation(side);
        let (got, generation) = self.reload_now(side);
        write_files(
            &paths(&self.dir, side),
            &self.files(side, &self.disk[side.idx()]),
        );
        if got.is_ok() || generation != before {
            return self.fail(
                "reload:bad-accepted",
                true,
                format!(
                    "{} reload with {what}: expected a refusal that changes nothing, got {got:?} (generation {before} -> {generation})",
                    side.name()
                ),
            );
        }
        Ok(())
    }

    fn torn(&mut self, side: Side, file: File) -> Result<(), Fail> {
        let files = self.files(side, &self.disk[side.idx()]);
        let p = paths(&self.dir, side);
        let (path, contents) = match (file, &files.crl) {
            (File::Key, _) => (p.key, files.key),
            (File::Roots, _) if files.flat.contains("-----END") => (p.flat, files.flat),
            (File::Crl, Some(crl)) => (p.crl, crl.clone()),
            _ => (p.cert, files.cert),
        };
        // Cut inside the first PEM block.
        let cut = contents.find("-----END").expect("a PEM block") / 2;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        self.bad_reload(
            side,
            &format!("{name:?} cut at byte {cut}"),
            &[(path, contents[..cut].to_owned())],
        )
    }

    fn mismatched(&mut self, side: Side) -> Result<(), Fail> {
        let own = self.disk[side.idx()].own;
        let mine = &self.world.own[side.idx()];
        let p = paths(&self.dir, side);
        self.bad_reload(
            side,
            "a certificate and a key that do not belong together",
            &[
                (p.cert, mine[1 - own].chain_pem.clone()),
                (p.key, mine[own].key_pem.clone()),
            ],
        )
    }

    fn set_allow(&mut self, rules: Rules) -> Result<(), Fail> {
        let changed = rules != self.allow;
        let got = self.server.set_allow_list(rules.allows());
        match (&got, changed) {
            (Ok(ReloadOutcome::Unchanged { .. }), false)
            | (
                Ok(ReloadOutcome::Swapped {
                    policy_changed: true,
                    ..
                }),
                true,
            ) => {}
            _ => {
                return self.fail(
                    "allow-list",
                    true,
                    format!("set_allow_list({rules:?}) from {:?}: {got:?}", self.allow),
                );
            }
        }
        if changed {
            self.allow = rules;
            self.woken[0] = true;
        }
        Ok(())
    }

    fn set_expected(&mut self, rules: Rules) -> Result<(), Fail> {
        let got = self.client.set_expected_servers(rules.allows());
        let Some(before) = self.expect else {
            if got.is_ok() {
                return self.fail(
                    "expected-servers",
                    true,
                    "set_expected_servers on a client built to check the dialled name succeeded"
                        .into(),
                );
            }
            return Ok(());
        };
        let changed = rules != before;
        match (&got, changed) {
            (Ok(ReloadOutcome::Unchanged { .. }), false)
            | (
                Ok(ReloadOutcome::Swapped {
                    policy_changed: true,
                    ..
                }),
                true,
            ) => {}
            _ => {
                return self.fail(
                    "expected-servers",
                    true,
                    format!("set_expected_servers({rules:?}) from {before:?}: {got:?}"),
                );
            }
        }
        if changed {
            self.expect = Some(rules);
            self.woken[1] = true;
            self.client_epoch += 1;
        }
        Ok(())
    }

    // --- handshakes -------------------------------------------------------

    /// Before `side` tracks a new connection: lets its sweeper finish.
    fn let_sweeper_settle(&mut self, side: Side) {
        if std::mem::take(&mut self.busy[side.idx()]) {
            std::thread::sleep(SWEEP);
        }
    }

    /// `side` has tracked a connection: the first one starts its sweeper.
    fn tracked(&mut self, side: Side) {
        if !std::mem::replace(&mut self.tracked[side.idx()], true) {
            self.busy[side.idx()] = true;
        }
    }

    /// Workload `w` calls the server's acceptor over TCP.
    fn accept(&mut self, w: W, keep: bool, throwaway: bool) -> Result<(), Fail> {
        self.let_sweeper_settle(Side::Server);
        let judged = self.judge(Side::Server, w, None);
        let config = self.bare[w.idx()].clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("an address");
        let acceptor = self.acceptor.clone();
        let (accepted, peer) = if throwaway {
            // A runtime of its own that accepts one connection and ends.
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("a listener");
                    let (tcp, _) = listener.accept().await.expect("accept");
                    acceptor.accept(tcp).await
                })
            });
            let peer = self.runtime.block_on(dial(config, addr));
            let accepted = thread.join().expect("the throwaway runtime's thread");
            (accepted, peer)
        } else {
            self.runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("a listener");
                tokio::join!(
                    async move {
                        let (tcp, _) = listener.accept().await.expect("accept");
                        acceptor.accept(tcp).await
                    },
                    dial(config, addr)
                )
            })
        };
        let path = if throwaway {
            "acceptor(throwaway runtime)"
        } else {
            "acceptor"
        };
        match accepted {
            Ok((tracked, peer_identity)) => {
                self.tracked(Side::Server);
                self.same_peer(path, w, peer_identity.leaf_der())?;
                if !judged.admits() {
                    self.admitted_wrongly(path, Side::Server, w, &judged)?;
                }
                if keep {
                    let peer = peer.expect("the workload's end of an admitted connection");
                    self.live.push(Live {
                        side: Side::Server,
                        w,
                        name: None,
                        conn: Conn::Server { tracked, peer },
                    });
                }
                Ok(())
            }
            Err(e) => {
                assert!(
                    !matches!(
                        e.reason(),
                        RejectReason::RefusedByPeer | RejectReason::Io | RejectReason::Timeout
                    ),
                    "harness: the acceptor failed for a reason of the connection, not of the peer: {e}"
                );
                self.refused(path, Side::Server, w, &judged, e.reason(), e.detail())
            }
        }
    }

    /// The client's connector calls workload `w` over TCP.
    fn connect(&mut self, w: W, name: Name, keep: bool) -> Result<(), Fail> {
        self.let_sweeper_settle(Side::Client);
        let judged = self.judge(Side::Client, w, Some(name));
        let config = self.peers[w.idx()].clone();
        let connector = self.connector.clone();
        let (served, connected) = self.runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("an address");
            tokio::join!(
                async move {
                    let (tcp, _) = listener.accept().await.expect("accept");
                    TlsAcceptor::from(config).accept(tcp).await
                },
                async move {
                    let tcp = TcpStream::connect(addr).await.expect("connect");
                    connector.connect(name.as_str(), tcp).await
                }
            )
        });
        match connected {
            Ok((tracked, server_identity)) => {
                self.tracked(Side::Client);
                if tracked.get_ref().1.handshake_kind() != Some(HandshakeKind::Resumed) {
                    self.passed.insert(name, self.client_epoch);
                }
                self.same_peer("connector", w, server_identity.leaf_der())?;
                if !judged.admits() {
                    self.admitted_wrongly("connector", Side::Client, w, &judged)?;
                }
                if keep {
                    let peer = served.expect("the workload server's end of an admitted connection");
                    self.live.push(Live {
                        side: Side::Client,
                        w,
                        name: Some(name),
                        conn: Conn::Client { tracked, peer },
                    });
                }
                Ok(())
            }
            Err(e) => {
                assert!(
                    !matches!(
                        e.reason(),
                        RejectReason::RefusedByPeer | RejectReason::Io | RejectReason::Timeout
                    ),
                    "harness: the connector failed for a reason of the connection, not of the server: {e}"
                );
                self.refused(
                    "connector",
                    Side::Client,
                    w,
                    &judged,
                    e.reason(),
                    e.detail(),
                )
            }
        }
    }

    fn client_wire(&self, w: W, name: Name) -> Wire {
        Wire {
            client: rustls::ClientConnection::new(self.client.config(), name.server_name())
                .expect("a client connection"),
            server: rustls::ServerConnection::new(self.peers[w.idx()].clone())
                .expect("a server connection"),
        }
    }

    /// The server's bare config and `Acceptor::identify` after a handshake
    /// that ended with `result`.
    fn check_bare_server(
        &mut self,
        path: &str,
        w: W,
        judged: &Judged,
        wire: &Wire,
        result: Result<(), String>,
    ) -> Result<(), Fail> {
        match result {
            Err(e) if e.starts_with("client:") => {
                panic!("harness: the workload's client refused the server under test: {e}")
            }
            Err(e) => self.bare_refusal(path, Side::Server, w, judged, &e),
            Ok(()) => {
                if wire.resumed() {
                    self.noted("resumed".into());
                }
                if !judged.admits() {
                    let kind = if wire.resumed() { "resumed" } else { "full" };
                    self.admitted_wrongly(&format!("{path}({kind})"), Side::Server, w, judged)?;
                }
                self.check_identify_server(w, judged, wire)
            }
        }
    }

    fn check_identify_server(&self, w: W, judged: &Judged, wire: &Wire) -> Result<(), Fail> {
        match self.acceptor.identify(&wire.server) {
            Ok(peer) => {
                self.same_peer("Acceptor::identify", w, peer.leaf_der())?;
                if !judged.admits() {
                    self.admitted_wrongly("Acceptor::identify", Side::Server, w, judged)?;
                }
                Ok(())
            }
            Err(e) => self.refused(
                "Acceptor::identify",
                Side::Server,
                w,
                judged,
                e.reason(),
                e.detail(),
            ),
        }
    }

    /// The client's bare config and `Connector::identify` after a handshake
    /// that ended with `result`.
    fn check_bare_client(
        &mut self,
        path: &str,
        w: W,
        name: Name,
        judged: &Judged,
        wire: &Wire,
        result: Result<(), String>,
    ) -> Result<(), Fail> {
        let resumed = wire.client.handshake_kind() == Some(HandshakeKind::Resumed);
        match result {
            Err(e) if e.starts_with("server:") => {
                panic!("harness: the workload's server refused the client under test: {e}")
            }
            Err(e) => self.bare_refusal(path, Side::Client, w, judged, &e),
            Ok(()) => {
                if resumed {
                    self.noted("resumed".into());
                } else {
                    self.passed.insert(name, self.client_epoch);
                }
                // The documented window of a bare ClientConfig: a ticket is
                // kept for a name another server passed the current policy
                // with, and resumes to its server.
                let window = resumed && self.passed.get(&name) == Some(&self.client_epoch);
                if !judged.admits() && !window {
                    let kind = if resumed { "resumed" } else { "full" };
                    self.admitted_wrongly(&format!("{path}({kind})"), Side::Client, w, judged)?;
                }
                match self.connector.identify(&wire.client, name.as_str()) {
                    Ok(peer) => {
                        self.same_peer("Connector::identify", w, peer.leaf_der())?;
                        if !judged.admits() {
                            self.admitted_wrongly("Connector::identify", Side::Client, w, judged)?;
                        }
                        Ok(())
                    }
                    Err(e) => self.refused(
                        "Connector::identify",
                        Side::Client,
                        w,
                        judged,
                        e.reason(),
                        e.detail(),
                    ),
                }
            }
        }
    }

    fn bare_server(&mut self, w: W) -> Result<(), Fail> {
        let judged = self.judge(Side::Server, w, None);
        let mut wire = Wire::new(self.server.config(), self.bare[w.idx()].clone());
        let result = wire.complete();
        self.check_bare_server("bare-server-config", w, &judged, &wire, result)
    }

    fn bare_client(&mut self, w: W, name: Name) -> Result<(), Fail> {
        let judged = self.judge(Side::Client, w, Some(name));
        let mut wire = self.client_wire(w, name);
        let result = wire.complete();
        self.check_bare_client("bare-client-config", w, name, &judged, &wire, result)
    }

    /// A handshake whose client Certificate is judged before `change` and
    /// whose Finished arrives after it.
    fn straddle(&mut self, w: W, change: Change) -> Result<(), Fail> {
        let before = self.judge(Side::Server, w, None);
        let mut small = (*self.bare[w.idx()]).clone();
        small.max_fragment_size = Some(64);
        let mut wire = Wire::new(self.server.config(), Arc::new(small));
        let hello = wire.client_out();
        wire.feed_server(&hello)
            .expect("the server takes a ClientHello");
        let flight = wire.server_out();
        wire.feed_client(&flight)
            .expect("harness: the workload's client takes the server's flight");
        let second = wire.client_out();
        let recs = records(&second);
        let (finished, rest) = recs.split_last().expect("the client's second flight");
        if let Err(e) = wire.feed_server(&rest.concat()) {
            self.bare_refusal("straddle(before the change)", Side::Server, w, &before, &e)?;
            return self.apply(&change.op());
        }
        if !before.admits() {
            // Its Certificate passed the verifier, or its ticket opened.
            self.admitted_wrongly("straddle(before the change)", Side::Server, w, &before)?;
        }
        self.apply(&change.op())?;
        let judged = self.judge(Side::Server, w, None);
        match wire.feed_server(finished) {
            Err(e) => self.bare_refusal("straddle(Finished)", Side::Server, w, &judged, &e),
            Ok(()) => {
                let tickets = wire.server_out();
                let _ = wire.feed_client(&tickets);
                self.check_identify_server(w, &judged, &wire)
            }
        }
    }

    fn hold(&mut self, side: Side, w: W, name: Name) -> Result<(), Fail> {
        match side {
            Side::Server => {
                let judged = self.judge(Side::Server, w, None);
                let mut wire = Wire::new(self.server.config(), self.bare[w.idx()].clone());
                let hello = wire.client_out();
                wire.feed_server(&hello)
                    .expect("the server takes a ClientHello");
                let flight = wire.server_out();
                wire.feed_client(&flight)
                    .expect("harness: the workload's client takes the server's flight");
                let finished = wire.client_out();
                let result = wire
                    .feed_server(&finished)
                    .map_err(|e| format!("server: {e:?}"));
                let ok = result.is_ok();
                self.check_bare_server("held-ticket-server", w, &judged, &wire, result)?;
                let tickets = wire.server_out();
                if ok && !tickets.is_empty() {
                    self.held.push(Held::Server { w, wire, tickets });
                }
                Ok(())
            }
            Side::Client => {
                let judged = self.judge(Side::Client, w, Some(name));
                let mut wire = self.client_wire(w, name);
                let hello = wire.client_out();
                wire.feed_server(&hello)
                    .expect("harness: the workload's server takes a ClientHello");
                let flight = wire.server_out();
                let result = wire
                    .feed_client(&flight)
                    .map_err(|e| format!("client: {e:?}"));
                let ok = result.is_ok();
                if ok {
                    let finished = wire.client_out();
                    wire.feed_server(&finished)
                        .expect("harness: the workload's server takes the client's Finished");
                }
                self.check_bare_client("held-ticket-client", w, name, &judged, &wire, result)?;
                let tickets = wire.server_out();
                if ok && !tickets.is_empty() {
                    self.held.push(Held::Client {
                        w,
                        name,
                        wire,
                        tickets,
                    });
                }
                Ok(())
            }
        }
    }

    /// Late tickets arrive; their peer tries to resume at once.
    fn deliver(&mut self, n: usize) -> Result<(), Fail> {
        if self.held.is_empty() {
            return Ok(());
        }
        let held = self.held.remove(n % self.held.len());
        match held {
            Held::Server {
                w,
                mut wire,
                tickets,
            } => {
                let _ = wire.feed_client(&tickets);
                self.bare_server(w)
            }
            Held::Client {
                w,
                name,
                mut wire,
                tickets,
            } => {
                let _ = wire.feed_client(&tickets);
                self.bare_client(w, name)
            }
        }
    }

    // --- live connections -------------------------------------------------

    fn at_expiry(&self, side: Side) -> bool {
        match side {
            Side::Server => self.setup.close_at_expiry.0,
            Side::Client => self.setup.close_at_expiry.1,
        }
    }

    /// Rule 6, after every step: connections the oracle closes are closed
    /// (waiting a bounded time for the sweeper), the others stay open.
    fn check_live(&mut self) -> Result<(), Fail> {
        let woken = std::mem::take(&mut self.woken);
        for side in [Side::Server, Side::Client] {
            if woken[side.idx()] && self.tracked[side.idx()] {
                self.busy[side.idx()] = true;
            }
        }
        if self.live.is_empty() {
            return Ok(());
        }
        let verdicts: Vec<Option<Why>> = self
            .live
            .iter()
            .map(|l| {
                self.judge(l.side, l.w, l.name)
                    .closing(self.at_expiry(l.side))
                    .cloned()
            })
            .collect();
        // (A connection whose failure to close is ignored is waited for a
        // shorter time, so that an exploration past a known hole is not
        // slowed down by it.)
        let ignored_kept = |l: &Live, why: &Why| {
            let tag = format!("live-kept:{}:{}", l.side.name(), why.tag);
            ignored().iter().any(|p| tag.contains(p.as_str()))
        };
        let started = Instant::now();
        while self.live.iter().zip(&verdicts).any(|(l, v)| {
            let within = match v {
                Some(why) if ignored_kept(l, why) => CLOSE_WITHIN / 8,
                Some(_) => CLOSE_WITHIN,
                None => Duration::ZERO,
            };
            started.elapsed() < within && l.closed_by_policy().is_none()
        }) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Connections that must stay: give the sweeper its chance first.
        if self
            .live
            .iter()
            .zip(&verdicts)
            .any(|(l, v)| v.is_none() && woken[l.side.idx()])
        {
            std::thread::sleep(SETTLE);
            self.busy = [false; 2];
        }
        let mut problems = Vec::new();
        let mut gone = Vec::new();
        let runtime = &self.runtime;
        for (l, v) in self.live.iter_mut().zip(&verdicts) {
            let closed = l.closed_by_policy();
            gone.push(closed.is_some());
            let who = format!(
                "the {}'s live connection with {:?}{}",
                l.side.name(),
                l.w,
                l.name
                    .map_or_else(String::new, |n| format!(" (dialled {})", n.as_str()))
            );
            match (v, closed) {
                (Some(why), None) => problems.push((
                    Some(gone.len() - 1),
                    format!("live-kept:{}:{}", l.side.name(), why.tag),
                    format!(
                        "{who} is still open {CLOSE_WITHIN:?} after the step, but a full handshake now would be refused for a reason that closes live connections: {}",
                        why.text
                    ),
                )),
                (None, Some(reason)) => problems.push((
                    None,
                    format!("live-closed:{}", l.side.name()),
                    format!(
                        "{who} was closed ({reason}), but a full handshake now would be admitted, or refused only for a kept reason"
                    ),
                )),
                (Some(_), Some(_)) => {
                    if !runtime.block_on(l.peer_sees_end()) {
                        problems.push((
                            None,
                            format!("live-socket:{}", l.side.name()),
                            format!("{who} is closed by policy, but its peer's socket is still open"),
                        ));
                    }
                }
                (None, None) => {}
            }
        }
        for (kept, tag, what) in problems {
            self.fail(&tag, false, what)?;
            // Ignored: stop following that connection.
            if let Some(i) = kept {
                gone[i] = true;
            }
        }
        let mut gone = gone.into_iter();
        self.live.retain(|_| !gone.next().unwrap_or(true));
        Ok(())
    }
}

impl Change {
    fn op(self) -> Op {
        match self {
            Self::Allow(rules) => Op::SetAllow(rules),
            Self::Revoke(w) => Op::Revoke(Side::Server, w),
            Self::DropRoot(root) => Op::DropRoot(Side::Server, root),
            Self::Advance(step) => Op::Advance(step),
        }
    }
}

fn paths(dir: &tempfile::TempDir, side: Side) -> Paths {
    let d = dir.path().join(side.name());
    Paths {
        cert: d.join("tls.crt"),
        key: d.join("tls.key"),
        flat: d.join("flat.pem"),
        crl: d.join("crl.pem"),
    }
}

fn files(world: &World, setup: &Setup, side: Side, material: &Material) -> Files {
    let own = &world.own[side.idx()][material.own];
    let flat = [Root::P, Root::P2]
        .into_iter()
        .filter(|r| material.flat[r.idx()])
        .map(|r| world.ca(r.ca()).cert_pem())
        .collect::<String>();
    let crl = setup.crls.then(|| {
        Ca::ALL
            .into_iter()
            .filter(|ca| material.includes(*ca))
            .map(|ca| material.crl(ca).text.as_str())
            .collect::<String>()
    });
    Files {
        cert: own.chain_pem.clone(),
        key: own.key_pem.clone(),
        flat,
        crl,
    }
}

fn write_files(paths: &Paths, files: &Files) {
    std::fs::write(&paths.cert, &files.cert).expect("write");
    std::fs::write(&paths.key, &files.key).expect("write");
    std::fs::write(&paths.flat, &files.flat).expect("write");
    if let Some(crl) = &files.crl {
        std::fs::write(&paths.crl, crl).expect("write");
    }
}

/// The stock client verifier, on the chain the model knows.
fn client_chain(
    world: &World,
    anchors: &[CertificateDer<'static>],
    crls: Vec<Vec<u8>>,
    chain: &[CertificateDer<'static>],
    at: SystemTime,
    strict: bool,
) -> Result<(), Why> {
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor.clone()).expect("a root");
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), world.provider.clone());
    if !crls.is_empty() {
        builder = builder.with_crls(crls.into_iter().map(CertificateRevocationListDer::from));
        builder = if strict {
            builder.enforce_revocation_expiration()
        } else {
            builder.allow_unknown_revocation_status()
        };
    }
    let verifier = builder.build().expect("a verifier");
    verifier
        .verify_client_cert(&chain[0], &chain[1..], unix(at))
        .map(|_| ())
        .map_err(|e| why_rustls(&e))
}

/// webpki, on the chain the model knows, for a server.
fn server_chain(
    world: &World,
    anchors: &[CertificateDer<'static>],
    crls: Vec<Vec<u8>>,
    chain: &[CertificateDer<'static>],
    at: SystemTime,
    strict: bool,
) -> Result<(), Why> {
    let anchors: Vec<_> = anchors
        .iter()
        .map(|der| {
            webpki::anchor_from_trusted_cert(der)
                .expect("an anchor")
                .to_owned()
        })
        .collect();
    let owned: Vec<webpki::CertRevocationList<'static>> = crls
        .iter()
        .map(|der| {
            webpki::CertRevocationList::Owned(
                webpki::OwnedCertRevocationList::from_der(der).expect("a CRL"),
            )
        })
        .collect();
    let refs: Vec<&webpki::CertRevocationList<'_>> = owned.iter().collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&refs).ok().map(|b| {
        b.with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(if strict {
                webpki::UnknownStatusPolicy::Deny
            } else {
                webpki::UnknownStatusPolicy::Allow
            })
            .with_expiration_policy(if strict {
                webpki::ExpirationPolicy::Enforce
            } else {
                webpki::ExpirationPolicy::Ignore
            })
            .build()
    });
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| why_webpki(&e))?;
    leaf.verify_for_usage(
        world.provider.signature_verification_algorithms.all,
        &anchors,
        &chain[1..],
        unix(at),
        webpki::KeyUsage::server_auth(),
        revocation,
        None,
    )
    .map(|_| ())
    .map_err(|e| why_webpki(&e))
}

/// Workload `wl` as a client: its chain and key, trusting P (which issued
/// the services under test, through I).
fn bare_client(world: &World, wl: &Workload) -> Arc<ClientConfig> {
    let key = PrivateKeyDer::from_pem_slice(wl.key_pem.as_bytes()).expect("a key");
    let config = ClientConfig::builder_with_provider(world.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(world.peer_roots.clone())
        .with_client_auth_cert(wl.chain.clone(), key)
        .expect("a client identity");
    Arc::new(config)
}

/// Workload `wl` as a server: its chain and key; clients must chain to P.
fn peer_server(world: &World, wl: &Workload) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::from_pem_slice(wl.key_pem.as_bytes()).expect("a key");
    let verifier = WebPkiClientVerifier::builder_with_provider(
        world.peer_roots.clone(),
        world.provider.clone(),
    )
    .build()
    .expect("a verifier");
    let config = ServerConfig::builder_with_provider(world.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(wl.chain.clone(), key)
        .expect("a server identity");
    Arc::new(config)
}

/// A bare tokio-rustls client's connection to the server under test.
async fn dial(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<ClientStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a name");
    TlsConnector::from(config).connect(name, tcp).await
}

// ---------------------------------------------------------------------------
// Running a case

/// Runs `ops` from `setup`; the first violation, with where it happened.
fn run(setup: &Setup, ops: &[Op]) -> Result<(), String> {
    let trace = std::env::var_os("MESHTLS_MODEL_TRACE").is_some();
    if trace {
        eprintln!("case: {setup:?}");
    }
    let mut case = Case::new(setup);
    for (i, op) in ops.iter().enumerate() {
        let started = Instant::now();
        let step = case.apply(op).and_then(|()| case.check_live());
        if trace {
            eprintln!(
                "{:>5} ms  {op:?}  {} [live {}]",
                started.elapsed().as_millis(),
                case.note.take(),
                case.live.len()
            );
        }
        match step {
            Ok(()) => {}
            Err(Fail::Stop) => return Ok(()),
            Err(Fail::Violation(what)) => {
                return Err(format!(
                    "step {} of {}, {op:?}:\n    {what}",
                    i + 1,
                    ops.len()
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Strategies

/// Any workload; the ordinary ones (which a policy may admit, and so hold
/// live connections) more often than those that break the X509-SVID rules,
/// and the short-lived one most (it must be met before it expires).
fn any_w() -> impl Strategy<Value = W> {
    prop_oneof![
        3 => prop::sample::select(vec![
            W::Alpha,
            W::Beta,
            W::Billing,
            W::Api,
            W::Legacy,
            W::Short,
            W::Short,
        ]),
        1 => prop::sample::select(vec![W::NoDigSig, W::NoKu, W::KuCa, W::PathCa, W::Gamma]),
    ]
}

fn any_side() -> impl Strategy<Value = Side> {
    prop_oneof![3 => Just(Side::Server), 2 => Just(Side::Client)]
}

fn any_root() -> impl Strategy<Value = Root> {
    prop::sample::select(vec![Root::P, Root::P2])
}

fn any_ca() -> impl Strategy<Value = Ca> {
    prop::sample::select(Ca::ALL.to_vec())
}

/// A non-empty set of rules, each rule in it with probability 0.6.
fn any_rules() -> impl Strategy<Value = Rules> {
    prop::collection::vec(prop::bool::weighted(0.6), Rule::ALL.len()).prop_map(|bits| {
        let set = bits
            .iter()
            .enumerate()
            .filter(|(_, on)| **on)
            .fold(0u8, |set, (i, _)| set | 1 << i);
        Rules(if set == 0 { 1 } else { set })
    })
}

fn any_name() -> impl Strategy<Value = Name> {
    prop::sample::select(Name::ALL.to_vec())
}

/// A clock step, small ones more often (`AdvancePast` makes the big jumps
/// that matter).
fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::S2),
        3 => Just(Step::M1),
        3 => Just(Step::M10),
        2 => Just(Step::M30),
        1 => Just(Step::H1),
        1 => Just(Step::H2),
        1 => Just(Step::H6),
    ]
}

fn any_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        any_rules().prop_map(Change::Allow),
        any_w().prop_map(Change::Revoke),
        any_root().prop_map(Change::DropRoot),
        any_step().prop_map(Change::Advance),
    ]
}

fn any_op() -> BoxedStrategy<Op> {
    let side_root = || (any_side(), any_root());
    let side_ca = || (any_side(), any_ca());
    Union::new_weighted(vec![
        (
            14,
            (
                any_w(),
                prop::bool::weighted(0.7),
                prop::bool::weighted(0.3),
            )
                .prop_map(|(w, keep, throwaway)| Op::Accept { w, keep, throwaway })
                .boxed(),
        ),
        (
            12,
            (any_w(), any_name(), prop::bool::weighted(0.7))
                .prop_map(|(w, name, keep)| Op::Connect { w, name, keep })
                .boxed(),
        ),
        (5, any_w().prop_map(Op::BareServer).boxed()),
        (
            4,
            (any_w(), any_name())
                .prop_map(|(w, n)| Op::BareClient(w, n))
                .boxed(),
        ),
        (
            3,
            (any_w(), any_change())
                .prop_map(|(w, c)| Op::Straddle(w, c))
                .boxed(),
        ),
        (
            3,
            (any_side(), any_w(), any_name())
                .prop_map(|(side, w, name)| Op::Hold { side, w, name })
                .boxed(),
        ),
        (3, (0usize..4).prop_map(Op::Deliver).boxed()),
        (4, side_root().prop_map(|(s, r)| Op::AddRoot(s, r)).boxed()),
        (5, side_root().prop_map(|(s, r)| Op::DropRoot(s, r)).boxed()),
        (
            6,
            (any_side(), any_w())
                .prop_map(|(s, w)| Op::Revoke(s, w))
                .boxed(),
        ),
        (
            2,
            (any_side(), any_w())
                .prop_map(|(s, w)| Op::Unrevoke(s, w))
                .boxed(),
        ),
        (
            1,
            (any_side(), any::<bool>())
                .prop_map(|(s, b)| Op::RevokeI(s, b))
                .boxed(),
        ),
        (3, side_ca().prop_map(|(s, c)| Op::CrlShort(s, c)).boxed()),
        (2, side_ca().prop_map(|(s, c)| Op::CrlFresh(s, c)).boxed()),
        (1, any_side().prop_map(Op::CrlRefreshAll).boxed()),
        (
            1,
            side_ca().prop_map(|(s, c)| Op::CrlOlderFirst(s, c)).boxed(),
        ),
        (
            1,
            side_ca().prop_map(|(s, c)| Op::CrlSameNumber(s, c)).boxed(),
        ),
        (6, any_rules().prop_map(Op::SetAllow).boxed()),
        (3, any_rules().prop_map(Op::SetExpected).boxed()),
        (8, any_step().prop_map(Op::Advance).boxed()),
        (
            5,
            prop_oneof![
                3 => Just(Moment::ShortExpiry),
                2 => Just(Moment::NextCrlUpdate),
            ]
            .prop_map(Op::AdvancePast)
            .boxed(),
        ),
        (1, any_side().prop_map(Op::RotateOwn).boxed()),
        (
            1,
            (
                any_side(),
                prop::sample::select(vec![File::Cert, File::Key, File::Roots, File::Crl]),
            )
                .prop_map(|(s, f)| Op::Torn(s, f))
                .boxed(),
        ),
        (1, any_side().prop_map(Op::Mismatched).boxed()),
    ])
    .boxed()
}

fn any_roots() -> impl Strategy<Value = Roots> {
    prop_oneof![2 => Just(Roots(3)), 1 => (0u8..4).prop_map(Roots)]
}

fn any_setup() -> impl Strategy<Value = Setup> {
    (
        prop::bool::weighted(0.75),
        prop::bool::weighted(0.3),
        (any::<bool>(), any::<bool>()),
        any_rules(),
        prop::option::weighted(0.6, any_rules()),
        (any_roots(), any_roots()),
    )
        .prop_map(
            |(crls, stateful, close_at_expiry, allow, expect, flat)| Setup {
                crls,
                stateful,
                close_at_expiry,
                allow,
                expect,
                flat,
            },
        )
}

fn env_number(name: &str) -> Option<u32> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn max_ops() -> usize {
    env_number("MESHTLS_MODEL_MAX_OPS").map_or(32, |n| n.max(1) as usize)
}

fn config() -> ProptestConfig {
    let cases = env_number("MESHTLS_MODEL_CASES")
        .or_else(|| env_number("PROPTEST_CASES"))
        .unwrap_or(128);
    ProptestConfig {
        cases,
        max_shrink_iters: env_number("PROPTEST_MAX_SHRINK_ITERS").unwrap_or(4096),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The invariant, on random sequences of operations.
    #[test]
    fn the_trust_invariant_holds_on_every_path(
        setup in any_setup(),
        ops in prop::collection::vec(any_op(), 1..=max_ops()),
    ) {
        if let Err(failure) = run(&setup, &ops) {
            return Err(TestCaseError::fail(failure));
        }
    }
}

// ---------------------------------------------------------------------------
// Sequences kept by hand: a control that passes on every path, and the
// shortest sequences the machine found for each hole (issue 19), cleaned
// of any step that leaned on another hole. Each fails with the hole and
// passes once it is fixed.

/// A setup with every allow rule, no CRLs, both flat roots on both sides.
fn plain() -> Setup {
    Setup {
        crls: false,
        stateful: false,
        close_at_expiry: (false, false),
        allow: Rules(0b11_1111),
        expect: None,
        flat: (Roots(3), Roots(3)),
    }
}

/// The rules named, as a set.
fn rules(of: &[Rule]) -> Rules {
    Rules(
        of.iter()
            .map(|r| 1 << Rule::ALL.iter().position(|x| x == r).unwrap_or(0))
            .sum(),
    )
}

fn replay(setup: &Setup, ops: &[Op]) {
    if let Err(failure) = run(setup, ops) {
        panic!("{failure}\n  setup: {setup:?}");
    }
}

/// Every kind of operation, on both kinds of session resumption, where
/// meshtls and the oracle agree today: live connections closed for a
/// revocation, an allow-list change and new expected servers (one of them
/// accepted on a runtime that has ended since), kept under a stale CRL;
/// resumption on both bare configs and through late tickets; a handshake
/// straddling a revocation; torn, mismatched and good reloads.
#[test]
fn every_operation_agrees_with_the_oracle_where_meshtls_holds() {
    use Op::*;
    for stateful in [false, true] {
        let setup = Setup {
            crls: true,
            stateful,
            close_at_expiry: (true, true),
            allow: rules(&[
                Rule::TrustDomainA,
                Rule::DnsBilling,
                Rule::CnLegacy,
                Rule::DnsApi,
            ]),
            expect: Some(rules(&[Rule::TrustDomainA, Rule::DnsBilling, Rule::DnsApi])),
            flat: (Roots(3), Roots(3)),
        };
        let ops = [
            Accept {
                w: W::Alpha,
                keep: true,
                throwaway: true,
            },
            Accept {
                w: W::Billing,
                keep: true,
                throwaway: false,
            },
            Connect {
                w: W::Billing,
                name: Name::Billing,
                keep: true,
            },
            BareServer(W::Legacy),
            BareServer(W::Legacy),
            BareClient(W::Api, Name::Api),
            BareClient(W::Api, Name::Api),
            Accept {
                w: W::Gamma,
                keep: false,
                throwaway: false,
            },
            Hold {
                side: Side::Server,
                w: W::Alpha,
                name: Name::Billing,
            },
            Hold {
                side: Side::Client,
                w: W::Billing,
                name: Name::Billing,
            },
            Revoke(Side::Server, W::Billing),
            Deliver(0),
            Deliver(0),
            Straddle(W::Legacy, Change::Revoke(W::Legacy)),
            SetAllow(rules(&[Rule::DnsBilling, Rule::CnLegacy])),
            CrlShort(Side::Client, Ca::I),
            Advance(Step::M30),
            Connect {
                w: W::Billing,
                name: Name::Billing,
                keep: false,
            },
            Torn(Side::Client, File::Crl),
            CrlFresh(Side::Client, Ca::I),
            CrlOlderFirst(Side::Server, Ca::A),
            Torn(Side::Server, File::Roots),
            Torn(Side::Server, File::Key),
            Mismatched(Side::Server),
            RotateOwn(Side::Client),
            RotateOwn(Side::Server),
            SetExpected(rules(&[Rule::DnsApi])),
            DropRoot(Side::Client, Root::P2),
            AddRoot(Side::Client, Root::P2),
            RevokeI(Side::Server, true),
            BareServer(W::Billing),
            AdvancePast(Moment::ShortExpiry),
            Accept {
                w: W::Short,
                keep: false,
                throwaway: false,
            },
        ];
        replay(&setup, &ops);
    }
}

/// Hole: a trust-domain bundle vouches for DNS names. A partner CA trusted
/// only for td-b.test mints a leaf with its SPIFFE ID plus
/// DNS:billing.internal; the server's `dns:billing.internal` rule must not
/// admit it.
#[test]
fn a_partner_bundle_does_not_vouch_for_a_dns_name_on_the_server() {
    let setup = Setup {
        allow: rules(&[Rule::DnsBilling]),
        ..plain()
    };
    replay(
        &setup,
        &[Op::Accept {
            w: W::Beta,
            keep: false,
            throwaway: false,
        }],
    );
}

/// The same on a client with no expected servers, dialling the name.
#[test]
fn a_partner_bundle_does_not_vouch_for_a_dialled_name() {
    replay(
        &plain(),
        &[Op::Connect {
            w: W::Beta,
            name: Name::Billing,
            keep: false,
        }],
    );
}

/// The same on a client expecting `dns:billing.internal`.
#[test]
fn a_partner_bundle_does_not_vouch_for_an_expected_dns_name() {
    let setup = Setup {
        expect: Some(rules(&[Rule::DnsBilling])),
        ..plain()
    };
    replay(&setup, &[Op::BareClient(W::Beta, Name::Billing)]);
}

/// Hole: after a key rotation under one CA name, dropping the old root
/// leaves its peers' live connections open (webpki reports a bad
/// signature, which did not close).
#[test]
fn dropping_the_old_root_after_a_rotation_closes_its_peers_connections() {
    let setup = plain();
    replay(
        &setup,
        &[
            Op::Accept {
                w: W::Legacy,
                keep: true,
                throwaway: false,
            },
            Op::DropRoot(Side::Server, Root::P),
        ],
    );
    let setup = Setup {
        expect: Some(rules(&[Rule::DnsApi])),
        ..plain()
    };
    replay(
        &setup,
        &[
            Op::Connect {
                w: W::Api,
                name: Name::Api,
                keep: true,
            },
            Op::DropRoot(Side::Client, Root::P2),
        ],
    );
}

/// Hole: with `close_at_peer_expiry`, a connection tracked while the
/// sweeper sleeps (here with no deadline: the first connection is gone) is
/// never scheduled for its peer's expiry.
#[test]
fn a_connection_opened_while_the_sweeper_sleeps_closes_at_its_peers_expiry() {
    let setup = Setup {
        close_at_expiry: (true, true),
        ..plain()
    };
    replay(
        &setup,
        &[
            Op::Accept {
                w: W::Billing,
                keep: false,
                throwaway: false,
            },
            Op::Accept {
                w: W::Short,
                keep: true,
                throwaway: false,
            },
            Op::AdvancePast(Moment::ShortExpiry),
        ],
    );
}

/// Hole: two CRLs of one CA with one CRL number and different contents are
/// loaded (the first listed wins) instead of refused.
#[test]
fn two_crls_with_one_number_and_different_contents_are_refused() {
    let setup = Setup {
        crls: true,
        ..plain()
    };
    replay(&setup, &[Op::CrlSameNumber(Side::Server, Ca::P)]);
}

/// Hole: the X509-SVID rules, one certificate each: keyUsage without
/// digitalSignature, no keyUsage, an issuing CA whose keyUsage lacks
/// keyCertSign, an issuing CA whose SPIFFE ID has a path.
#[test]
fn x509_svid_rules_hold_for_a_leaf_without_digital_signature() {
    replay(&plain(), &[Op::BareServer(W::NoDigSig)]);
}

#[test]
fn x509_svid_rules_hold_for_a_leaf_without_key_usage() {
    replay(&plain(), &[Op::BareServer(W::NoKu)]);
}

#[test]
fn x509_svid_rules_hold_for_an_issuing_ca_without_key_cert_sign() {
    replay(&plain(), &[Op::BareServer(W::KuCa)]);
}

#[test]
fn x509_svid_rules_hold_for_an_issuing_ca_whose_spiffe_id_has_a_path() {
    replay(&plain(), &[Op::BareServer(W::PathCa)]);
}

/// Hole: a live connection kept for a kept reason (its peer expired, no
/// `close_at_peer_expiry`; or a stale CRL) is never judged again: revoked,
/// removed from the allow-list or its CA dropped, it stays open.
#[test]
fn an_expired_peer_kept_open_is_closed_when_it_is_revoked() {
    let setup = Setup {
        crls: true,
        ..plain()
    };
    replay(
        &setup,
        &[
            Op::Accept {
                w: W::Short,
                keep: true,
                throwaway: false,
            },
            Op::AdvancePast(Moment::ShortExpiry),
            Op::Revoke(Side::Server, W::Short),
        ],
    );
}

#[test]
fn an_expired_peer_kept_open_is_closed_when_its_root_is_dropped() {
    let setup = Setup {
        flat: (Roots(3), Roots(1)),
        ..plain()
    };
    replay(
        &setup,
        &[
            Op::Connect {
                w: W::Short,
                name: Name::Short,
                keep: true,
            },
            Op::AdvancePast(Moment::ShortExpiry),
            Op::DropRoot(Side::Client, Root::P),
        ],
    );
}

#[test]
fn an_expired_peer_kept_open_is_closed_when_the_allow_list_drops_it() {
    replay(
        &plain(),
        &[
            Op::Accept {
                w: W::Short,
                keep: true,
                throwaway: false,
            },
            Op::AdvancePast(Moment::ShortExpiry),
            Op::SetAllow(rules(&[Rule::TrustDomainA])),
        ],
    );
}

#[test]
fn a_peer_kept_open_under_a_stale_crl_is_closed_when_the_allow_list_drops_it() {
    let setup = Setup {
        crls: true,
        ..plain()
    };
    replay(
        &setup,
        &[
            Op::Accept {
                w: W::Legacy,
                keep: true,
                throwaway: false,
            },
            Op::CrlShort(Side::Server, Ca::P),
            Op::Advance(Step::M30),
            Op::SetAllow(rules(&[Rule::TrustDomainA])),
        ],
    );
}

#[test]
fn a_peer_kept_open_under_a_stale_crl_is_closed_at_its_expiry() {
    let setup = Setup {
        crls: true,
        close_at_expiry: (true, true),
        ..plain()
    };
    replay(
        &setup,
        &[
            Op::Accept {
                w: W::Short,
                keep: true,
                throwaway: false,
            },
            Op::CrlShort(Side::Server, Ca::P),
            Op::Advance(Step::M30),
            Op::AdvancePast(Moment::ShortExpiry),
        ],
    );
}
