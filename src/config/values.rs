//! How one configuration value is read, whichever layer it comes from: durations (text, or
//! a number of seconds), unsigned numbers, lists and the engine kind. The environment hands
//! every value over as text (so that an all-digit secret stays text), so each reader here
//! takes text as well as the TOML type, and refuses a bad value in plain words ("must not
//! be negative; got -1"). The loader (`super`) prefixes the key and where the value came
//! from; nothing here knows either.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// What a duration looks like, for messages.
const DURATION: &str = "a duration such as \"250ms\" or \"10s\", or a number of seconds";

/// A duration written as `"250ms"`, `"10s"`, `"5m"`, or a number of seconds (`10`, `1.5`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Written back as text (`"1m 30s"`, `"250ms"`), which [`HumanDuration`] reads again.
impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

/// Seconds as a float, which may carry a fraction; NaN, negative and endless are refused.
fn seconds(s: f64) -> Result<HumanDuration, String> {
    if s.is_nan() {
        return Err(format!("expected {DURATION}; got NaN"));
    }
    if s < 0.0 {
        return Err(format!("must not be negative; got {s}"));
    }
    Duration::try_from_secs_f64(s)
        .map(HumanDuration)
        .map_err(|_| format!("is too long; got {s}"))
}

struct DurationVisitor;

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DURATION)
    }

    fn visit_u64<E: de::Error>(self, s: u64) -> Result<HumanDuration, E> {
        Ok(HumanDuration(Duration::from_secs(s)))
    }

    fn visit_i64<E: de::Error>(self, s: i64) -> Result<HumanDuration, E> {
        match u64::try_from(s) {
            Ok(s) => self.visit_u64(s),
            Err(_) => Err(E::custom(format!("must not be negative; got {s}"))),
        }
    }

    fn visit_f64<E: de::Error>(self, s: f64) -> Result<HumanDuration, E> {
        seconds(s).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<HumanDuration, E> {
        let t = text.trim();
        // From the environment a number of seconds arrives as text.
        if let Ok(s) = t.parse::<f64>() {
            return self.visit_f64(s);
        }
        if t.starts_with('-') {
            return Err(E::custom(format!("must not be negative; got {text:?}")));
        }
        humantime::parse_duration(t)
            .map(HumanDuration)
            .map_err(|_| E::custom(format!("expected {DURATION}; got {text:?}")))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

/// The unsigned integer types of the settings, with their bound for messages.
pub(super) trait Unsigned: TryFrom<u64> {
    /// The largest value the type holds.
    const MAX: u64;
}

impl Unsigned for u32 {
    const MAX: u64 = u32::MAX as u64;
}

impl Unsigned for usize {
    const MAX: u64 = usize::MAX as u64;
}

struct UnsignedVisitor<T>(PhantomData<T>);

impl<T: Unsigned> UnsignedVisitor<T> {
    fn too_big<E: de::Error>(got: impl fmt::Display) -> E {
        E::custom(format!("must be at most {}; got {got}", T::MAX))
    }
}

impl<'de, T: Unsigned> Visitor<'de> for UnsignedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number, 0 or more")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        T::try_from(n).map_err(|_| Self::too_big(n))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::custom(format!("must not be negative; got {n}"))),
        }
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
        Err(E::custom(format!("expected a whole number; got {n}")))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        let t = text.trim();
        if let Ok(n) = t.parse::<u64>() {
            return self.visit_u64(n);
        }
        match t.parse::<i128>() {
            Ok(n) if n < 0 => Err(E::custom(format!("must not be negative; got {t}"))),
            Ok(_) => Err(Self::too_big(t)),
            Err(_) if t.parse::<f64>().is_ok() => {
                Err(E::custom(format!("expected a whole number; got {t}")))
            }
            Err(_) => Err(E::custom(format!("expected a whole number; got {text:?}"))),
        }
    }
}

/// An unsigned number: a TOML integer, or text holding one (from the environment).
pub(super) fn unsigned<'de, D: Deserializer<'de>, T: Unsigned>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(UnsignedVisitor(PhantomData))
}

/// [`unsigned`] for a key that may be left out.
pub(super) fn unsigned_opt<'de, D: Deserializer<'de>, T: Unsigned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    unsigned(d).map(Some)
}

/// What a list looks like, for messages.
const LIST: &str = "a list of strings: [\"a\", \"b\"] (a TOML or JSON array) or a,b";

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(LIST)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut out = Vec::new();
        while let Some(s) = seq.next_element::<String>()? {
            out.push(s);
        }
        Ok(out)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
        let t = text.trim();
        // `KEYS='["a", "b"]'` is an array, not one entry spelt with brackets and quotes
        // (which, as an origin, would refuse every browser).
        if t.starts_with('[') {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct One {
                list: Vec<String>,
            }
            return toml::from_str::<One>(&format!("list = {t}"))
                .map(|one| one.list)
                .map_err(|_| E::custom(format!("expected {LIST}; got {text:?}")));
        }
        // Comma separated; `a,b,` or an empty value leave no empty entry.
        Ok(t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    }
}

/// A list of strings: a TOML array, or (from the environment) an array written the TOML or
/// JSON way, or comma separated text.
pub(super) fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(ListVisitor)
}

/// Which engine implementation runs behind the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In-process: one node alone.
    Memory,
    /// Redis shared by every node of a cluster.
    Redis,
    /// A Redis Cluster (sharded pub/sub) shared by every node of a cluster.
    #[serde(rename = "redis_cluster")]
    RedisCluster,
}

impl<'de> Deserialize<'de> for EngineKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "memory" => Ok(EngineKind::Memory),
            "redis" => Ok(EngineKind::Redis),
            "redis_cluster" => Ok(EngineKind::RedisCluster),
            _ => Err(de::Error::custom(format!(
                "expected \"memory\", \"redis\" or \"redis_cluster\"; got {text:?}"
            ))),
        }
    }
}

/// Whether an `allowed_origins` entry can ever equal a browser's `Origin` header:
/// `scheme://host[:port]`, without path, query, user or trailing slash.
pub(super) fn is_origin(entry: &str) -> bool {
    let Some((scheme, rest)) = entry.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let (host, port) = match rest.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(v6) => match v6.split_once(']') {
            Some((addr, after)) if !addr.is_empty() => (addr, after.strip_prefix(':')),
            _ => return false,
        },
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let host_ok = !host.is_empty()
        && !host
            .chars()
            .any(|c| c.is_whitespace() || "/?#@[]\"'".contains(c));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let after_v6_ok = !rest.starts_with('[') || port.is_some() || rest.ends_with(']');
    scheme_ok && host_ok && port_ok && after_v6_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        for ok in [
            "http://a",
            "https://example.com",
            "http://127.0.0.1:8080",
            "http://[::1]",
            "https://[::1]:8443",
            "chrome-extension://abcdef",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "",
            "[\"http://a\"]",
            "http://a/",
            "http://a/path",
            "example.com",
            "http://",
            "http://a:port",
            "http://a:0",
            "http://a:70000",
            "http://u@a",
            "http://[::1]x",
            "http://a?q",
            "1http://a",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
