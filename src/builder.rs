//! The builder both sides share. Its type walks you through the inputs that
//! cannot be defaulted (identity, then trust roots); `build()` and `watch()`
//! exist only once both are given, so forgetting one does not compile:
//!
//! ```compile_fail
//! // No trust roots: there is no `build()` to call.
//! let server = meshtls::ServerTls::builder()
//!     .identity_files("tls.crt", "tls.key")
//!     .dangerous()
//!     .allow_any_authenticated()
//!     .build();
//! ```

use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

use crate::allow::Allow;
use crate::clock::Clock;
use crate::error::Error;
use crate::handle::Mtls;
use crate::hardening::Hardening;
use crate::judge::RevocationScope;
use crate::live::{Fixed, Live};
use crate::material::Sources;
use crate::observe::Observer;
use crate::policy::Policy;
use crate::reload::{self, WatchSettings};
use crate::session::Resumption;
use crate::side::Side;
use crate::source::Source;
use crate::track::Closing;

/// The longest debounce or poll period taken; longer ones are cut to it.
const MAX_WATCH_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Builder state: the service's own certificate and key are still missing.
#[derive(Debug)]
pub struct NeedsIdentity(());

/// Builder state: the trust roots are still missing.
#[derive(Debug)]
pub struct NeedsRoots {
    cert: Source,
    key: Source,
}

/// Builder state: everything required is there; `build()` or `watch()`.
#[derive(Debug)]
pub struct Ready {
    cert: Source,
    key: Source,
    roots: Source,
}

/// Everything a builder collects beyond the required inputs.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) crls: Vec<Source>,
    pub(crate) rules: Vec<Allow>,
    pub(crate) any_authenticated: bool,
    pub(crate) legacy_cn: bool,
    pub(crate) hardening: Hardening,
    pub(crate) scope: RevocationScope,
    pub(crate) resumption: Resumption,
    pub(crate) alpn: Vec<Vec<u8>>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) watch: WatchSettings,
    pub(crate) expiry_warning: f64,
    pub(crate) closing: Closing,
    /// Roots per trust domain (SPIFFE federation), as given.
    pub(crate) domain_roots: Vec<(String, Source)>,
    pub(crate) hello_timeout: Duration,
    pub(crate) max_pending_handshakes: usize,
    /// The clock verdicts are reached by (the system clock by default).
    pub(crate) clock: Clock,
    /// Identity and roots from the SPIFFE Workload API.
    #[cfg(feature = "workload-api")]
    pub(crate) workload: Option<crate::workload::WorkloadApi>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            crls: Vec::new(),
            rules: Vec::new(),
            any_authenticated: false,
            legacy_cn: false,
            hardening: Hardening::default(),
            scope: RevocationScope::default(),
            resumption: Resumption::default(),
            alpn: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            watch: WatchSettings::default(),
            expiry_warning: 1.0 / 3.0,
            closing: Closing::default(),
            domain_roots: Vec::new(),
            hello_timeout: Duration::from_secs(3),
            max_pending_handshakes: 8192,
            clock: Clock::system(),
            #[cfg(feature = "workload-api")]
            workload: None,
        }
    }
}

impl Settings {
    /// Compiles the rules; `None` when there are none.
    pub(crate) fn policy(&self) -> Result<Option<Policy>, Error> {
        if self.any_authenticated {
            return Ok(Some(Policy::any_authenticated()));
        }
        if self.rules.is_empty() {
            return Ok(None);
        }
        Ok(Some(Policy::compile(
            self.rules.iter().cloned(),
            self.legacy_cn,
        )?))
    }
}

/// The options that weaken security, reached through
/// [`Builder::dangerous`]; each returns the builder.
#[must_use]
#[derive(Debug)]
pub struct Dangerous<Side, State>(pub(crate) Builder<Side, State>);

impl<Side, State> Dangerous<Side, State> {
    /// Accept `cn:` rules, which match the subject CN of certificates without
    /// any SAN. Weaker than SAN rules: a CN is free text that no verifier
    /// constrains (see [`Allow::cn`]).
    pub fn allow_legacy_cn(mut self) -> Builder<Side, State> {
        self.0.settings.legacy_cn = true;
        self.0
    }

    /// Also offer TLS13_AES_128_GCM_SHA256, after the 256-bit suites.
    /// (Default: AES-256-GCM and ChaCha20-Poly1305 only.)
    pub fn allow_aes128_gcm(mut self) -> Builder<Side, State> {
        self.0.settings.hardening.aes128 = true;
        self.0
    }

    /// Offer classical key exchange only (X25519, P-256, P-384), without the
    /// post-quantum hybrid X25519MLKEM768 that is offered first by default:
    /// sessions recorded today could then be read by a quantum computer
    /// later. For peers or middleboxes that choke on the larger key share.
    pub fn classical_key_exchange_only(mut self) -> Builder<Side, State> {
        self.0.settings.hardening.classical_kx = true;
        self.0
    }

    /// Judge by `clock` instead of the system clock: every verdict, verdict
    /// deadline, CRL freshness check, ticket age and live-connection
    /// wake-up reads it. For tests and simulations, with a
    /// [`ManualClock`](crate::ManualClock); a clock that runs late admits
    /// expired certificates and stale CRLs.
    ///
    /// ```
    /// # fn f(b: meshtls::ServerTlsBuilder<meshtls::Ready>) {
    /// let time = meshtls::ManualClock::new(std::time::SystemTime::now());
    /// let builder = b.dangerous().clock(time.clock());
    /// // ... build, then time.advance(..) moves every verdict along.
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn clock(mut self, clock: Clock) -> Builder<Side, State> {
        self.0.settings.clock = clock;
        self.0
    }
}

impl<S: Side> Builder<S, Ready> {
    /// Validates the material, then builds the live state and, around it,
    /// this side's rustls config with `config`.
    pub(crate) fn finish(
        &self,
        only: S::Only,
        policy: Policy,
        config: impl FnOnce(&Arc<Live<S>>, Arc<CryptoProvider>, &Settings) -> Result<S::Config, Error>,
    ) -> Result<Mtls<S>, Error> {
        for (given, _) in &self.settings.domain_roots {
            if let Err(source) = given.parse::<crate::spiffe::TrustDomain>() {
                return Err(crate::error::ConfigError::TrustDomain {
                    given: given.clone(),
                    source,
                }
                .into());
            }
        }
        let fixed = self.fixed();
        // With the Workload API, its first response is the material; the
        // stream's thread feeds the live state from then on.
        #[cfg(feature = "workload-api")]
        let started = match &self.settings.workload {
            Some(api) => {
                let started = crate::workload::start(api)?;
                let sources = started.first.apply(&fixed.sources.load())?;
                fixed.sources.store(Arc::new(sources));
                Some(started)
            }
            None => None,
        };
        let provider = fixed.provider.clone();
        let live = Live::new(fixed, only, policy, Observer::new(S::ROLE.name()))?;
        #[cfg(feature = "workload-api")]
        if let Some(started) = started {
            live.observer().workload_api_up(false);
            let guard = started.attach(Box::new(crate::live::Following(Arc::downgrade(&live))));
            live.hold(guard);
        }
        let config = Arc::new(config(&live, provider, &self.settings)?);
        Ok(Mtls {
            config,
            live,
            handshake_timeout: self.settings.handshake_timeout,
        })
    }

    /// Builds with `make` once the files are valid (waiting as
    /// `wait_for_files` says), then watches them.
    pub(crate) fn watching(
        self,
        make: impl Fn(&Self) -> Result<Mtls<S>, Error>,
    ) -> Result<Mtls<S>, Error> {
        let built = reload::wait_until_valid(&self.settings.watch, || make(&self))?;
        reload::start(&built.live, &self.settings.watch)?;
        Ok(built)
    }
}

/// Builds a [`ServerTls`](crate::ServerTls) or [`ClientTls`](crate::ClientTls).
///
/// Start from `ServerTls::builder()` or `ClientTls::builder()`. The required
/// inputs come first, in order (identity, then trust roots); the options may
/// come at any point.
#[must_use]
#[derive(Debug)]
pub struct Builder<Side, State> {
    pub(crate) settings: Settings,
    pub(crate) state: State,
    side: PhantomData<fn() -> Side>,
}

#[cfg(feature = "workload-api")]
impl<Side> Builder<Side, NeedsIdentity> {
    /// Identity and trust roots from the SPIFFE Workload API (a SPIRE
    /// agent): the SVID is this side's certificate, each trust domain's
    /// bundle (its own and federated ones) that trust domain's roots, all
    /// followed as the agent streams them (see the
    /// [`workload`](crate::workload) module). Building waits for the first
    /// SVID (30 s by default; [`WorkloadApi::wait_for_agent`](crate::WorkloadApi::wait_for_agent)).
    pub fn workload_api(mut self, api: crate::workload::WorkloadApi) -> Builder<Side, Ready> {
        self.settings.workload = Some(api);
        self.identity(
            Source::pem("the SPIFFE Workload API's SVID", Vec::new()),
            Source::pem("the SPIFFE Workload API's SVID key", Vec::new()),
        )
        .roots(Source::pem(NO_FLAT_ROOTS, Vec::new()))
    }
}

impl<Side> Builder<Side, NeedsIdentity> {
    pub(crate) fn new() -> Self {
        Self {
            settings: Settings::default(),
            state: NeedsIdentity(()),
            side: PhantomData,
        }
    }

    /// The service's certificate chain (leaf first) and private key, as PEM
    /// files. Both are read again on every reload.
    pub fn identity_files(
        self,
        cert_chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Builder<Side, NeedsRoots> {
        self.identity(Source::file(cert_chain), Source::file(key))
    }

    /// The service's certificate chain and private key from any [`Source`].
    pub fn identity(self, cert_chain: Source, key: Source) -> Builder<Side, NeedsRoots> {
        Builder {
            settings: self.settings,
            state: NeedsRoots {
                cert: cert_chain,
                key,
            },
            side: PhantomData,
        }
    }
}

#[cfg(feature = "pkcs12")]
impl<Side> Builder<Side, NeedsIdentity> {
    /// The service's certificate chain and key from a PKCS#12 keystore holding
    /// one key entry. For a keystore with several, use
    /// [`identity_keystore`](Self::identity_keystore) with
    /// [`Source::alias`].
    pub fn identity_pkcs12(
        self,
        path: impl Into<PathBuf>,
        password: impl Into<String>,
    ) -> Builder<Side, NeedsRoots> {
        self.identity_keystore(Source::pkcs12_file(path, password))
    }

    /// The service's certificate chain and key from one keystore source.
    pub fn identity_keystore(self, keystore: Source) -> Builder<Side, NeedsRoots> {
        self.identity(keystore.clone(), keystore)
    }
}

impl<Side> Builder<Side, NeedsRoots> {
    /// Roots for one trust domain only, and none flat (yet).
    pub(crate) fn first_domain_roots(
        self,
        trust_domain: &str,
        roots: Source,
    ) -> Builder<Side, Ready> {
        self.roots(Source::pem(NO_FLAT_ROOTS, Vec::new()))
            .domain_roots(trust_domain, roots)
    }

    pub(crate) fn roots(self, roots: Source) -> Builder<Side, Ready> {
        Builder {
            settings: self.settings,
            state: Ready {
                cert: self.state.cert,
                key: self.state.key,
                roots,
            },
            side: PhantomData,
        }
    }
}

/// The label of the empty flat bundle of a builder given roots per trust
/// domain only.
pub(crate) const NO_FLAT_ROOTS: &str = "(no flat roots: roots per trust domain only)";

impl<Side> Builder<Side, Ready> {
    /// Adds roots for one trust domain.
    pub(crate) fn domain_roots(mut self, trust_domain: &str, roots: Source) -> Self {
        self.settings
            .domain_roots
            .push((trust_domain.to_owned(), roots));
        self
    }

    fn sources(&self) -> Sources {
        Sources {
            cert: self.state.cert.clone(),
            key: self.state.key.clone(),
            roots: self.state.roots.clone(),
            // Keyed by the trust domain's own form (`spiffe://td` is `td`);
            // `finish` refused anything that is not one.
            domain_roots: self
                .settings
                .domain_roots
                .iter()
                .map(|(given, source)| {
                    let name = given
                        .parse::<crate::spiffe::TrustDomain>()
                        .map_or_else(|_| given.clone(), |td| td.to_string());
                    (name, source.clone())
                })
                .collect(),
            crls: self.settings.crls.clone(),
        }
    }

    /// What a live state keeps of this builder for its whole life.
    pub(crate) fn fixed(&self) -> Fixed {
        Fixed {
            sources: arc_swap::ArcSwap::from_pointee(self.sources()),
            provider: self.settings.hardening.provider(),
            scope: self.settings.scope,
            resumption: self.settings.resumption,
            legacy_cn: self.settings.legacy_cn,
            expiry_warning: self.settings.expiry_warning,
            closing: self.settings.closing,
            clock: self.settings.clock.clone(),
        }
    }
}

impl<Side, State> Builder<Side, State> {
    /// A CRL file (PEM, one or more CRLs) that peers are checked against,
    /// reloaded with the rest. May be called more than once.
    ///
    /// With CRLs configured, a peer certificate whose revocation status no
    /// CRL covers is refused (fail closed), and a CRL past its `nextUpdate`
    /// is refused at load and, should it go stale while serving, makes the
    /// handshakes it covers fail. See [`RevocationScope`] for intermediates.
    pub fn crl_file(self, path: impl Into<PathBuf>) -> Self {
        self.crl(Source::file(path))
    }

    /// A CRL from any [`Source`].
    pub fn crl(mut self, crl: Source) -> Self {
        self.settings.crls.push(crl);
        self
    }

    /// Which certificates of a peer's chain must be covered by a CRL.
    pub fn revocation_scope(mut self, scope: RevocationScope) -> Self {
        self.settings.scope = scope;
        self
    }

    /// Options that weaken what meshtls checks or offers, behind one name a
    /// reviewer can search for (as rustls's `dangerous()`). Each returns the
    /// builder.
    ///
    /// ```
    /// # fn f(b: meshtls::ServerTlsBuilder<meshtls::Ready>) {
    /// let builder = b.dangerous().allow_legacy_cn().allow(meshtls::Allow::cn("batch"));
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn dangerous(self) -> Dangerous<Side, State> {
        Dangerous(self)
    }

    /// How sessions may be resumed (default: tickets).
    pub fn resumption(mut self, resumption: Resumption) -> Self {
        self.settings.resumption = resumption;
        self
    }

    /// ALPN protocols to offer or accept, most preferred first
    /// (e.g. `[b"h2".to_vec(), b"http/1.1".to_vec()]`).
    pub fn alpn_protocols(mut self, protocols: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.settings.alpn = protocols.into_iter().collect();
        self
    }

    /// How long the acceptor or connector waits for a handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.settings.handshake_timeout = timeout;
        self
    }

    /// Send an `Expiring` event when less than `fraction` (0 to 1) of the
    /// certificate's lifetime is left (default one third; values outside are
    /// clamped, NaN ignored).
    pub fn expiry_warning(mut self, fraction: f64) -> Self {
        if fraction.is_finite() {
            self.settings.expiry_warning = fraction.clamp(0.0, 1.0);
        }
        self
    }

    /// How long to wait after a file event for the rest of a rotation to land
    /// before reloading (default 100 ms, at most a day). Used by `watch()`.
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.settings.watch.debounce = debounce.min(MAX_WATCH_PERIOD);
        self
    }

    /// How often to re-read the files even without file events, for file
    /// systems that send none (NFS, some container mounts). `None` turns the
    /// backstop off. Default: every 30 s (10 ms to a day). Used by `watch()`.
    pub fn poll_interval(mut self, interval: Option<Duration>) -> Self {
        self.settings.watch.poll =
            interval.map(|i| i.clamp(Duration::from_millis(10), MAX_WATCH_PERIOD));
        self
    }

    /// With `watch()`: wait up to `timeout` for the files to appear and be
    /// valid (a sidecar or agent writes them after the service starts), instead
    /// of failing at once. `watch()` blocks while it waits.
    pub fn wait_for_files(mut self, timeout: Duration) -> Self {
        self.settings.watch.wait = Some(timeout);
        self
    }

    /// Leave live connections open when the policy stops admitting their
    /// peer. By default, a connection made through the [`Acceptor`](crate::Acceptor),
    /// [`Connector`](crate::Connector) or an integration is judged again at
    /// every policy change, and closed (after [`live_connection_grace`](Self::live_connection_grace))
    /// when a fresh handshake would refuse its peer (revoked, removed from
    /// the allow-list, no longer chaining to a trusted root, ...), except
    /// for a stale CRL and, unless [`close_at_peer_expiry`](Self::close_at_peer_expiry),
    /// expiry (see the [`reload`](crate::reload) module).
    pub fn keep_live_connections(mut self) -> Self {
        self.settings.closing.enabled = false;
        self
    }

    /// How long a connection whose peer is no longer admitted may go on
    /// before it is closed (default 10 s, at most a day): time to finish
    /// requests in flight.
    pub fn live_connection_grace(mut self, grace: Duration) -> Self {
        self.settings.closing.grace = grace.min(MAX_WATCH_PERIOD);
        self
    }

    /// Also close a live connection when its peer's certificate (or one in
    /// its chain) expires. Off by default: a long-lived connection outliving
    /// the certificate it was opened with is usual in meshes with short
    /// certificates, and the peer's next handshake is judged anyway.
    pub fn close_at_peer_expiry(mut self) -> Self {
        self.settings.closing.at_expiry = true;
        self
    }
}
