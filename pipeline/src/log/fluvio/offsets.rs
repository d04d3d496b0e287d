//! A partition's offsets, asked of its leader SPU.
//!
//! The Fluvio client asks `FetchOffsets` internally before opening a stream but does not
//! expose it; the SC's partition status carries a high watermark too, but only as often as
//! SPUs report it. So this module asks the leader itself: one request on a socket kept per SPU,
//! answering the partition's start (the first offset still stored) and its high watermark
//! (the end of what is committed, which read-committed consumers see). The leader and its
//! address come from the SC and are remembered; a failed request forgets both and tries once
//! more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fluvio::Fluvio;
use fluvio::metadata::partition::PartitionSpec;
use fluvio::metadata::spu::SpuSpec;
use fluvio_future::net::DefaultDomainConnector;
use fluvio_socket::{ClientConfig, MultiplexerSocket, VersionedSerialSocket};
use fluvio_spu_schema::errors::ErrorCode;
use fluvio_spu_schema::server::fetch_offset::{FetchOffsetPartitionResponse, FetchOffsetsRequest};
use tokio::sync::Mutex;

use super::connect::bounded;
use crate::log::{LogError, Offset, PartitionId};

/// What a partition stores: offsets `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PartitionOffsets {
    pub start: Offset,
    pub end: Offset,
}

/// Asks leaders for partition offsets.
pub(super) struct OffsetClient {
    client: Arc<Fluvio>,
    topic: String,
    timeout: Duration,
    /// Each partition's leader SPU id, as last looked up.
    leaders: std::sync::Mutex<HashMap<PartitionId, i32>>,
    /// One socket per SPU, by SPU id; requests to one SPU share it.
    sockets: Mutex<HashMap<i32, Arc<VersionedSerialSocket>>>,
}

impl OffsetClient {
    pub fn new(client: Arc<Fluvio>, topic: &str, timeout: Duration) -> Self {
        Self {
            client,
            topic: topic.to_owned(),
            timeout,
            leaders: std::sync::Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
        }
    }

    /// The partition's offsets now. A failure drops the SPU's socket and tries once more, so a
    /// moved leader or a restarted SPU costs one retry.
    pub async fn fetch(&self, partition: PartitionId) -> Result<PartitionOffsets, LogError> {
        match self.fetch_once(partition).await {
            Ok(offsets) => Ok(offsets),
            Err(first) => {
                tracing::debug!(partition, error = %first, "fetching offsets; retrying once");
                self.fetch_once(partition).await
            }
        }
    }

    async fn fetch_once(&self, partition: PartitionId) -> Result<PartitionOffsets, LogError> {
        let leader = self.leader(partition).await?;
        let result = self.ask(leader, partition).await;
        if result.is_err() {
            self.forget(partition, leader).await;
        }
        result
    }

    async fn ask(&self, leader: i32, partition: PartitionId) -> Result<PartitionOffsets, LogError> {
        let socket = self.socket(leader).await?;
        let request = FetchOffsetsRequest::new(self.topic.clone(), partition);
        let what = format!("fetching the offsets of partition {partition} from SPU {leader}");
        let response = bounded(&what, self.timeout, socket.send_receive(request)).await?;
        let found = response
            .topics
            .into_iter()
            .filter(|topic| topic.name == self.topic)
            .flat_map(|topic| topic.partitions)
            .find(|answer| answer.partition_index == partition);
        match found {
            Some(answer) => offsets_from(&what, answer),
            None => Err(LogError::Unavailable {
                reason: format!("{what}: the SPU did not answer for the partition"),
            }),
        }
    }

    /// Forgets the leader of a partition and the socket to it, after a failed request (most
    /// likely the leader moved or the SPU restarted).
    async fn forget(&self, partition: PartitionId, leader: i32) {
        self.leaders_lock().remove(&partition);
        self.sockets.lock().await.remove(&leader);
    }

    fn leaders_lock(&self) -> std::sync::MutexGuard<'_, HashMap<PartitionId, i32>> {
        // The map is a cache: a panic elsewhere cannot leave it inconsistent.
        self.leaders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// The partition's leader, as last looked up or, the first time, as the SC knows it.
    async fn leader(&self, partition: PartitionId) -> Result<i32, LogError> {
        if let Some(&leader) = self.leaders_lock().get(&partition) {
            return Ok(leader);
        }
        let leader = self.look_up_leader(partition).await?;
        self.leaders_lock().insert(partition, leader);
        Ok(leader)
    }

    async fn look_up_leader(&self, partition: PartitionId) -> Result<i32, LogError> {
        let admin = self.client.admin().await;
        let name = format!("{}-{partition}", self.topic);
        let what = format!("looking up the leader of partition {partition}");
        let found = bounded(
            &what,
            self.timeout,
            admin.list::<PartitionSpec, _>(vec![name.clone()]),
        )
        .await?;
        found
            .into_iter()
            .find(|metadata| metadata.name == name)
            .map(|metadata| metadata.spec.leader)
            .ok_or_else(|| LogError::Unavailable {
                reason: format!("{what}: the SC does not know the partition"),
            })
    }

    /// The socket to an SPU, connecting on first use.
    async fn socket(&self, spu: i32) -> Result<Arc<VersionedSerialSocket>, LogError> {
        let mut sockets = self.sockets.lock().await;
        if let Some(socket) = sockets.get(&spu).filter(|socket| !socket.is_stale()) {
            return Ok(Arc::clone(socket));
        }
        let address = self.spu_address(spu).await?;
        let what = format!("connecting to SPU {spu} at {address}");
        // Plain TCP, like the client's own connections (built without TLS).
        let connector = Box::new(DefaultDomainConnector::new());
        let config = ClientConfig::new(address, connector, false);
        let versioned = bounded(&what, self.timeout, config.connect()).await?;
        let (socket, config, versions) = versioned.split();
        let socket = Arc::new(VersionedSerialSocket::new(
            MultiplexerSocket::shared(socket),
            config,
            versions,
        ));
        sockets.insert(spu, Arc::clone(&socket));
        Ok(socket)
    }

    async fn spu_address(&self, spu: i32) -> Result<String, LogError> {
        let admin = self.client.admin().await;
        let what = format!("looking up the address of SPU {spu}");
        let spus = bounded(&what, self.timeout, admin.all::<SpuSpec>()).await?;
        spus.into_iter()
            .find(|metadata| metadata.spec.id == spu)
            .map(|metadata| metadata.spec.public_endpoint.addr())
            .ok_or_else(|| LogError::Unavailable {
                reason: format!("{what}: the SC does not know it"),
            })
    }
}

fn offsets_from(
    what: &str,
    answer: FetchOffsetPartitionResponse,
) -> Result<PartitionOffsets, LogError> {
    if answer.error_code != ErrorCode::None {
        return Err(LogError::Unavailable {
            reason: format!("{what}: the SPU answered {}", answer.error_code),
        });
    }
    // Offsets on the wire are i64, never negative for a stored partition.
    let offsets = PartitionOffsets {
        start: u64::try_from(answer.start_offset).unwrap_or(0),
        end: u64::try_from(answer.last_stable_offset).unwrap_or(0),
    };
    if offsets.start > offsets.end {
        return Err(LogError::Unavailable {
            reason: format!(
                "{what}: the SPU answered start {} after end {}",
                offsets.start, offsets.end
            ),
        });
    }
    Ok(offsets)
}
