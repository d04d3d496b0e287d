//! Where a log lives, as the command line names it (`--log`).
//!
//! ```text
//! embedded                      the embedded log in the data directory (the default)
//! fluvio://HOST:PORT/TOPIC      a topic on a Fluvio cluster, reached at its SC's public address
//! ```
//!
//! The Fluvio form names the endpoint explicitly, so no Fluvio profile file is needed. `HOST`
//! is a name, an IPv4 address or a bracketed IPv6 address; `TOPIC` follows Fluvio's rule for
//! topic names (lowercase letters, digits and `-`, starting and ending with a letter or digit).

use std::fmt;
use std::str::FromStr;

/// The scheme of a Fluvio location.
const FLUVIO_SCHEME: &str = "fluvio://";
/// The name of the embedded log, the default.
const EMBEDDED: &str = "embedded";
/// Fluvio refuses longer topic names (`FLUVIO_MAX_SIZE_TOPIC_NAME`).
const TOPIC_NAME_BYTES_MAX: usize = 63;

/// Where the log lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogLocation {
    /// The embedded log under the data directory.
    #[default]
    Embedded,
    /// A topic on a Fluvio cluster.
    Fluvio(FluvioLocation),
}

/// A topic on a Fluvio cluster: the SC's public endpoint and the topic's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluvioLocation {
    /// `HOST:PORT` of the SC's public server (9003 on a default cluster).
    pub endpoint: String,
    pub topic: String,
}

/// Why a `--log` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogLocationError {
    #[error(
        "unknown log location {0:?}: expected `embedded` or `fluvio://HOST:PORT/TOPIC` \
         (e.g. fluvio://127.0.0.1:9003/donations)"
    )]
    UnknownScheme(String),
    #[error("{0:?} names no topic: expected fluvio://HOST:PORT/TOPIC")]
    MissingTopic(String),
    #[error("{0:?} names no host: expected fluvio://HOST:PORT/TOPIC")]
    MissingHost(String),
    #[error(
        "{0:?} names no port: expected fluvio://HOST:PORT/TOPIC (the SC listens on 9003 by default)"
    )]
    MissingPort(String),
    #[error("{location:?} has an invalid port {port:?}: expected a number from 1 to 65535")]
    InvalidPort { location: String, port: String },
    #[error(
        "{location:?} has an invalid topic name {topic:?}: 1 to {TOPIC_NAME_BYTES_MAX} lowercase \
         letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidTopic { location: String, topic: String },
}

impl FromStr for LogLocation {
    type Err = LogLocationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == EMBEDDED {
            return Ok(LogLocation::Embedded);
        }
        let rest = text
            .strip_prefix(FLUVIO_SCHEME)
            .ok_or_else(|| LogLocationError::UnknownScheme(text.to_owned()))?;
        let (endpoint, topic) = rest
            .split_once('/')
            .ok_or_else(|| LogLocationError::MissingTopic(text.to_owned()))?;
        check_endpoint(text, endpoint)?;
        check_topic(text, topic)?;
        Ok(LogLocation::Fluvio(FluvioLocation {
            endpoint: endpoint.to_owned(),
            topic: topic.to_owned(),
        }))
    }
}

impl fmt::Display for LogLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogLocation::Embedded => f.write_str(EMBEDDED),
            LogLocation::Fluvio(location) => {
                write!(f, "{FLUVIO_SCHEME}{}/{}", location.endpoint, location.topic)
            }
        }
    }
}

/// `HOST:PORT`, with a bracketed IPv6 host allowed (`[::1]:9003`).
fn check_endpoint(location: &str, endpoint: &str) -> Result<(), LogLocationError> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| LogLocationError::MissingPort(location.to_owned()))?;
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(LogLocationError::MissingHost(location.to_owned()));
    }
    if port.is_empty() {
        return Err(LogLocationError::MissingPort(location.to_owned()));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(LogLocationError::InvalidPort {
            location: location.to_owned(),
            port: port.to_owned(),
        }),
    }
}

fn check_topic(location: &str, topic: &str) -> Result<(), LogLocationError> {
    if topic.is_empty() {
        return Err(LogLocationError::MissingTopic(location.to_owned()));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c != '-');
    let valid = topic.len() <= TOPIC_NAME_BYTES_MAX
        && topic.chars().all(allowed)
        && ends_ok(topic.chars().next())
        && ends_ok(topic.chars().last());
    if valid {
        Ok(())
    } else {
        Err(LogLocationError::InvalidTopic {
            location: location.to_owned(),
            topic: topic.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fluvio(endpoint: &str, topic: &str) -> LogLocation {
        LogLocation::Fluvio(FluvioLocation {
            endpoint: endpoint.to_owned(),
            topic: topic.to_owned(),
        })
    }

    #[test]
    fn good_locations_parse_and_print_back() {
        let cases = [
            ("embedded", LogLocation::Embedded),
            (
                "fluvio://127.0.0.1:9003/donations",
                fluvio("127.0.0.1:9003", "donations"),
            ),
            (
                "fluvio://sc.internal:9003/tally-2",
                fluvio("sc.internal:9003", "tally-2"),
            ),
            ("fluvio://[::1]:9003/d", fluvio("[::1]:9003", "d")),
        ];
        for (text, expected) in cases {
            let parsed: LogLocation = text.parse().unwrap();
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(LogLocation::default(), LogLocation::Embedded);
    }

    #[test]
    fn bad_locations_say_what_is_wrong() {
        let cases = [
            ("", "unknown log location"),
            ("kafka://127.0.0.1:9092/d", "unknown log location"),
            ("fluvio:/127.0.0.1:9003/d", "unknown log location"),
            ("fluvio://127.0.0.1:9003", "names no topic"),
            ("fluvio://127.0.0.1:9003/", "names no topic"),
            ("fluvio://127.0.0.1/donations", "names no port"),
            ("fluvio://127.0.0.1:/donations", "names no port"),
            ("fluvio://:9003/donations", "names no host"),
            ("fluvio://::1:9003/donations", "names no host"),
            (
                "fluvio://127.0.0.1:99999/donations",
                "invalid port \"99999\"",
            ),
            ("fluvio://127.0.0.1:0/donations", "invalid port \"0\""),
            ("fluvio://127.0.0.1:x/donations", "invalid port \"x\""),
            ("fluvio://127.0.0.1:9003/Donations", "invalid topic name"),
            ("fluvio://127.0.0.1:9003/don_ations", "invalid topic name"),
            ("fluvio://127.0.0.1:9003/-donations", "invalid topic name"),
            ("fluvio://127.0.0.1:9003/a/b", "invalid topic name"),
        ];
        for (text, expected) in cases {
            let error = text.parse::<LogLocation>().unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let long = format!("fluvio://h:1/{}", "a".repeat(TOPIC_NAME_BYTES_MAX + 1));
        assert!(matches!(
            long.parse::<LogLocation>(),
            Err(LogLocationError::InvalidTopic { .. })
        ));
    }
}
