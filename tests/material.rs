//! Every material problem, produced from a real file, refused with its own
//! error naming the file and the fix.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{Pki, openssl};
use meshtls::{ClientTls, Error, MaterialError, ServerTls, Usage};

/// Builds a server from these files; returns the error.
fn server_err(pki: &Pki, cert: PathBuf, key: PathBuf) -> Error {
    ServerTls::builder()
        .identity_files(cert, key)
        .client_roots_file(pki.ca_file())
        .dangerous()
        .allow_any_authenticated()
        .build()
        .unwrap_err()
}

fn good_server_files(pki: &Pki) -> (PathBuf, PathBuf) {
    pki.write_cert("server", &pki.server_cert())
}

fn assert_names(err: &Error, path: &Path) {
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "error does not name {}: {text}",
        path.display()
    );
}

#[test]
fn empty_certificate_file() {
    let pki = Pki::new();
    let (_, key) = good_server_files(&pki);
    let cert = pki.write("empty.crt", "");
    let err = server_err(&pki, cert.clone(), key);
    assert!(
        matches!(err, Error::Material(MaterialError::Empty { .. })),
        "{err}"
    );
    assert_names(&err, &cert);
}

#[test]
fn garbage_instead_of_pem() {
    let pki = Pki::new();
    let (_, key) = good_server_files(&pki);
    let cert = pki.write("garbage.crt", "this is not a certificate\n");
    let err = server_err(&pki, cert.clone(), key);
    assert!(
        matches!(err, Error::Material(MaterialError::NotFound { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("-----BEGIN CERTIFICATE-----"),
        "{err}"
    );
    assert_names(&err, &cert);
}

#[test]
fn der_where_pem_was_expected() {
    let pki = Pki::new();
    let server = pki.server_cert();
    let cert = pki.write("server.der", server.der());
    let key = pki.write("server.key", server.key_pem());
    let err = server_err(&pki, cert.clone(), key);
    assert!(
        matches!(err, Error::Material(MaterialError::DerNotPem { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("openssl x509 -inform DER"),
        "{err}"
    );
    assert_names(&err, &cert);
}

#[test]
fn truncated_pem() {
    let pki = Pki::new();
    let server = pki.server_cert();
    let pem = server.cert_pem();
    let cert = pki.write("truncated.crt", &pem[..pem.len() / 2]);
    let key = pki.write("server.key", server.key_pem());
    let err = server_err(&pki, cert.clone(), key);
    assert!(
        matches!(err, Error::Material(MaterialError::MalformedPem { .. })),
        "{err}"
    );
    assert_names(&err, &cert);
}

#[test]
fn encrypted_private_key() {
    let pki = Pki::new();
    let server = pki.server_cert();
    let (cert, plain) = pki.write_cert("server", &server);
    openssl(
        pki.dir.path(),
        &[
            "pkey",
            "-in",
            plain.to_str().unwrap(),
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "encrypted.key",
        ],
    );
    let key = pki.path("encrypted.key");
    let err = server_err(&pki, cert, key.clone());
    assert!(
        matches!(err, Error::Material(MaterialError::EncryptedKey { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("openssl pkey"), "{err}");
    assert_names(&err, &key);
}

#[test]
fn key_that_does_not_match_the_certificate() {
    let pki = Pki::new();
    let (cert, _) = good_server_files(&pki);
    let other = pki.server_cert();
    let key = pki.write("other.key", other.key_pem());
    let err = server_err(&pki, cert.clone(), key.clone());
    assert!(
        matches!(err, Error::Material(MaterialError::KeyMismatch { .. })),
        "{err}"
    );
    assert_names(&err, &cert);
    assert_names(&err, &key);
}

#[test]
fn expired_and_not_yet_valid_leaves() {
    let pki = Pki::new();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let expired = pki
        .ca
        .leaf()
        .dns("localhost")
        .server()
        .valid_between(now - 2 * hour, now - hour)
        .issue()
        .unwrap();
    let (cert, key) = pki.write_cert("expired", &expired);
    let err = server_err(&pki, cert.clone(), key);
    assert!(
        matches!(err, Error::Material(MaterialError::Expired { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(expired.serial()), "{err}");
    assert_names(&err, &cert);

    let future = pki
        .ca
        .leaf()
        .dns("localhost")
        .server()
        .valid_between(now + hour, now + 2 * hour)
        .issue()
        .unwrap();
    let (cert, key) = pki.write_cert("future", &future);
    let err = server_err(&pki, cert, key);
    assert!(
        matches!(err, Error::Material(MaterialError::NotYetValid { .. })),
        "{err}"
    );
}

#[test]
fn leaf_that_is_a_ca() {
    let pki = Pki::new();
    let cert = pki.write("ca-as-leaf.crt", pki.ca.cert_pem());
    let key = pki.write("ca-as-leaf.key", pki.ca.key_pem());
    let err = server_err(&pki, cert.clone(), key);
    assert!(
        matches!(err, Error::Material(MaterialError::LeafIsCa { .. })),
        "{err}"
    );
    assert_names(&err, &cert);
}

#[test]
fn classic_openssl_cn_only_server_certificate() {
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
        .dangerous()
        .allow_any_authenticated()
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
        .dangerous()
        .allow_any_authenticated()
        .build();
    assert!(fixed.is_ok(), "{:?}", fixed.err());
}

#[test]
fn client_certificate_whose_eku_excludes_client_auth() {
    let pki = Pki::new();
    let server_only = pki
        .ca
        .leaf()
        .spiffe("spiffe://td/x")
        .server()
        .issue()
        .unwrap();
    let (cert, key) = pki.write_cert("server-only", &server_only);
    let err = ClientTls::builder()
        .identity_files(cert.clone(), key)
        .server_roots_file(pki.ca_file())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Material(MaterialError::WrongUsage {
                usage: Usage::ClientAuth,
                ..
            })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("extendedKeyUsage=clientAuth"),
        "{err}"
    );
    assert_names(&err, &cert);

    let client_only = pki.ca.leaf().dns("localhost").client().issue().unwrap();
    let (cert, key) = pki.write_cert("client-only", &client_only);
    let err = server_err(&pki, cert, key);
    assert!(
        matches!(
            err,
            Error::Material(MaterialError::WrongUsage {
                usage: Usage::ServerAuth,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn oversized_file_is_refused_before_parsing() {
    let pki = Pki::new();
    let (_, key) = good_server_files(&pki);
    let big = pki.write("huge.crt", vec![b'A'; 2 * 1024 * 1024]);
    let err = server_err(&pki, big.clone(), key);
    assert!(
        matches!(err, Error::Material(MaterialError::TooLarge { .. })),
        "{err}"
    );
    assert_names(&err, &big);
}

#[test]
fn missing_file() {
    let pki = Pki::new();
    let (cert, _) = good_server_files(&pki);
    let key = pki.path("nope.key");
    let err = server_err(&pki, cert, key.clone());
    assert!(
        matches!(err, Error::Material(MaterialError::Read { .. })),
        "{err}"
    );
    assert_names(&err, &key);
}

#[test]
fn private_key_where_roots_were_expected() {
    let pki = Pki::new();
    let (cert, key) = good_server_files(&pki);
    let err = ServerTls::builder()
        .identity_files(cert, key.clone())
        .client_roots_file(key)
        .dangerous()
        .allow_any_authenticated()
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Material(MaterialError::NotFound { found, .. }) if found == &["PRIVATE KEY"]),
        "{err}"
    );
}

#[test]
fn stale_and_garbage_crls() {
    let pki = Pki::new();
    let now = SystemTime::now();
    let stale = pki.write(
        "stale.crl",
        pki.ca
            .crl_between(
                &[],
                now - Duration::from_secs(7200),
                now - Duration::from_secs(60),
            )
            .unwrap(),
    );
    let err = pki
        .server()
        .crl_file(stale.clone())
        .dangerous()
        .allow_any_authenticated()
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Material(MaterialError::CrlExpired { .. })),
        "{err}"
    );
    assert_names(&err, &stale);

    let garbage = pki.write(
        "garbage.crl",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    );
    let err = pki
        .server()
        .crl_file(garbage.clone())
        .dangerous()
        .allow_any_authenticated()
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Material(MaterialError::BadCrl { .. })),
        "{err}"
    );
    assert_names(&err, &garbage);
}

#[test]
fn pkcs1_and_sec1_keys_from_openssl_load() {
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
            .dangerous()
            .allow_any_authenticated()
            .build();
        assert!(server.is_ok(), "{name}: {:?}", server.err());
    }
}

#[test]
fn leaf_certificate_given_as_trust_roots() {
    // A common slip: the server's own certificate where the CA was meant.
    let pki = Pki::new();
    let client = pki.client_cert("spiffe://prod.example/ns/a/sa/b");
    let (cert, key) = good_server_files(&pki);
    let (wrong_roots, _) = pki.write_cert("client", &client);
    let err = ServerTls::builder()
        .identity_files(cert, key)
        .client_roots_file(wrong_roots.clone())
        .dangerous()
        .allow_any_authenticated()
        .build()
        .expect_err("a leaf certificate was accepted as a trust root");
    assert_names(&err, &wrong_roots);
    let text = err.to_string();
    assert!(text.contains("not a CA"), "{text}");
    assert!(
        text.contains("meshtls test root"),
        "does not say which CA was probably meant: {text}"
    );
}

#[test]
fn crl_signed_by_a_ca_that_is_not_trusted() {
    let pki = Pki::new();
    let other = Pki::named("some other root");
    let crl = pki.write(
        "other.crl",
        other.ca.crl(&[], Duration::from_secs(3600)).unwrap(),
    );
    let err = pki
        .server()
        .crl_file(crl.clone())
        .dangerous()
        .allow_any_authenticated()
        .build()
        .expect_err("a CRL from an untrusted CA was accepted");
    assert_names(&err, &crl);
    let text = err.to_string();
    assert!(text.contains("some other root"), "{text}");

    // Same name, other key: not signed by the trusted CA either.
    let impostor = Pki::named("meshtls test root");
    let crl = pki.write(
        "impostor.crl",
        impostor.ca.crl(&[], Duration::from_secs(3600)).unwrap(),
    );
    let err = pki
        .server()
        .crl_file(crl.clone())
        .dangerous()
        .allow_any_authenticated()
        .build()
        .expect_err("a CRL signed by another key was accepted");
    assert_names(&err, &crl);
}
