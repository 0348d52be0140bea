//! A validated set of material: the service's certified key, the trust roots
//! and CRLs that judge peers, and the facts about them that reloads report.
//!
//! Everything is read and checked before anything is used: a set that fails
//! any check is refused as a whole.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::error::{Error, MaterialError, MaterialKind, Origin, Usage, describe_webpki};
use crate::identity::LeafInfo;
use crate::judge::{RevocationScope, Trust};
use crate::observe::CertFacts;
use crate::revocation::{Algorithms, CrlInput, Crls};
use crate::source::Source;
use crate::spiffe::TrustDomain;

/// Which side of the connection a service's own certificate serves.
/// (Public only as a sealed side's constant.)
#[allow(unreachable_pub, unnameable_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    /// "server" or "client", for events and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }

    /// The usage our own certificate needs.
    fn own_usage(self) -> Usage {
        match self {
            Self::Server => Usage::ServerAuth,
            Self::Client => Usage::ClientAuth,
        }
    }
}

/// The usage a *peer* certificate needs, as webpki checks it.
pub(crate) fn peer_key_usage(own: Role) -> KeyUsage {
    match own {
        Role::Server => KeyUsage::client_auth(),
        Role::Client => KeyUsage::server_auth(),
    }
}

/// Where each piece of a generation is read from.
#[derive(Clone, Debug)]
pub(crate) struct Sources {
    pub(crate) cert: Source,
    pub(crate) key: Source,
    pub(crate) roots: Source,
    /// Roots per SPIFFE trust domain (already checked to be one).
    pub(crate) domain_roots: Vec<(String, Source)>,
    pub(crate) crls: Vec<Source>,
}

impl Sources {
    /// Every file a generation depends on.
    pub(crate) fn files(&self) -> impl Iterator<Item = &std::path::Path> {
        [&self.cert, &self.key, &self.roots]
            .into_iter()
            .chain(self.domain_roots.iter().map(|(_, s)| s))
            .chain(&self.crls)
            .filter_map(Source::path)
    }

    pub(crate) fn read(&self) -> Result<Inputs, Error> {
        Ok(Inputs {
            cert: self.cert.read(MaterialKind::CertificateChain)?,
            key: self.key.read(MaterialKind::PrivateKey)?,
            roots: self.roots.read(MaterialKind::TrustRoots)?,
            domain_roots: self
                .domain_roots
                .iter()
                .map(|(td, s)| Ok((td.clone(), s.read(MaterialKind::TrustRoots)?)))
                .collect::<Result<_, Error>>()?,
            crls: self
                .crls
                .iter()
                .map(|s| s.read(MaterialKind::Crl))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// New material for a running server or client, handed over by the
/// application: from Vault, a cloud secret manager, a SPIFFE agent, or its
/// own code. Applied with [`Mtls::update`](crate::Mtls::update), it is
/// validated with the rest of the serving material, all or nothing,
/// exactly as a reload from disk: the same checks, the same events
/// (`Reloaded`, `ReloadFailed`) and metrics, and live connections judged
/// again when the trust material changed. What it names replaces that
/// part's source from then on (a later reload of the other files keeps
/// it); what it does not name stays as it is.
///
/// ```no_run
/// # fn f(server: &meshtls::ServerTls, chain: Vec<u8>, key: Vec<u8>, ca: Vec<u8>) -> Result<(), meshtls::Error> {
/// use meshtls::Update;
/// // e.g. a renewal read from Vault's PKI engine: certificate, key, issuing CA.
/// let outcome = server.update(Update::new().identity(chain, key).roots(ca))?;
/// println!("{outcome:?}"); // Swapped { generation: 2, policy_changed: true }
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct Update {
    identity: Option<(Vec<u8>, Vec<u8>)>,
    roots: Option<Vec<u8>>,
    /// The complete set of roots per trust domain, replacing all of them.
    all_domain_roots: Option<Vec<(String, Vec<u8>)>>,
    domain_roots: Vec<(String, Option<Vec<u8>>)>,
    crls: Option<Vec<u8>>,
    /// Where the material came from, for messages ("pushed" when unsaid).
    origin: Option<String>,
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Update")
            .field("identity", &self.identity.is_some())
            .field("roots", &self.roots.is_some())
            .field(
                "domain_roots",
                &self
                    .domain_roots
                    .iter()
                    .map(|(td, _)| td)
                    .collect::<Vec<_>>(),
            )
            .field("crls", &self.crls.is_some())
            .field(
                "all_domain_roots",
                &self
                    .all_domain_roots
                    .as_ref()
                    .map(|all| all.iter().map(|(td, _)| td).collect::<Vec<_>>()),
            )
            .finish()
    }
}

impl Update {
    /// An update that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names where the material came from (`"Vault"`, `"the billing
    /// secret"`), so that errors and events about it say so instead of
    /// "pushed".
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// How a part of this update is named in messages.
    fn label(&self, part: &str) -> String {
        match &self.origin {
            Some(origin) => format!("the {part} from {}", crate::error::untrusted(origin)),
            None => format!("the pushed {part}"),
        }
    }

    /// A new certificate chain (PEM, leaf first) and its private key (PEM).
    pub fn identity(mut self, chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((chain_pem.into(), key_pem.into()));
        self
    }

    /// New flat trust roots (PEM bundle): who may sign peers.
    pub fn roots(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots = Some(pem.into());
        self
    }

    /// New roots (PEM bundle) for the peers of one SPIFFE trust domain
    /// (`td` or `spiffe://td`), added or replacing that trust domain's, as
    /// with `client_roots_for` / `server_roots_for`.
    pub fn roots_for(mut self, trust_domain: &str, pem: impl Into<Vec<u8>>) -> Self {
        self.domain_roots
            .push((trust_domain.to_owned(), Some(pem.into())));
        self
    }

    /// The complete set of roots per trust domain (`td` or `spiffe://td`,
    /// and its PEM bundle), replacing every trust domain's roots: a trust
    /// domain not in it has no roots from then on. What a SPIFFE Workload
    /// API response says (its own bundle and the federated ones).
    pub fn exactly_these_domain_roots(
        mut self,
        roots: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Self {
        self.all_domain_roots = Some(roots.into_iter().collect());
        self
    }

    /// Removes a trust domain's roots: its peers are refused from then on
    /// (a federation that ended).
    pub fn remove_roots_for(mut self, trust_domain: &str) -> Self {
        self.domain_roots.push((trust_domain.to_owned(), None));
        self
    }

    /// New CRLs (PEM, one or more), replacing every CRL source. CRLs can be
    /// replaced but not removed by an update: turning revocation off is a
    /// decision for the builder.
    pub fn crls(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.crls = Some(pem.into());
        self
    }

    /// The sources after this update: each part it names becomes an
    /// in-memory source of the bytes given.
    pub(crate) fn apply(&self, current: &Sources) -> Result<Sources, Error> {
        let mut next = current.clone();
        if let Some((chain, key)) = &self.identity {
            next.cert = Source::pem(self.label("certificate chain"), chain.clone());
            next.key = Source::pem(self.label("private key"), key.clone());
        }
        if let Some(roots) = &self.roots {
            next.roots = Source::pem(self.label("trust roots"), roots.clone());
        }
        let domain = |given: &String| {
            given
                .parse::<TrustDomain>()
                .map(|td| td.to_string())
                .map_err(|source| crate::error::ConfigError::TrustDomain {
                    given: given.clone(),
                    source,
                })
        };
        if let Some(all) = &self.all_domain_roots {
            next.domain_roots.clear();
            for (given, pem) in all {
                let name = domain(given)?;
                let label = self.label(&format!("roots of trust domain {name}"));
                next.domain_roots
                    .push((name, Source::pem(label, pem.clone())));
            }
        }
        for (given, pem) in &self.domain_roots {
            let name = domain(given)?;
            next.domain_roots.retain(|(n, _)| *n != name);
            if let Some(pem) = pem {
                let label = self.label(&format!("roots of trust domain {name}"));
                next.domain_roots
                    .push((name, Source::pem(label, pem.clone())));
            }
        }
        if let Some(crls) = &self.crls {
            next.crls = vec![Source::pem(self.label("CRLs"), crls.clone())];
        }
        Ok(next)
    }
}

/// The bytes a generation was built from, to tell whether anything changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inputs {
    pub(crate) cert: Arc<[u8]>,
    pub(crate) key: Arc<[u8]>,
    pub(crate) roots: Arc<[u8]>,
    /// Each trust domain's roots, with its name: the same bytes under
    /// another trust domain are other trust.
    pub(crate) domain_roots: Vec<(String, Arc<[u8]>)>,
    pub(crate) crls: Vec<Arc<[u8]>>,
}

impl Inputs {
    /// Whether the material that judges peers (roots, CRLs) is the same.
    pub(crate) fn same_trust(&self, other: &Self) -> bool {
        self.roots == other.roots
            && self.domain_roots == other.domain_roots
            && self.crls == other.crls
    }
}

/// A validated set: all of it checked, ready to serve.
pub(crate) struct Material {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) leaf: CertFacts,
    pub(crate) trust: Arc<Trust>,
    pub(crate) inputs: Inputs,
}

impl Material {
    /// Reads nothing: validates `inputs` (read from `sources`) as a whole.
    pub(crate) fn validate(
        sources: &Sources,
        inputs: Inputs,
        role: Role,
        provider: &CryptoProvider,
        scope: RevocationScope,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let cert_origin = sources.cert.origin();
        let chain = sources
            .cert
            .certificates(&inputs.cert, MaterialKind::CertificateChain)?;
        let leaf = check_leaf(&cert_origin, &chain[0], role, now)?;
        let key = load_key(sources, &inputs, chain.clone(), provider, &leaf)?;
        let algs = provider.signature_verification_algorithms.all;
        let trust = load_trust(sources, &inputs, &chain[1..], scope, algs, now)?;

        // Our own chain should build to our roots when the same CA signs both
        // sides; if it does not, peers will likely refuse it too. A different CA
        // (UnknownIssuer) is normal and not an error, and so is a CA of the
        // same name with another key (a bad signature): the old CA of a key
        // rotation signed us, and the bundle trusts only its successor.
        let usage = match role {
            Role::Server => KeyUsage::server_auth(),
            Role::Client => KeyUsage::client_auth(),
        };
        match trust.verify(
            algs,
            &chain[0],
            &chain[1..],
            UnixTime::since_unix_epoch(
                now.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            usage,
        ) {
            Ok(())
            | Err(
                webpki::Error::UnknownIssuer
                | webpki::Error::UnknownRevocationStatus
                | webpki::Error::InvalidSignatureForPublicKey,
            ) => {}
            Err(e) => {
                return Err(MaterialError::ChainInvalid {
                    origin: cert_origin,
                    subject: leaf.subject.clone(),
                    roots: sources.roots.origin(),
                    detail: describe_webpki(&e),
                }
                .into());
            }
        }

        Ok(Self {
            key: Arc::new(key),
            leaf: leaf.facts(),
            trust: Arc::new(trust),
            inputs,
        })
    }
}

fn check_leaf(
    origin: &Origin,
    der: &CertificateDer<'_>,
    role: Role,
    now: SystemTime,
) -> Result<LeafInfo, Error> {
    let leaf = LeafInfo::parse(der).map_err(|e| MaterialError::BadCertificate {
        origin: origin.clone(),
        index: 0,
        detail: e.to_string(),
    })?;
    if leaf.is_ca || leaf.signs_certificates {
        return Err(MaterialError::LeafIsCa {
            origin: origin.clone(),
            subject: leaf.subject,
        }
        .into());
    }
    if now < leaf.not_before {
        return Err(MaterialError::NotYetValid {
            origin: origin.clone(),
            serial: leaf.serial_hex(),
            subject: leaf.subject,
            not_before: leaf.not_before,
        }
        .into());
    }
    if now > leaf.not_after {
        return Err(MaterialError::Expired {
            origin: origin.clone(),
            serial: leaf.serial_hex(),
            subject: leaf.subject,
            not_after: leaf.not_after,
        }
        .into());
    }
    if role == Role::Server && !leaf.has_san() {
        let suggestion = match &leaf.common_name {
            Some(cn) if cn.parse::<std::net::IpAddr>().is_ok() => format!("IP:{cn}"),
            Some(cn) if !cn.contains(' ') => format!("DNS:{cn}"),
            _ => "DNS:your.service.name".to_owned(),
        };
        return Err(MaterialError::NoSubjectAltName {
            origin: origin.clone(),
            subject: leaf.subject,
            suggestion,
        }
        .into());
    }
    if leaf.version < 3 {
        return Err(MaterialError::NotVersion3 {
            origin: origin.clone(),
            version: leaf.version,
            subject: leaf.subject,
            usage: role.own_usage(),
        }
        .into());
    }
    if let Some(eku) = leaf.eku {
        let ok = match role {
            Role::Server => eku.server_auth,
            Role::Client => eku.client_auth,
        };
        if !ok {
            return Err(MaterialError::WrongUsage {
                origin: origin.clone(),
                subject: leaf.subject,
                usage: role.own_usage(),
            }
            .into());
        }
    }
    // What x509-parser reads, webpki may not (an odd signature algorithm or
    // encoding): peers would refuse it, and without this the key would be
    // blamed (its match against the certificate fails).
    if let Err(e) = EndEntityCert::try_from(der) {
        return Err(MaterialError::BadCertificate {
            origin: origin.clone(),
            index: 0,
            detail: describe_webpki(&e),
        }
        .into());
    }
    Ok(leaf)
}

fn load_key(
    sources: &Sources,
    inputs: &Inputs,
    chain: Vec<CertificateDer<'static>>,
    provider: &CryptoProvider,
    leaf: &LeafInfo,
) -> Result<CertifiedKey, Error> {
    let key_origin = sources.key.origin();
    let key_der = sources.key.private_key(&inputs.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| MaterialError::UnusableKey {
            origin: key_origin.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    let mismatch = || MaterialError::KeyMismatch {
        cert: sources.cert.origin(),
        key: key_origin.clone(),
        subject: leaf.subject.clone(),
    };
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(mismatch().into()),
        // The key cannot tell its public half: prove possession instead.
        Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {
            if signs_for_certificate(&certified, provider) {
                Ok(certified)
            } else {
                Err(mismatch().into())
            }
        }
        Err(source) => Err(MaterialError::UnusableKey {
            origin: key_origin,
            source,
        }
        .into()),
    }
}

/// Signs a probe with the key and verifies it with the certificate's public key.
fn signs_for_certificate(certified: &CertifiedKey, provider: &CryptoProvider) -> bool {
    let algs = &provider.signature_verification_algorithms;
    let schemes: Vec<_> = algs.mapping.iter().map(|(scheme, _)| *scheme).collect();
    let Some(signer) = certified.key.choose_scheme(&schemes) else {
        return false;
    };
    let probe = b"meshtls: does this key belong to this certificate?";
    let Ok(signature) = signer.sign(probe) else {
        return false;
    };
    let Some((_, verifiers)) = algs.mapping.iter().find(|(s, _)| *s == signer.scheme()) else {
        return false;
    };
    let Ok(cert) = EndEntityCert::try_from(&certified.cert[0]) else {
        return false;
    };
    verifiers
        .iter()
        .any(|alg| cert.verify_signature(*alg, probe, &signature).is_ok())
}

fn load_trust(
    sources: &Sources,
    inputs: &Inputs,
    own_intermediates: &[CertificateDer<'static>],
    scope: RevocationScope,
    algs: Algorithms,
    now: SystemTime,
) -> Result<Trust, Error> {
    let roots_origin = sources.roots.origin();
    let mut issuers: Vec<CertificateDer<'static>> = own_intermediates.to_vec();
    let mut roots = Vec::new();
    // A builder given roots per trust domain only has an empty flat bundle.
    let flat_empty = inputs.roots.is_empty() && !sources.domain_roots.is_empty();
    let anchors = if flat_empty {
        Vec::new()
    } else {
        let der = sources
            .roots
            .certificates(&inputs.roots, MaterialKind::TrustRoots)?;
        let anchors = parse_roots(&roots_origin, &der, &mut roots, now)?;
        issuers.extend(der);
        anchors
    };
    let mut domains = std::collections::HashMap::new();
    for ((td, source), (_, bytes)) in sources.domain_roots.iter().zip(&inputs.domain_roots) {
        let origin = source.origin();
        let der = source.certificates(bytes, MaterialKind::TrustRoots)?;
        let anchors = parse_roots(&origin, &der, &mut roots, now)?;
        issuers.extend(der);
        // `finish` refused roots for anything that is not a trust domain.
        let Ok(domain) = td.parse::<TrustDomain>() else {
            continue;
        };
        domains
            .entry(td.clone())
            .or_insert_with(|| (domain, Vec::new()))
            .1
            .extend(anchors);
    }

    let mut read = Vec::with_capacity(sources.crls.len());
    for (src, bytes) in sources.crls.iter().zip(&inputs.crls) {
        read.push((src.origin(), src.crls(bytes)?));
    }
    let inputs = read.iter().flat_map(|(origin, ders)| {
        ders.iter()
            .enumerate()
            .map(move |(index, der)| CrlInput { origin, index, der })
    });
    // A CRL may come from a root (of any bundle), or from an intermediate CA
    // that the service's own chain carries (the same PKI signs both sides).
    let crls = Crls::load(&issuers, inputs, &roots_origin, algs, now)?;
    Ok(Trust::new(anchors, domains, crls, scope, roots))
}

/// Checks and converts one bundle of roots, adding their facts to `facts`.
fn parse_roots(
    origin: &Origin,
    roots_der: &[CertificateDer<'static>],
    facts: &mut Vec<CertFacts>,
    now: SystemTime,
) -> Result<Vec<TrustAnchor<'static>>, Error> {
    let mut anchors = Vec::with_capacity(roots_der.len());
    for (index, der) in roots_der.iter().enumerate() {
        let bad = |detail: String| MaterialError::BadTrustRoot {
            origin: origin.clone(),
            index,
            detail,
        };
        let anchor = webpki::anchor_from_trusted_cert(der).map_err(|e| bad(describe_webpki(&e)))?;
        let info = LeafInfo::parse(der).map_err(|e| bad(e.to_string()))?;
        // webpki would take any certificate as an anchor, a leaf included.
        // A self-issued certificate without basicConstraints is an old
        // (X.509 v1) root and stays allowed.
        let why = match info.basic_ca {
            Some(false) => Some("basicConstraints cA=false"),
            None if !info.self_issued => Some("no basicConstraints, and issued by another CA"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(MaterialError::NotACa {
                origin: origin.clone(),
                index,
                subject: info.subject,
                issuer: info.issuer,
                why,
            }
            .into());
        }
        if now > info.not_after {
            tracing::warn!(
                roots = %origin,
                subject = %info.subject,
                "a trust root has expired (webpki does not check a root's own validity, so chains to it are still accepted): replace it"
            );
        }
        facts.push(info.facts());
        anchors.push(anchor.to_owned());
    }
    Ok(anchors)
}
