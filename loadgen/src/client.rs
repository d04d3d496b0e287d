//! The load generator's view of a tally server: signed donation callbacks, admin calls and the
//! read endpoints, each answer read in the contract's shapes ([`tally_api::views`]) and reduced
//! to what the run needs to know.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use tally_api::ErrorBody;
use tally_api::signature::{SIGNATURE_HEADER, SigningSecret, sign};
use tally_api::views::{Accepted, BatchOutcome, CampaignView, StatsView};

/// Where one accepted donation landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub partition: usize,
    pub offset: u64,
}

/// The answer to one `POST /v1/donations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SingleAnswer {
    /// 2xx: durable in the log.
    Accepted(Placement),
    /// A final refusal: the status and the error code.
    Refused { status: u16, code: String },
    /// 429 or 503: come back after `wait`.
    RetryAfter { status: u16, wait: Duration },
    /// No answer at all (refused or cut connection): the outcome is unknown.
    Unreachable,
}

/// The answer to one `POST /v1/donations/batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchAnswer {
    /// 200: per item, accepted with its placement or rejected with a code.
    Answered {
        accepted: Vec<(usize, Placement)>,
        rejected: Vec<(usize, String)>,
    },
    Refused {
        status: u16,
        code: String,
    },
    RetryAfter {
        status: u16,
        wait: Duration,
    },
    Unreachable,
}

/// How a signed POST ended without a 2xx answer to read.
#[derive(Debug)]
enum Unanswered {
    Refused { status: u16, code: String },
    RetryAfter { status: u16, wait: Duration },
    Unreachable,
}

impl From<Unanswered> for SingleAnswer {
    fn from(unanswered: Unanswered) -> Self {
        match unanswered {
            Unanswered::Refused { status, code } => SingleAnswer::Refused { status, code },
            Unanswered::RetryAfter { status, wait } => SingleAnswer::RetryAfter { status, wait },
            Unanswered::Unreachable => SingleAnswer::Unreachable,
        }
    }
}

impl From<Unanswered> for BatchAnswer {
    fn from(unanswered: Unanswered) -> Self {
        match unanswered {
            Unanswered::Refused { status, code } => BatchAnswer::Refused { status, code },
            Unanswered::RetryAfter { status, wait } => BatchAnswer::RetryAfter { status, wait },
            Unanswered::Unreachable => BatchAnswer::Unreachable,
        }
    }
}

/// A tally server over HTTP.
#[derive(Debug, Clone)]
pub struct Server {
    http: reqwest::Client,
    base: String,
    secret: std::sync::Arc<SigningSecret>,
    admin_token: String,
}

/// How long one request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    pub fn new(
        base: &str,
        secret: SigningSecret,
        admin_token: String,
        connections: usize,
    ) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            secret: std::sync::Arc::new(secret),
            admin_token,
        })
    }

    /// A client for `/healthz` only, before the credentials are known.
    pub fn health_probe(base: &str) -> reqwest::Result<Self> {
        Self::new(base, SigningSecret::from_text(""), String::new(), 1)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Creates a USD campaign; one that exists already (409 `campaign_exists`) is fine.
    pub async fn create_campaign(&self, campaign_id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/campaigns", self.base))
            .bearer_auth(&self.admin_token)
            .json(&serde_json::json!({
                "campaign_id": campaign_id,
                "name": campaign_id,
                "currency": "USD",
            }))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let exists = status == 409 && error_code(text.as_bytes()) == "campaign_exists";
        anyhow::ensure!(exists, "creating campaign {campaign_id}: {status} {text}");
        Ok(())
    }

    pub async fn post_donation(&self, body: &[u8]) -> SingleAnswer {
        match self
            .post_signed_json::<Accepted>("/v1/donations", body)
            .await
        {
            Ok(accepted) => SingleAnswer::Accepted(Placement {
                partition: accepted.partition as usize,
                offset: accepted.offset,
            }),
            Err(unanswered) => unanswered.into(),
        }
    }

    pub async fn post_batch(&self, body: &[u8]) -> BatchAnswer {
        let outcome = match self
            .post_signed_json::<BatchOutcome>("/v1/donations/batch", body)
            .await
        {
            Ok(outcome) => outcome,
            Err(unanswered) => return unanswered.into(),
        };
        let accepted = outcome
            .results
            .into_iter()
            .map(|result| {
                let placement = Placement {
                    partition: result.partition as usize,
                    offset: result.offset,
                };
                (result.index, placement)
            })
            .collect();
        let rejected = outcome
            .rejected
            .into_iter()
            .map(|rejection| (rejection.index, rejection.code))
            .collect();
        BatchAnswer::Answered { accepted, rejected }
    }

    /// `GET /v1/campaigns/{id}`, or `None` while the server does not answer.
    pub async fn campaign(&self, campaign_id: &str) -> Option<CampaignView> {
        self.get_json(&format!("/v1/campaigns/{campaign_id}")).await
    }

    /// `GET /v1/campaigns/{id}/stats` over `[from_ms, to_ms)` with a per-minute series.
    pub async fn stats(&self, campaign_id: &str, from_ms: i64, to_ms: i64) -> Option<StatsView> {
        let (from, to) = (
            crate::traffic::rfc3339(from_ms),
            crate::traffic::rfc3339(to_ms),
        );
        self.get_json(&format!(
            "/v1/campaigns/{campaign_id}/stats?from={from}&to={to}&bucket=minute"
        ))
        .await
    }

    /// Whether the server recorded this payment: `Some(true)` 200, `Some(false)` 404.
    pub async fn is_recorded(&self, payment_ref: &str) -> Option<bool> {
        let url = format!("{}/v1/donations/{payment_ref}", self.base);
        let response = self.http.get(url).send().await.ok()?;
        match response.status().as_u16() {
            200 => Some(true),
            404 => Some(false),
            _ => None,
        }
    }

    pub async fn is_healthy(&self) -> bool {
        let url = format!("{}/healthz", self.base);
        self.http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Option<T> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// A signed POST's JSON answer when it is a 2xx; otherwise how it ended.
    async fn post_signed_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<T, Unanswered> {
        let response = self
            .signed_post(path, body)
            .await
            .map_err(|_| Unanswered::Unreachable)?;
        let status = response.status();
        if let Some(wait) = retry_after(&response) {
            let status = status.as_u16();
            return Err(Unanswered::RetryAfter { status, wait });
        }
        let bytes = response.bytes().await;
        if status.is_success() {
            // A 2xx whose body did not arrive, or is not the answer: the outcome is unknown.
            let answer = bytes.ok().and_then(|b| serde_json::from_slice(&b).ok());
            return answer.ok_or(Unanswered::Unreachable);
        }
        Err(Unanswered::Refused {
            status: status.as_u16(),
            code: error_code(&bytes.unwrap_or_default()),
        })
    }

    async fn signed_post(&self, path: &str, body: &[u8]) -> reqwest::Result<reqwest::Response> {
        let signature = sign(&self.secret, unix_seconds(), body);
        self.http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .send()
            .await
    }
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// For 429 and 503: the wait the server asked for (a second when it named none).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    if !matches!(response.status().as_u16(), 429 | 503) {
        return None;
    }
    let seconds = response
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    Some(Duration::from_secs(seconds))
}

/// The `code` of an error answer, or `unknown` when the body is not in the API's error shape.
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map_or_else(|_| "unknown".to_owned(), |answer| answer.error.code)
}
