//! The one table of refusal reasons: for each [`RejectReason`], its label
//! for metrics, its words, the error a verifier returns for it (and so the
//! alert the peer receives), the alerts that mean it when the peer sends
//! them, and whether it closes a live connection. Events, counters,
//! [`refused`](crate::refused), the verifiers and the sweeper all read it;
//! nothing else says what a reason means.

use std::fmt;

use rustls::{AlertDescription, CertificateError, Error as TlsError, PeerIncompatible};

use crate::error::RejectReason;

/// What a refusal for a reason does to a live connection whose peer it
/// judges again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnLive {
    /// The connection is closed (after the grace period).
    Closes,
    /// The connection stays open: a stale CRL or a certificate no CRL
    /// covers (an outage of the CRL publisher must not cut every
    /// connection; new handshakes are refused meanwhile).
    Kept,
    /// Expiry: kept, unless the builder asked to close at the peer's expiry.
    KeptUnlessCloseAtExpiry,
}

/// One reason's row of the table.
pub(crate) struct Row {
    /// A short stable name, for metrics labels.
    pub(crate) label: &'static str,
    /// What the reason means, in words.
    pub(crate) words: &'static str,
    /// The error a verifier returns for it (rustls turns it into the alert
    /// the peer receives); `None` for reasons no verifier gives.
    pub(crate) sends: Option<CertificateError>,
    /// Fatal alerts that, received from the peer, mean this reason said of
    /// our side. Each alert stands in one row at most.
    pub(crate) received: &'static [AlertDescription],
    /// Whether it closes a live connection.
    pub(crate) on_live: OnLive,
}

/// The table. A reason added to [`RejectReason`] does not compile until it
/// has its row.
pub(crate) fn row(reason: RejectReason) -> Row {
    use AlertDescription as A;
    use CertificateError as C;
    use OnLive::{Closes, Kept, KeptUnlessCloseAtExpiry};
    use RejectReason as R;
    let (label, words, sends, received, on_live): (_, _, _, &'static [A], _) = match reason {
        R::NoClientCertificate => (
            "no_client_certificate",
            "no client certificate",
            None,
            &[A::CertificateRequired],
            Closes,
        ),
        R::UnknownIssuer => (
            "unknown_issuer",
            "certificate not signed by a trusted CA",
            Some(C::UnknownIssuer),
            &[A::UnknownCA],
            Closes,
        ),
        R::Expired => (
            "expired",
            "certificate expired",
            Some(C::Expired),
            &[A::CertificateExpired],
            KeptUnlessCloseAtExpiry,
        ),
        R::NotYetValid => (
            "not_yet_valid",
            "certificate not yet valid",
            // The same alert as expiry (TLS has one for both).
            Some(C::NotValidYet),
            &[],
            KeptUnlessCloseAtExpiry,
        ),
        R::Revoked => (
            "revoked",
            "certificate revoked",
            Some(C::Revoked),
            &[A::CertificateRevoked],
            Closes,
        ),
        R::RevocationUnknown => (
            "revocation_unknown",
            "revocation status unknown",
            // unknown_ca, as OpenSSL and rustls send it.
            Some(C::UnknownRevocationStatus),
            &[],
            Kept,
        ),
        R::WrongUsage => (
            "wrong_usage",
            "certificate not valid for this use (extendedKeyUsage)",
            Some(C::InvalidPurpose),
            &[A::UnsupportedCertificate],
            Closes,
        ),
        R::BadCertificate => (
            "bad_certificate",
            "bad certificate",
            // bad_certificate: "contained signatures that did not verify".
            Some(C::BadEncoding),
            &[A::BadCertificate, A::DecryptError],
            Closes,
        ),
        R::NotAWorkloadCertificate => (
            "not_a_workload_certificate",
            "not a workload certificate",
            // access_denied, as for the allow-list: the peer cannot tell
            // the two apart.
            Some(C::ApplicationVerificationFailure),
            &[],
            Closes,
        ),
        R::NotAllowed => (
            "not_allowed",
            "identity not allowed",
            Some(C::ApplicationVerificationFailure),
            &[A::AccessDenied],
            Closes,
        ),
        R::ProtocolVersion => (
            "protocol_version",
            "protocol version not supported (TLS 1.3 only)",
            None,
            &[A::ProtocolVersion],
            Closes,
        ),
        R::NoCommonParameters => (
            "no_common_parameters",
            "no common cipher suite, group or signature scheme",
            None,
            &[A::HandshakeFailure, A::InsufficientSecurity],
            Closes,
        ),
        R::RefusedByPeer => (
            "refused_by_peer",
            "refused by the peer",
            None,
            &[A::CertificateUnknown],
            Closes,
        ),
        R::Timeout => ("timeout", "handshake timed out", None, &[], Closes),
        R::Io => ("io", "connection failed", None, &[], Closes),
        R::Other => ("other", "handshake failed", None, &[], Closes),
    };
    Row {
        label,
        words,
        sends,
        received,
        on_live,
    }
}

impl RejectReason {
    /// A short stable name, for metrics labels (`no_client_certificate`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        row(self).label
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(row(*self).words)
    }
}

/// The error a verifier returns for `reason` (its alert goes to the peer).
pub(crate) fn sends(reason: RejectReason) -> CertificateError {
    row(reason)
        .sends
        .unwrap_or(CertificateError::ApplicationVerificationFailure)
}

/// Whether a refusal for `reason` leaves a live connection open: the kept
/// reasons of the table. Every other refusal closes, including reasons
/// added later.
pub(crate) fn keeps_live_connection(reason: RejectReason, close_at_expiry: bool) -> bool {
    match row(reason).on_live {
        OnLive::Closes => false,
        OnLive::Kept => true,
        OnLive::KeptUnlessCloseAtExpiry => !close_at_expiry,
    }
}

/// What a fatal alert from the peer says about our side.
pub(crate) fn from_alert(alert: AlertDescription) -> RejectReason {
    RejectReason::ALL
        .into_iter()
        .find(|r| row(*r).received.contains(&alert))
        .unwrap_or(RejectReason::RefusedByPeer)
}

/// Every alert the table gives a meaning to.
pub(crate) fn known_alerts() -> impl Iterator<Item = AlertDescription> {
    RejectReason::ALL
        .into_iter()
        .flat_map(|r| row(r).received.iter().copied())
}

/// Maps webpki's verdict to our reason.
pub(crate) fn from_webpki(e: &webpki::Error) -> RejectReason {
    use webpki::Error as W;
    match e {
        W::UnknownIssuer => RejectReason::UnknownIssuer,
        W::CertExpired { .. } => RejectReason::Expired,
        W::CertNotValidYet { .. } => RejectReason::NotYetValid,
        W::CertRevoked => RejectReason::Revoked,
        W::UnknownRevocationStatus | W::CrlExpired { .. } => RejectReason::RevocationUnknown,
        W::RequiredEkuNotFoundContext(_) => RejectReason::WrongUsage,
        W::CertNotValidForName(_) => RejectReason::NotAllowed,
        W::CaUsedAsEndEntity => RejectReason::NotAWorkloadCertificate,
        _ => RejectReason::BadCertificate,
    }
}

/// The reason a certificate error stands for: the row that sends it (the
/// allow-list for access control), its context forms read as the plain one.
fn from_certificate_error(c: &CertificateError) -> RejectReason {
    use CertificateError as C;
    let plain = match c {
        C::ExpiredContext { .. } => C::Expired,
        C::NotValidYetContext { .. } => C::NotValidYet,
        C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
            C::UnknownRevocationStatus
        }
        C::InvalidPurposeContext { .. } => C::InvalidPurpose,
        // Access control, whichever rule refused (the allow-list, the
        // dialled name, the workload rules share its alert).
        C::NotValidForName
        | C::NotValidForNameContext { .. }
        | C::ApplicationVerificationFailure => {
            return RejectReason::NotAllowed;
        }
        other => other.clone(),
    };
    RejectReason::ALL
        .into_iter()
        .find(|r| row(*r).sends.as_ref() == Some(&plain))
        .unwrap_or(RejectReason::BadCertificate)
}

/// Classifies a failed handshake from the rustls error it ended with.
pub(crate) fn from_tls(e: &TlsError) -> RejectReason {
    match e {
        TlsError::NoCertificatesPresented => RejectReason::NoClientCertificate,
        TlsError::InvalidCertificate(c) => from_certificate_error(c),
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
        // The peer refused us: our own event says so, unless the alert
        // names a failure of the connection rather than a verdict on us.
        TlsError::AlertReceived(alert) => match from_alert(*alert) {
            reason @ (RejectReason::ProtocolVersion
            | RejectReason::NoCommonParameters
            | RejectReason::NoClientCertificate) => reason,
            _ => RejectReason::RefusedByPeer,
        },
        TlsError::InvalidMessage(_) | TlsError::InappropriateHandshakeMessage { .. } => {
            RejectReason::Io
        }
        _ => RejectReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one list of kept reasons, over every reason there is: only a
    /// stale or missing CRL, and expiry unless asked to close at it, leave
    /// a live connection open.
    #[test]
    fn every_refusal_closes_a_live_connection_but_the_kept_ones() {
        for reason in RejectReason::ALL {
            let kept_by_default = keeps_live_connection(reason, false);
            let kept_closing_at_expiry = keeps_live_connection(reason, true);
            let (default, at_expiry) = match reason {
                RejectReason::RevocationUnknown => (true, true),
                RejectReason::Expired | RejectReason::NotYetValid => (true, false),
                _ => (false, false),
            };
            assert_eq!(kept_by_default, default, "{reason:?} by default");
            assert_eq!(
                kept_closing_at_expiry, at_expiry,
                "{reason:?} with close_at_peer_expiry"
            );
        }
        // A bad signature (a same-name CA dropped), an unknown CA, a
        // revocation, the allow-list, a certificate that is no workload's:
        // all close.
        for reason in [
            RejectReason::BadCertificate,
            RejectReason::UnknownIssuer,
            RejectReason::Revoked,
            RejectReason::NotAllowed,
            RejectReason::NotAWorkloadCertificate,
            RejectReason::WrongUsage,
        ] {
            assert!(!keeps_live_connection(reason, false), "{reason:?}");
        }
    }

    /// Labels are distinct, and each alert means one reason at most.
    #[test]
    fn labels_and_received_alerts_are_unique() {
        let mut labels: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
        let alerts: Vec<_> = known_alerts().collect();
        for (i, a) in alerts.iter().enumerate() {
            assert!(!alerts[i + 1..].contains(a), "{a:?} in two rows");
        }
    }

    /// What we send, read back: the alert a refusal puts on the wire means
    /// the same reason to a meshtls peer, except where TLS has one alert for
    /// two reasons (then the peer reads the first, and these are the only
    /// such pairs).
    #[test]
    fn the_alert_we_send_reads_back_as_its_reason() {
        for reason in RejectReason::ALL {
            let Some(sent) = row(reason).sends else {
                continue;
            };
            // Our own rustls error reads back as the reason.
            assert_eq!(
                from_tls(&TlsError::InvalidCertificate(sent.clone())),
                match reason {
                    RejectReason::NotAWorkloadCertificate => RejectReason::NotAllowed,
                    other => other,
                },
                "{reason:?}"
            );
            let on_wire = AlertDescription::from(sent);
            // On our side, the peer's alert is the peer's refusal.
            assert_eq!(
                from_tls(&TlsError::AlertReceived(on_wire)),
                RejectReason::RefusedByPeer
            );
            let read = from_alert(on_wire);
            let expected = match reason {
                RejectReason::NotYetValid => RejectReason::Expired,
                RejectReason::RevocationUnknown => RejectReason::UnknownIssuer,
                RejectReason::NotAWorkloadCertificate => RejectReason::NotAllowed,
                other => other,
            };
            assert_eq!(read, expected, "{reason:?} sent as {on_wire:?}");
        }
    }
}
