//! The JSON bodies of the API's successful answers, which the server writes and clients read.
//! Times are RFC 3339 strings; money is integer cents. Fields serialize in the order declared
//! here, which is the order on the wire: reorder nothing.
//!
//! The server builds them from its state (`tally_query::views`, `tally_ingest::routes`); this
//! crate knows no state, so the types carry plain values only.

use serde::{Deserialize, Serialize};

/// A log partition, as the API reports it (the pipeline's `PartitionId`).
pub type PartitionId = u32;
/// A record's position in its partition, as the API reports it (the pipeline's `Offset`).
pub type Offset = u64;

/// `POST /v1/donations`, 202: where the donation is, durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Always `accepted`.
    pub status: String,
    pub payment_ref: String,
    pub partition: PartitionId,
    pub offset: Offset,
}

/// `POST /v1/donations/batch`, 200: each item accepted with its place, or rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub accepted: usize,
    pub rejected: Vec<BatchRejection>,
    pub results: Vec<BatchResult>,
}

/// A batch item refused, with the code and field a single request would have answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRejection {
    pub index: usize,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// A batch item recorded, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    pub index: usize,
    pub payment_ref: String,
    pub partition: PartitionId,
    pub offset: Offset,
}

/// How fresh the totals are: what the operators applied against what the log holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    pub applied_offsets: Vec<Offset>,
    pub log_end_offsets: Vec<Offset>,
    pub lag_records: u64,
    /// Time since the oldest partition that is behind last committed; 0 when none is behind.
    pub lag_ms: i64,
    /// False while the log does not answer: `log_end_offsets` are then the ones last read.
    pub log_reachable: bool,
}

/// `GET /v1/campaigns/{campaign_id}` (with `freshness`), and each item of `GET /v1/campaigns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignView {
    pub campaign_id: String,
    pub name: String,
    pub currency: String,
    pub goal_cents: Option<u64>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    /// `open` or `closed`.
    pub status: String,
    /// The net total: every donation recorded, less the refunds and chargebacks applied.
    pub total_cents: u64,
    /// Donations recorded (refunded ones included).
    pub donations: u64,
    pub created_at: String,
    pub closed_at: Option<String>,
    pub reconciliation: Option<Reconciliation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
    /// Every donation recorded, before refunds and chargebacks.
    #[serde(default)]
    pub gross_cents: u64,
    /// Taken back by refunds and chargebacks (chargebacks included).
    #[serde(default)]
    pub refunded_cents: u64,
    /// Refunds and chargebacks applied.
    #[serde(default)]
    pub refunds: u64,
    /// The part of `refunded_cents` that chargebacks took.
    #[serde(default)]
    pub chargeback_cents: u64,
    #[serde(default)]
    pub chargebacks: u64,
    /// `gross_cents - refunded_cents`: the same as `total_cents`.
    #[serde(default)]
    pub net_cents: u64,
    /// Once closed: refunds and chargebacks applied after the close, which the reconciled final
    /// total does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustments: Option<Adjustments>,
}

/// What changed a closed campaign's money after its close: refunds and chargebacks of its
/// donations, recorded as post-close adjustments. The reconciled final total stays as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustments {
    pub refunded_cents: u64,
    pub refunds: u64,
    /// The net total after them: the final net total less the adjustments.
    pub net_after_cents: u64,
}

/// `POST /v1/refunds`, 202: where the refund or chargeback is, durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAccepted {
    /// Always `accepted`.
    pub status: String,
    pub refund_ref: String,
    pub payment_ref: String,
    pub partition: PartitionId,
    pub offset: Offset,
}

/// `POST /v1/refunds/batch`, 200: each item accepted with its place, or rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundBatchOutcome {
    pub accepted: usize,
    pub rejected: Vec<BatchRejection>,
    pub results: Vec<RefundBatchResult>,
}

/// A batch refund recorded, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundBatchResult {
    pub index: usize,
    pub refund_ref: String,
    pub payment_ref: String,
    pub partition: PartitionId,
    pub offset: Offset,
}

/// A closed campaign's total recomputed from the donation records, against the running total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub final_total_cents: u64,
    pub final_donations: u64,
    pub running_total_cents: u64,
    pub running_donations: u64,
    /// Whether the two agree.
    pub matched: bool,
    /// For a campaign that had refunds or chargebacks by its close: them, reconciled too.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub refunds: Option<ReconciledRefunds>,
}

/// The refunds and chargebacks a close recomputed from the log below its close point, and the
/// net final total they leave, against what the operators kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconciledRefunds {
    pub final_refunded_cents: u64,
    pub final_refunds: u64,
    pub final_chargeback_cents: u64,
    pub final_chargebacks: u64,
    /// `final_total_cents - final_refunded_cents`.
    pub final_net_cents: u64,
    pub running_refunded_cents: u64,
    pub running_refunds: u64,
    /// Whether the operators' refunds agree with the log's at the offsets they reflect.
    pub refunds_matched: bool,
}

/// `GET /v1/campaigns/{campaign_id}/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub campaign_id: String,
    pub from: String,
    pub to: String,
    /// The finest buckets still held from `from` on: `minute`, `hour` or `day`.
    pub resolution: String,
    pub count: u64,
    pub sum_cents: u64,
    pub min_cents: Option<u64>,
    pub max_cents: Option<u64>,
    pub mean_cents: Option<u64>,
    pub p50_cents: Option<u64>,
    pub p90_cents: Option<u64>,
    pub p99_cents: Option<u64>,
    pub complete_through: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<SeriesPointView>>,
    /// Refunds and chargebacks of the campaign applied with `refunded_at` in the range.
    #[serde(default)]
    pub refunds: u64,
    #[serde(default)]
    pub refunded_cents: u64,
}

/// One bucket of a statistics series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPointView {
    pub start: String,
    pub count: u64,
    pub sum_cents: u64,
    /// Refunds and chargebacks with `refunded_at` in the bucket.
    #[serde(default)]
    pub refunds: u64,
    #[serde(default)]
    pub refunded_cents: u64,
}

/// A donor notification of a refund or chargeback applied to their donation: the retraction,
/// with the donation's campaign, donor and order, and where the retraction is in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNotification {
    pub refund_ref: String,
    pub payment_ref: String,
    /// `refund` or `chargeback`.
    pub kind: String,
    pub amount_cents: u64,
    pub currency: String,
    pub refunded_at: String,
    pub campaign_id: String,
    pub order_id: String,
    pub user_id: String,
    pub partition: PartitionId,
    pub offset: Offset,
}

/// A donation as the log records it, and where: the shape both the donation lookup and donor
/// notifications answer with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDonation {
    pub payment_ref: String,
    pub order_id: String,
    pub user_id: String,
    pub campaign_id: String,
    pub amount_cents: u64,
    pub currency: String,
    pub paid_at: String,
    pub partition: PartitionId,
    pub offset: Offset,
}

/// `GET /v1/donations/{payment_ref}`: a recorded donation, with how often its payment was sent
/// again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DonationView {
    #[serde(flatten)]
    pub donation: RecordedDonation,
    pub recorded_at: String,
    pub duplicates: u32,
    pub conflicts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_donation_view_is_flat_on_the_wire_and_reads_back() {
        let view = DonationView {
            donation: RecordedDonation {
                payment_ref: "pay_1".into(),
                order_id: "ord_1".into(),
                user_id: "usr_1".into(),
                campaign_id: "meals".into(),
                amount_cents: 100,
                currency: "USD".into(),
                paid_at: "2026-11-24T18:30:00Z".into(),
                partition: 3,
                offset: 17,
            },
            recorded_at: "2026-11-24T18:30:01Z".into(),
            duplicates: 1,
            conflicts: 0,
        };
        let json = serde_json::to_string(&view).unwrap();
        assert_eq!(
            json,
            r#"{"payment_ref":"pay_1","order_id":"ord_1","user_id":"usr_1","campaign_id":"meals","amount_cents":100,"currency":"USD","paid_at":"2026-11-24T18:30:00Z","partition":3,"offset":17,"recorded_at":"2026-11-24T18:30:01Z","duplicates":1,"conflicts":0}"#
        );
        assert_eq!(serde_json::from_str::<DonationView>(&json).unwrap(), view);
    }

    #[test]
    fn a_campaign_view_without_freshness_leaves_it_out_and_reads_back() {
        let json = r#"{"campaign_id":"meals","name":"Meals","currency":"USD","goal_cents":null,"starts_at":null,"ends_at":null,"status":"open","total_cents":0,"donations":0,"created_at":"2026-11-24T18:00:00Z","closed_at":null,"reconciliation":null}"#;
        let view: CampaignView = serde_json::from_str(json).unwrap();
        assert_eq!(view.freshness, None);
        assert_eq!(
            view.gross_cents, 0,
            "a view from before refunds reads as having none"
        );
        let written = serde_json::to_string(&view).unwrap();
        let refunds = r#","gross_cents":0,"refunded_cents":0,"refunds":0,"chargeback_cents":0,"chargebacks":0,"net_cents":0}"#;
        assert_eq!(written, format!("{}{refunds}", &json[..json.len() - 1]));
        assert_eq!(
            serde_json::from_str::<CampaignView>(&written).unwrap(),
            view
        );
    }
}

/// `GET /v1/ops`: what the operator's view shows, from this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpsView {
    pub at: String,
    pub node_id: String,
    /// False while the log does not answer: the log ends are then the ones last read.
    pub log_reachable: bool,
    pub partitions: Vec<PartitionOpsView>,
    /// Counters since this node started; a reader takes differences for rates.
    pub counters: OpsCounters,
    /// `auto`, `explicit` or `alone`, as `GET /v1/cluster` says.
    pub ownership: String,
    /// The live nodes and what each runs (this node alone on the embedded log).
    pub nodes: Vec<OpsNodeView>,
}

/// A live node in [`OpsView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpsNodeView {
    pub node_id: String,
    pub advertise: String,
    pub partitions: Vec<PartitionId>,
    /// Since this node last heard from it; 0 for this node itself.
    pub last_heard_ms_ago: i64,
}

/// One partition in [`OpsView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionOpsView {
    pub partition: PartitionId,
    pub log_end_offset: Offset,
    pub applied_offset: Offset,
    pub lag_records: u64,
    /// Time since the partition last committed, while it is behind; 0 when it is not.
    pub lag_ms: i64,
    /// Time since its last checkpoint; none before the first.
    pub checkpoint_age_s: Option<f64>,
    /// Whether this node runs it (on a shared log, others run the rest).
    pub runs_here: bool,
    /// The node running it, where one is known.
    pub owner: Option<String>,
}

/// Monotonic counters of one node, in [`OpsView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpsCounters {
    pub appended_records: u64,
    pub responses_2xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub rate_limited: u64,
    pub recorded: u64,
    pub duplicates: u64,
    pub conflicts: u64,
}
