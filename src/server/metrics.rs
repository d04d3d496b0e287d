//! `/healthz`, `/metrics` (Prometheus text format) and the request counter behind them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use tally_pipeline::processor::PartitionCounters;
use tally_pipeline::read_model::PartitionProgress;

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

    /// Requests by the first digit of their status: `[_, 1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub fn by_status_class(&self) -> [u64; 6] {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut classes = [0; 6];
        for (&(_, status), &count) in counts.iter() {
            classes[usize::from(status / 100).min(5)] += count;
        }
        classes
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
    render_requests(&mut out, state);
    render_ingest(&mut out, state);
    render_connections(&mut out, state);
    let progress = state.read_model.progress();
    render_pipeline_counters(&mut out, &progress);
    render_retractions(&mut out, state);
    render_partitions(&mut out, state, &progress).await;
    render_cluster(&mut out, state);
    out
}

/// With automatic assignment: reassignments, what this node runs, and its lease.
fn render_cluster(out: &mut String, state: &AppState) {
    let Some(membership) = state.node.automatic() else {
        return;
    };
    let view = membership.assignment_view();
    scalar(
        out,
        "tally_cluster_reassignments_total",
        "counter",
        "Partitions that changed owner, as this node folded the nodes topic since it started.",
        view.reassignments.to_string(),
    );
    scalar(
        out,
        "tally_cluster_members",
        "gauge",
        "Members of the automatic assignment.",
        view.members.len().to_string(),
    );
    scalar(
        out,
        "tally_cluster_partitions_running",
        "gauge",
        "Partitions whose pipeline runs on this node.",
        state.node.owned().len().to_string(),
    );
    scalar(
        out,
        "tally_cluster_lease_renewed_age_seconds",
        "gauge",
        "Since this node's last heartbeat reached the nodes topic.",
        format!("{:.3}", membership.renewed_ms_ago() as f64 / 1000.0),
    );
}

/// One metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family of one unlabelled value.
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: String) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A family of one value per partition, labelled by its index.
fn per_partition(out: &mut String, name: &str, kind: &str, help: &str, values: Vec<String>) {
    family(out, name, kind, help);
    for (partition, value) in values.into_iter().enumerate() {
        let _ = writeln!(out, "{name}{{partition=\"{partition}\"}} {value}");
    }
}

/// HTTP requests by route and status.
fn render_requests(out: &mut String, state: &AppState) {
    let name = "tally_http_requests_total";
    family(out, name, "counter", "HTTP requests by route and status.");
    let lines: Vec<String> = state
        .requests
        .snapshot()
        .into_iter()
        .map(|((route, status), count)| {
            format!("{name}{{route=\"{route}\",status=\"{status}\"}} {count}")
        })
        .collect();
    out.push_str(&lines.join("\n"));
    out.push('\n');
}

/// What ingest appended and refused.
fn render_ingest(out: &mut String, state: &AppState) {
    let ingest = &state.ingest.metrics;
    scalar(
        out,
        "tally_log_appended_records_total",
        "counter",
        "Donation events appended durably by ingest.",
        ingest.appended_records.load(Ordering::Relaxed).to_string(),
    );
    scalar(
        out,
        "tally_rate_limited_total",
        "counter",
        "Donations answered 429 by the per-user rate limit.",
        ingest.rate_limited.load(Ordering::Relaxed).to_string(),
    );
}

/// Reads one counter of a partition's.
type CounterOf = fn(&PartitionCounters) -> u64;

/// The pipeline's counters, summed over the partitions.
fn render_pipeline_counters(out: &mut String, progress: &[PartitionProgress]) {
    let sum = |f: CounterOf| {
        progress
            .iter()
            .map(|p| f(&p.counters))
            .sum::<u64>()
            .to_string()
    };
    let counters: [(&str, &str, CounterOf); 4] = [
        (
            "tally_recorded_donations_total",
            "Donations recorded (counted once).",
            |c| c.recorded,
        ),
        (
            "tally_duplicates_total",
            "Resends identical to a recorded donation.",
            |c| c.duplicates,
        ),
        (
            "tally_conflicts_total",
            "Resends that differ from the recorded donation.",
            |c| c.conflicts,
        ),
        (
            "tally_late_donations_total",
            "Donations older than the watermark when applied.",
            |c| c.late,
        ),
    ];
    for (name, help, counter) in counters {
        scalar(out, name, "counter", help, sum(counter));
    }
}

/// Refunds and chargebacks the pipeline recorded, summed over the partitions.
fn render_retractions(out: &mut String, state: &AppState) {
    let counters = state.read_model.retraction_counters();
    let lines: [(&str, &str, &str, u64); 6] = [
        (
            "tally_refunds_recorded_total",
            "counter",
            "Refunds and chargebacks recorded (one per refund_ref).",
            counters.recorded,
        ),
        (
            "tally_refunds_applied_total",
            "counter",
            "Refunds and chargebacks taken out of their campaign's total.",
            counters.applied,
        ),
        (
            "tally_refunds_pending",
            "gauge",
            "Refunds and chargebacks waiting for their donation to be recorded.",
            counters.pending,
        ),
        (
            "tally_refunds_excess_total",
            "counter",
            "Refunds and chargebacks held out: more than their donation had left.",
            counters.excess,
        ),
        (
            "tally_refund_duplicates_total",
            "counter",
            "Resends identical to a recorded refund.",
            counters.duplicates,
        ),
        (
            "tally_refund_conflicts_total",
            "counter",
            "Resends that differ from the recorded refund.",
            counters.conflicts,
        ),
    ];
    for (name, kind, help, value) in lines {
        scalar(out, name, kind, help, value.to_string());
    }
}

/// Per partition: the log's end, what is applied, the lag, checkpoints and the notification
/// backlog.
async fn render_partitions(out: &mut String, state: &AppState, progress: &[PartitionProgress]) {
    let mut ends = Vec::new();
    for p in progress {
        ends.push(state.log.end_offset(p.partition).await.unwrap_or(0));
    }
    per_partition(
        out,
        "tally_log_end_offset",
        "gauge",
        "Offset the next appended record gets.",
        ends.iter().map(u64::to_string).collect(),
    );
    per_partition(
        out,
        "tally_applied_offset",
        "gauge",
        "Records applied and committed by the pipeline.",
        progress
            .iter()
            .map(|p| p.applied_offset.to_string())
            .collect(),
    );
    per_partition(
        out,
        "tally_lag_records",
        "gauge",
        "Records in the log not yet applied.",
        progress
            .iter()
            .zip(&ends)
            .map(|(p, e)| e.saturating_sub(p.applied_offset).to_string())
            .collect(),
    );
    render_checkpoints(out, state.clock.now_ms(), progress);
    let backlog = state.notifications.backlog(progress);
    per_partition(
        out,
        "tally_notification_backlog_records",
        "gauge",
        "Applied records not yet scanned for notifications.",
        backlog.iter().map(u64::to_string).collect(),
    );
}

/// Each partition's checkpoint age and the duration of its last commit.
fn render_checkpoints(out: &mut String, now_ms: i64, progress: &[PartitionProgress]) {
    // A partition that has not committed since start has no age yet: it is left out.
    let age = "tally_checkpoint_age_seconds";
    family(out, age, "gauge", "Time since the last checkpoint commit.");
    for p in progress.iter().filter(|p| p.committed_at_ms > 0) {
        let age_s = (now_ms - p.committed_at_ms).max(0) as f64 / 1000.0;
        let _ = writeln!(out, "{age}{{partition=\"{}\"}} {age_s:.3}", p.partition);
    }
    per_partition(
        out,
        "tally_checkpoint_duration_seconds",
        "gauge",
        "Duration of the last checkpoint commit.",
        progress
            .iter()
            .map(|p| format!("{:.6}", p.checkpoint_duration_us as f64 / 1e6))
            .collect(),
    );
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
