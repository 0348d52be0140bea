//! A small command-line reader: `--flag value` (or `--flag=value`),
//! repeatable flags, `--switch`, positionals. Anything it was not told about
//! is refused, with the nearest known flag when there is one: a typo such as
//! `--clr` must never quietly drop a CRL from a check.

use std::ffi::OsString;

use crate::Failure;

/// What one command accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    /// Flags that take a value, once.
    pub(crate) once: &'static [&'static str],
    /// Flags that take a value and may be repeated.
    pub(crate) repeated: &'static [&'static str],
    /// Flags without a value.
    pub(crate) switches: &'static [&'static str],
    /// How many positional arguments the command takes.
    pub(crate) positionals: usize,
}

impl Spec {
    /// Whether `flag` takes a value.
    fn takes_value(&self, flag: &str) -> bool {
        self.once.contains(&flag) || self.repeated.contains(&flag)
    }

    /// Every flag and switch, for "did you mean".
    fn known(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.once
            .iter()
            .chain(self.repeated)
            .chain(self.switches)
            .copied()
    }
}

/// A parsed command line.
#[derive(Debug, Default)]
pub(crate) struct Args {
    /// The flags with values, in order.
    values: Vec<(&'static str, String)>,
    /// The switches given.
    switches: Vec<&'static str>,
    /// The arguments that are not flags, in order.
    pub(crate) positional: Vec<String>,
    /// `-h` or `--help` was given.
    pub(crate) help: bool,
}

/// The process's arguments after the program name, as UTF-8: a non-UTF-8
/// argument is a usage error (never a panic).
pub(crate) fn from_env() -> Result<Vec<String>, Failure> {
    std::env::args_os().skip(1).map(utf8).collect()
}

/// One argument as UTF-8, or the usage error.
fn utf8(arg: OsString) -> Result<String, Failure> {
    arg.into_string().map_err(|raw| {
        Failure::Usage(format!(
            "the argument {} is not valid UTF-8",
            raw.to_string_lossy()
        ))
    })
}

impl Args {
    /// Reads `args` by `spec`.
    pub(crate) fn parse(args: &[String], spec: &Spec) -> Result<Self, Failure> {
        let mut out = Self::default();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            if arg == "-h" || arg == "--help" {
                out.help = true;
                continue;
            }
            let Some(body) = flag_body(arg) else {
                if out.positional.len() == spec.positionals {
                    return Err(Failure::Usage(format!("unexpected argument {arg:?}")));
                }
                out.positional.push(arg.clone());
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            // `-out` is refused too, pointing at `--out`: one spelling only.
            let known = spec.known().find(|k| *k == name);
            let Some(flag) = known.filter(|_| arg.starts_with("--")) else {
                return Err(Failure::Usage(unknown_flag(arg, name, spec)));
            };
            if !spec.takes_value(flag) {
                if inline.is_some() {
                    return Err(Failure::Usage(format!("--{flag} takes no value")));
                }
                out.switches.push(flag);
                continue;
            }
            let value = match inline {
                Some(value) => value.to_owned(),
                None => match rest.next() {
                    Some(value) if flag_body(value).is_none() => value.clone(),
                    _ => return Err(Failure::Usage(format!("--{flag} needs a value"))),
                },
            };
            if spec.once.contains(&flag) && out.values.iter().any(|(f, _)| *f == flag) {
                return Err(Failure::Usage(format!(
                    "--{flag} is given twice; it takes one value"
                )));
            }
            out.values.push((flag, value));
        }
        Ok(out)
    }

    /// A flag that must be there.
    pub(crate) fn required(&self, flag: &str) -> Result<&str, Failure> {
        self.optional(flag)
            .ok_or_else(|| Failure::Usage(format!("--{flag} is required")))
    }

    /// A flag that may be there.
    pub(crate) fn optional(&self, flag: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable flag, in order.
    pub(crate) fn all(&self, flag: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a switch was given.
    pub(crate) fn switch(&self, flag: &str) -> bool {
        self.switches.contains(&flag)
    }
}

/// The name part of something that looks like a flag (`--out`, `-out`), or
/// `None` for a value or positional (`-` alone, `-5`, `tls.crt`).
fn flag_body(arg: &str) -> Option<&str> {
    if let Some(body) = arg.strip_prefix("--") {
        return Some(body);
    }
    let body = arg.strip_prefix('-')?;
    body.starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some(body)
}

/// The error for a flag `spec` does not know, with the nearest known one.
fn unknown_flag(arg: &str, name: &str, spec: &Spec) -> String {
    let nearest = spec
        .known()
        .map(|known| (edit_distance(known, name), known))
        .min();
    match nearest {
        // A single dash for a known flag: say how it is spelled.
        Some((0, known)) => format!("unknown flag {arg} (did you mean --{known}?)"),
        Some((d, known)) if d <= 2 && d < name.chars().count() => {
            format!("unknown flag {arg} (did you mean --{known}?)")
        }
        _ => format!("unknown flag {arg}"),
    }
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of two neighbours each cost one (`clr` is one from `crl`).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for swaps), one back, and the current one.
    let mut two_back: Vec<usize> = vec![0; b.len() + 1];
    let mut one_back: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let substitution = one_back[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitution.min(one_back[j] + 1).min(row[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(two_back[j - 2] + 1);
            }
            row[j] = best;
        }
        two_back = std::mem::replace(&mut one_back, row);
    }
    one_back[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        once: &["cert", "crl", "out"],
        repeated: &["allow"],
        switches: &["server"],
        positionals: 1,
    };

    fn parse(args: &[&str]) -> Result<Args, String> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        Args::parse(&args, &SPEC).map_err(|e| e.to_string())
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("crl", "clr"), 1);
        assert_eq!(edit_distance("crl", "crl"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn reads_flags_switches_and_positionals() -> Result<(), String> {
        let args = parse(&[
            "file",
            "--cert",
            "a",
            "--allow=x",
            "--allow",
            "y",
            "--server",
        ])?;
        assert_eq!(args.optional("cert"), Some("a"));
        assert_eq!(args.all("allow"), ["x", "y"]);
        assert!(args.switch("server"));
        assert_eq!(args.positional, ["file"]);
        Ok(())
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let typo = parse(&["--clr", "x"]).err().unwrap_or_default();
        assert!(
            typo.contains("unknown flag --clr (did you mean --crl?)"),
            "{typo}"
        );
        let dash = parse(&["-out", "x"]).err().unwrap_or_default();
        assert!(dash.contains("did you mean --out?"), "{dash}");
        let far = parse(&["--verbose"]).err().unwrap_or_default();
        assert_eq!(far, "unknown flag --verbose");
        let missing = parse(&["--cert", "--server"]).err().unwrap_or_default();
        assert!(missing.contains("--cert needs a value"), "{missing}");
        let end = parse(&["--cert"]).err().unwrap_or_default();
        assert!(end.contains("--cert needs a value"), "{end}");
        let twice = parse(&["--out", "a", "--out", "b"])
            .err()
            .unwrap_or_default();
        assert!(twice.contains("given twice"), "{twice}");
        let extra = parse(&["a", "b"]).err().unwrap_or_default();
        assert!(extra.contains("unexpected argument"), "{extra}");
        let valued = parse(&["--server=yes"]).err().unwrap_or_default();
        assert!(valued.contains("takes no value"), "{valued}");
    }
}
