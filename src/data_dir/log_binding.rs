//! Which log a data directory's state belongs to.
//!
//! Checkpoints hold offsets into one particular log. The first `tally serve` on a data directory
//! records its log location (`<data-dir>/log-location`, one line: `embedded`, or
//! `fluvio://HOST:PORT/TOPIC partitions=P`); later starts must name the same log, so state is
//! never replayed against another log's offsets. A data directory without the file and with an
//! embedded log in it belongs to that embedded log.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tally_pipeline::log::LogLocation;

const LOG_LOCATION_FILE: &str = "log-location";

/// The log a data directory is bound to, and the partition count it was created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBinding {
    pub location: LogLocation,
    /// Known for a Fluvio log; the embedded log keeps its own in its manifest.
    pub partition_count: Option<u32>,
}

impl LogBinding {
    fn to_line(&self) -> String {
        match (&self.location, self.partition_count) {
            (LogLocation::Fluvio(_), Some(count)) => {
                format!("{} partitions={count}", self.location)
            }
            _ => self.location.to_string(),
        }
    }

    fn parse(line: &str) -> anyhow::Result<Self> {
        let mut words = line.split_whitespace();
        let location: LogLocation = words.next().unwrap_or_default().parse()?;
        let partition_count = match words.next() {
            None => None,
            Some(word) => Some(
                word.strip_prefix("partitions=")
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("expected partitions=N, got {word:?}"))?,
            ),
        };
        Ok(Self {
            location,
            partition_count,
        })
    }
}

fn binding_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOG_LOCATION_FILE)
}

/// The log this data directory is bound to, if any.
pub fn recorded(data_dir: &Path) -> anyhow::Result<Option<LogBinding>> {
    let path = binding_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => LogBinding::parse(text.trim())
            .map(Some)
            .with_context(|| format!("{} is damaged", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let embedded_exists = super::log_dir(data_dir).join("manifest.json").exists();
            Ok(embedded_exists.then_some(LogBinding {
                location: LogLocation::Embedded,
                partition_count: None,
            }))
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Binds the data directory to `location` on first use, or checks that it is the log it is
/// bound to. Returns the partition count for a Fluvio log (the recorded one, or
/// `partition_count` when this call records it).
pub fn bind(
    data_dir: &Path,
    location: &LogLocation,
    partition_count: u32,
) -> anyhow::Result<Option<u32>> {
    if let Some(bound) = recorded(data_dir)? {
        anyhow::ensure!(
            bound.location == *location,
            "the state in {} belongs to the log at {}, not {location}; use that log, or another data directory",
            data_dir.display(),
            bound.location
        );
        return Ok(bound.partition_count);
    }
    let binding = LogBinding {
        location: location.clone(),
        partition_count: matches!(location, LogLocation::Fluvio(_)).then_some(partition_count),
    };
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = binding_path(data_dir);
    std::fs::write(&path, binding.to_line() + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(binding.partition_count)
}

/// Refuses local commands on a data directory whose log is on a Fluvio cluster: they read the
/// embedded log.
pub fn ensure_embedded(data_dir: &Path) -> anyhow::Result<()> {
    match recorded(data_dir)? {
        Some(LogBinding {
            location: location @ LogLocation::Fluvio(_),
            ..
        }) => anyhow::bail!(
            "the log of {} is at {location}: this command reads the embedded log; run it against the server (--server URL) instead",
            data_dir.display()
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fluvio(topic: &str) -> LogLocation {
        format!("fluvio://127.0.0.1:9003/{topic}")
            .parse()
            .expect("a valid location")
    }

    #[test]
    fn the_first_start_binds_and_later_starts_must_match() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(bind(dir.path(), &fluvio("donations"), 4).unwrap(), Some(4));
        assert_eq!(
            bind(dir.path(), &fluvio("donations"), 8).unwrap(),
            Some(4),
            "the recorded partition count wins"
        );
        let other = bind(dir.path(), &fluvio("other"), 4).unwrap_err();
        assert!(
            other
                .to_string()
                .contains("belongs to the log at fluvio://127.0.0.1:9003/donations"),
            "{other}"
        );
        let embedded = bind(dir.path(), &LogLocation::Embedded, 4).unwrap_err();
        assert!(embedded.to_string().contains("not embedded"), "{embedded}");
        assert!(ensure_embedded(dir.path()).is_err());
    }

    #[test]
    fn an_existing_embedded_log_binds_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        std::fs::write(dir.path().join("log/manifest.json"), "{}").unwrap();
        assert!(bind(dir.path(), &fluvio("donations"), 4).is_err());
        assert_eq!(bind(dir.path(), &LogLocation::Embedded, 4).unwrap(), None);
        assert!(ensure_embedded(dir.path()).is_ok());
    }
}
