//! Session state of one policy epoch, on each side, and what the judgment
//! can see of it.
//!
//! rustls hands its session hooks opaque bytes with no connection context,
//! and does not run the verifiers on a resumed TLS 1.3 session. What meshtls
//! can see:
//!
//! - **Server.** The ticket plaintext (and the stateful cache's value) is
//!   rustls's encoding of the session, which carries the client's chain
//!   verbatim. [`client_chain`] finds it, so the server judges the client
//!   when a ticket is sealed and again when it is opened. This leans on
//!   rustls 0.23's encoding, behind a tripwire (`tripwire.rs`): before a
//!   server offers resumption, this build's rustls seals one session in
//!   memory and the chain must be found in it, or the server turns
//!   resumption off, loudly. A chain that cannot be found is a refusal (no
//!   ticket, no resumption).
//! - **Client.** A stored ticket does not say which server it came from
//!   (rustls keeps that crate-private). [`ClientSessions`] therefore stores a
//!   ticket only for a server name that passed the full judgment in this
//!   epoch, and drops it once that verdict's time is up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rustls::NamedGroup;
use rustls::client::Tls13ClientSessionValue;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls_pki_types::{CertificateDer, ServerName};

use crate::error::Error;
use crate::hardening;
use crate::judge::Holds;

mod tripwire;

#[cfg(test)]
pub(crate) use tripwire::BROKEN_READER;
pub(crate) use tripwire::session_format;

/// How TLS 1.3 sessions may be resumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resumption {
    /// Stateless tickets (server) / a ticket store (client). The default.
    /// Ticket keys belong to the policy epoch: a change of roots, CRLs or
    /// allow-list makes earlier tickets useless, and every ticket is judged
    /// again when it is used.
    #[default]
    Tickets,
    /// A server-side session cache instead of tickets (server only; a client
    /// treats it as `Tickets`). Also dropped on a policy change.
    Stateful,
    /// No resumption: every handshake is a full one.
    Disabled,
}

/// Session state of one policy epoch on the server. (Public only as the
/// server's sealed side state.)
#[allow(unreachable_pub, unnameable_types)]
#[derive(Debug)]
pub enum ServerSessions {
    Tickets(Arc<dyn ProducesTickets>),
    Stateful(Arc<ServerSessionMemoryCache>),
    Disabled,
}

impl ServerSessions {
    pub(crate) fn fresh(choice: Resumption) -> Result<Self, Error> {
        Ok(match choice {
            Resumption::Tickets => Self::Tickets(hardening::ticketer()?),
            Resumption::Stateful => Self::Stateful(ServerSessionMemoryCache::new(4096)),
            Resumption::Disabled => Self::Disabled,
        })
    }
}

/// The client's chain (leaf, intermediates) in a session value rustls 0.23
/// made: an SNI flag (and the name), version, cipher suite, the secret, the
/// extended-master-secret flag, then a flag and the chain as a u24 list of
/// u24-length certificates, then ALPN, application data, the creation time
/// and the age offset, and nothing after. Any other layout is `None`.
pub(crate) fn client_chain(plain: &[u8]) -> Option<(CertificateDer<'_>, Vec<CertificateDer<'_>>)> {
    let mut r = Reader(plain);
    if r.flag()? {
        let len = r.u8()?;
        r.take(usize::from(len))?;
    }
    r.take(2 + 2)?; // version, cipher suite
    let secret = r.u8()?;
    r.take(usize::from(secret))?;
    r.flag()?; // extended master secret
    if !r.flag()? {
        return None;
    }
    let list_len = r.u24()?;
    let mut list = Reader(r.take(list_len)?);
    let mut certs = Vec::new();
    while !list.0.is_empty() {
        let len = list.u24()?;
        certs.push(CertificateDer::from(list.take(len)?));
    }
    if r.flag()? {
        let alpn = r.u8()?;
        r.take(usize::from(alpn))?;
    }
    let app_data = r.u16()?;
    r.take(app_data)?;
    r.take(8 + 4)?; // creation time, age offset
    if !r.0.is_empty() {
        return None;
    }
    let mut certs = certs.into_iter();
    let leaf = certs.next()?;
    Some((leaf, certs.collect()))
}

/// Reads rustls's encoding: big-endian lengths, nothing read past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// A presence flag: 0 or 1, nothing else.
    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// How many server names a client remembers tickets for, and how many
/// tickets per name (as rustls's own store).
const CLIENT_NAMES: usize = 32;
const TICKETS_PER_NAME: usize = 8;

/// The client's session store of one policy epoch (`None`: disabled).
/// (Public only as the client's sealed side state.)
#[allow(unreachable_pub, unnameable_types)]
pub struct ClientSessions {
    store: Option<Mutex<ClientStore>>,
    /// The epoch: only its verdicts let a ticket be kept or used.
    epoch: u64,
}

#[derive(Default)]
pub(crate) struct ClientStore {
    names: HashMap<ServerName<'static>, Named>,
    /// Names in the order first stored, for eviction.
    order: VecDeque<ServerName<'static>>,
}

#[derive(Default)]
struct Named {
    kx_hint: Option<NamedGroup>,
    /// A server of this name passed the full judgment in this epoch, and
    /// when that verdict holds.
    verified: Option<Holds>,
    /// Oldest first, each with the verdict it was stored under.
    tickets: VecDeque<(Tls13ClientSessionValue, Holds)>,
}

impl ClientSessions {
    pub(crate) fn fresh(choice: Resumption, epoch: u64) -> Self {
        Self {
            store: match choice {
                Resumption::Disabled => None,
                Resumption::Tickets | Resumption::Stateful => Some(Mutex::default()),
            },
            epoch,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ClientStore) -> T) -> Option<T> {
        let store = self.store.as_ref()?;
        Some(f(&mut store.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// A server of `name` passed the full judgment, with this verdict.
    pub(crate) fn verified(&self, name: &ServerName<'_>, holds: Holds) {
        self.with(|s| s.named(name).verified = Some(holds));
    }

    pub(crate) fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(|s| s.named(&name).kx_hint = Some(group));
    }

    pub(crate) fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|s| s.names.get(name).and_then(|n| n.kx_hint))
            .flatten()
    }

    /// Keeps a ticket only for a name that passed the full judgment in this
    /// epoch, while that verdict holds at `now` (Unix seconds).
    pub(crate) fn insert(
        &self,
        name: ServerName<'static>,
        value: Tls13ClientSessionValue,
        now: u64,
    ) {
        let epoch = self.epoch;
        self.with(|s| {
            let Some(named) = s.names.get_mut(&name) else {
                return;
            };
            match named.verified {
                Some(holds) if holds.at(epoch, now) => {
                    if named.tickets.len() >= TICKETS_PER_NAME {
                        named.tickets.pop_front();
                    }
                    named.tickets.push_back((value, holds));
                }
                _ => tracing::debug!(
                    server = ?name,
                    "ticket dropped: no server of this name passed the current policy"
                ),
            }
        });
    }

    /// The newest ticket whose verdict still holds at `now` (Unix seconds).
    pub(crate) fn take(
        &self,
        name: &ServerName<'static>,
        now: u64,
    ) -> Option<Tls13ClientSessionValue> {
        let epoch = self.epoch;
        self.with(|s| {
            let named = s.names.get_mut(name)?;
            while let Some((value, holds)) = named.tickets.pop_back() {
                if holds.at(epoch, now) {
                    return Some(value);
                }
            }
            None
        })
        .flatten()
    }
}

impl ClientStore {
    fn named(&mut self, name: &ServerName<'_>) -> &mut Named {
        if !self.names.contains_key(name) {
            if self.names.len() >= CLIENT_NAMES
                && let Some(oldest) = self.order.pop_front()
            {
                self.names.remove(&oldest);
            }
            self.order.push_back(name.to_owned());
        }
        self.names.entry(name.to_owned()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tripwire at work: a server built where rustls's encoding cannot
    /// be read offers no resumption (no tickets, no cache) and says so; one
    /// built where it can offers tickets. (`tripwire.rs` pins the encoding
    /// itself against this build's rustls.)
    #[cfg(feature = "dev")]
    #[test]
    fn a_server_turns_resumption_off_when_the_encoding_cannot_be_read() {
        let root = crate::dev::DevCa::new("tripwire root").unwrap();
        let cert = root.leaf().dns("localhost").server().issue().unwrap();
        let pem = crate::source::Source::pem;
        let build = || {
            crate::ServerTls::builder()
                .identity(pem("s.crt", cert.chain_pem()), pem("s.key", cert.key_pem()))
                .client_roots(pem("ca", root.cert_pem()))
                .dangerous()
                .allow_any_authenticated()
                .build()
                .unwrap()
        };
        let working = build();
        assert!(working.config().ticketer.enabled());
        assert!(!working.stats().resumption_off);

        BROKEN_READER.with(|b| b.set(true));
        let broken = build();
        BROKEN_READER.with(|b| b.set(false));
        let config = broken.config();
        assert!(!config.ticketer.enabled(), "tickets offered");
        assert_eq!(config.send_tls13_tickets, 0);
        assert!(!config.session_storage.can_cache(), "a session cache");
        assert!(broken.stats().resumption_off);
    }

    #[test]
    fn malformed_session_values_hold_no_chain() {
        assert!(client_chain(&[]).is_none());
        assert!(client_chain(&[2]).is_none());
        // No SNI, version, suite, empty secret, no EMS, no client chain.
        let no_chain = [0, 3, 4, 19, 2, 0, 0, 0];
        assert!(client_chain(&no_chain).is_none());
        // A chain whose length runs past the end.
        let mut long = vec![0, 3, 4, 19, 2, 0, 0, 1, 0xff, 0xff, 0xff];
        long.extend([0; 10]);
        assert!(client_chain(&long).is_none());
    }

    #[test]
    fn a_well_formed_value_yields_its_chain() {
        let mut v = vec![1, 3, b'a', b'.', b'b']; // SNI "a.b"
        v.extend([3, 4, 19, 2]); // TLS 1.3, suite
        v.extend([2, 9, 9]); // secret
        v.push(0); // no EMS
        v.push(1); // a client chain: two certificates
        v.extend([0, 0, 11, 0, 0, 3, 1, 2, 3, 0, 0, 2, 4, 5]);
        v.push(0); // no ALPN
        v.extend([0, 1, 7]); // application data
        v.extend([0; 12]);
        let (leaf, rest) = client_chain(&v).unwrap();
        assert_eq!(leaf.as_ref(), [1, 2, 3]);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].as_ref(), [4, 5]);
        v.push(0);
        assert!(client_chain(&v).is_none(), "trailing bytes");
    }
}
