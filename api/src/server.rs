//! The server side of the contract, on axum: an [`ApiError`] as a response, and path parameters
//! refused in the API's error shape.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A path parameter, with a bad one (not UTF-8, say) refused in the API's error shape rather
/// than axum's plain-text rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathParameter(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParameter {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("invalid path parameter: {}", rejection.body_text()),
            )
            .with_field(path_parameter_name(parts))),
        }
    }
}

/// The name of the route's path parameter, for error messages.
fn path_parameter_name(parts: &axum::http::request::Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .and_then(|path| path.as_str().split('{').nth(1))
        .and_then(|rest| rest.split('}').next())
        .unwrap_or("path")
        .to_owned()
}
