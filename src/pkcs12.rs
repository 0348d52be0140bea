//! PKCS#12 keystores and truststores (feature `pkcs12`), as Java and Spring
//! Boot teams have them: `server-keystore.p12`, `truststore.p12`.

use std::fmt;

use p12_keystore::error::Error as P12Error;
use p12_keystore::{CertificateBag, Pkcs12Archive, PrivateKeyBag};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, MaterialError, MaterialKind, Origin, Pkcs12Error};

/// How to open one PKCS#12 file.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Keystore {
    password: String,
    pub(crate) alias: Option<String>,
}

impl fmt::Debug for Keystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keystore")
            .field("password", &"<redacted>")
            .field("alias", &self.alias)
            .finish()
    }
}

/// The name of a key entry, for messages.
fn alias_of(bag: &PrivateKeyBag) -> String {
    bag.friendly_name
        .clone()
        .unwrap_or_else(|| "<no alias>".to_owned())
}

impl Keystore {
    pub(crate) fn new(password: String) -> Self {
        Self {
            password,
            alias: None,
        }
    }

    fn open(
        &self,
        origin: &Origin,
        bytes: &[u8],
        kind: MaterialKind,
    ) -> Result<Pkcs12Archive, Error> {
        if bytes.is_empty() {
            return Err(MaterialError::Empty {
                origin: origin.clone(),
                kind,
            }
            .into());
        }
        if bytes.starts_with(b"-----BEGIN") {
            return Err(Pkcs12Error::Malformed {
                origin: origin.clone(),
                detail: "it holds PEM, not PKCS#12: use a PEM source (`identity_files`, `*_roots_file`) for it".into(),
            }.into());
        }
        Pkcs12Archive::from_pkcs12(bytes, &self.password).map_err(|e| match e {
            // The MAC is keyed by the password; a MAC-less file decrypts to garbage.
            P12Error::MacError(_) | P12Error::UnpadError => Pkcs12Error::WrongPassword {
                origin: origin.clone(),
            },
            P12Error::UnsupportedEncryptionScheme | P12Error::UnsupportedMacAlgorithm => {
                Pkcs12Error::Malformed {
                    origin: origin.clone(),
                    detail: format!(
                        "{e}; re-export it with current algorithms (`openssl pkcs12 -export` defaults: AES-256-CBC, PBKDF2, SHA-256 MAC)"
                    ),
                }
            }
            other => Pkcs12Error::Malformed {
                origin: origin.clone(),
                detail: other.to_string(),
            },
        })
        .map_err(Error::from)
    }

    fn key_bag<'a>(
        &self,
        origin: &Origin,
        archive: &'a Pkcs12Archive,
    ) -> Result<&'a PrivateKeyBag, Error> {
        let aliases = || archive.keys.iter().map(alias_of).collect::<Vec<_>>();
        if let Some(alias) = &self.alias {
            return archive
                .keys
                .iter()
                .find(|k| k.friendly_name.as_deref() == Some(alias.as_str()))
                .ok_or_else(|| {
                    Pkcs12Error::NoSuchAlias {
                        origin: origin.clone(),
                        alias: alias.clone(),
                        aliases: aliases(),
                    }
                    .into()
                });
        }
        match archive.keys.as_slice() {
            [] => Err(Pkcs12Error::NoKey {
                origin: origin.clone(),
            }
            .into()),
            [only] => Ok(only),
            _ => Err(Pkcs12Error::SeveralKeys {
                origin: origin.clone(),
                aliases: aliases(),
            }
            .into()),
        }
    }

    pub(crate) fn certificates(
        &self,
        origin: &Origin,
        bytes: &[u8],
        kind: MaterialKind,
    ) -> Result<Vec<CertificateDer<'static>>, Error> {
        let archive = self.open(origin, bytes, kind)?;
        if kind == MaterialKind::TrustRoots {
            let trusted: Vec<_> = archive
                .certs
                .iter()
                .filter(|c| c.local_key_id.is_none())
                .map(|c| CertificateDer::from(c.cert.as_der().to_vec()))
                .collect();
            if trusted.is_empty() {
                return Err(Pkcs12Error::NoCertificate {
                    origin: origin.clone(),
                    kind,
                }
                .into());
            }
            return Ok(trusted);
        }
        let key = self.key_bag(origin, &archive)?;
        let Some(leaf) = archive.certs.iter().find(|c| {
            matches!((&c.local_key_id, &key.local_key_id), (Some(a), Some(b)) if a.as_slice() == b.0.as_slice())
        }) else {
            return Err(Pkcs12Error::NoCertificate {
                origin: origin.clone(),
                kind,
            }.into());
        };
        Ok(chain(leaf, &archive.certs))
    }

    pub(crate) fn private_key(
        &self,
        origin: &Origin,
        bytes: &[u8],
    ) -> Result<PrivateKeyDer<'static>, Error> {
        let archive = self.open(origin, bytes, MaterialKind::PrivateKey)?;
        let key = self.key_bag(origin, &archive)?;
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.key.as_der().to_vec(),
        )))
    }
}

/// The leaf, then its issuers found among `certs`, up to (not including) a
/// self-signed root.
fn chain(leaf: &CertificateBag, certs: &[CertificateBag]) -> Vec<CertificateDer<'static>> {
    let mut out = vec![CertificateDer::from(leaf.cert.as_der().to_vec())];
    let mut current = &leaf.cert;
    while current.issuer() != current.subject() {
        let Some(issuer) = certs
            .iter()
            .map(|c| &c.cert)
            .find(|c| c.subject() == current.issuer() && c.issuer() != c.subject())
        else {
            break;
        };
        let der = CertificateDer::from(issuer.as_der().to_vec());
        if out.contains(&der) {
            break;
        }
        out.push(der);
        current = issuer;
    }
    out
}
