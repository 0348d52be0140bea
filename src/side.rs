//! The two sides of a connection, as type parameters: [`Server`] and
//! [`Client`]. [`ServerTls`](crate::ServerTls) is [`Mtls<Server>`](crate::Mtls),
//! [`ClientTls`](crate::ClientTls) is `Mtls<Client>`; what the two share
//! (the config, events, counters, reloads) is written once for both, and
//! what differs is in the type: each side's session state, its role, its
//! name in events.

use std::fmt;

use crate::error::Error;
use crate::material::Role;
use crate::session::{ClientSessions, Resumption, ServerSessions};

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

impl sealed::Sealed for Server {
    type Sessions = ServerSessions;
    const ROLE: Role = Role::Server;

    fn fresh_sessions(resumption: Resumption, _epoch: u64) -> Result<ServerSessions, Error> {
        ServerSessions::fresh(resumption)
    }
}

impl sealed::Sealed for Client {
    type Sessions = ClientSessions;
    const ROLE: Role = Role::Client;

    fn fresh_sessions(resumption: Resumption, epoch: u64) -> Result<ClientSessions, Error> {
        Ok(ClientSessions::fresh(resumption, epoch))
    }
}

mod sealed {
    // Public in a private module: `Side` can be named and used as a bound
    // everywhere, but implemented only here; what differs between the two
    // sides inside meshtls lives here, out of the public API.
    #[allow(unnameable_types)]
    pub trait Sealed {
        /// Session state of one policy epoch on this side.
        type Sessions: Send + Sync + 'static;
        /// Which side a service's own certificate serves.
        const ROLE: crate::material::Role;
        /// Session state for a new policy epoch.
        fn fresh_sessions(
            resumption: crate::session::Resumption,
            epoch: u64,
        ) -> Result<Self::Sessions, crate::error::Error>;
    }
}
