//! `GET /api/v1/openapi.json`: the hand-written OpenAPI 3.0 document (`openapi.json`
//! beside this file). A test checks it parses and names every route.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document.
pub const SPEC: &str = include_str!("openapi.json");

pub(super) async fn spec() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], SPEC).into_response()
}
