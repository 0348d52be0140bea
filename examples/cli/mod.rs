//! A small command-line reader shared by the example programs (no parser
//! dependency): `--flag value`, repeated flags, `--switch`, positionals.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::process::ExitCode;

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
