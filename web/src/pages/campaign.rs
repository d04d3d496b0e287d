//! `GET /campaigns/{campaign_id}`: a campaign's running total (net of refunds, with what was
//! raised and refunded once there are any), its goal, whether it is open or closed (with the
//! reconciled final total and any refunds after the close), how fresh the total is, and charts
//! of donations per minute and per hour. `campaign.js` keeps the total and the refund line live
//! from `/live` and draws the charts from `/stats`.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use tally_api::server::PathParameter;
use tally_api::views::{Adjustments, CampaignView, Freshness, Reconciliation};
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
        "gross_cents": view.gross_cents,
        "refunded_cents": view.refunded_cents,
        "refunds": view.refunds,
        "chargebacks": view.chargebacks,
        "status": view.status,
    });
    let body = html! {
        article.campaign {
            p.status { span class=(format!("badge {}", view.status)) id="status" { (status_text(&view.status)) } }
            h1 id="campaign-name" { (view.name) }
            p.total-label { "Campaign total" }
            p.total id="total" { (style.format(view.total_cents)) }
            @if view.refunds > 0 {
                p.refunds id="refunds" {
                    (refund_text(
                        view.gross_cents, view.refunded_cents, view.refunds, view.chargebacks, &style,
                    ))
                }
            }
            p.donations {
                span id="donations" { (grouped(view.donations)) }
                " " span id="donations-word" { (if view.donations == 1 { "donation" } else { "donations" }) }
            }
            @if let Some(goal) = view.goal_cents {
                (goal_bar(view.total_cents, goal, &style))
            }
            @if let Some(reconciliation) = &view.reconciliation {
                (final_total(
                    reconciliation, view.adjustments.as_ref(), view.closed_at.as_deref(), &style,
                ))
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

/// The reconciled final total: net of the refunds the close counted, with any refunds since.
fn final_total(
    reconciliation: &Reconciliation,
    adjustments: Option<&Adjustments>,
    closed_at: Option<&str>,
    style: &CurrencyStyle,
) -> Markup {
    let refunds = reconciliation.refunds.as_ref();
    let final_net = refunds.map_or(reconciliation.final_total_cents, |r| r.final_net_cents);
    let matched = reconciliation.matched && refunds.is_none_or(|r| r.refunds_matched);
    html! {
        section.final id="final-total" {
            h2 { "Final total" }
            p.total { (style.format(final_net)) }
            @if let Some(r) = refunds.filter(|r| r.final_refunds > 0) {
                p.refunds {
                    (refund_text(
                        reconciliation.final_total_cents, r.final_refunded_cents,
                        r.final_refunds, r.final_chargebacks, style,
                    ))
                }
            }
            p {
                (grouped(reconciliation.final_donations)) " donations, "
                @if matched {
                    "reconciled: the running total matched the log"
                } @else {
                    "reconciled from the log (" (running_text(reconciliation, style)) ")"
                }
                @if let Some(closed_at) = closed_at { ", closed " (closed_at) }
            }
            @if let Some(adjusted) = adjustments.filter(|a| a.refunds > 0) {
                p.adjusted id="adjusted" {
                    "Adjusted after close: \u{2212}" (style.format(adjusted.refunded_cents))
                    " (" (counted(adjusted.refunds, "refund")) ") · net now\u{a0}"
                    (style.format(adjusted.net_after_cents))
                }
            }
        }
    }
}

/// What the operators had counted, where the log said otherwise.
fn running_text(reconciliation: &Reconciliation, style: &CurrencyStyle) -> String {
    let mut parts = Vec::new();
    if !reconciliation.matched {
        parts.push(format!(
            "the running total was {}",
            style.format(reconciliation.running_total_cents)
        ));
    }
    if let Some(r) = reconciliation
        .refunds
        .as_ref()
        .filter(|r| !r.refunds_matched)
    {
        parts.push(format!(
            "the running refunds were {}",
            style.format(r.running_refunded_cents)
        ));
    }
    parts.join(", ")
}

/// `$12.00 raised · $2.50 refunded (2 refunds, 1 chargeback)`: `refunds` counts the
/// chargebacks too, which the line names apart. `campaign.js` writes the same line.
pub fn refund_text(
    gross: u64,
    refunded: u64,
    refunds: u64,
    chargebacks: u64,
    style: &CurrencyStyle,
) -> String {
    let chargebacks = chargebacks.min(refunds);
    let mut kinds = Vec::new();
    if refunds > chargebacks {
        kinds.push(counted(refunds - chargebacks, "refund"));
    }
    if chargebacks > 0 {
        kinds.push(counted(chargebacks, "chargeback"));
    }
    format!(
        "{} raised · {} refunded ({})",
        style.format(gross),
        style.format(refunded),
        kinds.join(", ")
    )
}

/// `1 refund`, `2 refunds`, with a no-break space: a narrow window wraps between counts.
fn counted(n: u64, noun: &str) -> String {
    let plural = if n == 1 { "" } else { "s" };
    format!("{}\u{a0}{noun}{plural}", grouped(n))
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

    #[test]
    fn the_refund_line_names_refunds_and_chargebacks_apart() {
        let usd = CurrencyStyle::of("USD");
        assert_eq!(
            refund_text(1_200, 250, 3, 1, &usd),
            "$12.00 raised · $2.50 refunded (2\u{a0}refunds, 1\u{a0}chargeback)"
        );
        assert_eq!(
            refund_text(1_200, 250, 1, 0, &usd),
            "$12.00 raised · $2.50 refunded (1\u{a0}refund)"
        );
        assert_eq!(
            refund_text(123_456_700, 100_000, 2, 2, &usd),
            "$1,234,567.00 raised · $1,000.00 refunded (2\u{a0}chargebacks)"
        );
    }
}
