//! Guards resends for a closed campaign on a shared log: whether the payment is recorded is
//! the answer of the node that runs its partition, and an answer that cannot be read is a 503
//! (`owner_unavailable`, retry) — never a 422 `campaign_closed` for a donation that may be
//! counted.

mod support;

use support::{Ingest, donation};

#[tokio::test]
async fn the_owners_answer_decides_and_an_unreadable_one_is_a_503() {
    let ingest = Ingest::start(true).await;
    ingest.create_campaign("meals").await;
    ingest.close_campaign("meals").await;
    let body = donation("pay-1", "meals");

    let recorded = r#"{"payment_ref":"pay-1","partition":2,"offset":41,"amount_cents":100}"#;
    ingest.other_node.answers(200, recorded);
    let answer = ingest.post("/v1/donations", &body).await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(
        (
            answer.body["partition"].clone(),
            answer.body["offset"].clone()
        ),
        (2.into(), 41.into())
    );

    let not_found = r#"{"error":{"code":"donation_not_found","message":"no donation"}}"#;
    ingest.other_node.answers(404, not_found);
    let answer = ingest.post("/v1/donations", &body).await;
    assert_eq!((answer.status, answer.code()), (422, "campaign_closed"));

    let unreadable = [
        (200, "garbage"),
        (200, r#"{"payment_ref":"pay-1","partition":2}"#),
        (
            200,
            r#"{"payment_ref":"pay-1","partition":2,"offset":"41"}"#,
        ),
        (
            200,
            r#"{"payment_ref":"someone-else","partition":2,"offset":41}"#,
        ),
        (404, "<html>no such route</html>"),
        (502, "bad gateway"),
    ];
    for (status, owner_body) in unreadable {
        ingest.other_node.answers(status, owner_body);
        let answer = ingest.post("/v1/donations", &body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (503, "owner_unavailable"),
            "{status} {owner_body:?}: {:?}",
            answer.body
        );
        assert_eq!(answer.retry_after.as_deref(), Some("1"));
        let batch = [b"[".as_slice(), &body, b"]"].concat();
        let answer = ingest.post("/v1/donations/batch", &batch).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(
            answer.body["rejected"][0]["code"], "owner_unavailable",
            "{:?}",
            answer.body
        );
    }

    // The owner's own failures: one that may pass stays a 503, one that needs an operator keeps
    // its code as a 500.
    let unavailable = r#"{"error":{"code":"log_unavailable","message":"away"}}"#;
    ingest.other_node.answers(503, unavailable);
    let answer = ingest.post("/v1/donations", &body).await;
    assert_eq!((answer.status, answer.code()), (503, "owner_unavailable"));
    let corrupted = r#"{"error":{"code":"log_corrupted","message":"damaged"}}"#;
    ingest.other_node.answers(500, corrupted);
    let answer = ingest.post("/v1/donations", &body).await;
    assert_eq!((answer.status, answer.code()), (500, "log_corrupted"));
    assert_eq!(answer.retry_after, None);
}
