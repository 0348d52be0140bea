//! `meshtls inspect FILE [--password P]`: what a PEM, DER or PKCS#12 file
//! holds, in one screen.

use std::fmt::Write as _;

use meshtls::rustls::pki_types::pem::SectionKind;
use meshtls::rustls::pki_types::{
    PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use p12_keystore::Pkcs12Archive;
use p12_keystore::error::Error as P12Error;

use crate::args::{Args, Spec};
use crate::files::{self, Body};
use crate::text::{count, left, now, relative, rfc3339, validity};
use crate::x509::{CertView, CrlView, describe_spki_der, load_der_key, load_key};
use crate::{Done, Failure, usage};

/// The flags of `inspect`.
const SPEC: Spec = Spec {
    once: &["password"],
    repeated: &[],
    switches: &[],
    positionals: 1,
};

/// What was found, to be printed in order.
#[derive(Default)]
struct Screen {
    /// The text so far.
    out: String,
    /// Something could not be read: exit 1.
    trouble: bool,
    /// Certificates seen (or why one does not parse), to name an issuer
    /// found in the same file.
    certs: Vec<Result<CertView, String>>,
    /// Keys seen (their public half), to name the certificate they belong to.
    keys: Vec<(String, Option<Vec<u8>>)>,
}

/// `meshtls inspect FILE [--password P]`.
pub(crate) fn run(argv: &[String]) -> Result<Done, Failure> {
    let args = Args::parse(argv, &SPEC)?;
    if args.help {
        return Ok(Done::ok(usage(Some("inspect"))));
    }
    let Some(file) = args.positional.first() else {
        return Err(Failure::Usage(
            "say which file: meshtls inspect FILE".into(),
        ));
    };
    let bytes = files::read(file)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::Failed(format!("{file} is empty")));
    }
    let mut screen = Screen::default();
    if files::is_pem(&bytes) {
        pem(&mut screen, file, &bytes);
    } else {
        der(&mut screen, file, &bytes, args.optional("password"))?;
    }
    Ok(Done {
        output: screen.out,
        ok: !screen.trouble,
    })
}

/// A PEM file, block by block.
fn pem(screen: &mut Screen, file: &str, bytes: &[u8]) {
    let blocks = files::pem_blocks(bytes);
    if blocks.is_empty() {
        screen.trouble = true;
        let _ = writeln!(
            screen.out,
            "{file}: PEM-like text, but no block could be read (a -----BEGIN line without its five dashes?)"
        );
        return;
    }
    let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
    let _ = writeln!(
        screen.out,
        "{file}: PEM, {}: {}",
        count(blocks.len(), "block", "blocks"),
        summarize(&labels)
    );
    // Certificates first, so that issuers and keys can be named.
    let ders: Vec<Vec<u8>> = blocks
        .iter()
        .filter_map(|b| match &b.body {
            Body::Der(SectionKind::Certificate, der) => Some(der.clone()),
            _ => None,
        })
        .collect();
    collect_certs(screen, &ders);
    let (mut certs, mut crls, mut keys) = (0, 0, 0);
    for block in blocks {
        match block.body {
            Body::Der(SectionKind::Certificate, _) => {
                certificate(screen, certs, "");
                certs += 1;
            }
            Body::Der(SectionKind::Crl, der) => {
                crl(screen, crls, &der);
                crls += 1;
            }
            Body::Der(
                kind @ (SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey),
                der,
            ) => {
                let (format, key) = match kind {
                    SectionKind::RsaPrivateKey => (
                        "PKCS#1",
                        PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
                    ),
                    SectionKind::EcPrivateKey => {
                        ("SEC1", PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)))
                    }
                    _ => (
                        "PKCS#8",
                        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
                    ),
                };
                private_key(screen, keys, format, key);
                keys += 1;
            }
            Body::EncryptedKey(cipher) => {
                let how = match (&block.label[..], cipher) {
                    ("ENCRYPTED PRIVATE KEY", _) => {
                        "PKCS#8, its type is hidden inside the encryption".to_owned()
                    }
                    (label, Some(cipher)) => {
                        format!("{label}, legacy PEM encryption with {cipher}")
                    }
                    (label, None) => format!("{label}, legacy PEM encryption"),
                };
                let _ = writeln!(
                    screen.out,
                    "private key #{keys}: encrypted ({how}); meshtls needs it decrypted: openssl pkey -in {file} -out KEYFILE"
                );
                keys += 1;
            }
            Body::Der(SectionKind::PublicKey, der) => {
                let _ = writeln!(
                    screen.out,
                    "public key: {} (a public key alone: not a certificate, not usable as a private key)",
                    describe_spki_der(&der)
                );
            }
            Body::Der(SectionKind::Csr, _) => {
                let _ = writeln!(
                    screen.out,
                    "certificate request (CSR): not a certificate yet; a CA signs it (openssl x509 -req -in {file} -CA ... -CAkey ...)"
                );
            }
            Body::Der(_, _) | Body::Unknown => {
                let _ = writeln!(
                    screen.out,
                    "a {} block, which meshtls does not read",
                    block.label
                );
            }
            Body::Malformed(e) => {
                screen.trouble = true;
                let _ = writeln!(
                    screen.out,
                    "a {} block that does not decode: {e} (truncated or hand-edited?)",
                    block.label
                );
            }
        }
    }
    match_keys(screen);
}

/// `2 CERTIFICATE, 1 PRIVATE KEY`, in order of first appearance.
fn summarize(labels: &[&str]) -> String {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for label in labels {
        match seen.iter_mut().find(|(l, _)| l == label) {
            Some((_, n)) => *n += 1,
            None => seen.push((label, 1)),
        }
    }
    seen.iter()
        .map(|(l, n)| format!("{n} {l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses the file's certificates up front, so that each can name its
/// issuer and key when found in the same file.
fn collect_certs(screen: &mut Screen, ders: &[Vec<u8>]) {
    screen.certs = ders.iter().map(|der| CertView::parse(der)).collect();
}

/// Certificate #i, in a few lines.
fn certificate(screen: &mut Screen, i: usize, note: &str) {
    let cert = match screen.certs.get(i) {
        Some(Ok(cert)) => cert.clone(),
        Some(Err(e)) => {
            screen.trouble = true;
            let _ = writeln!(screen.out, "certificate #{i}{note}: {e}");
            return;
        }
        None => return,
    };
    let now = now();
    let issuer_here = screen
        .certs
        .iter()
        .enumerate()
        .position(|(j, c)| j != i && c.as_ref().is_ok_and(|c| c.subject_der == cert.issuer_der))
        .map(|j| format!(" (certificate #{j} in this file)"))
        .unwrap_or_default();
    let issuer = if cert.self_issued() {
        "itself (self-signed)".to_owned()
    } else {
        format!("{}{issuer_here}", cert.issuer)
    };
    let usage = match &cert.eku {
        Some(eku) if eku.is_empty() => "; extendedKeyUsage empty".to_owned(),
        Some(eku) => format!("; extendedKeyUsage {}", eku.join(", ")),
        None if cert.is_ca => String::new(),
        None => "; no extendedKeyUsage (any use)".to_owned(),
    };
    let out = &mut screen.out;
    let _ = writeln!(out, "certificate #{i}{note}");
    let _ = writeln!(out, "  subject   {}", cert.subject);
    let _ = writeln!(out, "  names     {}", cert.names());
    let _ = writeln!(out, "  issuer    {issuer}");
    let _ = writeln!(out, "  serial    {}", cert.serial);
    let _ = writeln!(
        out,
        "  validity  {}",
        validity(cert.not_before, cert.not_after, now)
    );
    let _ = writeln!(out, "  kind      {}{usage}; key {}", cert.kind(), cert.key);
    if let Err(e) = &cert.identity {
        let _ = writeln!(
            out,
            "  identity  meshtls peers refuse it as a workload: {e}"
        );
    }
}

/// A CRL, in a few lines.
fn crl(screen: &mut Screen, i: usize, der: &[u8]) {
    let crl = match CrlView::parse(der) {
        Ok(crl) => crl,
        Err(e) => {
            screen.trouble = true;
            let _ = writeln!(screen.out, "CRL #{i}: {e}");
            return;
        }
    };
    let now = now();
    let out = &mut screen.out;
    let _ = writeln!(out, "CRL #{i}");
    let _ = writeln!(out, "  issuer      {}", crl.issuer);
    let _ = writeln!(
        out,
        "  thisUpdate  {} ({})",
        rfc3339(crl.this_update),
        relative(crl.this_update, now)
    );
    match crl.next_update {
        Some(t) if t < now => {
            let _ = writeln!(
                out,
                "  nextUpdate  {} (STALE: passed {} ago; meshtls refuses it at load)",
                rfc3339(t),
                crate::text::span(t.abs_diff(now))
            );
        }
        Some(t) => {
            let _ = writeln!(out, "  nextUpdate  {} ({})", rfc3339(t), left(t, now));
        }
        None => {
            let _ = writeln!(out, "  nextUpdate  none");
        }
    }
    const SHOWN: usize = 8;
    let serials: Vec<&str> = crl
        .revoked
        .iter()
        .take(SHOWN)
        .map(|(s, _, _)| s.as_str())
        .collect();
    let more = crl.revoked.len().saturating_sub(SHOWN);
    let _ = writeln!(
        out,
        "  revoked     {}{}{}{}",
        count(crl.revoked.len(), "serial", "serials"),
        if serials.is_empty() { "" } else { ": " },
        serials.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    if let Some(number) = crl.number {
        let _ = writeln!(out, "  crlNumber   {number}");
    }
}

/// A private key: its type, or why it cannot be used.
fn private_key(screen: &mut Screen, i: usize, format: &str, key: PrivateKeyDer<'static>) {
    match load_key(key) {
        Ok((signer, kind)) => {
            let _ = writeln!(
                screen.out,
                "private key #{i}: {kind} ({format}, unencrypted)"
            );
            screen.keys.push((
                format!("private key #{i}"),
                signer.public_key().map(|spki| spki.as_ref().to_vec()),
            ));
        }
        Err(e) => {
            screen.trouble = true;
            let _ = writeln!(screen.out, "private key #{i} ({format}): {e}");
        }
    }
}

/// Says which certificate each key belongs to, when it is in the file.
fn match_keys(screen: &mut Screen) {
    let mut lines = Vec::new();
    for (name, spki) in &screen.keys {
        let Some(spki) = spki else { continue };
        if screen.certs.is_empty() {
            continue;
        }
        match screen
            .certs
            .iter()
            .position(|c| c.as_ref().is_ok_and(|c| &c.spki == spki))
        {
            Some(i) => lines.push(format!("{name} is the key of certificate #{i}")),
            None => lines.push(format!("{name} matches no certificate in this file")),
        }
    }
    for line in lines {
        let _ = writeln!(screen.out, "{line}");
    }
}

/// A binary file: a certificate, CRL, PKCS#12 file or private key.
fn der(
    screen: &mut Screen,
    file: &str,
    bytes: &[u8],
    password: Option<&str>,
) -> Result<(), Failure> {
    if CertView::parse(bytes).is_ok() {
        let _ = writeln!(
            screen.out,
            "{file}: DER, a certificate (meshtls reads PEM: openssl x509 -inform DER -in {file} -out FILE.pem)"
        );
        collect_certs(screen, &[bytes.to_vec()]);
        certificate(screen, 0, "");
        return Ok(());
    }
    if CrlView::parse(bytes).is_ok() {
        let _ = writeln!(
            screen.out,
            "{file}: DER, a CRL (meshtls reads PEM: openssl crl -inform DER -in {file} -out FILE.pem)"
        );
        crl(screen, 0, bytes);
        return Ok(());
    }
    match der_version(bytes) {
        Some(3) => pkcs12(screen, file, bytes, password),
        Some(0 | 1) => match load_der_key(bytes) {
            Ok((_, kind, format)) => {
                let _ = writeln!(
                    screen.out,
                    "{file}: DER, a private key (meshtls reads PEM: openssl pkey -inform DER -in {file} -out FILE.pem)\nprivate key #0: {kind} ({format}, unencrypted)"
                );
                Ok(())
            }
            Err(e) => Err(Failure::Failed(format!(
                "{file} is binary and looks like a private key, but {e}"
            ))),
        },
        _ => Err(Failure::Failed(format!(
            "{file} is binary but not a certificate, CRL, PKCS#12 file or PKCS#8 key that can be read"
        ))),
    }
}

/// The version INTEGER at the start of a DER SEQUENCE (`SEQUENCE { INTEGER v, ...`):
/// 3 for PKCS#12, 0 or 1 for PKCS#8.
fn der_version(bytes: &[u8]) -> Option<u8> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let rest = if len & 0x80 == 0 {
        rest
    } else {
        rest.get(usize::from(len & 0x7f)..)?
    };
    match rest {
        [0x02, 0x01, v, ..] => Some(*v),
        _ => None,
    }
}

/// A PKCS#12 file: its key entries and certificates, opened with the
/// password given (empty by default).
fn pkcs12(
    screen: &mut Screen,
    file: &str,
    bytes: &[u8],
    password: Option<&str>,
) -> Result<(), Failure> {
    let archive = Pkcs12Archive::from_pkcs12(bytes, password.unwrap_or("")).map_err(|e| match e {
        // The MAC is keyed by the password; a file without a MAC decrypts to garbage.
        P12Error::MacError(_) | P12Error::UnpadError => Failure::Failed(match password {
            None => format!(
                "{file} is a PKCS#12 file protected by a password, and the empty password does not open it: give it with --password P"
            ),
            Some(_) => format!(
                "{file} is a PKCS#12 file, and the password given is wrong (or the file is corrupt)"
            ),
        }),
        other => Failure::Failed(format!(
            "{file} looks like PKCS#12 but cannot be read: {other} (re-export it: openssl pkcs12 -export -in tls.crt -inkey tls.key -out FILE.p12)"
        )),
    })?;
    let _ = writeln!(
        screen.out,
        "{file}: PKCS#12, opened with {}: {}, {}",
        if password.is_some_and(|p| !p.is_empty()) {
            "the password given"
        } else {
            "the empty password"
        },
        count(archive.keys.len(), "key entry", "key entries"),
        count(archive.certs.len(), "certificate", "certificates")
    );
    let ders: Vec<Vec<u8>> = archive
        .certs
        .iter()
        .map(|bag| bag.cert.as_der().to_vec())
        .collect();
    collect_certs(screen, &ders);
    for (i, bag) in archive.keys.iter().enumerate() {
        let alias = bag
            .friendly_name
            .clone()
            .unwrap_or_else(|| "<no alias>".into());
        let cert = archive.certs.iter().position(|c| {
            matches!((&c.local_key_id, &bag.local_key_id), (Some(a), Some(b)) if a.as_slice() == b.0.as_slice())
        });
        let kind = load_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            bag.key.as_der().to_vec(),
        )))
        .map_or_else(
            |e| format!("a key meshtls cannot use ({e})"),
            |(_, kind)| kind,
        );
        let _ = writeln!(
            screen.out,
            "key entry #{i} \"{}\": {kind}; {}",
            crate::text::safe(&alias),
            cert.map_or_else(
                || "no certificate is bound to it (meshtls refuses such a keystore)".to_owned(),
                |c| format!("its certificate is #{c}")
            )
        );
    }
    for (i, bag) in archive.certs.iter().enumerate() {
        let alias = bag
            .friendly_name
            .as_deref()
            .map(|a| format!(" \"{}\"", crate::text::safe(a)))
            .unwrap_or_default();
        let role = if bag.local_key_id.is_some() {
            "bound to a key entry"
        } else {
            "trusted entry: meshtls trusts it when this file is given as roots"
        };
        certificate(screen, i, &format!("{alias} ({role})"));
    }
    Ok(())
}
