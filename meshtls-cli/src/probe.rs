//! The peer's view: an in-memory TLS 1.3 handshake in which a meshtls peer
//! that trusts the given CA (and CRL) judges the chain under test, exactly
//! as it would over the network. No socket is opened.
//!
//! The peer's own side is a stand-in minted here (its CA is thrown away),
//! and the side under test presents the chain with its real key when that
//! key fits, else with a stand-in key: meshtls judges the chain before it
//! checks the handshake signature, so the verdict on the chain holds either
//! way.

use std::sync::Arc;

use meshtls::dev::{DevCa, DevCert};
use meshtls::error::RejectReason;
use meshtls::rustls::client::ResolvesClientCert;
use meshtls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use meshtls::rustls::crypto::CryptoProvider;
use meshtls::rustls::pki_types::pem::PemObject;
use meshtls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use meshtls::rustls::server::{ClientHello, ResolvesServerCert};
use meshtls::rustls::sign::{CertifiedKey, SigningKey};
use meshtls::rustls::{
    self, ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig,
    ServerConnection, SignatureScheme,
};
use meshtls::{Allow, ClientTls, Event, ServerTls, Source};

use crate::x509::{load_key, provider};

/// The name the stand-in server answers to (never resolved).
const STAND_IN_NAME: &str = "peer.meshtls-check.invalid";

/// Which side the files under test serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A server's certificate, judged by a client.
    Server,
    /// A client's certificate, judged by a server.
    Client,
}

impl Role {
    /// `server` / `client`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }

    /// Who judges this side: `client` / `server`.
    pub(crate) fn peer(self) -> &'static str {
        match self {
            Self::Server => "client",
            Self::Client => "server",
        }
    }
}

/// What the peer made of the chain.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A whole handshake with these files completed and the peer admitted them.
    Admitted,
    /// The peer's verifier accepted the chain; the handshake itself used a
    /// stand-in key, the real one not fitting the certificate.
    ChainAccepted,
    /// The peer refused the chain.
    Refused {
        /// meshtls's class for it.
        reason: RejectReason,
        /// meshtls's words for it (the certificate, the CA, the CRL).
        detail: String,
    },
    /// No peer could be made with the CA and CRL files (meshtls's error).
    PeerSetup(String),
    /// The handshake failed for another reason.
    Inconclusive(String),
}

/// Presents one chain and key, whatever is asked.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for Present {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The presenting client does not judge the stand-in server: only the
/// meshtls side's verdict is wanted, and nothing is sent over this
/// connection but the handshake, in memory.
#[derive(Debug)]
struct StandInServerNotJudged(Arc<CryptoProvider>);

impl ServerCertVerifier for StandInServerNotJudged {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Has a meshtls peer trusting `ca` (and `crl`) judge `chain` presented as
/// `role`, with `key` when it is the certificate's key.
pub(crate) fn judge(
    role: Role,
    chain: &[Vec<u8>],
    key: Option<Arc<dyn SigningKey>>,
    ca: &str,
    crl: Option<&str>,
) -> Verdict {
    match run(role, chain, key, ca, crl) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// [`judge`], with early returns.
fn run(
    role: Role,
    chain: &[Vec<u8>],
    key: Option<Arc<dyn SigningKey>>,
    ca: &str,
    crl: Option<&str>,
) -> Result<Verdict, Verdict> {
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        Verdict::Inconclusive(format!("cannot set up the {what}: {e}"))
    };
    let stand_in = stand_in().map_err(|e| setup("stand-in peer", &e))?;
    let real_key = key.is_some();
    let key = match key {
        Some(key) => key,
        None => {
            let der = PrivateKeyDer::from_pem_slice(stand_in.key_pem().as_bytes())
                .map_err(|e| setup("stand-in key", &format!("{e:?}")))?;
            load_key(der).map_err(|e| setup("stand-in key", &e))?.0
        }
    };
    let certs = chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let present = Arc::new(Present(Arc::new(CertifiedKey::new(certs, key))));
    let provider = provider();
    let tls13 = [&rustls::version::TLS13];
    let name = ServerName::try_from(STAND_IN_NAME).map_err(|e| setup("server name", &e))?;
    let peer_identity = || {
        (
            Source::pem(
                "the stand-in peer's certificate",
                stand_in.chain_pem().as_bytes().to_vec(),
            ),
            Source::pem(
                "the stand-in peer's key",
                stand_in.key_pem().as_bytes().to_vec(),
            ),
        )
    };
    let (cert, peer_key) = peer_identity();
    match role {
        Role::Client => {
            let mut builder = ServerTls::builder()
                .identity(cert, peer_key)
                .client_roots(Source::file(ca));
            if let Some(crl) = crl {
                builder = builder.crl_file(crl);
            }
            let server = builder
                .dangerous()
                .allow_any_authenticated()
                .build()
                .map_err(|e| Verdict::PeerSetup(e.to_string()))?;
            let mut events = server.subscribe();
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&tls13)
                .map_err(|e| setup("client", &e))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(StandInServerNotJudged(provider)))
                .with_client_cert_resolver(present);
            let mut client = Connection::Client(
                ClientConnection::new(Arc::new(config), name).map_err(|e| setup("client", &e))?,
            );
            let mut conn = Connection::Server(
                ServerConnection::new(server.config()).map_err(|e| setup("server", &e))?,
            );
            let outcome = pump(&mut client, &mut conn);
            if let Some(refused) = rejected(|| events.try_recv().ok()) {
                return Ok(refused);
            }
            match (outcome, conn) {
                (Ok(()), Connection::Server(conn)) => Ok(match server.acceptor().identify(&conn) {
                    Ok(_) if real_key => Verdict::Admitted,
                    Ok(_) => Verdict::ChainAccepted,
                    Err(e) => Verdict::Refused {
                        reason: e.reason(),
                        detail: e.detail().to_owned(),
                    },
                }),
                (Err(e), _) => Ok(after_judgment(real_key, e)),
                (Ok(()), _) => Err(Verdict::Inconclusive("the sides got mixed up".into())),
            }
        }
        Role::Server => {
            let mut builder = ClientTls::builder()
                .identity(cert, peer_key)
                .server_roots(Source::file(ca));
            if let Some(crl) = crl {
                builder = builder.crl_file(crl);
            }
            let client = builder
                .expect_server(Allow::custom("any server the CA signed", |_| true))
                .build()
                .map_err(|e| Verdict::PeerSetup(e.to_string()))?;
            let mut events = client.subscribe();
            let config = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&tls13)
                .map_err(|e| setup("server", &e))?
                .with_no_client_auth()
                .with_cert_resolver(present);
            let mut conn = Connection::Client(
                ClientConnection::new(client.config(), name).map_err(|e| setup("client", &e))?,
            );
            let mut server = Connection::Server(
                ServerConnection::new(Arc::new(config)).map_err(|e| setup("server", &e))?,
            );
            let outcome = pump(&mut server, &mut conn);
            if let Some(refused) = rejected(|| events.try_recv().ok()) {
                return Ok(refused);
            }
            match (outcome, conn) {
                (Ok(()), Connection::Client(conn)) => {
                    Ok(match client.connector().identify(&conn, STAND_IN_NAME) {
                        Ok(_) if real_key => Verdict::Admitted,
                        Ok(_) => Verdict::ChainAccepted,
                        Err(e) => Verdict::Refused {
                            reason: e.reason(),
                            detail: e.detail().to_owned(),
                        },
                    })
                }
                (Err(e), _) => Ok(after_judgment(real_key, e)),
                (Ok(()), _) => Err(Verdict::Inconclusive("the sides got mixed up".into())),
            }
        }
    }
}

/// What meshtls made of a CRL file with a CA file.
#[derive(Debug)]
pub(crate) enum CrlLoad {
    /// Every CRL in it is signed by a CA there, current and readable.
    Accepted,
    /// meshtls refuses the set (its error names the CRL and why).
    Refused(meshtls::Error),
    /// It could not be tried (the stand-in peer could not be made).
    NotJudged(String),
}

/// Loads `crl` with the roots in `ca` as the peer judging a `role` would
/// (a meshtls server with client roots, or a client with server roots):
/// meshtls matches each CRL to the CA key that signed it, and refuses a CRL
/// no CA there signed, a stale one and an unreadable one.
pub(crate) fn load_crls(role: Role, ca: &str, crl: &str) -> CrlLoad {
    let stand_in = match stand_in() {
        Ok(stand_in) => stand_in,
        Err(e) => return CrlLoad::NotJudged(format!("cannot set up the stand-in peer: {e}")),
    };
    let cert = Source::pem(
        "the stand-in peer's certificate",
        stand_in.chain_pem().as_bytes().to_vec(),
    );
    let key = Source::pem(
        "the stand-in peer's key",
        stand_in.key_pem().as_bytes().to_vec(),
    );
    let built = match role {
        Role::Client => ServerTls::builder()
            .identity(cert, key)
            .client_roots(Source::file(ca))
            .crl_file(crl)
            .dangerous()
            .allow_any_authenticated()
            .build()
            .map(drop),
        Role::Server => ClientTls::builder()
            .identity(cert, key)
            .server_roots(Source::file(ca))
            .crl_file(crl)
            .expect_server(Allow::custom("any server the CA signed", |_| true))
            .build()
            .map(drop),
    };
    match built {
        Ok(()) => CrlLoad::Accepted,
        Err(e) => CrlLoad::Refused(e),
    }
}

/// The stand-in peer: a leaf of a CA minted for this check alone.
fn stand_in() -> Result<DevCert, meshtls::dev::DevError> {
    DevCa::new("meshtls check stand-in peer CA")?
        .leaf()
        .cn(STAND_IN_NAME)
        .dns(STAND_IN_NAME)
        .server()
        .client()
        .issue()
}

/// The refusal the judging side reported, if it refused; `next` hands out
/// its events.
fn rejected(mut next: impl FnMut() -> Option<Event>) -> Option<Verdict> {
    while let Some(event) = next() {
        if let Event::Rejected { reason, detail, .. } = event {
            return Some(Verdict::Refused { reason, detail });
        }
    }
    None
}

/// The handshake failed, and the judging side refused nothing: with a
/// stand-in key that is the signature failing after the chain was accepted.
fn after_judgment(real_key: bool, (side, error): (Side, rustls::Error)) -> Verdict {
    let signature = matches!(
        error,
        rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
            | rustls::Error::PeerMisbehaved(_)
    );
    if !real_key && side == Side::Judge && signature {
        Verdict::ChainAccepted
    } else {
        Verdict::Inconclusive(format!("the handshake failed: {error}"))
    }
}

/// Which connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The meshtls side, judging.
    Judge,
    /// The side presenting the files under test.
    Presenter,
}

/// Runs the handshake between the presenting side and the judging one in
/// memory, saying which of the two failed.
fn pump(presenter: &mut Connection, judge: &mut Connection) -> Result<(), (Side, rustls::Error)> {
    for _ in 0..16 {
        transfer(presenter, judge).map_err(|e| (Side::Judge, e))?;
        transfer(judge, presenter).map_err(|e| (Side::Presenter, e))?;
        if !presenter.is_handshaking() && !judge.is_handshaking() {
            return Ok(());
        }
    }
    Err((
        Side::Presenter,
        rustls::Error::General("the handshake did not finish".into()),
    ))
}

/// Moves what `from` has to send into `to`, and has `to` process it.
fn transfer(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let io = |e: std::io::Error| rustls::Error::General(e.to_string());
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).map_err(io)?;
    }
    let mut bytes = wire.as_slice();
    while !bytes.is_empty() {
        to.read_tls(&mut bytes).map_err(io)?;
        to.process_new_packets()?;
    }
    Ok(())
}
