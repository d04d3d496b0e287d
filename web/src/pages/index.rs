//! `GET /`: every campaign with its total, linking to its page.

use axum::extract::State;
use axum::response::Response;
use maud::html;
use tally_api::views::CampaignView;

use super::campaign::percent_of;
use super::{PagesContext, html_page};
use crate::layout::page;
use crate::money::{CurrencyStyle, grouped};

pub(super) async fn index_page(State(context): State<PagesContext>) -> Response {
    html_page(render(&context.query.campaign_views()))
}

fn render(views: &[CampaignView]) -> maud::Markup {
    let body = html! {
        h1 { "Campaigns" }
        @if views.is_empty() {
            p.note { "No campaigns yet. An operator creates one with "
                code { "tally campaign create" } " or " code { "POST /v1/campaigns" } "." }
        } @else {
            table.campaigns id="campaigns" {
                thead { tr { th { "Campaign" } th { "Status" } th.num { "Total" } th.num { "Donations" } th.num { "Goal" } } }
                tbody {
                    @for view in views {
                        @let style = CurrencyStyle::of(&view.currency);
                        tr {
                            td { a href=(format!("/campaigns/{}", view.campaign_id)) { (view.name) } }
                            td { span class=(format!("badge {}", view.status)) { (view.status) } }
                            td.num { (style.format(view.total_cents)) }
                            td.num { (grouped(view.donations)) }
                            td.num {
                                @match view.goal_cents {
                                    Some(goal) => { (percent_of(view.total_cents, goal)) "% of " (style.format(goal)) }
                                    None => { "—" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Campaigns", body, &[])
}
