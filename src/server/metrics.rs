//! `/healthz`, `/metrics` (Prometheus text format) and the request counter behind them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Requests by route template and status.
#[derive(Debug, Default)]
pub struct RequestCounter {
    counts: Mutex<BTreeMap<(String, u16), u64>>,
}

impl RequestCounter {
    fn add(&self, route: &str, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry((route.to_owned(), status)).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<(String, u16), u64> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Middleware: counts every request by its route template (not its raw path: bounded labels).
pub async fn count_requests(
    State(counter): State<Arc<RequestCounter>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    counter.add(&route, response.status().as_u16());
    response
}

pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = render(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn render(state: &AppState) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_owned()
    };
    let requests = family(
        "tally_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
    );
    let mut lines = Vec::new();
    for ((route, status), count) in state.requests.snapshot() {
        lines.push(format!(
            "{requests}{{route=\"{route}\",status=\"{status}\"}} {count}"
        ));
    }
    let ingest = &state.ingest.metrics;
    let appended = ingest
        .appended_records
        .load(std::sync::atomic::Ordering::Relaxed);
    let limited = ingest
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    let progress = state.read_model.progress();
    let now_ms = state.clock.now_ms();
    let scalar = |out: &mut String, name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    out.push_str(&lines.join("\n"));
    out.push('\n');
    scalar(
        &mut out,
        "tally_log_appended_records_total",
        "counter",
        "Donation events appended durably by ingest.",
        appended.to_string(),
    );
    scalar(
        &mut out,
        "tally_rate_limited_total",
        "counter",
        "Donations answered 429 by the per-user rate limit.",
        limited.to_string(),
    );
    render_connections(&mut out, state);
    let sum = |f: fn(&tally_pipeline::processor::PartitionCounters) -> u64| {
        progress.iter().map(|p| f(&p.counters)).sum::<u64>()
    };
    scalar(
        &mut out,
        "tally_recorded_donations_total",
        "counter",
        "Donations recorded (counted once).",
        sum(|c| c.recorded).to_string(),
    );
    scalar(
        &mut out,
        "tally_duplicates_total",
        "counter",
        "Resends identical to a recorded donation.",
        sum(|c| c.duplicates).to_string(),
    );
    scalar(
        &mut out,
        "tally_conflicts_total",
        "counter",
        "Resends that differ from the recorded donation.",
        sum(|c| c.conflicts).to_string(),
    );
    scalar(
        &mut out,
        "tally_late_donations_total",
        "counter",
        "Donations older than the watermark when applied.",
        sum(|c| c.late).to_string(),
    );
    let per_partition =
        |out: &mut String, name: &str, kind: &str, help: &str, values: Vec<String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (partition, value) in values.into_iter().enumerate() {
                let _ = writeln!(out, "{name}{{partition=\"{partition}\"}} {value}");
            }
        };
    let mut ends = Vec::new();
    for p in &progress {
        ends.push(state.log.end_offset(p.partition).await.unwrap_or(0));
    }
    per_partition(
        &mut out,
        "tally_log_end_offset",
        "gauge",
        "Offset the next appended record gets.",
        ends.iter().map(u64::to_string).collect(),
    );
    per_partition(
        &mut out,
        "tally_applied_offset",
        "gauge",
        "Records applied and committed by the pipeline.",
        progress
            .iter()
            .map(|p| p.applied_offset.to_string())
            .collect(),
    );
    per_partition(
        &mut out,
        "tally_lag_records",
        "gauge",
        "Records in the log not yet applied.",
        progress
            .iter()
            .zip(&ends)
            .map(|(p, e)| e.saturating_sub(p.applied_offset).to_string())
            .collect(),
    );
    // A partition that has not committed since start has no age yet: it is left out.
    let _ = writeln!(
        out,
        "# HELP tally_checkpoint_age_seconds Time since the last checkpoint commit.\n# TYPE tally_checkpoint_age_seconds gauge"
    );
    for p in progress.iter().filter(|p| p.committed_at_ms > 0) {
        let age_s = (now_ms - p.committed_at_ms).max(0) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "tally_checkpoint_age_seconds{{partition=\"{}\"}} {age_s:.3}",
            p.partition
        );
    }
    per_partition(
        &mut out,
        "tally_checkpoint_duration_seconds",
        "gauge",
        "Duration of the last checkpoint commit.",
        progress
            .iter()
            .map(|p| format!("{:.6}", p.checkpoint_duration_us as f64 / 1e6))
            .collect(),
    );
    let backlog = state.notifications.backlog(&progress);
    per_partition(
        &mut out,
        "tally_notification_backlog_records",
        "gauge",
        "Applied records not yet scanned for notifications.",
        backlog.iter().map(u64::to_string).collect(),
    );
    out
}

/// The listener's and the body reads' gauges and counters.
fn render_connections(out: &mut String, state: &AppState) {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let connections = &state.connections;
    let bodies = state.ingest.bodies.counts();
    let scalars = [
        (
            "tally_http_connections_open",
            "gauge",
            "Client connections open.",
            load(&connections.open),
        ),
        (
            "tally_http_connections_max",
            "gauge",
            "Client connections served at once at most.",
            state.connections_max,
        ),
        (
            "tally_http_connections_refused_total",
            "counter",
            "Connections above the cap answered 503 too_many_connections.",
            load(&connections.refused),
        ),
        (
            "tally_http_connections_dropped_total",
            "counter",
            "Connections above the cap closed without an answer (the refusals were busy too).",
            load(&connections.dropped),
        ),
        (
            "tally_http_accept_errors_total",
            "counter",
            "Failed accepts that paused the listener (such as EMFILE).",
            load(&connections.accept_errors),
        ),
        (
            "tally_http_body_reads_in_progress",
            "gauge",
            "Request bodies being read.",
            bodies.in_progress,
        ),
        (
            "tally_http_body_reads_refused_total",
            "counter",
            "Requests answered 503 too_many_body_reads.",
            bodies.refused,
        ),
        (
            "tally_http_body_read_timeouts_total",
            "counter",
            "Requests answered 408 body_timeout.",
            bodies.timed_out,
        ),
    ];
    for (name, kind, help, value) in scalars {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let name = "tally_http_connections_timed_out_total";
    let _ = writeln!(
        out,
        "# HELP {name} Connections closed past a deadline, by reason.\n# TYPE {name} counter"
    );
    for (reason, counter) in [
        ("header_read", &connections.header_read_timeouts),
        ("idle", &connections.idle_timeouts),
        ("write_stalled", &connections.write_stalls),
    ] {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", load(counter));
    }
}
