//! Guards the checkpoint commands against a running server (`--server`): list, savepoint and
//! verify work without stopping it, and the savepoint it writes is a valid, complete one.

mod support;

use support::tally;

use std::time::{Duration, Instant};

use std::path::Path;

use support::server::{
    ADMIN_TOKEN, ServerProcess, admin, client, create_campaign, donation_json, post_signed,
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

    // The server writes a savepoint by name into its data directory, never over another.
    let create = tally(
        dir.path(),
        &[
            &["checkpoint", "create", "--name", "nightly"][..],
            &remote[..],
        ]
        .concat(),
    );
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    let savepoint = dir.path().join("savepoints").join("nightly");
    let written = tally_pipeline::checkpoint::savepoint::read(&savepoint).unwrap();
    assert_eq!(written.offsets().iter().sum::<u64>(), 40);
    let again = tally(
        dir.path(),
        &[
            &["checkpoint", "create", "--name", "nightly"][..],
            &remote[..],
        ]
        .concat(),
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("savepoint_exists"));
    assert_eq!(
        tally_pipeline::checkpoint::savepoint::read(&savepoint).unwrap(),
        written
    );
    let to_a_path = tally(
        dir.path(),
        &[
            &["checkpoint", "create", "--out", "/tmp/anywhere"][..],
            &remote[..],
        ]
        .concat(),
    );
    assert!(!to_a_path.status.success());
    assert!(String::from_utf8_lossy(&to_a_path.stderr).contains("--name"));
    check_savepoint_route_takes_only_a_new_name(&server, dir.path());

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

    // Stopped, the data directory takes the savepoint back by name.
    server.kill();
    let restore = tally(dir.path(), &["checkpoint", "restore", "--name", "nightly"]);
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    // A write that fails (a directory where the file would go) leaves nothing behind.
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    let before = names_in(dir.path());
    let create = tally(
        dir.path(),
        &["checkpoint", "create", "--out", occupied.to_str().unwrap()],
    );
    assert!(!create.status.success());
    assert_eq!(names_in(dir.path()), before);
}

/// `POST /v1/checkpoints/savepoint` takes a name, not a path, and never a taken one.
fn check_savepoint_route_takes_only_a_new_name(server: &ServerProcess, data_dir: &Path) {
    let http = client();
    let post = |body: serde_json::Value| {
        let response = admin(
            &http,
            reqwest::Method::POST,
            &server.url("/v1/checkpoints/savepoint"),
        )
        .json(&body)
        .send()
        .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().unwrap())
    };
    let victim = data_dir.join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    for name in [
        "../victim",
        victim.to_str().unwrap(),
        ".hidden",
        "",
        "a b",
        &"a".repeat(129),
    ] {
        let (status, body) = post(serde_json::json!({"name": name}));
        assert_eq!(status, 400, "{name:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{body}");
        assert_eq!(body["error"]["field"], "name", "{body}");
    }
    let (status, body) = post(serde_json::json!({"out": victim}));
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("out")),
        "{body}"
    );
    let (status, body) = post(serde_json::json!({"name": "nightly"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "savepoint_exists", "{body}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");

    let (status, body) = post(serde_json::json!({"name": "before-close.v2"}));
    assert_eq!(status, 200, "{body}");
    let path = data_dir.join("savepoints").join("before-close.v2");
    assert_eq!(body["name"], "before-close.v2");
    assert_eq!(body["path"], path.to_str().unwrap());
    assert_eq!(body["offsets"].as_array().unwrap().len(), 8);
    assert_eq!(
        names_in(&data_dir.join("savepoints")),
        ["before-close.v2", "nightly"]
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
