//! Connecting to the SC and making sure the topic exists, with the right partition count, and
//! is online before the log is used.

use std::future::Future;
use std::time::{Duration, Instant};

use fluvio::metadata::partition::PartitionSpec;
use fluvio::metadata::topic::{
    CleanupPolicy, SegmentBasedPolicy, TopicResolution, TopicSpec, TopicStorageConfig,
};
use fluvio::{Fluvio, FluvioAdmin, FluvioClusterConfig};

use super::FluvioLogOptions;
use super::reader::PollDelay;
use crate::log::LogError;

/// The log is the record of truth and keeps every record: the longest retention Fluvio takes
/// (its retention is a `u32` of seconds, about 136 years; the default of
/// `FluvioLogOptions::retention_seconds`) ...
pub(super) const RETENTION_SECONDS_MAX: u32 = u32::MAX;
/// ... and no size limit that would delete old segments.
const PARTITION_BYTES_MAX: u64 = u64::MAX;
/// Segments of a topic the log creates (the default of `FluvioLogOptions::segment_bytes`). A
/// consumer fetches at most the rest of one segment, so with fetches as large as a segment no
/// fetch ever ends inside a batch (see `reader`); small enough that such a fetch is a modest
/// buffer (16 MiB, some 100,000 donations).
pub(super) const SEGMENT_BYTES: u32 = 16 * 1024 * 1024;
const _: () = assert!(SEGMENT_BYTES <= super::reader::FETCH_BYTES_MAX);

/// Connects to the SC's public endpoint, with no profile file.
pub(super) async fn connect(endpoint: &str, timeout: Duration) -> Result<Fluvio, LogError> {
    let config = FluvioClusterConfig::new(endpoint);
    let what = format!("connecting to the Fluvio cluster at {endpoint}");
    bounded(&what, timeout, Fluvio::connect_with_config(&config)).await
}

/// Creates the topic if it is missing, checks its partition count, waits until it is online.
/// Returns the topic's segment size, if it sets one (else the SPU's default applies).
pub(super) async fn ensure_topic(
    client: &Fluvio,
    topic: &str,
    partition_count: u32,
    options: &FluvioLogOptions,
) -> Result<Option<u32>, LogError> {
    let admin = client.admin().await;
    let timeout = options.request_timeout;
    let segment_bytes = match find_topic(&admin, topic, timeout).await? {
        Some(spec) => check_existing(topic, &spec, partition_count, options)?,
        None => create_topic(&admin, topic, partition_count, options).await?,
    };
    wait_until_online(&admin, topic, partition_count, options).await?;
    Ok(segment_bytes)
}

async fn find_topic(
    admin: &FluvioAdmin,
    topic: &str,
    timeout: Duration,
) -> Result<Option<TopicSpec>, LogError> {
    let what = format!("looking up topic {topic}");
    let found = bounded(
        &what,
        timeout,
        admin.list::<TopicSpec, _>(vec![topic.to_owned()]),
    )
    .await?;
    Ok(found
        .into_iter()
        .find(|metadata| metadata.name == topic)
        .map(|metadata| metadata.spec))
}

/// Checks a topic that exists already; returns its segment size, if it sets one.
fn check_existing(
    topic: &str,
    spec: &TopicSpec,
    partition_count: u32,
    options: &FluvioLogOptions,
) -> Result<Option<u32>, LogError> {
    let existing = spec.partitions();
    if existing != partition_count {
        return Err(LogError::TopicMismatch {
            topic: topic.to_owned(),
            reason: format!(
                "it has {existing} partitions but the log has {partition_count}; a record's \
                 partition depends on the count, so it cannot change"
            ),
        });
    }
    let replication = spec.replication_factor().unwrap_or(0);
    if replication < options.replication_factor {
        tracing::warn!(
            topic,
            replication,
            wanted = options.replication_factor,
            "the existing topic has fewer replicas than asked for"
        );
    }
    if spec.retention_secs() < options.retention_seconds {
        tracing::warn!(
            topic,
            retention_seconds = spec.retention_secs(),
            wanted = options.retention_seconds,
            "the existing topic deletes records after its retention time; reading them back \
             later will fail with lost records"
        );
    }
    Ok(spec.get_storage().and_then(|storage| storage.segment_size))
}

/// Creates the topic; returns its segment size.
async fn create_topic(
    admin: &FluvioAdmin,
    topic: &str,
    partition_count: u32,
    options: &FluvioLogOptions,
) -> Result<Option<u32>, LogError> {
    let mut spec = TopicSpec::new_computed(partition_count, options.replication_factor, None);
    spec.set_cleanup_policy(CleanupPolicy::Segment(SegmentBasedPolicy {
        time_in_seconds: options.retention_seconds,
    }));
    spec.set_storage(TopicStorageConfig {
        segment_size: Some(options.segment_bytes),
        max_partition_size: Some(PARTITION_BYTES_MAX),
    });
    let what = format!("creating topic {topic}");
    let created = bounded(
        &what,
        options.request_timeout,
        admin.create(topic.to_owned(), false, spec),
    )
    .await;
    match created {
        Ok(()) => {
            tracing::info!(
                topic,
                partition_count,
                segment_bytes = options.segment_bytes,
                retention_seconds = options.retention_seconds,
                "created the log's topic"
            );
            Ok(Some(options.segment_bytes))
        }
        // Another process created it first: check it like any existing topic.
        Err(error) => match find_topic(admin, topic, options.request_timeout).await? {
            Some(spec) => check_existing(topic, &spec, partition_count, options),
            None => Err(error),
        },
    }
}

/// Waits until the SC says the topic is provisioned and every partition has a leader online.
async fn wait_until_online(
    admin: &FluvioAdmin,
    topic: &str,
    partition_count: u32,
    options: &FluvioLogOptions,
) -> Result<(), LogError> {
    let started = Instant::now();
    let mut poll_delay = PollDelay::default();
    loop {
        let state = topic_state(admin, topic, partition_count, options.request_timeout).await?;
        if state.online == partition_count && state.resolution == TopicResolution::Provisioned {
            return Ok(());
        }
        if started.elapsed() >= options.topic_ready_timeout {
            return Err(LogError::TopicMismatch {
                topic: topic.to_owned(),
                reason: format!(
                    "not ready after {:?}: the topic is {} ({}), {} of {partition_count} \
                     partitions online (too few SPUs for the replication factor {}?)",
                    options.topic_ready_timeout,
                    state.resolution.resolution_label(),
                    state.reason,
                    state.online,
                    options.replication_factor,
                ),
            });
        }
        poll_delay.wait().await;
    }
}

/// What the SC says of a topic's readiness.
#[derive(Debug)]
struct TopicState {
    resolution: TopicResolution,
    reason: String,
    online: u32,
}

async fn topic_state(
    admin: &FluvioAdmin,
    topic: &str,
    partition_count: u32,
    timeout: Duration,
) -> Result<TopicState, LogError> {
    let what = format!("asking for the state of topic {topic}");
    let topics = bounded(
        &what,
        timeout,
        admin.list::<TopicSpec, _>(vec![topic.to_owned()]),
    )
    .await?;
    let Some(metadata) = topics.into_iter().find(|metadata| metadata.name == topic) else {
        return Err(LogError::TopicMismatch {
            topic: topic.to_owned(),
            reason: "it was deleted while the log was starting".to_owned(),
        });
    };
    let names: Vec<String> = (0..partition_count)
        .map(|partition| format!("{topic}-{partition}"))
        .collect();
    // The SC's name filters match substrings (or nothing at all): keep exact names only.
    let partitions = bounded(
        &what,
        timeout,
        admin.list::<PartitionSpec, _>(names.clone()),
    )
    .await?;
    let online = partitions
        .iter()
        .filter(|partition| names.contains(&partition.name) && partition.status.is_online())
        .count() as u32;
    Ok(TopicState {
        resolution: metadata.status.resolution,
        reason: metadata.status.reason,
        online,
    })
}

/// Runs one request to the cluster under a timeout; a timeout or an error means the cluster
/// is unavailable (the caller may retry).
pub(super) async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, LogError> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(LogError::Unavailable {
            reason: format!("{what}: {error:#}"),
        }),
        Err(_) => Err(LogError::Unavailable {
            reason: format!("{what}: no answer within {timeout:?}"),
        }),
    }
}
