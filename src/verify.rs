//! What the two verifiers share: judging a peer's chain under the current
//! generation, reporting a refusal, and the signature checks, which come
//! from `hardening.rs` and stay the same for the life of the config (rustls
//! asks for them at different moments of one handshake).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{Error as TlsError, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::hardening;
use crate::judge::{Admitted, Presented, note_refusal};
use crate::live::{Generation, Live};
use crate::side::Side;

/// The side-independent part of a verifier.
#[derive(Debug)]
pub(crate) struct Verifying<S: Side> {
    pub(crate) live: Arc<Live<S>>,
    schemes: Vec<SignatureScheme>,
    provider: Arc<CryptoProvider>,
}

impl<S: Side> Verifying<S> {
    pub(crate) fn new(live: &Arc<Live<S>>, provider: &Arc<CryptoProvider>) -> Self {
        Self {
            live: live.clone(),
            schemes: hardening::verify_schemes(provider),
            provider: provider.clone(),
        }
    }

    /// Judges the peer's chain in full under the current generation, which
    /// it hands back with the verdict. A refusal is noted for the acceptor or
    /// connector, reported, and turned into the error rustls sends an alert
    /// for.
    pub(crate) fn judge(
        &self,
        peer: Presented<'_>,
        now: UnixTime,
    ) -> Result<(Arc<Generation<S>>, Admitted), TlsError> {
        let generation = self.live.current_full();
        match self.live.judge_in(&generation, peer, now) {
            Ok(admitted) => Ok((generation, admitted)),
            Err(refusal) => {
                note_refusal(&refusal);
                let alert = refusal.alert();
                self.live
                    .observer()
                    .rejected(refusal.reason, refusal.detail);
                Err(TlsError::InvalidCertificate(alert))
            }
        }
    }

    pub(crate) fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, TlsError> {
        hardening::verify_tls13(&self.provider, message, cert, dss)
    }

    pub(crate) fn schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// The three signature methods that `ClientCertVerifier` and
/// `ServerCertVerifier` both have, answered alike, for a verifier whose `.0`
/// is a [`Verifying`]: TLS 1.2 is never negotiated, TLS 1.3 signatures and
/// schemes come from the config's provider.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &::rustls_pki_types::CertificateDer<'_>,
            _dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            Err($crate::hardening::refuse_tls12())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls_pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            self.0.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.0.schemes()
        }
    };
}
pub(crate) use signature_checks;
