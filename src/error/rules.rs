//! Why a SPIFFE ID or an allow rule cannot be read.

/// Why a string is not a SPIFFE ID (or trust domain).
///
/// Each variant is one rule of the [SPIFFE ID specification][spec].
///
/// [spec]: https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("a SPIFFE ID cannot be empty")]
    Empty,
    /// Longer than the 2048 bytes the specification allows.
    #[error("a SPIFFE ID is at most 2048 bytes, this one is {len}")]
    TooLong {
        /// The length seen, in bytes.
        len: usize,
    },
    /// The scheme is not `spiffe://` (lowercase).
    #[error("a SPIFFE ID starts with `spiffe://`")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// Longer than the 255 bytes the specification allows.
    #[error("a trust domain is at most 255 bytes, this one is {len}")]
    TrustDomainTooLong {
        /// The length seen, in bytes.
        len: usize,
    },
    /// A trust domain holds only lowercase letters, digits, `.`, `-` and `_`.
    #[error(
        "the trust domain has {ch:?}; it may hold only lowercase letters, digits, `.`, `-` and `_`"
    )]
    BadTrustDomainChar {
        /// The offending character.
        ch: char,
    },
    /// A port (`:8443`) in the trust domain.
    #[error("a SPIFFE ID has no port")]
    Port,
    /// User info (`user@`) in the trust domain.
    #[error("a SPIFFE ID has no user info (`user@`)")]
    UserInfo,
    /// An empty path segment (`//`) or a trailing `/`.
    #[error("the path has an empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    /// A `.` or `..` path segment.
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    /// A path holds only letters, digits, `.`, `-` and `_` between slashes.
    #[error(
        "the path has {ch:?}; a segment may hold only letters, digits, `.`, `-` and `_` (no percent-encoding)"
    )]
    BadPathChar {
        /// The offending character.
        ch: char,
    },
    /// A `?query`.
    #[error("a SPIFFE ID has no query (`?`)")]
    Query,
    /// A `#fragment`.
    #[error("a SPIFFE ID has no fragment (`#`)")]
    Fragment,
}

/// Why a rule could not be read or used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The rule text is empty.
    #[error("an allow rule cannot be empty")]
    Empty,
    /// Not one of the rule forms.
    #[error(
        "{rule:?} is not an allow rule; write `spiffe://TD/PATH`, `spiffe://TD/**`, `dns:NAME`, `dns:*.SUFFIX` or `cn:NAME`"
    )]
    UnknownForm {
        /// The rule as written.
        rule: String,
    },
    /// A SPIFFE rule whose ID or trust domain breaks the SPIFFE rules.
    #[error("{rule:?} is not a valid SPIFFE rule: {reason}")]
    Spiffe {
        /// The rule as written.
        rule: String,
        /// What is wrong with the ID.
        reason: SpiffeIdError,
    },
    /// A misplaced `*` or `**` in a SPIFFE path pattern.
    #[error(
        "{rule:?} is not a valid SPIFFE pattern: `*` must be a whole segment and `**` may only be the last one"
    )]
    Pattern {
        /// The rule as written.
        rule: String,
    },
    /// A DNS rule that is not a valid name or single-label wildcard.
    #[error(
        "{rule:?} is not a valid DNS rule: {reason} (write `dns:api.example.com` or `dns:*.svc.cluster.local`)"
    )]
    Dns {
        /// The rule as written.
        rule: String,
        /// What is wrong with the name.
        reason: &'static str,
    },
    /// A CN rule on a policy that did not opt in to legacy CN matching.
    #[error(
        "{rule:?} matches the subject CN, which any CA may put in any certificate; CN rules are off unless you call `.dangerous().allow_legacy_cn()` on the builder (better: give the certificate a SAN)"
    )]
    CnNotEnabled {
        /// The rule as written.
        rule: String,
    },
}
