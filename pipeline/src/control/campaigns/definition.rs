//! A campaign as an operator asks for it, checked once for every way in (the admin API and the
//! offline `tally campaign create`): each rejection names the field and says what is wrong.

use serde::{Deserialize, Serialize};

use super::CampaignDefinition;
use crate::event::EventTime;
use crate::event::currency::is_iso_4217;
use crate::event::validate::{Rejection, check_campaign_id};

/// Longest campaign name, in characters: a display name for a checkout page or a list row, not
/// a description.
pub const CAMPAIGN_NAME_CHARS_MAX: usize = 200;

/// A campaign to create, as given: text fields not yet checked or parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub campaign_id: String,
    pub name: String,
    /// ISO 4217.
    pub currency: String,
    pub goal_cents: Option<u64>,
    /// RFC 3339.
    pub starts_at: Option<String>,
    /// RFC 3339; after `starts_at`.
    pub ends_at: Option<String>,
}

impl CampaignRequest {
    /// The definition, or the first field that is wrong.
    pub fn validate(self) -> Result<CampaignDefinition, Rejection> {
        let campaign_id = check_campaign_id(&self.campaign_id)?;
        let name_chars = self.name.chars().count();
        if name_chars == 0 || name_chars > CAMPAIGN_NAME_CHARS_MAX {
            return Err(Rejection::invalid(
                "name",
                format!("must be 1 to {CAMPAIGN_NAME_CHARS_MAX} characters"),
            ));
        }
        if !is_iso_4217(&self.currency) {
            return Err(Rejection::invalid(
                "currency",
                "must be an ISO 4217 code such as \"USD\"",
            ));
        }
        if self.goal_cents == Some(0) {
            return Err(Rejection::invalid("goal_cents", "must be at least 1"));
        }
        let starts_at = timestamp("starts_at", self.starts_at)?;
        let ends_at = timestamp("ends_at", self.ends_at)?;
        if let (Some(start), Some(end)) = (starts_at, ends_at)
            && start >= end
        {
            return Err(Rejection::invalid("ends_at", "must be after starts_at"));
        }
        Ok(CampaignDefinition {
            campaign_id,
            name: self.name,
            currency: self.currency,
            goal_cents: self.goal_cents,
            starts_at,
            ends_at,
        })
    }
}

fn timestamp(field: &str, text: Option<String>) -> Result<Option<EventTime>, Rejection> {
    text.map(|text| {
        EventTime::parse_rfc3339(&text)
            .map_err(|_| Rejection::invalid(field, "must be an RFC 3339 timestamp"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CampaignRequest {
        CampaignRequest {
            campaign_id: "meals".into(),
            name: "Meals for kids".into(),
            currency: "USD".into(),
            goal_cents: Some(100),
            starts_at: Some("2025-01-01T00:00:00Z".into()),
            ends_at: Some("2025-02-01T00:00:00Z".into()),
        }
    }

    fn rejected_field(request: CampaignRequest) -> String {
        request.validate().unwrap_err().field.unwrap()
    }

    #[test]
    fn a_good_request_becomes_its_definition() {
        let definition = request().validate().unwrap();
        assert_eq!(definition.campaign_id, "meals");
        assert!(definition.starts_at < definition.ends_at);
    }

    #[test]
    fn each_wrong_field_is_named() {
        let name = |name: &str| CampaignRequest {
            name: name.into(),
            ..request()
        };
        assert_eq!(rejected_field(name("")), "name");
        assert_eq!(rejected_field(name(&"x".repeat(201))), "name");
        assert!(name(&"é".repeat(200)).validate().is_ok());
        let id = CampaignRequest {
            campaign_id: "Meals".into(),
            ..request()
        };
        assert_eq!(rejected_field(id), "campaign_id");
        let currency = CampaignRequest {
            currency: "usd".into(),
            ..request()
        };
        assert_eq!(rejected_field(currency), "currency");
        let goal = CampaignRequest {
            goal_cents: Some(0),
            ..request()
        };
        assert_eq!(rejected_field(goal), "goal_cents");
        let start = CampaignRequest {
            starts_at: Some("tomorrow".into()),
            ..request()
        };
        assert_eq!(rejected_field(start), "starts_at");
        let backwards = CampaignRequest {
            ends_at: request().starts_at,
            ..request()
        };
        assert_eq!(rejected_field(backwards), "ends_at");
    }
}
