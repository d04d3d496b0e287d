//! Guards the one mapping of log failures to answers: a failure that may pass by itself is a
//! 503 with `Retry-After` (a log away, a full disk, a partition recovering itself after a failed
//! sync); one that needs an operator (a damaged log, lost records, an I/O error) is a 500 with its own code and no `Retry-After`, since retrying cannot help.

mod support;

use std::path::PathBuf;

use support::{Ingest, donation};
use tally_pipeline::log::LogError;

#[tokio::test]
async fn a_failure_that_needs_an_operator_is_a_500_without_retry_after() {
    let ingest = Ingest::start(false).await;
    ingest.create_campaign("meals").await;
    let accepted = ingest
        .post("/v1/donations", &donation("pay-0", "meals"))
        .await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);

    let cases: [(support::Failure, u16, &str); 6] = [
        (corruption, 500, "log_corrupted"),
        (records_lost, 500, "records_lost"),
        (io_error, 500, "log_failed"),
        // A partition whose write or sync failed recovers itself from disk before its next
        // append: retrying helps.
        (partition_failed, 503, "log_unavailable"),
        (unavailable, 503, "log_unavailable"),
        (|| LogError::Closed, 503, "log_unavailable"),
    ];
    for (failure, status, code) in cases {
        ingest.log.fail_with(Some(failure));
        let label = failure().to_string();
        for path in ["/v1/donations", "/v1/donations/batch"] {
            let body = match path {
                "/v1/donations" => donation("pay-1", "meals"),
                _ => [b"[".as_slice(), &donation("pay-1", "meals"), b"]"].concat(),
            };
            let answer = ingest.post(path, &body).await;
            assert_eq!(
                (answer.status, answer.code()),
                (status, code),
                "{path} {label}: {:?}",
                answer.body
            );
            match status {
                503 => assert_eq!(answer.retry_after.as_deref(), Some("1"), "{label}"),
                _ => assert_eq!(answer.retry_after, None, "{label}"),
            }
        }
    }

    ingest.log.fail_with(None);
    let accepted = ingest
        .post("/v1/donations", &donation("pay-1", "meals"))
        .await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
}

fn corruption() -> LogError {
    LogError::Corruption {
        path: PathBuf::from("partition-000/00000000000000000000.seg"),
        position: 4096,
        reason: "checksum mismatch".into(),
    }
}

fn records_lost() -> LogError {
    LogError::RecordsLost {
        partition: 0,
        offset: 7,
        reason: "the end went back".into(),
    }
}

fn io_error() -> LogError {
    LogError::Io {
        path: PathBuf::from("partition-000"),
        source: std::io::Error::other("no space left on device"),
    }
}

fn partition_failed() -> LogError {
    LogError::Failed {
        partition: 0,
        reason: "fdatasync failed".into(),
    }
}

fn unavailable() -> LogError {
    LogError::Unavailable {
        reason: "the cluster does not answer".into(),
    }
}
