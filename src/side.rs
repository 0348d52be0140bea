//! The two sides of a connection, as type parameters: [`Server`] and
//! [`Client`]. [`ServerTls`](crate::ServerTls) is [`Mtls<Server>`](crate::Mtls),
//! [`ClientTls`](crate::ClientTls) is `Mtls<Client>`; what the two share
//! (the config, events, counters, reloads) is written once for both, and
//! what differs is in the type: each side's session state, its role, its
//! name in events.

use std::fmt;
use std::time::Duration;

use crate::error::Error;
use crate::judge::NameCheck;
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

/// What only a server's live state keeps for its life. (Public only as the
/// server's sealed side state.)
#[allow(unreachable_pub, unnameable_types)]
#[derive(Debug)]
pub struct ServerOnly {
    /// How long a peer may take to send its whole ClientHello.
    pub(crate) hello_timeout: Duration,
    /// Handshakes an `Incoming` keeps in flight before it sheds the oldest.
    pub(crate) max_pending_handshakes: usize,
}

/// What only a client's live state keeps for its life. (Public only as the
/// client's sealed side state.)
#[allow(unreachable_pub, unnameable_types)]
#[derive(Debug)]
pub struct ClientOnly {
    /// Whether servers are judged by expected identities or by the name
    /// dialled.
    pub(crate) name_check: NameCheck,
}

impl sealed::Sealed for Server {
    type Sessions = ServerSessions;
    type Only = ServerOnly;
    const ROLE: Role = Role::Server;

    fn judges_dialled_name(_: &ServerOnly) -> bool {
        false
    }

    fn fresh_sessions(resumption: Resumption, _epoch: u64) -> Result<ServerSessions, Error> {
        ServerSessions::fresh(resumption)
    }
}

impl sealed::Sealed for Client {
    type Sessions = ClientSessions;
    type Only = ClientOnly;
    const ROLE: Role = Role::Client;

    fn judges_dialled_name(only: &ClientOnly) -> bool {
        only.name_check == NameCheck::ServerName
    }

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
        /// What only this side keeps for the life of its live state.
        type Only: Send + Sync + 'static;
        /// Whether this side judges its peer by the name it dialled (a
        /// client built without expected identities) rather than by rules.
        fn judges_dialled_name(only: &Self::Only) -> bool;
        /// Which side a service's own certificate serves.
        const ROLE: crate::material::Role;
        /// Session state for a new policy epoch.
        fn fresh_sessions(
            resumption: crate::session::Resumption,
            epoch: u64,
        ) -> Result<Self::Sessions, crate::error::Error>;
    }
}
