//! Campaigns: what donations may be given to, and the reconciled final total of a closed one.
//!
//! Campaign definitions are not derived from donations, so they have a log of their own: the
//! control log — `<data-dir>/control/` (an embedded log of one partition) beside the embedded
//! donation log, or the `<topic>-campaigns` topic on a Fluvio cluster, shared by every node.
//! Every change is appended there durably, and takes effect when the registry **folds** it: the
//! log's order decides, so two nodes creating one campaign at once get one winner, and every
//! node validates donations against the same campaigns. Like the donation log, it is a record
//! of truth.
//!
//! Closing spans every node taking donations:
//! ```text
//! CloseRequested ─► each live node stops intake for it, then appends IntakeStopped
//!                ─► CloseStarted (the donation log's end offsets: the close point)
//!                ─► Closed (the reconciled final total)
//! ```
//! A folded `CloseRequested` already makes every node refuse new donations for the campaign;
//! `IntakeStopped` says a node has no donation for it still being appended. Later records of
//! a step that already happened (a second close racing the first) change nothing.
//!
//! # Record format
//! A control record is `[0xFF, version, bincode of the change]` ([`crate::support::codec::encode_versioned`]);
//! this build writes version 1 and reads it and records written before versions existed (a
//! bare bincode `CampaignEvent`, read as version 0). A record of a later version is refused
//! with [`CampaignError::Undecodable`] naming the version. The layout of version 1 is the
//! `CampaignEvent` below: a change to it (a new kind, a new field) is a new version, with the
//! old layout frozen beside it and still decoded. `tests/cluster_format_fixtures.rs` pins both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub mod close;
pub mod definition;
pub mod reconcile;

pub use close::{ClosingNode, close_campaign};
pub use definition::{CAMPAIGN_NAME_CHARS_MAX, CampaignRequest};

use crate::event::EventTime;
use crate::log::{EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log, LogError, Offset};
use crate::support::backoff::Backoff;
use crate::support::codec::{self, FormatError};

/// What an operator states when creating a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignDefinition {
    pub campaign_id: String,
    pub name: String,
    /// ISO 4217: donations without a currency get this one; others must match it.
    pub currency: String,
    pub goal_cents: Option<u64>,
    pub starts_at: Option<EventTime>,
    pub ends_at: Option<EventTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStatus {
    Open,
    /// No longer accepting donations; the final total is being reconciled.
    Closing,
    Closed,
}

impl CampaignStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Open => "open",
            CampaignStatus::Closing => "closing",
            CampaignStatus::Closed => "closed",
        }
    }
}

/// The outcome of closing a campaign: its total recomputed from the donation records, compared
/// with the running total the operators kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub final_total_cents: u64,
    pub final_donations: u64,
    pub running_total_cents: u64,
    pub running_donations: u64,
    /// Whether the two agree.
    pub matched: bool,
}

/// The refunds and chargebacks part of a close's reconciliation: recomputed from the log's
/// records below the close point alone, against what the operators kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetractionsAtClose {
    /// Taken back (chargebacks included) from donations below the close point.
    pub final_refunded_cents: u64,
    pub final_refunds: u64,
    pub final_chargeback_cents: u64,
    pub final_chargebacks: u64,
    pub running_refunded_cents: u64,
    pub running_refunds: u64,
    /// Whether the two agree.
    pub matched: bool,
}

impl RetractionsAtClose {
    /// Whether there was nothing to reconcile: no refund, recomputed or running.
    pub fn none_at_all(&self) -> bool {
        self.final_refunds == 0
            && self.running_refunds == 0
            && self.final_refunded_cents == 0
            && self.running_refunded_cents == 0
    }
}

/// A campaign as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub definition: CampaignDefinition,
    pub created_at: EventTime,
    pub status: CampaignStatus,
    /// Where its `Created` record sits in the control log.
    #[serde(default)]
    pub created_offset: Offset,
    /// Nodes that stopped taking donations for it since a close was requested.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub intake_stopped: BTreeSet<String>,
    /// Per partition, the log end when the campaign stopped accepting donations.
    pub close_offsets: Option<Vec<Offset>>,
    pub closed_at: Option<EventTime>,
    pub reconciliation: Option<Reconciliation>,
    /// The refunds and chargebacks its reconciliation counted (none for a campaign closed
    /// before refunds existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retractions_at_close: Option<RetractionsAtClose>,
}

/// One change to the registry, as stored in the control log (format versions 0 and 1, see the
/// module's notes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum CampaignEvent {
    Created {
        definition: CampaignDefinition,
        at: EventTime,
    },
    CloseStarted {
        campaign_id: String,
        close_offsets: Vec<Offset>,
    },
    Closed {
        campaign_id: String,
        at: EventTime,
        reconciliation: Reconciliation,
    },
    CloseRequested {
        campaign_id: String,
        node_id: String,
    },
    IntakeStopped {
        campaign_id: String,
        node_id: String,
    },
    /// `Closed`, with the refunds and chargebacks its reconciliation counted.
    ClosedWithRetractions {
        campaign_id: String,
        at: EventTime,
        reconciliation: Reconciliation,
        retractions: RetractionsAtClose,
    },
}

/// The control record format this build writes.
const CONTROL_RECORD_VERSION: u8 = 1;
/// Kinds of change the unversioned control record had (Created … IntakeStopped): its first byte
/// is one of `0..5`, never [`codec::VERSION_MARKER`].
const UNVERSIONED_CONTROL_KINDS: u8 = 5;
const _: () = assert!(UNVERSIONED_CONTROL_KINDS < codec::VERSION_MARKER);
const CONTROL_RECORD: &str = "control log record";

impl CampaignEvent {
    fn encode(&self) -> Vec<u8> {
        codec::encode_versioned(CONTROL_RECORD_VERSION, self)
    }

    /// Decodes a control record of any version this build knows.
    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        match codec::split_versioned(CONTROL_RECORD, bytes)? {
            // Versions 0 and 1 share the layout of `CampaignEvent`.
            (version @ (codec::UNVERSIONED | CONTROL_RECORD_VERSION), body) => {
                codec::decode_body(CONTROL_RECORD, version, body)
            }
            (version, _) => Err(FormatError::UnknownVersion {
                kind: CONTROL_RECORD,
                version,
                known: CONTROL_RECORD_VERSION,
            }),
        }
    }

    fn campaign_id(&self) -> &str {
        match self {
            CampaignEvent::Created { definition, .. } => &definition.campaign_id,
            CampaignEvent::CloseStarted { campaign_id, .. }
            | CampaignEvent::Closed { campaign_id, .. }
            | CampaignEvent::ClosedWithRetractions { campaign_id, .. }
            | CampaignEvent::CloseRequested { campaign_id, .. }
            | CampaignEvent::IntakeStopped { campaign_id, .. } => campaign_id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("campaign {0:?} already exists")]
    AlreadyExists(String),
    #[error("campaign {0:?} does not exist")]
    NotFound(String),
    #[error("campaign {0:?} is already closed")]
    AlreadyClosed(String),
    #[error("campaign {campaign_id:?} is {status}, not {expected}")]
    WrongStatus {
        campaign_id: String,
        status: &'static str,
        expected: &'static str,
    },
    #[error("the control log: {0}")]
    Log(#[from] LogError),
    #[error("control log record {offset}: {source}")]
    Undecodable {
        offset: Offset,
        #[source]
        source: FormatError,
    },
}

/// The registry as folded from the control log.
#[derive(Debug, Default)]
struct Folded {
    next_offset: Offset,
    /// Shared snapshots: a look-up on the ingest path is a reference count, not a copy.
    campaigns: BTreeMap<String, Arc<Campaign>>,
}

/// Campaigns by id, folded from the control log.
#[derive(Debug)]
pub struct CampaignRegistry {
    control: Arc<dyn Log>,
    folded: RwLock<Folded>,
    /// One fold at a time.
    folding: tokio::sync::Mutex<()>,
    /// When a look-up of an unknown campaign last read the control log.
    unknown_refreshed: std::sync::Mutex<Option<Instant>>,
    /// The offset folded through, for waiters.
    progress: watch::Sender<Offset>,
}

/// Control records replayed per read.
const REPLAY_BATCH: usize = 1024;
/// A look-up of a campaign this node does not know reads the control log at most this often.
const UNKNOWN_REFRESH_INTERVAL: Duration = Duration::from_millis(50);

impl CampaignRegistry {
    /// Opens (creating if needed) the embedded control log in `dir` and replays it.
    pub async fn open_embedded(dir: &Path) -> Result<Self, CampaignError> {
        let options = EmbeddedLogOptions {
            partition_count: 1,
            ..EmbeddedLogOptions::default()
        };
        let control: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir, options)?);
        Self::open(control).await
    }

    /// Replays a control log of one partition.
    pub async fn open(control: Arc<dyn Log>) -> Result<Self, CampaignError> {
        let registry = Self {
            control,
            folded: RwLock::new(Folded::default()),
            folding: tokio::sync::Mutex::new(()),
            unknown_refreshed: std::sync::Mutex::new(None),
            progress: watch::channel(0).0,
        };
        registry.sync().await?;
        Ok(registry)
    }

    pub fn control(&self) -> &Arc<dyn Log> {
        &self.control
    }

    pub fn get(&self, campaign_id: &str) -> Option<Arc<Campaign>> {
        self.read().campaigns.get(campaign_id).cloned()
    }

    /// A campaign, reading the control log first if this node does not know it yet (another
    /// node may have just created it).
    pub async fn get_fresh(
        &self,
        campaign_id: &str,
    ) -> Result<Option<Arc<Campaign>>, CampaignError> {
        if let Some(campaign) = self.get(campaign_id) {
            return Ok(Some(campaign));
        }
        let due = {
            let mut last = self
                .unknown_refreshed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = last.is_none_or(|at| at.elapsed() >= UNKNOWN_REFRESH_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.sync().await?;
        }
        Ok(self.get(campaign_id))
    }

    pub fn list(&self) -> Vec<Arc<Campaign>> {
        self.read().campaigns.values().cloned().collect()
    }

    /// A receiver of the offset folded through, changing on every fold that applied something.
    pub fn subscribe(&self) -> watch::Receiver<Offset> {
        self.progress.subscribe()
    }

    /// The offset the next control record will be folded from.
    pub fn next_offset(&self) -> Offset {
        self.read().next_offset
    }

    /// Folds the control log up to its end.
    pub async fn sync(&self) -> Result<(), CampaignError> {
        let _one_fold = self.folding.lock().await;
        self.fold_locked(None).await
    }

    /// Folds the control log at least through `offset`.
    async fn sync_through(&self, offset: Offset) -> Result<(), CampaignError> {
        let _one_fold = self.folding.lock().await;
        self.fold_locked(Some(offset + 1)).await
    }

    async fn fold_locked(&self, until: Option<Offset>) -> Result<(), CampaignError> {
        loop {
            let next = self.next_offset();
            if until.is_some_and(|until| next >= until) {
                return Ok(());
            }
            let records = self.control.read(0, next, REPLAY_BATCH).await?;
            if records.is_empty() {
                if until.is_none() {
                    return Ok(());
                }
                self.control.wait_for_offset(0, next).await?;
                continue;
            }
            let mut events = Vec::with_capacity(records.len());
            for record in &records {
                let event = CampaignEvent::decode(&record.value).map_err(|source| {
                    CampaignError::Undecodable {
                        offset: record.offset,
                        source,
                    }
                })?;
                events.push((record.offset, event));
            }
            let last = {
                let mut folded = self.write();
                for (offset, event) in events {
                    apply(&mut folded.campaigns, offset, event);
                    folded.next_offset = offset + 1;
                }
                folded.next_offset
            };
            self.progress.send_replace(last);
        }
    }

    /// Appends one change and folds the log through it.
    async fn record(&self, event: CampaignEvent) -> Result<Offset, CampaignError> {
        let record = KeyedRecord {
            key: event.campaign_id().as_bytes().to_vec(),
            value: event.encode(),
        };
        let offset = self.control.append(0, vec![record]).await?.first_offset();
        self.sync_through(offset).await?;
        Ok(offset)
    }

    fn existing(&self, campaign_id: &str) -> Result<Arc<Campaign>, CampaignError> {
        self.get(campaign_id)
            .ok_or_else(|| CampaignError::NotFound(campaign_id.to_owned()))
    }

    /// Creates a campaign, durably. Of two creations of one id, the first in the log wins.
    pub async fn create(
        &self,
        definition: CampaignDefinition,
        now: EventTime,
    ) -> Result<Campaign, CampaignError> {
        self.sync().await?;
        let campaign_id = definition.campaign_id.clone();
        if self.get(&campaign_id).is_some() {
            return Err(CampaignError::AlreadyExists(campaign_id));
        }
        let offset = self
            .record(CampaignEvent::Created {
                definition,
                at: now,
            })
            .await?;
        let created = self.existing(&campaign_id)?;
        if created.created_offset != offset {
            return Err(CampaignError::AlreadyExists(campaign_id));
        }
        Ok(Campaign::clone(&created))
    }

    /// Asks every node to stop taking donations for an open campaign; from the moment this is
    /// folded, none accepts new ones. A campaign already closing or closed is returned as is.
    pub async fn request_close(
        &self,
        campaign_id: &str,
        node_id: &str,
    ) -> Result<Campaign, CampaignError> {
        self.sync().await?;
        if self.existing(campaign_id)?.status == CampaignStatus::Open {
            self.record(CampaignEvent::CloseRequested {
                campaign_id: campaign_id.to_owned(),
                node_id: node_id.to_owned(),
            })
            .await?;
        }
        Ok(Campaign::clone(&*self.existing(campaign_id)?))
    }

    /// Campaigns whose close was requested and for which `node_id` has not yet said it stopped
    /// taking donations.
    pub fn intake_to_stop(&self, node_id: &str) -> Vec<String> {
        self.read()
            .campaigns
            .values()
            .filter(|c| c.status == CampaignStatus::Closing && c.close_offsets.is_none())
            .filter(|c| !c.intake_stopped.contains(node_id))
            .map(|c| c.definition.campaign_id.clone())
            .collect()
    }

    /// Says `node_id` takes no more donations for the campaign and has none being appended.
    pub async fn confirm_intake_stopped(
        &self,
        campaign_id: &str,
        node_id: &str,
    ) -> Result<(), CampaignError> {
        self.record(CampaignEvent::IntakeStopped {
            campaign_id: campaign_id.to_owned(),
            node_id: node_id.to_owned(),
        })
        .await?;
        Ok(())
    }

    /// Notes the close point — the donation log's end offsets once no node takes donations for
    /// the campaign. The first close point in the log wins; the campaign is returned with it.
    /// The caller guarantees no donation for it is being appended (every node confirmed, or
    /// nothing else takes donations).
    pub async fn start_close(
        &self,
        campaign_id: &str,
        close_offsets: Vec<Offset>,
    ) -> Result<Campaign, CampaignError> {
        self.sync().await?;
        let campaign = self.existing(campaign_id)?;
        match campaign.status {
            CampaignStatus::Closed => {
                return Err(CampaignError::AlreadyClosed(campaign_id.to_owned()));
            }
            _ if campaign.close_offsets.is_some() => return Ok(Campaign::clone(&campaign)),
            _ => {}
        }
        self.record(CampaignEvent::CloseStarted {
            campaign_id: campaign_id.to_owned(),
            close_offsets,
        })
        .await?;
        Ok(Campaign::clone(&*self.existing(campaign_id)?))
    }

    /// Records the reconciled final total of a closing campaign, durably. The first in the log
    /// wins; the campaign is returned with it.
    pub async fn finish_close(
        &self,
        campaign_id: &str,
        reconciliation: Reconciliation,
        retractions: RetractionsAtClose,
        now: EventTime,
    ) -> Result<Campaign, CampaignError> {
        self.sync().await?;
        let campaign = self.existing(campaign_id)?;
        if campaign.status == CampaignStatus::Closed {
            return Ok(Campaign::clone(&campaign));
        }
        if campaign.close_offsets.is_none() {
            return Err(CampaignError::WrongStatus {
                campaign_id: campaign_id.to_owned(),
                status: campaign.status.as_str(),
                expected: CampaignStatus::Closing.as_str(),
            });
        }
        // A campaign that never had a refund closes with the record it always had.
        let closed = if retractions.none_at_all() {
            CampaignEvent::Closed {
                campaign_id: campaign_id.to_owned(),
                at: now,
                reconciliation,
            }
        } else {
            CampaignEvent::ClosedWithRetractions {
                campaign_id: campaign_id.to_owned(),
                at: now,
                reconciliation,
                retractions,
            }
        };
        self.record(closed).await?;
        Ok(Campaign::clone(&*self.existing(campaign_id)?))
    }

    /// Folds what other nodes append, until `shutdown`; an unavailable log is waited out.
    pub async fn follow(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::for_log();
        while !*shutdown.borrow() {
            let next = self.next_offset();
            let followed = tokio::select! {
                waited = self.control.wait_for_offset(0, next) => match waited {
                    Ok(()) => self.sync().await,
                    Err(error) => Err(error.into()),
                },
                _ = shutdown.changed() => return,
            };
            match followed {
                Ok(()) => backoff.reset(),
                Err(error) => {
                    tracing::warn!(%error, "cannot follow the control log; retrying in {:?}", backoff.next());
                    backoff.pause(&mut shutdown).await;
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Folded> {
        self.folded.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Folded> {
        self.folded.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies one control record. Steps out of order or repeated are ignored: the log's first
/// record of each step wins.
fn apply(campaigns: &mut BTreeMap<String, Arc<Campaign>>, offset: Offset, event: CampaignEvent) {
    if let CampaignEvent::Created { definition, at } = event {
        campaigns
            .entry(definition.campaign_id.clone())
            .or_insert_with(|| {
                Arc::new(Campaign {
                    definition,
                    created_at: at,
                    status: CampaignStatus::Open,
                    created_offset: offset,
                    intake_stopped: BTreeSet::new(),
                    close_offsets: None,
                    closed_at: None,
                    reconciliation: None,
                    retractions_at_close: None,
                })
            });
        return;
    }
    let Some(campaign) = campaigns.get_mut(event.campaign_id()) else {
        return;
    };
    let campaign = Arc::make_mut(campaign);
    match event {
        CampaignEvent::Created { .. } => unreachable!("handled above"),
        CampaignEvent::CloseRequested { .. } => {
            if campaign.status == CampaignStatus::Open {
                campaign.status = CampaignStatus::Closing;
            }
        }
        CampaignEvent::IntakeStopped { node_id, .. } => {
            if campaign.status == CampaignStatus::Closing && campaign.close_offsets.is_none() {
                campaign.intake_stopped.insert(node_id);
            }
        }
        CampaignEvent::CloseStarted { close_offsets, .. } => {
            if campaign.status != CampaignStatus::Closed && campaign.close_offsets.is_none() {
                campaign.status = CampaignStatus::Closing;
                campaign.close_offsets = Some(close_offsets);
            }
        }
        CampaignEvent::Closed {
            at, reconciliation, ..
        } => {
            if campaign.status == CampaignStatus::Closing && campaign.close_offsets.is_some() {
                campaign.status = CampaignStatus::Closed;
                campaign.closed_at = Some(at);
                campaign.reconciliation = Some(reconciliation);
            }
        }
        CampaignEvent::ClosedWithRetractions {
            at,
            reconciliation,
            retractions,
            ..
        } => {
            if campaign.status == CampaignStatus::Closing && campaign.close_offsets.is_some() {
                campaign.status = CampaignStatus::Closed;
                campaign.closed_at = Some(at);
                campaign.reconciliation = Some(reconciliation);
                campaign.retractions_at_close = Some(retractions);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(id: &str) -> CampaignDefinition {
        CampaignDefinition {
            campaign_id: id.into(),
            name: "Meals for kids".into(),
            currency: "USD".into(),
            goal_cents: Some(1_000_000),
            starts_at: None,
            ends_at: None,
        }
    }

    fn reconciliation() -> Reconciliation {
        Reconciliation {
            final_total_cents: 10,
            final_donations: 1,
            running_total_cents: 10,
            running_donations: 1,
            matched: true,
        }
    }

    #[tokio::test]
    async fn changes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let registry = CampaignRegistry::open_embedded(dir.path()).await.unwrap();
            registry
                .create(definition("meals"), EventTime(1))
                .await
                .unwrap();
            registry
                .create(definition("shelter"), EventTime(2))
                .await
                .unwrap();
            assert!(matches!(
                registry.create(definition("meals"), EventTime(3)).await,
                Err(CampaignError::AlreadyExists(_))
            ));
            registry.start_close("shelter", vec![5, 7]).await.unwrap();
            registry
                .finish_close(
                    "shelter",
                    reconciliation(),
                    RetractionsAtClose::default(),
                    EventTime(9),
                )
                .await
                .unwrap();
        }
        let registry = CampaignRegistry::open_embedded(dir.path()).await.unwrap();
        let campaigns = registry.list();
        assert_eq!(campaigns.len(), 2);
        assert_eq!(registry.get("meals").unwrap().status, CampaignStatus::Open);
        let shelter = registry.get("shelter").unwrap();
        assert_eq!(shelter.status, CampaignStatus::Closed);
        assert_eq!(shelter.close_offsets, Some(vec![5, 7]));
        assert!(shelter.reconciliation.unwrap().matched);
        assert!(matches!(
            registry.start_close("shelter", vec![]).await,
            Err(CampaignError::AlreadyClosed(_))
        ));
        assert!(matches!(
            registry.start_close("nope", vec![]).await,
            Err(CampaignError::NotFound(_))
        ));
    }

    fn every_kind() -> Vec<CampaignEvent> {
        vec![
            CampaignEvent::Created {
                definition: definition("meals"),
                at: EventTime(1),
            },
            CampaignEvent::CloseStarted {
                campaign_id: "meals".into(),
                close_offsets: vec![1, 2],
            },
            CampaignEvent::Closed {
                campaign_id: "meals".into(),
                at: EventTime(2),
                reconciliation: reconciliation(),
            },
            CampaignEvent::CloseRequested {
                campaign_id: "meals".into(),
                node_id: "a".into(),
            },
            CampaignEvent::IntakeStopped {
                campaign_id: "meals".into(),
                node_id: "a".into(),
            },
        ]
    }

    #[test]
    fn unversioned_and_version_1_records_decode_and_cannot_be_confused() {
        let kinds = every_kind();
        assert_eq!(kinds.len(), UNVERSIONED_CONTROL_KINDS as usize);
        for event in kinds {
            let unversioned = codec::encode(&event);
            assert!(unversioned[0] < UNVERSIONED_CONTROL_KINDS);
            assert_eq!(CampaignEvent::decode(&unversioned).unwrap(), event);
            let versioned = event.encode();
            assert_eq!(versioned[..2], [codec::VERSION_MARKER, 1]);
            assert_eq!(CampaignEvent::decode(&versioned).unwrap(), event);
        }
    }

    #[tokio::test]
    async fn a_record_of_a_newer_version_is_a_typed_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let registry = CampaignRegistry::open_embedded(dir.path()).await.unwrap();
        registry
            .create(definition("meals"), EventTime(1))
            .await
            .unwrap();
        let newer = KeyedRecord {
            key: b"meals".to_vec(),
            value: vec![codec::VERSION_MARKER, 2, 0, 0, 0, 0],
        };
        registry.control().append(0, vec![newer]).await.unwrap();
        match registry.sync().await {
            Err(CampaignError::Undecodable {
                offset: 1,
                source: FormatError::UnknownVersion { version: 2, .. },
            }) => {}
            other => panic!("expected an unknown version, got {other:?}"),
        }
        assert!(registry.get("meals").is_some(), "what came before stays");
    }

    /// Two registries over one control log stand for two nodes.
    #[tokio::test]
    async fn two_nodes_agree_on_one_winner_at_every_step_of_a_close() {
        let dir = tempfile::tempdir().unwrap();
        let a = CampaignRegistry::open_embedded(dir.path()).await.unwrap();
        let b = CampaignRegistry::open(Arc::clone(a.control()))
            .await
            .unwrap();
        a.create(definition("meals"), EventTime(1)).await.unwrap();
        // b has not folded it yet, but a fresh look-up finds it; creating it again loses.
        assert!(b.get_fresh("meals").await.unwrap().is_some());
        assert!(matches!(
            b.create(definition("meals"), EventTime(2)).await,
            Err(CampaignError::AlreadyExists(_))
        ));

        let closing = a.request_close("meals", "a").await.unwrap();
        assert_eq!(closing.status, CampaignStatus::Closing);
        b.sync().await.unwrap();
        assert_eq!(b.get("meals").unwrap().status, CampaignStatus::Closing);
        assert_eq!(b.intake_to_stop("b"), vec!["meals".to_owned()]);
        b.confirm_intake_stopped("meals", "b").await.unwrap();
        a.confirm_intake_stopped("meals", "a").await.unwrap();
        assert!(a.intake_to_stop("a").is_empty());
        let stopped = &a.get("meals").unwrap().intake_stopped;
        assert_eq!(stopped.iter().cloned().collect::<Vec<_>>(), vec!["a", "b"]);

        // Racing close points: the first in the log wins on both nodes.
        let first = a.start_close("meals", vec![4, 4]).await.unwrap();
        let second = b.start_close("meals", vec![9, 9]).await.unwrap();
        assert_eq!(first.close_offsets, Some(vec![4, 4]));
        assert_eq!(second.close_offsets, Some(vec![4, 4]));
        let closed = b
            .finish_close(
                "meals",
                reconciliation(),
                RetractionsAtClose::default(),
                EventTime(5),
            )
            .await
            .unwrap();
        assert_eq!(closed.status, CampaignStatus::Closed);
        a.sync().await.unwrap();
        assert_eq!(
            a.get("meals").unwrap().reconciliation,
            Some(reconciliation())
        );
    }
}
