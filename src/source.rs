//! Where material comes from ([`Source`]: a PEM file, PEM bytes, or a
//! PKCS#12 keystore with the `pkcs12` feature) and reading it; PEM through
//! `rustls-pki-types`' [`PemObject`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::error::{Error, MaterialError, MaterialKind, Origin};

/// `der` as a PEM block with `label` (`CERTIFICATE`, `PRIVATE KEY`), for
/// material that arrives as DER and is handed over as PEM.
#[cfg_attr(not(feature = "workload-api"), allow(dead_code))]
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let bytes = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Files larger than this are refused before parsing: no certificate chain,
/// key, bundle or CRL a service uses comes near it, and a mistaken path
/// (a log, a disk image) should not be read into memory.
pub(crate) const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// Where one piece of material (a chain, a key, a CA bundle, a CRL) comes
/// from, and in what format.
///
/// Files are read again on every reload; in-memory PEM changes when the
/// application hands over new material with [`Mtls::update`](crate::Mtls::update).
///
/// ```
/// use meshtls::Source;
/// let from_disk = Source::file("/etc/tls/tls.crt");
/// let in_memory = Source::pem("client CA", b"-----BEGIN CERTIFICATE-----\n...".to_vec());
/// # let _ = (from_disk, in_memory);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    location: Location,
    format: Format,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    File(PathBuf),
    Memory { label: String, bytes: Arc<[u8]> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Format {
    Pem,
    #[cfg(feature = "pkcs12")]
    Pkcs12(crate::pkcs12::Keystore),
}

impl Source {
    /// A PEM file, read at build time and again on every reload.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            location: Location::File(path.into()),
            format: Format::Pem,
        }
    }

    /// PEM bytes held in memory; `label` names them in errors.
    pub fn pem(label: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            location: Location::Memory {
                label: label.into(),
                bytes: Arc::from(bytes.into()),
            },
            format: Format::Pem,
        }
    }

    /// A PKCS#12 file (`.p12`, `.pfx`) protected by `password`, as Java and
    /// Spring Boot keystores and truststores are. As an identity it must hold
    /// one private key entry (or name one with [`Source::alias`]); as trust
    /// roots, every certificate not bound to a key is trusted. Reloaded like
    /// any file.
    #[cfg(feature = "pkcs12")]
    pub fn pkcs12_file(path: impl Into<PathBuf>, password: impl Into<String>) -> Self {
        Self {
            location: Location::File(path.into()),
            format: Format::Pkcs12(crate::pkcs12::Keystore::new(password.into())),
        }
    }

    /// Picks the key entry named `alias` (its friendly name) in a PKCS#12
    /// keystore with several. No effect on other formats.
    #[cfg(feature = "pkcs12")]
    #[must_use]
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        if let Format::Pkcs12(keystore) = &mut self.format {
            keystore.alias = Some(alias.into());
        }
        self
    }

    /// Where this source is, for messages.
    pub(crate) fn origin(&self) -> Origin {
        match &self.location {
            Location::File(p) => Origin::File(p.clone()),
            Location::Memory { label, .. } => Origin::Memory(label.clone()),
        }
    }

    /// The file's path, if this source is a file.
    pub(crate) fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::File(p) => Some(p),
            Location::Memory { .. } => None,
        }
    }

    /// Reads the bytes, refusing anything over `MAX_FILE_SIZE`.
    pub(crate) fn read(&self, kind: MaterialKind) -> Result<Arc<[u8]>, Error> {
        match &self.location {
            Location::Memory { bytes, .. } => {
                check_size(self, kind, bytes.len() as u64)?;
                Ok(bytes.clone())
            }
            Location::File(path) => {
                let read_err = |source| MaterialError::Read {
                    origin: self.origin(),
                    kind,
                    source: Arc::new(source),
                };
                let file = File::open(path).map_err(read_err)?;
                let size = file.metadata().map_err(read_err)?.len();
                check_size(self, kind, size)?;
                // The file may grow between the size check and the read.
                let mut buf = Vec::with_capacity(size as usize);
                file.take(MAX_FILE_SIZE + 1)
                    .read_to_end(&mut buf)
                    .map_err(read_err)?;
                check_size(self, kind, buf.len() as u64)?;
                Ok(Arc::from(buf))
            }
        }
    }

    /// The certificates in `bytes` (read from this source), in order; at
    /// least one. For a PKCS#12 identity: the key's chain, leaf first.
    pub(crate) fn certificates(
        &self,
        bytes: &[u8],
        kind: MaterialKind,
    ) -> Result<Vec<CertificateDer<'static>>, Error> {
        match &self.format {
            Format::Pem => certificates(&self.origin(), bytes, kind),
            #[cfg(feature = "pkcs12")]
            Format::Pkcs12(keystore) => keystore.certificates(&self.origin(), bytes, kind),
        }
    }

    /// The private key in `bytes` (read from this source).
    pub(crate) fn private_key(&self, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
        match &self.format {
            Format::Pem => private_key(&self.origin(), bytes),
            #[cfg(feature = "pkcs12")]
            Format::Pkcs12(keystore) => keystore.private_key(&self.origin(), bytes),
        }
    }

    /// The CRLs in `bytes` (PEM only).
    pub(crate) fn crls(
        &self,
        bytes: &[u8],
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
        crls(&self.origin(), bytes)
    }
}

fn check_size(source: &Source, kind: MaterialKind, size: u64) -> Result<(), Error> {
    if size > MAX_FILE_SIZE {
        return Err(MaterialError::TooLarge {
            origin: source.origin(),
            kind,
            size,
            limit: MAX_FILE_SIZE,
        }
        .into());
    }
    Ok(())
}

/// The labels of the PEM blocks in `bytes` (`CERTIFICATE`, `PRIVATE KEY`, ...).
fn pem_labels(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("-----BEGIN ")?
                .strip_suffix("-----")
                .map(str::to_owned)
        })
        .collect()
}

/// The checks every PEM input gets before parsing: not empty, not DER, has PEM.
fn precheck(origin: &Origin, bytes: &[u8], kind: MaterialKind) -> Result<(), Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(MaterialError::Empty {
            origin: origin.clone(),
            kind,
        }
        .into());
    }
    // A DER SEQUENCE with a long-form length: what every certificate, key and CRL starts with.
    if bytes.len() > 4 && bytes[0] == 0x30 && (bytes[1] == 0x82 || bytes[1] == 0x81) {
        return Err(MaterialError::DerNotPem {
            origin: origin.clone(),
            kind,
        }
        .into());
    }
    Ok(())
}

fn malformed(origin: &Origin, kind: MaterialKind, e: pem::Error) -> Error {
    let detail = match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a block has no END line (expected {})",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "a BEGIN line is malformed: {:?}",
            String::from_utf8_lossy(&line)
        ),
        pem::Error::Base64Decode(msg) => format!("the base64 does not decode: {msg}"),
        other => other.to_string(),
    };
    MaterialError::MalformedPem {
        origin: origin.clone(),
        kind,
        detail,
    }
    .into()
}

/// All `CERTIFICATE` blocks, in order; at least one.
fn certificates(
    origin: &Origin,
    bytes: &[u8],
    kind: MaterialKind,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    pem_blocks(origin, bytes, kind)
}

/// Every PEM block of `T`'s kind (certificates, CRLs), in order; at least one.
fn pem_blocks<T: PemObject>(
    origin: &Origin,
    bytes: &[u8],
    kind: MaterialKind,
) -> Result<Vec<T>, Error> {
    precheck(origin, bytes, kind)?;
    let blocks = T::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(origin, kind, e))?;
    if blocks.is_empty() {
        return Err(MaterialError::NotFound {
            origin: origin.clone(),
            kind,
            found: pem_labels(bytes),
        }
        .into());
    }
    Ok(blocks)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1).
fn private_key(origin: &Origin, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    let kind = MaterialKind::PrivateKey;
    precheck(origin, bytes, kind)?;
    let labels = pem_labels(bytes);
    let encrypted = labels.iter().any(|l| l.contains("ENCRYPTED"))
        || String::from_utf8_lossy(bytes).contains("Proc-Type: 4,ENCRYPTED");
    if encrypted {
        return Err(MaterialError::EncryptedKey {
            origin: origin.clone(),
        }
        .into());
    }
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(MaterialError::NotFound {
            origin: origin.clone(),
            kind,
            found: labels,
        }
        .into()),
        Err(e) => Err(malformed(origin, kind, e)),
    }
}

/// All `X509 CRL` blocks; at least one.
fn crls(
    origin: &Origin,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    pem_blocks(origin, bytes, MaterialKind::Crl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin::Memory("test".into())
    }

    /// PEM written here reads back as the same DER, for every padding.
    #[test]
    fn pem_encoding_round_trips() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
            if len == 0 {
                continue;
            }
            let back =
                certificates(&origin(), pem.as_bytes(), MaterialKind::CertificateChain).unwrap();
            assert_eq!(back[0].as_ref(), &der[..], "length {len}");
        }
    }

    #[test]
    fn empty_and_whitespace_are_empty() {
        for input in [&b""[..], b"  \n\t\n"] {
            let e = certificates(&origin(), input, MaterialKind::CertificateChain).unwrap_err();
            assert!(
                matches!(e, Error::Material(MaterialError::Empty { .. })),
                "{e}"
            );
        }
    }

    #[test]
    fn der_is_recognized() {
        let e = certificates(
            &origin(),
            &[0x30, 0x82, 0x01, 0x0a, 0x30],
            MaterialKind::TrustRoots,
        )
        .unwrap_err();
        assert!(e.to_string().contains("openssl x509 -inform DER"), "{e}");
    }

    #[test]
    fn wrong_block_names_what_was_found() {
        let pem = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n";
        let e = private_key(&origin(), pem).unwrap_err();
        assert!(
            matches!(&e, Error::Material(MaterialError::NotFound { found, .. }) if found == &["PUBLIC KEY"]),
            "{e}"
        );
    }

    #[test]
    fn encrypted_keys_are_named() {
        let pem =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            private_key(&origin(), pem),
            Err(Error::Material(MaterialError::EncryptedKey { .. }))
        ));
        let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(
            private_key(&origin(), legacy),
            Err(Error::Material(MaterialError::EncryptedKey { .. }))
        ));
    }

    #[test]
    fn truncated_pem_is_malformed() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n";
        let e = certificates(&origin(), pem, MaterialKind::CertificateChain).unwrap_err();
        assert!(
            matches!(e, Error::Material(MaterialError::MalformedPem { .. })),
            "{e}"
        );
    }

    #[test]
    fn oversized_memory_source_is_refused() {
        let big = Source::pem("big", vec![b'a'; (MAX_FILE_SIZE + 1) as usize]);
        assert!(matches!(
            big.read(MaterialKind::TrustRoots),
            Err(Error::Material(MaterialError::TooLarge { .. }))
        ));
    }
}
