//! Words for times, serials and shell commands.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in seconds since 1970.
pub(crate) fn now() -> i64 {
    unix(SystemTime::now())
}

/// A `SystemTime` in seconds since 1970 (negative before).
pub(crate) fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// RFC 3339 UTC: `2026-11-24T08:06:44Z`.
pub(crate) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// algorithm), on i64 so that no certificate date overflows.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A span of time in two units at most: `9y 364d`, `6d 23h`, `23h 59m`,
/// `59m`, `30s` (a year is 365 days here).
pub(crate) fn span(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d >= 365 {
        return match d % 365 {
            0 => format!("{}y", d / 365),
            rest => format!("{}y {rest}d", d / 365),
        };
    }
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// Where `at` stands from `now`, for an end of validity: `23h 59m left` or
/// `expired 2d 1h ago`.
pub(crate) fn left(at: i64, now: i64) -> String {
    if at >= now {
        format!("{} left", span(at.abs_diff(now)))
    } else {
        format!("expired {} ago", span(at.abs_diff(now)))
    }
}

/// A time relative to now, either way: `in 6d 23h` or `1m ago`.
pub(crate) fn relative(at: i64, now: i64) -> String {
    if at >= now {
        format!("in {}", span(at.abs_diff(now)))
    } else {
        format!("{} ago", span(at.abs_diff(now)))
    }
}

/// A validity window in words: `2026-05-01T10:00:00Z to 2026-05-02T10:00:00Z
/// (23h 59m left)`, or `not valid for another 5m` before it starts.
pub(crate) fn validity(not_before: i64, not_after: i64, now: i64) -> String {
    let state = if now < not_before {
        format!("not valid for another {}", span(not_before.abs_diff(now)))
    } else {
        left(not_after, now)
    };
    format!(
        "{} to {} ({state})",
        rfc3339(not_before),
        rfc3339(not_after)
    )
}

/// Bytes as colon-separated lowercase hex (`01:ab`), as meshtls shows serials.
pub(crate) fn hex_colon(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Text from a file, made safe for one terminal line: control characters
/// escaped, and cut after 200 characters.
pub(crate) fn safe(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    for (i, ch) in text.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

/// A word for a POSIX shell: as is when it is plain, else single-quoted.
pub(crate) fn shell(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// "1 certificate", "2 certificates".
pub(crate) fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_507_604), "2026-11-24T08:06:44Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        let _ = rfc3339(i64::MAX);
        let _ = rfc3339(i64::MIN);
    }

    #[test]
    fn spans() {
        assert_eq!(span(30), "30s");
        assert_eq!(span(59 * 60), "59m");
        assert_eq!(span(23 * 3600 + 59 * 60), "23h 59m");
        assert_eq!(span(7 * 86_400), "7d");
        assert_eq!(span(6 * 86_400 + 23 * 3600), "6d 23h");
        assert_eq!(span(3649 * 86_400), "9y 364d");
        assert_eq!(left(100, 0), "1m left");
        assert_eq!(left(0, 7200), "expired 2h ago");
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell("tls/ca.crt"), "tls/ca.crt");
        assert_eq!(shell("my dir/x"), "'my dir/x'");
        assert_eq!(shell("it's"), r"'it'\''s'");
    }
}
