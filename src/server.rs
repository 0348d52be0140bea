//! The server side: [`ServerTls`], its builder, and the live certificate
//! resolver, client verifier and session state inside its `ServerConfig`.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert, ServerConfig,
    ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, Error as TlsError};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::accept::Acceptor;
use crate::allow::Allow;
use crate::builder::{Builder, Dangerous, NeedsIdentity, NeedsRoots, Ready, Settings};
use crate::error::{ConfigError, Error};
use crate::handle::Mtls;
use crate::hardening::VERSIONS;
use crate::judge::Presented;
use crate::live::{Generation, Live, ReloadOutcome};
use crate::session::{Resumption, ServerSessions, client_chain};
use crate::side::Server;
use crate::source::Source;
use crate::verify::{Verifying, signature_checks};

/// The builder of a [`ServerTls`].
pub type ServerTlsBuilder<State = NeedsIdentity> = Builder<Server, State>;

/// A mutual-TLS server: one stable `Arc<rustls::ServerConfig>` whose
/// certificate, trust roots, CRLs, allow-list and session keys live inside
/// and can change without a restart. What it shares with the client side
/// ([`config`](Mtls::config), [`subscribe`](Mtls::subscribe),
/// [`reload`](Mtls::reload), ...) is on [`Mtls`].
///
/// TLS 1.3 only; a client certificate is required, verified against the
/// client roots (and CRLs), and its identity checked against the allow-list.
///
/// ```no_run
/// use meshtls::{Allow, ServerTls};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = ServerTls::builder()
///     .identity_files("tls/tls.crt", "tls/tls.key")
///     .client_roots_file("tls/ca.crt")
///     .allow(Allow::spiffe_trust_domain("prod.example"))
///     .allow(Allow::dns("billing.internal"))
///     .build()?;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// let acceptor = server.acceptor();
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     let acceptor = acceptor.clone();
///     tokio::spawn(async move {
///         match acceptor.accept(tcp).await {
///             Ok((_stream, peer)) => println!("hello {peer}"),
///             Err(e) => eprintln!("refused: {e}"),
///         }
///     });
/// }
/// # }
/// ```
///
/// The bare [`config`](Mtls::config) judges every peer on every path
/// meshtls can reach inside rustls: full handshakes, and sessions both when
/// a ticket is sealed and when it is opened. One thing only the
/// [`acceptor`](Mtls::acceptor) adds: a handshake whose client certificate
/// was judged just before a policy change and whose last message arrives
/// after it completes (like a connection opened before the change), though
/// no session is sealed for it. See the [`reload`](crate::reload) module.
pub type ServerTls = Mtls<Server>;

impl Mtls<Server> {
    /// Starts a builder: identity, then client roots, then options.
    pub fn builder() -> ServerTlsBuilder<NeedsIdentity> {
        Builder::new()
    }

    /// A tokio acceptor: handshake under a timeout, every peer (full or
    /// resumed, or straddling a reload) admitted by the current policy, a
    /// [`PeerIdentity`](crate::PeerIdentity) out.
    #[must_use]
    pub fn acceptor(&self) -> Acceptor {
        Acceptor::new(
            self.config.clone(),
            self.live.clone(),
            self.handshake_timeout,
        )
    }

    /// An acceptor offering `alpn` (for HTTP servers built without
    /// `alpn_protocols`); the config is a copy sharing every live part.
    #[cfg(feature = "axum")]
    pub(crate) fn acceptor_with_alpn(&self, alpn: Vec<Vec<u8>>) -> Acceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn;
        Acceptor::new(Arc::new(config), self.live.clone(), self.handshake_timeout)
    }

    /// Who may call one route (axum) or service (tonic): `rules` compiled
    /// with this server's settings (CN rules only if it was built with
    /// `.dangerous().allow_legacy_cn()`), each refusal reported as this
    /// server reports a refused handshake (event, counter, metric).
    ///
    /// ```no_run
    /// # fn f(server: &meshtls::ServerTls) -> Result<(), meshtls::error::RuleError> {
    /// use meshtls::Allow;
    /// let admins = server.require_peer([Allow::spiffe_pattern("spiffe://prod.example/ns/ops/**")])?;
    /// // axum: .route_layer(admins); tonic: InterceptedService::new(svc, admins)
    /// # let _ = admins; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The first malformed rule (or a CN rule the server does not allow).
    #[cfg(any(feature = "axum", feature = "tonic"))]
    pub fn require_peer(
        &self,
        rules: impl IntoIterator<Item = Allow>,
    ) -> Result<crate::judge::RequirePeer, crate::error::RuleError> {
        let policy = self.live.compile(rules.into_iter().collect())?;
        Ok(crate::judge::RequirePeer::for_server(
            policy,
            self.live.observer().clone(),
        ))
    }

    /// Replaces the allow-list. Sessions established under the old list can
    /// no longer be resumed; open connections of peers the new list refuses
    /// are closed after the grace period (unless built with
    /// [`keep_live_connections`](crate::Builder::keep_live_connections)).
    ///
    /// # Errors
    ///
    /// A malformed rule, or an empty list.
    pub fn set_allow_list(
        &self,
        rules: impl IntoIterator<Item = Allow>,
    ) -> Result<ReloadOutcome, Error> {
        self.live.set_rules(rules.into_iter().collect())
    }
}

impl Builder<Server, NeedsRoots> {
    /// The CA bundle (PEM) that client certificates must chain to.
    pub fn client_roots_file(self, path: impl Into<std::path::PathBuf>) -> Builder<Server, Ready> {
        self.roots(Source::file(path))
    }

    /// The client CA bundle from any [`Source`].
    pub fn client_roots(self, roots: Source) -> Builder<Server, Ready> {
        self.roots(roots)
    }

    /// Roots (PEM file) for the clients of one SPIFFE trust domain only, as
    /// go-spiffe's bundle sets do; see [`ServerTlsBuilder::client_roots_for`]
    /// on a builder that has roots already.
    pub fn client_roots_for(
        self,
        trust_domain: &str,
        path: impl Into<std::path::PathBuf>,
    ) -> Builder<Server, Ready> {
        self.first_domain_roots(trust_domain, Source::file(path))
    }
}

impl Builder<Server, Ready> {
    /// Roots (PEM file, reloaded like the others) for the clients of one
    /// SPIFFE trust domain (federation). Once any are given, a client whose
    /// SPIFFE ID is in trust domain X must chain to X's roots, and to no
    /// other bundle; a client of a trust domain without roots here is
    /// refused (`UnknownIssuer`, saying so). Flat roots
    /// ([`client_roots_file`](Self::client_roots_file)) then serve clients
    /// without a SPIFFE ID only. Without this call, flat roots serve
    /// everyone, as before.
    ///
    /// A trust domain's bundle vouches for that trust domain's SPIFFE IDs
    /// and nothing else: the DNS names and CN of a client it verified match
    /// no rule (`Allow::dns`, `Allow::cn`) and are not reported in its
    /// [`PeerIdentity`](crate::PeerIdentity) (see
    /// [`VouchedBy`](crate::VouchedBy)), so a partner's CA cannot claim an
    /// internal name.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), meshtls::Error> {
    /// use meshtls::{Allow, ServerTls};
    /// let server = ServerTls::builder()
    ///     .identity_files("tls/tls.crt", "tls/tls.key")
    ///     .client_roots_for("prod.example", "bundles/prod.pem")
    ///     .client_roots_for("partner.example", "bundles/partner.pem")
    ///     .allow(Allow::spiffe_trust_domain("prod.example"))
    ///     .allow(Allow::spiffe_id("spiffe://partner.example/billing"))
    ///     .watch()?;
    /// # Ok(()) }
    /// ```
    pub fn client_roots_for(self, trust_domain: &str, path: impl Into<std::path::PathBuf>) -> Self {
        self.domain_roots(trust_domain, Source::file(path))
    }
}

impl<State> Builder<Server, State> {
    /// Admits peers this rule matches. Any matching rule admits.
    pub fn allow(mut self, rule: Allow) -> Self {
        self.settings.rules.push(rule);
        self
    }

    /// Admits peers any of these rules match.
    pub fn allow_all_of(mut self, rules: impl IntoIterator<Item = Allow>) -> Self {
        self.settings.rules.extend(rules);
        self
    }

    /// How long a client may take to send its complete ClientHello
    /// (default 3 s; never longer than the handshake timeout), and then
    /// again to finish the handshake after it. A peer that connects and
    /// sends nothing, dribbles its hello a byte at a time, or sends a hello
    /// and stalls, is dropped then, instead of holding a slot for the whole
    /// handshake timeout. (The handshake timeout still bounds the whole.)
    pub fn client_hello_timeout(mut self, timeout: Duration) -> Self {
        self.settings.hello_timeout = timeout;
        self
    }

    /// How many handshakes an [`Incoming`](crate::Incoming) (and so the axum
    /// and tonic integrations) keeps in flight (default 8,192; at least 1).
    /// Past it, the oldest pending handshake is shed to make room, one whose
    /// peer has not sent a complete ClientHello first, then one whose peer
    /// sent it and has not finished; a handshake younger than 500 ms is
    /// never shed (accepting pauses instead until the oldest is older): a
    /// flood of silent or stalling sockets costs its own slots, never a new
    /// client's. A flood larger than this bound plus the listener's backlog
    /// makes new connections wait in the kernel (BENCHMARKS.md). A pending
    /// handshake costs a few KiB (BENCHMARKS.md); a ClientHello in progress
    /// up to its size (at most 64 KiB, typically under 2 KiB).
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.settings.max_pending_handshakes = max.max(1);
        self
    }
}

impl<State> Dangerous<Server, State> {
    /// Admits every client whose certificate chains to the client roots, with
    /// no identity check. Only for a CA that issues to nobody else.
    pub fn allow_any_authenticated(mut self) -> Builder<Server, State> {
        self.0.settings.any_authenticated = true;
        self.0
    }
}

impl Builder<Server, Ready> {
    /// Builds a server that reads its files once (see `watch()` for reloads;
    /// [`Mtls::reload`] still works).
    ///
    /// # Errors
    ///
    /// Any problem with the material (each names the file and the fix), no
    /// allow-list, or a malformed rule.
    pub fn build(self) -> Result<ServerTls, Error> {
        self.make()
    }

    /// Builds the server and watches its files: a rotation on disk is picked
    /// up without a restart (see the [`reload`](crate::reload) module).
    ///
    /// # Errors
    ///
    /// As [`Self::build`]; or the files did not become valid within
    /// `wait_for_files`; or the watcher could not start.
    pub fn watch(self) -> Result<ServerTls, Error> {
        self.watching(Self::make)
    }

    fn make(&self) -> Result<ServerTls, Error> {
        let policy = self.settings.policy()?.ok_or(ConfigError::NoAllowList)?;
        let only = crate::side::ServerOnly {
            hello_timeout: self.settings.hello_timeout,
            max_pending_handshakes: self.settings.max_pending_handshakes,
        };
        self.finish(only, policy, server_config)
    }
}

fn server_config(
    live: &Arc<Live<Server>>,
    provider: Arc<CryptoProvider>,
    settings: &Settings,
) -> Result<ServerConfig, Error> {
    let verifier = Arc::new(LiveClientVerifier(Verifying::new(live, &provider)));
    // The session values the hooks read are rustls's private encoding:
    // resumption only if this build's rustls passes the tripwire.
    let resumption = match settings.resumption {
        Resumption::Disabled => Resumption::Disabled,
        chosen => match crate::session::session_format(&provider) {
            Ok(()) => chosen,
            Err(why) => {
                live.observer().resumption_off(&why);
                Resumption::Disabled
            }
        },
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(Error::Rustls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(LiveResolver { live: live.clone() }));
    config.time_provider = live.rustls_time();
    match resumption {
        Resumption::Tickets => {
            config.ticketer = Arc::new(LiveTicketer { live: live.clone() });
            config.session_storage = Arc::new(NoServerSessionStorage {});
        }
        Resumption::Stateful => {
            config.session_storage = Arc::new(LiveSessionCache { live: live.clone() });
        }
        Resumption::Disabled => {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
    }
    config.alpn_protocols = settings.alpn.clone();
    Ok(config)
}

/// Serves the current generation's certificate.
#[derive(Debug)]
struct LiveResolver {
    live: Arc<Live<Server>>,
}

impl ResolvesServerCert for LiveResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.live.current().material.key.clone())
    }
}

/// Verifies client chains and identities against the current generation.
/// Everything rustls may ask more than once per handshake is a constant.
#[derive(Debug)]
struct LiveClientVerifier(Verifying<Server>);

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Fixed hints would go stale after a CA rotation; an empty list makes
        // rustls omit the extension, which every client we tested handles.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let peer = Presented {
            end_entity,
            intermediates,
            server_name: None,
        };
        self.0.judge(peer, now)?;
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}

/// Ticket keys of the current policy epoch.
#[derive(Debug)]
struct LiveTicketer {
    live: Arc<Live<Server>>,
}

/// Ticket lifetime announced to clients (the rotating ticketer's key life).
const TICKET_LIFETIME_SECS: u32 = 6 * 60 * 60;

impl ProducesTickets for LiveTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    /// Seals a session only for a client the current epoch admits now: a
    /// client judged under an earlier policy (its Finished arrived after a
    /// change) gets no ticket.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let generation = self.live.current();
        let ServerSessions::Tickets(keys) = &*generation.sessions else {
            return None;
        };
        admits(&self.live, &generation, plain).then(|| keys.encrypt(plain))?
    }

    /// Opens a session only for a client the current epoch admits now;
    /// otherwise rustls falls back to a full handshake, which the verifier
    /// judges (and refuses with the proper alert).
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let generation = self.live.current();
        let ServerSessions::Tickets(keys) = &*generation.sessions else {
            return None;
        };
        let plain = keys.decrypt(cipher)?;
        admits(&self.live, &generation, &plain).then_some(plain)
    }
}

/// Whether the client whose chain a session value carries is admitted now
/// under `generation`'s epoch. No chain found: not admitted.
fn admits(live: &Live<Server>, generation: &Generation<Server>, plain: &[u8]) -> bool {
    let Some((leaf, intermediates)) = client_chain(plain) else {
        tracing::warn!("meshtls found no client chain in a session value; resumption refused");
        return false;
    };
    let peer = Presented {
        end_entity: &leaf,
        intermediates: &intermediates,
        server_name: None,
    };
    match live.admit_in(generation, peer) {
        Ok(_) => true,
        Err(refusal) => {
            tracing::debug!(reason = refusal.reason.as_str(), detail = %refusal.detail, "session not resumed");
            false
        }
    }
}

/// The session cache of the current policy epoch.
#[derive(Debug)]
struct LiveSessionCache {
    live: Arc<Live<Server>>,
}

impl LiveSessionCache {
    /// Runs `f` on the current epoch's cache; a value that comes out is
    /// handed over only if its client is admitted now.
    fn with(
        &self,
        f: impl FnOnce(&ServerSessionMemoryCache) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let generation = self.live.current();
        let ServerSessions::Stateful(cache) = &*generation.sessions else {
            return None;
        };
        let value = f(cache)?;
        admits(&self.live, &generation, &value).then_some(value)
    }
}

impl StoresServerSessions for LiveSessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let generation = self.live.current();
        let ServerSessions::Stateful(cache) = &*generation.sessions else {
            return false;
        };
        admits(&self.live, &generation, &value) && cache.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.with(|c| c.get(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.with(|c| c.take(key))
    }

    fn can_cache(&self) -> bool {
        true
    }
}
