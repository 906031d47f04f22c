//! tug's own log (`daemon.log`): one JSON object a line, `ts`, `level`, `msg`, and `service`,
//! `instance`, `revision` (and others) where they apply. `tug logs --daemon` reads it.

use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The line for one event (without its newline).
pub fn line(level: Level, msg: &str, fields: &[(&str, &str)]) -> String {
    let mut object = serde_json::Map::new();
    object.insert("ts".into(), tug_logs::format_time(std::time::SystemTime::now()).into());
    object.insert("level".into(), level.as_str().into());
    object.insert("msg".into(), msg.into());
    for (key, value) in fields {
        object.insert((*key).to_string(), (*value).into());
    }
    serde_json::Value::Object(object).to_string()
}

/// Writes one event to the daemon's log (its standard error), whole.
pub fn event(level: Level, msg: &str, fields: &[(&str, &str)]) {
    let mut text = line(level, msg, fields);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub fn info(msg: &str, fields: &[(&str, &str)]) {
    event(Level::Info, msg, fields);
}

pub fn warn(msg: &str, fields: &[(&str, &str)]) {
    event(Level::Warn, msg, fields);
}

pub fn error(msg: &str, fields: &[(&str, &str)]) {
    event(Level::Error, msg, fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_json_line() {
        let text = line(Level::Warn, "say \"hi\"\nthere", &[("service", "web"), ("instance", "web-1")]);
        assert!(!text.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!((v["level"].as_str(), v["msg"].as_str()), (Some("warn"), Some("say \"hi\"\nthere")));
        assert_eq!((v["service"].as_str(), v["instance"].as_str()), (Some("web"), Some("web-1")));
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
