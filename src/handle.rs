//! [`Mtls`]: what a server and a client share once built. One stable rustls
//! config with live insides, and the handles on them: events, counters,
//! reloads, the serving generation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::error::Error;
use crate::live::{Live, ReloadOutcome};
use crate::observe::{CertFacts, Event, Stats};
use crate::side::Side;

/// A mutual-TLS server ([`ServerTls`](crate::ServerTls)) or client
/// ([`ClientTls`](crate::ClientTls)): one stable rustls config whose
/// certificate, trust roots, CRLs, allow-list and session keys live inside
/// and can change without a restart. Cheap to clone.
pub struct Mtls<S: Side> {
    pub(crate) config: Arc<S::Config>,
    pub(crate) live: Arc<Live<S>>,
    pub(crate) handshake_timeout: Duration,
}

impl<S: Side> Clone for Mtls<S> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            live: self.live.clone(),
            handshake_timeout: self.handshake_timeout,
        }
    }
}

impl<S: Side> fmt::Debug for Mtls<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let generation = self.live.current();
        f.debug_struct("Mtls")
            .field("side", &self.live.observer().side())
            .field("generation", &generation.number)
            .field("serial", &generation.material.leaf.serial)
            .field("allow", &generation.epoch.policy)
            .finish_non_exhaustive()
    }
}

impl<S: Side> Mtls<S> {
    /// The rustls config, for any framework that takes one (axum-server,
    /// tonic, hyper-rustls, reqwest). The same `Arc` for the life of this
    /// value; what it serves and trusts follows reloads. See the
    /// [`reload`](crate::reload) module for what a bare config guarantees.
    #[must_use]
    pub fn config(&self) -> Arc<S::Config> {
        self.config.clone()
    }

    /// Events: reloads, refused reloads, expiry warnings, refused peers,
    /// live connections closed.
    ///
    /// A `tokio::sync::broadcast` receiver holding the last 256 events. A
    /// subscriber that falls further behind does not block meshtls: its
    /// next `recv()` returns `Err(RecvError::Lagged(n))`, saying `n` events
    /// were lost, and the one after that the oldest event still held. Keep
    /// reading after `Lagged` (a `while let Ok(..)` loop would stop for good);
    /// the counters in [`stats`](Self::stats) never lose anything.
    ///
    /// ```no_run
    /// # async fn log(server: meshtls::ServerTls) {
    /// use tokio::sync::broadcast::error::RecvError;
    /// let mut events = server.subscribe();
    /// loop {
    ///     match events.recv().await {
    ///         Ok(event) => eprintln!("{event}"),
    ///         Err(RecvError::Lagged(missed)) => eprintln!("{missed} events missed"),
    ///         Err(RecvError::Closed) => break,
    ///     }
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.observer().subscribe()
    }

    /// Counters: handshakes by outcome, reloads, certificate expiry.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.live.stats()
    }

    /// Reads the files again now (for a SIGHUP handler) and swaps in a new
    /// generation if they changed and are valid.
    ///
    /// # Errors
    ///
    /// Why the new material was refused; the previous generation keeps
    /// serving.
    pub fn reload(&self) -> Result<ReloadOutcome, Error> {
        self.live.reload()
    }

    /// Hands over new material (from Vault, a secret manager, an agent, the
    /// application's own code): validated with the rest of the serving
    /// material, all or nothing, and served, as a reload from disk is (see
    /// [`Update`](crate::Update)).
    ///
    /// # Errors
    ///
    /// Why the new material was refused (each names the pushed part and
    /// the fix, as for files), or a malformed trust domain; the previous
    /// generation keeps serving and nothing of the update is kept.
    pub fn update(&self, update: crate::Update) -> Result<ReloadOutcome, Error> {
        self.live.update(&update)
    }

    /// The serving generation's number (1 for the first).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.live.current().number
    }

    /// The certificate this side presents.
    #[must_use]
    pub fn certificate(&self) -> CertFacts {
        self.live.current().material.leaf.clone()
    }
}
