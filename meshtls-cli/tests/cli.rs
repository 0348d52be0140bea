//! The `meshtls` binary, run as a user would, on files it mints into a
//! temporary directory.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

/// One run of the binary.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Both streams, for assertion messages.
    fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `meshtls ARGS` in `dir`.
fn meshtls(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_meshtls"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the meshtls binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `meshtls ARGS` and insists that it succeeds.
fn ok(dir: &Path, args: &[&str]) -> Run {
    let run = meshtls(dir, args);
    assert_eq!(run.code, 0, "meshtls {args:?} failed:\n{}", run.all());
    run
}

/// A CA in `ca/`, a server leaf in `server/`, a client leaf in `web/` and an
/// empty CRL in `ca/ca.crl`.
fn minted() -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = dir.path();
    ok(d, &["mint", "ca", "--out", "ca", "--name", "cli test CA"]);
    ok(
        d,
        &[
            "mint",
            "leaf",
            "--ca",
            "ca",
            "--out",
            "server",
            "--dns",
            "localhost",
            "--spiffe",
            "spiffe://demo.local/ns/shop/sa/api",
            "--server",
        ],
    );
    ok(
        d,
        &[
            "mint",
            "leaf",
            "--ca",
            "ca",
            "--out",
            "web",
            "--spiffe",
            "spiffe://demo.local/ns/shop/sa/web",
            "--client",
        ],
    );
    ok(d, &["mint", "crl", "--ca", "ca", "--out", "ca/ca.crl"]);
    dir
}

/// The serial `mint leaf` printed for a certificate, read back by `inspect`.
fn serial_of(dir: &Path, cert: &str) -> String {
    let run = ok(dir, &["inspect", cert]);
    run.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("serial"))
        .map(|s| s.trim().to_owned())
        .expect("inspect shows a serial")
}

/// Whether the openssl CLI runs. Without it the test says it was skipped
/// (straight to stderr: the harness hides what a passing test prints), or,
/// with `MESHTLS_REQUIRE_PEERS=1` (as `.ci/run` sets), fails.
fn openssl_available() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let current = std::thread::current();
        let test = current.name().unwrap_or("a test");
        if std::env::var("MESHTLS_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
            panic!(
                "{test}: no openssl on PATH (install: apt-get install openssl), and MESHTLS_REQUIRE_PEERS=1"
            );
        }
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test}: no openssl on PATH (install: apt-get install openssl)"
        );
    }
    found
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mint_ca_leaf_crl_round_trip() {
    let dir = minted();
    let d = dir.path();
    for file in [
        "ca/ca.crt",
        "ca/ca.key",
        "server/tls.crt",
        "server/tls.key",
        "web/tls.crt",
        "web/tls.key",
        "ca/ca.crl",
    ] {
        assert!(d.join(file).is_file(), "{file} was not written");
    }
    // The subject CN is the first name, so no message shows an empty subject.
    let server = ok(d, &["inspect", "server/tls.crt"]);
    assert!(
        server
            .stdout
            .contains("subject   CN=spiffe://demo.local/ns/shop/sa/api"),
        "{}",
        server.all()
    );
    assert!(server.stdout.contains("DNS localhost"), "{}", server.all());
    assert!(
        server.stdout.contains("extendedKeyUsage serverAuth;"),
        "{}",
        server.all()
    );
    assert!(
        server.stdout.contains("issuer    CN=cli test CA"),
        "{}",
        server.all()
    );

    // Revoke web: the CRL names its serial, and the CA's other leaf is untouched.
    let serial = serial_of(d, "web/tls.crt");
    let minted = ok(
        d,
        &[
            "mint",
            "crl",
            "--ca",
            "ca",
            "--revoke",
            "web/tls.crt",
            "--out",
            "ca/ca.crl",
            "--hours",
            "48",
        ],
    );
    assert!(minted.stdout.contains(&serial), "{}", minted.all());
    let crl = ok(d, &["inspect", "ca/ca.crl"]);
    assert!(
        crl.stdout
            .contains(&format!("revoked     1 serial: {serial}")),
        "{}",
        crl.all()
    );
    // --hours 48, read back a moment later.
    assert!(
        crl.stdout.contains("(2d left)") || crl.stdout.contains("(1d 23h left)"),
        "{}",
        crl.all()
    );

    // A new CA is never written over an existing one.
    let again = meshtls(d, &["mint", "ca", "--out", "ca"]);
    assert_eq!(again.code, 1, "{}", again.all());
    assert!(again.stderr.contains("orphan"), "{}", again.all());

    // A certificate of another CA cannot be revoked by this one.
    ok(d, &["mint", "ca", "--out", "other", "--name", "other CA"]);
    ok(
        d,
        &[
            "mint",
            "leaf",
            "--ca",
            "other",
            "--out",
            "stranger",
            "--dns",
            "x.example",
        ],
    );
    let foreign = meshtls(
        d,
        &[
            "mint",
            "crl",
            "--ca",
            "ca",
            "--revoke",
            "stranger/tls.crt",
            "--out",
            "x.crl",
        ],
    );
    assert_eq!(foreign.code, 1, "{}", foreign.all());
    assert!(
        foreign.stderr.contains("was issued by CN=other CA"),
        "{}",
        foreign.all()
    );
}

#[test]
fn spiffe_id_without_scheme_is_refused_with_the_fix() {
    let dir = minted();
    let d = dir.path();
    let run = meshtls(
        d,
        &[
            "mint",
            "leaf",
            "--ca",
            "ca",
            "--out",
            "x",
            "--spiffe",
            "corp.test/ns/x",
        ],
    );
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("did you mean spiffe://corp.test/ns/x?"),
        "{}",
        run.all()
    );
    assert!(
        !d.join("x").exists(),
        "files were written for a refused leaf"
    );

    let td_only = meshtls(
        d,
        &[
            "mint",
            "leaf",
            "--ca",
            "ca",
            "--out",
            "x",
            "--spiffe",
            "spiffe://corp.test",
        ],
    );
    assert_eq!(td_only.code, 2, "{}", td_only.all());
    assert!(
        td_only.stderr.contains("names a trust domain"),
        "{}",
        td_only.all()
    );
}

#[test]
fn unknown_flags_and_missing_values_are_usage_errors() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = dir.path();
    let typo = meshtls(
        d,
        &[
            "check", "--cert", "a", "--key", "b", "--ca", "c", "--clr", "d",
        ],
    );
    assert_eq!(typo.code, 2, "{}", typo.all());
    assert!(
        typo.stderr
            .contains("unknown flag --clr (did you mean --crl?)"),
        "{}",
        typo.all()
    );
    assert!(typo.stderr.contains("usage:"), "{}", typo.all());
    assert!(typo.stdout.is_empty(), "{}", typo.all());

    let missing = meshtls(d, &["check", "--cert", "a", "--key"]);
    assert_eq!(missing.code, 2, "{}", missing.all());
    assert!(
        missing.stderr.contains("--key needs a value"),
        "{}",
        missing.all()
    );
    assert!(missing.stderr.contains("usage:"), "{}", missing.all());

    let swallowed = meshtls(d, &["mint", "leaf", "--ca", "--out", "x"]);
    assert_eq!(swallowed.code, 2, "{}", swallowed.all());
    assert!(
        swallowed.stderr.contains("--ca needs a value"),
        "{}",
        swallowed.all()
    );

    let command = meshtls(d, &["chek"]);
    assert_eq!(command.code, 2, "{}", command.all());
    assert!(
        command.stderr.contains("did you mean check?"),
        "{}",
        command.all()
    );
}

#[test]
fn check_passes_a_good_set_with_a_matching_rule() {
    let dir = minted();
    let run = meshtls(
        dir.path(),
        &[
            "check",
            "--cert",
            "server/tls.crt",
            "--key",
            "server/tls.key",
            "--ca",
            "ca/ca.crt",
            "--crl",
            "ca/ca.crl",
            "--allow",
            "spiffe://demo.local/ns/shop/**",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    for expected in [
        "ok    names        SPIFFE ID spiffe://demo.local/ns/shop/sa/api; DNS localhost",
        "ok    key          server/tls.key (ECDSA P-256) matches the certificate",
        "ok    chain        leads to the CA CN=cli test CA",
        "ok    revocation   not revoked",
        "ok    allow        spiffe://demo.local/ns/shop/** admits it",
        "ok    build        ServerTls::builder() accepts these files",
        "verdict: would be served",
    ] {
        assert!(
            run.stdout.contains(expected),
            "missing {expected:?}:\n{}",
            run.all()
        );
    }
    assert!(!run.stdout.contains("FAIL"), "{}", run.all());
    // Expiry in RFC 3339, with the time left.
    assert!(run.stdout.contains("Z to "), "{}", run.all());
    assert!(run.stdout.contains("left)"), "{}", run.all());

    // The client, as a client.
    let client = meshtls(
        dir.path(),
        &[
            "check",
            "--cert",
            "web/tls.crt",
            "--key",
            "web/tls.key",
            "--ca",
            "ca/ca.crt",
            "--as",
            "client",
            "--allow",
            "spiffe://demo.local/ns/shop/sa/web",
        ],
    );
    assert_eq!(client.code, 0, "{}", client.all());
}

#[test]
fn check_fails_when_no_rule_matches_and_says_which_were_tried() {
    let dir = minted();
    let run = meshtls(
        dir.path(),
        &[
            "check",
            "--cert",
            "web/tls.crt",
            "--key",
            "web/tls.key",
            "--ca",
            "ca/ca.crt",
            "--as",
            "client",
            "--allow",
            "dns:billing.internal",
            "--allow",
            "spiffe://demo.local/ns/other/**",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains(
            "none of the 2 rules tried admits it (tried: dns:billing.internal, spiffe://demo.local/ns/other/**)"
        ),
        "{}",
        run.all()
    );
    assert!(
        run.stdout
            .contains("--allow spiffe://demo.local/ns/shop/sa/web"),
        "the rule that would admit it is suggested:\n{}",
        run.all()
    );
    assert!(
        run.stdout.contains("verdict: would NOT be served"),
        "{}",
        run.all()
    );

    // A malformed rule is a usage error, not a finding.
    let bad = meshtls(
        dir.path(),
        &[
            "check",
            "--cert",
            "web/tls.crt",
            "--key",
            "web/tls.key",
            "--ca",
            "ca/ca.crt",
            "--allow",
            "web",
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.all());
    assert!(bad.stderr.contains("is not an allow rule"), "{}", bad.all());
}

#[test]
fn check_fails_on_the_key_of_another_leaf() {
    let dir = minted();
    let run = meshtls(
        dir.path(),
        &[
            "check",
            "--cert",
            "server/tls.crt",
            "--key",
            "web/tls.key",
            "--ca",
            "ca/ca.crt",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains(
            "FAIL  key          the key in web/tls.key (ECDSA P-256) does not match the certificate in server/tls.crt"
        ),
        "{}",
        run.all()
    );
    assert!(
        run.stdout
            .contains("openssl pkey -in web/tls.key -pubout | openssl sha256"),
        "{}",
        run.all()
    );
    // meshtls's builder says the same, naming both files.
    assert!(
        run.stdout
            .contains("FAIL  build        ServerTls::builder() refuses them")
            && run.stdout.contains("does not match the certificate"),
        "{}",
        run.all()
    );
    // The chain itself is fine, and is said to be.
    assert!(run.stdout.contains("ok    chain"), "{}", run.all());
}

#[test]
fn check_fails_on_a_leaf_the_crl_revokes() {
    let dir = minted();
    let d = dir.path();
    ok(
        d,
        &[
            "mint",
            "crl",
            "--ca",
            "ca",
            "--revoke",
            "web/tls.crt",
            "--out",
            "ca/ca.crl",
        ],
    );
    let serial = serial_of(d, "web/tls.crt");
    let run = meshtls(
        d,
        &[
            "check",
            "--cert",
            "web/tls.crt",
            "--key",
            "web/tls.key",
            "--ca",
            "ca/ca.crt",
            "--crl",
            "ca/ca.crl",
            "--as",
            "client",
            "--allow",
            "spiffe://demo.local/**",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains(&format!(
            "FAIL  revocation   serial {serial} is revoked by the CRL of CN=cli test CA"
        )),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("refuses it (certificate revoked)"),
        "{}",
        run.all()
    );
    // The server's certificate is not on that CRL.
    let server = meshtls(
        d,
        &[
            "check",
            "--cert",
            "server/tls.crt",
            "--key",
            "server/tls.key",
            "--ca",
            "ca/ca.crt",
            "--crl",
            "ca/ca.crl",
        ],
    );
    assert_eq!(server.code, 0, "{}", server.all());
    assert!(
        server.stdout.contains("revokes 1 serial, not this one"),
        "{}",
        server.all()
    );
}

#[test]
fn check_fails_on_a_chain_to_another_ca_even_though_it_builds() {
    let dir = minted();
    let d = dir.path();
    ok(
        d,
        &["mint", "ca", "--out", "other", "--name", "Other Corp CA"],
    );
    ok(
        d,
        &[
            "mint",
            "leaf",
            "--ca",
            "other",
            "--out",
            "stranger",
            "--dns",
            "api.example.com",
        ],
    );
    let run = meshtls(
        d,
        &[
            "check",
            "--cert",
            "stranger/tls.crt",
            "--key",
            "stranger/tls.key",
            "--ca",
            "ca/ca.crt",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout
            .contains("refuses it (certificate not signed by a trusted CA)"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains(
            "issued by CN=Other Corp CA, which is not in ca/ca.crt (it holds: CN=cli test CA)"
        ),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains(
            "openssl verify -CAfile ca/ca.crt -untrusted stranger/tls.crt stranger/tls.crt"
        ),
        "{}",
        run.all()
    );
}

#[test]
fn check_gives_the_openssl_fix_for_a_wrong_usage() {
    let dir = minted();
    let run = meshtls(
        dir.path(),
        &[
            "check",
            "--cert",
            "web/tls.crt",
            "--key",
            "web/tls.key",
            "--ca",
            "ca/ca.crt",
            "--as",
            "server",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout
            .contains("extendedKeyUsage has clientAuth but not serverAuth"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout
            .contains("-addext \"extendedKeyUsage=clientAuth,serverAuth\""),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains(
            "-extfile <(printf \"subjectAltName=URI:spiffe://demo.local/ns/shop/sa/web\\nextendedKeyUsage=clientAuth,serverAuth\")"
        ),
        "{}",
        run.all()
    );
}

#[test]
fn check_gives_the_openssl_fix_for_a_missing_san() {
    if !openssl_available() {
        return;
    }
    let dir = minted();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "nosan.key",
            "-out",
            "nosan.csr",
            "-subj",
            "/CN=api.internal",
        ],
    );
    // An extension (but no SAN) keeps the certificate v3.
    std::fs::write(d.join("ext.cnf"), "extendedKeyUsage=serverAuth\n").expect("write ext.cnf");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "nosan.csr",
            "-CA",
            "ca/ca.crt",
            "-CAkey",
            "ca/ca.key",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-out",
            "nosan.crt",
        ],
    );
    let run = meshtls(
        d,
        &[
            "check",
            "--cert",
            "nosan.crt",
            "--key",
            "nosan.key",
            "--ca",
            "ca/ca.crt",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains("FAIL  names        no subjectAltName"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout
            .contains("-addext \"subjectAltName=DNS:api.internal\""),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains(
            "-extfile <(printf \"subjectAltName=DNS:api.internal\\nextendedKeyUsage=serverAuth\")"
        ),
        "{}",
        run.all()
    );
}

#[test]
fn inspect_shows_a_certificate_a_key_and_a_crl() {
    let dir = minted();
    let d = dir.path();
    let cert = ok(d, &["inspect", "web/tls.crt"]);
    for expected in [
        "web/tls.crt: PEM, 1 block: 1 CERTIFICATE",
        "subject   CN=spiffe://demo.local/ns/shop/sa/web",
        "names     SPIFFE ID spiffe://demo.local/ns/shop/sa/web",
        "issuer    CN=cli test CA",
        "serial    ",
        "left)",
        "kind      leaf; extendedKeyUsage clientAuth; key ECDSA P-256",
    ] {
        assert!(
            cert.stdout.contains(expected),
            "missing {expected:?}:\n{}",
            cert.all()
        );
    }
    let ca = ok(d, &["inspect", "ca/ca.crt"]);
    assert!(
        ca.stdout.contains("kind      CA (root, self-signed)"),
        "{}",
        ca.all()
    );

    let key = ok(d, &["inspect", "web/tls.key"]);
    assert!(
        key.stdout
            .contains("private key #0: ECDSA P-256 (PKCS#8, unencrypted)"),
        "{}",
        key.all()
    );

    let crl = ok(d, &["inspect", "ca/ca.crl"]);
    for expected in [
        "CRL #0",
        "issuer      CN=cli test CA",
        "thisUpdate  ",
        "nextUpdate  ",
        "revoked     0 serials",
    ] {
        assert!(
            crl.stdout.contains(expected),
            "missing {expected:?}:\n{}",
            crl.all()
        );
    }

    let missing = meshtls(d, &["inspect", "nothing-here.pem"]);
    assert_eq!(missing.code, 1, "{}", missing.all());
}

#[test]
fn inspect_opens_a_pkcs12_file_made_by_openssl() {
    if !openssl_available() {
        return;
    }
    let dir = minted();
    let d = dir.path();
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-in",
            "server/tls.crt",
            "-inkey",
            "server/tls.key",
            "-certfile",
            "ca/ca.crt",
            "-name",
            "api",
            "-passout",
            "pass:s3cret",
            "-out",
            "server.p12",
        ],
    );
    let run = ok(d, &["inspect", "server.p12", "--password", "s3cret"]);
    for expected in [
        "server.p12: PKCS#12, opened with the password given: 1 key entry, 2 certificates",
        "key entry #0 \"api\": ECDSA P-256; its certificate is #0",
        "subject   CN=spiffe://demo.local/ns/shop/sa/api",
        "kind      CA (root, self-signed)",
    ] {
        assert!(
            run.stdout.contains(expected),
            "missing {expected:?}:\n{}",
            run.all()
        );
    }

    let wrong = meshtls(d, &["inspect", "server.p12", "--password", "nope"]);
    assert_eq!(wrong.code, 1, "{}", wrong.all());
    assert!(
        wrong.stderr.contains("the password given is wrong"),
        "{}",
        wrong.all()
    );
    let empty = meshtls(d, &["inspect", "server.p12"]);
    assert_eq!(empty.code, 1, "{}", empty.all());
    assert!(
        empty
            .stderr
            .contains("the empty password does not open it: give it with --password P"),
        "{}",
        empty.all()
    );
}

/// `mint leaf --ca ca --out DIR --dns NAME [extra]`.
fn mint_leaf(dir: &Path, out: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "mint",
        "leaf",
        "--ca",
        "ca",
        "--out",
        out,
        "--dns",
        "api.example.com",
    ];
    args.extend_from_slice(extra);
    meshtls(dir, &args)
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

/// An existing key (and certificate) is never replaced unless `--force`
/// says so; with it, the new key replaces the old one, readable by its
/// owner only (issue 19, defect 10).
#[test]
fn mint_leaf_does_not_overwrite_a_key_without_force() {
    let dir = minted();
    let d = dir.path();
    let key = d.join("server/tls.key");
    let cert = d.join("server/tls.crt");
    let (old_key, old_cert) = (
        std::fs::read_to_string(&key).expect("the key"),
        std::fs::read_to_string(&cert).expect("the certificate"),
    );

    let refused = mint_leaf(d, "server", &[]);
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert_eq!(
        std::fs::read_to_string(&key).expect("the key"),
        old_key,
        "mint leaf overwrote an existing key without --force:\n{}",
        refused.all()
    );
    assert_eq!(
        std::fs::read_to_string(&cert).expect("the certificate"),
        old_cert,
        "mint leaf overwrote an existing certificate without --force:\n{}",
        refused.all()
    );
    assert!(
        refused.stderr.contains("exists") && refused.stderr.contains("--force"),
        "{}",
        refused.all()
    );

    // Made world-readable by someone: --force replaces it with a new key
    // that is not.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let forced = mint_leaf(d, "server", &["--force"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    assert_ne!(std::fs::read_to_string(&key).expect("the key"), old_key);
    assert_ne!(std::fs::read_to_string(&cert).expect("the cert"), old_cert);
    assert_eq!(mode(&key), 0o600, "{}", forced.all());
}

/// A key is created readable by its owner only: it is never, for any
/// moment, readable by others (a watcher polls its mode while `mint`
/// writes it, with a umask that would let anyone read it).
#[test]
fn a_minted_key_is_never_readable_by_others() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let dir = minted();
    let d = dir.path();
    let mut seen = Vec::new();
    for i in 0..40 {
        for (kind, out, key) in [
            ("leaf", format!("leaf{i}"), "tls.key"),
            ("ca", format!("ca{i}"), "ca.key"),
        ] {
            let out_dir = d.join(&out);
            std::fs::create_dir_all(&out_dir).expect("mkdir");
            let key = out_dir.join(key);
            let done = Arc::new(AtomicBool::new(false));
            let worst = Arc::new(AtomicU32::new(0));
            let watcher = {
                let (done, worst, key) = (done.clone(), worst.clone(), key.clone());
                std::thread::spawn(move || {
                    use std::os::unix::fs::PermissionsExt;
                    while !done.load(Ordering::Relaxed) {
                        if let Ok(m) = std::fs::symlink_metadata(&key) {
                            worst.fetch_or(m.permissions().mode() & 0o077, Ordering::Relaxed);
                        }
                    }
                })
            };
            let bin = env!("CARGO_BIN_EXE_meshtls");
            let args: Vec<&str> = match kind {
                "leaf" => vec![
                    "mint",
                    "leaf",
                    "--ca",
                    "ca",
                    "--out",
                    &out,
                    "--dns",
                    "a.example",
                ],
                _ => vec!["mint", "ca", "--out", &out],
            };
            let status = Command::new("sh")
                .arg("-c")
                .arg("umask 000 && exec \"$@\"")
                .arg("sh")
                .arg(bin)
                .args(&args)
                .current_dir(d)
                .output()
                .expect("sh runs");
            done.store(true, Ordering::Relaxed);
            watcher.join().expect("the watcher");
            assert!(
                status.status.success(),
                "{}",
                String::from_utf8_lossy(&status.stderr)
            );
            let bits = worst.load(Ordering::Relaxed);
            if bits != 0 {
                seen.push(format!(
                    "mint {kind} run {i}: {key:?} was mode ...{bits:03o} for others"
                ));
            }
            assert_eq!(mode(&key), 0o600);
        }
    }
    assert!(
        seen.is_empty(),
        "a private key was readable by others while being written ({} of 80 runs):\n{}",
        seen.len(),
        seen.join("\n")
    );
}

/// A CRL with the CA's name but signed by another key (a CA minted with the
/// same name) is not the CA's CRL: `check` says so, and never reports the
/// certificate "not revoked" on its word (issue 19, defect 10).
#[test]
fn check_refuses_a_crl_of_the_same_name_signed_by_another_key() {
    let dir = minted();
    let d = dir.path();
    ok(
        d,
        &["mint", "ca", "--out", "impostor", "--name", "cli test CA"],
    );
    ok(
        d,
        &["mint", "crl", "--ca", "impostor", "--out", "impostor.crl"],
    );
    let run = meshtls(
        d,
        &[
            "check",
            "--cert",
            "web/tls.crt",
            "--key",
            "web/tls.key",
            "--ca",
            "ca/ca.crt",
            "--crl",
            "impostor.crl",
            "--as",
            "client",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    let revocation: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains(" revocation "))
        .collect();
    assert!(
        !revocation
            .iter()
            .any(|l| l.contains("not revoked") || l.starts_with("ok")),
        "a CRL signed by another key was believed:\n{}",
        run.all()
    );
    assert!(
        revocation
            .iter()
            .any(|l| l.starts_with("FAIL") && l.contains("not signed by")),
        "the revocation finding does not say the CRL is not signed by the CA:\n{}",
        run.all()
    );

    // The CA's own CRL, beside it, is still read (control).
    let good = meshtls(
        d,
        &[
            "check",
            "--cert",
            "web/tls.crt",
            "--key",
            "web/tls.key",
            "--ca",
            "ca/ca.crt",
            "--crl",
            "ca/ca.crl",
            "--as",
            "client",
        ],
    );
    assert_eq!(good.code, 0, "{}", good.all());
    assert!(
        good.stdout.contains("ok    revocation   not revoked"),
        "{}",
        good.all()
    );
}
