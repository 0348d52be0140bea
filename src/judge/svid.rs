//! The X509-SVID rules (and the rules every workload leaf and signing
//! certificate follows), and the identity a leaf stands for once its chain
//! verified: the one place a leaf becomes a [`PeerIdentity`].

use crate::identity::{IdentityError, LeafInfo, PeerIdentity, VouchedBy};
use crate::spiffe::SpiffeId;

impl PeerIdentity {
    /// Reads the identity from a leaf certificate (DER), under the same
    /// X509-SVID rules the judgment applies.
    ///
    /// This does not verify the certificate: meshtls calls it only after the
    /// chain has been verified. Applications may call it on a certificate they
    /// obtained another way (for example from `rustls`' `peer_certificates()`).
    ///
    /// # Errors
    ///
    /// [`IdentityError`] when the certificate does not parse or cannot stand
    /// for a workload identity.
    pub fn from_leaf_der(der: &[u8]) -> Result<Self, IdentityError> {
        identity(Self::parse_leaf(der)?, der, VouchedBy::Unverified)
    }
}

/// The identity of a leaf whose chain `vouched_by` verified: the workload
/// rules, and only the names that bundle vouches for.
pub(crate) fn identity(
    leaf: LeafInfo,
    der: &[u8],
    vouched_by: VouchedBy,
) -> Result<PeerIdentity, IdentityError> {
    let id = workload_id(&leaf)?;
    Ok(PeerIdentity::assemble(leaf, der, vouched_by, id))
}

/// The rules a workload's leaf follows (the X509-SVID rules, which also
/// apply to any workload leaf): not a CA, cannot sign certificates, at most
/// one URI SAN when one is a SPIFFE ID; and for an SVID, a path, and keyUsage
/// with digitalSignature. The SPIFFE ID they admit, if any.
pub(crate) fn workload_id(leaf: &LeafInfo) -> Result<Option<SpiffeId>, IdentityError> {
    if leaf.is_ca {
        return Err(IdentityError::LeafIsCa);
    }
    if leaf.signs_certificates {
        return Err(IdentityError::LeafSignsCertificates);
    }
    if leaf.spiffe_uri().is_none() {
        return Ok(None);
    }
    if leaf.uris.len() > 1 {
        return Err(IdentityError::MultipleUriSans {
            count: leaf.uris.len(),
        });
    }
    let Some(id) = leaf.claimed_spiffe_id()? else {
        return Ok(None);
    };
    if id.path().is_empty() {
        // X509-SVID 5.2: a leaf names a workload, never a trust domain.
        return Err(IdentityError::NoPath {
            id: id.as_str().to_owned(),
        });
    }
    // X509-SVID 4.3. A leaf without a SPIFFE ID keeps RFC 5280's
    // "no keyUsage means any".
    match leaf.key_usage {
        None => return Err(IdentityError::NoKeyUsage),
        Some(ku) if !ku.digital_signature => return Err(IdentityError::NoDigitalSignature),
        Some(_) => {}
    }
    Ok(Some(id))
}

/// The rules for a signing certificate (an intermediate CA): with a
/// keyUsage extension, keyCertSign (RFC 5280 6.1.4(n)); a SPIFFE ID, if
/// any, names a trust domain without a path (X509-SVID 5.1). Names it by
/// its subject when `ca` was parsed with one.
pub(crate) fn signing_rules(ca: &LeafInfo) -> Result<(), IdentityError> {
    let subject = || crate::error::untrusted(&ca.subject);
    if ca.key_usage.is_some_and(|ku| !ku.key_cert_sign) {
        return Err(IdentityError::SigningWithoutKeyCertSign { subject: subject() });
    }
    if let Ok(Some(id)) = ca.claimed_spiffe_id()
        && !id.path().is_empty()
    {
        return Err(IdentityError::SigningSpiffeIdWithPath {
            subject: subject(),
            id: crate::error::untrusted(id.as_str()),
        });
    }
    Ok(())
}
