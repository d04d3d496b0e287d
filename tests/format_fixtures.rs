//! Guards format compatibility: files written by format version 1 (committed under
//! `tests/fixtures/`) must still be read by this build, byte for byte.
//!
//! The fixtures were written once by `regenerate_v1_fixtures` (run with
//! `TALLY_WRITE_FIXTURES=1 cargo test --test format_fixtures -- --ignored`); they must never be
//! regenerated for version 1. A new format version adds new fixtures beside them.

mod support;

use support::{copy_dir, fixtures, read_all};
use tally_pipeline::event::refund::{RefundEvent, RetractionKind};
use tally_pipeline::event::{DonationEvent, EventTime, LogEvent, envelope};
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, KeyedRecord};

fn event(i: u64) -> DonationEvent {
    DonationEvent {
        payment_ref: format!("pay_{i:04}"),
        order_id: format!("ord_{i:04}"),
        user_id: format!("usr_{}", i % 3),
        campaign_id: if i.is_multiple_of(4) {
            "food-bank".into()
        } else {
            "meals-for-kids".into()
        },
        amount_cents: 100 + i * 37,
        currency: "USD".into(),
        paid_at: EventTime(1_795_546_800_000 + i as i64 * 61_001),
    }
}

const LOG_FIXTURE_EVENTS: u64 = 12;

#[test]
fn donation_event_v1_fixture_decodes_and_reencodes() {
    let bytes = std::fs::read(fixtures().join("donation_event_v1.bin")).unwrap();
    assert_eq!(bytes[0], 1, "format version byte");
    assert_eq!(envelope::decode(&bytes).unwrap(), event(7));
    assert_eq!(
        envelope::encode(&event(7)),
        bytes,
        "version 1 encoding changed"
    );
}

/// The refund of the fixtures: a chargeback of part of `event(7)`.
fn refund() -> RefundEvent {
    RefundEvent {
        refund_ref: "re_000007".into(),
        payment_ref: event(7).payment_ref,
        amount_cents: 40,
        kind: RetractionKind::Chargeback,
        refunded_at: EventTime(1_795_550_400_250),
    }
}

#[test]
fn refund_event_v1_fixture_decodes_and_reencodes() {
    let path = fixtures().join("refund_event_v1.bin");
    if std::env::var("TALLY_WRITE_REFUND_FIXTURE").as_deref() == Ok("1") {
        std::fs::write(&path, envelope::keyed_refund_record(&refund()).value).unwrap();
    }
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes[0], 2, "the refund envelope's version byte");
    assert_eq!(
        envelope::decode_event(&bytes).unwrap(),
        LogEvent::Refund(refund())
    );
    let record = envelope::keyed_refund_record(&refund());
    assert_eq!(
        record.value, bytes,
        "the refund envelope's encoding changed"
    );
    assert_eq!(
        record.key,
        refund().payment_ref.into_bytes(),
        "keyed by its payment"
    );
}

#[test]
fn log_directory_v1_fixture_opens_and_reads() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("log_v1"), copy.path());
    let log = EmbeddedLog::open(copy.path(), EmbeddedLogOptions::default()).unwrap();
    let mut events: Vec<DonationEvent> = (0..2)
        .flat_map(|partition| read_all(&log, partition))
        .map(|record| envelope::decode(&record.value).unwrap())
        .collect();
    events.sort_by(|a, b| a.payment_ref.cmp(&b.payment_ref));
    let expected: Vec<DonationEvent> = (0..LOG_FIXTURE_EVENTS).map(event).collect();
    assert_eq!(events, expected);
    log.verify().unwrap();
}

#[test]
#[ignore = "writes the version 1 fixtures; run only to create them"]
fn regenerate_v1_fixtures() {
    if std::env::var("TALLY_WRITE_FIXTURES").as_deref() != Ok("1") {
        return;
    }
    std::fs::write(
        fixtures().join("donation_event_v1.bin"),
        envelope::encode(&event(7)),
    )
    .unwrap();
    let dir = fixtures().join("log_v1");
    let options = EmbeddedLogOptions {
        partition_count: 2,
        ..Default::default()
    };
    let log = EmbeddedLog::open(&dir, options).unwrap();
    for i in 0..LOG_FIXTURE_EVENTS {
        let event = event(i);
        let key = event.payment_ref.clone().into_bytes();
        let partition = tally_pipeline::log::Partitioner::new(2).partition_for_key(&key);
        let value = envelope::encode(&event);
        log.append_blocking(partition, vec![KeyedRecord { key, value }])
            .unwrap();
    }
    drop(log);
    std::fs::remove_file(dir.join("LOCK")).unwrap();
}
