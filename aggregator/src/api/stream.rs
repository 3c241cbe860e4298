//! `GET /api/v1/stream`: Server-Sent Events.
//!
//! Events: `ready` (once, on connect), `anomaly` (each new anomaly), `incident` (opened,
//! updated, resolved: the incident summary plus `change` and `at_ms`), and `lagged`
//! (`{"missed": N}`) when this client fell behind and the bounded buffer dropped N
//! messages. The driver never waits for a client.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{AppState, bad_request};

/// Parameters of `GET /api/v1/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Comma-separated event names to receive: `anomaly`, `incident` (default both).
    pub events: Option<String>,
}

pub(super) async fn stream(
    State(app): State<AppState>,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return bad_request(e.body_text()),
    };
    let mut want_anomaly = true;
    let mut want_incident = true;
    if let Some(list) = &p.events {
        want_anomaly = false;
        want_incident = false;
        for name in list.split(',').map(str::trim) {
            match name {
                "anomaly" => want_anomaly = true,
                "incident" => want_incident = true,
                other => {
                    return bad_request(format!(
                        "events: unknown event {other:?}; use anomaly, incident"
                    ));
                }
            }
        }
    }
    let rx = app.hub.subscribe();
    let (open, ready) = {
        let st = app.hub.lock();
        (st.correlator.open_count(), st.ready)
    };
    let hello = Event::default()
        .event("ready")
        .data(json!({ "open_incidents": open, "replayed": ready }).to_string());
    let first = stream::iter([Ok::<Event, Infallible>(hello)]);
    let rest = stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(msg) => {
                    let wanted = match msg.event {
                        "anomaly" => want_anomaly,
                        "incident" => want_incident,
                        _ => true,
                    };
                    if !wanted {
                        continue;
                    }
                    let ev = Event::default().event(msg.event).data(msg.data.to_string());
                    return Some((Ok::<Event, Infallible>(ev), rx));
                }
                Err(RecvError::Lagged(n)) => {
                    let ev = Event::default()
                        .event("lagged")
                        .data(json!({ "missed": n }).to_string());
                    return Some((Ok(ev), rx));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt as _;
    Sse::new(first.chain(rest))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
