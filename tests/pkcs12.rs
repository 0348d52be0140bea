//! PKCS#12 keystores and truststores, as made by `openssl pkcs12 -export` and
//! by Java's `keytool`. Without those programs on PATH the tests that need
//! them say they were skipped (with `MESHTLS_REQUIRE_PEERS=1`, as in CI,
//! they fail).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    INSTALL_JDK, INSTALL_OPENSSL, Pki, ServerBuilderExt, find_program, missing_peer, openssl,
    require_peer, serve, svid,
};
use meshtls::error::Pkcs12Error;
use meshtls::{Allow, Error, ServerTls, Source};

const PASS: &str = "changeit";

/// `openssl pkcs12 -export` of a fresh server certificate; returns (p12, serial).
fn server_keystore(pki: &Pki, name: &str) -> (PathBuf, String) {
    let cert = pki.server_cert();
    pki.write(&format!("{name}.crt"), cert.chain_pem());
    pki.write(&format!("{name}.key"), cert.key_pem());
    let out = format!("{name}.p12");
    openssl(
        pki.dir.path(),
        &[
            "pkcs12",
            "-export",
            "-in",
            &format!("{name}.crt"),
            "-inkey",
            &format!("{name}.key"),
            "-name",
            name,
            "-out",
            &out,
            "-passout",
            &format!("pass:{PASS}"),
        ],
    );
    (pki.path(&out), cert.serial().to_owned())
}

fn truststore(pki: &Pki) -> PathBuf {
    pki.write("ca.crt", pki.ca.cert_pem());
    openssl(
        pki.dir.path(),
        &[
            "pkcs12",
            "-export",
            "-nokeys",
            "-in",
            "ca.crt",
            "-out",
            "truststore.p12",
            "-passout",
            &format!("pass:{PASS}"),
        ],
    );
    pki.path("truststore.p12")
}

#[tokio::test]
async fn openssl_keystore_and_truststore_serve_mtls() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let (keystore, serial) = server_keystore(&pki, "server");
    let server = ServerTls::builder()
        .identity_pkcs12(&keystore, PASS)
        .client_roots(Source::pkcs12_file(truststore(&pki), PASS))
        .allow(Allow::spiffe_id(&svid("app", "java")))
        .build()
        .unwrap();
    assert_eq!(server.certificate().serial, serial);
    let mut running = serve(&server).await;
    let seen = running
        .call(&pki.client(&svid("app", "java")).build().unwrap())
        .await;
    assert!(seen.reply().starts_with("hello"), "{seen:?}");
    running.expect_admitted_as(&svid("app", "java")).await;
}

#[test]
fn wrong_password() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let (keystore, _) = server_keystore(&pki, "server");
    let err = server_from(&pki, Source::pkcs12_file(&keystore, "not-the-password")).unwrap_err();
    assert!(
        matches!(err, Error::Pkcs12(Pkcs12Error::WrongPassword { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("server.p12"), "{err}");
}

#[test]
fn truststore_as_identity_has_no_key_entry() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let err = server_from(&pki, Source::pkcs12_file(truststore(&pki), PASS)).unwrap_err();
    assert!(
        matches!(err, Error::Pkcs12(Pkcs12Error::NoKey { .. })),
        "{err}"
    );
}

/// A keystore with two key entries, written with p12-keystore.
fn two_key_keystore(pki: &Pki) -> (PathBuf, String, String) {
    use meshtls::rustls::pki_types::pem::PemObject;
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let mut store = KeyStore::new();
    let mut serials = Vec::new();
    for (i, alias) in ["first", "second"].iter().enumerate() {
        let cert = pki.server_cert();
        let key_der = meshtls::rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(
            cert.key_pem().as_bytes(),
        )
        .unwrap();
        let chain = PrivateKeyChain::new(
            vec![i as u8 + 1],
            PrivateKey::from_der(key_der.secret_pkcs8_der()).unwrap(),
            [Certificate::from_der(cert.der()).unwrap()],
        );
        store.add_entry(alias, KeyStoreEntry::PrivateKeyChain(chain));
        serials.push(cert.serial().to_owned());
    }
    let path = pki.write("two.p12", store.writer(PASS).write().unwrap());
    (path, serials[0].clone(), serials[1].clone())
}

/// Builds a server whose identity is the keystore `source`, trusting this
/// CA's clients (any authenticated peer).
fn server_from(pki: &Pki, source: Source) -> Result<ServerTls, Error> {
    ServerTls::builder()
        .identity_keystore(source)
        .client_roots_file(pki.ca_file())
        .any_authenticated()
        .build()
}

#[test]
fn several_key_entries_need_an_alias() {
    let pki = Pki::new();
    let (path, _, second) = two_key_keystore(&pki);
    let build = |source: Source| server_from(&pki, source);
    let err = build(Source::pkcs12_file(&path, PASS)).unwrap_err();
    assert!(
        matches!(&err, Error::Pkcs12(Pkcs12Error::SeveralKeys { aliases, .. }) if aliases.len() == 2),
        "{err}"
    );
    assert!(
        err.to_string().contains("first") && err.to_string().contains("second"),
        "{err}"
    );

    let server = build(Source::pkcs12_file(&path, PASS).alias("second")).unwrap();
    assert_eq!(server.certificate().serial, second);

    let err = build(Source::pkcs12_file(&path, PASS).alias("third")).unwrap_err();
    assert!(
        matches!(err, Error::Pkcs12(Pkcs12Error::NoSuchAlias { .. })),
        "{err}"
    );
}

#[test]
fn pem_handed_as_pkcs12_says_so() {
    let pki = Pki::new();
    let err = server_from(&pki, Source::pkcs12_file(pki.ca_file(), PASS)).unwrap_err();
    assert!(
        matches!(err, Error::Pkcs12(Pkcs12Error::Malformed { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("holds PEM"), "{err}");
}

#[tokio::test]
async fn rotated_keystore_is_reloaded() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let (first, serial) = server_keystore(&pki, "one");
    let live = pki.path("live.p12");
    std::fs::copy(&first, &live).unwrap();
    let server = ServerTls::builder()
        .identity_pkcs12(&live, PASS)
        .client_roots(Source::pkcs12_file(truststore(&pki), PASS))
        .any_authenticated()
        .debounce(Duration::from_millis(20))
        .watch()
        .unwrap();
    assert_eq!(server.certificate().serial, serial);
    let (second, next_serial) = server_keystore(&pki, "two");
    common::replace(&live, std::fs::read(&second).unwrap());
    for _ in 0..200 {
        if server.certificate().serial == next_serial {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the rotated keystore was not picked up");
}

/// `$JAVA_HOME/bin/keytool`, or `keytool` on PATH.
fn keytool() -> Option<PathBuf> {
    std::env::var_os("JAVA_HOME")
        .map(|h| Path::new(&h).join("bin/keytool"))
        .filter(|k| k.is_file())
        .or_else(|| find_program("keytool"))
}

fn run(dir: &Path, program: &Path, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {}: {}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn keytool_keystore_and_truststore_serve_mtls() {
    let Some(keytool) = keytool() else {
        missing_peer("keytool", INSTALL_JDK);
        return;
    };
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let dir = pki.dir.path();
    let (openssl_p12, serial) = server_keystore(&pki, "server");
    // Java re-encodes the keystore with its own algorithms and attributes.
    run(
        dir,
        &keytool,
        &[
            "-importkeystore",
            "-srckeystore",
            openssl_p12.to_str().unwrap(),
            "-srcstoretype",
            "PKCS12",
            "-srcstorepass",
            PASS,
            "-destkeystore",
            "java-keystore.p12",
            "-deststoretype",
            "PKCS12",
            "-deststorepass",
            PASS,
            "-noprompt",
        ],
    );
    pki.write("ca.crt", pki.ca.cert_pem());
    run(
        dir,
        &keytool,
        &[
            "-importcert",
            "-alias",
            "meshtls-ca",
            "-file",
            "ca.crt",
            "-keystore",
            "java-truststore.p12",
            "-storetype",
            "PKCS12",
            "-storepass",
            PASS,
            "-noprompt",
        ],
    );
    let server = ServerTls::builder()
        .identity_pkcs12(pki.path("java-keystore.p12"), PASS)
        .client_roots(Source::pkcs12_file(pki.path("java-truststore.p12"), PASS))
        .allow(Allow::spiffe_id(&svid("app", "java")))
        .build()
        .unwrap();
    assert_eq!(server.certificate().serial, serial);
    let mut running = serve(&server).await;
    let seen = running
        .call(&pki.client(&svid("app", "java")).build().unwrap())
        .await;
    assert!(seen.reply().starts_with("hello"), "{seen:?}");
    running.expect_admitted().await;

    let err = server_from(
        &pki,
        Source::pkcs12_file(pki.path("java-keystore.p12"), "wrong"),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Pkcs12(Pkcs12Error::WrongPassword { .. })),
        "{err}"
    );
}
