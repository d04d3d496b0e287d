//! Per-campaign running totals of one partition: total cents and donation count.
//!
//! Each partition keeps its own totals and a reader sums the partitions, so one hot campaign is
//! not one hot key.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignTotal {
    pub total_cents: u64,
    pub donations: u64,
}

impl CampaignTotal {
    pub fn add(&mut self, other: CampaignTotal) {
        self.total_cents += other.total_cents;
        self.donations += other.donations;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignTotals {
    totals: BTreeMap<String, CampaignTotal>,
    dirty: BTreeSet<String>,
}

impl CampaignTotals {
    pub fn from_totals(totals: impl IntoIterator<Item = (String, CampaignTotal)>) -> Self {
        Self {
            totals: totals.into_iter().collect(),
            dirty: BTreeSet::new(),
        }
    }

    pub fn record(&mut self, campaign_id: &str, amount_cents: u64) {
        match self.totals.get_mut(campaign_id) {
            Some(total) => {
                total.total_cents += amount_cents;
                total.donations += 1;
            }
            None => {
                self.totals.insert(
                    campaign_id.to_owned(),
                    CampaignTotal {
                        total_cents: amount_cents,
                        donations: 1,
                    },
                );
            }
        }
        if !self.dirty.contains(campaign_id) {
            self.dirty.insert(campaign_id.to_owned());
        }
    }

    pub fn get(&self, campaign_id: &str) -> Option<CampaignTotal> {
        self.totals.get(campaign_id).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &CampaignTotal)> {
        self.totals.iter()
    }

    /// Campaigns changed since the last call, with their current totals.
    pub fn take_dirty(&mut self) -> Vec<(String, CampaignTotal)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|campaign_id| {
                let total = self.totals[&campaign_id];
                (campaign_id, total)
            })
            .collect()
    }
}
