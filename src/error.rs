//! Errors. Each names the file, the certificate and the rule involved, and
//! says how to fix it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a piece of TLS material came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// A file on disk.
    File(PathBuf),
    /// Bytes handed over in memory, with the label the caller gave them.
    Memory(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Memory(label) => write!(f, "in-memory {label}"),
        }
    }
}

/// What a piece of material is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MaterialKind {
    /// The service's own certificate chain (leaf first).
    CertificateChain,
    /// The service's own private key.
    PrivateKey,
    /// CA certificates that peers' chains must lead to.
    TrustRoots,
    /// A certificate revocation list.
    Crl,
}

impl fmt::Display for MaterialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CertificateChain => "certificate chain",
            Self::PrivateKey => "private key",
            Self::TrustRoots => "trust roots (CA certificates)",
            Self::Crl => "CRL",
        })
    }
}

impl MaterialKind {
    pub(crate) fn pem_label(self) -> &'static str {
        match self {
            Self::CertificateChain | Self::TrustRoots => "-----BEGIN CERTIFICATE-----",
            Self::PrivateKey => "-----BEGIN PRIVATE KEY----- (or RSA / EC PRIVATE KEY)",
            Self::Crl => "-----BEGIN X509 CRL-----",
        }
    }

    pub(crate) fn der_to_pem_command(self) -> &'static str {
        match self {
            Self::CertificateChain | Self::TrustRoots => {
                "openssl x509 -inform DER -in FILE -out FILE.pem"
            }
            Self::PrivateKey => "openssl pkey -inform DER -in FILE -out FILE.pem",
            Self::Crl => "openssl crl -inform DER -in FILE -out FILE.pem",
        }
    }
}

/// Which extended key usage a certificate lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Usage {
    /// `serverAuth` (1.3.6.1.5.5.7.3.1): needed to serve TLS.
    ServerAuth,
    /// `clientAuth` (1.3.6.1.5.5.7.3.2): needed to present a client certificate.
    ClientAuth,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ServerAuth => "serverAuth",
            Self::ClientAuth => "clientAuth",
        })
    }
}

/// Everything that can go wrong building or reloading a meshtls config.
///
/// The reason is nested, as rustls nests its errors: match on the outer
/// variant for the class, on the inner enum for the specifics. Every message
/// names the file and says how to fix it. `Clone`, so one error can go to the
/// caller and to the events alike.
///
/// ```
/// # fn check(e: &meshtls::Error) {
/// use meshtls::{Error, MaterialError};
/// match e {
///     Error::Material(MaterialError::Expired { origin, .. }) => eprintln!("renew {origin}"),
///     Error::Config(c) => eprintln!("fix the code: {c}"),
///     other => eprintln!("{other}"),
/// }
/// # }
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or in-memory source holds something meshtls cannot serve.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// A PKCS#12 keystore or truststore that cannot be used.
    #[cfg(feature = "pkcs12")]
    #[error(transparent)]
    Pkcs12(#[from] Pkcs12Error),
    /// A configuration the builder refuses (the code, not the files).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// rustls refused the configuration (should not happen; please report).
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[source] rustls::Error),
    /// The file watcher could not start.
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        /// The directory (or `.` for the watcher thread).
        path: PathBuf,
        /// What failed (shared, so the error can be cloned).
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Material did not become valid in time (see `wait_for_files`).
    #[error("the TLS files were not ready after {waited:?}; last problem: {last}")]
    NotReady {
        /// How long meshtls waited.
        waited: Duration,
        /// The last error seen.
        last: Box<Self>,
    },
}

impl From<RuleError> for Error {
    fn from(e: RuleError) -> Self {
        Self::Config(ConfigError::Rule(e))
    }
}

/// What is wrong with a piece of TLS material: the file, the certificate,
/// and the fix.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaterialError {
    /// A file could not be read.
    #[error("cannot read {origin} ({kind}): {source}")]
    Read {
        /// The file.
        origin: Origin,
        /// What it should hold.
        kind: MaterialKind,
        /// The I/O error (shared, so the error can be cloned).
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A file larger than any TLS material should be; refused before parsing.
    #[error(
        "{origin} ({kind}) is {size} bytes, over the {limit}-byte limit for TLS material; is it the right file?"
    )]
    TooLarge {
        /// The file.
        origin: Origin,
        /// What it should hold.
        kind: MaterialKind,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is empty.
    #[error("{origin} is empty; expected a PEM {kind} ({})", kind.pem_label())]
    Empty {
        /// The file.
        origin: Origin,
        /// What it should hold.
        kind: MaterialKind,
    },
    /// Binary DER where PEM was expected.
    #[error(
        "{origin} holds binary DER, but meshtls reads PEM; convert it with `{}`",
        kind.der_to_pem_command()
    )]
    DerNotPem {
        /// The file.
        origin: Origin,
        /// What it should hold.
        kind: MaterialKind,
    },
    /// No PEM block of the expected kind.
    #[error("{origin} holds no {kind}: expected a PEM block starting {}{}", kind.pem_label(), found_note(found))]
    NotFound {
        /// The file.
        origin: Origin,
        /// What it should hold.
        kind: MaterialKind,
        /// The PEM blocks that were there instead, if any.
        found: Vec<String>,
    },
    /// A PEM block that does not decode (bad base64, missing END line, ...).
    #[error("{origin} has a malformed PEM {kind}: {detail} (truncated or hand-edited?)")]
    MalformedPem {
        /// The file.
        origin: Origin,
        /// What it should hold.
        kind: MaterialKind,
        /// The decoder's message.
        detail: String,
    },
    /// An encrypted private key; meshtls needs it decrypted.
    #[error(
        "the private key in {origin} is encrypted; meshtls reads unencrypted keys only (decrypt with `openssl pkey -in FILE -out FILE.key` and protect the file with permissions)"
    )]
    EncryptedKey {
        /// The file.
        origin: Origin,
    },
    /// A private key that the crypto provider cannot load.
    #[error("the private key in {origin} cannot be used: {source}")]
    UnusableKey {
        /// The file.
        origin: Origin,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The key does not belong to the certificate.
    #[error(
        "the private key in {key} does not match the certificate in {cert} (subject {subject}); if they were just rotated, one of the two is stale"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: Origin,
        /// The key file.
        key: Origin,
        /// The certificate's subject.
        subject: String,
    },
    /// A certificate that does not parse.
    #[error("certificate #{index} in {origin} does not parse: {detail}")]
    BadCertificate {
        /// The file.
        origin: Origin,
        /// Position in the file, from 0.
        index: usize,
        /// The parser's message.
        detail: String,
    },
    /// The leaf certificate has expired.
    #[error(
        "the certificate in {origin} (subject {subject}, serial {serial}) expired at {}; renew it",
        fmt_time(*not_after)
    )]
    Expired {
        /// The file.
        origin: Origin,
        /// The certificate's subject.
        subject: String,
        /// Its serial (hex).
        serial: String,
        /// When it expired.
        not_after: SystemTime,
    },
    /// The leaf certificate is not valid yet.
    #[error(
        "the certificate in {origin} (subject {subject}, serial {serial}) is not valid before {}; check the clock of the machine that issued it",
        fmt_time(*not_before)
    )]
    NotYetValid {
        /// The file.
        origin: Origin,
        /// The certificate's subject.
        subject: String,
        /// Its serial (hex).
        serial: String,
        /// When it becomes valid.
        not_before: SystemTime,
    },
    /// The service's own leaf certificate is a CA or may sign certificates.
    #[error(
        "the certificate in {origin} (subject {subject}) is a CA certificate (cA=true or keyCertSign/cRLSign); use a leaf certificate issued by the CA instead"
    )]
    LeafIsCa {
        /// The file.
        origin: Origin,
        /// The certificate's subject.
        subject: String,
    },
    /// A server certificate with no subjectAltName: every TLS client ignores the CN.
    #[error(
        "the server certificate in {origin} (subject {subject}) has no subjectAltName, and TLS clients match names only against SANs; reissue it with `-addext \"subjectAltName={suggestion}\"` (openssl req/x509)"
    )]
    NoSubjectAltName {
        /// The file.
        origin: Origin,
        /// The certificate's subject.
        subject: String,
        /// A SAN built from the CN, e.g. `DNS:billing.internal`.
        suggestion: String,
    },
    /// The certificate's extendedKeyUsage excludes the use meshtls needs.
    #[error(
        "the certificate in {origin} (subject {subject}) has an extendedKeyUsage without {usage}, so peers will refuse it; reissue it with `-addext \"extendedKeyUsage={usage}\"` (or drop the extension)"
    )]
    WrongUsage {
        /// The file.
        origin: Origin,
        /// The certificate's subject.
        subject: String,
        /// The usage that is missing.
        usage: Usage,
    },
    /// The service's own chain does not verify against the configured roots.
    #[error(
        "the certificate chain in {origin} (subject {subject}) does not verify against the trust roots in {roots}: {detail}"
    )]
    ChainInvalid {
        /// The chain file.
        origin: Origin,
        /// The leaf's subject.
        subject: String,
        /// The roots file.
        roots: Origin,
        /// webpki's verdict.
        detail: String,
    },
    /// A CA certificate that cannot serve as a trust anchor.
    #[error("certificate #{index} in {origin} cannot be a trust root: {detail}")]
    BadTrustRoot {
        /// The file.
        origin: Origin,
        /// Position in the file, from 0.
        index: usize,
        /// Why.
        detail: String,
    },
    /// A certificate in a trust bundle that is not a CA certificate: most
    /// often a service's own certificate given where its CA was meant.
    #[error(
        "certificate #{index} in {origin} (subject {subject}) is not a CA certificate ({why}), so it cannot be a trust root; a trust bundle holds the CA certificates that sign your peers: did you mean the certificate of its issuer, {issuer}?"
    )]
    NotACa {
        /// The file.
        origin: Origin,
        /// Position in the file, from 0.
        index: usize,
        /// The certificate's subject.
        subject: String,
        /// The certificate's issuer: probably the CA that was meant.
        issuer: String,
        /// What marks it as a leaf.
        why: &'static str,
    },
    /// A CRL that none of the trusted CAs signed.
    #[error(
        "the CRL #{index} in {origin} (issuer {issuer}) is not signed by any CA in {roots}{}; its revocations could never apply. Use the CRL of the CA that signs your peers, or add that CA to the trust roots",
        if *same_name { " (a CA of that name is there, but with another key: is the CRL from before a CA key rotation?)" } else { "" }
    )]
    CrlIssuerUnknown {
        /// The CRL file.
        origin: Origin,
        /// Position in the file, from 0.
        index: usize,
        /// The CRL's issuer.
        issuer: String,
        /// The trust roots file.
        roots: Origin,
        /// A trusted CA has the issuer's name, but another key.
        same_name: bool,
    },
    /// A CRL that does not parse or that webpki does not support.
    #[error("the CRL #{index} in {origin} cannot be used: {detail}")]
    BadCrl {
        /// The file.
        origin: Origin,
        /// Position in the file, from 0.
        index: usize,
        /// Why.
        detail: String,
    },
    /// A CRL past its nextUpdate: with it, every handshake would fail.
    #[error(
        "the CRL in {origin} (issuer {issuer}) is past its nextUpdate ({}); publish a fresh CRL (`openssl ca -gencrl`)",
        fmt_time(*next_update)
    )]
    CrlExpired {
        /// The file.
        origin: Origin,
        /// The CRL's issuer.
        issuer: String,
        /// When it went stale.
        next_update: SystemTime,
    },
}

/// What is wrong with a PKCS#12 keystore or truststore.
#[cfg(feature = "pkcs12")]
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs12Error {
    /// The PKCS#12 password is wrong (or the file is corrupt).
    #[error("cannot open the PKCS#12 file {origin}: wrong password (or a corrupt file)")]
    WrongPassword {
        /// The file.
        origin: Origin,
    },
    /// A PKCS#12 file that cannot be decoded.
    #[error("cannot read the PKCS#12 file {origin}: {detail}")]
    Malformed {
        /// The file.
        origin: Origin,
        /// What went wrong.
        detail: String,
    },
    /// A keystore with no private key entry.
    #[error(
        "the PKCS#12 file {origin} holds no private key entry; is it a truststore? (a keystore is made with `openssl pkcs12 -export -in tls.crt -inkey tls.key`)"
    )]
    NoKey {
        /// The file.
        origin: Origin,
    },
    /// A keystore with several key entries and no alias chosen.
    #[error(
        "the PKCS#12 file {origin} holds several key entries ({}); pick one with `Source::pkcs12_file(..).alias(\"NAME\")`",
        aliases.join(", ")
    )]
    SeveralKeys {
        /// The file.
        origin: Origin,
        /// The entries' aliases (friendly names).
        aliases: Vec<String>,
    },
    /// The chosen alias is not in the keystore.
    #[error("the PKCS#12 file {origin} has no key entry {alias:?}; it has: {}", aliases.join(", "))]
    NoSuchAlias {
        /// The file.
        origin: Origin,
        /// The alias asked for.
        alias: String,
        /// The aliases there are.
        aliases: Vec<String>,
    },
    /// A key entry without its certificate, or a truststore without certificates.
    #[error("the PKCS#12 file {origin} holds no {kind}")]
    NoCertificate {
        /// The file.
        origin: Origin,
        /// What was looked for.
        kind: MaterialKind,
    },
}

/// A configuration the builder refuses: something to change in the code
/// that builds meshtls, not in the files.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No allow-list and no explicit opt-out.
    #[error(
        "no allow-list: call `.allow(Allow::...)` with the peer identities that may connect, or `.dangerous().allow_any_authenticated()` to admit any peer your CA signed"
    )]
    NoAllowList,
    /// A malformed or refused allow rule.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Expected servers set on a client built to check the dialled name.
    #[error(
        "this client verifies the dialled name; build it with `expect_server()` to use identity rules"
    )]
    NotBuiltWithRules,
}

/// A refused or failed handshake, from the acceptor or the connector.
///
/// [`reason`](Self::reason) is the class to match on; the message adds the
/// specifics known on this side. The peer that did the refusing sees only the
/// TLS alert; the full story (certificate, rule) is in that side's events.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake refused ({reason}): {detail}")]
pub struct HandshakeError {
    reason: RejectReason,
    detail: String,
    #[source]
    source: Option<std::io::Error>,
}

impl HandshakeError {
    pub(crate) fn new(
        reason: RejectReason,
        detail: impl Into<String>,
        source: Option<std::io::Error>,
    ) -> Self {
        Self {
            reason,
            detail: detail.into(),
            source,
        }
    }

    /// Why, as a class.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// The specifics.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Why a string is not a SPIFFE ID (or trust domain).
///
/// Each variant is one rule of the [SPIFFE ID specification][spec].
///
/// [spec]: https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("a SPIFFE ID cannot be empty")]
    Empty,
    /// Longer than the 2048 bytes the specification allows.
    #[error("a SPIFFE ID is at most 2048 bytes, this one is {len}")]
    TooLong {
        /// The length seen, in bytes.
        len: usize,
    },
    /// The scheme is not `spiffe://` (lowercase).
    #[error("a SPIFFE ID starts with `spiffe://`")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// Longer than the 255 bytes the specification allows.
    #[error("a trust domain is at most 255 bytes, this one is {len}")]
    TrustDomainTooLong {
        /// The length seen, in bytes.
        len: usize,
    },
    /// A trust domain holds only lowercase letters, digits, `.`, `-` and `_`.
    #[error(
        "the trust domain has {ch:?}; it may hold only lowercase letters, digits, `.`, `-` and `_`"
    )]
    BadTrustDomainChar {
        /// The offending character.
        ch: char,
    },
    /// A port (`:8443`) in the trust domain.
    #[error("a SPIFFE ID has no port")]
    Port,
    /// User info (`user@`) in the trust domain.
    #[error("a SPIFFE ID has no user info (`user@`)")]
    UserInfo,
    /// An empty path segment (`//`) or a trailing `/`.
    #[error("the path has an empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    /// A `.` or `..` path segment.
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    /// A path holds only letters, digits, `.`, `-` and `_` between slashes.
    #[error(
        "the path has {ch:?}; a segment may hold only letters, digits, `.`, `-` and `_` (no percent-encoding)"
    )]
    BadPathChar {
        /// The offending character.
        ch: char,
    },
    /// A `?query`.
    #[error("a SPIFFE ID has no query (`?`)")]
    Query,
    /// A `#fragment`.
    #[error("a SPIFFE ID has no fragment (`#`)")]
    Fragment,
}

/// Why a rule could not be read or used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The rule text is empty.
    #[error("an allow rule cannot be empty")]
    Empty,
    /// Not one of the rule forms.
    #[error(
        "{rule:?} is not an allow rule; write `spiffe://TD/PATH`, `spiffe://TD/**`, `dns:NAME`, `dns:*.SUFFIX` or `cn:NAME`"
    )]
    UnknownForm {
        /// The rule as written.
        rule: String,
    },
    /// A SPIFFE rule whose ID or trust domain breaks the SPIFFE rules.
    #[error("{rule:?} is not a valid SPIFFE rule: {reason}")]
    Spiffe {
        /// The rule as written.
        rule: String,
        /// What is wrong with the ID.
        reason: SpiffeIdError,
    },
    /// A misplaced `*` or `**` in a SPIFFE path pattern.
    #[error(
        "{rule:?} is not a valid SPIFFE pattern: `*` must be a whole segment and `**` may only be the last one"
    )]
    Pattern {
        /// The rule as written.
        rule: String,
    },
    /// A DNS rule that is not a valid name or single-label wildcard.
    #[error(
        "{rule:?} is not a valid DNS rule: {reason} (write `dns:api.example.com` or `dns:*.svc.cluster.local`)"
    )]
    Dns {
        /// The rule as written.
        rule: String,
        /// What is wrong with the name.
        reason: &'static str,
    },
    /// A CN rule on a policy that did not opt in to legacy CN matching.
    #[error(
        "{rule:?} matches the subject CN, which any CA may put in any certificate; CN rules are off unless you call `.dangerous().allow_legacy_cn()` on the builder (better: give the certificate a SAN)"
    )]
    CnNotEnabled {
        /// The rule as written.
        rule: String,
    },
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The client presented no certificate.
    NoClientCertificate,
    /// The peer's chain does not lead to a trusted root.
    UnknownIssuer,
    /// The peer's certificate (or one in its chain) has expired.
    Expired,
    /// The peer's certificate is not valid yet.
    NotYetValid,
    /// The peer's certificate is revoked by a configured CRL.
    Revoked,
    /// A CRL is configured but none covers the certificate (or it is stale).
    RevocationUnknown,
    /// The certificate's extendedKeyUsage does not allow this use.
    WrongUsage,
    /// The certificate is malformed or its signature does not verify.
    BadCertificate,
    /// The certificate is a CA, may sign certificates, or is a malformed SVID.
    NotAWorkloadCertificate,
    /// The peer's identity is not on the allow-list (or not the expected server).
    NotAllowed,
    /// The peer does not speak TLS 1.3.
    ProtocolVersion,
    /// No cipher suite, key-exchange group or signature scheme in common.
    NoCommonParameters,
    /// The peer refused our certificate (it sent a fatal alert).
    RefusedByPeer,
    /// The handshake did not finish in time.
    Timeout,
    /// The connection failed (reset, closed early, not TLS).
    Io,
    /// Anything else.
    Other,
}

impl RejectReason {
    pub(crate) const ALL: [Self; 16] = [
        Self::NoClientCertificate,
        Self::UnknownIssuer,
        Self::Expired,
        Self::NotYetValid,
        Self::Revoked,
        Self::RevocationUnknown,
        Self::WrongUsage,
        Self::BadCertificate,
        Self::NotAWorkloadCertificate,
        Self::NotAllowed,
        Self::ProtocolVersion,
        Self::NoCommonParameters,
        Self::RefusedByPeer,
        Self::Timeout,
        Self::Io,
        Self::Other,
    ];

    pub(crate) fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// A short stable name, for metrics labels (`no_client_certificate`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no_client_certificate",
            Self::UnknownIssuer => "unknown_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Revoked => "revoked",
            Self::RevocationUnknown => "revocation_unknown",
            Self::WrongUsage => "wrong_usage",
            Self::BadCertificate => "bad_certificate",
            Self::NotAWorkloadCertificate => "not_a_workload_certificate",
            Self::NotAllowed => "not_allowed",
            Self::ProtocolVersion => "protocol_version",
            Self::NoCommonParameters => "no_common_parameters",
            Self::RefusedByPeer => "refused_by_peer",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoClientCertificate => "no client certificate",
            Self::UnknownIssuer => "certificate not signed by a trusted CA",
            Self::Expired => "certificate expired",
            Self::NotYetValid => "certificate not yet valid",
            Self::Revoked => "certificate revoked",
            Self::RevocationUnknown => "revocation status unknown",
            Self::WrongUsage => "certificate not valid for this use (extendedKeyUsage)",
            Self::BadCertificate => "bad certificate",
            Self::NotAWorkloadCertificate => "not a workload certificate",
            Self::NotAllowed => "identity not allowed",
            Self::ProtocolVersion => "protocol version not supported (TLS 1.3 only)",
            Self::NoCommonParameters => "no common cipher suite, group or signature scheme",
            Self::RefusedByPeer => "refused by the peer",
            Self::Timeout => "handshake timed out",
            Self::Io => "connection failed",
            Self::Other => "handshake failed",
        })
    }
}

/// webpki's verdict in words.
pub(crate) fn describe_webpki(e: &webpki::Error) -> String {
    use webpki::Error as W;
    match e {
        W::UnknownIssuer => "no chain to a trusted root (unknown CA, or a missing intermediate)".into(),
        W::CertExpired { not_after, .. } => format!(
            "a certificate in the chain expired at {}",
            fmt_time(SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.as_secs()))
        ),
        W::CertNotValidYet { not_before, .. } => format!(
            "a certificate in the chain is not valid before {}",
            fmt_time(SystemTime::UNIX_EPOCH + Duration::from_secs(not_before.as_secs()))
        ),
        W::CertRevoked => "the certificate is revoked by a configured CRL".into(),
        W::UnknownRevocationStatus => "no configured CRL covers a certificate in the chain (each certificate needs a CRL from its issuer; see RevocationScope)".into(),
        W::CrlExpired { .. } => "a configured CRL is past its nextUpdate".into(),
        W::RequiredEkuNotFoundContext(_) => "the certificate's extendedKeyUsage does not allow this use".into(),
        W::CaUsedAsEndEntity => "a CA certificate was presented as the leaf".into(),
        W::InvalidSignatureForPublicKey => "a signature in the chain does not verify (a CA with the same name but another key?)".into(),
        other => format!("{other:?}"),
    }
}

/// Text taken from a certificate that may not have been verified, made safe
/// for a log line: control characters escaped, and cut after 128 characters.
pub(crate) fn untrusted(text: &str) -> String {
    const MAX_CHARS: usize = 128;
    let mut out = String::with_capacity(text.len().min(MAX_CHARS + 16));
    for (i, ch) in text.chars().enumerate() {
        if i == MAX_CHARS {
            out.push_str(&format!("...({} bytes)", text.len()));
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

fn found_note(found: &[String]) -> String {
    if found.is_empty() {
        String::new()
    } else {
        format!(" (found: {})", found.join(", "))
    }
}

/// Formats a time as RFC 3339 UTC (`2026-11-24T08:06:44Z`).
pub(crate) fn fmt_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn untrusted_text_is_escaped_and_bounded() {
        assert_eq!(untrusted("api.example"), "api.example");
        assert_eq!(untrusted("a\nb\u{1b}[0m"), "a\\nb\\u{1b}[0m");
        let long = "x".repeat(10_000);
        let shown = untrusted(&long);
        assert!(shown.len() < 160, "{shown}");
        assert!(shown.ends_with("...(10000 bytes)"), "{shown}");
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(fmt_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_507_604);
        assert_eq!(fmt_time(t), "2026-11-24T08:06:44Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(fmt_time(leap), "2000-02-29T00:00:00Z");
    }
}
