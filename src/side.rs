//! The two sides of a connection, as type parameters: [`Server`] and
//! [`Client`]. [`ServerTls`](crate::ServerTls) is [`Mtls<Server>`](crate::Mtls),
//! [`ClientTls`](crate::ClientTls) is `Mtls<Client>`; what the two share
//! (the config, events, counters, reloads) is written once for both.

use std::fmt;

/// A side of a connection: [`Server`] or [`Client`]. Sealed: meshtls has
/// exactly these two.
pub trait Side: sealed::Sealed + Send + Sync + 'static {
    /// The rustls config this side hands to frameworks.
    type Config: fmt::Debug + Send + Sync + 'static;
}

/// The server side: accepts connections, requires a client certificate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Server {}

/// The client side: connects, presents a client certificate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Client {}

impl Side for Server {
    type Config = rustls::ServerConfig;
}

impl Side for Client {
    type Config = rustls::ClientConfig;
}

mod sealed {
    // Public in a private module: `Side` can be named and used as a bound
    // everywhere, but implemented only here.
    #[allow(unnameable_types)]
    pub trait Sealed {}
    impl Sealed for super::Server {}
    impl Sealed for super::Client {}
}
