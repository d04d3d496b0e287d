//! The stream operators, one per file, named for what they compute. Each keeps the state of one
//! partition and tracks what changed since the last checkpoint.
//!
//! - [`dedupe`]: recorded donations by `payment_ref`; duplicates and conflicts.
//! - [`campaign_totals`]: per-campaign total cents and donation count.
//! - [`event_time_windows`]: minute, hour and day buckets of `paid_at` per campaign.
//! - [`amount_histogram`]: the mergeable amount histogram inside each bucket.
//! - [`watermark`]: how far event time has progressed; late donations.
//! - [`conflict_audit`]: what a conflicting resend looked like.
//! - [`retractions`]: refunds and chargebacks, applied once each, within their donation.

pub mod amount_histogram;
pub mod campaign_totals;
pub mod conflict_audit;
pub mod dedupe;
pub mod event_time_windows;
pub mod retractions;
pub mod watermark;
