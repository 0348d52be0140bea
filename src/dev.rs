//! A development CA (feature `dev`): mint a CA, intermediates and per-service
//! certificates with SPIFFE IDs and DNS SANs, and CRLs that revoke them.
//!
//! **For development and tests only.** Keys are generated in process memory
//! and written unencrypted; there is no audit, no HSM, no policy. Production
//! material comes from your PKI (cert-manager, Vault, SPIRE, ...).
//!
//! ```
//! use meshtls::dev::DevCa;
//! use std::time::Duration;
//!
//! let ca = DevCa::new("dev root")?;
//! let server = ca
//!     .leaf()
//!     .spiffe("spiffe://dev.local/ns/default/sa/api")
//!     .dns("api.local")
//!     .server()
//!     .valid_for(Duration::from_secs(3600))
//!     .issue()?;
//! assert!(server.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! # Ok::<(), meshtls::dev::DevError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};

/// A failure to mint development material.
#[derive(Debug, thiserror::Error)]
#[error("dev CA: {0}")]
pub struct DevError(String);

impl From<rcgen::Error> for DevError {
    fn from(e: rcgen::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<std::io::Error> for DevError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

/// The key algorithm of a minted certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256. The default.
    #[default]
    EcdsaP256,
    /// Ed25519.
    Ed25519,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures.
    Rsa2048,
}

impl KeyType {
    fn generate(self) -> Result<KeyPair, DevError> {
        Ok(match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
            Self::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
            }
        })
    }
}

fn random_serial() -> Result<SerialNumber, DevError> {
    let mut bytes = [0u8; 16];
    crate::hardening::random(&mut bytes).map_err(|_| DevError("no secure random source".into()))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    Ok(SerialNumber::from_slice(&bytes))
}

/// A CRL number that grows with `this_update` (its milliseconds since
/// 1970) and, for one CA, strictly with every CRL issued (`last` holds the
/// previous one): two CRLs made in the same millisecond are still ordered.
fn crl_number(this_update: SystemTime, last: &AtomicU64) -> SerialNumber {
    let millis = this_update
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis().clamp(1, u128::from(u64::MAX >> 2)));
    let millis = u64::try_from(millis).unwrap_or(1);
    let mut number = millis;
    let _ = last.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |prev| {
        number = millis.max(prev.saturating_add(1)).min(u64::MAX >> 1);
        Some(number)
    });
    let bytes = number.to_be_bytes();
    let mut first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    if bytes[first] & 0x80 != 0 {
        first -= 1; // a leading zero keeps it positive; `number` < 2^63 leaves room
    }
    SerialNumber::from_slice(&bytes[first..])
}

fn hex_serial(serial: &SerialNumber) -> String {
    crate::identity::hex_colon(&serial.to_bytes())
}

/// A development certificate authority (root or intermediate).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The number of the last CRL this CA issued.
    crl_numbers: AtomicU64,
    cert_pem: String,
    key_pem: String,
    /// The chain above this CA, up to but excluding the root (PEM).
    chain_above: String,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

fn ca_params(name: &str, lifetime: Duration) -> Result<CertificateParams, DevError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl DevCa {
    /// A new self-signed root CA (ECDSA P-256, ten years).
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn new(name: &str) -> Result<Self, DevError> {
        Self::with_key_type(name, KeyType::default())
    }

    /// A new self-signed root CA with the given key type.
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn with_key_type(name: &str, key_type: KeyType) -> Result<Self, DevError> {
        let key = key_type.generate()?;
        let params = ca_params(name, CA_LIFETIME)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            crl_numbers: AtomicU64::new(0),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            chain_above: String::new(),
        })
    }

    /// Loads a CA from its certificate and key (PEM), e.g. written by
    /// [`DevCa::write_to`].
    ///
    /// # Errors
    ///
    /// If either does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, DevError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            crl_numbers: AtomicU64::new(0),
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            chain_above: String::new(),
        })
    }

    /// An intermediate CA signed by this one. Leaves it issues carry it in
    /// their chain.
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn intermediate(&self, name: &str) -> Result<Self, DevError> {
        let key = KeyType::default().generate()?;
        let params = ca_params(name, CA_LIFETIME / 2)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_pem = cert.pem();
        Ok(Self {
            crl_numbers: AtomicU64::new(0),
            chain_above: format!("{cert_pem}{}", self.chain_above),
            cert_pem,
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// This CA's certificate (PEM): what peers put in their trust bundle
    /// (for a root) or receive in the chain (for an intermediate).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// This CA's private key (PEM, unencrypted).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Starts a leaf certificate signed by this CA.
    pub fn leaf(&self) -> LeafBuilder<'_> {
        LeafBuilder {
            ca: self,
            spiffe: None,
            uris: Vec::new(),
            dns: Vec::new(),
            cn: None,
            server: false,
            client: false,
            key_type: KeyType::default(),
            not_before: None,
            not_after: None,
            key: None,
        }
    }

    /// A CRL signed by this CA revoking the given certificates, valid for
    /// `valid_for` from now.
    ///
    /// # Errors
    ///
    /// If a serial does not parse or signing fails.
    pub fn crl(&self, revoked: &[&DevCert], valid_for: Duration) -> Result<String, DevError> {
        let serials: Vec<&str> = revoked.iter().map(|c| c.serial()).collect();
        self.crl_for_serials(&serials, valid_for)
    }

    /// A CRL revoking serials given as colon-separated hex (`01:ab:...`).
    ///
    /// # Errors
    ///
    /// If a serial does not parse or signing fails.
    pub fn crl_for_serials(
        &self,
        serials: &[&str],
        valid_for: Duration,
    ) -> Result<String, DevError> {
        let now = SystemTime::now();
        self.crl_between(serials, now - Duration::from_secs(60), now + valid_for)
    }

    /// A CRL with an explicit `thisUpdate` / `nextUpdate` (a stale CRL for
    /// tests), revoking serials given as colon-separated hex.
    ///
    /// # Errors
    ///
    /// If a serial does not parse or signing fails.
    pub fn crl_between(
        &self,
        serials: &[&str],
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<String, DevError> {
        let revoked_certs = serials
            .iter()
            .map(|s| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&parse_hex(s)?),
                    revocation_time: this_update.into(),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, DevError>>()?;
        let crl = CertificateRevocationListParams {
            this_update: this_update.into(),
            next_update: next_update.into(),
            // Newer CRLs get larger numbers, as a real CA's do.
            crl_number: crl_number(this_update, &self.crl_numbers),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)?;
        Ok(crl.pem()?)
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600 on Unix) into `dir`.
    ///
    /// # Errors
    ///
    /// If a file cannot be written.
    pub fn write_to(&self, dir: &Path) -> Result<(PathBuf, PathBuf), DevError> {
        std::fs::create_dir_all(dir)?;
        let cert = dir.join("ca.crt");
        let key = dir.join("ca.key");
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

fn parse_hex(serial: &str) -> Result<Vec<u8>, DevError> {
    let digits: String = serial.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err(DevError(format!("{serial:?} is not a hex serial")));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|_| DevError(format!("{serial:?} is not a hex serial")))
        })
        .collect()
}

fn write_private(path: &Path, contents: &str) -> Result<(), DevError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // Created 0600: the key is never readable by others, not even for a
    // moment (an existing file keeps its mode, so it is narrowed too).
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// Describes a leaf certificate; [`LeafBuilder::issue`] mints it.
#[must_use]
pub struct LeafBuilder<'a> {
    ca: &'a DevCa,
    spiffe: Option<String>,
    uris: Vec<String>,
    dns: Vec<String>,
    cn: Option<String>,
    server: bool,
    client: bool,
    key_type: KeyType,
    not_before: Option<SystemTime>,
    not_after: Option<SystemTime>,
    key: Option<String>,
}

impl fmt::Debug for LeafBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafBuilder")
            .field("spiffe", &self.spiffe)
            .field("dns", &self.dns)
            .field("cn", &self.cn)
            .finish_non_exhaustive()
    }
}

impl LeafBuilder<'_> {
    /// The SPIFFE ID (a URI SAN).
    pub fn spiffe(mut self, id: &str) -> Self {
        self.spiffe = Some(id.to_owned());
        self
    }

    /// A further URI SAN (a certificate with a SPIFFE ID and another URI is
    /// not an X509-SVID: for negative tests).
    pub fn uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }

    /// A DNS SAN (or an IP SAN, if `name` parses as an IP address).
    pub fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }

    /// The subject CN.
    pub fn cn(mut self, name: &str) -> Self {
        self.cn = Some(name.to_owned());
        self
    }

    /// Adds the serverAuth EKU.
    pub fn server(mut self) -> Self {
        self.server = true;
        self
    }

    /// Adds the clientAuth EKU.
    pub fn client(mut self) -> Self {
        self.client = true;
        self
    }

    /// The key type (default ECDSA P-256).
    pub fn key_type(mut self, key_type: KeyType) -> Self {
        self.key_type = key_type;
        self
    }

    /// Reuse an existing private key (PEM) instead of generating one, as a
    /// renewal that keeps its key does.
    pub fn key_pem(mut self, key_pem: &str) -> Self {
        self.key = Some(key_pem.to_owned());
        self
    }

    /// Valid from a minute ago for `lifetime` (default 24 hours).
    pub fn valid_for(mut self, lifetime: Duration) -> Self {
        let now = SystemTime::now();
        self.not_before = Some(now - Duration::from_secs(60));
        self.not_after = Some(now + lifetime);
        self
    }

    /// An explicit validity window (expired or future certificates for tests).
    pub fn valid_between(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = Some(not_before);
        self.not_after = Some(not_after);
        self
    }

    /// Mints the certificate.
    ///
    /// # Errors
    ///
    /// If a name is not valid for its SAN type, or signing fails.
    pub fn issue(self) -> Result<DevCert, DevError> {
        let key = match &self.key {
            Some(pem) => KeyPair::from_pem(pem)?,
            None => self.key_type.generate()?,
        };
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = &self.cn {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        for uri in self.spiffe.iter().chain(&self.uris) {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        for name in &self.dns {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let now = SystemTime::now();
        params.not_before = self
            .not_before
            .unwrap_or(now - Duration::from_secs(60))
            .into();
        params.not_after = self
            .not_after
            .unwrap_or(now + Duration::from_secs(24 * 3600))
            .into();
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(&key, &self.ca.issuer)?;
        Ok(DevCert {
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.ca.chain_above),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial: hex_serial(&serial),
        })
    }
}

/// A minted leaf certificate with its key.
#[derive(Clone)]
pub struct DevCert {
    cert_pem: String,
    chain_pem: String,
    key_pem: String,
    der: Vec<u8>,
    serial: String,
}

impl fmt::Debug for DevCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCert")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl DevCert {
    /// The leaf alone (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The leaf followed by its intermediates (PEM): what a service presents.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The private key (PKCS#8 PEM, unencrypted).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The leaf, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The serial, colon-separated hex, as [`PeerIdentity::serial`](crate::PeerIdentity::serial) shows it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Writes `tls.crt` (the chain) and `tls.key` (mode 0600 on Unix) into `dir`.
    ///
    /// # Errors
    ///
    /// If a file cannot be written.
    pub fn write_to(&self, dir: &Path) -> Result<(PathBuf, PathBuf), DevError> {
        std::fs::create_dir_all(dir)?;
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, &self.chain_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_back() {
        assert_eq!(parse_hex("01:ab").unwrap(), vec![1, 0xab]);
        assert!(parse_hex("1").is_err());
        assert!(parse_hex("zz").is_err());
    }

    #[test]
    fn leaf_serial_matches_peer_identity() {
        let ca = DevCa::new("t").unwrap();
        let leaf = ca.leaf().spiffe("spiffe://t/a").client().issue().unwrap();
        let peer = crate::PeerIdentity::from_leaf_der(leaf.der()).unwrap();
        assert_eq!(peer.serial(), leaf.serial());
        assert_eq!(peer.spiffe_id().map(|i| i.as_str()), Some("spiffe://t/a"));
    }
}
