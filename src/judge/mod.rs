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

use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::error::{RejectReason, describe_webpki, untrusted};
use crate::identity::{IdentityError, LeafInfo, PeerIdentity, VouchedBy};
use crate::policy::{Policy, describe};
use crate::revocation::Algorithms;

mod authorize;
mod reasons;
mod svid;
mod trust;
mod verdict;

#[cfg(any(feature = "axum", feature = "tonic"))]
pub use authorize::RequirePeer;
pub(crate) use reasons::{from_alert, from_tls, keeps_live_connection, known_alerts};
pub use trust::RevocationScope;
pub(crate) use trust::{Revocation, Trust, Unanchored};
pub(crate) use verdict::Holds;

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

/// The verdict on a peer admitted: who (and the bundle that vouched for
/// it, in [`PeerIdentity::vouched_by`]), in which epoch and for how long.
#[derive(Clone)]
pub(crate) struct Admitted {
    pub(crate) peer: PeerIdentity,
    /// When it holds.
    pub(crate) holds: Holds,
    /// The positions, among the presented intermediates, of the path that
    /// verified: what a live connection's peer was admitted through.
    pub(crate) path: Vec<usize>,
}

/// A peer refused: the class and the specifics. The alert it sends is the
/// reason's, from the table (`reasons.rs`).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reason: RejectReason,
    pub(crate) detail: String,
}

impl Refusal {
    /// The error a verifier returns for this refusal (rustls sends its alert).
    pub(crate) fn alert(&self) -> CertificateError {
        reasons::sends(self.reason)
    }
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
        let admitted = self.judge_with(options, peer, now, Revocation::Enforced)?;
        self.memo
            .remember(peer.intermediates, peer.judged_name(options), &admitted);
        Ok(admitted)
    }

    /// The judgment, with revocation judged as `revocation` says; nothing
    /// remembered.
    fn judge_with(
        &self,
        options: &Options,
        peer: Presented<'_>,
        now: UnixTime,
        revocation: Revocation,
    ) -> Result<Admitted, Refusal> {
        let Presented {
            end_entity,
            intermediates,
            ..
        } = peer;
        let name = peer.judged_name(options);
        // Read once: it picks the bundle, then becomes the identity.
        let leaf = PeerIdentity::parse_leaf(end_entity).ok();
        let (anchors, vouched_by) = match self.trust.anchors_for(leaf.as_ref()) {
            Ok(found) => found,
            Err(Unanchored::NoRootsFor(domain)) => {
                return Err(self.no_roots_for(end_entity, &domain));
            }
            Err(Unanchored::BadSpiffeId(e)) => {
                return Err(Refusal {
                    reason: RejectReason::NotAWorkloadCertificate,
                    detail: format!("peer {}: {e}", unverified_name(end_entity)),
                });
            }
        };
        let on_path = match self.trust.verify_to(
            anchors,
            options.algs,
            end_entity,
            intermediates,
            now,
            options.usage,
            revocation,
        ) {
            Ok(on_path) => on_path,
            Err(e) => {
                let reason = reasons::from_webpki(&e);

                // The certificate did not verify: what it says about itself
                // is untrusted, and `unverified_name` bounds and escapes it.
                let who = unverified_name(end_entity);
                return Err(Refusal {
                    reason,
                    detail: format!("peer {who}: {}", describe_webpki(&e)),
                });
            }
        };
        // The signing certificates' rules; the verdict holds until the
        // earliest end of the verified path (not of whatever else the peer
        // appended to its chain).
        let mut until = Holds::NEVER;
        let mut from = 0;
        for (index, der) in intermediates.iter().enumerate() {
            let Ok(ca) = PeerIdentity::parse_leaf(der) else {
                // webpki verified the chain: one that does not parse took
                // no part in it.
                continue;
            };
            if svid::signing_rules(&ca).is_err() {
                // Named by its subject, formatted only now.
                let e = LeafInfo::parse(der)
                    .and_then(|named| svid::signing_rules(&named))
                    .err()
                    .unwrap_or(IdentityError::Unparsable {
                        detail: "a signing certificate".into(),
                    });
                return Err(Refusal {
                    reason: RejectReason::BadCertificate,
                    detail: format!("peer {}: {e}", unverified_name(end_entity)),
                });
            }
            if on_path.contains(&index) {
                until = until.min(unix_secs(ca.not_after).saturating_add(1));
                from = from.max(unix_secs(ca.not_before));
            }
        }
        let identity = leaf
            .ok_or_else(|| IdentityError::Unparsable {
                detail: "the leaf certificate does not parse".into(),
            })
            .and_then(|leaf| svid::identity(leaf, end_entity, vouched_by))
            .map_err(|e| Refusal {
                reason: RejectReason::NotAWorkloadCertificate,
                detail: format!("peer certificate refused: {e}"),
            })?;
        match name {
            Some(name) => self.dialled(&identity, end_entity, name)?,
            None => authorize::allow_list(&self.policy, &identity)?,
        }
        // webpki admits a certificate up to and including its notAfter
        // second, and a CRL up to (not including) its nextUpdate: `until`
        // is the first second the verdict no longer holds.
        let until = std::iter::once(unix_secs(identity.not_after()).saturating_add(1))
            .chain(self.trust.crl_deadline(now))
            .fold(until, u64::min);
        let from = from.max(unix_secs(identity.not_before()));
        Ok(Admitted {
            peer: identity,
            holds: Holds {
                epoch: self.number,
                from,
                until,
            },
            path: on_path,
        })
    }

    /// The refusal of a peer whose trust domain has no roots here.
    fn no_roots_for(&self, end_entity: &CertificateDer<'_>, domain: &str) -> Refusal {
        let who = unverified_name(end_entity);
        Refusal {
            reason: RejectReason::UnknownIssuer,
            detail: format!(
                "peer {who}: trust domain {} has no roots here (roots are given per trust domain, for: {})",
                untrusted(domain),
                self.trust.domains().join(", ")
            ),
        }
    }

    /// A client built without expected identities checks the name it
    /// dialled, which only the flat roots vouch for.
    fn dialled(
        &self,
        identity: &PeerIdentity,
        end_entity: &CertificateDer<'_>,
        name: &ServerName<'_>,
    ) -> Result<(), Refusal> {
        let refuse = |why: String| Refusal {
            reason: RejectReason::NotAllowed,
            detail: format!(
                "server {} is not valid for the name {:?} we dialled: {why}",
                describe(identity),
                name.to_str(),
            ),
        };
        if let VouchedBy::TrustDomain(td) = identity.vouched_by() {
            return Err(refuse(format!(
                "the bundle of trust domain {td} vouches for its SPIFFE ID only, not for DNS names or IP addresses (expect it by SPIFFE ID with expect_server)"
            )));
        }
        EndEntityCert::try_from(end_entity)
            .and_then(|c| c.verify_is_valid_for_subject_name(name))
            .map_err(|e| refuse(describe_webpki(&e)))
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
            .recall(peer.end_entity, peer.intermediates, name, self.number, now)
        {
            Some(admitted) => Ok(admitted),
            None => self.judge(options, peer, now),
        }
    }
}

/// A live connection's peer, judged again.
pub(crate) enum LiveVerdict {
    /// Admitted now.
    Admitted(Admitted),
    /// Refused for kept reasons only: stays open; judged again at the next
    /// policy change, or when this no longer holds.
    Kept(Holds),
    /// Refused for a reason that closes.
    Closes(Refusal),
}

impl Epoch {
    /// Judges a live connection's peer again. `path` is the path (positions
    /// among the presented intermediates) it was last admitted through.
    ///
    /// A refusal for a kept reason is not the whole story: the peer is
    /// judged once more on the path it was admitted through, where the kept
    /// reasons cannot refuse (revocation by listed serials only; with time
    /// kept, at a moment inside that path's validity), so that a peer both
    /// expired and revoked, or under a stale CRL and off the allow-list, is
    /// closed for the reason that closes. Only that path: whatever else the
    /// peer appended to its chain (an expired older certificate of the same
    /// intermediate, a cross-signed copy) cannot stand in for it.
    pub(crate) fn judge_live(
        &self,
        options: &Options,
        peer: Presented<'_>,
        path: &[usize],
        now: UnixTime,
        close_at_expiry: bool,
    ) -> LiveVerdict {
        let first = match self.admit(options, peer, now) {
            Ok(admitted) => return LiveVerdict::Admitted(admitted),
            Err(refusal) => refusal,
        };
        if !keeps_live_connection(first.reason, close_at_expiry) {
            return LiveVerdict::Closes(first);
        }
        let pinned: Vec<CertificateDer<'_>> = path
            .iter()
            .filter_map(|i| peer.intermediates.get(*i))
            .map(|c| CertificateDer::from(c.as_ref()))
            .collect();
        let on_path = Presented {
            intermediates: &pinned,
            ..peer
        };
        // The path's window of validity; none (it never was valid at one
        // moment, or does not parse): nothing shows the peer would be
        // admitted but for the kept reasons, so it closes.
        let Some((valid_from, valid_to)) = window(on_path) else {
            return LiveVerdict::Closes(first);
        };
        let (then, until) = if close_at_expiry {
            (now.as_secs(), Holds::NEVER)
        } else if now.as_secs() < valid_from {
            // A clock stepped back: judged as of the notBefore, and again
            // when the clock gets there.
            (valid_from, valid_from)
        } else {
            (now.as_secs().min(valid_to), Holds::NEVER)
        };
        // With expiry closing, a clock stepped back before the path's
        // notBefore must find the kept verdict no longer holding (and the
        // peer judged again, not yet valid); else "not yet valid" is itself
        // kept, and the verdict holds from any moment.
        let kept = |until| {
            LiveVerdict::Kept(Holds {
                epoch: self.number,
                from: if close_at_expiry { valid_from } else { 0 },
                until,
            })
        };
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(then));
        match self.judge_with(options, on_path, at, Revocation::RevokedOnly) {
            Ok(lenient) => kept(if close_at_expiry {
                lenient.holds.until
            } else {
                until
            }),
            Err(second) if keeps_live_connection(second.reason, close_at_expiry) => kept(until),
            Err(second) => LiveVerdict::Closes(second),
        }
    }
}

/// The seconds at which every certificate of `peer`'s chain is valid:
/// (latest notBefore, earliest notAfter), if that is a window at all.
fn window(peer: Presented<'_>) -> Option<(u64, u64)> {
    let mut from = 0;
    let mut to = u64::MAX;
    for der in std::iter::once(peer.end_entity).chain(peer.intermediates) {
        let cert = PeerIdentity::parse_leaf(der).ok()?;
        from = from.max(unix_secs(cert.not_before));
        to = to.min(unix_secs(cert.not_after));
    }
    (from <= to).then_some((from, to))
}

/// How a refusal names a peer whose chain has not verified (or whose
/// certificate breaks a rule): by what the certificate says, bounded and
/// escaped, whether or not it could stand for an identity.
fn unverified_name(end_entity: &CertificateDer<'_>) -> String {
    const MAX_NAMES: usize = 4;
    let Ok(leaf) = LeafInfo::parse(end_entity) else {
        return "with an unreadable certificate".into();
    };
    let mut parts: Vec<String> = leaf
        .uris
        .iter()
        .take(MAX_NAMES)
        .map(|u| untrusted(u))
        .collect();
    let dns: Vec<String> = leaf
        .dns_names
        .iter()
        .take(MAX_NAMES)
        .map(|n| untrusted(n))
        .collect();
    if !dns.is_empty() {
        parts.push(format!("dns:{}", dns.join(",")));
    }
    if let Some(cn) = &leaf.common_name {
        parts.push(format!("cn:{}", untrusted(cn)));
    }
    if parts.is_empty() {
        parts.push(format!("subject \"{}\"", untrusted(&leaf.subject)));
    }
    let more = (leaf.uris.len() + leaf.dns_names.len()).saturating_sub(2 * MAX_NAMES);
    let more = if more > 0 {
        format!(" (+{more} more)")
    } else {
        String::new()
    };
    format!("{}{more} (serial {})", parts.join(" "), leaf.serial_hex())
}

pub(crate) fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        epoch: u64,
        now: UnixTime,
    ) -> Option<Admitted> {
        let name = name.map(|n| n.to_str());
        let key = self.key(leaf, intermediates.len(), name.as_deref());
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let hit = entries.get(&key)?;
        let same = hit.admitted.peer.leaf_der() == leaf.as_ref()
            && hit.intermediates.as_slice() == intermediates
            && hit.name.as_deref() == name.as_deref()
            && hit.admitted.holds.at(epoch, now.as_secs());
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
        *slot.borrow_mut() = Some((refusal.alert(), refusal.reason, refusal.detail.clone()));
    });
}

/// Takes the noted refusal, if there is one (and clears the slot).
pub(crate) fn take_refusal() -> Option<(CertificateError, RejectReason, String)> {
    REFUSAL.with(|slot| slot.borrow_mut().take())
}
