//! For the tests that need a live Fluvio cluster: its address from the environment, and topic
//! names no earlier run used.

use std::time::{SystemTime, UNIX_EPOCH};

/// The variable holding the SC's public address (`HOST:PORT`, on 127.0.0.1).
pub const ENDPOINT_VAR: &str = "TALLY_FLUVIO_ENDPOINT";

/// The cluster's address, or `None` after saying plainly on stderr that `what` did not run.
pub fn endpoint(what: &str) -> Option<String> {
    match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ => {
            // Written to stderr directly rather than with eprintln!, which the test harness
            // captures: the skip shows in every test run's output.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{ENDPOINT_VAR} is not set: {what} did not run \
                 (set it to a cluster's SC address, e.g. 127.0.0.1:9003)"
            );
            None
        }
    }
}

/// `tally-<kind>-<pid>-<millis>`.
pub fn unique_topic(kind: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("tally-{kind}-{}-{millis}", std::process::id())
}
