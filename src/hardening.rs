//! The one place that decides protocol versions, cipher suites, key-exchange
//! groups and the crypto provider.
//!
//! TLS 1.3-only is made true twice: the configs are built with only TLS 1.3
//! in their versions list, and the provider holds TLS 1.3 suites alone. So a
//! `tls12` feature that another crate turns on in rustls changes nothing, and
//! the process-wide default provider is never consulted (it panics when both
//! aws-lc-rs and ring are linked in, as they often are).

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::ProducesTickets;
use rustls::{SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion};

use crate::error::Error;

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!(
    "meshtls needs a crypto provider: enable the `aws-lc-rs` (default) or `ring` feature"
);

#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as imp;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use rustls::crypto::ring as imp;

/// The only protocol version meshtls speaks.
pub(crate) static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The choices a builder may make about the TLS parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hardening {
    /// Also offer TLS13_AES_128_GCM_SHA256 (after the 256-bit suites).
    pub(crate) aes128: bool,
    /// Offer classical key exchange only (no X25519MLKEM768).
    pub(crate) classical_kx: bool,
}

impl Hardening {
    /// The provider for a config: TLS 1.3 suites only, in our order.
    pub(crate) fn provider(self) -> Arc<CryptoProvider> {
        let base = imp::default_provider();
        Arc::new(CryptoProvider {
            cipher_suites: self.cipher_suites(),
            kx_groups: self.kx_groups(),
            ..base
        })
    }

    fn cipher_suites(self) -> Vec<SupportedCipherSuite> {
        use imp::cipher_suite::*;
        let mut suites = vec![TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
        if self.aes128 {
            suites.push(TLS13_AES_128_GCM_SHA256);
        }
        suites
    }

    fn kx_groups(self) -> Vec<&'static dyn SupportedKxGroup> {
        use imp::kx_group::*;
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        #[cfg(feature = "aws-lc-rs")]
        if !self.classical_kx {
            groups.push(X25519MLKEM768);
        }
        groups.extend([X25519, SECP256R1, SECP384R1]);
        groups
    }
}

/// Signature schemes we accept from peers: the provider's, for the life of the
/// config (never from a generation).
pub(crate) fn verify_schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// What both verifiers answer for a TLS 1.2 signature: never negotiated.
pub(crate) fn refuse_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

/// A TLS 1.3 handshake signature, checked with the config's provider.
pub(crate) fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &rustls_pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// A fresh ticket key set (rotating every 6 hours), one per policy generation.
pub(crate) fn ticketer() -> Result<Arc<dyn ProducesTickets>, Error> {
    imp::Ticketer::new().map_err(Error::Rustls)
}

/// Fills `buf` from the provider's secure random source.
#[cfg(feature = "dev")]
pub(crate) fn random(buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
    imp::default_provider().secure_random.fill(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls13_suites() {
        for h in [
            Hardening::default(),
            Hardening {
                aes128: true,
                classical_kx: true,
            },
        ] {
            let p = h.provider();
            assert!(
                p.cipher_suites
                    .iter()
                    .all(|s| s.version() == &rustls::version::TLS13)
            );
        }
    }

    #[test]
    fn aes128_only_when_asked() {
        let names = |h: Hardening| -> Vec<String> {
            h.provider()
                .cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect()
        };
        assert_eq!(
            names(Hardening::default()),
            ["TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256"]
        );
        assert!(
            names(Hardening {
                aes128: true,
                ..Default::default()
            })
            .contains(&"TLS13_AES_128_GCM_SHA256".to_owned())
        );
    }

    #[cfg(feature = "aws-lc-rs")]
    #[test]
    fn post_quantum_first_unless_opted_out() {
        let first = |h: Hardening| format!("{:?}", h.provider().kx_groups[0].name());
        assert_eq!(first(Hardening::default()), "X25519MLKEM768");
        let classical = Hardening {
            classical_kx: true,
            ..Default::default()
        };
        assert_eq!(first(classical), "X25519");
        assert!(
            !classical
                .provider()
                .kx_groups
                .iter()
                .any(|g| format!("{:?}", g.name()).contains("MLKEM"))
        );
    }
}
