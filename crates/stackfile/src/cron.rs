//! Cron schedules (`backup.schedule`): five fields, minute hour day-of-month month day-of-week,
//! each `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, or a list of those; month and day
//! names (`jan`, `mon`) and the shorthands `@hourly`, `@daily`, `@weekly`, `@monthly`,
//! `@yearly`. When both days are restricted, either matching is enough (as Vixie cron does).
//! Times are UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
    text: String,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other if other.starts_with('@') => return Err(format!("`{other}` is not a cron shorthand")),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "a schedule has five fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        };
        let weekdays = field(weekday, "day of week", 0, 7, &WEEKDAYS, 0)?;
        // 7 is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        Ok(Schedule {
            minutes: field(minute, "minute", 0, 59, &[], 0)?,
            hours: field(hour, "hour", 0, 23, &[], 0)?,
            days: field(day, "day of month", 1, 31, &[], 0)?,
            months: field(month, "month", 1, 12, &MONTHS, 1)?,
            weekdays,
            any_day: day == "*",
            any_weekday: weekday == "*",
            text: text.trim().to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first minute strictly after `after` that the schedule names.
    pub fn next_after(&self, after: SystemTime) -> SystemTime {
        let secs = after.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut minute = secs / 60 + 1;
        // Every schedule names a minute within eight years (29 February included).
        let limit = minute + 8 * 366 * 24 * 60;
        while minute < limit {
            let day = minute / (24 * 60);
            let (_, month, day_of_month) = civil_from_days(day as i64);
            let weekday = (day + 4) % 7; // 1970-01-01 was a Thursday.
            let day_ok = {
                let by_date = bit(self.days, day_of_month as u64);
                let by_weekday = bit(self.weekdays, weekday);
                match (self.any_day, self.any_weekday) {
                    (true, true) => true,
                    (true, false) => by_weekday,
                    (false, true) => by_date,
                    (false, false) => by_date || by_weekday,
                }
            };
            if !bit(self.months, month as u64) || !day_ok {
                minute = (day + 1) * 24 * 60;
                continue;
            }
            let hour = (minute / 60) % 24;
            if !bit(self.hours, hour) {
                minute = (minute / 60 + 1) * 60;
                continue;
            }
            if bit(self.minutes, minute % 60) {
                return UNIX_EPOCH + Duration::from_secs(minute * 60);
            }
            minute += 1;
        }
        // Unreachable for a parsed schedule (every field names at least one value, and some
        // day of some month exists); a far future rather than a panic.
        UNIX_EPOCH + Duration::from_secs(limit * 60)
    }
}

fn bit(set: u64, value: u64) -> bool {
    set & (1 << value) != 0
}

/// One field as a bit set. `names` are accepted for the values from `first_name` on.
fn field(text: &str, what: &str, min: u64, max: u64, names: &[&str], first_name: u64) -> Result<u64, String> {
    let value = |v: &str| -> Result<u64, String> {
        let lower = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(first_name + i as u64);
        }
        let n: u64 = v.parse().map_err(|_| format!("`{v}` is not a {what}"))?;
        if n < min || n > max {
            return Err(format!("{what} {n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u64 = step.parse().map_err(|_| format!("`{step}` is not a step in `{part}`"))?;
                if step == 0 {
                    return Err(format!("a step of 0 in `{part}` names nothing"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(format!("the range `{range}` runs backwards"));
        }
        set |= (low..=high).step_by(step as usize).fold(0, |acc, v| acc | (1 << v));
    }
    Ok(set)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        tug_time(text)
    }

    /// `YYYY-MM-DDTHH:MM` UTC.
    fn tug_time(text: &str) -> SystemTime {
        let (date, time) = text.split_once('T').unwrap();
        let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
        let t: Vec<u64> = time.split(':').map(|p| p.parse().unwrap()).collect();
        let mut days = 0i64;
        while civil_from_days(days) != (d[0], d[1] as u32, d[2] as u32) {
            days += 1;
        }
        UNIX_EPOCH + Duration::from_secs(days as u64 * 86_400 + t[0] * 3600 + t[1] * 60)
    }

    fn next(schedule: &str, after: &str) -> SystemTime {
        Schedule::parse(schedule).unwrap().next_after(at(after))
    }

    #[test]
    fn the_next_run_of_common_schedules() {
        assert_eq!(next("0 3 * * *", "2026-12-07T01:10"), at("2026-12-07T03:00"));
        assert_eq!(next("0 3 * * *", "2026-12-07T03:00"), at("2026-12-08T03:00"), "strictly after");
        assert_eq!(next("*/15 * * * *", "2026-12-07T01:10"), at("2026-12-07T01:15"));
        assert_eq!(next("@hourly", "2026-12-31T23:30"), at("2027-01-01T00:00"));
        assert_eq!(next("30 2 * * mon", "2026-12-07T03:00"), at("2026-12-14T02:30"), "7 Dec 2026 is a Monday");
        assert_eq!(next("0 0 29 feb *", "2026-03-01T00:00"), at("2028-02-29T00:00"));
        assert_eq!(next("0 12 1,15 * *", "2026-12-02T00:00"), at("2026-12-15T12:00"));
        assert_eq!(next("0 0 * * 7", "2026-12-07T00:00"), at("2026-12-13T00:00"), "7 is Sunday");
        // Both days restricted: either one.
        assert_eq!(next("0 0 13 * fri", "2026-12-01T00:00"), at("2026-12-04T00:00"));
        assert_eq!(next("0 9-17/4 * * *", "2026-12-07T10:00"), at("2026-12-07T13:00"));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (text, says) in [
            ("0 3 * *", "five fields"),
            ("60 * * * *", "minute 60 is outside 0-59"),
            ("* 24 * * *", "hour 24"),
            ("* * 0 * *", "day of month 0"),
            ("* * * 13 *", "month 13"),
            ("*/0 * * * *", "step of 0"),
            ("5-1 * * * *", "runs backwards"),
            ("x * * * *", "`x` is not a minute"),
            ("@sometimes", "not a cron shorthand"),
        ] {
            let error = Schedule::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
