//! What the example programs share: a small command-line reader (no parser
//! dependency: `--flag value`, repeated flags, `--switch`, positionals), the
//! server and client set up from the same flags, and event logging.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::fmt::Display;
use std::process::ExitCode;

use meshtls::{Allow, ClientTlsBuilder, Event, Ready, ServerTlsBuilder};

/// Parsed arguments.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, Vec<String>>,
    switches: Vec<String>,
    pub positional: Vec<String>,
}

impl Args {
    /// Reads `std::env::args()`; `switches` are the flags that take no value.
    pub fn parse(switches: &[&str]) -> Result<Self, String> {
        Self::from(std::env::args().skip(1), switches)
    }

    pub fn from(args: impl Iterator<Item = String>, switches: &[&str]) -> Result<Self, String> {
        let mut out = Self::default();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            if let Some(flag) = arg.strip_prefix("--") {
                if switches.contains(&flag) {
                    out.switches.push(flag.to_owned());
                } else {
                    let value = args.next().ok_or(format!("--{flag} needs a value"))?;
                    out.values.entry(flag.to_owned()).or_default().push(value);
                }
            } else {
                out.positional.push(arg);
            }
        }
        Ok(out)
    }

    /// A flag that must be there.
    pub fn required(&self, flag: &str) -> Result<String, String> {
        self.optional(flag).ok_or(format!("--{flag} is required"))
    }

    /// A flag that may be there (the last one wins).
    pub fn optional(&self, flag: &str) -> Option<String> {
        self.values.get(flag).and_then(|v| v.last().cloned())
    }

    /// Every value of a repeated flag.
    pub fn all(&self, flag: &str) -> Vec<String> {
        self.values.get(flag).cloned().unwrap_or_default()
    }

    /// Whether a switch was given.
    pub fn switch(&self, flag: &str) -> bool {
        self.switches.iter().any(|s| s == flag)
    }
}

/// Prints `error: ...` and the usage, and fails.
pub fn fail(usage: &str, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}\n\n{usage}");
    ExitCode::FAILURE
}

/// Prints what `run` returned, or `error: ...`, and exits accordingly.
pub fn report(result: Result<impl Display, String>) -> ExitCode {
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A server builder from `--cert --key --client-ca [--crl] [--allow RULE]...
/// [--allow-any-authenticated]` (`cn:` rules turn legacy CN matching on).
pub fn server(args: &Args) -> Result<ServerTlsBuilder<Ready>, String> {
    let mut builder = meshtls::ServerTls::builder()
        .identity_files(args.required("cert")?, args.required("key")?)
        .client_roots_file(args.required("client-ca")?);
    if let Some(crl) = args.optional("crl") {
        builder = builder.crl_file(crl);
    }
    let rules = args.all("allow");
    for rule in &rules {
        builder = builder.allow(rule.parse::<Allow>().map_err(|e| format!("--allow: {e}"))?);
    }
    if args.switch("allow-any-authenticated") {
        builder = builder.dangerous().allow_any_authenticated();
    }
    if rules.iter().any(|r| r.starts_with("cn:")) {
        builder = builder.dangerous().allow_legacy_cn();
    }
    Ok(builder)
}

/// A client builder from `--cert --key --ca [--expect-server RULE]`.
pub fn client(args: &Args) -> Result<ClientTlsBuilder<Ready>, String> {
    let mut builder = meshtls::ClientTls::builder()
        .identity_files(args.required("cert")?, args.required("key")?)
        .server_roots_file(args.required("ca")?);
    if let Some(rule) = args.optional("expect-server") {
        let rule: Allow = rule.parse().map_err(|e| format!("--expect-server: {e}"))?;
        builder = builder.expect_server(rule);
    }
    Ok(builder)
}

/// Logs reloads, refused reloads and refused handshakes to stderr, and
/// expiry as warnings, from a task of its own.
pub fn log_events(mut events: tokio::sync::broadcast::Receiver<Event>) {
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                Event::Reloaded { .. } | Event::ReloadFailed { .. } | Event::Rejected { .. } => {
                    eprintln!("{event}")
                }
                Event::Expiring { .. } | Event::Expired { .. } => eprintln!("warning: {event}"),
                _ => {}
            }
        }
    });
}
