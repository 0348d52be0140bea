//! The allow-list: [`Allow`] rules compiled into a [`Policy`] that matches a
//! peer in about the time one rule takes, and the one matcher that both a
//! policy and a single rule use.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::allow::{Allow, CustomFn, Rule, SpiffePattern};
use crate::error::{RuleError, untrusted};
use crate::identity::PeerIdentity;

/// A peer's DNS SANs that a rule may match, lowercased. Left out: wildcards
/// (one certificate would stand for many names) and names with a trailing
/// dot, which are not RFC 5280 preferred name syntax.
fn peer_dns_names(peer: &PeerIdentity) -> impl Iterator<Item = String> + '_ {
    peer.dns_names()
        .iter()
        .filter(|n| !n.contains('*') && !n.ends_with('.'))
        .map(|n| n.to_ascii_lowercase())
}

/// The CN a `cn:` rule may match: only a certificate with no subjectAltName
/// at all is named by its CN. CN is never a fallback for one whose SANs
/// matched nothing.
fn legacy_cn(peer: &PeerIdentity) -> Option<&str> {
    if peer.has_sans() {
        None
    } else {
        peer.common_name()
    }
}

/// `a.svc.local` -> `svc.local`; `None` when there is no parent.
fn wildcard_parent(name: &str) -> Option<&str> {
    let (label, parent) = name.split_once('.')?;
    (!label.is_empty() && !parent.is_empty()).then_some(parent)
}

/// Path patterns of one trust domain, as a trie of segments: matching walks
/// the ID's path once (branching only at `*`), whatever the number of rules.
#[derive(Clone, Debug, Default)]
struct PatternTrie {
    literal: HashMap<String, Self>,
    any: Option<Box<Self>>,
    /// A pattern ends here.
    ends: bool,
    /// A pattern ends here with `/**`: one or more further segments.
    open: bool,
}

impl PatternTrie {
    fn insert(&mut self, pattern: &SpiffePattern) {
        let mut node = self;
        for segment in &pattern.segments {
            node = match segment {
                Some(literal) => node.literal.entry(literal.clone()).or_default(),
                None => node.any.get_or_insert_with(Box::default),
            };
        }
        if pattern.open_ended {
            node.open = true;
        } else {
            node.ends = true;
        }
    }

    fn matches<'a>(&self, mut rest: impl Iterator<Item = &'a str> + Clone) -> bool {
        let Some(segment) = rest.next() else {
            return self.ends;
        };
        self.open
            || self
                .literal
                .get(segment)
                .is_some_and(|next| next.matches(rest.clone()))
            || self.any.as_ref().is_some_and(|next| next.matches(rest))
    }
}

/// A peer matched none of the rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("peer {peer} matches none of the {rules} allow rule(s): {}", tried_text(tried, *rules))]
pub struct NotAllowed {
    /// The peer's names, for the log: SPIFFE ID, DNS SANs, CN.
    pub peer: String,
    /// How many rules were tried.
    pub rules: usize,
    /// The first few rules tried, as text (at most [`NotAllowed::SHOWN`]).
    pub tried: Vec<String>,
}

impl NotAllowed {
    /// How many rules a refusal names; the rest are counted.
    pub const SHOWN: usize = 3;
}

/// `a, b, c and 7 more`.
fn tried_text(tried: &[String], rules: usize) -> String {
    let mut text = tried.join(", ");
    if rules > tried.len() {
        text.push_str(&format!(" and {} more", rules - tried.len()));
    }
    text
}

/// The allow-list: a compiled set of [`Allow`] rules.
///
/// Exact SPIFFE IDs, trust domains, exact DNS names, wildcard suffixes and
/// CNs are looked up in hash sets, and path patterns walked as a trie per
/// trust domain, so a list of thousands of rules costs about what a list of
/// one does (see `BENCHMARKS.md`).
///
/// Applications can use a `Policy` of their own for finer decisions (per
/// route, per method) on the [`PeerIdentity`] meshtls hands them:
///
/// ```
/// use meshtls::{Allow, Policy};
/// let admins = Policy::new([Allow::spiffe_pattern("spiffe://prod.example/ns/ops/**")])?;
/// # let _ = admins;
/// # Ok::<(), meshtls::error::RuleError>(())
/// ```
#[derive(Clone)]
pub struct Policy {
    any_authenticated: bool,
    ids: HashSet<String>,
    trust_domains: HashSet<String>,
    patterns: HashMap<String, PatternTrie>,
    dns: HashSet<String>,
    dns_wildcards: HashSet<String>,
    cns: HashSet<String>,
    custom: Vec<Arc<CustomFn>>,
    rules: Vec<Allow>,
}

impl Policy {
    /// Compiles rules into a policy. CN rules are refused (see
    /// [`Policy::with_legacy_cn`]).
    ///
    /// # Errors
    ///
    /// The first malformed rule, or a CN rule.
    pub fn new(rules: impl IntoIterator<Item = Allow>) -> Result<Self, RuleError> {
        Self::compile(rules, false)
    }

    /// Like [`Policy::new`], and also accepts CN rules (legacy, weaker).
    ///
    /// # Errors
    ///
    /// The first malformed rule.
    pub fn with_legacy_cn(rules: impl IntoIterator<Item = Allow>) -> Result<Self, RuleError> {
        Self::compile(rules, true)
    }

    /// Admits every peer whose certificate chain verified: no identity check.
    /// Use only where the CA issues to nobody else.
    pub fn any_authenticated() -> Self {
        let mut p = Self::empty();
        p.any_authenticated = true;
        p
    }

    fn empty() -> Self {
        Self {
            any_authenticated: false,
            ids: HashSet::new(),
            trust_domains: HashSet::new(),
            patterns: HashMap::new(),
            dns: HashSet::new(),
            dns_wildcards: HashSet::new(),
            cns: HashSet::new(),
            custom: Vec::new(),
            rules: Vec::new(),
        }
    }

    /// Compiles rules; CN rules only when `legacy_cn`. The one place rules
    /// become a policy (the builder and `set_allow_list` both come here).
    pub(crate) fn compile(
        rules: impl IntoIterator<Item = Allow>,
        legacy_cn: bool,
    ) -> Result<Self, RuleError> {
        let mut p = Self::empty();
        for rule in rules {
            if let Some(e) = rule.error() {
                return Err(e.clone());
            }
            match &rule.0 {
                Rule::SpiffeId(id) => {
                    p.ids.insert(id.as_str().to_owned());
                }
                Rule::TrustDomain(td) => {
                    p.trust_domains.insert(td.as_str().to_owned());
                }
                Rule::SpiffePattern(pat) => p
                    .patterns
                    .entry(pat.trust_domain.clone())
                    .or_default()
                    .insert(pat),
                Rule::Dns(n) => {
                    p.dns.insert(n.clone());
                }
                Rule::DnsWildcard(n) => {
                    p.dns_wildcards.insert(n.clone());
                }
                Rule::Cn(n) if legacy_cn => {
                    p.cns.insert(n.clone());
                }
                Rule::Cn(_) => {
                    return Err(RuleError::CnNotEnabled {
                        rule: rule.to_string(),
                    });
                }
                Rule::Custom { check, .. } => p.custom.push(check.clone()),
                Rule::Invalid(e) => return Err(e.clone()),
            }
            p.rules.push(rule);
        }
        Ok(p)
    }

    /// Whether the policy admits anyone at all: false for an empty list.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.any_authenticated && self.rules.is_empty()
    }

    /// Whether this policy admits any authenticated peer.
    pub fn is_any_authenticated(&self) -> bool {
        self.any_authenticated
    }

    /// The rules, as given.
    #[must_use]
    pub fn rules(&self) -> &[Allow] {
        &self.rules
    }

    /// Admits the peer if any rule matches. meshtls itself asks through
    /// its judgment (`judge/`), which adds why a trust domain's peer matched
    /// no DNS or CN rule.
    ///
    /// # Errors
    ///
    /// [`NotAllowed`], naming the peer, when no rule matches.
    pub fn check(&self, peer: &PeerIdentity) -> Result<(), NotAllowed> {
        if self.admits(peer) {
            Ok(())
        } else {
            Err(NotAllowed {
                peer: describe(peer),
                rules: self.rules.len(),
                tried: self
                    .rules
                    .iter()
                    .take(NotAllowed::SHOWN)
                    .map(ToString::to_string)
                    .collect(),
            })
        }
    }

    fn admits(&self, peer: &PeerIdentity) -> bool {
        if self.any_authenticated {
            return true;
        }
        if let Some(id) = peer.spiffe_id() {
            let td = id.trust_domain();
            if self.ids.contains(id.as_str())
                || self.trust_domains.contains(td)
                || self
                    .patterns
                    .get(td)
                    .is_some_and(|trie| trie.matches(id.segments()))
            {
                return true;
            }
        }
        if !self.dns.is_empty() || !self.dns_wildcards.is_empty() {
            for name in peer_dns_names(peer) {
                if self.dns.contains(&name)
                    || wildcard_parent(&name).is_some_and(|p| self.dns_wildcards.contains(p))
                {
                    return true;
                }
            }
        }
        if legacy_cn(peer).is_some_and(|cn| self.cns.contains(cn)) {
            return true;
        }
        self.custom.iter().any(|check| check(peer))
    }

    /// A key that changes whenever the decisions this policy makes can change.
    pub(crate) fn fingerprint(&self) -> Vec<String> {
        let mut key: Vec<String> = self
            .rules
            .iter()
            .map(|rule| match &rule.0 {
                // Two custom rules with one name may decide differently.
                Rule::Custom { name, check } => format!("custom:{name}@{:p}", Arc::as_ptr(check)),
                _ => rule.to_string(),
            })
            .collect();
        key.sort();
        if self.any_authenticated {
            key.push("<any authenticated>".into());
        }
        key
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any_authenticated {
            return f.write_str("Policy(any authenticated)");
        }
        f.debug_list().entries(&self.rules).finish()
    }
}

/// A peer's names, for a rejection message. The certificate may not have
/// verified, so every name is escaped and cut short, and at most a few DNS
/// names are listed: a peer cannot forge log lines or flood the log.
pub(crate) fn describe(peer: &PeerIdentity) -> String {
    const MAX_DNS: usize = 4;
    let mut parts = Vec::new();
    if let Some(id) = peer.spiffe_id() {
        parts.push(untrusted(id.as_str()));
    }
    let dns = peer.dns_names();
    if !dns.is_empty() {
        let shown: Vec<String> = dns.iter().take(MAX_DNS).map(|n| untrusted(n)).collect();
        let more = match dns.len().saturating_sub(MAX_DNS) {
            0 => String::new(),
            n => format!(" (+{n} more)"),
        };
        parts.push(format!("dns:{}{more}", shown.join(",")));
    }
    if let Some(cn) = peer.common_name() {
        parts.push(format!("cn:{}", untrusted(cn)));
    }
    if parts.is_empty() {
        parts.push(format!("subject \"{}\"", untrusted(peer.subject())));
    }
    format!("{} (serial {})", parts.join(" "), untrusted(peer.serial()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allow::parse_spiffe;
    use crate::spiffe::SpiffeId;

    fn rule(s: &str) -> Allow {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn pattern_matches(pattern: &str, id: &str) -> bool {
        let id: SpiffeId = id.parse().unwrap();
        match &rule(pattern).0 {
            Rule::SpiffePattern(p) => id.trust_domain() == p.trust_domain && p.matches(&id),
            Rule::TrustDomain(td) => id.trust_domain() == td.as_str(),
            Rule::SpiffeId(want) => want == &id,
            _ => panic!("not a SPIFFE rule"),
        }
    }

    #[test]
    fn path_patterns_match_on_segment_boundaries() {
        assert!(pattern_matches(
            "spiffe://td/ns/prod/**",
            "spiffe://td/ns/prod/x"
        ));
        assert!(pattern_matches(
            "spiffe://td/ns/prod/**",
            "spiffe://td/ns/prod/x/y/z"
        ));
        assert!(!pattern_matches(
            "spiffe://td/ns/prod/**",
            "spiffe://td/ns/prod"
        ));
        assert!(!pattern_matches(
            "spiffe://td/ns/prod/**",
            "spiffe://td/ns/production/x"
        ));
        assert!(!pattern_matches(
            "spiffe://td/ns/prod/**",
            "spiffe://td/ns/pro/x"
        ));
        assert!(pattern_matches("spiffe://td/**", "spiffe://td/x"));
        assert!(!pattern_matches("spiffe://td/**", "spiffe://td.evil/x"));
        assert!(!pattern_matches("spiffe://td/**", "spiffe://tdx/x"));
    }

    #[test]
    fn star_is_exactly_one_segment() {
        let p = "spiffe://td/ns/*/sa/api";
        assert!(pattern_matches(p, "spiffe://td/ns/prod/sa/api"));
        assert!(!pattern_matches(p, "spiffe://td/ns/a/b/sa/api"));
        assert!(!pattern_matches(p, "spiffe://td/ns/sa/api"));
        assert!(!pattern_matches(p, "spiffe://td/ns/prod/sa/api/x"));
        assert!(pattern_matches("spiffe://td/*/**", "spiffe://td/a/b"));
        assert!(!pattern_matches("spiffe://td/*/**", "spiffe://td/a"));
    }

    #[test]
    fn trie_agrees_with_each_pattern_alone() {
        let patterns = [
            "spiffe://td/ns/prod/**",
            "spiffe://td/ns/*/sa/api",
            "spiffe://td/a/b",
            "spiffe://td/*/**",
            "spiffe://td/x/*/y/**",
        ];
        let ids = [
            "spiffe://td",
            "spiffe://td/a",
            "spiffe://td/a/b",
            "spiffe://td/a/b/c",
            "spiffe://td/ns/prod",
            "spiffe://td/ns/prod/x",
            "spiffe://td/ns/staging/sa/api",
            "spiffe://td/ns/staging/sa/api/v2",
            "spiffe://td/x/1/y",
            "spiffe://td/x/1/y/2",
            "spiffe://td/x/1/z/2",
        ];
        for chosen in 1..(1 << patterns.len()) {
            let mut trie = PatternTrie::default();
            let mut list = Vec::new();
            for (i, text) in patterns.iter().enumerate() {
                if chosen & (1 << i) != 0 {
                    let Rule::SpiffePattern(p) = parse_spiffe(text).unwrap() else {
                        continue;
                    };
                    trie.insert(&p);
                    list.push(p);
                }
            }
            for id in ids {
                let id: SpiffeId = id.parse().unwrap();
                let linear = list.iter().any(|p| p.matches(&id));
                assert_eq!(
                    trie.matches(id.segments()),
                    linear,
                    "{id} with set {chosen:b}"
                );
            }
        }
    }

    #[test]
    fn malformed_rules_are_errors() {
        for bad in [
            "",
            "spiffe://td/ns/pr*d/**",
            "spiffe://td/**/x",
            "spiffe://TD/x",
            "spiffe://td/a//b",
            "dns:",
            "dns:a.*.example.com",
            "dns:*.com",
            "dns:*",
            "dns:exa mple.com",
            "dns:10.0.0.1",
            "cn:",
            "https://td/x",
            "billing",
        ] {
            assert!(bad.parse::<Allow>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn rules_round_trip_through_display() {
        for text in [
            "spiffe://td/ns/prod/sa/api",
            "spiffe://td/ns/*/sa/api",
            "spiffe://td/ns/prod/**",
            "spiffe://td/**",
            "dns:api.example.com",
            "dns:*.svc.cluster.local",
            "cn:billing",
        ] {
            assert_eq!(rule(text).to_string(), text);
        }
        assert_eq!(
            rule("dns:API.Example.COM.").to_string(),
            "dns:api.example.com"
        );
    }

    #[test]
    fn wildcard_parent_needs_one_nonempty_label() {
        assert_eq!(wildcard_parent("a.svc.local"), Some("svc.local"));
        assert_eq!(wildcard_parent(".svc.local"), None);
        assert_eq!(wildcard_parent("local"), None);
    }

    #[test]
    fn fingerprint_tells_custom_rules_apart() {
        let a = Policy::new([Allow::custom("same", |_| true)]).unwrap();
        let b = Policy::new([Allow::custom("same", |_| false)]).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let x = Policy::new([Allow::dns("a.example"), Allow::dns("b.example")]).unwrap();
        let y = Policy::new([Allow::dns("b.example"), Allow::dns("a.example")]).unwrap();
        assert_eq!(x.fingerprint(), y.fingerprint(), "order does not decide");
    }

    #[test]
    fn cn_rules_need_opt_in() {
        let err = Policy::new([Allow::cn("billing")]).unwrap_err();
        assert!(matches!(err, RuleError::CnNotEnabled { .. }));
        assert!(Policy::with_legacy_cn([Allow::cn("billing")]).is_ok());
    }

    #[test]
    fn invalid_constructor_input_surfaces_at_compile() {
        let err = Policy::new([Allow::spiffe_id("spiffe://td/a b")]).unwrap_err();
        assert!(matches!(err, RuleError::Spiffe { .. }), "{err}");
        let err = Policy::new([Allow::dns("*.*.x.y")]).unwrap_err();
        assert!(matches!(err, RuleError::Dns { .. }), "{err}");
    }
}
