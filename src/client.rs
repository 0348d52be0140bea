//! The client side: [`ClientTls`], its builder, the [`Connector`], and the
//! live server verifier, certificate resolver and session store inside its
//! `ClientConfig`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientConfig, ClientSessionStore, ResolvesClientCert, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, NamedGroup, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use crate::accept::{admit, deadline_after, established, handshake};
use crate::allow::Allow;
use crate::builder::{Builder, NeedsIdentity, NeedsRoots, Ready, Settings};
use crate::error::{ConfigError, Error, HandshakeError, RejectReason};
use crate::handle::Mtls;
use crate::hardening::VERSIONS;
use crate::identity::PeerIdentity;
use crate::judge::{NameCheck, Presented};
use crate::live::{Live, ReloadOutcome};
use crate::policy::Policy;
use crate::session::{ClientSessions, Resumption};
use crate::side::Client;
use crate::source::Source;
use crate::track::Tracked;
use crate::verify::{Verifying, signature_checks};

/// The builder of a [`ClientTls`].
pub type ClientTlsBuilder<State = NeedsIdentity> = Builder<Client, State>;

/// A mutual-TLS client: one stable `Arc<rustls::ClientConfig>` that presents
/// the current certificate and verifies servers against the current roots.
/// What it shares with the server side ([`config`](Mtls::config),
/// [`subscribe`](Mtls::subscribe), [`reload`](Mtls::reload), ...) is on
/// [`Mtls`].
///
/// The server is verified either by the DNS name (or IP) you dial, as a
/// browser would, or, with [`expect_server`](Builder::expect_server), by its
/// identity: chain verified to the roots, then its SPIFFE ID or DNS SAN
/// matched against the rules (the dialled name is then only used for SNI).
///
/// ```no_run
/// use meshtls::{Allow, ClientTls};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = ClientTls::builder()
///     .identity_files("tls/tls.crt", "tls/tls.key")
///     .server_roots_file("tls/ca.crt")
///     .expect_server(Allow::spiffe_id("spiffe://prod.example/ns/billing/sa/api"))
///     .build()?;
///
/// let tcp = tokio::net::TcpStream::connect("127.0.0.1:8443").await?;
/// let (stream, server) = client.connector().connect("billing.internal", tcp).await?;
/// println!("talking to {server}");
/// # drop(stream);
/// # Ok(())
/// # }
/// ```
///
/// In TLS 1.3 the server judges the client's certificate after the client's
/// last handshake message, so a server that refuses this client is seen on
/// the first read (an `access_denied`, `unknown_ca`, `certificate_revoked`
/// ... alert), not by `connect`.
///
/// The bare [`config`](Mtls::config) (reqwest, hyper-rustls) judges every
/// full handshake by the current policy and keeps a session ticket only for
/// a server name that passed it. What only the [`connector`](Mtls::connector)
/// closes: with several servers behind one name, a ticket that a server
/// revoked since sends late is kept once another server of that name has
/// passed, and resumes to it. See the [`reload`](crate::reload) module.
pub type ClientTls = Mtls<Client>;

impl Mtls<Client> {
    /// Starts a builder: identity, then server roots, then options.
    pub fn builder() -> ClientTlsBuilder<NeedsIdentity> {
        Builder::new()
    }

    /// A tokio connector that also returns the server's [`PeerIdentity`].
    #[must_use]
    pub fn connector(&self) -> Connector {
        Connector {
            inner: tokio_rustls::TlsConnector::from(self.config.clone()),
            live: self.live.clone(),
            timeout: self.handshake_timeout,
        }
    }

    /// Replaces the expected server identities. Stored sessions are dropped.
    ///
    /// # Errors
    ///
    /// A malformed rule, an empty list, or a client built without
    /// `expect_server` (it checks the dialled name; build it with rules).
    pub fn set_expected_servers(
        &self,
        rules: impl IntoIterator<Item = Allow>,
    ) -> Result<ReloadOutcome, Error> {
        if self.live.judges_dialled_name() {
            return Err(ConfigError::NotBuiltWithRules.into());
        }
        self.live.set_rules(rules.into_iter().collect())
    }
}

impl Builder<Client, NeedsRoots> {
    /// The CA bundle (PEM) that server certificates must chain to.
    pub fn server_roots_file(self, path: impl Into<std::path::PathBuf>) -> Builder<Client, Ready> {
        self.roots(Source::file(path))
    }

    /// The server CA bundle from any [`Source`].
    pub fn server_roots(self, roots: Source) -> Builder<Client, Ready> {
        self.roots(roots)
    }
}

impl Builder<Client, NeedsRoots> {
    /// Roots (PEM file) for the servers of one SPIFFE trust domain only;
    /// see [`ClientTlsBuilder::server_roots_for`] on a builder that has
    /// roots already.
    pub fn server_roots_for(
        self,
        trust_domain: &str,
        path: impl Into<std::path::PathBuf>,
    ) -> Builder<Client, Ready> {
        self.first_domain_roots(trust_domain, Source::file(path))
    }
}

impl Builder<Client, Ready> {
    /// Roots (PEM file, reloaded like the others) for the servers of one
    /// SPIFFE trust domain. Once any are given, a server whose SPIFFE ID is
    /// in trust domain X must chain to X's roots only; a server of a trust
    /// domain without roots is refused; flat roots serve servers without a
    /// SPIFFE ID. A trust domain's bundle vouches for its SPIFFE IDs only:
    /// such a server never satisfies a dialled DNS name or IP (expect it by
    /// SPIFFE ID with [`expect_server`](Builder::expect_server)), nor a DNS
    /// or CN rule.
    pub fn server_roots_for(self, trust_domain: &str, path: impl Into<std::path::PathBuf>) -> Self {
        self.domain_roots(trust_domain, Source::file(path))
    }
}

impl<State> Builder<Client, State> {
    /// Verify the server by identity: its chain must lead to the roots and
    /// one of these rules must match (typically a SPIFFE ID). May be called
    /// more than once. Without it, the dialled DNS name or IP is checked.
    pub fn expect_server(mut self, rule: Allow) -> Self {
        self.settings.rules.push(rule);
        self
    }
}

impl Builder<Client, Ready> {
    /// Builds a client that reads its files once.
    ///
    /// # Errors
    ///
    /// Any problem with the material (each names the file and the fix), or a
    /// malformed rule.
    pub fn build(self) -> Result<ClientTls, Error> {
        self.make()
    }

    /// Builds the client and watches its files for rotation.
    ///
    /// # Errors
    ///
    /// As [`Self::build`]; or the files did not become valid within
    /// `wait_for_files`; or the watcher could not start.
    pub fn watch(self) -> Result<ClientTls, Error> {
        self.watching(Self::make)
    }

    fn make(&self) -> Result<ClientTls, Error> {
        let (policy, name_check) = match self.settings.policy()? {
            Some(policy) => (policy, NameCheck::AllowList),
            None => (Policy::any_authenticated(), NameCheck::ServerName),
        };
        self.finish(
            crate::side::ClientOnly { name_check },
            policy,
            client_config,
        )
    }
}

fn client_config(
    live: &Arc<Live<Client>>,
    provider: Arc<CryptoProvider>,
    settings: &Settings,
) -> Result<ClientConfig, Error> {
    let verifier = Arc::new(LiveServerVerifier(Verifying::new(live, &provider)));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(Error::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(LiveClientCert { live: live.clone() }));
    config.time_provider = live.rustls_time();
    config.resumption = match settings.resumption {
        Resumption::Disabled => rustls::client::Resumption::disabled(),
        _ => rustls::client::Resumption::store(Arc::new(LiveClientSessions { live: live.clone() })),
    };
    config.alpn_protocols = settings.alpn.clone();
    Ok(config)
}

/// Connects to mutual-TLS servers; cheap to clone.
///
/// Made by [`ClientTls::connector`].
#[derive(Clone)]
pub struct Connector {
    inner: tokio_rustls::TlsConnector,
    live: Arc<Live<Client>>,
    timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Runs the client handshake on `io`. `server_name` (a DNS name or IP)
    /// is sent as SNI and, unless the client was built with `expect_server`,
    /// checked against the server's certificate.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`] with the reason (unknown CA, expired, revoked,
    /// identity not expected, TLS version, timeout, I/O).
    pub async fn connect<IO>(
        &self,
        server_name: &str,
        io: IO,
    ) -> Result<(Tracked<TlsStream<IO>>, PeerIdentity), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            HandshakeError::new(
                RejectReason::Other,
                format!("{server_name:?} is not a DNS name or IP address: {e}"),
                None,
            )
        })?;
        let started = Instant::now();
        let deadline = deadline_after(started, self.timeout);
        let stream = handshake(
            self.live.observer(),
            self.timeout,
            deadline,
            self.inner.connect(name.clone(), io),
        )
        .await?;
        established(&self.live, stream, Some(&name), started)
    }
}

impl Connector {
    /// Who the server of a completed handshake is, for clients that drive the
    /// rustls connection themselves: the check [`connect`](Self::connect)
    /// makes after its handshake, with the re-check of resumed sessions.
    ///
    /// # Errors
    ///
    /// No certificate, a malformed `server_name`, or a resumed server the
    /// current policy no longer admits.
    pub fn identify(
        &self,
        conn: &rustls::ClientConnection,
        server_name: &str,
    ) -> Result<PeerIdentity, HandshakeError> {
        let name = ServerName::try_from(server_name).map_err(|e| {
            HandshakeError::new(RejectReason::Other, format!("{server_name:?}: {e}"), None)
        })?;
        admit(&self.live, conn, Some(&name), None).map(|(peer, _)| peer)
    }
}

/// Verifies servers against the current generation.
#[derive(Debug)]
struct LiveServerVerifier(Verifying<Client>);

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let peer = Presented {
            end_entity,
            intermediates,
            server_name: Some(server_name),
        };
        let (generation, admitted) = self.0.judge(peer, now)?;
        // Tickets for this name may be stored in this epoch, until the
        // verdict runs out.
        generation.sessions.verified(server_name, admitted.holds);
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

/// Presents the current generation's certificate.
#[derive(Debug)]
struct LiveClientCert {
    live: Arc<Live<Client>>,
}

impl ResolvesClientCert for LiveClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.live.current().material.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The resumption store of the current policy epoch.
#[derive(Debug)]
struct LiveClientSessions {
    live: Arc<Live<Client>>,
}

impl LiveClientSessions {
    /// Runs `f` on the current epoch's store.
    fn with<T>(&self, f: impl FnOnce(&ClientSessions) -> Option<T>) -> Option<T> {
        f(&self.live.current().sessions)
    }
}

impl ClientSessionStore for LiveClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(|s| {
            s.set_kx_hint(server_name, group);
            Some(())
        });
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|s| s.kx_hint(server_name))
    }

    fn set_tls12_session(
        &self,
        _server_name: ServerName<'static>,
        _value: Tls12ClientSessionValue,
    ) {
        // TLS 1.2 is never negotiated.
    }

    fn tls12_session(&self, _server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _server_name: &ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let now = self.live.now_unix();
        self.with(|s| {
            s.insert(server_name, value, now);
            Some(())
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let now = self.live.now_unix();
        self.with(|s| s.take(server_name, now))
    }
}
