//! The client side: [`ClientTls`], its builder, the [`Connector`], and the
//! live server verifier, certificate resolver and session store inside its
//! `ClientConfig`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientConfig, ClientSessionStore, ResolvesClientCert, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, Error as TlsError, NamedGroup, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_rustls::client::TlsStream;

use crate::accept::{admit, handshake};
use crate::builder::{Builder, NeedsIdentity, NeedsRoots, Ready};
use crate::error::{ConfigError, Error, HandshakeError, RejectReason};
use crate::hardening::{self, VERSIONS};
use crate::identity::PeerIdentity;
use crate::judge::{NameCheck, note_refusal};
use crate::live::{Live, ReloadOutcome};
use crate::material::Role;
use crate::observe::{CertFacts, Event, Observer, Stats};
use crate::policy::{Allow, Policy};
use crate::session::{ClientSessions, Resumption};
use crate::source::Source;

/// The builder of a [`ClientTls`].
pub type ClientTlsBuilder<State = NeedsIdentity> = Builder<ClientTls, State>;

type ClientLive = Live<ClientSessions>;

/// A mutual-TLS client: one stable `Arc<rustls::ClientConfig>` that presents
/// the current certificate and verifies servers against the current roots.
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
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    live: Arc<ClientLive>,
    handshake_timeout: Duration,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let generation = self.live.current();
        f.debug_struct("ClientTls")
            .field("generation", &generation.number)
            .field("serial", &generation.material.leaf.serial)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Starts a builder: identity, then server roots, then options.
    pub fn builder() -> ClientTlsBuilder<NeedsIdentity> {
        Builder::new()
    }

    /// The rustls config, for any client that takes one (reqwest,
    /// hyper-rustls, tonic). The same `Arc` for the life of the client.
    ///
    /// Every full handshake is judged by the current policy, and a session
    /// ticket is kept only for a server name that passed it. What only the
    /// [`connector`](Self::connector) closes: with several servers behind one
    /// name, a ticket that a server revoked since sends late is kept once
    /// another server of that name has passed, and resumes to it. See the
    /// [`reload`](crate::reload) module.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// A tokio connector that also returns the server's [`PeerIdentity`].
    pub fn connector(&self) -> Connector {
        Connector {
            inner: tokio_rustls::TlsConnector::from(self.config.clone()),
            live: self.live.clone(),
            timeout: self.handshake_timeout,
        }
    }

    /// Events: reloads, refused reloads, expiry warnings, refused servers.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.observer.subscribe()
    }

    /// Counters: handshakes by outcome, reloads, certificate expiry.
    pub fn stats(&self) -> Stats {
        self.live.observer.stats()
    }

    /// Reads the files again now and swaps in a new generation if they
    /// changed and are valid.
    ///
    /// # Errors
    ///
    /// Why the new material was refused; the previous generation keeps serving.
    pub fn reload(&self) -> Result<ReloadOutcome, Error> {
        self.live.reload()
    }

    /// Replaces the expected server identities. Stored sessions are dropped.
    ///
    /// # Errors
    ///
    /// A malformed rule, or an empty list (a client without rules checks the
    /// dialled name; build it that way instead).
    pub fn set_expected_servers(
        &self,
        rules: impl IntoIterator<Item = Allow>,
    ) -> Result<ReloadOutcome, Error> {
        if self.live.fixed.name_check != NameCheck::AllowList {
            return Err(ConfigError::NotBuiltWithRules.into());
        }
        self.live.set_rules(rules.into_iter().collect())
    }

    /// The serving generation's number (1 for the first).
    pub fn generation(&self) -> u64 {
        self.live.current().number
    }

    /// The certificate this client presents.
    pub fn certificate(&self) -> CertFacts {
        self.live.current().material.leaf.clone()
    }
}

impl Builder<ClientTls, NeedsRoots> {
    /// The CA bundle (PEM) that server certificates must chain to.
    pub fn server_roots_file(
        self,
        path: impl Into<std::path::PathBuf>,
    ) -> Builder<ClientTls, Ready> {
        self.roots(Source::file(path))
    }

    /// The server CA bundle from any [`Source`].
    pub fn server_roots(self, roots: Source) -> Builder<ClientTls, Ready> {
        self.roots(roots)
    }
}

impl<State> Builder<ClientTls, State> {
    /// Verify the server by identity: its chain must lead to the roots and
    /// one of these rules must match (typically a SPIFFE ID). May be called
    /// more than once. Without it, the dialled DNS name or IP is checked.
    pub fn expect_server(mut self, rule: Allow) -> Self {
        self.settings.rules.push(rule);
        self
    }
}

impl Builder<ClientTls, Ready> {
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
        let client = crate::reload::wait_until_valid(&self.settings.watch, || self.make())?;
        crate::reload::start(&client.live, &self.settings.watch)?;
        Ok(client)
    }

    fn make(&self) -> Result<ClientTls, Error> {
        let (policy, name_check) = match self.settings.policy()? {
            Some(policy) => (policy, NameCheck::AllowList),
            None => (Policy::any_authenticated(), NameCheck::ServerName),
        };
        let fixed = self.fixed(Role::Client, name_check);
        let provider = fixed.provider.clone();
        let live = Live::new(fixed, policy, Observer::new("client"))?;
        let verifier = Arc::new(LiveServerVerifier {
            live: live.clone(),
            schemes: hardening::verify_schemes(&provider),
            provider: provider.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(Error::Rustls)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(LiveClientCert { live: live.clone() }));
        config.resumption = match self.settings.resumption {
            Resumption::Disabled => rustls::client::Resumption::disabled(),
            _ => rustls::client::Resumption::store(Arc::new(LiveClientSessions {
                live: live.clone(),
            })),
        };
        config.alpn_protocols = self.settings.alpn.clone();
        Ok(ClientTls {
            config: Arc::new(config),
            live,
            handshake_timeout: self.settings.handshake_timeout,
        })
    }
}

/// Connects to mutual-TLS servers; cheap to clone.
///
/// Made by [`ClientTls::connector`].
#[derive(Clone)]
pub struct Connector {
    inner: tokio_rustls::TlsConnector,
    live: Arc<ClientLive>,
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
    ) -> Result<(TlsStream<IO>, PeerIdentity), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            HandshakeError::new(
                RejectReason::Other,
                format!("{server_name:?} is not a DNS name or IP address: {e}"),
                None,
            )
        })?;
        let stream = handshake(
            &self.live,
            self.timeout,
            self.inner.connect(name.clone(), io),
        )
        .await?;
        let peer = admit(&self.live, stream.get_ref().1, Some(&name))?;
        Ok((stream, peer))
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
        admit(&self.live, conn, Some(&name))
    }
}

/// Verifies servers against the current generation.
struct LiveServerVerifier {
    live: Arc<ClientLive>,
    schemes: Vec<SignatureScheme>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for LiveServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("meshtls::LiveServerVerifier")
    }
}

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let generation = self.live.current();
        match self.live.judge(
            &generation,
            end_entity,
            intermediates,
            Some(server_name),
            now,
        ) {
            Ok(admitted) => {
                // Tickets for this name may be stored in this epoch, until
                // the verdict runs out.
                generation.sessions.verified(server_name, admitted.until);
                Ok(ServerCertVerified::assertion())
            }
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

/// Presents the current generation's certificate.
struct LiveClientCert {
    live: Arc<ClientLive>,
}

impl fmt::Debug for LiveClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("meshtls::LiveClientCert")
    }
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
struct LiveClientSessions {
    live: Arc<ClientLive>,
}

impl fmt::Debug for LiveClientSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("meshtls::LiveClientSessions")
    }
}

impl ClientSessionStore for LiveClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.live.current().sessions.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.live.current().sessions.kx_hint(server_name)
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
        self.live.current().sessions.insert(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.live.current().sessions.take(server_name)
    }
}
