//! The load generator's view of a tally server: signed donation callbacks, admin calls and the
//! read endpoints, each answer read in the contract's shapes ([`tally_api::views`]) and reduced
//! to what the run needs to know.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use tally_api::ErrorBody;
use tally_api::signature::{SIGNATURE_HEADER, SigningSecret, sign};
use tally_api::views::{Accepted, BatchOutcome, CampaignView, RefundAccepted, StatsView};

use crate::http::{HttpError, Pool, Request, Response};

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

/// A callback's `Tally-Signature` header, made ahead of sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    header: String,
    signed_at_s: i64,
}

impl Signed {
    /// Signs `body` with `secret` now.
    pub fn now(secret: &SigningSecret, body: &[u8]) -> Self {
        let signed_at_s = unix_seconds();
        Self {
            header: sign(secret, signed_at_s, body),
            signed_at_s,
        }
    }

    pub fn header(&self) -> &str {
        &self.header
    }

    /// When it was made, in Unix seconds.
    pub fn signed_at_s(&self) -> i64 {
        self.signed_at_s
    }

    /// Whether it is young enough to send: well inside the server's five-minute tolerance.
    fn is_fresh(&self) -> bool {
        unix_seconds() - self.signed_at_s < SIGNATURE_REUSE_S
    }
}

/// A signature made ahead is sent for this long; a request sent later (a resend minutes
/// after, or a retry) is signed again.
const SIGNATURE_REUSE_S: i64 = 60;

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

/// A tally server over HTTP, on a pool of lean keep-alive connections ([`crate::http`]).
#[derive(Debug, Clone)]
pub struct Server {
    pool: Arc<Pool>,
    base: String,
    secret: Arc<SigningSecret>,
    /// `Bearer <token>`, ready to send.
    admin_authorization: String,
}

/// How long one request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a health probe may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl Server {
    pub fn new(
        base: &str,
        secret: SigningSecret,
        admin_token: String,
        connections: usize,
    ) -> Result<Self, HttpError> {
        let base = base.trim_end_matches('/').to_owned();
        Ok(Self {
            pool: Arc::new(Pool::new(&base, connections)?),
            base,
            secret: Arc::new(secret),
            admin_authorization: format!("Bearer {admin_token}"),
        })
    }

    /// A client for `/healthz` only, before the credentials are known.
    pub fn health_probe(base: &str) -> Result<Self, HttpError> {
        Self::new(base, SigningSecret::from_text(""), String::new(), 1)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Creates a USD campaign; one that exists already (409 `campaign_exists`) is fine.
    pub async fn create_campaign(&self, campaign_id: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({
            "campaign_id": campaign_id,
            "name": campaign_id,
            "currency": "USD",
        }))?;
        let headers = [("Authorization", self.admin_authorization.as_str())];
        let response = self
            .pool
            .send(
                Request::post_json("/v1/campaigns", &headers, &body),
                REQUEST_TIMEOUT,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.base))?;
        if response.is_success() {
            return Ok(());
        }
        let exists = response.status == 409 && error_code(&response.body) == "campaign_exists";
        anyhow::ensure!(
            exists,
            "creating campaign {campaign_id}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        Ok(())
    }

    /// `POST /v1/donations` of `body`, with `signed` when it is still fresh (else signed now).
    pub async fn post_donation(&self, body: &[u8], signed: Option<&Signed>) -> SingleAnswer {
        match self
            .post_signed_json::<Accepted>("/v1/donations", body, signed)
            .await
        {
            Ok(accepted) => SingleAnswer::Accepted(Placement {
                partition: accepted.partition as usize,
                offset: accepted.offset,
            }),
            Err(unanswered) => unanswered.into(),
        }
    }

    /// `POST /v1/refunds` of `body`, with `signed` when it is still fresh (else signed now).
    pub async fn post_refund(&self, body: &[u8], signed: Option<&Signed>) -> SingleAnswer {
        match self
            .post_signed_json::<RefundAccepted>("/v1/refunds", body, signed)
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
            .post_signed_json::<BatchOutcome>("/v1/donations/batch", body, None)
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
        let path = format!("/v1/donations/{payment_ref}");
        let response = self
            .pool
            .send(Request::get(&path), REQUEST_TIMEOUT)
            .await
            .ok()?;
        match response.status {
            200 => Some(true),
            404 => Some(false),
            _ => None,
        }
    }

    pub async fn is_healthy(&self) -> bool {
        self.pool
            .send(Request::get("/healthz"), HEALTH_TIMEOUT)
            .await
            .is_ok_and(|response| response.is_success())
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Option<T> {
        let response = self
            .pool
            .send(Request::get(path), REQUEST_TIMEOUT)
            .await
            .ok()?;
        if !response.is_success() {
            return None;
        }
        serde_json::from_slice(&response.body).ok()
    }

    /// A signed POST's JSON answer when it is a 2xx; otherwise how it ended.
    async fn post_signed_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
        signed: Option<&Signed>,
    ) -> Result<T, Unanswered> {
        let signed_now;
        let signed = match signed {
            Some(signed) if signed.is_fresh() => signed,
            _ => {
                signed_now = Signed::now(&self.secret, body);
                &signed_now
            }
        };
        let headers = [(SIGNATURE_HEADER, signed.header.as_str())];
        let response = self
            .pool
            .send(Request::post_json(path, &headers, body), REQUEST_TIMEOUT)
            .await
            .map_err(|_| Unanswered::Unreachable)?;
        if let Some(wait) = retry_after(&response) {
            let status = response.status;
            return Err(Unanswered::RetryAfter { status, wait });
        }
        if response.is_success() {
            // A 2xx whose body is not the answer: the outcome is unknown.
            return serde_json::from_slice(&response.body).map_err(|_| Unanswered::Unreachable);
        }
        Err(Unanswered::Refused {
            status: response.status,
            code: error_code(&response.body),
        })
    }
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// For 429 and 503: the wait the server asked for (a second when it named none).
fn retry_after(response: &Response) -> Option<Duration> {
    if !matches!(response.status, 429 | 503) {
        return None;
    }
    Some(Duration::from_secs(response.retry_after.unwrap_or(1)))
}

/// The `code` of an error answer, or `unknown` when the body is not in the API's error shape.
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map_or_else(|_| "unknown".to_owned(), |answer| answer.error.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_made_ahead_is_sent_only_while_fresh() {
        let secret = SigningSecret::from_text("secret");
        let fresh = Signed::now(&secret, b"{}");
        assert!(fresh.is_fresh());
        let old = Signed {
            signed_at_s: fresh.signed_at_s - SIGNATURE_REUSE_S,
            ..fresh
        };
        assert!(
            !old.is_fresh(),
            "a signature this old is made again at send"
        );
    }
}
