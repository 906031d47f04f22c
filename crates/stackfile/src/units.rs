//! Typed scalar units of the stack file: durations, percentages, sizes, signals.

use std::fmt;
use std::time::Duration;

/// Parses `100ms`, `2s`, `1m30s`, `1h`, `1.5s`, `250us`. A bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("an empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("`{text}` is not a duration"));
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| format!("`{text}` is not a duration"))?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(format!("`{text}` has a number without a unit")),
            _ => {
                return Err(format!("`{text}` is not a duration: units are ns, us, ms, s, m, h, d"));
            }
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(format!("`{text}` is too long a duration"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration in the stack file's own syntax, the shortest exact form.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos.is_multiple_of(1_000_000_000) {
        let mut secs = (nanos / 1_000_000_000) as u64;
        let mut out = String::new();
        for (unit, size) in [("h", 3600), ("m", 60)] {
            if secs >= size {
                out.push_str(&format!("{}{unit}", secs / size));
                secs %= size;
            }
        }
        if secs > 0 {
            out.push_str(&format!("{secs}s"));
        }
        return out;
    }
    if nanos.is_multiple_of(1_000_000) {
        return format!("{}ms", nanos / 1_000_000);
    }
    if nanos.is_multiple_of(1_000) {
        return format!("{}us", nanos / 1_000);
    }
    format!("{nanos}ns")
}

/// A percentage, kept as written (`0.1%` is 0.1).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl Percent {
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Parses `70%` or `0.1%`, between 0% and 100%.
pub fn parse_percent(text: &str) -> Result<Percent, String> {
    let text = text.trim();
    let Some(number) = text.strip_suffix('%') else {
        return Err(format!("`{text}` is not a percentage (write it with `%`, such as `70%`)"));
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100.0).contains(&v) => Ok(Percent(v)),
        Ok(_) => Err(format!("`{text}` is not between 0% and 100%")),
        Err(_) => Err(format!("`{text}` is not a percentage")),
    }
}

/// A size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Parses `512Mi`, `1Gi`, `10M`, `100KB`, `4096`, and compose's `512m` / `1g` (binary).
pub fn parse_size(text: &str) -> Result<Size, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a size"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "b" | "B" => 1,
        "k" | "K" | "KB" | "kB" => 1000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "Gi" | "GiB" => 1 << 30,
        "T" | "TB" => 1_000_000_000_000,
        "Ti" | "TiB" => 1 << 40,
        // Docker Compose's lowercase units are binary.
        "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!("`{other}` in `{text}` is not a size unit (use Ki, Mi, Gi, K, M, G)"));
        }
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(Size(bytes.round() as u64))
}

/// The signals a service may ask to be stopped with (Linux numbering).
pub const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGWINCH", 28),
    ("SIGPWR", 30),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub name: &'static str,
    pub number: i32,
}

impl Signal {
    pub const TERM: Signal = Signal { name: "SIGTERM", number: 15 };
}

/// Parses `SIGTERM`, `TERM`, `sigterm` or a number from [`SIGNALS`].
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let wanted = if upper.starts_with("SIG") { upper.clone() } else { format!("SIG{upper}") };
    SIGNALS
        .iter()
        .find(|(name, number)| *name == wanted || upper.parse::<i32>().ok() == Some(*number))
        .map(|&(name, number)| Signal { name, number })
        .ok_or_else(|| format!("`{text}` is not a signal tug can send"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, ms) in [("100ms", 100), ("2s", 2000), ("1m30s", 90_000), ("1h", 3_600_000), ("1.5s", 1500), ("0", 0)]
        {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_millis(ms), "{text}");
        }
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        for bad in ["", "10", "s", "5x", "1m30", "-1s", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn durations_format_back() {
        for text in ["100ms", "2s", "1m30s", "1h", "250us", "0s", "1h1m1s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn percents() {
        assert_eq!(parse_percent("0.1%").unwrap(), Percent(0.1));
        assert_eq!(parse_percent("70%").unwrap().fraction(), 0.7);
        for bad in ["70", "101%", "-1%", "x%", "%"] {
            assert!(parse_percent(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512Mi").unwrap(), Size(512 << 20));
        assert_eq!(parse_size("1G").unwrap(), Size(1_000_000_000));
        assert_eq!(parse_size("512m").unwrap(), Size(512 << 20));
        assert_eq!(parse_size("4096").unwrap(), Size(4096));
        assert_eq!(Size(512 << 20).to_string(), "512Mi");
        for bad in ["", "Mi", "12 parsecs", "1e400Gi"] {
            assert!(parse_size(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::TERM);
        assert_eq!(parse_signal("term").unwrap(), Signal::TERM);
        assert_eq!(parse_signal("2").unwrap().name, "SIGINT");
        assert!(parse_signal("SIGFOO").is_err());
    }
}
