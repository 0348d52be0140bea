//! SPIFFE IDs and trust domains, parsed to the SPIFFE ID specification.

use std::fmt;
use std::str::FromStr;

use crate::error::SpiffeIdError;

/// The longest SPIFFE ID the specification allows, in bytes.
const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name the specification allows, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
pub(crate) const SCHEME: &str = "spiffe://";

/// A SPIFFE trust domain such as `prod.example`.
///
/// ```
/// use meshtls::TrustDomain;
/// let td: TrustDomain = "prod.example".parse()?;
/// assert_eq!(td.as_str(), "prod.example");
/// assert!("Prod.Example".parse::<TrustDomain>().is_err());
/// # Ok::<(), meshtls::error::SpiffeIdError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain's name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    /// Accepts a bare name (`prod.example`) or a SPIFFE ID with no path
    /// (`spiffe://prod.example`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.strip_prefix(SCHEME).unwrap_or(s);
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    for ch in td.chars() {
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            '?' => return Err(SpiffeIdError::Query),
            '#' => return Err(SpiffeIdError::Fragment),
            _ => return Err(SpiffeIdError::BadTrustDomainChar { ch }),
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    // `path` is empty or starts with '/'.
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        for ch in segment.chars() {
            match ch {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '?' => return Err(SpiffeIdError::Query),
                '#' => return Err(SpiffeIdError::Fragment),
                _ => return Err(SpiffeIdError::BadPathChar { ch }),
            }
        }
    }
    Ok(())
}

/// A SPIFFE ID such as `spiffe://prod.example/ns/billing/sa/api`, validated
/// against every rule of the SPIFFE ID specification.
///
/// ```
/// use meshtls::SpiffeId;
/// let id: SpiffeId = "spiffe://prod.example/ns/billing/sa/api".parse()?;
/// assert_eq!(id.trust_domain(), "prod.example");
/// assert_eq!(id.path(), "/ns/billing/sa/api");
/// assert_eq!(id.segments().collect::<Vec<_>>(), ["ns", "billing", "sa", "api"]);
///
/// assert!("spiffe://prod.example:8443/api".parse::<SpiffeId>().is_err());
/// assert!("spiffe://prod.example/a//b".parse::<SpiffeId>().is_err());
/// # Ok::<(), meshtls::error::SpiffeIdError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (the end of the trust domain).
    path_at: usize,
}

impl SpiffeId {
    /// The whole ID as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain: `prod.example` in `spiffe://prod.example/api`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_at]
    }

    /// The path, with its leading `/`, or `""` for the ID of a trust domain.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.id[self.path_at..]
    }

    /// The path segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone {
        self.path().split('/').skip(1)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: s.len() });
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let td_end = rest.find('/').unwrap_or(rest.len());
        check_trust_domain(&rest[..td_end])?;
        check_path(&rest[td_end..])?;
        Ok(Self {
            id: s.to_owned(),
            path_at: SCHEME.len() + td_end,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> SpiffeIdError {
        match s.parse::<SpiffeId>() {
            Ok(id) => panic!("{s} parsed as {id}"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_ids() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/a",
            "spiffe://a-b_c.9/ns/Prod/sa/api.v1-x_y",
            "spiffe://td/...x/..a",
        ] {
            assert_eq!(
                s.parse::<SpiffeId>().map(|i| i.to_string()),
                Ok(s.to_owned())
            );
        }
        let id: SpiffeId = "spiffe://td/a/b".parse().unwrap();
        assert_eq!(id.trust_domain(), "td");
        assert_eq!(id.path(), "/a/b");
        let root: SpiffeId = "spiffe://td".parse().unwrap();
        assert_eq!(root.path(), "");
        assert_eq!(root.segments().count(), 0);
    }

    #[test]
    fn scheme_rules() {
        assert_eq!(err(""), SpiffeIdError::Empty);
        assert_eq!(err("https://td/a"), SpiffeIdError::WrongScheme);
        assert_eq!(err("SPIFFE://td/a"), SpiffeIdError::WrongScheme);
        assert_eq!(err("spiffe:/td/a"), SpiffeIdError::WrongScheme);
        assert_eq!(err("td/a"), SpiffeIdError::WrongScheme);
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(err("spiffe://"), SpiffeIdError::EmptyTrustDomain);
        assert_eq!(err("spiffe:///a"), SpiffeIdError::EmptyTrustDomain);
        assert_eq!(
            err("spiffe://Example.org/a"),
            SpiffeIdError::BadTrustDomainChar { ch: 'E' }
        );
        assert_eq!(err("spiffe://td:8443/a"), SpiffeIdError::Port);
        assert_eq!(err("spiffe://user@td/a"), SpiffeIdError::UserInfo);
        assert_eq!(
            err("spiffe://t%41d/a"),
            SpiffeIdError::BadTrustDomainChar { ch: '%' }
        );
        assert_eq!(err("spiffe://td?x=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://td#x"), SpiffeIdError::Fragment);
        let long = format!("spiffe://{}", "a".repeat(256));
        assert_eq!(err(&long), SpiffeIdError::TrustDomainTooLong { len: 256 });
        assert!(
            format!("spiffe://{}", "a".repeat(255))
                .parse::<SpiffeId>()
                .is_ok()
        );
    }

    #[test]
    fn path_rules() {
        assert_eq!(err("spiffe://td/"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/a/"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td//a"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/a/./b"), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/a/.."), SpiffeIdError::DotSegment);
        assert_eq!(
            err("spiffe://td/a%20b"),
            SpiffeIdError::BadPathChar { ch: '%' }
        );
        assert_eq!(
            err("spiffe://td/a b"),
            SpiffeIdError::BadPathChar { ch: ' ' }
        );
        assert_eq!(err("spiffe://td/a?x=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://td/a#frag"), SpiffeIdError::Fragment);
        assert_eq!(err("spiffe://td/é"), SpiffeIdError::BadPathChar { ch: 'é' });
    }

    #[test]
    fn length_limit() {
        let ok = format!("spiffe://td/{}", "a".repeat(2048 - 12));
        assert_eq!(ok.len(), 2048);
        assert!(ok.parse::<SpiffeId>().is_ok());
        let long = format!("{ok}b");
        assert_eq!(err(&long), SpiffeIdError::TooLong { len: 2049 });
    }

    #[test]
    fn trust_domain_parse() {
        assert_eq!(
            "td.example".parse::<TrustDomain>().unwrap().as_str(),
            "td.example"
        );
        assert_eq!("spiffe://td".parse::<TrustDomain>().unwrap().as_str(), "td");
        assert!("spiffe://td/x".parse::<TrustDomain>().is_err());
        assert!("".parse::<TrustDomain>().is_err());
    }
}
