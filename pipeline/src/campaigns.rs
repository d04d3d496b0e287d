//! Campaigns: what donations may be given to, and the reconciled final total of a closed one.
//!
//! Campaign definitions are not derived from donations, so they have a log of their own: the
//! control log (`<data-dir>/control/`, an embedded log of one partition). Every change — created,
//! closing, closed — is appended there durably before it takes effect, and replaying it on start
//! gives the registry back. Like the donation log, it is a record of truth.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::event::EventTime;
use crate::log::{EmbeddedLog, EmbeddedLogOptions, KeyedRecord, LogError, Offset};

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

/// A campaign as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub definition: CampaignDefinition,
    pub created_at: EventTime,
    pub status: CampaignStatus,
    /// Per partition, the log end when the campaign stopped accepting donations.
    pub close_offsets: Option<Vec<Offset>>,
    pub closed_at: Option<EventTime>,
    pub reconciliation: Option<Reconciliation>,
}

/// One change to the registry, as stored in the control log.
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
    #[error("control log record {offset} does not decode: {reason}")]
    Undecodable { offset: Offset, reason: String },
}

/// Campaigns by id, backed by the control log.
#[derive(Debug)]
pub struct CampaignRegistry {
    control: EmbeddedLog,
    /// Shared snapshots: a look-up on the ingest path is a reference count, not a copy.
    campaigns: RwLock<BTreeMap<String, Arc<Campaign>>>,
}

/// Control records replayed per read.
const REPLAY_BATCH: usize = 1024;

impl CampaignRegistry {
    /// Opens (creating if needed) the control log in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<Self, CampaignError> {
        let options = EmbeddedLogOptions {
            partition_count: 1,
            ..EmbeddedLogOptions::default()
        };
        let control = EmbeddedLog::open(dir, options)?;
        let mut campaigns = BTreeMap::new();
        let partition = control.partition(0)?;
        let mut next = 0;
        loop {
            let records = partition.read(next, REPLAY_BATCH)?;
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in records {
                let event: CampaignEvent =
                    codec::decode(&record.value).map_err(|e| CampaignError::Undecodable {
                        offset: record.offset,
                        reason: e.to_string(),
                    })?;
                apply(&mut campaigns, event);
            }
        }
        Ok(Self {
            control,
            campaigns: RwLock::new(campaigns),
        })
    }

    pub fn get(&self, campaign_id: &str) -> Option<Arc<Campaign>> {
        self.read().get(campaign_id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Campaign>> {
        self.read().values().cloned().collect()
    }

    /// Creates a campaign, durably.
    pub fn create(
        &self,
        definition: CampaignDefinition,
        now: EventTime,
    ) -> Result<Campaign, CampaignError> {
        let mut campaigns = self.write();
        if campaigns.contains_key(&definition.campaign_id) {
            return Err(CampaignError::AlreadyExists(definition.campaign_id));
        }
        let campaign_id = definition.campaign_id.clone();
        self.record(
            &mut campaigns,
            CampaignEvent::Created {
                definition,
                at: now,
            },
        )?;
        Ok(Campaign::clone(&campaigns[&campaign_id]))
    }

    /// Stops a campaign accepting donations, durably, noting the log end offsets at that moment.
    /// The caller guarantees no donation for it is being appended while this runs.
    pub fn start_close(
        &self,
        campaign_id: &str,
        close_offsets: Vec<Offset>,
    ) -> Result<Campaign, CampaignError> {
        let mut campaigns = self.write();
        let campaign = campaigns
            .get(campaign_id)
            .ok_or_else(|| CampaignError::NotFound(campaign_id.to_owned()))?;
        match campaign.status {
            CampaignStatus::Open => {}
            CampaignStatus::Closing => return Ok(Campaign::clone(campaign)),
            CampaignStatus::Closed => {
                return Err(CampaignError::AlreadyClosed(campaign_id.to_owned()));
            }
        }
        let event = CampaignEvent::CloseStarted {
            campaign_id: campaign_id.to_owned(),
            close_offsets,
        };
        self.record(&mut campaigns, event)?;
        Ok(Campaign::clone(&campaigns[campaign_id]))
    }

    /// Records the reconciled final total of a closing campaign, durably.
    pub fn finish_close(
        &self,
        campaign_id: &str,
        reconciliation: Reconciliation,
        now: EventTime,
    ) -> Result<Campaign, CampaignError> {
        let mut campaigns = self.write();
        let campaign = campaigns
            .get(campaign_id)
            .ok_or_else(|| CampaignError::NotFound(campaign_id.to_owned()))?;
        if campaign.status != CampaignStatus::Closing {
            return Err(CampaignError::WrongStatus {
                campaign_id: campaign_id.to_owned(),
                status: campaign.status.as_str(),
                expected: CampaignStatus::Closing.as_str(),
            });
        }
        let event = CampaignEvent::Closed {
            campaign_id: campaign_id.to_owned(),
            at: now,
            reconciliation,
        };
        self.record(&mut campaigns, event)?;
        Ok(Campaign::clone(&campaigns[campaign_id]))
    }

    fn record(
        &self,
        campaigns: &mut BTreeMap<String, Arc<Campaign>>,
        event: CampaignEvent,
    ) -> Result<(), CampaignError> {
        let key = match &event {
            CampaignEvent::Created { definition, .. } => definition.campaign_id.clone(),
            CampaignEvent::CloseStarted { campaign_id, .. }
            | CampaignEvent::Closed { campaign_id, .. } => campaign_id.clone(),
        };
        let record = KeyedRecord {
            key: key.into_bytes(),
            value: codec::encode(&event),
        };
        self.control.append_blocking(0, vec![record])?;
        apply(campaigns, event);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Campaign>>> {
        self.campaigns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Campaign>>> {
        self.campaigns
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn apply(campaigns: &mut BTreeMap<String, Arc<Campaign>>, event: CampaignEvent) {
    match event {
        CampaignEvent::Created { definition, at } => {
            campaigns.insert(
                definition.campaign_id.clone(),
                Arc::new(Campaign {
                    definition,
                    created_at: at,
                    status: CampaignStatus::Open,
                    close_offsets: None,
                    closed_at: None,
                    reconciliation: None,
                }),
            );
        }
        CampaignEvent::CloseStarted {
            campaign_id,
            close_offsets,
        } => {
            if let Some(campaign) = campaigns.get_mut(&campaign_id) {
                let campaign = Arc::make_mut(campaign);
                campaign.status = CampaignStatus::Closing;
                campaign.close_offsets = Some(close_offsets);
            }
        }
        CampaignEvent::Closed {
            campaign_id,
            at,
            reconciliation,
        } => {
            if let Some(campaign) = campaigns.get_mut(&campaign_id) {
                let campaign = Arc::make_mut(campaign);
                campaign.status = CampaignStatus::Closed;
                campaign.closed_at = Some(at);
                campaign.reconciliation = Some(reconciliation);
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

    #[test]
    fn changes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let registry = CampaignRegistry::open(dir.path()).unwrap();
            registry.create(definition("meals"), EventTime(1)).unwrap();
            registry
                .create(definition("shelter"), EventTime(2))
                .unwrap();
            assert!(matches!(
                registry.create(definition("meals"), EventTime(3)),
                Err(CampaignError::AlreadyExists(_))
            ));
            registry.start_close("shelter", vec![5, 7]).unwrap();
            let reconciliation = Reconciliation {
                final_total_cents: 10,
                final_donations: 1,
                running_total_cents: 10,
                running_donations: 1,
                matched: true,
            };
            registry
                .finish_close("shelter", reconciliation, EventTime(9))
                .unwrap();
        }
        let registry = CampaignRegistry::open(dir.path()).unwrap();
        let campaigns = registry.list();
        assert_eq!(campaigns.len(), 2);
        assert_eq!(registry.get("meals").unwrap().status, CampaignStatus::Open);
        let shelter = registry.get("shelter").unwrap();
        assert_eq!(shelter.status, CampaignStatus::Closed);
        assert_eq!(shelter.close_offsets, Some(vec![5, 7]));
        assert!(shelter.reconciliation.unwrap().matched);
        assert!(matches!(
            registry.start_close("shelter", vec![]),
            Err(CampaignError::AlreadyClosed(_))
        ));
        assert!(matches!(
            registry.start_close("nope", vec![]),
            Err(CampaignError::NotFound(_))
        ));
    }
}
