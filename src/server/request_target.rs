//! The request target's length: an overlong one is refused in the API's error shape before any
//! route sees it.
//!
//! hyper answers a request head over [`REQUEST_HEAD_BYTES_MAX`] (target included) with its own
//! `431` and an empty body, before this server's code runs; this limit is well below that, so
//! the requests that reach the router and are too long get the JSON shape.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tally_api::ApiError;

use super::connections::REQUEST_HEAD_BYTES_MAX;

/// The longest path and query taken, in bytes: what common servers and proxies accept by
/// default (nginx's 8 KiB header buffers). The longest target of this API, a statistics query
/// with a 64-character campaign id, is under 200 bytes.
pub const URI_BYTES_MAX: usize = 8 * 1024;
/// A target at the limit fits in a head hyper reads, beside a callback's headers (under 2 KiB).
const _: () = assert!(URI_BYTES_MAX + 2 * 1024 <= REQUEST_HEAD_BYTES_MAX);

pub async fn refuse_long_uri(request: Request, next: Next) -> Response {
    let target_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target_bytes > URI_BYTES_MAX {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {target_bytes} bytes; at most {URI_BYTES_MAX} are taken"
            ),
        )
        .into_response();
    }
    next.run(request).await
}
