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
    /// Reads `std::env::args()`: `flags` take a value, `switches` do not.
    /// Anything else starting with `--` is refused (a typo such as `--clr`
    /// must not start a server without revocation checking).
    pub fn parse(flags: &[&str], switches: &[&str]) -> Result<Self, String> {
        Self::from(std::env::args().skip(1), flags, switches)
    }

    pub fn from(
        args: impl Iterator<Item = String>,
        flags: &[&str],
        switches: &[&str],
    ) -> Result<Self, String> {
        let mut out = Self::default();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            if let Some(flag) = arg.strip_prefix("--") {
                if switches.contains(&flag) {
                    out.switches.push(flag.to_owned());
                } else if flags.contains(&flag) {
                    let value = args
                        .next_if(|v| !v.starts_with("--"))
                        .ok_or(format!("--{flag} needs a value"))?;
                    out.values.entry(flag.to_owned()).or_default().push(value);
                } else {
                    let known = flags.iter().chain(switches);
                    let near = known.min_by_key(|k| distance(k, flag));
                    return Err(match near {
                        Some(near) if distance(near, flag) <= 2 => {
                            format!("unknown flag --{flag} (did you mean --{near}?)")
                        }
                        _ => format!("unknown flag --{flag}"),
                    });
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

/// The flags [`server`] reads.
pub const SERVER_FLAGS: [&str; 5] = ["cert", "key", "client-ca", "crl", "allow"];
/// The flags [`client`] reads.
pub const CLIENT_FLAGS: [&str; 4] = ["cert", "key", "ca", "expect-server"];

/// Edit distance (insertions, deletions, substitutions, transpositions of
/// neighbours), for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between the first i chars of a and the first j of b.
    let mut d: Vec<Vec<usize>> = (0..=a.len())
        .map(|i| (0..=b.len()).map(|j| if i == 0 { j } else { i }).collect())
        .collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
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
/// [--allow-any-authenticated] [--keep-live-connections]` (`cn:` rules turn
/// legacy CN matching on).
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
    if args.switch("keep-live-connections") {
        builder = builder.keep_live_connections();
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

/// Logs reloads, refused reloads, refused handshakes and closed live
/// connections to stderr, and expiry as warnings, from a task of its own. A
/// subscriber that falls behind loses the oldest events: that is said, and
/// logging goes on.
pub fn log_events(mut events: tokio::sync::broadcast::Receiver<Event>) {
    use tokio::sync::broadcast::error::RecvError;
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(
                    event @ (Event::Reloaded { .. }
                    | Event::ReloadFailed { .. }
                    | Event::Rejected { .. }
                    | Event::ConnectionClosed { .. }),
                ) => eprintln!("{event}"),
                Ok(event @ (Event::Expiring { .. } | Event::Expired { .. })) => {
                    eprintln!("warning: {event}")
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    eprintln!("warning: {missed} events missed (logging fell behind)")
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Why a call failed, in one line: meshtls's typed refusal when there is
/// one in the chain (whoever refused), else the error and its sources.
pub fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(refused) = meshtls::refused(e) {
        return format!("refused: {refused}");
    }
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
