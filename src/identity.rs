//! Who a peer is: [`PeerIdentity`], read once from a verified leaf
//! certificate with x509-parser, and the X509-SVID rules a workload leaf
//! must follow.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::{X509Certificate, X509CertificateParser};
use x509_parser::extensions::GeneralName;
use x509_parser::nom::Parser;
use x509_parser::prelude::FromDer;

use crate::error::SpiffeIdError;
use crate::observe::CertFacts;
use crate::spiffe::{SCHEME, SpiffeId, TrustDomain};

/// Why a peer's leaf certificate cannot stand for an identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate is not well-formed X.509.
    #[error("the certificate does not parse as X.509: {detail}")]
    Unparsable {
        /// The parser's message.
        detail: String,
    },
    /// The leaf says it is a CA (`basicConstraints cA=true`).
    #[error(
        "the leaf certificate is a CA (basicConstraints cA=true); a workload certificate must not be"
    )]
    LeafIsCa,
    /// The leaf may sign certificates or CRLs (`keyCertSign` / `cRLSign`).
    #[error(
        "the leaf certificate carries keyUsage keyCertSign or cRLSign; a workload certificate must not"
    )]
    LeafSignsCertificates,
    /// An X509-SVID has exactly one URI SAN.
    #[error(
        "the certificate has {count} URI SANs including a SPIFFE ID; an X509-SVID has exactly one"
    )]
    MultipleUriSans {
        /// How many URI SANs the certificate has.
        count: usize,
    },
    /// A `spiffe://` URI SAN that breaks the SPIFFE ID rules.
    #[error("the URI SAN \"{uri}\" is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The URI as found (escaped, and cut short when long).
        uri: String,
        /// The rule it breaks.
        reason: SpiffeIdError,
    },
    /// A leaf whose SPIFFE ID has no path names a trust domain, not a
    /// workload (X509-SVID section 5.2).
    #[error(
        "the SPIFFE ID {id} has no path: it names a trust domain, and a workload certificate must name a workload (spiffe://TD/PATH)"
    )]
    NoPath {
        /// The SPIFFE ID.
        id: String,
    },
    /// An X509-SVID leaf without a keyUsage extension (X509-SVID section
    /// 4.3: it must be there, with digitalSignature).
    #[error(
        "the X509-SVID has no keyUsage extension; a workload certificate with a SPIFFE ID must carry keyUsage digitalSignature (openssl: -addext keyUsage=critical,digitalSignature)"
    )]
    NoKeyUsage,
    /// An X509-SVID leaf whose keyUsage lacks digitalSignature.
    #[error(
        "the X509-SVID's keyUsage lacks digitalSignature, which a workload certificate with a SPIFFE ID must have (openssl: -addext keyUsage=critical,digitalSignature)"
    )]
    NoDigitalSignature,
    /// A signing (CA) certificate in the chain whose keyUsage lacks
    /// keyCertSign (RFC 5280 6.1.4(n); X509-SVID section 4.3).
    #[error(
        "the signing certificate {subject} has a keyUsage extension without keyCertSign, so it may not sign certificates"
    )]
    SigningWithoutKeyCertSign {
        /// The signing certificate's subject (escaped, cut short).
        subject: String,
    },
    /// A signing certificate whose SPIFFE ID has a path: it names a
    /// workload, which signs nothing (X509-SVID section 5.1).
    #[error(
        "the signing certificate {subject} carries the SPIFFE ID {id}, which has a path: a signing certificate may name its trust domain only"
    )]
    SigningSpiffeIdWithPath {
        /// The signing certificate's subject (escaped, cut short).
        subject: String,
        /// The SPIFFE ID (escaped, cut short).
        id: String,
    },
}

/// Which trust bundle vouched for a verified peer, and so which of its
/// names are believed.
///
/// A chain that ends in a trust domain's bundle
/// ([`client_roots_for`](crate::ServerTlsBuilder::client_roots_for),
/// [`server_roots_for`](crate::ClientTlsBuilder::server_roots_for)) proves
/// that trust domain's SPIFFE ID and nothing else: the peer's DNS names and
/// CN are not believed (a partner's CA could write any name), so they are
/// not reported, match no rule and satisfy no dialled name. DNS and CN
/// identities are believed only from chains that end in the flat roots.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VouchedBy {
    /// The flat roots (`client_roots_file`, `server_roots_file`, ...): every
    /// name in the certificate is believed.
    FlatRoots,
    /// The bundle of this trust domain: only the SPIFFE ID is believed.
    TrustDomain(TrustDomain),
    /// Nobody: read with [`PeerIdentity::from_leaf_der`], which verifies
    /// nothing.
    Unverified,
}

/// What meshtls reads from a leaf certificate, once.
#[derive(Debug)]
pub(crate) struct LeafInfo {
    pub(crate) subject: String,
    /// The X.509 version, as written (1 for v1, 3 for v3).
    pub(crate) version: u32,
    pub(crate) common_name: Option<String>,
    pub(crate) serial: Vec<u8>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) dns_names: Vec<String>,
    pub(crate) uris: Vec<String>,
    pub(crate) has_ip_san: bool,
    /// Any subjectAltName entry at all (email, directory name, ... included).
    pub(crate) any_san: bool,
    /// `basicConstraints` cA, or `None` when the extension is absent.
    pub(crate) basic_ca: Option<bool>,
    pub(crate) is_ca: bool,
    /// The issuer, formatted like `subject` (empty when that is not formatted).
    pub(crate) issuer: String,
    /// Subject and issuer are the same name (a root, or a self-signed leaf).
    pub(crate) self_issued: bool,
    pub(crate) signs_certificates: bool,
    /// `None` when the certificate has no EKU extension (any use).
    pub(crate) eku: Option<Eku>,
    /// `None` when the certificate has no keyUsage extension.
    pub(crate) key_usage: Option<KeyUsageBits>,
}

/// The keyUsage bits meshtls checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyUsageBits {
    pub(crate) digital_signature: bool,
    pub(crate) key_cert_sign: bool,
}

/// The extended key usages meshtls cares about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Eku {
    pub(crate) server_auth: bool,
    pub(crate) client_auth: bool,
}

/// Seconds since 1970 as a `SystemTime`. A certificate may name any year
/// from 0 to 9999, which some platforms cannot represent (Windows starts in
/// 1601): such times are clamped to the Unix epoch, which keeps every
/// "before" a "before" and every "after" in the past an "after" in the past.
pub(crate) fn unix_to_system(secs: i64) -> SystemTime {
    let span = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    };
    t.unwrap_or(UNIX_EPOCH)
}

impl LeafInfo {
    pub(crate) fn parse(der: &[u8]) -> Result<Self, IdentityError> {
        Self::parse_with(der, true)
    }

    /// `with_subject: false` leaves `subject` empty: formatting it is a good
    /// part of the parse, and a peer's subject is rarely looked at.
    fn parse_with(der: &[u8], with_subject: bool) -> Result<Self, IdentityError> {
        use x509_parser::extensions::{
            BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
        };
        use x509_parser::oid_registry::{
            OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE,
            OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
        };
        let unparsable = |detail: String| IdentityError::Unparsable { detail };
        // Only the four extensions meshtls reads are decoded (below); the
        // others are left as bytes, which is most of the parse's cost.
        let (_, cert) = X509CertificateParser::new()
            .with_deep_parse_extensions(false)
            .parse(der)
            .map_err(|e| unparsable(e.to_string()))?;
        let mut info = Self {
            subject: if with_subject {
                cert.subject().to_string()
            } else {
                String::new()
            },
            issuer: if with_subject {
                cert.issuer().to_string()
            } else {
                String::new()
            },
            version: cert.version().0 + 1,
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            serial: cert.raw_serial().to_vec(),
            not_before: unix_to_system(cert.validity().not_before.timestamp()),
            not_after: unix_to_system(cert.validity().not_after.timestamp()),
            dns_names: Vec::new(),
            uris: Vec::new(),
            has_ip_san: false,
            any_san: false,
            basic_ca: None,
            is_ca: false,
            signs_certificates: false,
            eku: None,
            key_usage: None,
        };
        let bad = |what: &str, e: String| unparsable(format!("bad {what} extension: {e}"));
        let mut seen = [false; 4];
        for ext in cert.extensions() {
            let slot = match &ext.oid {
                oid if *oid == OID_X509_EXT_BASIC_CONSTRAINTS => 0,
                oid if *oid == OID_X509_EXT_KEY_USAGE => 1,
                oid if *oid == OID_X509_EXT_EXTENDED_KEY_USAGE => 2,
                oid if *oid == OID_X509_EXT_SUBJECT_ALT_NAME => 3,
                _ => continue,
            };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(unparsable("an extension appears twice".into()));
            }
            match slot {
                0 => {
                    let (_, bc) = BasicConstraints::from_der(ext.value)
                        .map_err(|e| bad("basicConstraints", e.to_string()))?;
                    info.is_ca = bc.ca;
                    info.basic_ca = Some(bc.ca);
                }
                1 => {
                    let (_, ku) = KeyUsage::from_der(ext.value)
                        .map_err(|e| bad("keyUsage", e.to_string()))?;
                    info.signs_certificates = ku.key_cert_sign() || ku.crl_sign();
                    info.key_usage = Some(KeyUsageBits {
                        digital_signature: ku.digital_signature(),
                        key_cert_sign: ku.key_cert_sign(),
                    });
                }
                2 => {
                    let (_, eku) = ExtendedKeyUsage::from_der(ext.value)
                        .map_err(|e| bad("extendedKeyUsage", e.to_string()))?;
                    info.eku = Some(Eku {
                        server_auth: eku.server_auth || eku.any,
                        client_auth: eku.client_auth || eku.any,
                    });
                }
                _ => {
                    let (_, san) = SubjectAlternativeName::from_der(ext.value)
                        .map_err(|e| bad("subjectAltName", e.to_string()))?;
                    info.any_san = !san.general_names.is_empty();
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(n) => info.dns_names.push((*n).to_owned()),
                            GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                            GeneralName::IPAddress(_) => info.has_ip_san = true,
                            _ => {}
                        }
                    }
                }
            }
        }
        // Messages name a certificate by its subject: with none, by its SANs.
        if with_subject && info.subject.is_empty() {
            let names: Vec<String> = (info.uris.iter().cloned())
                .chain(info.dns_names.iter().map(|n| format!("DNS:{n}")))
                .take(4)
                .collect();
            info.subject = if names.is_empty() {
                "(empty, and no SAN)".to_owned()
            } else {
                format!("(empty; SANs {})", names.join(", "))
            };
        }
        Ok(info)
    }

    pub(crate) fn serial_hex(&self) -> String {
        hex_colon(&self.serial)
    }

    /// What reloads and expiry events report about this certificate.
    pub(crate) fn facts(&self) -> CertFacts {
        CertFacts {
            subject: self.subject.clone(),
            serial: self.serial_hex(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }

    pub(crate) fn has_san(&self) -> bool {
        !self.dns_names.is_empty() || !self.uris.is_empty() || self.has_ip_san
    }

    /// The first URI SAN with the `spiffe` scheme, as written.
    pub(crate) fn spiffe_uri(&self) -> Option<&str> {
        self.uris
            .iter()
            .find(|u| {
                u.get(..SCHEME.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
            })
            .map(String::as_str)
    }

    /// The SPIFFE ID a `spiffe` URI SAN names, if it has one; an error when
    /// it has one that breaks the SPIFFE ID rules.
    pub(crate) fn claimed_spiffe_id(&self) -> Result<Option<SpiffeId>, IdentityError> {
        let Some(uri) = self.spiffe_uri() else {
            return Ok(None);
        };
        uri.parse()
            .map(Some)
            .map_err(|reason| IdentityError::InvalidSpiffeId {
                uri: crate::error::untrusted(uri),
                reason,
            })
    }
}

pub(crate) fn hex_colon(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// The identity of a verified peer: what an application authorizes on.
///
/// Built from the peer's leaf certificate after its chain has been
/// verified; cheap to clone. A leaf that is a CA, that may sign
/// certificates, or that carries a SPIFFE ID next to other URI SANs does not
/// yield a `PeerIdentity` (see [`IdentityError`]).
///
/// ```
/// # fn show(peer: &meshtls::PeerIdentity) {
/// if let Some(id) = peer.spiffe_id() {
///     println!("caller {id} (serial {})", peer.serial());
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct PeerIdentity(Arc<PeerInner>);

struct PeerInner {
    spiffe_id: Option<SpiffeId>,
    vouched_by: VouchedBy,
    /// Any subjectAltName entry: a CN rule then never applies.
    any_san: bool,
    dns_names: Vec<String>,
    common_name: Option<String>,
    /// Formatted on first use.
    subject: std::sync::OnceLock<String>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
    der: Vec<u8>,
}

impl PeerIdentity {
    /// The leaf parsed without its subject (formatted only when asked for).
    pub(crate) fn parse_leaf(der: &[u8]) -> Result<LeafInfo, IdentityError> {
        LeafInfo::parse_with(der, false)
    }

    /// The identity of a leaf whose chain `vouched_by` verified, with the
    /// SPIFFE ID the X509-SVID rules admitted (`judge/svid.rs`, the only
    /// caller), keeping only the names that bundle vouches for.
    pub(crate) fn assemble(
        info: LeafInfo,
        der: &[u8],
        vouched_by: VouchedBy,
        spiffe_id: Option<SpiffeId>,
    ) -> Self {
        let serial = info.serial_hex();
        let believe_names = !matches!(vouched_by, VouchedBy::TrustDomain(_));
        let (dns_names, common_name) = if believe_names {
            (info.dns_names, info.common_name)
        } else {
            (Vec::new(), None)
        };
        Self(Arc::new(PeerInner {
            spiffe_id,
            vouched_by,
            any_san: info.any_san,
            dns_names,
            common_name,
            subject: std::sync::OnceLock::new(),
            serial,
            not_before: info.not_before,
            not_after: info.not_after,
            der: der.to_vec(),
        }))
    }

    /// Which trust bundle vouched for this peer, and so which of its names
    /// are believed (see [`VouchedBy`]).
    #[must_use]
    pub fn vouched_by(&self) -> &VouchedBy {
        &self.0.vouched_by
    }

    /// The peer's SPIFFE ID, if its certificate is an X509-SVID.
    #[must_use]
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.0.spiffe_id.as_ref()
    }

    /// The DNS names in the certificate's subjectAltName, as written; none
    /// when a trust domain's bundle vouched for the peer (see
    /// [`vouched_by`](Self::vouched_by)).
    pub fn dns_names(&self) -> &[String] {
        &self.0.dns_names
    }

    /// The subject's first common name (CN), if any (and none when a trust
    /// domain's bundle vouched for the peer). Legacy: prefer SANs.
    #[must_use]
    pub fn common_name(&self) -> Option<&str> {
        self.0.common_name.as_deref()
    }

    /// The whole subject, e.g. `CN=billing, O=Example`; empty when a trust
    /// domain's bundle vouched for the peer (it vouches for the SPIFFE ID
    /// only, and a subject is whatever its CA wrote).
    pub fn subject(&self) -> &str {
        self.0.subject.get_or_init(|| {
            if matches!(self.0.vouched_by, VouchedBy::TrustDomain(_)) {
                return String::new();
            }
            X509Certificate::from_der(&self.0.der)
                .map(|(_, cert)| cert.subject().to_string())
                .unwrap_or_default()
        })
    }

    /// The serial number as colon-separated lowercase hex (`01:a2:...`).
    #[must_use]
    pub fn serial(&self) -> &str {
        &self.0.serial
    }

    /// The start of the certificate's validity.
    pub fn not_before(&self) -> SystemTime {
        self.0.not_before
    }

    /// The end of the certificate's validity.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.0.not_after
    }

    /// The end of validity as RFC 3339 UTC (`2026-11-24T08:06:44Z`), for
    /// logs and JSON.
    #[must_use]
    pub fn not_after_rfc3339(&self) -> String {
        crate::error::fmt_time(self.0.not_after)
    }

    /// The leaf certificate, DER-encoded.
    pub fn leaf_der(&self) -> &[u8] {
        &self.0.der
    }

    /// A short name for logs: the SPIFFE ID, else the first DNS name, else
    /// the CN, else the subject.
    #[must_use]
    pub fn display_name(&self) -> &str {
        if let Some(id) = &self.0.spiffe_id {
            return id.as_str();
        }
        if let Some(dns) = self.0.dns_names.first() {
            return dns;
        }
        match self.0.common_name.as_deref() {
            Some(cn) => cn,
            None => self.subject(),
        }
    }

    /// Whether the certificate has any subjectAltName entry. A `cn:` rule
    /// applies only to certificates with none (RFC 6125 practice).
    pub(crate) fn has_sans(&self) -> bool {
        self.0.any_san
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity")
            .field(
                "spiffe_id",
                &self.0.spiffe_id.as_ref().map(SpiffeId::as_str),
            )
            .field("dns_names", &self.0.dns_names)
            .field("common_name", &self.0.common_name)
            .field("serial", &self.0.serial)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "dev")]
    #[test]
    fn duplicate_extensions_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        // A second subjectAltName, naming someone else.
        let other_san = [
            0x30, 0x0b, 0x82, 0x09, b'b', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e',
        ];
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                other_san.to_vec(),
            ));
        let cert = params.self_signed(&key).unwrap();
        let err = PeerIdentity::from_leaf_der(cert.der()).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn times_far_outside_the_platform_range_do_not_panic() {
        // x509-parser accepts year 0 (and GeneralizedTime up to 9999); the
        // platform's SystemTime may not reach that far.
        for secs in [i64::MIN, -62_167_219_200, 0, 253_402_300_799, i64::MAX] {
            let _ = unix_to_system(secs);
        }
    }

    #[test]
    fn hex_serial() {
        assert_eq!(hex_colon(&[0x01, 0xab, 0x00]), "01:ab:00");
        assert_eq!(hex_colon(&[]), "");
    }
}
