//! Every material problem, produced from a real file, refused with its own
//! error naming the file and the fix: one table of (file made how, expected
//! error, what the message must say), then two stories told in full.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{INSTALL_OPENSSL, Pki, ServerBuilderExt, openssl, require_peer, require_peer_for};
use meshtls::error::{MaterialError, Usage};
use meshtls::{ClientTls, Error, ServerTls};

const HOUR: Duration = Duration::from_secs(3600);

/// The files one case builds from, and what its error must mention.
struct Setup {
    cert: PathBuf,
    key: PathBuf,
    roots: PathBuf,
    crl: Option<PathBuf>,
    /// Build a client instead of a server.
    client: bool,
    /// Files the message must name.
    named: Vec<PathBuf>,
    /// Text the message must contain.
    says: Vec<String>,
}

impl Setup {
    /// A good server set: a server certificate for `localhost` and the CA.
    fn server(pki: &Pki) -> Self {
        let (cert, key) = pki.write_cert("server", &pki.server_cert());
        Self {
            cert,
            key,
            roots: pki.ca_file(),
            crl: None,
            client: false,
            named: Vec::new(),
            says: Vec::new(),
        }
    }

    fn naming(mut self, file: &Path) -> Self {
        self.named.push(file.to_path_buf());
        self
    }

    fn saying(mut self, text: impl Into<String>) -> Self {
        self.says.push(text.into());
        self
    }

    fn build(&self) -> Result<(), Error> {
        if self.client {
            let mut b = ClientTls::builder()
                .identity_files(&self.cert, &self.key)
                .server_roots_file(&self.roots);
            if let Some(crl) = &self.crl {
                b = b.crl_file(crl);
            }
            return b.build().map(drop);
        }
        let mut b = ServerTls::builder()
            .identity_files(&self.cert, &self.key)
            .client_roots_file(&self.roots)
            .any_authenticated();
        if let Some(crl) = &self.crl {
            b = b.crl_file(crl);
        }
        b.build().map(drop)
    }
}

/// One row: the file, made how; the files; the error expected.
struct Case {
    what: &'static str,
    /// A program `make` runs (skipped without it, see `require_peer`).
    needs: Option<&'static str>,
    make: fn(&Pki) -> Setup,
    expect: fn(&MaterialError) -> bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "an empty certificate file",
            needs: None,
            make: |pki| {
                let s = Setup::server(pki);
                let cert = pki.write("empty.crt", "");
                Setup {
                    cert: cert.clone(),
                    ..s
                }
                .naming(&cert)
            },
            expect: |e| matches!(e, MaterialError::Empty { .. }),
        },
        Case {
            what: "text that is not PEM",
            needs: None,
            make: |pki| {
                let s = Setup::server(pki);
                let cert = pki.write("garbage.crt", "this is not a certificate\n");
                Setup {
                    cert: cert.clone(),
                    ..s
                }
                .naming(&cert)
                .saying("-----BEGIN CERTIFICATE-----")
            },
            expect: |e| matches!(e, MaterialError::NotFound { .. }),
        },
        Case {
            what: "a certificate in binary DER",
            needs: None,
            make: |pki| {
                let server = pki.server_cert();
                let s = Setup::server(pki);
                let cert = pki.write("server.der", server.der());
                let key = pki.write("server.key", server.key_pem());
                Setup {
                    cert: cert.clone(),
                    key,
                    ..s
                }
                .naming(&cert)
                .saying("openssl x509 -inform DER")
            },
            expect: |e| matches!(e, MaterialError::DerNotPem { .. }),
        },
        Case {
            what: "a PEM certificate cut in half",
            needs: None,
            make: |pki| {
                let server = pki.server_cert();
                let s = Setup::server(pki);
                let pem = server.cert_pem();
                let cert = pki.write("truncated.crt", &pem[..pem.len() / 2]);
                let key = pki.write("server.key", server.key_pem());
                Setup {
                    cert: cert.clone(),
                    key,
                    ..s
                }
                .naming(&cert)
            },
            expect: |e| matches!(e, MaterialError::MalformedPem { .. }),
        },
        Case {
            what: "a key encrypted with `openssl pkey -aes256`",
            needs: Some("openssl"),
            make: |pki| {
                let s = Setup::server(pki);
                openssl(
                    pki.dir.path(),
                    &[
                        "pkey",
                        "-in",
                        s.key.to_str().unwrap(),
                        "-aes256",
                        "-passout",
                        "pass:secret",
                        "-out",
                        "encrypted.key",
                    ],
                );
                let key = pki.path("encrypted.key");
                Setup {
                    key: key.clone(),
                    ..s
                }
                .naming(&key)
                .saying("openssl pkey")
            },
            expect: |e| matches!(e, MaterialError::EncryptedKey { .. }),
        },
        Case {
            what: "the key of another certificate",
            needs: None,
            make: |pki| {
                let s = Setup::server(pki);
                let key = pki.write("other.key", pki.server_cert().key_pem());
                let cert = s.cert.clone();
                Setup {
                    key: key.clone(),
                    ..s
                }
                .naming(&cert)
                .naming(&key)
            },
            expect: |e| matches!(e, MaterialError::KeyMismatch { .. }),
        },
        Case {
            what: "a leaf that expired an hour ago",
            needs: None,
            make: |pki| {
                let now = SystemTime::now();
                let expired = pki.localhost_cert_between(now - 2 * HOUR, now - HOUR);
                let (cert, key) = pki.write_cert("expired", &expired);
                Setup {
                    cert: cert.clone(),
                    key,
                    ..Setup::server(pki)
                }
                .naming(&cert)
                .saying(expired.serial())
            },
            expect: |e| matches!(e, MaterialError::Expired { .. }),
        },
        Case {
            what: "a leaf valid from the next hour",
            needs: None,
            make: |pki| {
                let now = SystemTime::now();
                let future = pki.localhost_cert_between(now + HOUR, now + 2 * HOUR);
                let (cert, key) = pki.write_cert("future", &future);
                Setup {
                    cert: cert.clone(),
                    key,
                    ..Setup::server(pki)
                }
                .naming(&cert)
            },
            expect: |e| matches!(e, MaterialError::NotYetValid { .. }),
        },
        Case {
            what: "the CA's own certificate and key as the identity",
            needs: None,
            make: |pki| {
                let cert = pki.write("ca-as-leaf.crt", pki.ca.cert_pem());
                let key = pki.write("ca-as-leaf.key", pki.ca.key_pem());
                Setup {
                    cert: cert.clone(),
                    key,
                    ..Setup::server(pki)
                }
                .naming(&cert)
            },
            expect: |e| matches!(e, MaterialError::LeafIsCa { .. }),
        },
        Case {
            what: "a client certificate with extendedKeyUsage=serverAuth only",
            needs: None,
            make: |pki| {
                let leaf = pki
                    .ca
                    .leaf()
                    .spiffe("spiffe://td/x")
                    .server()
                    .issue()
                    .unwrap();
                let (cert, key) = pki.write_cert("server-only", &leaf);
                Setup {
                    cert: cert.clone(),
                    key,
                    client: true,
                    ..Setup::server(pki)
                }
                .naming(&cert)
                .saying("extendedKeyUsage=clientAuth")
                // No subject: the message names the certificate by its SAN.
                .saying("subject (empty; SANs spiffe://td/x)")
                // The right flag for each openssl command.
                .saying("-addext \"extendedKeyUsage=clientAuth\"")
                .saying("-extfile <(printf \"extendedKeyUsage=clientAuth\")")
            },
            expect: |e| {
                matches!(
                    e,
                    MaterialError::WrongUsage {
                        usage: Usage::ClientAuth,
                        ..
                    }
                )
            },
        },
        Case {
            what: "a server certificate with extendedKeyUsage=clientAuth only",
            needs: None,
            make: |pki| {
                let leaf = pki.ca.leaf().dns("localhost").client().issue().unwrap();
                let (cert, key) = pki.write_cert("client-only", &leaf);
                Setup {
                    cert: cert.clone(),
                    key,
                    ..Setup::server(pki)
                }
                .naming(&cert)
                .saying("extendedKeyUsage=serverAuth")
            },
            expect: |e| {
                matches!(
                    e,
                    MaterialError::WrongUsage {
                        usage: Usage::ServerAuth,
                        ..
                    }
                )
            },
        },
        Case {
            what: "a 2 MiB file where the certificate should be",
            needs: None,
            make: |pki| {
                let big = pki.write("huge.crt", vec![b'A'; 2 * 1024 * 1024]);
                Setup {
                    cert: big.clone(),
                    ..Setup::server(pki)
                }
                .naming(&big)
            },
            expect: |e| matches!(e, MaterialError::TooLarge { .. }),
        },
        Case {
            what: "a key file that does not exist",
            needs: None,
            make: |pki| {
                let key = pki.path("nope.key");
                Setup {
                    key: key.clone(),
                    ..Setup::server(pki)
                }
                .naming(&key)
            },
            expect: |e| matches!(e, MaterialError::Read { .. }),
        },
        Case {
            what: "the private key given as the trust roots",
            needs: None,
            make: |pki| {
                let s = Setup::server(pki);
                let key = s.key.clone();
                Setup {
                    roots: key.clone(),
                    ..s
                }
                .naming(&key)
                .saying("PRIVATE KEY")
            },
            expect: |e| matches!(e, MaterialError::NotFound { found, .. } if found == &["PRIVATE KEY"]),
        },
        Case {
            what: "a leaf certificate given as the trust roots (the slip: server cert for CA)",
            needs: None,
            make: |pki| {
                let client = pki.client_cert("spiffe://prod.example/ns/a/sa/b");
                let (roots, _) = pki.write_cert("client", &client);
                Setup {
                    roots: roots.clone(),
                    ..Setup::server(pki)
                }
                .naming(&roots)
                .saying("not a CA")
                .saying("meshtls test root")
            },
            expect: |e| matches!(e, MaterialError::NotACa { .. }),
        },
        Case {
            what: "a CRL past its nextUpdate",
            needs: None,
            make: |pki| {
                let now = SystemTime::now();
                let crl = pki.write(
                    "stale.crl",
                    pki.ca
                        .crl_between(&[], now - 2 * HOUR, now - Duration::from_secs(60))
                        .unwrap(),
                );
                Setup {
                    crl: Some(crl.clone()),
                    ..Setup::server(pki)
                }
                .naming(&crl)
                .saying("openssl ca -gencrl")
            },
            expect: |e| matches!(e, MaterialError::CrlExpired { .. }),
        },
        Case {
            what: "a CRL block whose body is garbage",
            needs: None,
            make: |pki| {
                let crl = pki.write(
                    "garbage.crl",
                    "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
                );
                Setup {
                    crl: Some(crl.clone()),
                    ..Setup::server(pki)
                }
                .naming(&crl)
            },
            expect: |e| matches!(e, MaterialError::BadCrl { .. }),
        },
        Case {
            what: "a CRL from a CA that is not trusted",
            needs: None,
            make: |pki| {
                let other = Pki::named("some other root");
                let crl = pki.write("other.crl", other.ca.crl(&[], HOUR).unwrap());
                Setup {
                    crl: Some(crl.clone()),
                    ..Setup::server(pki)
                }
                .naming(&crl)
                .saying("some other root")
            },
            expect: |e| {
                matches!(
                    e,
                    MaterialError::CrlIssuerUnknown {
                        same_name: false,
                        ..
                    }
                )
            },
        },
        Case {
            what: "a CRL from a CA with the trusted CA's name but another key",
            needs: None,
            make: |pki| {
                let impostor = Pki::named("meshtls test root");
                let crl = pki.write("impostor.crl", impostor.ca.crl(&[], HOUR).unwrap());
                Setup {
                    crl: Some(crl.clone()),
                    ..Setup::server(pki)
                }
                .naming(&crl)
                .saying("another key")
            },
            expect: |e| {
                matches!(
                    e,
                    MaterialError::CrlIssuerUnknown {
                        same_name: true,
                        ..
                    }
                )
            },
        },
    ]
}

#[test]
fn every_material_problem_has_its_own_error() {
    let mut wrong = Vec::new();
    for case in cases() {
        if let Some(program) = case.needs
            && !require_peer_for(case.what, program, INSTALL_OPENSSL)
        {
            continue;
        }
        let pki = Pki::new();
        let setup = (case.make)(&pki);
        let err = match setup.build() {
            Ok(()) => {
                wrong.push(format!("{}: accepted", case.what));
                continue;
            }
            Err(e) => e,
        };
        let text = err.to_string();
        match &err {
            Error::Material(m) if (case.expect)(m) => {}
            other => wrong.push(format!("{}: wrong error: {other:?}", case.what)),
        }
        for file in &setup.named {
            if !text.contains(&file.display().to_string()) {
                wrong.push(format!(
                    "{}: does not name {}: {text}",
                    case.what,
                    file.display()
                ));
            }
        }
        for needed in &setup.says {
            if !text.contains(needed.as_str()) {
                wrong.push(format!("{}: does not say {needed:?}: {text}", case.what));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn classic_openssl_cn_only_server_certificate() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    // The certificate every mTLS tutorial makes: RSA CA, RSA leaf, CN only.
    let pki = Pki::new();
    let dir = pki.dir.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tut-ca.key",
            "-out",
            "tut-ca.crt",
            "-subj",
            "/CN=Tutorial CA",
            "-days",
            "30",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tut.key",
            "-out",
            "tut.csr",
            "-subj",
            "/CN=billing.internal",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tut.csr",
            "-CA",
            "tut-ca.crt",
            "-CAkey",
            "tut-ca.key",
            "-CAcreateserial",
            "-out",
            "tut.crt",
            "-days",
            "30",
        ],
    );
    let err = ServerTls::builder()
        .identity_files(pki.path("tut.crt"), pki.path("tut.key"))
        .client_roots_file(pki.path("tut-ca.crt"))
        .any_authenticated()
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Material(MaterialError::NoSubjectAltName { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(r#"-addext "subjectAltName=DNS:billing.internal""#),
        "{err}"
    );
    // The tutorial signs a request with `openssl x509 -req`, which takes
    // `-extfile`, not `-addext`: the message gives both.
    assert!(
        err.to_string()
            .contains(r#"-extfile <(printf "subjectAltName=DNS:billing.internal")"#),
        "{err}"
    );

    // The same certificate as a client's identity: OpenSSL 3.0's
    // `x509 -req` without -extfile makes an X.509 v1 certificate, which no
    // TLS 1.3 peer takes. Said as such (it used to read "the private key ...
    // cannot be used: UnsupportedCertVersion").
    let err = meshtls::ClientTls::builder()
        .identity_files(pki.path("tut.crt"), pki.path("tut.key"))
        .server_roots_file(pki.path("tut-ca.crt"))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Material(MaterialError::NotVersion3 { .. })),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("X.509 v1") && text.contains("tut.crt"),
        "{text}"
    );
    assert!(text.contains("-extfile"), "{text}");

    // With the SAN the error suggests, the same recipe works.
    pki.write("tut-san.ext", "subjectAltName=DNS:billing.internal\n");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tut.csr",
            "-CA",
            "tut-ca.crt",
            "-CAkey",
            "tut-ca.key",
            "-CAcreateserial",
            "-out",
            "tut-san.crt",
            "-days",
            "30",
            "-extfile",
            "tut-san.ext",
        ],
    );
    let fixed = ServerTls::builder()
        .identity_files(pki.path("tut-san.crt"), pki.path("tut.key"))
        .client_roots_file(pki.path("tut-ca.crt"))
        .any_authenticated()
        .build();
    assert!(fixed.is_ok(), "{:?}", fixed.err());
}

#[test]
fn pkcs1_and_sec1_keys_from_openssl_load() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let dir = pki.dir.path();
    let ca = pki.ca_file();
    pki.write("ca.key", pki.ca.key_pem());
    pki.write(
        "san.ext",
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    for (name, genkey) in [
        (
            "rsa",
            vec!["genrsa", "-traditional", "-out", "rsa.key", "2048"],
        ),
        (
            "ec",
            vec![
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "ec.key",
            ],
        ),
    ] {
        openssl(dir, &genkey);
        let key = format!("{name}.key");
        let first_line = std::fs::read_to_string(pki.path(&key)).unwrap();
        assert!(
            first_line.starts_with("-----BEGIN RSA PRIVATE KEY-----")
                || first_line.starts_with("-----BEGIN EC PRIVATE KEY-----")
        );
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                "/CN=localhost",
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                ca.to_str().unwrap(),
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.ext",
                "-out",
                &format!("{name}.crt"),
            ],
        );
        let server = ServerTls::builder()
            .identity_files(pki.path(&format!("{name}.crt")), pki.path(&key))
            .client_roots_file(ca.clone())
            .any_authenticated()
            .build();
        assert!(server.is_ok(), "{name}: {:?}", server.err());
    }
}
