//! Reading and writing timestamps as text, the way SQLite stores them.
//!
//! Written form (canonical): fixed-width UTC with microseconds,
//! `2025-03-01T12:34:56.123456Z`, so that text order is time order.
//!
//! Read form (lenient, for databases written by the legacy service):
//! `YYYY-MM-DD`, then `T`, `t` or a space, then `HH:MM:SS`, an optional
//! fraction of 1 to 9 digits (rounded to the nearest microsecond), and an
//! optional zone: `Z`, `z`, `±HH:MM` or `±HHMM`. No zone means UTC. Anything
//! else (numbers, impossible dates, other zone forms, empty text) is refused.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, SubsecRound, Utc};

/// Length of the canonical form, `2025-03-01T12:34:56.123456Z`.
pub const CANONICAL_LEN: usize = 27;

/// Parses a timestamp in any accepted form (see the module docs).
///
/// ```
/// use interview_store::timestamp::{format, parse};
/// let t = parse("2025-03-01 14:34:56.1234567+02:00").unwrap();
/// assert_eq!(format(t), "2025-03-01T12:34:56.123457Z");
/// assert!(parse("1740832496").is_err());
/// ```
pub fn parse(s: &str) -> Result<DateTime<Utc>, String> {
    parse_bytes(s.as_bytes()).ok_or_else(|| {
        format!(
            "invalid timestamp {:?}: expected ISO-8601 like 2025-03-01T12:34:56.123456Z",
            shorten(s, 40)
        )
    })
}

/// Formats a timestamp in the canonical form (microseconds, UTC, `Z`).
pub fn format(t: DateTime<Utc>) -> String {
    let mut s = String::with_capacity(CANONICAL_LEN);
    s.push_str(&t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    s
}

/// Truncates a timestamp to whole microseconds, the precision both backends keep.
pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// The current time at the precision both backends keep.
pub fn now() -> DateTime<Utc> {
    to_micros(Utc::now())
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut n = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    Some(n)
}

pub(crate) fn parse_bytes(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        digits(&b[0..4])? as i32,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    )?;
    let (h, m, sec) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if sec > 59 {
        // Leap seconds are not representable in PostgreSQL's TIMESTAMPTZ either.
        return None;
    }
    let time = NaiveTime::from_hms_opt(h, m, sec)?;
    let mut rest = &b[19..];

    let mut nanos: i64 = 0;
    if let Some((&b'.', frac)) = rest.split_first() {
        let len = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&len) {
            return None;
        }
        let mut n = i64::from(digits(&frac[..len])?);
        for _ in len..9 {
            n *= 10;
        }
        nanos = n;
        rest = &frac[len..];
    }
    // Round half up to the microsecond; a carry into the next second is fine.
    let micros = (nanos + 500) / 1000;

    let offset_secs: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), hh1, hh2, b':', mm1, mm2]
        | [sign @ (b'+' | b'-'), hh1, hh2, mm1, mm2] => {
            let hh = digits(&[*hh1, *hh2])?;
            let mm = digits(&[*mm1, *mm2])?;
            if hh > 23 || mm > 59 {
                return None;
            }
            let secs = i64::from(hh * 3600 + mm * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };

    let local = NaiveDateTime::new(date, time) + Duration::microseconds(micros);
    Some((local - Duration::seconds(offset_secs)).and_utc())
}

/// Shortens a value for an error message, keeping it on one line.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Shows stored bytes that are not valid UTF-8 for an error message: quoted,
/// printable ASCII as is, everything else as `\xNN`, at most `max` bytes.
pub(crate) fn escape_bytes(b: &[u8], max: usize) -> String {
    let mut out = String::from("\"");
    out.extend(
        b.iter()
            .take(max)
            .flat_map(|c| std::ascii::escape_default(*c))
            .map(char::from),
    );
    out.push('"');
    if b.len() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        format(parse(s).unwrap())
    }

    #[test]
    fn accepts_legacy_forms_and_writes_canonical() {
        assert_eq!(canon("2025-03-01T12:34:56Z"), "2025-03-01T12:34:56.000000Z");
        assert_eq!(canon("2025-03-01 12:34:56"), "2025-03-01T12:34:56.000000Z");
        assert_eq!(canon("2025-03-01t12:34:56z"), "2025-03-01T12:34:56.000000Z");
        assert_eq!(
            canon("2025-03-01T12:34:56.5"),
            "2025-03-01T12:34:56.500000Z"
        );
        assert_eq!(
            canon("2025-03-01T12:34:56.123456789Z"),
            "2025-03-01T12:34:56.123457Z"
        );
        assert_eq!(
            canon("2025-03-01T12:34:56.1234564Z"),
            "2025-03-01T12:34:56.123456Z"
        );
        assert_eq!(
            canon("2025-12-31T23:59:59.9999996Z"),
            "2026-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            canon("2025-03-01T14:34:56+02:00"),
            "2025-03-01T12:34:56.000000Z"
        );
        assert_eq!(
            canon("2025-03-01T10:04:56-0230"),
            "2025-03-01T12:34:56.000000Z"
        );
        assert_eq!(
            canon("2025-03-01T12:34:56.123456Z"),
            "2025-03-01T12:34:56.123456Z"
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "1740832496",
            "2025-02-30T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-03-01T24:00:00Z",
            "2025-03-01T12:34:60Z",
            "2025-03-01",
            "2025-03-01T12:34",
            "2025-03-01T12:34:56.Z",
            "2025-03-01T12:34:56.1234567890Z",
            "2025-03-01T12:34:56 UTC",
            "2025-03-01T12:34:56+02",
            "2025-03-01T12:34:56+0200x",
            "2025-03-01X12:34:56Z",
            "01/03/2025 12:34:56",
            "２０２５-03-01T12:34:56Z",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("invalid timestamp"), "{bad}: {err}");
        }
    }

    #[test]
    fn canonical_text_order_is_time_order() {
        let a = format(parse("2025-03-01T12:34:56.9Z").unwrap());
        let b = format(parse("2025-03-01T12:34:57Z").unwrap());
        assert_eq!(a.len(), CANONICAL_LEN);
        assert!(a < b);
    }
}
