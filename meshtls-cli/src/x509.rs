//! What a certificate, CRL or key says, read once into plain values.

use std::net::IpAddr;
use std::sync::Arc;

use meshtls::PeerIdentity;
use meshtls::rustls::crypto::CryptoProvider;
use meshtls::rustls::pki_types::PrivateKeyDer;
use meshtls::rustls::sign::SigningKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

use crate::text::{hex_colon, safe};

/// The crypto provider meshtls serves with (aws-lc-rs, its default).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(meshtls::rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate's fields, as a reviewer reads them.
#[derive(Debug, Clone)]
pub(crate) struct CertView {
    /// The subject (`CN=api, O=Example`), or `(empty subject)`.
    pub(crate) subject: String,
    /// The subject's first CN.
    pub(crate) cn: Option<String>,
    /// The issuer, formatted like the subject.
    pub(crate) issuer: String,
    /// Subject and issuer, DER, to match certificates with their issuers.
    pub(crate) subject_der: Vec<u8>,
    /// See `subject_der`.
    pub(crate) issuer_der: Vec<u8>,
    /// The serial, colon-separated hex.
    pub(crate) serial: String,
    /// The X.509 version: 1, 2 or 3 (webpki accepts only 3).
    pub(crate) version: u32,
    /// Validity, seconds since 1970.
    pub(crate) not_before: i64,
    /// See `not_before`.
    pub(crate) not_after: i64,
    /// basicConstraints cA=true.
    pub(crate) is_ca: bool,
    /// keyUsage keyCertSign or cRLSign.
    pub(crate) signs: bool,
    /// DNS SANs, as written.
    pub(crate) dns: Vec<String>,
    /// URI SANs, as written.
    pub(crate) uris: Vec<String>,
    /// IP SANs.
    pub(crate) ips: Vec<String>,
    /// SANs of other kinds (e-mail, directory names, ...), in words.
    pub(crate) other_sans: Vec<String>,
    /// The extendedKeyUsage purposes, or `None` without the extension (any use).
    pub(crate) eku: Option<Vec<String>>,
    /// The public key, in words (`ECDSA P-256`).
    pub(crate) key: String,
    /// The SubjectPublicKeyInfo, DER.
    pub(crate) spki: Vec<u8>,
    /// The authorityKeyIdentifier's key identifier: which key of the
    /// issuer signed it (to tell same-named CAs apart in explanations).
    pub(crate) authority_key_id: Option<Vec<u8>>,
    /// The SPIFFE ID (leaves), or why the certificate cannot stand for a
    /// workload identity (meshtls's X509-SVID rules).
    pub(crate) identity: Result<Option<String>, String>,
}

impl CertView {
    /// Reads a certificate (DER).
    pub(crate) fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let ext = |what: &str, e: x509_parser::error::X509Error| format!("bad {what}: {e}");
        let basic = cert
            .basic_constraints()
            .map_err(|e| ext("basicConstraints", e))?;
        let key_usage = cert.key_usage().map_err(|e| ext("keyUsage", e))?;
        let eku = cert
            .extended_key_usage()
            .map_err(|e| ext("extendedKeyUsage", e))?
            .map(|e| {
                let e = e.value;
                let mut out = Vec::new();
                for (on, name) in [
                    (e.server_auth, "serverAuth"),
                    (e.client_auth, "clientAuth"),
                    (e.any, "anyExtendedKeyUsage"),
                    (e.code_signing, "codeSigning"),
                    (e.email_protection, "emailProtection"),
                    (e.time_stamping, "timeStamping"),
                    (e.ocsp_signing, "OCSPSigning"),
                ] {
                    if on {
                        out.push(name.to_owned());
                    }
                }
                out.extend(e.other.iter().map(|oid| oid.to_id_string()));
                out
            });
        let mut view = Self {
            subject: name(cert.subject()),
            cn: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(safe),
            issuer: name(cert.issuer()),
            subject_der: cert.subject().as_raw().to_vec(),
            issuer_der: cert.issuer().as_raw().to_vec(),
            serial: hex_colon(cert.raw_serial()),
            version: cert.version().0.saturating_add(1),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: basic.is_some_and(|b| b.value.ca),
            signs: key_usage.is_some_and(|k| k.value.key_cert_sign() || k.value.crl_sign()),
            dns: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            other_sans: Vec::new(),
            eku,
            key: describe_spki(cert.public_key()),
            spki: cert.public_key().raw.to_vec(),
            authority_key_id: authority_key_id(cert.extensions()),
            identity: Ok(None),
        };
        if let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| ext("subjectAltName", e))?
        {
            for general in &san.value.general_names {
                match general {
                    GeneralName::DNSName(n) => view.dns.push(safe(n)),
                    GeneralName::URI(u) => view.uris.push(safe(u)),
                    GeneralName::IPAddress(bytes) => view.ips.push(ip(bytes)),
                    GeneralName::RFC822Name(m) => {
                        view.other_sans.push(format!("email:{}", safe(m)))
                    }
                    GeneralName::DirectoryName(n) => {
                        view.other_sans.push(format!("dirName:{}", name(n)))
                    }
                    other => view.other_sans.push(safe(&format!("{other:?}"))),
                }
            }
        }
        if !view.is_ca && !view.signs {
            view.identity = PeerIdentity::from_leaf_der(der)
                .map(|peer| peer.spiffe_id().map(|id| id.as_str().to_owned()))
                .map_err(|e| e.to_string());
        }
        Ok(view)
    }

    /// Whether it issued itself (a root, or a self-signed leaf).
    pub(crate) fn self_issued(&self) -> bool {
        self.subject_der == self.issuer_der
    }

    /// Whether it has any subjectAltName entry.
    pub(crate) fn has_san(&self) -> bool {
        !(self.dns.is_empty()
            && self.uris.is_empty()
            && self.ips.is_empty()
            && self.other_sans.is_empty())
    }

    /// Whether the extendedKeyUsage allows this purpose (no extension: any).
    pub(crate) fn allows(&self, purpose: &str) -> bool {
        self.eku.as_ref().is_none_or(|eku| {
            eku.iter()
                .any(|p| p == purpose || p == "anyExtendedKeyUsage")
        })
    }

    /// The SANs in words: `SPIFFE ID spiffe://td/x; DNS a, b; IP 10.0.0.1`.
    pub(crate) fn names(&self) -> String {
        let mut parts = Vec::new();
        let spiffe = match &self.identity {
            Ok(Some(id)) => Some(id.clone()),
            _ => None,
        };
        if let Some(id) = &spiffe {
            parts.push(format!("SPIFFE ID {id}"));
        }
        let uris: Vec<&String> = self
            .uris
            .iter()
            .filter(|u| Some(*u) != spiffe.as_ref())
            .collect();
        for (label, list) in [
            ("URI", uris.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
            ("DNS", self.dns.iter().map(String::as_str).collect()),
            ("IP", self.ips.iter().map(String::as_str).collect()),
            (
                "other",
                self.other_sans.iter().map(String::as_str).collect(),
            ),
        ] {
            if !list.is_empty() {
                parts.push(format!("{label} {}", list.join(", ")));
            }
        }
        if parts.is_empty() {
            "no subjectAltName".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// The SANs in openssl's extension syntax: `DNS:a,URI:spiffe://td/x`.
    pub(crate) fn san_ext(&self) -> Option<String> {
        let entries: Vec<String> = self
            .uris
            .iter()
            .map(|u| format!("URI:{u}"))
            .chain(self.dns.iter().map(|d| format!("DNS:{d}")))
            .chain(self.ips.iter().map(|i| format!("IP:{i}")))
            .collect();
        (!entries.is_empty()).then(|| entries.join(","))
    }

    /// `leaf`, `root CA` or `intermediate CA`.
    pub(crate) fn kind(&self) -> &'static str {
        match (self.is_ca, self.self_issued()) {
            (true, true) => "CA (root, self-signed)",
            (true, false) => "CA (intermediate)",
            (false, true) => "leaf (self-signed)",
            (false, false) => "leaf",
        }
    }
}

/// A distinguished name in words, or `(empty subject)`.
pub(crate) fn name(name: &X509Name<'_>) -> String {
    let text = name.to_string();
    if text.is_empty() {
        "(empty subject)".to_owned()
    } else {
        safe(&text)
    }
}

/// An IP SAN in words.
fn ip(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .map_or_else(|_| hex_colon(bytes), |b| IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .map_or_else(|_| hex_colon(bytes), |b| IpAddr::from(b).to_string()),
        _ => hex_colon(bytes),
    }
}

/// A public key in words: `ECDSA P-256`, `RSA 2048`, `Ed25519`.
pub(crate) fn describe_spki(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let bits = || spki.parsed().map(|k| k.key_size()).unwrap_or(0);
    match algorithm.as_str() {
        "1.2.840.113549.1.1.1" => format!("RSA {}", bits()),
        "1.2.840.113549.1.1.10" => format!("RSA-PSS {}", bits()),
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".to_owned(),
                Some("1.3.132.0.34") => "ECDSA P-384".to_owned(),
                Some("1.3.132.0.35") => "ECDSA P-521".to_owned(),
                Some(other) => format!("EC on curve {other}"),
                None => "EC (curve not named)".to_owned(),
            }
        }
        "1.3.101.112" => "Ed25519".to_owned(),
        "1.3.101.113" => "Ed448".to_owned(),
        "1.2.840.10040.4.1" => format!("DSA {}", bits()),
        other => format!("a key of algorithm {other}"),
    }
}

/// A public key (SubjectPublicKeyInfo, DER) in words.
pub(crate) fn describe_spki_der(der: &[u8]) -> String {
    match SubjectPublicKeyInfo::from_der(der) {
        Ok((_, spki)) => describe_spki(&spki),
        Err(_) => "a public key that does not parse".to_owned(),
    }
}

/// A private key loaded by the crypto provider meshtls serves with, and its
/// type in words.
pub(crate) fn load_key(
    der: PrivateKeyDer<'static>,
) -> Result<(Arc<dyn SigningKey>, String), String> {
    let key = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("the crypto provider cannot use it: {e}"))?;
    let kind = match key.public_key() {
        Some(spki) => describe_spki_der(spki.as_ref()),
        None => format!("{:?}", key.algorithm()),
    };
    Ok((key, kind))
}

/// A binary (DER) private key of any of the three formats, loaded: the
/// key, its type in words, and the format (`PKCS#8`, `SEC1`, `PKCS#1`).
pub(crate) fn load_der_key(
    der: &[u8],
) -> Result<(Arc<dyn SigningKey>, String, &'static str), String> {
    let mut first_error = None;
    for (format, key) in [
        ("PKCS#8", PrivateKeyDer::Pkcs8(der.to_vec().into())),
        ("SEC1", PrivateKeyDer::Sec1(der.to_vec().into())),
        ("PKCS#1", PrivateKeyDer::Pkcs1(der.to_vec().into())),
    ] {
        match load_key(key) {
            Ok((key, kind)) => return Ok((key, kind, format)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// A CRL's fields.
#[derive(Debug)]
pub(crate) struct CrlView {
    /// The issuer, formatted like a subject.
    pub(crate) issuer: String,
    /// The issuer, DER.
    pub(crate) issuer_der: Vec<u8>,
    /// thisUpdate, seconds since 1970.
    pub(crate) this_update: i64,
    /// nextUpdate, seconds since 1970 (optional in X.509).
    pub(crate) next_update: Option<i64>,
    /// The revoked serials (hex), with the revocation date and reason.
    pub(crate) revoked: Vec<(String, i64, Option<String>)>,
    /// The cRLNumber, in decimal.
    pub(crate) number: Option<String>,
    /// The authorityKeyIdentifier's key identifier: which key signed it.
    pub(crate) authority_key_id: Option<Vec<u8>>,
}

/// The key identifier of an authorityKeyIdentifier extension among `extensions`.
fn authority_key_id(extensions: &[x509_parser::extensions::X509Extension<'_>]) -> Option<Vec<u8>> {
    extensions.iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|k| k.0.to_vec())
        }
        _ => None,
    })
}

impl CrlView {
    /// Reads a CRL (DER).
    pub(crate) fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| format!("not an X.509 CRL: {e}"))?;
        Ok(Self {
            issuer: name(crl.issuer()),
            issuer_der: crl.issuer().as_raw().to_vec(),
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| {
                    (
                        hex_colon(r.raw_serial()),
                        r.revocation_date.timestamp(),
                        r.reason_code().map(|(_, code)| code.to_string()),
                    )
                })
                .collect(),
            number: crl.crl_number().map(|n| n.to_string()),
            authority_key_id: authority_key_id(crl.extensions()),
        })
    }

    /// The entry for this serial (hex), if revoked.
    pub(crate) fn entry(&self, serial: &str) -> Option<&(String, i64, Option<String>)> {
        self.revoked.iter().find(|(s, _, _)| s == serial)
    }
}
