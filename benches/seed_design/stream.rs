//! The event stream every system gets, built once from the load generator's traffic model.

use std::collections::BTreeMap;

use anyhow::Context;
use tally_loadgen::ground_truth::SentDonation;
use tally_loadgen::traffic::{Body, Planned, ResendTiming, Traffic, TrafficConfig};

/// A "later" resend's delay, in seconds of the rush, becomes this many checkouts of queue
/// between it and its donation: 1–30 s puts it 100–3,000 checkouts behind, long after the
/// donation was acknowledged.
const LATER_RESEND_CHECKOUTS_PER_S: u64 = 100;

/// What a callback is for the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A payment's first callback.
    Original,
    /// The same callback again: counts nothing more.
    Resend,
    /// The same `payment_ref` with another amount: counts nothing.
    Conflict,
}

/// One callback, in the forms the systems under test take it.
#[derive(Debug)]
pub struct Event {
    pub kind: Kind,
    pub payment_ref: String,
    pub order_id: String,
    pub user_id: String,
    pub campaign_id: String,
    pub amount_cents: u64,
    /// RFC 3339, as in the body.
    pub paid_at: String,
    pub paid_at_ms: i64,
    /// The JSON body tally receives.
    pub body: String,
}

impl Event {
    fn from_body(kind: Kind, encoded: &Body, paid_at_ms: i64) -> anyhow::Result<Self> {
        let body = &encoded.to_json();
        let text = |field: &str| {
            body[field]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("traffic body without {field}: {body}"))
        };
        Ok(Self {
            kind,
            payment_ref: text("payment_ref")?,
            order_id: text("order_id")?,
            user_id: text("user_id")?,
            campaign_id: text("campaign_id")?,
            amount_cents: body["amount_cents"]
                .as_u64()
                .with_context(|| format!("traffic body without amount_cents: {body}"))?,
            paid_at: text("paid_at")?,
            paid_at_ms,
            body: encoded.to_string(),
        })
    }

    /// The donation as the ground truth counts it.
    pub fn donation(&self) -> SentDonation {
        SentDonation {
            payment_ref: self.payment_ref.clone(),
            campaign_id: self.campaign_id.clone(),
            amount_cents: self.amount_cents,
            paid_at_ms: self.paid_at_ms,
        }
    }
}

/// Callbacks one worker sends one after the other: a donation, then its immediate resend or
/// its conflicting resend — the conflict only once the donation was acknowledged, so the
/// amount recorded first is always the donation's; or a lone resend (concurrent or later).
#[derive(Debug, Default)]
pub struct Unit {
    pub events: Vec<Event>,
}

/// Where an event is in the stream.
#[derive(Debug, Clone, Copy)]
pub struct EventIndex {
    pub unit: usize,
    pub position: usize,
}

/// How the stream was made up.
#[derive(Debug, Default)]
pub struct Counts {
    pub checkouts: usize,
    pub donations: usize,
    pub resends_immediate: usize,
    pub resends_concurrent: usize,
    pub resends_later: usize,
    pub conflicts: usize,
    pub invalid_left_out: usize,
}

impl Counts {
    pub fn callbacks(&self) -> usize {
        self.donations
            + self.resends_immediate
            + self.resends_concurrent
            + self.resends_later
            + self.conflicts
    }
}

/// The queue of units, in the order workers take them.
#[derive(Debug)]
pub struct Stream {
    pub units: Vec<Unit>,
    pub campaigns: Vec<String>,
    pub counts: Counts,
    pub seed: u64,
}

impl Stream {
    pub fn event(&self, index: EventIndex) -> &Event {
        &self.units[index.unit].events[index.position]
    }
}

/// The stream of `checkouts` checkouts from `seed`. A concurrent resend is queued right
/// behind its donation's unit, so another worker takes it at the same moment.
pub fn generate(checkouts: usize, seed: u64) -> anyhow::Result<Stream> {
    // The seed design has no refunds: the comparison replays donations only.
    let config = TrafficConfig {
        seed,
        refund_share: 0.0,
        ..TrafficConfig::default()
    };
    let campaigns = config.campaigns.clone();
    let mut traffic = Traffic::new(config);
    let now_ms = super::now_ms();
    let mut counts = Counts {
        checkouts,
        ..Counts::default()
    };
    let mut units = Vec::new();
    let mut later: BTreeMap<usize, Vec<Unit>> = BTreeMap::new();
    for checkout in 0..checkouts {
        let mut checkout_units: Vec<Unit> = Vec::new();
        let mut behind: Vec<Unit> = Vec::new();
        for planned in traffic.checkout(now_ms) {
            match planned {
                Planned::Donation(donation, body) => {
                    counts.donations += 1;
                    let event = Event::from_body(Kind::Original, &body, donation.paid_at_ms)?;
                    checkout_units.push(Unit {
                        events: vec![event],
                    });
                }
                Planned::Resend { of, body, timing } => {
                    let event = Event::from_body(Kind::Resend, &body, of.paid_at_ms)?;
                    let lone = Unit {
                        events: vec![event],
                    };
                    match timing {
                        ResendTiming::Immediate => {
                            counts.resends_immediate += 1;
                            unit_of(&mut checkout_units, &of.payment_ref)
                                .events
                                .extend(lone.events);
                        }
                        ResendTiming::Concurrent => {
                            counts.resends_concurrent += 1;
                            behind.push(lone);
                        }
                        ResendTiming::Later { delay_ms } => {
                            counts.resends_later += 1;
                            let distance = delay_ms * LATER_RESEND_CHECKOUTS_PER_S / 1000;
                            later
                                .entry(checkout + distance as usize)
                                .or_default()
                                .push(lone);
                        }
                    }
                }
                Planned::Conflict { payment_ref, body } => {
                    counts.conflicts += 1;
                    let unit = unit_of(&mut checkout_units, &payment_ref);
                    let paid_at_ms = unit.events.first().map_or(now_ms, |e| e.paid_at_ms);
                    let event = Event::from_body(Kind::Conflict, &body, paid_at_ms)?;
                    unit.events.push(event);
                }
                Planned::Invalid { .. } => counts.invalid_left_out += 1,
                Planned::Refund { .. } | Planned::RefundResend { .. } => {
                    unreachable!("the stream is generated without refunds")
                }
            }
        }
        units.extend(checkout_units);
        units.extend(behind);
        units.extend(later.remove(&checkout).into_iter().flatten());
    }
    units.extend(later.into_values().flatten());
    Ok(Stream {
        units,
        campaigns,
        counts,
        seed,
    })
}

/// The unit of this checkout that holds `payment_ref`'s donation.
fn unit_of<'a>(units: &'a mut [Unit], payment_ref: &str) -> &'a mut Unit {
    let position = units
        .iter()
        .position(|unit| unit.events[0].payment_ref == payment_ref);
    // The traffic model plans a resend or a conflict only for a donation of the same checkout.
    let position = position.expect("a resend follows its donation in one checkout");
    &mut units[position]
}
