//! `meshtls`: the command-line companion of the meshtls crate.
//!
//! - `meshtls mint ca|leaf|crl`: a development CA, the certificates it
//!   signs and its CRLs (development only: keys are written unencrypted).
//! - `meshtls check`: whether a service would serve with a certificate, key,
//!   CA and CRL, judged by meshtls itself, one finding per line with the fix
//!   (the exact openssl command where there is one) for each problem.
//! - `meshtls inspect`: what a PEM, DER or PKCS#12 file holds.
//!
//! Exit status: 0 done (for `check`: the files would be served), 1 failed
//! (for `check`: they would not), 2 a usage error.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod args;
mod check;
mod files;
mod inspect;
mod mint;
mod probe;
mod text;
mod x509;

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

/// Why a command did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command line is wrong: exit 2, with the usage.
    Usage(String),
    /// A flag's value is wrong (a fix is in the message): exit 2, no usage.
    BadValue(String),
    /// The command ran and failed, or `check` found problems: exit 1.
    Failed(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::BadValue(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

/// What a command prints on success, and how it exits.
pub(crate) struct Done {
    /// Printed to stdout.
    pub(crate) output: String,
    /// `false`: exit 1 after printing (a `check` that found problems).
    pub(crate) ok: bool,
}

impl Done {
    /// Success with this output.
    pub(crate) fn ok(output: String) -> Self {
        Self { output, ok: true }
    }
}

/// The usage of one command, or of all (`None`).
pub(crate) fn usage(topic: Option<&str>) -> String {
    const MINT_CA: &str = "  meshtls mint ca   --out DIR [--name NAME]
      a development CA: writes DIR/ca.crt and DIR/ca.key (never over an existing CA)";
    const MINT_LEAF: &str =
        "  meshtls mint leaf --ca DIR --out DIR2 [--spiffe ID] [--dns NAME]... [--cn NAME]
                    [--server] [--client] [--hours N] [--force]
      a certificate the CA in DIR signs: writes DIR2/tls.crt (chain) and DIR2/tls.key
      (readable by its owner only; existing files are replaced only with --force);
      both usages without --server/--client; subject CN = the first name unless --cn;
      valid for N hours (default 24)";
    const MINT_CRL: &str =
        "  meshtls mint crl  --ca DIR [--revoke CERTFILE]... --out FILE [--hours N]
      a CRL the CA in DIR signs, revoking those certificates (none: an empty CRL);
      next update in N hours (default 168)";
    const CHECK: &str =
        "  meshtls check --cert F --key F --ca F [--crl F] [--as server|client] [--allow RULE]...
      whether a service would serve with these files (as a server by default): chain to
      the CA, names, usage, key, expiry, revocation, which rules admit it, and the fixes;
      exit 0 if it would, 1 if not";
    const INSPECT: &str = "  meshtls inspect FILE [--password P]
      what a PEM, DER or PKCS#12 file holds (PKCS#12 password: empty by default)";
    const RULES: &str =
        "RULE: spiffe://TD/PATH, spiffe://TD/ns/*/sa/NAME, spiffe://TD/ns/NS/**, spiffe://TD/**,
      dns:NAME, dns:*.SUFFIX, cn:NAME (legacy)";
    let body = match topic {
        Some("mint ca") => MINT_CA.to_owned(),
        Some("mint leaf") => MINT_LEAF.to_owned(),
        Some("mint crl") => MINT_CRL.to_owned(),
        Some("mint") => format!("{MINT_CA}\n{MINT_LEAF}\n{MINT_CRL}"),
        Some("check") => format!("{CHECK}\n\n{RULES}"),
        Some("inspect") => INSPECT.to_owned(),
        _ => format!(
            "{MINT_CA}\n{MINT_LEAF}\n{MINT_CRL}\n{CHECK}\n{INSPECT}\n\n{RULES}\n\nmint is for development: its keys are written unencrypted."
        ),
    };
    format!("usage:\n{body}")
}

/// The commands, for "did you mean".
const COMMANDS: [&str; 3] = ["mint", "check", "inspect"];
/// What `mint` makes, for "did you mean".
const MINT_KINDS: [&str; 3] = ["ca", "leaf", "crl"];

/// Tags a failure with the usage topic to print with it.
fn with_topic(topic: &str) -> impl FnOnce(Failure) -> (Failure, Option<String>) {
    let topic = topic.to_owned();
    move |e| (e, Some(topic))
}

/// Runs the command line; `Err` carries the failure and the usage topic.
fn run(argv: &[String]) -> Result<Done, (Failure, Option<String>)> {
    let Some(command) = argv.first() else {
        return Err((
            Failure::Usage("say what to do: mint, check or inspect".into()),
            None,
        ));
    };
    let rest = &argv[1..];
    match command.as_str() {
        "-h" | "--help" | "help" => Ok(Done::ok(usage(rest.first().map(String::as_str)))),
        "-V" | "--version" | "version" => {
            Ok(Done::ok(format!("meshtls {}", env!("CARGO_PKG_VERSION"))))
        }
        "mint" => {
            let Some(kind) = rest.first() else {
                return Err((
                    Failure::Usage("say what to mint: ca, leaf or crl".into()),
                    Some("mint".into()),
                ));
            };
            let topic = format!("mint {kind}");
            let args = &rest[1..];
            match kind.as_str() {
                "ca" => mint::ca(args).map_err(with_topic(&topic)),
                "leaf" => mint::leaf(args).map_err(with_topic(&topic)),
                "crl" => mint::crl(args).map_err(with_topic(&topic)),
                "-h" | "--help" | "help" => Ok(Done::ok(usage(Some("mint")))),
                other => Err((
                    Failure::Usage(unknown("mint", other, &MINT_KINDS)),
                    Some("mint".into()),
                )),
            }
        }
        "check" => check::run(rest).map_err(with_topic("check")),
        "inspect" => inspect::run(rest).map_err(with_topic("inspect")),
        other => Err((Failure::Usage(unknown("command", other, &COMMANDS)), None)),
    }
}

/// The error for an unknown command, with the nearest known one.
fn unknown(what: &str, given: &str, known: &[&str]) -> String {
    let near = known
        .iter()
        .map(|k| (args::edit_distance(k, given), *k))
        .min()
        .filter(|(d, _)| *d <= 2);
    match near {
        Some((_, k)) => format!("unknown {what} {given:?} (did you mean {k}?)"),
        None => format!(
            "unknown {what} {given:?}; it is one of: {}",
            known.join(", ")
        ),
    }
}

/// `error: ...` on stderr (a closed stderr is ignored, never a panic).
fn say_error(text: &str) {
    let _ = writeln!(std::io::stderr(), "error: {text}");
}

fn main() -> ExitCode {
    let result = args::from_env()
        .map_err(|e| (e, None))
        .and_then(|argv| run(&argv));
    match result {
        Ok(done) => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{}", done.output.trim_end());
            if done.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err((Failure::Usage(e), topic)) => {
            say_error(&format!("{e}\n\n{}", usage(topic.as_deref())));
            ExitCode::from(2)
        }
        Err((Failure::BadValue(e), _)) => {
            say_error(&e);
            ExitCode::from(2)
        }
        Err((Failure::Failed(e), _)) => {
            say_error(&e);
            ExitCode::FAILURE
        }
    }
}
