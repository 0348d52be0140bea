//! CRLs matched to the CA key that signed them.
//!
//! rustls-webpki checks a certificate against the *first* CRL whose issuer
//! name matches the certificate's issuer: it neither prefers the newest CRL
//! nor checks that the CRL's key is the one that signed the certificate. Left
//! to that, an older CRL listed before a newer one hides the newer
//! revocations (failing open), and two CAs that share a name (a CA key
//! rotation with overlap) are each judged by the other's CRL. So here:
//!
//! - each CRL is matched, at load, to the trusted CA whose key signed it; a
//!   CRL that no trusted CA signed is refused, naming the file;
//! - only the newest CRL per CA key is kept (CRL number, then thisUpdate);
//! - each chain is verified with at most one CRL per issuer name in front:
//!   the one from the key that signed the certificate being checked. Only
//!   when two kept CRLs share an issuer name does this cost anything (one
//!   signature check per certificate of the chain under that name).

use std::cmp::Ordering;
use std::time::SystemTime;

use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, SignatureVerificationAlgorithm, UnixTime,
};
use webpki::{CertRevocationList, OwnedCertRevocationList};
use x509_parser::certificate::X509CertificateParser;
use x509_parser::nom::Parser;
use x509_parser::num_bigint::BigUint;

use crate::error::{Error, MaterialError, Origin, describe_webpki};
use crate::identity::unix_to_system;

/// The signature algorithms a CRL or certificate signature is checked with.
pub(crate) type Algorithms = &'static [&'static dyn SignatureVerificationAlgorithm];

/// A CA that may have signed a CRL: its name and key, as DER.
struct Issuer {
    name: Vec<u8>,
    spki: Vec<u8>,
}

/// One kept CRL.
struct Kept {
    crl: CertRevocationList<'static>,
    /// Where it was read, and what it revokes (to tell a copy, or a
    /// re-signed copy, from a conflict).
    origin: Origin,
    index: usize,
    revoked: Vec<Vec<u8>>,
    issuer_name: Vec<u8>,
    /// The SPKI of the CA whose key signed it.
    key: Vec<u8>,
    number: Option<BigUint>,
    this_update: i64,
    next_update: Option<SystemTime>,
}

impl Kept {
    /// Newer by CRL number when both have one, then by thisUpdate.
    fn order(&self, other: &Self) -> Ordering {
        let by_number = match (&self.number, &other.number) {
            (Some(a), Some(b)) => a.cmp(b),
            _ => Ordering::Equal,
        };
        by_number.then(self.this_update.cmp(&other.this_update))
    }
}

/// The CRLs of one generation, newest per signing key.
#[derive(Default)]
pub(crate) struct Crls {
    kept: Vec<Kept>,
    /// Two kept CRLs share an issuer name: CRLs are chosen per chain.
    shared_names: bool,
}

/// One CRL as read from a source, for [`Crls::load`].
pub(crate) struct CrlInput<'a> {
    pub(crate) origin: &'a Origin,
    pub(crate) index: usize,
    pub(crate) der: &'a CertificateRevocationListDer<'a>,
}

impl Crls {
    /// Matches each CRL to the CA in `issuers` (trust roots, and the CA
    /// certificates of the service's own chain) whose key signed it, and
    /// keeps the newest per key.
    ///
    /// # Errors
    ///
    /// A CRL that does not parse, is past its nextUpdate, or that none of
    /// `issuers` signed.
    pub(crate) fn load<'a>(
        issuers: &[CertificateDer<'_>],
        crls: impl IntoIterator<Item = CrlInput<'a>>,
        roots: &Origin,
        algs: Algorithms,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let issuers: Vec<Issuer> = issuers
            .iter()
            .filter_map(|der| {
                let (_, cert) = X509CertificateParser::new()
                    .with_deep_parse_extensions(false)
                    .parse(der)
                    .ok()?;
                Some(Issuer {
                    name: cert.subject().as_raw().to_vec(),
                    spki: cert.public_key().raw.to_vec(),
                })
            })
            .collect();
        let mut kept: Vec<Kept> = Vec::new();
        for input in crls {
            let bad = |detail: String| MaterialError::BadCrl {
                origin: input.origin.clone(),
                index: input.index,
                detail,
            };
            let owned = OwnedCertRevocationList::from_der(input.der)
                .map_err(|e| bad(describe_webpki(&e)))?;
            let (_, parsed) =
                x509_parser::parse_x509_crl(input.der).map_err(|e| bad(e.to_string()))?;
            let next_update = parsed.next_update().map(|t| unix_to_system(t.timestamp()));
            if let Some(next_update) = next_update
                && now > next_update
            {
                return Err(MaterialError::CrlExpired {
                    origin: input.origin.clone(),
                    issuer: parsed.issuer().to_string(),
                    next_update,
                }
                .into());
            }
            let issuer_name = parsed.issuer().as_raw();
            let same_name: Vec<&Issuer> =
                issuers.iter().filter(|i| i.name == issuer_name).collect();
            let Some(signer) = same_name
                .iter()
                .find(|i| signed_by(input.der, &i.spki, algs))
            else {
                return Err(MaterialError::CrlIssuerUnknown {
                    origin: input.origin.clone(),
                    index: input.index,
                    issuer: parsed.issuer().to_string(),
                    roots: roots.clone(),
                    same_name: !same_name.is_empty(),
                }
                .into());
            };
            let candidate = Kept {
                crl: CertRevocationList::Owned(owned),
                origin: input.origin.clone(),
                index: input.index,
                revoked: {
                    let mut serials: Vec<Vec<u8>> = parsed
                        .iter_revoked_certificates()
                        .map(|r| r.raw_serial().to_vec())
                        .collect();
                    serials.sort_unstable();
                    serials.dedup();
                    serials
                },
                issuer_name: issuer_name.to_vec(),
                key: signer.spki.clone(),
                number: parsed.crl_number().cloned(),
                this_update: parsed.last_update().timestamp(),
                next_update,
            };
            match kept.iter_mut().find(|k| k.key == candidate.key) {
                Some(kept) => match candidate.order(kept) {
                    Ordering::Greater => *kept = candidate,
                    Ordering::Less => {}
                    // Neither is newer: two that revoke the same serials are
                    // one CRL (twice, or signed twice); two that differ
                    // cannot be read one way only (taking either could hide
                    // the other's revocations).
                    Ordering::Equal if candidate.revoked == kept.revoked => {
                        // The same CRL republished with a longer life: keep
                        // the one that stays fresh longer.
                        if candidate.next_update.is_none()
                            || kept
                                .next_update
                                .is_some_and(|k| candidate.next_update.is_some_and(|c| c > k))
                        {
                            *kept = candidate;
                        }
                    }
                    Ordering::Equal => {
                        return Err(MaterialError::CrlConflict {
                            first: kept.origin.clone(),
                            first_index: kept.index,
                            second: candidate.origin,
                            second_index: candidate.index,
                            issuer: parsed.issuer().to_string(),
                        }
                        .into());
                    }
                },
                None => kept.push(candidate),
            }
        }
        let shared_names = kept
            .iter()
            .enumerate()
            .any(|(i, a)| kept[i + 1..].iter().any(|b| b.issuer_name == a.issuer_name));
        Ok(Self { kept, shared_names })
    }

    /// Whether any CRL is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The earliest nextUpdate after `now`: a verdict reached with these
    /// CRLs may hold at most until then. (A CRL already past it cannot have
    /// taken part in a verdict that passed: stale CRLs are enforced.)
    pub(crate) fn deadline(&self, now: UnixTime) -> Option<u64> {
        self.kept
            .iter()
            .filter_map(|k| k.next_update)
            .map(unix_secs)
            .filter(|&t| t > now.as_secs())
            .min()
    }

    /// The earliest nextUpdate of the CRLs kept (Unix seconds), past or
    /// not: what an operator alerts on.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn earliest_next_update(&self) -> Option<u64> {
        self.kept
            .iter()
            .filter_map(|k| k.next_update)
            .map(unix_secs)
            .min()
    }

    /// The CRLs to verify this chain with, in the order webpki should see
    /// them: per issuer name, the CRL of the key that signed the chain's
    /// certificate comes first.
    pub(crate) fn for_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        algs: Algorithms,
    ) -> Vec<&CertRevocationList<'static>> {
        if !self.shared_names {
            return self.kept.iter().map(|k| &k.crl).collect();
        }
        let mut first: Vec<usize> = Vec::new();
        for cert in std::iter::once(end_entity).chain(intermediates) {
            let Ok((_, parsed)) = X509CertificateParser::new()
                .with_deep_parse_extensions(false)
                .parse(cert)
            else {
                continue;
            };
            let issuer = parsed.issuer().as_raw();
            let signer = self
                .kept
                .iter()
                .position(|k| k.issuer_name == issuer && signed_by(cert, &k.key, algs));
            if let Some(i) = signer
                && !first.contains(&i)
            {
                first.push(i);
            }
        }
        let rest = (0..self.kept.len()).filter(|i| !first.contains(i));
        let order: Vec<usize> = first.iter().copied().chain(rest).collect();
        order.into_iter().map(|i| &self.kept[i].crl).collect()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `signed` (a certificate or CRL, DER) carries a signature that the
/// key in `spki` (a SubjectPublicKeyInfo, DER) made, with one of `algs`.
pub(crate) fn signed_by(signed: &[u8], spki: &[u8], algs: Algorithms) -> bool {
    let Some((tbs, alg, signature)) = signed_parts(signed) else {
        return false;
    };
    let Some((key_alg, key)) = key_parts(spki) else {
        return false;
    };
    algs.iter().any(|a| {
        a.signature_alg_id().as_ref() == alg
            && a.public_key_alg_id().as_ref() == key_alg
            && a.verify_signature(key, tbs, signature).is_ok()
    })
}

/// One DER element, split off the front of some input.
#[derive(Debug, PartialEq, Eq)]
struct Element<'a> {
    tag: u8,
    /// The whole element, header included.
    whole: &'a [u8],
    contents: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

/// The DER element at the start of `input` (definite lengths up to 4 bytes).
fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let header = input.len() - rest.len();
    let (contents, after) = rest.split_at_checked(len)?;
    Some(Element {
        tag,
        whole: input.get(..header.checked_add(len)?)?,
        contents,
        rest: after,
    })
}

/// The element at the start of `input` if it has tag `tag`.
fn expect(tag: u8, input: &[u8]) -> Option<Element<'_>> {
    element(input).filter(|e| e.tag == tag)
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;

/// A BIT STRING's bytes, when it has no unused bits.
fn whole_bits(contents: &[u8]) -> Option<&[u8]> {
    match contents.split_first()? {
        (0, bits) => Some(bits),
        _ => None,
    }
}

/// The signed part (whole element), the signature AlgorithmIdentifier's
/// contents and the signature of a certificate or CRL.
fn signed_parts(der: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let body = expect(SEQUENCE, der)?.contents;
    let tbs = expect(SEQUENCE, body)?;
    let alg = expect(SEQUENCE, tbs.rest)?;
    let bits = expect(BIT_STRING, alg.rest)?;
    Some((tbs.whole, alg.contents, whole_bits(bits.contents)?))
}

/// The AlgorithmIdentifier's contents and the key of a SubjectPublicKeyInfo.
fn key_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = expect(SEQUENCE, spki)?.contents;
    let alg = expect(SEQUENCE, body)?;
    let bits = expect(BIT_STRING, alg.rest)?;
    Some((alg.contents, whole_bits(bits.contents)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_elements_are_read_with_bounds() {
        assert_eq!(
            element(&[0x30, 0x02, 0x05, 0x00, 0xff]),
            Some(Element {
                tag: 0x30,
                whole: &[0x30, 0x02, 0x05, 0x00],
                contents: &[0x05, 0x00],
                rest: &[0xff],
            })
        );
        let long = [&[0x04, 0x81, 0x03][..], &[1, 2, 3]].concat();
        assert_eq!(element(&long).map(|e| e.contents), Some(&[1, 2, 3][..]));
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x00],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x82, 0xff],
        ] {
            assert_eq!(element(bad), None, "{bad:?}");
        }
        assert!(signed_parts(&[0x30, 0x00]).is_none());
        assert!(!signed_by(b"junk", b"junk", &[]));
    }

    #[cfg(feature = "dev")]
    #[test]
    fn signatures_are_told_apart_by_key() {
        let algs = crate::hardening::Hardening::default()
            .provider()
            .signature_verification_algorithms
            .all;
        let ca = crate::dev::DevCa::new("same name").unwrap();
        let twin = crate::dev::DevCa::new("same name").unwrap();
        let leaf = ca.leaf().dns("a.example").client().issue().unwrap();
        let spki = |pem: &str| {
            use rustls_pki_types::pem::PemObject;
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            cert.public_key().raw.to_vec()
        };
        assert!(signed_by(leaf.der(), &spki(ca.cert_pem()), algs));
        assert!(!signed_by(leaf.der(), &spki(twin.cert_pem()), algs));
        let mut tampered = leaf.der().to_vec();
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        assert!(!signed_by(&tampered, &spki(ca.cert_pem()), algs));
    }
}
