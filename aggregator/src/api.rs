//! HTTP API (axum): SQL, health and the aggregator's own metrics.
//!
//! Data path: the last step: operators and the dashboard read what [`crate::store`] holds
//! through [`crate::query`].

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::query::{QueryError, QueryLimits, QuerySource, routes};
use crate::store::Store;

impl QuerySource for Store {
    fn session_context(&self) -> Result<datafusion::prelude::SessionContext, QueryError> {
        Store::session_context(self).map_err(|e| QueryError::Server(format!("cannot open the tables: {e}")))
    }
}

/// The whole HTTP surface.
pub fn router(store: Store, metrics: Metrics, limits: QueryLimits) -> anyhow::Result<Router> {
    let sql = routes(Arc::new(store), limits, &metrics.registry)?;
    let metrics_route = {
        let metrics = metrics.clone();
        get(move || {
            let body = metrics.render();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
        })
    };
    Ok(Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n").into_response() }))
        .route("/metrics", metrics_route)
        .merge(sql))
}
