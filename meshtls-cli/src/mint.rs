//! `meshtls mint ca|leaf|crl`: development material from `meshtls::dev`,
//! with every flag's value checked before anything is written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshtls::SpiffeId;
use meshtls::dev::DevCa;
use meshtls::rustls::pki_types::DnsName;

use crate::args::{Args, Spec};
use crate::files::{Existing, Readers};
use crate::text::{count, now, rfc3339, span};
use crate::x509::CertView;
use crate::{Done, Failure, files, usage};

/// The flags of `mint ca`.
const CA: Spec = Spec {
    once: &["out", "name"],
    repeated: &[],
    switches: &[],
    positionals: 0,
};

/// The flags of `mint leaf`.
const LEAF: Spec = Spec {
    once: &["ca", "out", "spiffe", "cn", "hours"],
    repeated: &["dns"],
    switches: &["server", "client", "force"],
    positionals: 0,
};

/// The flags of `mint crl`.
const CRL: Spec = Spec {
    once: &["ca", "out", "hours"],
    repeated: &["revoke"],
    switches: &[],
    positionals: 0,
};

/// `mint ca --out DIR [--name NAME]`.
pub(crate) fn ca(argv: &[String]) -> Result<Done, Failure> {
    let args = Args::parse(argv, &CA)?;
    if args.help {
        return Ok(Done::ok(usage(Some("mint ca"))));
    }
    let out = PathBuf::from(args.required("out")?);
    let name = args.optional("name").unwrap_or("meshtls development CA");
    if name.trim().is_empty() {
        return Err(Failure::BadValue("--name cannot be empty".into()));
    }
    for existing in ["ca.crt", "ca.key"] {
        let path = out.join(existing);
        if path.exists() {
            return Err(Failure::Failed(format!(
                "{} exists: a new CA would replace it and orphan every certificate the old one signed; \
                 remove {} and {} first, or pick another --out",
                path.display(),
                out.join("ca.crt").display(),
                out.join("ca.key").display()
            )));
        }
    }
    let ca = DevCa::new(name).map_err(|e| Failure::Failed(e.to_string()))?;
    let (cert, key) = write_pair(
        &out,
        ("ca.crt", ca.cert_pem()),
        ("ca.key", ca.key_pem()),
        Existing::Keep,
    )?;
    let view = CertView::parse(&pem_cert(ca.cert_pem())?).map_err(Failure::Failed)?;
    Ok(Done::ok(format!(
        "wrote {} and {}\n  subject  {}\n  valid    until {}\n  trust it with --ca {} (check) or as a service's client/server roots",
        cert.display(),
        key.display(),
        view.subject,
        rfc3339(view.not_after),
        cert.display()
    )))
}

/// `mint leaf --ca DIR --out DIR2 ...`.
pub(crate) fn leaf(argv: &[String]) -> Result<Done, Failure> {
    let args = Args::parse(argv, &LEAF)?;
    if args.help {
        return Ok(Done::ok(usage(Some("mint leaf"))));
    }
    let ca_dir = args.required("ca")?;
    let out = PathBuf::from(args.required("out")?);
    let existing = if args.switch("force") {
        Existing::Replace
    } else {
        Existing::Keep
    };
    if existing == Existing::Keep {
        for name in ["tls.crt", "tls.key"] {
            let path = out.join(name);
            if path.symlink_metadata().is_ok() {
                return Err(Failure::Failed(format!(
                    "{} exists: a new leaf would replace it (and its key: what the old certificate was issued for stops working); \
                     pass --force to replace {} and {}, or pick another --out",
                    path.display(),
                    out.join("tls.crt").display(),
                    out.join("tls.key").display()
                )));
            }
        }
    }
    let lifetime = hours(&args, 24)?;
    let spiffe = args.optional("spiffe").map(spiffe_id).transpose()?;
    let dns: Vec<&str> = args.all("dns");
    for name in &dns {
        check_dns(name)?;
    }
    let cn = match args.optional("cn") {
        Some(cn) if cn.trim().is_empty() => {
            return Err(Failure::BadValue("--cn cannot be empty".into()));
        }
        Some(cn) => Some(cn.to_owned()),
        // The first name, so that messages about it never show an empty subject.
        None => spiffe
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .or_else(|| dns.first().map(|d| (*d).to_owned())),
    };
    let Some(cn) = cn else {
        return Err(Failure::BadValue(
            "a leaf needs a name: --spiffe spiffe://TD/PATH and/or --dns NAME (or, for a legacy \
             certificate without SANs, --cn NAME)"
                .into(),
        ));
    };
    let ca = load_ca(ca_dir)?;
    let mut builder = ca.leaf().valid_for(lifetime).cn(&cn);
    if let Some(id) = &spiffe {
        builder = builder.spiffe(id.as_str());
    }
    for name in &dns {
        builder = builder.dns(name);
    }
    let (server, client) = (args.switch("server"), args.switch("client"));
    if server || !client {
        builder = builder.server();
    }
    if client || !server {
        builder = builder.client();
    }
    let cert = builder
        .issue()
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let (crt, key) = write_pair(
        &out,
        ("tls.crt", cert.chain_pem()),
        ("tls.key", cert.key_pem()),
        existing,
    )?;
    let view = CertView::parse(cert.der()).map_err(Failure::Failed)?;
    let mut lines = vec![
        format!("wrote {} (chain) and {}", crt.display(), key.display()),
        format!("  subject  {}", view.subject),
        format!("  names    {}", view.names()),
        format!(
            "  usage    {}",
            view.eku.as_deref().unwrap_or_default().join(", ")
        ),
        format!("  serial   {}", cert.serial()),
        format!(
            "  valid    until {} ({})",
            rfc3339(view.not_after),
            span(lifetime.as_secs())
        ),
        format!("  issuer   {}", view.issuer),
    ];
    if !view.has_san() {
        lines.push(
            "warning: no subjectAltName: a server cannot use it, and peers admit it only by a cn: rule \
             (legacy, off unless allow_legacy_cn)"
                .into(),
        );
    }
    if dns.iter().any(|d| d.starts_with("*.")) {
        lines.push(
            "note: no meshtls allow rule ever matches a wildcard DNS SAN; a wildcard serves only clients that check the name they dial"
                .into(),
        );
    }
    Ok(Done::ok(lines.join("\n")))
}

/// `mint crl --ca DIR [--revoke CERTFILE]... --out FILE [--hours N]`.
pub(crate) fn crl(argv: &[String]) -> Result<Done, Failure> {
    let args = Args::parse(argv, &CRL)?;
    if args.help {
        return Ok(Done::ok(usage(Some("mint crl"))));
    }
    let ca_dir = args.required("ca")?;
    let out = PathBuf::from(args.required("out")?);
    if out.is_dir() {
        return Err(Failure::BadValue(format!(
            "--out {} is a directory; give the CRL's file name, e.g. --out {}",
            out.display(),
            out.join("ca.crl").display()
        )));
    }
    let lifetime = hours(&args, 24 * 7)?;
    let ca = load_ca(ca_dir)?;
    let ca_view = CertView::parse(&pem_cert(ca.cert_pem())?).map_err(Failure::Failed)?;
    let mut serials: Vec<String> = Vec::new();
    for file in args.all("revoke") {
        let bytes = files::read(file)?;
        let der = files::certificates(file, &bytes)?
            .into_iter()
            .next()
            .ok_or_else(|| Failure::Failed(format!("{file} holds no certificate")))?;
        let cert = CertView::parse(&der).map_err(|e| Failure::Failed(format!("{file}: {e}")))?;
        if cert.subject_der == ca_view.subject_der && cert.spki == ca_view.spki {
            return Err(Failure::Failed(format!(
                "{file} is the CA itself ({}); a CRL revokes the certificates a CA signed",
                ca_view.subject
            )));
        }
        if cert.issuer_der != ca_view.subject_der {
            return Err(Failure::Failed(format!(
                "{file} (subject {}) was issued by {}, not by this CA ({}): a CRL can only revoke \
                 certificates its own CA signed; use that CA's --ca",
                cert.subject, cert.issuer, ca_view.subject
            )));
        }
        if !serials.contains(&cert.serial) {
            serials.push(cert.serial);
        }
    }
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    let pem = ca
        .crl_for_serials(&refs, lifetime)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::Failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(&out, &pem)
        .map_err(|e| Failure::Failed(format!("cannot write {}: {e}", out.display())))?;
    let revoked = if serials.is_empty() {
        "revoking nothing yet".to_owned()
    } else {
        format!(
            "revoking {}: {}",
            count(serials.len(), "certificate", "certificates"),
            serials.join(", ")
        )
    };
    Ok(Done::ok(format!(
        "wrote {}: a CRL of {} {revoked}\n  next update {} (in {})",
        out.display(),
        ca_view.subject,
        rfc3339(now().saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX))),
        span(lifetime.as_secs())
    )))
}

/// Writes a certificate and its key into `dir` (made if missing): the key
/// first, created readable by its owner only, then the certificate. With
/// `Existing::Keep`, a file that exists is left alone and the write fails.
fn write_pair(
    dir: &Path,
    (cert_name, cert_pem): (&str, &str),
    (key_name, key_pem): (&str, &str),
    existing: Existing,
) -> Result<(PathBuf, PathBuf), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::Failed(format!("cannot create {}: {e}", dir.display())))?;
    let (cert, key) = (dir.join(cert_name), dir.join(key_name));
    let write = |path: &Path, pem: &str, readers: Readers| {
        files::write_new(path, pem.as_bytes(), readers, existing).map_err(|e| {
            Failure::Failed(if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} exists; nothing was replaced (pass --force to replace it)",
                    path.display()
                )
            } else {
                format!("cannot write {}: {e}", path.display())
            })
        })
    };
    write(&key, key_pem, Readers::Owner)?;
    write(&cert, cert_pem, Readers::Anyone)?;
    Ok((cert, key))
}

/// `--hours N`: a whole number of hours, at least 1, at most ten years.
fn hours(args: &Args, default: u64) -> Result<Duration, Failure> {
    const MAX: u64 = 10 * 366 * 24;
    let Some(text) = args.optional("hours") else {
        return Ok(Duration::from_secs(default * 3600));
    };
    match text.trim().parse::<u64>() {
        Ok(0) => Err(Failure::BadValue(
            "--hours 0 would make something that is already out of date; give at least 1".into(),
        )),
        Ok(h) if h > MAX => Err(Failure::BadValue(format!(
            "--hours {h} is more than ten years ({MAX} hours); development material should not outlive its CA"
        ))),
        Ok(h) => Ok(Duration::from_secs(h * 3600)),
        Err(_) => Err(Failure::BadValue(format!(
            "--hours {text:?} is not a whole number of hours (e.g. --hours 24)"
        ))),
    }
}

/// `--spiffe`: a SPIFFE ID of a workload, with the fix for the usual slips.
pub(crate) fn spiffe_id(text: &str) -> Result<SpiffeId, Failure> {
    let suggest = |fixed: String| match fixed.parse::<SpiffeId>() {
        Ok(id) if !id.path().is_empty() => format!(" (did you mean {id}?)"),
        _ => String::new(),
    };
    match text.parse::<SpiffeId>() {
        Ok(id) if id.path().is_empty() => Err(Failure::BadValue(format!(
            "--spiffe {id} names a trust domain, not a workload: a workload's ID has a path, \
             e.g. {id}/ns/NAMESPACE/sa/ACCOUNT"
        ))),
        Ok(id) => Ok(id),
        Err(reason) => {
            let hint = match text.split_once("://") {
                // No scheme at all: `corp.test/ns/x`.
                None => suggest(format!(
                    "spiffe://{}",
                    text.strip_prefix("spiffe:")
                        .unwrap_or(text)
                        .trim_start_matches('/')
                )),
                // `SPIFFE://Corp.Test/x`: scheme and trust domain are lowercase.
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("spiffe") => {
                    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
                    let path = if path.is_empty() {
                        String::new()
                    } else {
                        format!("/{path}")
                    };
                    suggest(format!("spiffe://{}{path}", td.to_ascii_lowercase()))
                }
                // `https://corp.test/x`: another scheme.
                Some((_, rest)) => suggest(format!("spiffe://{rest}")),
            };
            Err(Failure::BadValue(format!(
                "--spiffe {text:?} is not a SPIFFE ID: {reason}{hint}"
            )))
        }
    }
}

/// `--dns`: a DNS name or an IP address.
fn check_dns(name: &str) -> Result<(), Failure> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if name.starts_with("spiffe://") {
        return Err(Failure::BadValue(format!(
            "--dns {name} is a SPIFFE ID (did you mean --spiffe {name}?)"
        )));
    }
    if let Some((_, rest)) = name.split_once("://") {
        let host = rest.split(['/', ':']).next().unwrap_or_default();
        return Err(Failure::BadValue(format!(
            "--dns {name:?} is a URL, not a DNS name (did you mean --dns {host}?)"
        )));
    }
    if let Some(bare) = name.strip_suffix('.') {
        return Err(Failure::BadValue(format!(
            "--dns {name:?} ends with a dot, and meshtls ignores such SANs (did you mean --dns {bare}?)"
        )));
    }
    // `*.suffix`: a wildcard SAN, as a server may have one.
    let base = name.strip_prefix("*.").unwrap_or(name);
    if DnsName::try_from(base).is_err() || base.contains('*') {
        return Err(Failure::BadValue(format!(
            "--dns {name:?} is not a DNS name or IP address (letters, digits, '-' and '.', e.g. api.example.com)"
        )));
    }
    Ok(())
}

/// The CA in `dir` (ca.crt and ca.key, as `mint ca` writes them).
fn load_ca(dir: &str) -> Result<DevCa, Failure> {
    let dir = Path::new(dir);
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| {
            Failure::Failed(format!(
                "cannot read {}: {e} (--ca is the directory `meshtls mint ca --out DIR` wrote)",
                path.display()
            ))
        })
    };
    let (cert, key) = (read("ca.crt")?, read("ca.key")?);
    DevCa::from_pem(&cert, &key).map_err(|e| {
        Failure::Failed(format!(
            "{} and ca.key are not a usable CA: {e}",
            dir.join("ca.crt").display()
        ))
    })
}

/// The DER of the first certificate in a PEM string.
fn pem_cert(pem: &str) -> Result<Vec<u8>, Failure> {
    files::certificates("the CA certificate", pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::Failed("the CA has no certificate".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<SpiffeId, Failure>) -> String {
        match r {
            Ok(id) => format!("accepted {id}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn spiffe_slips_get_the_fix() {
        let m = message(spiffe_id("corp.test/ns/x"));
        assert!(m.contains("did you mean spiffe://corp.test/ns/x?"), "{m}");
        let m = message(spiffe_id("SPIFFE://Corp.Test/ns/x"));
        assert!(m.contains("did you mean spiffe://corp.test/ns/x?"), "{m}");
        let m = message(spiffe_id("https://corp.test/ns/x"));
        assert!(m.contains("did you mean spiffe://corp.test/ns/x?"), "{m}");
        let m = message(spiffe_id("spiffe://corp.test"));
        assert!(m.contains("names a trust domain"), "{m}");
        let m = message(spiffe_id("spiffe://corp.test/a//b"));
        assert!(!m.contains("did you mean"), "{m}");
        assert_eq!(
            message(spiffe_id("spiffe://corp.test/ns/x")),
            "accepted spiffe://corp.test/ns/x"
        );
    }

    #[test]
    fn dns_slips_get_the_fix() {
        assert!(check_dns("api.example.com").is_ok());
        assert!(check_dns("10.0.0.1").is_ok());
        let e = check_dns("https://api.example.com/x")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("did you mean --dns api.example.com?")));
        let e = check_dns("spiffe://td/x").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("--spiffe")));
        assert!(check_dns("bad name").is_err());
        assert!(check_dns("*.svc.example").is_ok());
        assert!(check_dns("a.*.example").is_err());
    }
}
