//! Guards the checkpoint commands against a running server (`--server`): list, savepoint and
//! verify work without stopping it, and the savepoint it writes is a valid, complete one.

mod support;

use support::tally;

use std::time::{Duration, Instant};

use support::server::{
    ADMIN_TOKEN, ServerProcess, client, create_campaign, donation_json, post_signed,
};

#[test]
fn checkpoint_commands_work_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let http = client();
    create_campaign(&http, &server, "meals", "USD");
    for i in 0..40 {
        let body = serde_json::to_vec(&donation_json(
            &format!("pay-{i}"),
            "meals",
            100 + i,
            &format!("usr-{i}"),
        ))
        .unwrap();
        assert_eq!(
            post_signed(&http, &server.url("/v1/donations"), &body)
                .unwrap()
                .status(),
            202
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view: serde_json::Value = http
            .get(server.url("/v1/campaigns/meals"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if view["donations"] == 40 {
            break;
        }
        assert!(Instant::now() < deadline, "never applied: {view}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let remote = [
        "--server",
        server.base.as_str(),
        "--admin-token",
        ADMIN_TOKEN,
    ];

    let list = tally(
        dir.path(),
        &[&["checkpoint", "list"][..], &remote[..]].concat(),
    );
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let checkpoints: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let applied: u64 = checkpoints
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["records_applied"].as_u64())
        .sum();
    assert_eq!(applied, 40);

    let savepoint = dir.path().join("savepoint.tally");
    let out = savepoint.to_str().unwrap();
    let create = tally(
        dir.path(),
        &[&["checkpoint", "create", "--out", out][..], &remote[..]].concat(),
    );
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    let written = tally_pipeline::checkpoint::savepoint::read(&savepoint).unwrap();
    assert_eq!(written.offsets().iter().sum::<u64>(), 40);

    let verify = tally(
        dir.path(),
        &[&["checkpoint", "verify"][..], &remote[..]].concat(),
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    let refused = tally(
        dir.path(),
        &[
            "checkpoint",
            "list",
            "--server",
            server.base.as_str(),
            "--admin-token",
            "wrong",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("admin_token_invalid"));
}
