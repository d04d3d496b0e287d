//! `GET /campaigns/{campaign_id}`: a campaign's running total, its goal, whether it is open or
//! closed (with the reconciled final total), how fresh the total is, and charts of donations
//! per minute and per hour. `campaign.js` keeps the total live from `/live` and draws the
//! charts from `/stats`.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use tally_api::server::PathParameter;
use tally_api::views::{CampaignView, Freshness};
use tally_query::views::campaign_view;

use super::{PagesContext, error_page, html_page};
use crate::layout::{json_data, page};
use crate::money::{CurrencyStyle, grouped};

pub(super) async fn campaign_page(
    State(context): State<PagesContext>,
    PathParameter(campaign_id): PathParameter,
) -> Response {
    let query = &context.query;
    let campaign = match query.campaign(&campaign_id).await {
        Ok(campaign) => campaign,
        Err(error) => return error_page(&error),
    };
    let amounts = query.read_model.campaign_amounts(&campaign_id);
    // While the log has never answered there is no freshness to tell; the total still shows.
    let freshness = query.freshness().await.ok();
    let view = campaign_view(&campaign, amounts, freshness);
    html_page(render(&view))
}

/// The page of `view`.
pub fn render(view: &CampaignView) -> Markup {
    let style = CurrencyStyle::of(&view.currency);
    let data = serde_json::json!({
        "campaign_id": view.campaign_id,
        "currency": view.currency,
        "symbol": style.symbol,
        "minor_units": style.minor_units,
        "goal_cents": view.goal_cents,
        "total_cents": view.total_cents,
        "donations": view.donations,
        "status": view.status,
    });
    let body = html! {
        article.campaign {
            p.status { span class=(format!("badge {}", view.status)) id="status" { (status_text(&view.status)) } }
            h1 id="campaign-name" { (view.name) }
            p.total-label { "Campaign total" }
            p.total id="total" { (style.format(view.total_cents)) }
            p.donations { span id="donations" { (grouped(view.donations)) } " donations" }
            @if let Some(goal) = view.goal_cents {
                (goal_bar(view.total_cents, goal, &style))
            }
            @if let Some(reconciliation) = &view.reconciliation {
                section.final id="final-total" {
                    h2 { "Final total" }
                    p.total { (style.format(reconciliation.final_total_cents)) }
                    p {
                        (grouped(reconciliation.final_donations)) " donations, "
                        @if reconciliation.matched {
                            "reconciled: the running total matched the log"
                        } @else {
                            "reconciled from the log (the running total was "
                            (style.format(reconciliation.running_total_cents)) ")"
                        }
                        @if let Some(closed_at) = &view.closed_at { ", closed " (closed_at) }
                    }
                }
            }
            p.freshness id="freshness" { (freshness_text(view.freshness.as_ref())) }
            section.charts {
                h2 { "Donations per minute, last 3 hours" }
                div.chart id="chart-minutes" data-bucket="minute" data-hours="3" {}
                h2 { "Donations per hour, last 7 days" }
                div.chart id="chart-hours" data-bucket="hour" data-hours="168" {}
                noscript { p.note { "The charts and the live total need JavaScript; the figures above are as of this page's load." } }
            }
        }
        (json_data("campaign-data", &data))
    };
    page(
        &view.name,
        body,
        &["uplot-1.6.32.min.js", "charts.js", "campaign.js"],
    )
}

fn status_text(status: &str) -> &'static str {
    match status {
        "open" => "Open",
        "closing" => "Closing: reconciling the final total",
        "closed" => "Closed",
        _ => "Unknown",
    }
}

fn goal_bar(total: u64, goal: u64, style: &CurrencyStyle) -> Markup {
    let percent = percent_of(total, goal);
    html! {
        div.goal {
            progress id="goal-progress" max=(goal) value=(total.min(goal)) {}
            p { span id="goal-percent" { (percent) "%" } " of the " (style.format(goal)) " goal" }
        }
    }
}

/// Whole percent of `goal` reached, rounded down; a goal of zero is reached.
pub fn percent_of(total: u64, goal: u64) -> u64 {
    if goal == 0 {
        return 100;
    }
    (u128::from(total) * 100 / u128::from(goal)) as u64
}

fn freshness_text(freshness: Option<&Freshness>) -> String {
    match freshness {
        None => "The log has not answered yet: the total may be behind.".to_owned(),
        Some(f) if !f.log_reachable => {
            "The log does not answer right now: the total is as of its last answer.".to_owned()
        }
        Some(f) if f.lag_records == 0 => {
            "Up to date: every recorded donation is counted.".to_owned()
        }
        Some(f) => format!(
            "{} donations recorded are not counted yet ({} ms behind).",
            grouped(f.lag_records),
            f.lag_ms
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounds_down_and_survives_large_amounts() {
        assert_eq!(percent_of(4_999, 10_000), 49);
        assert_eq!(percent_of(20_000, 10_000), 200);
        assert_eq!(percent_of(u64::MAX, u64::MAX), 100);
        assert_eq!(percent_of(5, 0), 100);
    }
}
