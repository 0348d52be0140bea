//! Why a handshake was refused: the class ([`RejectReason`]), the error the
//! acceptor and connector return, and webpki's verdicts in words.

use std::time::{Duration, SystemTime};

use super::fmt_time;

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
    #[must_use]
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// The specifics.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Why a handshake was refused.
///
/// What each reason means (its words, its metrics label, the alert it
/// sends, and whether it closes a live connection) is one table, in the
/// judgment (`judge/reasons.rs`).
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
        // Anything else (a name mismatch lists the names the certificate
        // presented): bounded, escaped.
        other => super::untrusted(&format!("{other:?}")),
    }
}
