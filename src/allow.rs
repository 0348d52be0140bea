//! Allow rules: the values an allow-list is made of, built with
//! constructors or parsed from configuration text.
//!
//! Rules are typed. A SPIFFE rule only ever looks at the peer's SPIFFE ID
//! (its one URI SAN), a DNS rule only at DNS SANs, a CN rule only at the
//! subject CN of a certificate with no SAN. A wildcard DNS SAN *in the
//! peer's certificate* (`DNS:*.example.com`) never satisfies any DNS rule:
//! for a client identity it would let one certificate stand for every name.
//! Matching lives with the compiled allow-list ([`Policy`](crate::Policy)),
//! so a single rule and a list of thousands decide alike.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls_pki_types::DnsName;

use crate::error::{RuleError, SpiffeIdError};
use crate::identity::PeerIdentity;
use crate::spiffe::{SpiffeId, TrustDomain};

pub(crate) type CustomFn = dyn Fn(&PeerIdentity) -> bool + Send + Sync;

/// One allow rule. Any rule that matches admits the peer.
///
/// Rules are values: build them with the constructors, or parse them from
/// configuration with [`FromStr`]:
///
/// | text | matches |
/// |---|---|
/// | `spiffe://td/ns/prod/sa/api` | exactly that SPIFFE ID |
/// | `spiffe://td/ns/*/sa/api` | `*` is exactly one path segment |
/// | `spiffe://td/ns/prod/**` | one or more segments below `/ns/prod`, on segment boundaries |
/// | `spiffe://td/**` | any SPIFFE ID of trust domain `td` |
/// | `dns:api.example.com` | that DNS SAN (case-insensitive) |
/// | `dns:*.svc.cluster.local` | a DNS SAN with exactly one label before `.svc.cluster.local` |
/// | `cn:billing` | subject CN `billing` of a certificate with no SAN (legacy; needs `.dangerous().allow_legacy_cn()`) |
///
/// ```
/// use meshtls::Allow;
/// let rules: Vec<Allow> = ["spiffe://prod.example/ns/billing/**", "dns:*.svc.cluster.local"]
///     .iter()
///     .map(|r| r.parse())
///     .collect::<Result<_, _>>()?;
/// assert_eq!(rules[0].to_string(), "spiffe://prod.example/ns/billing/**");
/// # Ok::<(), meshtls::error::RuleError>(())
/// ```
///
/// The constructors take strings and never panic; a malformed rule is
/// reported when the builder builds (or by [`Policy::new`](crate::Policy::new)).
#[derive(Clone)]
pub struct Allow(pub(crate) Rule);

#[derive(Clone)]
pub(crate) enum Rule {
    SpiffeId(SpiffeId),
    TrustDomain(TrustDomain),
    SpiffePattern(SpiffePattern),
    Dns(String),
    DnsWildcard(String),
    Cn(String),
    Custom { name: String, check: Arc<CustomFn> },
    Invalid(RuleError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpiffePattern {
    pub(crate) trust_domain: String,
    /// `None` is `*` (any one segment).
    pub(crate) segments: Vec<Option<String>>,
    /// A trailing `**`: one or more further segments.
    pub(crate) open_ended: bool,
}

impl SpiffePattern {
    /// One pattern alone, segment by segment (the trie's reference in tests).
    #[cfg(test)]
    pub(crate) fn matches(&self, id: &SpiffeId) -> bool {
        let mut segments = id.segments();
        for want in &self.segments {
            match (segments.next(), want) {
                (None, _) => return false,
                (Some(got), Some(want)) if got != want => return false,
                _ => {}
            }
        }
        if self.open_ended {
            segments.next().is_some()
        } else {
            segments.next().is_none()
        }
    }
}

impl fmt::Display for SpiffePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        for s in &self.segments {
            write!(f, "/{}", s.as_deref().unwrap_or("*"))?;
        }
        if self.open_ended {
            f.write_str("/**")?;
        }
        Ok(())
    }
}

impl Allow {
    /// Exactly this SPIFFE ID.
    pub fn spiffe_id(id: &str) -> Self {
        Self(match id.parse::<SpiffeId>() {
            Ok(id) => Rule::SpiffeId(id),
            Err(reason) => Rule::Invalid(RuleError::Spiffe {
                rule: id.to_owned(),
                reason,
            }),
        })
    }

    /// Any SPIFFE ID of this trust domain (`prod.example`).
    pub fn spiffe_trust_domain(trust_domain: &str) -> Self {
        Self(match trust_domain.parse::<TrustDomain>() {
            Ok(td) => Rule::TrustDomain(td),
            Err(reason) => Rule::Invalid(RuleError::Spiffe {
                rule: trust_domain.to_owned(),
                reason,
            }),
        })
    }

    /// A SPIFFE path pattern: `*` stands for exactly one segment, a trailing
    /// `**` for one or more (`spiffe://td/ns/*/sa/api`,
    /// `spiffe://td/ns/prod/**`). Without wildcards it is an exact ID.
    pub fn spiffe_pattern(pattern: &str) -> Self {
        Self(parse_spiffe(pattern).unwrap_or_else(Rule::Invalid))
    }

    /// Exactly this DNS name among the peer's DNS SANs (case-insensitive).
    /// `*.suffix` is a wildcard rule: exactly one label before `suffix`.
    pub fn dns(name: &str) -> Self {
        Self(parse_dns(name).unwrap_or_else(Rule::Invalid))
    }

    /// The subject common name (CN), for legacy certificates without SANs.
    ///
    /// Weaker than the other rules: a CN is free text that no verifier
    /// constrains (webpki ignores it, name constraints do not cover it), so a
    /// CA that issues for one team can mint any CN. The builder refuses CN
    /// rules unless `.dangerous().allow_legacy_cn()` is called, and a CN rule
    /// never matches a certificate that has any SAN.
    pub fn cn(name: &str) -> Self {
        Self(if name.is_empty() {
            Rule::Invalid(RuleError::Empty)
        } else {
            Rule::Cn(name.to_owned())
        })
    }

    /// A rule of your own: admits the peer when `check` returns `true`.
    /// `name` is how it shows in logs and errors.
    ///
    /// ```
    /// use meshtls::Allow;
    /// let staff_only = Allow::custom("serial-allowlist", |peer| peer.serial() == "01:02");
    /// assert_eq!(staff_only.to_string(), "custom:serial-allowlist");
    /// ```
    #[must_use]
    pub fn custom(
        name: &str,
        check: impl Fn(&PeerIdentity) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self(Rule::Custom {
            name: name.to_owned(),
            check: Arc::new(check),
        })
    }

    pub(crate) fn error(&self) -> Option<&RuleError> {
        match &self.0 {
            Rule::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

pub(crate) fn parse_spiffe(text: &str) -> Result<Rule, RuleError> {
    let spiffe_err = |reason| RuleError::Spiffe {
        rule: text.to_owned(),
        reason,
    };
    if !text.contains('*') {
        return text
            .parse::<SpiffeId>()
            .map(Rule::SpiffeId)
            .map_err(spiffe_err);
    }
    let rest = text
        .strip_prefix("spiffe://")
        .ok_or(spiffe_err(SpiffeIdError::WrongScheme))?;
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    let trust_domain = td.parse::<TrustDomain>().map_err(spiffe_err)?;
    let mut parts: Vec<&str> = path.split('/').collect();
    let open_ended = parts.last() == Some(&"**");
    if open_ended {
        parts.pop();
    }
    if open_ended && parts.is_empty() {
        return Ok(Rule::TrustDomain(trust_domain));
    }
    let mut segments = Vec::with_capacity(parts.len());
    for part in parts {
        if part == "*" {
            segments.push(None);
        } else if part.contains('*') {
            return Err(RuleError::Pattern {
                rule: text.to_owned(),
            });
        } else {
            segments.push(Some(part.to_owned()));
        }
    }
    // Check the literal segments by the SPIFFE ID rules, with `*` as `x`.
    let probe: String = segments
        .iter()
        .map(|s| format!("/{}", s.as_deref().unwrap_or("x")))
        .collect();
    format!("spiffe://{td}{probe}")
        .parse::<SpiffeId>()
        .map_err(spiffe_err)?;
    Ok(Rule::SpiffePattern(SpiffePattern {
        trust_domain: trust_domain.as_str().to_owned(),
        segments,
        open_ended,
    }))
}

fn parse_dns(text: &str) -> Result<Rule, RuleError> {
    let dns_err = |reason| RuleError::Dns {
        rule: text.to_owned(),
        reason,
    };
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() {
        return Err(RuleError::Empty);
    }
    // One trailing dot is the absolute form of the same name; a second is an
    // empty label (and would make a rule that displays as another one).
    if name.ends_with('.') {
        return Err(dns_err("an empty label (two dots in a row)"));
    }
    let (wildcard, base) = match name.strip_prefix("*.") {
        Some(base) => (true, base),
        None => (false, name.as_str()),
    };
    if base.contains('*') {
        return Err(dns_err(
            "a wildcard may only be a whole first label (`*.suffix`)",
        ));
    }
    if DnsName::try_from(base).is_err() || base.parse::<std::net::IpAddr>().is_ok() {
        return Err(dns_err("not a valid DNS name"));
    }
    if wildcard && !base.contains('.') {
        return Err(dns_err(
            "a wildcard needs a suffix of at least two labels (`*.example.com`, not `*.com`)",
        ));
    }
    let base = base.to_owned();
    Ok(if wildcard {
        Rule::DnsWildcard(base)
    } else {
        Rule::Dns(base)
    })
}

impl FromStr for Allow {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rule = if s.is_empty() {
            Err(RuleError::Empty)
        } else if s.starts_with("spiffe://") {
            parse_spiffe(s)
        } else if let Some(name) = s.strip_prefix("dns:") {
            parse_dns(name)
        } else if let Some(cn) = s.strip_prefix("cn:") {
            if cn.is_empty() {
                Err(RuleError::Empty)
            } else {
                Ok(Rule::Cn(cn.to_owned()))
            }
        } else {
            Err(RuleError::UnknownForm { rule: s.to_owned() })
        };
        rule.map(Self)
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Rule::SpiffeId(id) => write!(f, "{id}"),
            Rule::TrustDomain(td) => write!(f, "spiffe://{td}/**"),
            Rule::SpiffePattern(p) => write!(f, "{p}"),
            Rule::Dns(n) => write!(f, "dns:{n}"),
            Rule::DnsWildcard(n) => write!(f, "dns:*.{n}"),
            Rule::Cn(n) => write!(f, "cn:{n}"),
            Rule::Custom { name, .. } => write!(f, "custom:{name}"),
            Rule::Invalid(e) => write!(f, "<invalid rule: {e}>"),
        }
    }
}

impl fmt::Debug for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Allow({self})")
    }
}
