//! The judgment: whether a peer's certificate chain is admitted under one
//! policy epoch at one moment, why not, and which TLS alert says so.
//!
//! Every path calls it: the verifiers on full handshakes, the server's
//! ticket and session-cache hooks (sealing and opening), the acceptor and the
//! connector after each handshake (full or resumed), and with them the axum
//! and tonic integrations. There is no lighter copy: a resumed peer is
//! admitted only if a full handshake with its stored chain would be admitted
//! now.
//!
//! To keep that cheap, each [`Epoch`] remembers which chains passed (a
//! bounded map, exact match on the chain's DER) and until when the verdict
//! holds: the earliest notAfter in the chain and the earliest nextUpdate of
//! the CRLs. A peer judged in the current epoch whose verdict still holds
//! costs a lookup; any other pays the full judgment once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use rustls::{AlertDescription, CertificateError, Error as TlsError, PeerIncompatible};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509CertificateParser;
use x509_parser::nom::Parser;

use crate::error::{RejectReason, describe_webpki};
use crate::identity::PeerIdentity;
use crate::material::Trust;
use crate::policy::{Policy, describe};
use crate::revocation::Algorithms;

/// How a peer is judged on its name: against the allow-list, or (a client
/// built with no expected identities) against the name it dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameCheck {
    AllowList,
    ServerName,
}

/// What the judgment takes from the config, fixed for its life.
pub(crate) struct Options {
    /// The extended key usage a peer's certificate needs.
    pub(crate) usage: KeyUsage,
    pub(crate) algs: Algorithms,
    pub(crate) name_check: NameCheck,
}

/// What is judged: a peer's chain as presented (or as stored with its
/// session), and for a client the name it dialled.
#[derive(Clone, Copy)]
pub(crate) struct Presented<'a> {
    pub(crate) end_entity: &'a CertificateDer<'a>,
    pub(crate) intermediates: &'a [CertificateDer<'a>],
    /// Judged only by a client built without expected identities.
    pub(crate) server_name: Option<&'a ServerName<'a>>,
}

impl<'a> Presented<'a> {
    /// The name that takes part in the verdict, if any.
    fn judged_name(&self, options: &Options) -> Option<&'a ServerName<'a>> {
        match options.name_check {
            NameCheck::ServerName => self.server_name,
            NameCheck::AllowList => None,
        }
    }
}

/// A peer admitted, and until when that verdict holds (Unix seconds).
#[derive(Clone)]
pub(crate) struct Admitted {
    pub(crate) peer: PeerIdentity,
    pub(crate) until: u64,
}

/// A peer refused: the class, the specifics, and the error rustls should
/// send an alert for.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reason: RejectReason,
    pub(crate) detail: String,
    pub(crate) alert: CertificateError,
}

/// One policy epoch: the roots, CRLs and allow-list that judge peers, and
/// the verdicts reached under them.
pub(crate) struct Epoch {
    pub(crate) number: u64,
    pub(crate) trust: Arc<Trust>,
    pub(crate) policy: Arc<Policy>,
    memo: Memo,
}

impl Epoch {
    pub(crate) fn new(number: u64, trust: Arc<Trust>, policy: Arc<Policy>) -> Self {
        Self {
            number,
            trust,
            policy,
            memo: Memo::default(),
        }
    }

    /// The full judgment: chain to the roots with revocation, the
    /// workload-certificate rules, then the allow-list (or the dialled name).
    /// A pass is remembered for this epoch.
    pub(crate) fn judge(
        &self,
        options: &Options,
        peer: Presented<'_>,
        now: UnixTime,
    ) -> Result<Admitted, Refusal> {
        let Presented {
            end_entity,
            intermediates,
            ..
        } = peer;
        let name = peer.judged_name(options);
        let anchors = match self.trust.anchors_for(end_entity) {
            Ok(anchors) => anchors,
            Err(domain) => {
                return Err(self.no_roots_for(end_entity, &domain));
            }
        };
        if let Err(e) = self.trust.verify_to(
            anchors,
            options.algs,
            end_entity,
            intermediates,
            now,
            options.usage,
        ) {
            let (reason, alert) = classify_webpki(&e);
            // The certificate did not verify: what it says about itself is
            // untrusted, and `describe` bounds and escapes it.
            let who = unverified_name(end_entity);
            return Err(Refusal {
                reason,
                detail: format!("peer {who}: {}", describe_webpki(&e)),
                alert,
            });
        }
        let identity = PeerIdentity::from_leaf_der(end_entity).map_err(|e| Refusal {
            reason: RejectReason::NotAWorkloadCertificate,
            detail: format!("peer certificate refused: {e}"),
            alert: CertificateError::ApplicationVerificationFailure,
        })?;
        match name {
            Some(name) => {
                let valid = EndEntityCert::try_from(end_entity)
                    .and_then(|c| c.verify_is_valid_for_subject_name(name));
                valid.map_err(|e| Refusal {
                    reason: RejectReason::NotAllowed,
                    detail: format!(
                        "server {} is not valid for the name {:?} we dialled: {}",
                        describe(&identity),
                        name.to_str(),
                        describe_webpki(&e)
                    ),
                    alert: CertificateError::NotValidForName,
                })?;
            }
            None => self.policy.check(&identity).map_err(|e| Refusal {
                reason: RejectReason::NotAllowed,
                detail: e.to_string(),
                alert: CertificateError::ApplicationVerificationFailure,
            })?,
        }
        // webpki admits a certificate up to and including its notAfter
        // second, and a CRL up to (not including) its nextUpdate: `until`
        // is the first second the verdict no longer holds.
        let until = intermediates
            .iter()
            .filter_map(|der| not_after(der))
            .chain(std::iter::once(unix_secs(identity.not_after())))
            .map(|t| t.saturating_add(1))
            .chain(self.trust.crl_deadline(now))
            .fold(u64::MAX, u64::min);
        let admitted = Admitted {
            peer: identity,
            until,
        };
        self.memo.remember(intermediates, name, &admitted);
        Ok(admitted)
    }

    /// The refusal of a peer whose trust domain has no roots here.
    fn no_roots_for(&self, end_entity: &CertificateDer<'_>, domain: &str) -> Refusal {
        let who = unverified_name(end_entity);
        Refusal {
            reason: RejectReason::UnknownIssuer,
            detail: format!(
                "peer {who}: trust domain {} has no roots here (roots are given per trust domain, for: {})",
                crate::error::untrusted(domain),
                self.trust.domains().join(", ")
            ),
            alert: CertificateError::UnknownIssuer,
        }
    }

    /// A peer whose handshake is done (full or resumed), or whose session is
    /// being sealed or opened: admitted at once if this epoch judged the
    /// same chain and the verdict still holds at `now`, else judged in full.
    pub(crate) fn admit(
        &self,
        options: &Options,
        peer: Presented<'_>,
        now: UnixTime,
    ) -> Result<Admitted, Refusal> {
        let name = peer.judged_name(options);
        match self
            .memo
            .recall(peer.end_entity, peer.intermediates, name, now)
        {
            Some(admitted) => Ok(admitted),
            None => self.judge(options, peer, now),
        }
    }
}

/// How a refusal names a peer whose chain has not verified: bounded and
/// escaped by `describe`.
fn unverified_name(end_entity: &CertificateDer<'_>) -> String {
    PeerIdentity::from_leaf_der(end_entity)
        .map(|p| describe(&p))
        .unwrap_or_else(|_| "with an unreadable certificate".into())
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A certificate's notAfter (Unix seconds), or `None` if it does not parse
/// (it then took no part in a verdict that passed).
fn not_after(der: &[u8]) -> Option<u64> {
    let (_, cert) = X509CertificateParser::new()
        .with_deep_parse_extensions(false)
        .parse(der)
        .ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// How many verdicts an epoch remembers. Only chains that passed are kept,
/// so a peer cannot fill it without a certificate the policy admits; when
/// full, an arbitrary entry makes room (that peer pays one full judgment).
const MEMO_SIZE: usize = 1024;

/// Verdicts reached in one epoch, keyed by the chain (and the dialled name,
/// when that is what is judged).
#[derive(Default)]
struct Memo {
    hasher: RandomState,
    entries: Mutex<HashMap<u64, Remembered>>,
}

struct Remembered {
    admitted: Admitted,
    intermediates: Vec<CertificateDer<'static>>,
    name: Option<String>,
}

impl Memo {
    fn key(&self, leaf: &[u8], intermediates: usize, name: Option<&str>) -> u64 {
        // The signature at the end tells certificates apart; the full bytes
        // are compared on a hit.
        let tail = &leaf[leaf.len().saturating_sub(64)..];
        self.hasher
            .hash_one((tail, leaf.len(), intermediates, name))
    }

    fn recall(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: Option<&ServerName<'_>>,
        now: UnixTime,
    ) -> Option<Admitted> {
        let name = name.map(|n| n.to_str());
        let key = self.key(leaf, intermediates.len(), name.as_deref());
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let hit = entries.get(&key)?;
        let same = hit.admitted.peer.leaf_der() == leaf.as_ref()
            && hit.intermediates.as_slice() == intermediates
            && hit.name.as_deref() == name.as_deref()
            && now.as_secs() < hit.admitted.until;
        same.then(|| hit.admitted.clone())
    }

    fn remember(
        &self,
        intermediates: &[CertificateDer<'_>],
        name: Option<&ServerName<'_>>,
        admitted: &Admitted,
    ) {
        let name = name.map(|n| n.to_str().into_owned());
        let key = self.key(
            admitted.peer.leaf_der(),
            intermediates.len(),
            name.as_deref(),
        );
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MEMO_SIZE
            && !entries.contains_key(&key)
            && let Some(evict) = entries.keys().next().copied()
        {
            entries.remove(&evict);
        }
        entries.insert(
            key,
            Remembered {
                admitted: admitted.clone(),
                intermediates: intermediates
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect(),
                name,
            },
        );
    }
}

thread_local! {
    /// The specifics of the last refusal a verifier made on this thread.
    /// rustls carries only the alert-bearing error out of a handshake; the
    /// acceptor and connector take the specifics from here, in the same poll
    /// that ran the verifier, and clear it around every poll so that nothing
    /// left behind (by a bare config, or `identify` users) reaches another
    /// connection.
    static REFUSAL: RefCell<Option<(CertificateError, RejectReason, String)>> =
        const { RefCell::new(None) };
}

/// Notes a verifier's refusal for the acceptor or connector polling it.
pub(crate) fn note_refusal(refusal: &Refusal) {
    REFUSAL.with(|slot| {
        *slot.borrow_mut() = Some((
            refusal.alert.clone(),
            refusal.reason,
            refusal.detail.clone(),
        ));
    });
}

/// Takes the noted refusal, if there is one (and clears the slot).
pub(crate) fn take_refusal() -> Option<(CertificateError, RejectReason, String)> {
    REFUSAL.with(|slot| slot.borrow_mut().take())
}

/// Maps webpki's verdict to our reason and the rustls error (which picks the alert).
pub(crate) fn classify_webpki(e: &webpki::Error) -> (RejectReason, CertificateError) {
    use webpki::Error as W;
    match e {
        W::UnknownIssuer => (RejectReason::UnknownIssuer, CertificateError::UnknownIssuer),
        W::CertExpired { .. } => (RejectReason::Expired, CertificateError::Expired),
        W::CertNotValidYet { .. } => (RejectReason::NotYetValid, CertificateError::NotValidYet),
        W::CertRevoked => (RejectReason::Revoked, CertificateError::Revoked),
        W::UnknownRevocationStatus => (
            RejectReason::RevocationUnknown,
            CertificateError::UnknownRevocationStatus,
        ),
        W::CrlExpired { .. } => (
            RejectReason::RevocationUnknown,
            CertificateError::ExpiredRevocationList,
        ),
        W::RequiredEkuNotFoundContext(_) => {
            (RejectReason::WrongUsage, CertificateError::InvalidPurpose)
        }
        W::CertNotValidForName(_) => (RejectReason::NotAllowed, CertificateError::NotValidForName),
        W::CaUsedAsEndEntity => (
            RejectReason::NotAWorkloadCertificate,
            CertificateError::BadEncoding,
        ),
        W::InvalidSignatureForPublicKey => {
            (RejectReason::BadCertificate, CertificateError::BadSignature)
        }
        _ => (RejectReason::BadCertificate, CertificateError::BadEncoding),
    }
}

/// Classifies a failed handshake from the rustls error it ended with.
pub(crate) fn classify_tls(e: &TlsError) -> RejectReason {
    match e {
        TlsError::NoCertificatesPresented => RejectReason::NoClientCertificate,
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => RejectReason::UnknownIssuer,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                RejectReason::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                RejectReason::NotYetValid
            }
            CertificateError::Revoked => RejectReason::Revoked,
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => {
                RejectReason::RevocationUnknown
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                RejectReason::WrongUsage
            }
            CertificateError::ApplicationVerificationFailure
            | CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. } => RejectReason::NotAllowed,
            _ => RejectReason::BadCertificate,
        },
        TlsError::PeerIncompatible(p) => match p {
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => {
                RejectReason::ProtocolVersion
            }
            PeerIncompatible::NoCipherSuitesInCommon
            | PeerIncompatible::NoKxGroupsInCommon
            | PeerIncompatible::NoSignatureSchemesInCommon
            | PeerIncompatible::NoCertificateRequestSignatureSchemesInCommon => {
                RejectReason::NoCommonParameters
            }
            _ => RejectReason::Other,
        },
        TlsError::AlertReceived(alert) => match *alert {
            AlertDescription::ProtocolVersion => RejectReason::ProtocolVersion,
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => {
                RejectReason::NoCommonParameters
            }
            AlertDescription::CertificateRequired => RejectReason::NoClientCertificate,
            _ => RejectReason::RefusedByPeer,
        },
        TlsError::InvalidMessage(_) | TlsError::InappropriateHandshakeMessage { .. } => {
            RejectReason::Io
        }
        _ => RejectReason::Other,
    }
}
