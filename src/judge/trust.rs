//! The chain and its roots: which bundle vouches for a peer, the chain
//! verified to it, and revocation judged on the way. The trust material is
//! loaded and validated by `material.rs`; what it says about a peer is
//! decided here.

use std::collections::HashMap;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{
    EndEntityCert, ExpirationPolicy, KeyUsage, RevocationCheckDepth, RevocationOptionsBuilder,
    UnknownStatusPolicy,
};

use crate::identity::{IdentityError, LeafInfo, VouchedBy};
use crate::observe::CertFacts;
use crate::revocation::{Algorithms, Crls};
use crate::spiffe::TrustDomain;

/// How peers' certificates are checked for revocation when CRLs are given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationScope {
    /// Leaf and every intermediate: each needs a CRL from its issuer, and a
    /// certificate whose status is unknown is refused. The default.
    #[default]
    WholeChain,
    /// The leaf only (a CRL from its issuer is still required); intermediates
    /// are not checked.
    LeafOnly,
}

/// How a chain's revocation is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// Every certificate needs a fresh CRL from its issuer that does not
    /// list it (unknown status and stale CRLs refuse).
    Enforced,
    /// Only a listed serial refuses: for telling whether a live connection
    /// kept despite a stale CRL must close for another reason.
    RevokedOnly,
}

/// Why no roots could be chosen for a peer.
#[derive(Debug)]
pub(crate) enum Unanchored {
    /// Its trust domain has no roots here (roots are given per trust domain).
    NoRootsFor(String),
    /// Its SPIFFE URI is not a valid SPIFFE ID.
    BadSpiffeId(IdentityError),
}

/// The trust side of a generation: who may sign peers, and what is revoked.
pub(crate) struct Trust {
    anchors: Vec<TrustAnchor<'static>>,
    /// Roots per SPIFFE trust domain; when any are given, a peer with a
    /// SPIFFE ID chains only to its trust domain's.
    domains: HashMap<String, (TrustDomain, Vec<TrustAnchor<'static>>)>,
    crls: Crls,
    scope: RevocationScope,
    pub(crate) roots: Vec<CertFacts>,
}

impl Trust {
    /// The trust side of a generation, from material already validated:
    /// flat roots, roots per trust domain, the CRLs matched to their
    /// issuers, and the facts reloads report about the roots.
    pub(crate) fn new(
        anchors: Vec<TrustAnchor<'static>>,
        domains: HashMap<String, (TrustDomain, Vec<TrustAnchor<'static>>)>,
        crls: Crls,
        scope: RevocationScope,
        roots: Vec<CertFacts>,
    ) -> Self {
        Self {
            anchors,
            domains,
            crls,
            scope,
            roots,
        }
    }

    /// Verifies a chain to the roots, with revocation when CRLs are present.
    /// Names are not checked here.
    pub(crate) fn verify(
        &self,
        algs: Algorithms,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<(), webpki::Error> {
        let leaf = LeafInfo::parse(end_entity).ok();
        match self.anchors_for(leaf.as_ref()) {
            Ok((anchors, _)) => self
                .verify_to(
                    anchors,
                    algs,
                    end_entity,
                    intermediates,
                    now,
                    usage,
                    Revocation::Enforced,
                )
                .map(|_| ()),
            Err(_) => Err(webpki::Error::UnknownIssuer),
        }
    }

    /// [`Self::verify`] against `anchors`, from [`Self::anchors_for`] (for
    /// a caller that looked them up already), enforcing revocation as
    /// `revocation` says. Returns the positions in `intermediates` of the
    /// certificates on the verified path.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn verify_to(
        &self,
        anchors: &[TrustAnchor<'static>],
        algs: Algorithms,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
        revocation: Revocation,
    ) -> Result<Vec<usize>, webpki::Error> {
        let cert = EndEntityCert::try_from(end_entity)?;
        let crl_refs = if self.crls.is_empty() {
            Vec::new()
        } else {
            self.crls.for_chain(end_entity, intermediates, algs)
        };
        let (status, expiration) = match revocation {
            Revocation::Enforced => (UnknownStatusPolicy::Deny, ExpirationPolicy::Enforce),
            Revocation::RevokedOnly => (UnknownStatusPolicy::Allow, ExpirationPolicy::Ignore),
        };
        let revocation = match RevocationOptionsBuilder::new(&crl_refs) {
            Ok(builder) => Some(
                builder
                    .with_depth(match self.scope {
                        RevocationScope::WholeChain => RevocationCheckDepth::Chain,
                        RevocationScope::LeafOnly => RevocationCheckDepth::EndEntity,
                    })
                    .with_status_policy(status)
                    .with_expiration_policy(expiration)
                    .build(),
            ),
            // No CRLs configured.
            Err(_) => None,
        };
        let path =
            cert.verify_for_usage(algs, anchors, intermediates, now, usage, revocation, None)?;
        // Which of the presented intermediates the verified path uses: only
        // those bound the verdict (a peer may append anything else).
        let on_path = path
            .intermediate_certificates()
            .filter_map(|c| {
                let der = c.der();
                intermediates
                    .iter()
                    .position(|i| i.as_ref() == der.as_ref())
            })
            .collect();
        Ok(on_path)
    }

    /// The roots a peer may chain to, and who vouches for it then: its
    /// trust domain's bundle when roots are given per trust domain and it
    /// has a SPIFFE ID, else the flat roots. What the certificate says is
    /// not trusted yet: it only picks the bundle, which the chain must then
    /// verify against. `leaf` is `None` for a certificate that does not
    /// parse (it will not verify either).
    pub(crate) fn anchors_for(
        &self,
        leaf: Option<&LeafInfo>,
    ) -> Result<(&[TrustAnchor<'static>], VouchedBy), Unanchored> {
        let flat = || Ok((self.anchors.as_slice(), VouchedBy::FlatRoots));
        if self.domains.is_empty() {
            return flat();
        }
        let Some(leaf) = leaf else {
            return flat();
        };
        // A SPIFFE URI that does not parse names no trust domain: it is
        // refused as what it is, rather than tried against the flat roots.
        match leaf.claimed_spiffe_id().map_err(Unanchored::BadSpiffeId)? {
            None => flat(),
            Some(id) => match self.domains.get(id.trust_domain()) {
                Some((td, anchors)) => Ok((anchors, VouchedBy::TrustDomain(td.clone()))),
                None => Err(Unanchored::NoRootsFor(id.trust_domain().to_owned())),
            },
        }
    }

    /// The trust domains that have roots of their own.
    pub(crate) fn domains(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The earliest moment after `now` at which a CRL goes stale.
    pub(crate) fn crl_deadline(&self, now: UnixTime) -> Option<u64> {
        self.crls.deadline(now)
    }

    /// The earliest nextUpdate of the CRLs, past or not (Unix seconds).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn crl_next_update(&self) -> Option<u64> {
        self.crls.earliest_next_update()
    }
}
