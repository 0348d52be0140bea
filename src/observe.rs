//! What happened: [`Event`]s on a broadcast channel, counters in [`Stats`],
//! and the same facts on `tracing`.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::{AlertDescription, CertificateError, Error as TlsError, PeerIncompatible};
use tokio::sync::broadcast;

use crate::error::{Error, fmt_time};
use crate::material::CertFacts;

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
    const ALL: [Self; 16] = [
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

    fn index(self) -> usize {
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

thread_local! {
    /// The last refusal a verifier made on this thread, with the rustls error
    /// it returned. rustls can only carry the alert-bearing error; the
    /// acceptor and connector, which see that error in the same poll on the
    /// same thread, take the specifics from here.
    static LAST_REFUSAL: RefCell<Option<(CertificateError, RejectReason, String)>> =
        const { RefCell::new(None) };
}

/// Notes a verifier's refusal for the acceptor or connector to pick up.
pub(crate) fn remember_refusal(tls: &CertificateError, reason: RejectReason, detail: &str) {
    LAST_REFUSAL.with(|last| *last.borrow_mut() = Some((tls.clone(), reason, detail.to_owned())));
}

/// The specifics of the refusal that produced `tls`, if a verifier on this
/// thread made it.
pub(crate) fn recall_refusal(tls: &CertificateError) -> Option<(RejectReason, String)> {
    LAST_REFUSAL.with(|last| {
        let mut last = last.borrow_mut();
        match last.take() {
            Some((error, reason, detail)) if &error == tls => Some((reason, detail)),
            _ => None,
        }
    })
}

/// Something meshtls did or saw; see `subscribe()` on the server and client.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A new generation is serving.
    Reloaded {
        /// Its number (the first is 1).
        generation: u64,
        /// The service's own leaf certificate in it.
        leaf: CertFacts,
        /// The trust roots in it.
        roots: Vec<CertFacts>,
        /// Whether trust material or the allow-list changed, which ends
        /// resumption of earlier sessions.
        policy_changed: bool,
    },
    /// A new set of material was refused; the previous generation keeps serving.
    ReloadFailed {
        /// Why.
        error: Arc<Error>,
        /// The generation still serving.
        serving: u64,
    },
    /// The service's certificate has less than the configured share of its
    /// lifetime left.
    Expiring {
        /// The certificate.
        leaf: CertFacts,
        /// Time left.
        remaining: Duration,
    },
    /// The service's certificate has expired and was not replaced.
    Expired {
        /// The certificate.
        leaf: CertFacts,
    },
    /// A handshake was refused.
    Rejected {
        /// The class of failure.
        reason: RejectReason,
        /// The specifics: the peer, the certificate, the rule.
        detail: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reloaded {
                generation,
                leaf,
                policy_changed,
                ..
            } => write!(
                f,
                "generation {generation} serving: certificate serial {} valid until {}{}",
                leaf.serial,
                fmt_time(leaf.not_after),
                if *policy_changed {
                    " (trust or allow-list changed: earlier sessions will not resume)"
                } else {
                    ""
                }
            ),
            Self::ReloadFailed { error, serving } => {
                write!(
                    f,
                    "reload refused, generation {serving} keeps serving: {error}"
                )
            }
            Self::Expiring { leaf, remaining } => write!(
                f,
                "certificate serial {} expires at {} ({}s left)",
                leaf.serial,
                fmt_time(leaf.not_after),
                remaining.as_secs()
            ),
            Self::Expired { leaf } => write!(
                f,
                "certificate serial {} expired at {} and has not been replaced",
                leaf.serial,
                fmt_time(leaf.not_after)
            ),
            Self::Rejected { reason, detail } => write!(f, "handshake refused: {reason}: {detail}"),
        }
    }
}

/// A snapshot of the counters operators alert on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Handshakes completed and admitted (through the acceptor/connector).
    pub handshakes_ok: u64,
    /// Handshakes refused, by reason (only reasons seen, in a fixed order).
    pub rejected: Vec<(RejectReason, u64)>,
    /// Reloads that produced a new generation.
    pub reloads_ok: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
    /// The generation serving.
    pub generation: u64,
    /// When the serving generation was built.
    pub last_reload: Option<SystemTime>,
    /// When the serving certificate expires.
    pub certificate_not_after: Option<SystemTime>,
}

impl Stats {
    /// Refusals for one reason.
    pub fn rejected_for(&self, reason: RejectReason) -> u64 {
        self.rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// Events and counters of one server or client.
pub(crate) struct Observer {
    side: &'static str,
    tx: broadcast::Sender<Event>,
    handshakes_ok: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    generation: AtomicU64,
    last_reload: AtomicU64,
    not_after: AtomicU64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Observer {
    pub(crate) fn new(side: &'static str) -> Self {
        Self {
            side,
            tx: broadcast::channel(256).0,
            handshakes_ok: AtomicU64::new(0),
            rejected: Default::default(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_reload: AtomicU64::new(0),
            not_after: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    fn send(&self, event: Event) {
        // No subscribers is fine: events are also on tracing.
        let _ = self.tx.send(event);
    }

    pub(crate) fn admitted(&self) {
        self.handshakes_ok.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, reason: RejectReason, detail: String) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(side = self.side, reason = reason.as_str(), %detail, "mTLS handshake refused: {reason}");
        self.send(Event::Rejected { reason, detail });
    }

    pub(crate) fn reloaded(
        &self,
        generation: u64,
        leaf: &CertFacts,
        roots: &[CertFacts],
        policy_changed: bool,
    ) {
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
        self.last_reload
            .store(unix(SystemTime::now()), Ordering::Relaxed);
        self.not_after
            .store(unix(leaf.not_after), Ordering::Relaxed);
        let event = Event::Reloaded {
            generation,
            leaf: leaf.clone(),
            roots: roots.to_vec(),
            policy_changed,
        };
        tracing::info!(
            side = self.side,
            generation,
            serial = %leaf.serial,
            not_after = %fmt_time(leaf.not_after),
            policy_changed,
            "meshtls {event}"
        );
        self.send(event);
    }

    pub(crate) fn reload_failed(&self, error: Arc<Error>) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        let serving = self.generation.load(Ordering::Relaxed);
        tracing::error!(side = self.side, serving, %error, "meshtls reload refused; the previous generation keeps serving");
        self.send(Event::ReloadFailed { error, serving });
    }

    pub(crate) fn expiring(&self, leaf: &CertFacts, remaining: Duration) {
        tracing::warn!(side = self.side, serial = %leaf.serial, not_after = %fmt_time(leaf.not_after), "certificate expires soon");
        self.send(Event::Expiring {
            leaf: leaf.clone(),
            remaining,
        });
    }

    pub(crate) fn expired(&self, leaf: &CertFacts) {
        tracing::error!(side = self.side, serial = %leaf.serial, not_after = %fmt_time(leaf.not_after), "certificate expired and was not replaced");
        self.send(Event::Expired { leaf: leaf.clone() });
    }

    pub(crate) fn stats(&self) -> Stats {
        let at = |v: u64| (v > 0).then(|| UNIX_EPOCH + Duration::from_secs(v));
        Stats {
            handshakes_ok: self.handshakes_ok.load(Ordering::Relaxed),
            rejected: RejectReason::ALL
                .iter()
                .zip(&self.rejected)
                .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            generation: self.generation.load(Ordering::Relaxed),
            last_reload: at(self.last_reload.load(Ordering::Relaxed)),
            certificate_not_after: at(self.not_after.load(Ordering::Relaxed)),
        }
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
