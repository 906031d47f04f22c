//! The demo's knobs: durations, failure rates, sizes, and the configuration read from the environment.

use std::time::Duration;

/// Parses `100ms`, `2s`, `1m30s`, `1h`, `1.5s`, `250us`: the stack file's own syntax, so the
/// same text works in `environment:` and in a query.
pub use tug_stackfile::units::parse_duration;

/// A share of requests, in parts per million.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate(u32);

const MILLION: u64 = 1_000_000;

impl Rate {
    pub const NEVER: Rate = Rate(0);

    #[cfg(test)]
    pub fn ppm(self) -> u32 {
        self.0
    }

    /// Whether request number `n` (counted from 0) fails. Failures are spread evenly and exactly: of any
    /// `k` consecutive requests, `k × rate` fail when that is a whole number (30 of every 100 at 0.3, 3 of
    /// every 10), and the first request fails whenever the rate is above zero.
    pub fn fails(self, n: u64) -> bool {
        let (n, p) = (u128::from(n), u128::from(self.0));
        let ceil = |x: u128| (x * p).div_ceil(u128::from(MILLION));
        ceil(n + 1) > ceil(n)
    }
}

/// Parses a share of requests: `0.3`, `30%`, `0`, `1`, `100%`, `0.1%`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(number) => (number.trim(), 100.0),
        None => (text, 1.0),
    };
    let valid = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match number.parse::<f64>() {
        Ok(v) if valid && (0.0..=scale).contains(&v) => Ok(Rate((v / scale * MILLION as f64).round() as u32)),
        _ => Err(format!("`{text}` is not a rate: write a share between 0 and 1 (0.3) or a percentage (30%)")),
    }
}

/// Parses a byte count: `1000`, `64Ki`, `10Mi`, `1Gi`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(format!("`{text}` is not a size: a number of bytes, or with Ki, Mi, Gi")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n <= 1 << 40)
        .ok_or_else(|| format!("`{text}` is not a size (at most 1Ti)"))
}

/// Everything the demo reads from its environment.
#[derive(Clone, Debug)]
pub struct Config {
    pub service: String,
    pub instance: String,
    pub revision: String,
    pub version: String,
    pub message: String,
    pub delay: Duration,
    pub fail: Rate,
    pub ready_after: Duration,
    pub exit_after: Option<Duration>,
    pub access_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_lookup(|_| None).expect("the defaults are valid")
    }
}

impl Config {
    /// Reads the configuration with `get` (the process environment in `main`); an empty value is unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let get = |name: &str| get(name).filter(|v| !v.is_empty());
        let duration = |name: &str| -> Result<Option<Duration>, String> {
            get(name).map(|v| parse_duration(&v).map_err(|e| format!("{name}: {e}"))).transpose()
        };
        let service = get("TUG_SERVICE").unwrap_or_else(|| "demo".into());
        let fail = match get("DEMO_FAIL_RATE") {
            Some(v) => parse_rate(&v).map_err(|e| format!("DEMO_FAIL_RATE: {e}"))?,
            None => Rate::NEVER,
        };
        let access_log = match get("DEMO_ACCESS_LOG").as_deref() {
            None | Some("0" | "false" | "no" | "off") => false,
            Some("1" | "true" | "yes" | "on") => true,
            Some(other) => return Err(format!("DEMO_ACCESS_LOG: `{other}` is not 1 or 0")),
        };
        Ok(Config {
            instance: get("TUG_INSTANCE").unwrap_or_else(|| service.clone()),
            service,
            revision: get("TUG_REVISION").unwrap_or_default(),
            version: get("VERSION").unwrap_or_else(|| "1".into()),
            message: get("DEMO_MESSAGE").unwrap_or_default(),
            delay: duration("DEMO_DELAY")?.unwrap_or_default(),
            fail,
            ready_after: duration("DEMO_READY_AFTER")?.unwrap_or_default(),
            exit_after: duration("DEMO_EXIT_AFTER")?,
            access_log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, us) in [
            ("50ms", 50_000),
            ("2s", 2_000_000),
            ("1m30s", 90_000_000),
            ("1.5s", 1_500_000),
            ("250us", 250),
            ("0", 0),
            (" 1h ", 3_600_000_000),
        ] {
            assert_eq!(parse_duration(text), Ok(Duration::from_micros(us)), "{text}");
        }
        for bad in ["", "10", "s", "5x", "1m30", "-1s", "1e3s", "..s", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn rates() {
        for (text, ppm) in
            [("0.3", 300_000), ("30%", 300_000), ("0", 0), ("1", 1_000_000), ("100%", 1_000_000), ("0.1%", 1000)]
        {
            assert_eq!(parse_rate(text).map(Rate::ppm), Ok(ppm), "{text}");
        }
        for bad in ["", "%", "1.5", "101%", "-0.1", "abc", "0.3x", "inf", "NaN", "1e-1"] {
            assert!(parse_rate(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn the_fail_pattern_is_exact_in_every_window() {
        let rate = parse_rate("0.3").unwrap();
        let fails: Vec<u64> = (0..10).filter(|&n| rate.fails(n)).collect();
        assert_eq!(fails, [0, 3, 6]);
        for start in [0, 1, 17, 99, 1_000_003, u64::MAX - 200] {
            assert_eq!((start..start + 100).filter(|&n| rate.fails(n)).count(), 30, "from {start}");
            assert_eq!((start..start + 10).filter(|&n| rate.fails(n)).count(), 3, "from {start}");
        }
        for (text, per_100) in [("0", 0), ("1", 100), ("1%", 1), ("50%", 50), ("0.99", 99), ("0.07", 7)] {
            let rate = parse_rate(text).unwrap();
            assert_eq!((0..100).filter(|&n| rate.fails(n)).count(), per_100, "{text}");
            assert_eq!((500..600).filter(|&n| rate.fails(n)).count(), per_100, "{text}");
        }
        assert!(parse_rate("0.1%").unwrap().fails(0), "the first request fails at any rate above zero");
        assert_eq!((0..1000).filter(|&n| parse_rate("0.1%").unwrap().fails(n)).count(), 1);
    }

    #[test]
    fn sizes() {
        for (text, n) in [("0", 0), ("1000", 1000), ("64Ki", 65536), ("10Mi", 10 << 20), ("1Gi", 1 << 30)] {
            assert_eq!(parse_size(text), Ok(n), "{text}");
        }
        for bad in ["", "x", "10k", "-1", "1Ti", "99999999999999999999", "2048Gi"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn config_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let c = Config::from_lookup(env(&[])).unwrap();
        assert_eq!((c.service.as_str(), c.instance.as_str(), c.version.as_str()), ("demo", "demo", "1"));
        assert_eq!((c.delay, c.fail, c.exit_after, c.access_log), (Duration::ZERO, Rate::NEVER, None, false));
        let c = Config::from_lookup(env(&[
            ("TUG_SERVICE", "web"),
            ("TUG_INSTANCE", "web-2"),
            ("TUG_REVISION", "r3"),
            ("VERSION", "2"),
            ("DEMO_MESSAGE", "hi"),
            ("DEMO_DELAY", "50ms"),
            ("DEMO_FAIL_RATE", "30%"),
            ("DEMO_READY_AFTER", "1s"),
            ("DEMO_EXIT_AFTER", "1m"),
            ("DEMO_ACCESS_LOG", "1"),
        ]))
        .unwrap();
        assert_eq!((c.service.as_str(), c.instance.as_str(), c.revision.as_str()), ("web", "web-2", "r3"));
        assert_eq!((c.version.as_str(), c.message.as_str()), ("2", "hi"));
        assert_eq!(
            (c.delay, c.fail.ppm(), c.ready_after),
            (Duration::from_millis(50), 300_000, Duration::from_secs(1))
        );
        assert_eq!((c.exit_after, c.access_log), (Some(Duration::from_secs(60)), true));
        let err = Config::from_lookup(env(&[("DEMO_DELAY", "50")])).unwrap_err();
        assert!(err.starts_with("DEMO_DELAY: "), "{err}");
        assert!(Config::from_lookup(env(&[("DEMO_FAIL_RATE", "2")])).is_err());
        assert!(Config::from_lookup(env(&[("DEMO_ACCESS_LOG", "maybe")])).is_err());
        assert_eq!(Config::from_lookup(env(&[("DEMO_DELAY", "")])).unwrap().delay, Duration::ZERO);
    }
}
