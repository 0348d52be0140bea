//! The tripwire on rustls's session encoding: [`client_chain`](super::client_chain)
//! reads a format private to rustls 0.23, under a caret dependency. Before
//! a server offers resumption, one real session is sealed in memory by
//! this build's rustls (tickets and the stateful cache both), and the
//! client chain must be found in it. If it is not, the server turns
//! resumption off, loudly, instead of every resumption failing silently.
//!
//! The probe runs a real TLS 1.3 handshake between two throwaway configs
//! that authenticate nothing (the certificates are placeholder bytes and
//! every signature is accepted): only the encoding is under test. The
//! configs never leave this module.

use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerConfig, StoresServerSessions,
};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{
    DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureAlgorithm,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::hardening::VERSIONS;

/// The client's chain in the probe: placeholder bytes, never parsed.
const LEAF: &[u8] = b"meshtls session probe: the client's leaf";
const INTERMEDIATE: &[u8] = b"meshtls session probe: an intermediate";

/// Reads a session value as the server's hooks do.
pub(crate) type ChainReader = fn(&[u8]) -> Option<(CertificateDer<'_>, Vec<CertificateDer<'_>>)>;

/// Whether this build's rustls stores sessions the way `read` finds the
/// client chain in them; checked once per process (the encoding is this
/// build's). `Err` says what went wrong.
pub(crate) fn session_format(provider: &Arc<CryptoProvider>) -> Result<(), String> {
    #[cfg(test)]
    if BROKEN_READER.with(std::cell::Cell::get) {
        return probe(provider, |_| None);
    }
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| probe(provider, super::client_chain))
        .clone()
}

#[cfg(test)]
thread_local! {
    /// Tests: stands in for a rustls whose encoding changed.
    pub(crate) static BROKEN_READER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Seals sessions in memory with this build's rustls and reads them back.
pub(crate) fn probe(provider: &Arc<CryptoProvider>, read: ChainReader) -> Result<(), String> {
    let recorder = Arc::new(Recorder::default());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let key = Arc::new(CertifiedKey::new(
        vec![
            CertificateDer::from(LEAF.to_vec()),
            CertificateDer::from(INTERMEDIATE.to_vec()),
        ],
        Arc::new(ProbeKey),
    ));
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(AcceptAll(schemes.clone())))
        .with_cert_resolver(Arc::new(Fixed(key.clone())));
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAll(schemes)))
            .with_client_cert_resolver(Arc::new(Fixed(key))),
    );
    let mut tickets = server.clone();
    tickets.ticketer = recorder.clone();
    let mut stateful = server;
    stateful.ticketer = Arc::new(Off);
    stateful.session_storage = recorder.clone();
    for (kind, config) in [("ticket", tickets), ("session cache", stateful)] {
        let before = recorder.count();
        exchange(client.clone(), Arc::new(config))?;
        if recorder.count() == before {
            return Err(format!("rustls sealed no {kind} in the probe"));
        }
    }
    let values = recorder.0.lock().unwrap_or_else(|p| p.into_inner());
    for value in values.iter() {
        let found = read(value).is_some_and(|(leaf, rest)| {
            leaf.as_ref() == LEAF && rest.len() == 1 && rest[0].as_ref() == INTERMEDIATE
        });
        if !found {
            return Err(format!(
                "the client chain was not found in a session value of {} bytes that this build's rustls sealed",
                value.len()
            ));
        }
    }
    Ok(())
}

/// A handshake in memory, to its end (tickets included).
fn exchange(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Result<(), String> {
    let name = ServerName::try_from("probe.meshtls.invalid").map_err(|e| e.to_string())?;
    let mut c = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
    let mut s = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
    let fail = |e: &dyn std::fmt::Display| format!("the probe's handshake failed: {e}");
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).map_err(|e| fail(&e))?;
        }
        s.read_tls(&mut &buf[..]).map_err(|e| fail(&e))?;
        s.process_new_packets().map_err(|e| fail(&e))?;
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).map_err(|e| fail(&e))?;
        }
        c.read_tls(&mut &buf[..]).map_err(|e| fail(&e))?;
        c.process_new_packets().map_err(|e| fail(&e))?;
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    Ok(())
}

/// Records what rustls seals: as a ticketer (the plaintext) and as a cache.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Vec<u8>>>);

impl Recorder {
    fn record(&self, value: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(value.to_vec());
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl ProducesTickets for Recorder {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        60
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.record(plain);
        Some(plain.to_vec())
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

impl StoresServerSessions for Recorder {
    fn put(&self, _: Vec<u8>, value: Vec<u8>) -> bool {
        self.record(&value);
        true
    }
    fn get(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn take(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn can_cache(&self) -> bool {
        true
    }
}

/// No tickets (so the stateful cache is used).
#[derive(Debug)]
struct Off;

impl ProducesTickets for Off {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// A key whose signatures are placeholder bytes (the verifiers accept all).
#[derive(Debug)]
struct ProbeKey;

impl SigningKey for ProbeKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .first()
            .map(|scheme| Box::new(ProbeSigner(*scheme)) as Box<dyn Signer>)
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct ProbeSigner(SignatureScheme);

impl Signer for ProbeSigner {
    fn sign(&self, _: &[u8]) -> Result<Vec<u8>, TlsError> {
        Ok(vec![0; 8])
    }
    fn scheme(&self) -> SignatureScheme {
        self.0
    }
}

/// Presents the probe's chain, on either side.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The signature methods both verifier traits have: every TLS 1.3
/// signature accepted (TLS 1.2 is never negotiated), the provider's schemes.
macro_rules! accepts_every_signature {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            Err(crate::hardening::refuse_tls12())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.clone()
        }
    };
}

/// Accepts every certificate and signature: the probe authenticates
/// nothing (its configs never leave this module).
#[derive(Debug)]
struct AcceptAll(Vec<SignatureScheme>);

impl ClientCertVerifier for AcceptAll {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        Ok(ClientCertVerified::assertion())
    }
    accepts_every_signature!();
}

impl ServerCertVerifier for AcceptAll {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }
    accepts_every_signature!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_builds_rustls_passes_the_tripwire() {
        let provider = crate::hardening::Hardening::default().provider();
        assert_eq!(probe(&provider, super::super::client_chain), Ok(()));
    }

    #[test]
    fn a_changed_encoding_trips_it() {
        let provider = crate::hardening::Hardening::default().provider();
        let err = probe(&provider, |_| None).unwrap_err();
        assert!(err.contains("not found"), "{err}");
        // A reader that finds a chain, but not the one sealed.
        let err = probe(&provider, |v| {
            Some((CertificateDer::from(&v[..1]), Vec::new()))
        })
        .unwrap_err();
        assert!(err.contains("not found"), "{err}");
    }
}
