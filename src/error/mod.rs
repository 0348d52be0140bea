//! Errors: what went wrong, as data to match on. Each names the file, the
//! certificate and the rule involved, and says how to fix it.
//!
//! [`Error`] is what building and reloading return, with the reason nested
//! inside ([`MaterialError`], [`ConfigError`], `Pkcs12Error`); a refused
//! handshake is a [`HandshakeError`] with its [`RejectReason`]. The three
//! are also at the crate root. (This module is the crate's ground floor: it
//! imports no other module of it.)

mod handshake;
mod material;
mod rules;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use handshake::describe_webpki;
pub use handshake::{HandshakeError, RejectReason};
#[cfg(feature = "pkcs12")]
pub use material::Pkcs12Error;
pub use material::{MaterialError, MaterialKind, Origin, Usage};
pub use rules::{RuleError, SpiffeIdError};

/// Everything that can go wrong building or reloading a meshtls config.
///
/// The reason is nested, as rustls nests its errors: match on the outer
/// variant for the class, on the inner enum for the specifics. Every message
/// names the file and says how to fix it. `Clone`, so one error can go to the
/// caller and to the events alike.
///
/// ```
/// # fn check(e: &meshtls::Error) {
/// use meshtls::Error;
/// use meshtls::error::MaterialError;
/// match e {
///     Error::Material(MaterialError::Expired { origin, .. }) => eprintln!("renew {origin}"),
///     Error::Config(c) => eprintln!("fix the code: {c}"),
///     other => eprintln!("{other}"),
/// }
/// # }
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or in-memory source holds something meshtls cannot serve.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// A PKCS#12 keystore or truststore that cannot be used.
    #[cfg(feature = "pkcs12")]
    #[error(transparent)]
    Pkcs12(#[from] Pkcs12Error),
    /// A configuration the builder refuses (the code, not the files).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// rustls refused the configuration (should not happen; please report).
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[source] rustls::Error),
    /// The file watcher could not start.
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        /// The directory (or `.` for the watcher thread).
        path: PathBuf,
        /// What failed (shared, so the error can be cloned).
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Material did not become valid in time (see `wait_for_files`).
    #[error("the TLS files were not ready after {waited:?}; last problem: {last}")]
    NotReady {
        /// How long meshtls waited.
        waited: Duration,
        /// The last error seen.
        last: Box<Self>,
    },
}

impl From<RuleError> for Error {
    fn from(e: RuleError) -> Self {
        Self::Config(ConfigError::Rule(e))
    }
}

/// A configuration the builder refuses: something to change in the code
/// that builds meshtls, not in the files.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No allow-list and no explicit opt-out.
    #[error(
        "no allow-list: call `.allow(Allow::...)` with the peer identities that may connect, or `.dangerous().allow_any_authenticated()` to admit any peer your CA signed"
    )]
    NoAllowList,
    /// A malformed or refused allow rule.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Expected servers set on a client built to check the dialled name.
    #[error(
        "this client verifies the dialled name; build it with `expect_server()` to use identity rules"
    )]
    NotBuiltWithRules,
    /// No usable X509-SVID came from the SPIFFE Workload API in time.
    #[error(
        "no usable X509-SVID from the SPIFFE Workload API at {endpoint} within {waited:?}: {detail} (is the agent running, is SPIFFE_ENDPOINT_SOCKET or the endpoint right, and is this workload registered?)"
    )]
    WorkloadApi {
        /// The endpoint tried.
        endpoint: String,
        /// How long it was waited for.
        waited: Duration,
        /// What went wrong last.
        detail: String,
    },
    /// Roots were given for something that is not a trust domain.
    #[error(
        "roots for {given:?}: not a trust domain ({source}); give it as `prod.example` (or `spiffe://prod.example`, no path)"
    )]
    TrustDomain {
        /// What was given.
        given: String,
        /// Why it is not one.
        source: SpiffeIdError,
    },
}

/// What a caught panic said, bounded and escaped.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic with no message)");
    untrusted(text)
}

/// Text taken from a certificate that may not have been verified, made safe
/// for a log line: control characters escaped, and cut after 128 characters.
pub(crate) fn untrusted(text: &str) -> String {
    const MAX_CHARS: usize = 128;
    let mut out = String::with_capacity(text.len().min(MAX_CHARS + 16));
    for (i, ch) in text.chars().enumerate() {
        if i == MAX_CHARS {
            out.push_str(&format!("...({} bytes)", text.len()));
            break;
        }
        // Control characters, and the invisible ones that reorder or hide
        // text (bidi overrides and isolates, zero-width marks, BOM): a
        // name or path a peer chose must read as what it is.
        if ch.is_control()
            || matches!(ch, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
        {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

fn found_note(found: &[String]) -> String {
    if found.is_empty() {
        String::new()
    } else {
        format!(" (found: {})", found.join(", "))
    }
}

/// Formats a time as RFC 3339 UTC (`2026-11-24T08:06:44Z`).
pub(crate) fn fmt_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn untrusted_text_is_escaped_and_bounded() {
        assert_eq!(untrusted("api.example"), "api.example");
        assert_eq!(untrusted("a\nb\u{1b}[0m"), "a\\nb\\u{1b}[0m");
        let long = "x".repeat(10_000);
        let shown = untrusted(&long);
        assert!(shown.len() < 160, "{shown}");
        assert!(shown.ends_with("...(10000 bytes)"), "{shown}");
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(fmt_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_507_604);
        assert_eq!(fmt_time(t), "2026-11-24T08:06:44Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(fmt_time(leap), "2000-02-29T00:00:00Z");
    }
}
