//! The server side: [`ServerTls`], its builder, and the live certificate
//! resolver, client verifier and session state inside its `ServerConfig`.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert, ServerConfig,
    ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::UnixTime;
use tokio::sync::broadcast;

use crate::accept::Acceptor;
use crate::builder::{Builder, Dangerous, NeedsIdentity, NeedsRoots, Ready};
use crate::error::{ConfigError, Error};
use crate::hardening::{self, VERSIONS};
use crate::judge::{NameCheck, note_refusal};
use crate::live::{Generation, Live, ReloadOutcome};
use crate::material::Role;
use crate::observe::{CertFacts, Event, Observer, Stats};
use crate::policy::Allow;
use crate::session::{Resumption, ServerSessions, client_chain};
use crate::source::Source;

/// The builder of a [`ServerTls`].
pub type ServerTlsBuilder<State = NeedsIdentity> = Builder<ServerTls, State>;

type ServerLive = Live<ServerSessions>;

/// A mutual-TLS server: one stable `Arc<rustls::ServerConfig>` whose
/// certificate, trust roots, CRLs, allow-list and session keys live inside
/// and can change without a restart.
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
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    live: Arc<ServerLive>,
    handshake_timeout: std::time::Duration,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let generation = self.live.current();
        f.debug_struct("ServerTls")
            .field("generation", &generation.number)
            .field("serial", &generation.material.leaf.serial)
            .field("allow", &generation.epoch.policy)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Starts a builder: identity, then client roots, then options.
    pub fn builder() -> ServerTlsBuilder<NeedsIdentity> {
        Builder::new()
    }

    /// The rustls config, for any framework that takes one (axum-server,
    /// tonic, hyper-rustls). The same `Arc` for the life of the server; what
    /// it serves follows reloads.
    ///
    /// The bare config judges every peer on every path meshtls can reach
    /// inside rustls: full handshakes, and sessions both when a ticket is
    /// sealed and when it is opened. One thing only the [`acceptor`](Self::acceptor)
    /// adds: a handshake whose client certificate was judged just before a
    /// policy change and whose last message arrives after it completes (the
    /// connection is then like one opened before the change), though no
    /// session is sealed for it. See the [`reload`](crate::reload) module.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// A tokio acceptor: handshake under a timeout, every peer (full or
    /// resumed, or straddling a reload) admitted by the current policy, a
    /// [`PeerIdentity`](crate::PeerIdentity) out.
    pub fn acceptor(&self) -> Acceptor {
        Acceptor::new(
            self.config.clone(),
            self.live.clone(),
            self.handshake_timeout,
        )
    }

    /// Events: reloads, refused reloads, expiry warnings, refused handshakes.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.observer.subscribe()
    }

    /// Counters: handshakes by outcome, reloads, certificate expiry.
    pub fn stats(&self) -> Stats {
        self.live.observer.stats()
    }

    /// Reads the files again now (for a SIGHUP handler) and swaps in a new
    /// generation if they changed and are valid.
    ///
    /// # Errors
    ///
    /// The reason the new material was refused; the previous generation keeps
    /// serving.
    pub fn reload(&self) -> Result<ReloadOutcome, Error> {
        self.live.reload()
    }

    /// Replaces the allow-list. Sessions established under the old list can
    /// no longer be resumed; open connections are not touched.
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

    /// The serving generation's number (1 for the first).
    pub fn generation(&self) -> u64 {
        self.live.current().number
    }

    /// The certificate being served.
    pub fn certificate(&self) -> CertFacts {
        self.live.current().material.leaf.clone()
    }
}

impl Builder<ServerTls, NeedsRoots> {
    /// The CA bundle (PEM) that client certificates must chain to.
    pub fn client_roots_file(
        self,
        path: impl Into<std::path::PathBuf>,
    ) -> Builder<ServerTls, Ready> {
        self.roots(Source::file(path))
    }

    /// The client CA bundle from any [`Source`].
    pub fn client_roots(self, roots: Source) -> Builder<ServerTls, Ready> {
        self.roots(roots)
    }
}

impl<State> Builder<ServerTls, State> {
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
}

impl<State> Dangerous<ServerTls, State> {
    /// Admits every client whose certificate chains to the client roots, with
    /// no identity check. Only for a CA that issues to nobody else.
    pub fn allow_any_authenticated(mut self) -> Builder<ServerTls, State> {
        self.0.settings.any_authenticated = true;
        self.0
    }
}

impl Builder<ServerTls, Ready> {
    /// Builds a server that reads its files once (see `watch()` for reloads;
    /// [`ServerTls::reload`] still works).
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
        let server = crate::reload::wait_until_valid(&self.settings.watch, || self.make())?;
        crate::reload::start(&server.live, &self.settings.watch)?;
        Ok(server)
    }

    fn make(&self) -> Result<ServerTls, Error> {
        let policy = self.settings.policy()?.ok_or(ConfigError::NoAllowList)?;
        let fixed = self.fixed(Role::Server, NameCheck::AllowList);
        let provider = fixed.provider.clone();
        let live = Live::new(fixed, policy, Observer::new("server"))?;
        let config = server_config(&live, provider, &self.settings)?;
        Ok(ServerTls {
            config,
            live,
            handshake_timeout: self.settings.handshake_timeout,
        })
    }
}

fn server_config(
    live: &Arc<ServerLive>,
    provider: Arc<CryptoProvider>,
    settings: &crate::builder::Settings,
) -> Result<Arc<ServerConfig>, Error> {
    let verifier = Arc::new(LiveClientVerifier {
        live: live.clone(),
        schemes: hardening::verify_schemes(&provider),
        provider: provider.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(Error::Rustls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(LiveResolver { live: live.clone() }));
    match settings.resumption {
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
    Ok(Arc::new(config))
}

/// Serves the current generation's certificate.
struct LiveResolver {
    live: Arc<ServerLive>,
}

impl fmt::Debug for LiveResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("meshtls::LiveResolver")
    }
}

impl ResolvesServerCert for LiveResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.live.current().material.key.clone())
    }
}

/// Verifies client chains and identities against the current generation.
/// Everything rustls may ask more than once per handshake is a constant.
struct LiveClientVerifier {
    live: Arc<ServerLive>,
    schemes: Vec<SignatureScheme>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for LiveClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("meshtls::LiveClientVerifier")
    }
}

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
        let generation = self.live.current();
        match self
            .live
            .judge(&generation, end_entity, intermediates, None, now)
        {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(refusal) => {
                note_refusal(&refusal);
                self.live.observer.rejected(refusal.reason, refusal.detail);
                Err(TlsError::InvalidCertificate(refusal.alert))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(hardening::refuse_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        hardening::verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Ticket keys of the current policy epoch.
struct LiveTicketer {
    live: Arc<ServerLive>,
}

impl fmt::Debug for LiveTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("meshtls::LiveTicketer")
    }
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
fn admits(live: &ServerLive, generation: &Generation<ServerSessions>, plain: &[u8]) -> bool {
    let Some((leaf, intermediates)) = client_chain(plain) else {
        tracing::warn!("meshtls found no client chain in a session value; resumption refused");
        return false;
    };
    match live.admit(generation, &leaf, &intermediates, None) {
        Ok(_) => true,
        Err(refusal) => {
            tracing::debug!(reason = refusal.reason.as_str(), detail = %refusal.detail, "session not resumed");
            false
        }
    }
}

/// The session cache of the current policy epoch.
struct LiveSessionCache {
    live: Arc<ServerLive>,
}

impl fmt::Debug for LiveSessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("meshtls::LiveSessionCache")
    }
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
