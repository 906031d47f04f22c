//! RFC 3339 times in UTC, written and read without a calendar library.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of a formatted time: `2026-11-22T10:04:05.123456Z`.
pub(crate) const TIME_LEN: usize = 27;

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z, in seconds from the epoch: the times a four-digit
/// year can write. Times outside are written as these bounds, which keeps the width fixed.
const MIN_SECS: i64 = -62_167_219_200;
const MAX_SECS: i64 = 253_402_300_799;

/// `t` as RFC 3339 in UTC with microseconds, e.g. `2026-11-22T10:04:05.123456Z` (always 27 bytes;
/// sub-microsecond digits are dropped, not rounded, so a time never moves into the next second).
pub fn format_time(t: SystemTime) -> String {
    time_bytes(t).iter().map(|&b| char::from(b)).collect()
}

/// [`format_time`] without allocating, for the writer's hot path.
pub(crate) fn time_bytes(t: SystemTime) -> [u8; TIME_LEN] {
    let (secs, micros) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_micros()),
        Err(before) => {
            // Before the epoch: round toward the past, as for later times.
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).map_or(i64::MIN, |s| -s);
            match d.subsec_nanos() {
                0 => (secs, 0),
                nanos => (secs.saturating_sub(1), (1_000_000_000 - nanos) / 1000),
            }
        }
    };
    let (secs, micros) = if secs < MIN_SECS {
        (MIN_SECS, 0)
    } else if secs > MAX_SECS {
        (MAX_SECS, 999_999)
    } else {
        (secs, micros)
    };
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], of_day / 3600);
    put_digits(&mut out[14..16], of_day % 3600 / 60);
    put_digits(&mut out[17..19], of_day % 60);
    put_digits(&mut out[20..26], i64::from(micros));
    out
}

/// Writes `value` (not negative) in decimal, zero-padded to the slot's width.
fn put_digits(slot: &mut [u8], mut value: i64) {
    for digit in slot.iter_mut().rev() {
        *digit = b'0' + u8::try_from(value % 10).unwrap_or(0);
        value /= 10;
    }
}

/// (year, month, day) of a day counted from 1970-01-01 in the proleptic Gregorian calendar: Howard
/// Hinnant's `civil_from_days`, which counts in 400-year eras starting on March 1st so that leap
/// days fall at the end of a year.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    (era * 400 + year_of_era + i64::from(month <= 2), month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses an RFC 3339 time: `2026-11-22T10:04:05Z`, with any number of decimals and a `Z` or a
/// `±hh:mm` offset (`T` and `Z` may be lowercase, and `T` a space, as RFC 3339 allows). Digits past
/// nanoseconds are ignored; a leap second (`:60`) counts as the next second. `None` if `s` is not
/// such a time or names a day that does not exist.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let number = |at: usize, len: usize| -> Option<i64> {
        let digits = b.get(at..at + len)?;
        digits.iter().try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
    };
    let byte = |at: usize, want: u8| (b.get(at) == Some(&want)).then_some(());

    let year = number(0, 4)?;
    byte(4, b'-')?;
    let month = number(5, 2)?;
    byte(7, b'-')?;
    let day = number(8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = number(11, 2)?;
    byte(13, b':')?;
    let minute = number(14, 2)?;
    byte(16, b':')?;
    let second = number(17, 2)?;

    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while let Some(&d) = b.get(at).filter(|d| d.is_ascii_digit()) {
            if at - start < 9 {
                nanos = nanos * 10 + u32::from(d - b'0');
            }
            at += 1;
        }
        match at - start {
            0 => return None,
            digits => (digits..9).for_each(|_| nanos *= 10),
        }
    }
    let offset = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let (hours, minutes) = (number(at + 1, 2)?, number(at + 4, 2)?);
            byte(at + 3, b':')?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            at += 6;
            let offset = hours * 3600 + minutes * 60;
            if sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    if at != b.len()
        || !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let whole = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    whole?.checked_add(Duration::from_nanos(u64::from(nanos)))
}

const SINCE_FORMS: &str = "expected an RFC 3339 time such as 2026-11-22T10:04:05Z, \
                           or how long ago such as 10s, 5m, 2h, 1h30m or 1d";

/// The start of `tug logs --since`: an RFC 3339 time (see [`parse_time`]), or how long before `now`
/// as numbers with units `s`, `m`, `h` and `d`, one or several (`10s`, `5m`, `2h`, `1h30m`, `1d`).
/// The error names the input and says what was expected.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let input = s.trim();
    if input.is_empty() {
        return Err(format!("no time given: {SINCE_FORMS}"));
    }
    // A duration is digits and unit letters only; a time always has '-' and ':'.
    if input.starts_with(|c: char| c.is_ascii_digit()) && input.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let ago = parse_ago(input).map_err(|why| format!("invalid time {s:?}: {why}"))?;
        // Logs cannot be older than 1970: further back means everything.
        return Ok(now.checked_sub(ago).map_or(UNIX_EPOCH, |t| t.max(UNIX_EPOCH)));
    }
    parse_time(input).ok_or_else(|| format!("invalid time {s:?}: {SINCE_FORMS}"))
}

/// `1h30m` and the like, as a duration.
fn parse_ago(s: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        let mut chars = after.chars();
        let (unit, unit_secs) = match chars.next() {
            _ if number.is_empty() => return Err(format!("expected a number before {after:?}")),
            None => return Err(format!("missing unit after {number} (use s, m, h or d)")),
            Some(unit @ 's') => (unit, 1),
            Some(unit @ 'm') => (unit, 60),
            Some(unit @ 'h') => (unit, 3600),
            Some(unit @ 'd') => (unit, 86_400),
            Some(unit) => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
        };
        let secs = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_secs))
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("{number}{unit} is too large"))?;
        total = secs;
        rest = chars.as_str();
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn formats_known_times() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_time(at(1_795_341_845, 123_456)), "2026-11-22T10:04:05.123456Z");
        assert_eq!(format_time(at(951_782_400, 1)), "2000-02-29T00:00:00.000001Z");
        assert_eq!(format_time(at(1_709_251_199, 999_999)), "2024-02-29T23:59:59.999999Z");
        assert_eq!(format_time(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000000Z");
        // Nanoseconds are truncated, never rounded into the next second.
        assert_eq!(format_time(UNIX_EPOCH + Duration::new(59, 999_999_999)), "1970-01-01T00:00:59.999999Z");
        // Before the epoch, and the clamped ends.
        assert_eq!(format_time(UNIX_EPOCH - Duration::from_nanos(1)), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format_time(UNIX_EPOCH - Duration::from_secs(86_400)), "1969-12-31T00:00:00.000000Z");
        assert_eq!(format_time(at(u64::MAX / 4, 0)), "9999-12-31T23:59:59.999999Z");
        assert_eq!(format_time(UNIX_EPOCH - Duration::from_secs(70_000_000_000)), "0000-01-01T00:00:00.000000Z");
    }

    #[test]
    fn round_trips() {
        // Every 7777.7 seconds over 60 years, leap days included, and microseconds kept.
        let mut t = UNIX_EPOCH - Duration::from_secs(10 * 365 * 86_400);
        for _ in 0..250_000 {
            let s = format_time(t);
            assert_eq!(s.len(), TIME_LEN);
            let back = parse_time(&s).unwrap_or_else(|| panic!("{s} does not parse"));
            assert_eq!(format_time(back), s);
            let diff = t.duration_since(back).unwrap_or_else(|e| panic!("{s} parsed later: {e:?}"));
            assert!(diff < Duration::from_micros(1), "{s}");
            t += Duration::new(7777, 700_000_321);
        }
    }

    #[test]
    fn lexical_order_is_time_order() {
        let times = [at(0, 0), at(0, 1), at(9, 999_999), at(10, 0), at(1_795_341_845, 0), at(4_107_542_400, 0)];
        for pair in times.windows(2) {
            assert!(format_time(pair[0]) < format_time(pair[1]));
        }
    }

    #[test]
    fn parses_rfc3339_forms() {
        let t = at(1_795_341_845, 0);
        assert_eq!(parse_time("2026-11-22T10:04:05Z"), Some(t));
        assert_eq!(parse_time("2026-11-22t10:04:05z"), Some(t));
        assert_eq!(parse_time("2026-11-22 10:04:05Z"), Some(t));
        assert_eq!(parse_time("2026-11-22T11:34:05+01:30"), Some(t));
        assert_eq!(parse_time("2026-11-22T05:04:05-05:00"), Some(t));
        assert_eq!(parse_time("2026-11-22T10:04:05.5Z"), Some(t + Duration::from_millis(500)));
        assert_eq!(parse_time("2026-11-22T10:04:05.123456789123Z"), Some(t + Duration::from_nanos(123_456_789)));
        assert_eq!(parse_time("2026-11-22T10:04:60Z"), Some(t + Duration::from_secs(55)));
        assert_eq!(parse_time("1969-12-31T23:59:59.5Z"), Some(UNIX_EPOCH - Duration::from_millis(500)));
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Some(at(1_709_164_800, 0)));
    }

    #[test]
    fn rejects_what_is_not_a_time() {
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T10:04:05",
            "2026-11-22T10:04:05.Z",
            "2026-11-22T10:04Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T10:60:00Z",
            "2026-11-22T10:04:05+1:00",
            "2026-11-22T10:04:05+24:00",
            "2026-11-22T10:04:05Z ",
            "2026-11-22X10:04:05Z",
            "+026-11-22T10:04:05Z",
            "2026-11-22T10:04:05.1234567Zextra",
            "２０２６-11-22T10:04:05Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn since_takes_times_and_durations_ago() {
        let now = at(1_795_341_845, 0);
        let ago = |secs| Ok(now - Duration::from_secs(secs));
        assert_eq!(parse_since("10s", now), ago(10));
        assert_eq!(parse_since("5m", now), ago(300));
        assert_eq!(parse_since("2h", now), ago(7200));
        assert_eq!(parse_since("1h30m", now), ago(5400));
        assert_eq!(parse_since("1d", now), ago(86_400));
        assert_eq!(parse_since("1d2h3m4s", now), ago(93_784));
        assert_eq!(parse_since(" 0s ", now), ago(0));
        assert_eq!(parse_since("999999999999d", now), Ok(UNIX_EPOCH));
        assert_eq!(parse_since("2026-11-22T09:00:00Z", now), ago(3845));
    }

    #[test]
    fn since_errors_name_the_input() {
        let now = at(1_795_341_845, 0);
        let error = |s: &str| parse_since(s, now).expect_err(s);
        assert_eq!(error(""), format!("no time given: {SINCE_FORMS}"));
        assert_eq!(error("10"), r#"invalid time "10": missing unit after 10 (use s, m, h or d)"#);
        assert_eq!(error("10x"), r#"invalid time "10x": unknown unit 'x' (use s, m, h or d)"#);
        assert_eq!(error("1hm"), r#"invalid time "1hm": expected a number before "m""#);
        assert_eq!(error("5M"), r#"invalid time "5M": unknown unit 'M' (use s, m, h or d)"#);
        assert_eq!(
            error("99999999999999999999s"),
            r#"invalid time "99999999999999999999s": 99999999999999999999s is too large"#
        );
        assert_eq!(
            error("1d999999999999999999h"),
            r#"invalid time "1d999999999999999999h": 999999999999999999h is too large"#
        );
        assert_eq!(error("yesterday"), format!("invalid time \"yesterday\": {SINCE_FORMS}"));
        assert_eq!(error("2026-11-31T00:00:00Z"), format!("invalid time \"2026-11-31T00:00:00Z\": {SINCE_FORMS}"));
        assert_eq!(error("-5m"), format!("invalid time \"-5m\": {SINCE_FORMS}"));
    }
}
