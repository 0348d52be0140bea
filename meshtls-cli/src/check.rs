//! `meshtls check`: one set of files (certificate, key, CA, CRL) explained
//! the way a reviewer would, one finding per line, each problem with its fix.
//!
//! The verdicts are meshtls's own: its builder loads the files as a service
//! would ([`MaterialError`](meshtls::error::MaterialError) names what is
//! wrong), a meshtls peer trusting the CA judges the chain in an in-memory
//! handshake ([`probe`](crate::probe)), and the allow rules are matched by
//! [`Allow::matches`]. What the files say (names, usage, dates, CRL entries)
//! is read alongside, to explain those verdicts and to write the fixes.

use std::fmt::Write as _;
use std::sync::Arc;

use meshtls::error::RejectReason;
use meshtls::rustls::pki_types::pem::SectionKind;
use meshtls::rustls::pki_types::{
    CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer,
    PrivateSec1KeyDer,
};
use meshtls::rustls::sign::{CertifiedKey, SigningKey};
use meshtls::rustls::{Error as TlsError, InconsistentKeys};
use meshtls::{Allow, ClientTls, PeerIdentity, Policy, ServerTls};

use crate::args::{Args, Spec};
use crate::files::{self, Body};
use crate::probe::{self, CrlLoad, Role, Verdict};
use crate::text::{left, rfc3339, shell, validity};
use crate::x509::{CertView, CrlView, load_der_key, load_key};
use crate::{Done, Failure, usage};

/// The flags of `check`.
const SPEC: Spec = Spec {
    once: &["cert", "key", "ca", "crl", "as"],
    repeated: &["allow"],
    switches: &[],
    positionals: 0,
};

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// As it should be.
    Ok,
    /// A fact, neither good nor bad.
    Info,
    /// Works, but should be looked at.
    Warn,
    /// A problem: the files would not be served.
    Fail,
}

impl Level {
    /// The tag that starts the line.
    fn tag(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One line of the report, with the fixes for a problem.
#[derive(Debug)]
struct Finding {
    /// How much it matters.
    level: Level,
    /// What it is about: `key`, `chain`, ...
    topic: &'static str,
    /// The finding.
    text: String,
    /// The fix, in lines (commands included).
    fixes: Vec<String>,
}

/// The findings, in order.
#[derive(Debug, Default)]
struct Report(Vec<Finding>);

impl Report {
    /// Adds a finding and hands it back, for its fixes.
    fn add(&mut self, level: Level, topic: &'static str, text: impl Into<String>) -> &mut Finding {
        self.0.push(Finding {
            level,
            topic,
            text: text.into(),
            fixes: Vec::new(),
        });
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    /// How many findings are problems (`FAIL`).
    fn problems(&self) -> usize {
        self.0.iter().filter(|f| f.level == Level::Fail).count()
    }

    /// The findings as text: one line each, fixes indented below.
    fn render(&self, out: &mut String) {
        for f in &self.0 {
            let _ = writeln!(out, "{:<4}  {:<11}  {}", f.level.tag(), f.topic, f.text);
            for fix in &f.fixes {
                let _ = writeln!(out, "{:<4}  {:<11}    {fix}", "", "");
            }
        }
    }
}

impl Finding {
    /// Adds a line of fix.
    fn fix(&mut self, fix: impl Into<String>) -> &mut Self {
        self.fixes.push(fix.into());
        self
    }
}

/// The paths given, for messages and commands.
struct Paths<'a> {
    /// `--cert`: the chain, leaf first.
    cert: &'a str,
    /// `--key`.
    key: &'a str,
    /// `--ca`: the CA bundle peers trust.
    ca: &'a str,
    /// `--crl`.
    crl: Option<&'a str>,
}

/// `meshtls check --cert F --key F --ca F [--crl F] [--as server|client] [--allow RULE]...`
pub(crate) fn run(argv: &[String]) -> Result<Done, Failure> {
    let args = Args::parse(argv, &SPEC)?;
    if args.help {
        return Ok(Done::ok(usage(Some("check"))));
    }
    let paths = Paths {
        cert: args.required("cert")?,
        key: args.required("key")?,
        ca: args.required("ca")?,
        crl: args.optional("crl"),
    };
    let role = match args.optional("as") {
        None | Some("server") => Role::Server,
        Some("client") => Role::Client,
        Some(other) => {
            return Err(Failure::BadValue(format!(
                "--as {other:?}: say --as server (the default) or --as client"
            )));
        }
    };
    let mut rules = Vec::new();
    for text in args.all("allow") {
        let rule = text
            .parse::<Allow>()
            .map_err(|e| Failure::BadValue(format!("--allow {text:?}: {e}")))?;
        rules.push(rule);
    }

    let mut report = Report::default();
    let chain = read_chain(&mut report, &paths);
    let leaf = chain.as_ref().and_then(|(_, views)| views.first().cloned());
    let fixes = leaf.as_ref().map(|leaf| Reissue::new(leaf, role, &paths));
    let mut reissue_shown = false;
    if let (Some(leaf), Some(fixes), Some((chain, _))) = (&leaf, &fixes, &chain) {
        describe(&mut report, leaf, chain.len(), fixes, &mut reissue_shown);
        names(&mut report, leaf, role, fixes, &mut reissue_shown);
        key_usage(&mut report, leaf, role, fixes, &mut reissue_shown);
        dates(&mut report, leaf, fixes, &mut reissue_shown);
    }
    let key = key(
        &mut report,
        &paths,
        chain.as_ref().map(|(c, _)| c.as_slice()),
    );
    let verdict = chain.as_ref().map(|(chain, views)| {
        let real_key = key.is_some();
        let verdict = probe::judge(role, chain, key, paths.ca, paths.crl);
        peer_view(&mut report, role, &paths, views, real_key, &verdict);
        verdict
    });
    if let (Some(crl), Some(leaf), Some(verdict)) = (paths.crl, &leaf, &verdict) {
        revocation(&mut report, role, &paths, crl, leaf, verdict);
    }
    if let Some(leaf_der) = chain.as_ref().and_then(|(chain, _)| chain.first()) {
        allow_rules(&mut report, role, &rules, leaf_der);
    }
    build(&mut report, role, &paths);

    let mut out = format!(
        "meshtls check: {} with key {}, as a {}, against the CA in {}{}\n",
        paths.cert,
        paths.key,
        role.name(),
        paths.ca,
        paths
            .crl
            .map(|c| format!(" and the CRL in {c}"))
            .unwrap_or_default()
    );
    report.render(&mut out);
    let problems = report.problems();
    let ok = problems == 0;
    if ok {
        let rules_note = if rules.is_empty() {
            String::new()
        } else {
            " and an --allow rule admits it".to_owned()
        };
        let _ = write!(
            out,
            "verdict: would be served: meshtls accepts these files as a {}'s identity, a {} trusting the CA accepts the chain{rules_note}",
            role.name(),
            role.peer()
        );
    } else {
        let _ = write!(
            out,
            "verdict: would NOT be served: {} (the FAIL lines above, each with its fix)",
            crate::text::count(problems, "problem", "problems")
        );
    }
    Ok(Done { output: out, ok })
}

/// The certificate file's chain (DER and parsed), or the finding why not.
fn read_chain(report: &mut Report, paths: &Paths<'_>) -> Option<(Vec<Vec<u8>>, Vec<CertView>)> {
    let chain = files::read(paths.cert).and_then(|bytes| files::certificates(paths.cert, &bytes));
    let chain = match chain {
        Ok(chain) => chain,
        Err(e) => {
            report.add(Level::Fail, "certificate", e.to_string());
            return None;
        }
    };
    let mut views = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        match CertView::parse(der) {
            Ok(view) => views.push(view),
            Err(e) => {
                report
                    .add(
                        Level::Fail,
                        "certificate",
                        format!("certificate #{i} in {}: {e}", paths.cert),
                    )
                    .fix(format!(
                        "look at it: openssl x509 -in {} -noout -text",
                        shell(paths.cert)
                    ));
                return None;
            }
        }
    }
    Some((chain, views))
}

/// The certificate in one line, and whether webpki can read it at all (v3).
fn describe(report: &mut Report, leaf: &CertView, len: usize, fixes: &Reissue, shown: &mut bool) {
    let chain = match len {
        1 => String::new(),
        n => format!(
            "; the file holds the leaf and {} above it",
            crate::text::count(n - 1, "intermediate", "intermediates")
        ),
    };
    report.add(
        Level::Info,
        "certificate",
        format!(
            "subject {}, serial {}, issued by {}, key {}{chain}",
            leaf.subject, leaf.serial, leaf.issuer, leaf.key
        ),
    );
    if leaf.version != 3 {
        let finding = report.add(
            Level::Fail,
            "certificate",
            format!(
                "an X.509 v{} certificate: meshtls (webpki) accepts only v3, which `openssl x509 -req` makes only when given extensions",
                leaf.version
            ),
        );
        fixes.attach(finding, shown, "reissue it as v3, with its extensions");
    }
}

/// A reissue of the certificate that fixes its names and usage and keeps
/// the rest: the openssl commands, for every finding that needs one.
struct Reissue {
    /// `openssl req` for a new CSR, then `openssl x509 -req` to sign it.
    commands: Vec<String>,
}

impl Reissue {
    /// The commands for `leaf`, used as a `role`, with the paths given.
    fn new(leaf: &CertView, role: Role, paths: &Paths<'_>) -> Self {
        let needed = usage_name(role);
        let san = leaf.san_ext().unwrap_or_else(|| suggested_san(leaf));
        let eku = leaf.eku.as_ref().map(|eku| {
            let mut eku = eku.clone();
            if !leaf.allows(needed) {
                eku.push(needed.to_owned());
            }
            eku.join(",")
        });
        let mut addext = format!("-addext \"subjectAltName={san}\"");
        let mut extfile = format!("subjectAltName={san}");
        if let Some(eku) = &eku {
            let _ = write!(addext, " -addext \"extendedKeyUsage={eku}\"");
            let _ = write!(extfile, "\\nextendedKeyUsage={eku}");
        }
        let cn = leaf.cn.clone().unwrap_or_else(|| {
            san.split_once(':')
                .map_or(san.clone(), |(_, v)| v.to_owned())
        });
        let lifetime = u64::try_from(leaf.not_after.saturating_sub(leaf.not_before)).unwrap_or(0);
        let days = lifetime
            .saturating_add(43_200)
            .checked_div(86_400)
            .unwrap_or(1)
            .max(1);
        let csr = files::with_extension(paths.cert, "csr");
        let ca_key = files::with_extension(paths.ca, "key");
        Self {
            commands: vec![
                format!(
                    "openssl req -new -key {} -subj \"/CN={}\" {addext} -out {}",
                    shell(paths.key),
                    subj_escape(&cn),
                    shell(&csr)
                ),
                format!(
                    "openssl x509 -req -in {} -CA {} -CAkey {} -days {days} -extfile <(printf \"{}\") -out {}",
                    shell(&csr),
                    shell(paths.ca),
                    shell(&ca_key),
                    extfile.replace('%', "%%"),
                    shell(paths.cert)
                ),
            ],
        }
    }

    /// Adds the commands to `finding` the first time, a pointer after.
    fn attach(&self, finding: &mut Finding, shown: &mut bool, why: &str) {
        if *shown {
            finding.fix(format!("fix: {why}: the reissue above does it too"));
            return;
        }
        *shown = true;
        finding.fix(format!(
            "fix: {why} (keeps its other names and usages; bash):"
        ));
        for command in &self.commands {
            finding.fix(format!("  {command}"));
        }
    }
}

/// A value for `-subj "/CN=..."`: `/` and `"` escaped.
fn subj_escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('/', "\\/")
        .replace('"', "\\\"")
}

/// A SAN for a certificate that has none, from its CN as meshtls suggests.
fn suggested_san(leaf: &CertView) -> String {
    match leaf.cn.as_deref() {
        Some(cn) if cn.parse::<std::net::IpAddr>().is_ok() => format!("IP:{cn}"),
        Some(cn) if cn.starts_with("spiffe://") => format!("URI:{cn}"),
        Some(cn) if DnsName::try_from(cn).is_ok() && cn.contains('.') => format!("DNS:{cn}"),
        _ => "DNS:your.service.name".to_owned(),
    }
}

/// The extendedKeyUsage a `role` needs, in openssl's words.
fn usage_name(role: Role) -> &'static str {
    match role {
        Role::Server => "serverAuth",
        Role::Client => "clientAuth",
    }
}

/// The SANs and SPIFFE ID, and whether peers can take them as an identity.
fn names(report: &mut Report, leaf: &CertView, role: Role, fixes: &Reissue, shown: &mut bool) {
    if leaf.is_ca || leaf.signs {
        report
            .add(
                Level::Fail,
                "names",
                format!(
                    "it is a CA certificate ({}); a service presents a leaf that a CA issued",
                    if leaf.is_ca {
                        "basicConstraints cA=true"
                    } else {
                        "keyUsage keyCertSign/cRLSign"
                    }
                ),
            )
            .fix("fix: point --cert at the service's own certificate, not its CA's");
        return;
    }
    let names = leaf.names();
    if let Err(e) = &leaf.identity {
        let finding = report.add(
            Level::Fail,
            "names",
            format!("{names}; meshtls peers refuse it: {e}"),
        );
        fixes.attach(
            finding,
            shown,
            "reissue it with one SPIFFE ID (a URI SAN spiffe://TD/PATH) and no other URI",
        );
        return;
    }
    if !leaf.has_san() {
        match role {
            Role::Server => {
                let finding = report.add(
                    Level::Fail,
                    "names",
                    "no subjectAltName: TLS clients match names only against SANs (the CN is ignored), and meshtls refuses to serve it",
                );
                fixes.attach(finding, shown, "reissue it with a SAN");
            }
            Role::Client => {
                let finding = report.add(
                    Level::Warn,
                    "names",
                    "no subjectAltName: a server can admit it only by a cn: rule, which is legacy and off unless allow_legacy_cn()",
                );
                fixes.attach(finding, shown, "better, reissue it with a SAN");
            }
        }
        return;
    }
    report.add(Level::Ok, "names", names);
    if leaf.dns.iter().any(|d| d.contains('*')) {
        report.add(
            Level::Warn,
            "names",
            "a wildcard DNS SAN never satisfies a meshtls allow rule (one certificate would stand for many names)",
        );
    }
    if leaf.dns.iter().any(|d| d.ends_with('.')) {
        report.add(
            Level::Warn,
            "names",
            "a DNS SAN ending with a dot never satisfies a meshtls allow rule; write it without the dot",
        );
    }
}

/// The extendedKeyUsage against what the role needs.
fn key_usage(report: &mut Report, leaf: &CertView, role: Role, fixes: &Reissue, shown: &mut bool) {
    let needed = usage_name(role);
    match &leaf.eku {
        None => {
            report.add(
                Level::Ok,
                "usage",
                "no extendedKeyUsage extension: any use, so serverAuth and clientAuth",
            );
        }
        Some(eku) if leaf.allows(needed) => {
            report.add(
                Level::Ok,
                "usage",
                format!(
                    "extendedKeyUsage {} (a {} needs {needed})",
                    eku.join(", "),
                    role.name()
                ),
            );
        }
        Some(eku) => {
            let has = if eku.is_empty() {
                "nothing".to_owned()
            } else {
                eku.join(", ")
            };
            let finding = report.add(
                Level::Fail,
                "usage",
                format!(
                    "extendedKeyUsage has {has} but not {needed}: a {} refuses it as a {}'s certificate",
                    role.peer(),
                    role.name()
                ),
            );
            fixes.attach(
                finding,
                shown,
                &format!("reissue it with extendedKeyUsage={needed}"),
            );
        }
    }
}

/// The validity window and the time left.
fn dates(report: &mut Report, leaf: &CertView, fixes: &Reissue, shown: &mut bool) {
    let now = crate::text::now();
    let window = validity(leaf.not_before, leaf.not_after, now);
    if now < leaf.not_before {
        report
            .add(
                Level::Fail,
                "validity",
                format!("{window}: peers refuse it until then"),
            )
            .fix("fix: check the clock of the machine that issued it (or of this one), or reissue it");
    } else if now > leaf.not_after {
        let finding = report.add(
            Level::Fail,
            "validity",
            format!("{window}: peers refuse it"),
        );
        fixes.attach(finding, shown, "renew it");
    } else {
        let lifetime = leaf.not_after.saturating_sub(leaf.not_before);
        let remaining = leaf.not_after.saturating_sub(now);
        if remaining.saturating_mul(3) < lifetime {
            report.add(
                Level::Warn,
                "validity",
                format!("{window}: less than a third of its lifetime left; the rotation is due"),
            );
        } else {
            report.add(Level::Ok, "validity", window);
        }
    }
}

/// The key: readable, unencrypted, usable, and the certificate's. Returns
/// it when it is the certificate's key.
fn key(
    report: &mut Report,
    paths: &Paths<'_>,
    chain: Option<&[Vec<u8>]>,
) -> Option<Arc<dyn SigningKey>> {
    let bytes = match files::read(paths.key) {
        Ok(bytes) => bytes,
        Err(e) => {
            report.add(Level::Fail, "key", e.to_string());
            return None;
        }
    };
    let loaded = if files::is_pem(&bytes) {
        private_key(&bytes).map(load_key)
    } else {
        Ok(load_der_key(&bytes).map(|(key, kind, _)| (key, kind)))
    };
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(KeyProblem::Encrypted) => {
            let plain = format!("{}.decrypted", paths.key);
            report
                .add(
                    Level::Fail,
                    "key",
                    format!("the private key in {} is encrypted; meshtls reads unencrypted keys (protected by file permissions)", paths.key),
                )
                .fix(format!(
                    "fix: openssl pkey -in {} -out {} && chmod 600 {}   (then --key {})",
                    shell(paths.key),
                    shell(&plain),
                    shell(&plain),
                    shell(&plain)
                ));
            return None;
        }
        Err(KeyProblem::Missing(found)) => {
            report.add(
                Level::Fail,
                "key",
                format!("{} holds no private key{found}", paths.key),
            );
            return None;
        }
    };
    let (signer, kind) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            report.add(Level::Fail, "key", format!("the key in {}: {e}", paths.key));
            return None;
        }
    };
    let Some(leaf) = chain.and_then(|c| c.first()) else {
        report.add(Level::Info, "key", format!("{}: {kind}", paths.key));
        return None;
    };
    let certified = CertifiedKey::new(vec![CertificateDer::from(leaf.clone())], signer.clone());
    match certified.keys_match() {
        Ok(()) => {
            report.add(
                Level::Ok,
                "key",
                format!("{} ({kind}) matches the certificate", paths.key),
            );
            Some(signer)
        }
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            mismatch(report, paths, &kind);
            None
        }
        // rustls could not read the certificate (an X.509 v1, say):
        // compare the public keys directly.
        Err(_) => match (
            signer.public_key(),
            chain.and_then(|c| c.first()).map(|d| CertView::parse(d)),
        ) {
            (Some(spki), Some(Ok(view))) if spki.as_ref() == view.spki.as_slice() => {
                report.add(
                    Level::Ok,
                    "key",
                    format!(
                        "{} ({kind}) matches the certificate's public key",
                        paths.key
                    ),
                );
                None
            }
            (Some(_), Some(Ok(_))) => {
                mismatch(report, paths, &kind);
                None
            }
            _ => {
                report.add(
                    Level::Warn,
                    "key",
                    format!(
                        "{} ({kind}): cannot tell whether it matches the certificate",
                        paths.key
                    ),
                );
                None
            }
        },
    }
}

/// The finding for a key that belongs to another certificate.
fn mismatch(report: &mut Report, paths: &Paths<'_>, kind: &str) {
    report
        .add(
            Level::Fail,
            "key",
            format!(
                "the key in {} ({kind}) does not match the certificate in {}: it belongs to another certificate (after a rotation, one of the two is stale)",
                paths.key, paths.cert
            ),
        )
        .fix("fix: pair the certificate with the key it was issued for; these two must print the same digest:")
        .fix(format!("  openssl x509 -in {} -noout -pubkey | openssl sha256", shell(paths.cert)))
        .fix(format!("  openssl pkey -in {} -pubout | openssl sha256", shell(paths.key)));
}

/// Why no key could be taken from a PEM file.
enum KeyProblem {
    /// An encrypted key: meshtls needs it decrypted.
    Encrypted,
    /// What the file holds instead, as a note.
    Missing(String),
}

/// The first private key in a PEM file.
fn private_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, KeyProblem> {
    let blocks = files::pem_blocks(bytes);
    for block in &blocks {
        match &block.body {
            Body::EncryptedKey(_) => return Err(KeyProblem::Encrypted),
            Body::Der(SectionKind::PrivateKey, der) => {
                return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.clone())));
            }
            Body::Der(SectionKind::RsaPrivateKey, der) => {
                return Ok(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der.clone())));
            }
            Body::Der(SectionKind::EcPrivateKey, der) => {
                return Ok(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der.clone())));
            }
            _ => {}
        }
    }
    let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
    Err(KeyProblem::Missing(if labels.is_empty() {
        String::new()
    } else {
        format!(" (found: {})", labels.join(", "))
    }))
}

/// The CA certificates of the CA file, parsed (what can be).
fn ca_views(ca: &str) -> Vec<CertView> {
    files::read(ca)
        .and_then(|bytes| files::certificates(ca, &bytes))
        .map(|ders| {
            ders.iter()
                .filter_map(|d| CertView::parse(d).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The peer's verdict on the chain (an in-memory handshake with a meshtls
/// peer trusting the CA and CRL), with the CA it leads to.
fn peer_view(
    report: &mut Report,
    role: Role,
    paths: &Paths<'_>,
    views: &[CertView],
    real_key: bool,
    verdict: &Verdict,
) {
    let cas = ca_views(paths.ca);
    let Some(top) = views.last() else {
        return;
    };
    let anchor = cas
        .iter()
        .find(|ca| ca.subject_der == top.issuer_der)
        .map_or_else(|| top.issuer.clone(), |ca| ca.subject.clone());
    let trusting = match paths.crl {
        Some(crl) => format!("a {} trusting {} with the CRL {crl}", role.peer(), paths.ca),
        None => format!("a {} trusting {}", role.peer(), paths.ca),
    };
    match verdict {
        Verdict::Admitted => {
            report.add(
                Level::Ok,
                "chain",
                format!(
                    "leads to the CA {anchor}: {trusting} completed a handshake with these files"
                ),
            );
        }
        Verdict::ChainAccepted => {
            report.add(
                Level::Ok,
                "chain",
                format!(
                    "leads to the CA {anchor}: {trusting} accepts the chain{}",
                    if real_key {
                        ""
                    } else {
                        " (judged with a stand-in key: the key given cannot be used, see key)"
                    }
                ),
            );
        }
        Verdict::Refused { reason, detail } => {
            let finding = report.add(
                Level::Fail,
                "chain",
                format!("{trusting} refuses it ({reason}): {detail}"),
            );
            chain_fix(finding, *reason, paths, views, &cas);
        }
        Verdict::PeerSetup(e) => {
            report.add(
                Level::Fail,
                "chain",
                format!(
                    "no {} can be set up with the CA and CRL given: {e}",
                    role.peer()
                ),
            );
        }
        Verdict::Inconclusive(e) => {
            report.add(Level::Fail, "chain", format!("could not be judged: {e}"));
        }
    }
}

/// The fix for a chain the peer refused, by meshtls's reason.
fn chain_fix(
    finding: &mut Finding,
    reason: RejectReason,
    paths: &Paths<'_>,
    views: &[CertView],
    cas: &[CertView],
) {
    let Some(top) = views.last() else {
        return;
    };
    match reason {
        RejectReason::BadCertificate if views.iter().any(|v| v.version != 3) => {
            finding.fix("fix: see certificate (an X.509 v1 certificate)");
        }
        RejectReason::UnknownIssuer | RejectReason::BadCertificate => {
            let held: Vec<&str> = cas.iter().map(|c| c.subject.as_str()).collect();
            let same_name = cas.iter().any(|c| c.subject_der == top.issuer_der);
            if same_name {
                finding.fix(format!(
                    "fix: {} holds a CA named {}, but not the one that signed this chain (another key: a CA rotation?); use the current CA's certificate, or reissue from it",
                    paths.ca, top.issuer
                ));
            } else {
                finding.fix(format!(
                    "fix: the chain ends at a certificate issued by {}, which is not in {} (it holds: {}); trust that CA, add the missing intermediate to {}, or reissue from this CA",
                    top.issuer,
                    paths.ca,
                    if held.is_empty() { "nothing readable".to_owned() } else { held.join("; ") },
                    paths.cert
                ));
            }
            finding.fix(format!(
                "check: openssl verify -CAfile {} -untrusted {} {}",
                shell(paths.ca),
                shell(paths.cert),
                shell(paths.cert)
            ));
        }
        RejectReason::Revoked => {
            finding.fix(
                "fix: issue a new certificate (a new serial) and rotate it in; a revoked serial stays revoked",
            );
        }
        RejectReason::RevocationUnknown => {
            finding.fix(format!(
                "fix: {} must hold a current CRL from every CA in the chain (the leaf's issuer is {})",
                paths.crl.unwrap_or("the CRL file"),
                views.first().map_or("", |l| l.issuer.as_str())
            ));
        }
        RejectReason::Expired | RejectReason::NotYetValid => {
            finding.fix("fix: see validity (a certificate in the chain is outside its dates)");
        }
        RejectReason::WrongUsage => {
            finding.fix("fix: see usage");
        }
        RejectReason::NotAWorkloadCertificate => {
            finding.fix("fix: see names");
        }
        _ => {}
    }
}

/// Whether the certificate is revoked, by meshtls's own CRL matching: the
/// CRL file is loaded with the CA file as a peer would load them (each CRL
/// matched to the CA key that signed it; a CRL no CA there signed, a stale
/// or an unreadable one, is refused), and the verdict is the peer's
/// judgment of the chain with them. What the CRL says (dates, entries) is
/// read alongside, only to explain that verdict.
fn revocation(
    report: &mut Report,
    role: Role,
    paths: &Paths<'_>,
    crl: &str,
    leaf: &CertView,
    verdict: &Verdict,
) {
    let now = crate::text::now();
    let e = match probe::load_crls(role, paths.ca, crl) {
        CrlLoad::Accepted => None,
        CrlLoad::Refused(e) => Some(e),
        CrlLoad::NotJudged(why) => {
            report.add(
                Level::Fail,
                "revocation",
                format!("{crl} could not be judged: {why}"),
            );
            return;
        }
    };
    if let Some(e) = e {
        use meshtls::error::MaterialError as M;
        let (text, fix) = match &e {
            meshtls::Error::Material(m @ M::CrlIssuerUnknown { .. }) => (
                format!("{crl} is not the CA's: {m}"),
                format!(
                    "fix: give the CRL that the CA in {} signed (`meshtls mint crl --ca DIR` for a development CA, `openssl ca -gencrl` for an openssl CA)",
                    paths.ca
                ),
            ),
            meshtls::Error::Material(m @ M::CrlExpired { .. }) => (
                m.to_string(),
                "fix: publish a fresh CRL (`meshtls mint crl` for a development CA, `openssl ca -gencrl` for an openssl CA)".to_owned(),
            ),
            other => (
                format!("{crl} cannot be used with {}: {other}", paths.ca),
                "fix: see the message; a peer refuses to start with this CRL".to_owned(),
            ),
        };
        report.add(Level::Fail, "revocation", text).fix(fix);
        return;
    }
    // The CA's CRLs, as the file holds them: for the explanation only.
    let crls: Vec<CrlView> = files::read(crl)
        .map(|bytes| {
            let ders: Vec<Vec<u8>> = if files::is_pem(&bytes) {
                files::pem_blocks(&bytes)
                    .into_iter()
                    .filter_map(|b| match b.body {
                        Body::Der(SectionKind::Crl, der) => Some(der),
                        _ => None,
                    })
                    .collect()
            } else {
                vec![bytes]
            };
            ders.iter().filter_map(|d| CrlView::parse(d).ok()).collect()
        })
        .unwrap_or_default();
    // meshtls accepted every CRL in the file as signed by a CA in the CA
    // file; the leaf's are those of its issuer's name and key identifier.
    let of_issuer = |c: &&CrlView| {
        c.issuer_der == leaf.issuer_der
            && (c.authority_key_id.is_none()
                || leaf.authority_key_id.is_none()
                || c.authority_key_id == leaf.authority_key_id)
    };
    let covering = crls.iter().filter(of_issuer).max_by_key(|c| c.this_update);
    match verdict {
        Verdict::Refused {
            reason: RejectReason::Revoked,
            detail,
        } => {
            let entry = crls
                .iter()
                .filter(of_issuer)
                .find_map(|c| c.entry(&leaf.serial).map(|e| (c, e)));
            let text = match entry {
                Some((c, (_, when, reason))) => format!(
                    "serial {} is revoked by the CRL of {} in {crl}, since {}{}",
                    leaf.serial,
                    c.issuer,
                    rfc3339(*when),
                    reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ),
                None => format!("serial {} is revoked: {detail}", leaf.serial),
            };
            report.add(Level::Fail, "revocation", text);
        }
        Verdict::Refused {
            reason: RejectReason::RevocationUnknown,
            detail,
        } => {
            let issuers: Vec<&str> = crls.iter().map(|c| c.issuer.as_str()).collect();
            report
                .add(
                    Level::Fail,
                    "revocation",
                    format!(
                        "{crl} holds CRLs of {} but none that covers the chain: a peer with this CRL cannot tell whether it is revoked, and refuses it ({detail})",
                        if issuers.is_empty() { "nobody".to_owned() } else { issuers.join("; ") }
                    ),
                )
                .fix(format!(
                    "fix: give the CRL of {} too (concatenated, when peers come from several CAs)",
                    leaf.issuer
                ));
        }
        Verdict::Admitted | Verdict::ChainAccepted => {
            let said = covering.map(|c| {
                let next = match c.next_update {
                    Some(t) => format!("next update {} ({})", rfc3339(t), left(t, now)),
                    None => "no nextUpdate".to_owned(),
                };
                format!(
                    "the CRL of {} in {crl} {}; {next}",
                    c.issuer,
                    match c.revoked.len() {
                        0 => "revokes nothing".to_owned(),
                        n => format!(
                            "revokes {}, not this one",
                            crate::text::count(n, "serial", "serials")
                        ),
                    }
                )
            });
            report.add(
                Level::Ok,
                "revocation",
                format!(
                    "not revoked: {}",
                    said.unwrap_or_else(|| format!("a {} with {crl} admits it", role.peer()))
                ),
            );
        }
        Verdict::Refused { .. } | Verdict::PeerSetup(_) | Verdict::Inconclusive(_) => {
            report.add(
                Level::Info,
                "revocation",
                format!(
                    "not judged: the {} refuses the chain before revocation matters (see chain)",
                    role.peer()
                ),
            );
        }
    }
}

/// Which `--allow` rules admit the certificate, by `Allow::matches`.
fn allow_rules(report: &mut Report, role: Role, rules: &[Allow], leaf: &[u8]) {
    if rules.is_empty() {
        report.add(
            Level::Info,
            "allow",
            match role {
                Role::Server => "no --allow rules given: only the chain is judged (a meshtls client then checks the name it dials, or its expect_server rules)",
                Role::Client => "no --allow rules given: only the chain is judged (a meshtls server admits a client only when one of its allow rules matches)",
            },
        );
        return;
    }
    let peer = match PeerIdentity::from_leaf_der(leaf) {
        Ok(peer) => peer,
        Err(e) => {
            report.add(Level::Fail, "allow", format!("no rule can admit it: {e}"));
            return;
        }
    };
    let mut admitted = false;
    for rule in rules {
        // A cn: rule is judged as a peer built with allow_legacy_cn would
        // (`Allow::matches` judges as a default builder: it admits nobody).
        let is_cn = rule.to_string().starts_with("cn:");
        let admits = if is_cn {
            Policy::with_legacy_cn([rule.clone()]).is_ok_and(|p| p.check(&peer).is_ok())
        } else {
            rule.matches(&peer)
        };
        if admits {
            admitted = true;
            let finding = report.add(Level::Ok, "allow", format!("{rule} admits it"));
            if is_cn {
                finding.fix(format!(
                    "note: a cn: rule works only on a {} built with .dangerous().allow_legacy_cn()",
                    role.peer()
                ));
            }
        } else {
            report.add(Level::Info, "allow", format!("{rule} does not admit it"));
        }
    }
    if !admitted {
        let tried: Vec<String> = rules.iter().map(ToString::to_string).collect();
        let suggestion = match (
            peer.spiffe_id(),
            peer.dns_names().first(),
            peer.common_name(),
        ) {
            (Some(id), _, _) => Some(id.as_str().to_owned()),
            (None, Some(dns), _) if !dns.contains('*') => Some(format!("dns:{dns}")),
            (None, None, Some(cn)) => Some(format!("cn:{cn}")),
            _ => None,
        };
        let finding = report.add(
            Level::Fail,
            "allow",
            format!(
                "none of the {} rules tried admits it (tried: {}); it presents {}",
                rules.len(),
                tried.join(", "),
                describe_peer(&peer)
            ),
        );
        if let Some(suggestion) = suggestion {
            finding.fix(format!(
                "fix: if it should be admitted, a rule that admits it: --allow {}",
                shell(&suggestion)
            ));
        }
    }
}

/// What rules can match: SPIFFE ID, DNS names, CN.
fn describe_peer(peer: &PeerIdentity) -> String {
    let mut parts = Vec::new();
    if let Some(id) = peer.spiffe_id() {
        parts.push(format!("SPIFFE ID {id}"));
    }
    if !peer.dns_names().is_empty() {
        parts.push(format!("DNS {}", peer.dns_names().join(", ")));
    }
    if let Some(cn) = peer.common_name() {
        parts.push(format!("CN {cn}"));
    }
    if parts.is_empty() {
        "no name a rule can match".to_owned()
    } else {
        parts.join("; ")
    }
}

/// meshtls's builder on the files, as a service would load them.
fn build(report: &mut Report, role: Role, paths: &Paths<'_>) {
    let (what, result) = match role {
        Role::Server => {
            let mut builder = ServerTls::builder()
                .identity_files(paths.cert, paths.key)
                .client_roots_file(paths.ca);
            if let Some(crl) = paths.crl {
                builder = builder.crl_file(crl);
            }
            (
                "ServerTls::builder()",
                builder
                    .dangerous()
                    .allow_any_authenticated()
                    .build()
                    .map(drop),
            )
        }
        Role::Client => {
            let mut builder = ClientTls::builder()
                .identity_files(paths.cert, paths.key)
                .server_roots_file(paths.ca);
            if let Some(crl) = paths.crl {
                builder = builder.crl_file(crl);
            }
            ("ClientTls::builder()", builder.build().map(drop))
        }
    };
    match result {
        Ok(()) => {
            report.add(
                Level::Ok,
                "build",
                format!(
                    "{what} accepts these files (identity {} + {}, roots {})",
                    paths.cert, paths.key, paths.ca
                ),
            );
        }
        Err(e) => {
            report.add(Level::Fail, "build", format!("{what} refuses them: {e}"));
        }
    }
}
