//! Finding the typed refusal inside an error from any stack: reqwest, hyper,
//! tonic and plain I/O errors bury the TLS alert or meshtls's own
//! [`HandshakeError`] several `source()`s deep (and `std::io::Error` hides its
//! inner error from `source()` altogether).
//!
//! Only transport-layer errors are believed: a `rustls::Error`, meshtls's
//! [`HandshakeError`], and the I/O error an HTTP/2 connection (h2) kept as
//! words (in an `h2::Error`, or held by a `hyper::Error` of the connection). Text an application or a peer chose (a gRPC status message, an
//! HTTP body, a GOAWAY's debug data, any error's `Display`) is never read
//! as a verdict, whatever it says.

use std::error::Error as StdError;
use std::fmt;

use rustls::AlertDescription;

use crate::error::{HandshakeError, RejectReason};
use crate::judge::{from_alert, from_tls, known_alerts};

/// Who refused the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusedBy {
    /// This side refused the peer (its certificate, identity or protocol).
    Us,
    /// The peer refused us, with a TLS alert: the reason then says what the
    /// alert means about *our* certificate or identity.
    Peer,
}

/// A refused handshake found in an error chain by [`refused`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refused {
    /// Why, as a class. When the peer refused, read it as said of our side:
    /// `NotAllowed` means the peer's allow-list does not admit us, `Revoked`
    /// that our certificate is revoked in the peer's CRL, `UnknownIssuer`
    /// that the peer does not trust our CA.
    pub reason: RejectReason,
    /// Who refused.
    pub by: RefusedBy,
    /// The alert the peer sent, when it refused.
    pub alert: Option<AlertDescription>,
    /// The words of the innermost error that said it.
    pub detail: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.by, self.alert) {
            (RefusedBy::Peer, Some(alert)) => write!(
                f,
                "the peer refused us ({}, alert {alert:?}): {}",
                self.reason, self.detail
            ),
            _ => write!(f, "we refused the peer ({}): {}", self.reason, self.detail),
        }
    }
}

/// The refusal behind `error`, if a TLS handshake was refused somewhere in
/// its chain: by meshtls on this side (a [`HandshakeError`], a certificate
/// our verifier refused), or by the peer (a fatal TLS alert).
///
/// Works on errors from reqwest, hyper, tonic (`tonic::Status` and
/// `tonic::transport::Error`), tokio-rustls and meshtls itself. In TLS 1.3 a
/// server refuses a client's certificate *after* the client's handshake is
/// done, so a client sees the refusal on its first request, not on connect.
///
/// Only the transport's own errors count: rustls's, meshtls's, and the I/O
/// error an HTTP/2 connection kept (h2 keeps only its kind and words, in an
/// `h2::Error` or a `hyper::Error`; read with the `tonic` or `axum`
/// feature). A status message, a body, a GOAWAY's
/// debug data or any other text that quotes an alert is not a refusal.
///
/// ```no_run
/// # async fn call(client: reqwest::Client) {
/// match client.get("https://billing.internal/").send().await {
///     Ok(response) => println!("{}", response.status()),
///     Err(e) => match meshtls::refused(&e) {
///         Some(refused) => eprintln!("mTLS: {refused}"), // e.g. NotAllowed by the peer
///         None => eprintln!("request failed: {e}"),
///     },
/// }
/// # }
/// ```
#[must_use]
pub fn refused(error: &(dyn StdError + 'static)) -> Option<Refused> {
    let mut next = Some(error);
    let mut words = None;
    // Whether `next` is what a transport-layer error (hyper's) holds.
    let mut from_transport = false;
    // Bounded: a chain that loops must not hang the caller.
    for _ in 0..32 {
        let Some(e) = next else {
            break;
        };
        // A peer's alert or a broken connection: the specifics are deeper.
        if let Some(h) = e.downcast_ref::<HandshakeError>()
            && !matches!(h.reason(), RejectReason::RefusedByPeer | RejectReason::Io)
        {
            return Some(Refused {
                reason: h.reason(),
                by: RefusedBy::Us,
                alert: None,
                detail: h.detail().to_owned(),
            });
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(match tls {
                rustls::Error::AlertReceived(alert) => Refused {
                    reason: from_alert(*alert),
                    by: RefusedBy::Peer,
                    alert: Some(*alert),
                    detail: tls.to_string(),
                },
                other => Refused {
                    reason: from_tls(other),
                    by: RefusedBy::Us,
                    alert: None,
                    detail: other.to_string(),
                },
            });
        }
        words = words.or_else(|| transport_words(e, from_transport));
        from_transport = holds_transport_io(e);
        // `io::Error::source()` skips the error it wraps: look inside.
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    // HTTP/2 (h2, so tonic) keeps an I/O error only as its kind and words:
    // rustls's "received fatal alert: AccessDenied" is all that is left.
    words
}

/// A peer's alert in the words a transport-layer error kept of it. HTTP/2
/// (h2) keeps the I/O error of its connection only as its kind and the
/// words of the error it wrapped, as an `h2::Error`, or as the I/O error
/// that a `hyper::Error` holds. Nothing else is read: h2's other errors
/// carry text the peer chose (a GOAWAY's debug data), and an I/O error
/// anywhere else may be an application's.
#[cfg(any(feature = "tonic", feature = "axum"))]
fn transport_words(e: &(dyn StdError + 'static), from_transport: bool) -> Option<Refused> {
    let io = match e.downcast_ref::<h2::Error>() {
        Some(h2) => h2.get_io()?,
        None if from_transport => e.downcast_ref::<std::io::Error>()?,
        None => return None,
    };
    // tokio-rustls and rustls wrap a TLS error as `InvalidData`.
    if io.kind() != std::io::ErrorKind::InvalidData {
        return None;
    }
    alert_in_words(&io.to_string())
}

/// Whether `e` is an error of the connection (not of the application's
/// body or request) whose source is the connection's own I/O error.
#[cfg(any(feature = "tonic", feature = "axum"))]
fn holds_transport_io(e: &(dyn StdError + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(|h| !h.is_user())
}

/// Without HTTP/2 support, there are no kept words to read.
#[cfg(not(any(feature = "tonic", feature = "axum")))]
fn transport_words(_: &(dyn StdError + 'static), _: bool) -> Option<Refused> {
    None
}

/// Without HTTP/2 support, there are no kept words to read.
#[cfg(not(any(feature = "tonic", feature = "axum")))]
fn holds_transport_io(_: &(dyn StdError + 'static)) -> bool {
    false
}

/// A peer's alert, from rustls's words for it: exactly the text of
/// `rustls::Error::AlertReceived` ("received fatal alert: AccessDenied"),
/// nothing before it or after it.
#[cfg_attr(not(any(feature = "tonic", feature = "axum")), allow(dead_code))]
fn alert_in_words(text: &str) -> Option<Refused> {
    let name = text.strip_prefix("received fatal alert: ")?;
    let alert = known_alerts().find(|a| format!("{a:?}") == name)?;
    Some(Refused {
        reason: from_alert(alert),
        by: RefusedBy::Peer,
        alert: Some(alert),
        detail: format!("received fatal alert: {name}"),
    })
}
