//! The set of partitions a node owns, as `--owns` names it: `auto` (the assignment of the live
//! nodes decides; alone, a node owns them all), `all`, or numbers and inclusive ranges
//! separated by commas (`0-3`, `0,2,4-5`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::log::PartitionId;

/// A non-empty set of partitions, every partition of the log, or whatever the assignment gives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionSet {
    /// Automatic assignment among the live nodes of a shared log; every partition on the
    /// embedded log.
    #[default]
    Auto,
    All,
    Some(BTreeSet<PartitionId>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionSetError {
    #[error(
        "invalid partition list {0:?}: expected `auto`, `all` or numbers and ranges such as `0-3` or `0,2,4-5`"
    )]
    Syntax(String),
    #[error("invalid partition range {0:?}: its start is above its end")]
    BackwardRange(String),
    #[error("partition {partition} does not exist: the log has {partition_count} (0 to {last})", last = partition_count - 1)]
    OutOfRange {
        partition: PartitionId,
        partition_count: u32,
    },
}

impl PartitionSet {
    /// The partitions, in order, checked against the log's partition count (`auto`: all of
    /// them, what a node alone owns).
    pub fn resolve(&self, partition_count: u32) -> Result<Vec<PartitionId>, PartitionSetError> {
        match self {
            PartitionSet::Auto | PartitionSet::All => Ok((0..partition_count).collect()),
            PartitionSet::Some(partitions) => {
                if let Some(&partition) = partitions.iter().find(|&&p| p >= partition_count) {
                    return Err(PartitionSetError::OutOfRange {
                        partition,
                        partition_count,
                    });
                }
                Ok(partitions.iter().copied().collect())
            }
        }
    }
}

impl FromStr for PartitionSet {
    type Err = PartitionSetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        match text {
            "all" => return Ok(PartitionSet::All),
            "auto" => return Ok(PartitionSet::Auto),
            _ => {}
        }
        let syntax = || PartitionSetError::Syntax(text.to_owned());
        let number = |s: &str| s.trim().parse::<PartitionId>().map_err(|_| syntax());
        let mut partitions = BTreeSet::new();
        for piece in text.split(',') {
            match piece.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(PartitionSetError::BackwardRange(piece.trim().to_owned()));
                    }
                    partitions.extend(first..=last);
                }
                None => {
                    partitions.insert(number(piece)?);
                }
            }
        }
        Ok(PartitionSet::Some(partitions))
    }
}

impl fmt::Display for PartitionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionSet::Auto => f.write_str("auto"),
            PartitionSet::All => f.write_str("all"),
            PartitionSet::Some(partitions) => {
                let list: Vec<PartitionId> = partitions.iter().copied().collect();
                f.write_str(&format_ranges(&list))
            }
        }
    }
}

/// `[0, 1, 2, 5]` as `0-2,5`.
pub fn format_ranges(partitions: &[PartitionId]) -> String {
    let mut pieces = Vec::new();
    let mut iter = partitions.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last = iter.next().expect("peeked");
        }
        pieces.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    pieces.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_ranges() {
        let set: PartitionSet = "0-3, 6,8-9".parse().unwrap();
        assert_eq!(set.resolve(10).unwrap(), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(set.to_string(), "0-3,6,8-9");
        assert_eq!(
            "all".parse::<PartitionSet>().unwrap().resolve(3).unwrap(),
            vec![0, 1, 2]
        );
        assert_eq!("auto".parse::<PartitionSet>().unwrap(), PartitionSet::Auto);
        assert_eq!(PartitionSet::Auto.to_string(), "auto");
    }

    #[test]
    fn refuses_bad_lists() {
        assert!(matches!(
            "".parse::<PartitionSet>(),
            Err(PartitionSetError::Syntax(_))
        ));
        assert!(matches!(
            "1-x".parse::<PartitionSet>(),
            Err(PartitionSetError::Syntax(_))
        ));
        assert!(matches!(
            "-1".parse::<PartitionSet>(),
            Err(PartitionSetError::Syntax(_))
        ));
        assert!(matches!(
            "3-1".parse::<PartitionSet>(),
            Err(PartitionSetError::BackwardRange(_))
        ));
        let set: PartitionSet = "4-8".parse().unwrap();
        assert_eq!(
            set.resolve(8),
            Err(PartitionSetError::OutOfRange {
                partition: 8,
                partition_count: 8
            })
        );
    }
}
