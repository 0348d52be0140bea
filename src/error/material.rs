//! What is wrong with a piece of material: where it came from, what it was
//! for, and the problem.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{fmt_time, found_note};

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
    /// An X.509 v1 (or v2) certificate: no extensions, which TLS 1.3 peers
    /// refuse (what OpenSSL's `x509 -req` makes without `-extfile`).
    #[error(
        "the certificate in {origin} (subject {subject}) is X.509 v{version}: it carries no extensions (no subjectAltName, no usage), and peers refuse it; reissue it as v3 with its SAN and usage: `openssl x509 -req ... -extfile <(printf \"subjectAltName=DNS:your.name\\nextendedKeyUsage={usage}\")` (or `-addext` with openssl req)"
    )]
    NotVersion3 {
        /// The file.
        origin: Origin,
        /// The certificate's subject.
        subject: String,
        /// The version it has.
        version: u32,
        /// The usage this side needs.
        usage: Usage,
    },
    /// A server certificate with no subjectAltName: every TLS client ignores the CN.
    #[error(
        "the server certificate in {origin} (subject {subject}) has no subjectAltName, and TLS clients match names only against SANs; reissue it with `-addext \"subjectAltName={suggestion}\"` (openssl req, or openssl x509 -new), or when signing a request with `openssl x509 -req`, with `-extfile <(printf \"subjectAltName={suggestion}\")`"
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
        "the certificate in {origin} (subject {subject}) has an extendedKeyUsage without {usage}, so peers will refuse it; reissue it with `-addext \"extendedKeyUsage={usage}\"` (openssl req, or openssl x509 -new), or when signing a request with `openssl x509 -req`, with `-extfile <(printf \"extendedKeyUsage={usage}\")` (or drop the extension)"
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
    /// Two CRLs of one CA with the same CRL number and thisUpdate but
    /// different contents: which is current cannot be told.
    #[error(
        "the CRL #{first_index} in {first} and the CRL #{second_index} in {second} (issuer {issuer}) have the same CRL number and thisUpdate but revoke different certificates, so neither can be taken as the newer (either could hide the other's revocations); publish one CRL per CA, or give the newer a higher CRL number"
    )]
    CrlConflict {
        /// Where the first was read.
        first: Origin,
        /// Its position there, from 0.
        first_index: usize,
        /// Where the second was read.
        second: Origin,
        /// Its position there, from 0.
        second_index: usize,
        /// The CRLs' issuer.
        issuer: String,
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
