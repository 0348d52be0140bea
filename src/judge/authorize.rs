//! Authorization on an identity already verified: the allow-list's match
//! inside the judgment, one rule's match ([`Allow::matches`]), and the
//! route and service rules of [`RequirePeer`]. Every call to the policy's
//! matcher is here, and a refusal is reported like any other.

#[cfg(any(feature = "axum", feature = "tonic"))]
use std::{fmt, sync::Arc};

use crate::allow::Allow;
use crate::error::RejectReason;
#[cfg(any(feature = "axum", feature = "tonic"))]
use crate::error::RuleError;
use crate::identity::{PeerIdentity, VouchedBy};
#[cfg(any(feature = "axum", feature = "tonic"))]
use crate::observe::Observer;
use crate::policy::{NotAllowed, Policy};

use super::Refusal;

/// The allow-list's verdict on a verified identity: the one place the
/// judgment asks the policy's matcher.
pub(crate) fn allowed(policy: &Policy, identity: &PeerIdentity) -> Result<(), NotAllowed> {
    policy.check(identity)
}

/// [`allowed`], as the judgment's refusal: says why a peer a trust domain
/// vouched for matched no DNS or CN rule.
pub(crate) fn allow_list(policy: &Policy, identity: &PeerIdentity) -> Result<(), Refusal> {
    allowed(policy, identity).map_err(|e| Refusal {
        reason: RejectReason::NotAllowed,
        detail: match identity.vouched_by() {
            VouchedBy::TrustDomain(td) => format!(
                "{e} (the bundle of trust domain {td} vouches for its SPIFFE ID only: its DNS names and CN match no rule)"
            ),
            _ => e.to_string(),
        },
    })
}

impl Allow {
    /// Whether this rule alone admits the peer: the allow-list's own
    /// matching, with a list of one, as a server or client built with
    /// default settings judges it. So a `cn:` rule matches nobody here, as a
    /// builder without `.dangerous().allow_legacy_cn()` admits nobody by it
    /// (compile a [`Policy::with_legacy_cn`] for that); an invalid rule
    /// admits nobody. For many rules, or a hot path, compile a [`Policy`]
    /// once.
    #[must_use]
    pub fn matches(&self, peer: &PeerIdentity) -> bool {
        Policy::new([self.clone()]).is_ok_and(|p| allowed(&p, peer).is_ok())
    }
}

/// Who may call one route or service: the same rules as the allow-list,
/// applied after the handshake to the identity meshtls verified. A tower
/// layer for axum routes ([`meshtls::axum`](crate::axum), 403) and a tonic
/// interceptor ([`meshtls::tonic`](crate::tonic), `PermissionDenied`); a
/// refusal names the caller, never the rules.
///
/// Made by [`ServerTls::require_peer`](crate::ServerTls::require_peer), it
/// compiles its rules with the server's settings (legacy CN rules only if
/// the server allows them) and reports each refusal through the server's
/// events and counters, apart from refused handshakes (a peer the listener
/// admitted cannot pass its requests off as refused handshakes): an
/// [`Event::RequestRefused`](crate::Event::RequestRefused) with reason
/// `NotAllowed`, [`Stats::requests_refused`](crate::Stats::requests_refused),
/// and the metric `meshtls_requests_refused_total`.
#[cfg(any(feature = "axum", feature = "tonic"))]
#[derive(Clone)]
pub struct RequirePeer {
    policy: Arc<Policy>,
    /// The server whose events and counters a refusal goes to.
    observer: Option<Arc<Observer>>,
}

#[cfg(any(feature = "axum", feature = "tonic"))]
impl fmt::Debug for RequirePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequirePeer")
            .field("rules", &self.policy.rules().len())
            .field("reports_to_a_server", &self.observer.is_some())
            .finish()
    }
}

#[cfg(any(feature = "axum", feature = "tonic"))]
impl RequirePeer {
    /// Admits peers any of `rules` match (CN rules are refused, as in
    /// [`Policy::new`]). Its refusals go to `tracing` only: prefer
    /// [`ServerTls::require_peer`](crate::ServerTls::require_peer).
    ///
    /// # Errors
    ///
    /// The first malformed rule.
    pub fn new(rules: impl IntoIterator<Item = Allow>) -> Result<Self, RuleError> {
        Ok(Self::from_policy(Policy::new(rules)?))
    }

    /// Admits the peers `policy` admits (refusals go to `tracing` only).
    #[must_use]
    pub fn from_policy(policy: Policy) -> Self {
        Self {
            policy: Arc::new(policy),
            observer: None,
        }
    }

    /// Rules compiled with a server's settings, reporting to it.
    pub(crate) fn for_server(policy: Policy, observer: Arc<Observer>) -> Self {
        Self {
            policy: Arc::new(policy),
            observer: Some(observer),
        }
    }

    /// Judges a request's caller; `what` names the route or service for
    /// the report (peer-chosen text: bounded and escaped here). A refusal
    /// is reported, and named by the caller only.
    pub(crate) fn judge(&self, peer: &PeerIdentity, what: &str) -> Result<(), NotAllowed> {
        allowed(&self.policy, peer).inspect_err(|refusal| {
            let detail = format!("{}: {refusal}", crate::error::untrusted(what));
            match &self.observer {
                Some(observer) => observer.refused_request(RejectReason::NotAllowed, detail),
                None => tracing::warn!(%detail, "request refused"),
            }
        })
    }
}
