//! `GET /ops`: the operator's view. Per partition: the log's end, the applied offset, the lag
//! in records and milliseconds, the checkpoint age and who runs it; the node's request and
//! pipeline rates as small live charts; the cluster's nodes. Read-only, and nothing secret:
//! what `/metrics` and `/v1/cluster` already show. `ops.js` refreshes it from `/v1/ops`.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use tally_api::views::{OpsView, PartitionOpsView};

use super::{PagesContext, html_page};
use crate::layout::{json_data, page};
use crate::money::grouped;

pub(super) async fn ops_page(State(context): State<PagesContext>) -> Response {
    html_page(render(&context.ops.ops_view().await))
}

fn render(view: &OpsView) -> Markup {
    let data = serde_json::to_value(view).unwrap_or_default();
    let body = html! {
        h1 { "Operations" }
        p.note id="ops-summary" {
            "Node " code { (view.node_id) } " · ownership " (view.ownership)
            " · " (if view.log_reachable { "log reachable" } else { "log NOT reachable" })
            " · as of " time id="ops-at" datetime=(view.at) { (view.at) }
        }
        section {
            h2 { "Partitions" }
            table.partitions id="partitions" {
                thead { tr {
                    th.num { "Partition" } th.num { "Log end" } th.num { "Applied" }
                    th.num { "Lag (records)" } th.num { "Lag (ms)" } th.num { "Checkpoint age" } th { "Run by" }
                } }
                tbody id="partition-rows" {
                    @for partition in &view.partitions { (partition_row(partition)) }
                }
            }
        }
        section.charts.ops-charts {
            div { h2 { "Ingest, per second" } div.chart.small id="chart-ingest" {} }
            div { h2 { "Responses, per second" } div.chart.small id="chart-responses" {} }
            div { h2 { "Duplicates and conflicts, per second" } div.chart.small id="chart-resends" {} }
            noscript { p.note { "The rate charts need JavaScript; the tables are as of this page's load." } }
        }
        section {
            h2 { "Nodes" }
            table.nodes id="nodes" {
                thead { tr { th { "Node" } th { "Address" } th { "Partitions" } th.num { "Last heard" } } }
                tbody id="node-rows" {
                    @for node in &view.nodes {
                        tr {
                            td { code { (node.node_id) } }
                            td { (node.advertise) }
                            td { (partition_list(&node.partitions)) }
                            td.num { (node.last_heard_ms_ago) " ms ago" }
                        }
                    }
                }
            }
        }
        (json_data("ops-data", &data))
    };
    page(
        "Operations",
        body,
        &["uplot-1.6.32.min.js", "charts.js", "ops.js"],
    )
}

fn partition_row(p: &PartitionOpsView) -> Markup {
    html! {
        tr data-partition=(p.partition) class=(if p.lag_records > 0 { "behind" } else { "" }) {
            td.num { (p.partition) }
            td.num { (grouped(p.log_end_offset)) }
            td.num { (grouped(p.applied_offset)) }
            td.num { (grouped(p.lag_records)) }
            td.num { (p.lag_ms) }
            td.num { @match p.checkpoint_age_s { Some(age) => { (format!("{age:.1} s")) } None => { "—" } } }
            td { @match &p.owner { Some(owner) => { code { (owner) } } None => { "nobody" } } }
        }
    }
}

fn partition_list(partitions: &[u32]) -> String {
    if partitions.is_empty() {
        return "none".to_owned();
    }
    partitions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
