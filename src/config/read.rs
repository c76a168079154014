//! The reader the section builders share: [`Section`] (typed reads that collect every
//! problem with its dotted path), durations, name similarity, loopback and URL checks.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

use super::ConfigError;

/// `text` as a URL that is https, or plain http on a loopback host; else why not.
pub(crate) fn check_http_url(text: &str, what: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{what} {text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if host_is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{what} {text:?} uses plain http on a non-loopback host; use https (http is only \
             allowed for 127.0.0.1, [::1] and localhost)"
        )),
        other => Err(format!("{what} {text:?} has scheme {other:?}; use https")),
    }
}

pub(super) fn host_is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Parses `90s`, `20m`, `1h30m`, `500ms`, `2d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration like \"90s\", \"20m\" or \"1h30m\""
            ));
        }
        // Both counts are of ASCII bytes, so both splits fall on character boundaries.
        let (number, after) = rest.split_at_checked(digits).unwrap_or((rest, ""));
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at_checked(unit_len).unwrap_or((after, ""));
        rest = after;
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("{text:?}: a unit (ms, s, m, h, d) is required")),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h, d)")),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A table of the merged configuration being read, remembering which keys were used so the
/// rest can be reported as unknown.
pub(crate) struct Section<'a> {
    path: String,
    map: Option<&'a Map<String, Value>>,
    used: Mutex<BTreeSet<String>>,
    errors: &'a Mutex<Vec<ConfigError>>,
}

impl<'a> Section<'a> {
    pub(crate) fn root(map: &'a Map<String, Value>, errors: &'a Mutex<Vec<ConfigError>>) -> Self {
        Self {
            path: String::new(),
            map: Some(map),
            used: Mutex::new(BTreeSet::new()),
            errors,
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn mark(&self, key: &str) {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned());
    }

    pub(crate) fn exists(&self) -> bool {
        self.map.is_some()
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.is_some_and(|m| m.contains_key(key))
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.map
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn error(&self, key: &str, message: impl Into<String>) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ConfigError {
                path: self.child_path(key),
                message: message.into(),
            });
    }

    pub(crate) fn error_here(&self, message: impl Into<String>) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ConfigError {
                path: self.path.clone(),
                message: message.into(),
            });
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.mark(key);
        self.map.and_then(|m| m.get(key))
    }

    /// A sub-table (absent tables read as empty; a non-table value is an error).
    pub(crate) fn section(&self, key: &str) -> Section<'a> {
        let map = match self.get(key) {
            Some(Value::Object(m)) => Some(m),
            Some(Value::Null) | None => None,
            Some(other) => {
                self.error(key, format!("must be a table, found {}", kind(other)));
                None
            }
        };
        Section {
            path: self.child_path(key),
            map,
            used: Mutex::new(BTreeSet::new()),
            errors: self.errors,
        }
    }

    /// Reports keys that were never read.
    pub(crate) fn finish(&self) {
        let Some(map) = self.map else { return };
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let known: Vec<&String> = used.iter().collect();
        for key in map.keys() {
            if !used.contains(key) {
                let hint = known
                    .iter()
                    .find(|k| similar(k, key))
                    .map(|k| format!(" (did you mean {k:?}?)"))
                    .unwrap_or_default();
                self.error(key, format!("unknown setting{hint}"));
            }
        }
    }

    pub(crate) fn opt_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Null => None,
            other => {
                self.error(key, format!("must be a string, found {}", kind(other)));
                None
            }
        }
    }

    pub(crate) fn required_str(&self, key: &str) -> Option<String> {
        let present = self.has(key);
        let value = self.opt_str(key);
        if value.is_none() && !present {
            self.error(key, "required");
        }
        value.filter(|v| {
            if v.trim().is_empty() {
                self.error(key, "must not be empty");
                false
            } else {
                true
            }
        })
    }

    pub(crate) fn str_or(&self, key: &str, default: &str) -> String {
        self.opt_str(key).unwrap_or_else(|| default.to_owned())
    }

    /// A list of strings, given as a TOML array or a comma-separated string (environment).
    pub(crate) fn str_list(&self, key: &str) -> Option<Vec<String>> {
        match self.get(key)? {
            Value::String(s) => Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        Value::Number(n) => out.push(n.to_string()),
                        other => {
                            self.error(key, format!("must list strings, found {}", kind(other)));
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    key,
                    format!("must be a list of strings, found {}", kind(other)),
                );
                None
            }
        }
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(other) => {
                self.error(key, format!("must be true or false, found {}", kind(other)));
                default
            }
        }
    }

    pub(crate) fn u64_in(&self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let value = match self.get(key) {
            None | Some(Value::Null) => return default,
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().replace('_', "").parse().ok(),
            Some(_) => None,
        };
        match value {
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.error(key, format!("{v} is out of range {min}..={max}"));
                default
            }
            None => {
                self.error(key, "must be a whole number");
                default
            }
        }
    }

    pub(crate) fn f64_in(&self, key: &str, default: f64, min: f64, max: f64) -> f64 {
        let value = match self.get(key) {
            None | Some(Value::Null) => return default,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        match value {
            Some(v) if v >= min && v <= max => v,
            Some(v) => {
                self.error(key, format!("{v} is out of range {min}..={max}"));
                default
            }
            None => {
                self.error(key, "must be a number");
                default
            }
        }
    }

    pub(crate) fn duration_in(
        &self,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let parsed = match self.get(key) {
            None | Some(Value::Null) => return default,
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Duration::from_secs)
                .ok_or_else(|| "must be a whole number of seconds or a duration".to_owned()),
            Some(Value::String(s)) => parse_duration(s),
            Some(other) => Err(format!(
                "must be a duration like \"90s\" or \"20m\", found {}",
                kind(other)
            )),
        };
        match parsed {
            Ok(d) if d >= min && d <= max => d,
            Ok(d) => {
                self.error(
                    key,
                    format!(
                        "{} is out of range {}..={}",
                        fmt_duration(d),
                        fmt_duration(min),
                        fmt_duration(max)
                    ),
                );
                default
            }
            Err(msg) => {
                self.error(key, msg);
                default
            }
        }
    }

    pub(crate) fn socket_addr_or(
        &self,
        key: &str,
        default: &str,
        allow_non_loopback: bool,
    ) -> Option<SocketAddr> {
        let text = self.opt_str(key).unwrap_or_else(|| default.to_owned());
        let addr: SocketAddr = match text.parse() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    key,
                    format!("{text:?} is not an address like \"127.0.0.1:8900\" or \"[::1]:8900\""),
                );
                return None;
            }
        };
        if !allow_non_loopback && !is_loopback(addr.ip()) {
            self.error(
                key,
                format!(
                    "{addr} is not a loopback address. credbroker hands AWS credentials to anyone \
                     who can reach it, so it binds loopback only; set allow_non_loopback = true in \
                     the same section to bind {addr} anyway"
                ),
            );
            return None;
        }
        Some(addr)
    }
}

/// Whether an address only accepts connections from this host.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// Whether two keys differ by at most two edits (for "did you mean").
pub(super) fn similar(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    // Levenshtein distance, one row at a time: `row[j]` is the distance between the prefix of
    // `a` read so far and `b[..j]`.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for ((cb, diag), up) in b.iter().zip(&prev).zip(prev.iter().skip(1)) {
            let left = cur.last().copied().unwrap_or(usize::MAX);
            cur.push((diag + usize::from(ca != cb)).min(up + 1).min(left + 1));
        }
        prev = cur;
    }
    prev.last().is_some_and(|d| *d <= 2)
}
