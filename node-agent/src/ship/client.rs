//! The QUIC client: keeps one connection to the aggregator and drains the outbox into it.
//!
//! One bidirectional stream per connection: `Hello` → `HelloAck` (resume point) → batches
//! pipelined up to a window, acks read concurrently. Any failure drops the connection;
//! unacked batches are resent on the next one, after an exponential backoff with jitter.
//! On stop, the client keeps going until the outbox is empty or the grace period ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::wire::{self, BatchFrame, Frame, Hello};
use quinn::{RecvStream, SendStream};
use thiserror::Error;
use tokio::sync::{Notify, watch};

use crate::ship::outbox::Outbox;
use crate::telemetry::AgentMetrics;

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Aggregator QUIC address.
    pub aggregator: SocketAddr,
    /// Name the aggregator's certificate must carry.
    pub server_name: String,
    /// TLS + transport.
    pub quic: quinn::ClientConfig,
    /// What we say first.
    pub hello: Hello,
    /// Batches in flight (sent, not acked) per connection.
    pub window: usize,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// After stop, how long to keep trying to deliver what is left.
    pub drain_grace: Duration,
}

/// The outbox and a wake-up for the client, shared with the collection loop.
#[derive(Debug)]
pub struct Shared {
    outbox: Mutex<Outbox>,
    /// Signalled when a batch is pushed.
    pub changed: Notify,
}

impl Shared {
    /// Wraps an outbox.
    pub fn new(outbox: Outbox) -> Self {
        Shared {
            outbox: Mutex::new(outbox),
            changed: Notify::new(),
        }
    }

    /// The outbox. A poisoned lock still holds a consistent queue (every method keeps
    /// its invariants before anything that could panic), so it is used as is.
    pub fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("aggregator refused us: {0}")]
    Rejected(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Runs until `stop` turns true and the outbox is drained (or the grace period ends).
pub async fn run(
    cfg: ClientConfig,
    shared: Arc<Shared>,
    metrics: AgentMetrics,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let bind: SocketAddr = if cfg.aggregator.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(cfg.quic.clone());
    let mut backoff = cfg.backoff_min;
    let mut deadline: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            let d = *deadline.get_or_insert_with(|| Instant::now() + cfg.drain_grace);
            if shared.outbox().is_empty() || Instant::now() >= d {
                break;
            }
        }
        match session(
            &endpoint,
            &cfg,
            &shared,
            &metrics,
            &mut stop,
            &mut deadline,
            &mut backoff,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => {
                metrics.connect_failures.inc();
                metrics.connected.set(0);
                match &e {
                    SessionError::Rejected(_) => {
                        tracing::error!(error = %e, "aggregator refused this node; will retry")
                    }
                    _ => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "no connection to the aggregator; batches wait in the outbox")
                    }
                }
            }
        }
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(cfg.backoff_max);
        let sleep_until = match deadline {
            Some(d) => (Instant::now() + delay).min(d),
            None => Instant::now() + delay,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until.into()) => {}
            _ = stop.changed(), if deadline.is_none() => {}
        }
    }
    metrics.connected.set(0);
    let left = shared.outbox().len();
    if left > 0 {
        tracing::warn!(
            batches = left,
            "stopping with batches not acked by the aggregator"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

fn jitter(d: Duration) -> Duration {
    // ±20% so a fleet that lost the aggregator together does not return in lockstep.
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(factor)
}

async fn session(
    endpoint: &quinn::Endpoint,
    cfg: &ClientConfig,
    shared: &Shared,
    metrics: &AgentMetrics,
    stop: &mut watch::Receiver<bool>,
    deadline: &mut Option<Instant>,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    let conn = endpoint
        .connect(cfg.aggregator, &cfg.server_name)
        .map_err(|e| SessionError::Connect(e.to_string()))?
        .await
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    write_frame(&mut send, &Frame::Hello(cfg.hello.clone())).await?;
    match read_frame(&mut recv).await? {
        Some(Frame::HelloAck(ack)) => {
            shared.outbox().handle_connected(ack.durable_through);
            tracing::info!(aggregator = %cfg.aggregator, durable_through = ?ack.durable_through, "connected");
        }
        Some(Frame::Reject { reason }) => return Err(SessionError::Rejected(reason)),
        Some(_) => return Err(SessionError::Protocol("expected HelloAck".into())),
        None => return Err(SessionError::Lost(close_reason(&conn))),
    }
    metrics.connected.set(1);
    *backoff = cfg.backoff_min;

    let reader = async {
        loop {
            match read_frame(&mut recv).await? {
                Some(Frame::Ack { seq, .. }) => {
                    let mut o = shared.outbox();
                    o.handle_ack(seq);
                    metrics.batches_acked.inc();
                    metrics.outbox_batches.set(o.len() as i64);
                    metrics.outbox_bytes.set(o.bytes() as i64);
                }
                Some(Frame::Nack { seq, reason, .. }) => {
                    tracing::error!(seq, reason = %reason, "aggregator refused a batch; dropped");
                    shared.outbox().handle_nack(seq);
                    metrics.batches_nacked.inc();
                }
                Some(Frame::Reject { reason }) => return Err(SessionError::Rejected(reason)),
                Some(_) => {
                    return Err(SessionError::Protocol(
                        "unexpected frame from aggregator".into(),
                    ));
                }
                None => return Err(SessionError::Lost(close_reason(&conn))),
            }
            shared.changed.notify_one();
        }
    };
    let writer = async {
        loop {
            loop {
                let bytes = {
                    let mut o = shared.outbox();
                    let Some(entry) = o.next_to_send(cfg.window) else {
                        break;
                    };
                    metrics
                        .payload_bytes_sent
                        .inc_by(entry.payload.len() as u64);
                    wire::encode_frame(&Frame::Batch(BatchFrame {
                        node: cfg.hello.node.clone(),
                        session: cfg.hello.session,
                        seq: entry.seq,
                        payload: entry.payload,
                    }))
                };
                send.write_all(&bytes)
                    .await
                    .map_err(|e| SessionError::Lost(e.to_string()))?;
                metrics.batches_sent.inc();
            }
            if *stop.borrow() {
                let d = *deadline.get_or_insert_with(|| Instant::now() + cfg.drain_grace);
                if shared.outbox().is_empty() || Instant::now() >= d {
                    return Ok::<(), SessionError>(());
                }
                tokio::select! {
                    _ = shared.changed.notified() => {}
                    _ = tokio::time::sleep_until(d.into()) => {}
                }
            } else {
                tokio::select! {
                    _ = shared.changed.notified() => {}
                    _ = stop.changed() => {}
                }
            }
        }
    };
    let result = tokio::select! {
        r = reader => r,
        w = writer => w,
    };
    if result.is_ok() {
        let _ = send.finish();
        conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
    }
    result
}

fn close_reason(conn: &quinn::Connection) -> String {
    conn.close_reason()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "stream closed".into())
}

async fn read_frame(recv: &mut RecvStream) -> Result<Option<Frame>, SessionError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(SessionError::Protocol("stream ended inside a frame".into()));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(SessionError::Lost(e.to_string())),
    }
    let len = wire::peek_frame_len(&prefix)
        .map_err(|e| SessionError::Protocol(e.to_string()))?
        .unwrap_or(0);
    let mut buf = vec![0u8; 4 + len];
    buf[..4].copy_from_slice(&prefix);
    recv.read_exact(&mut buf[4..])
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    match wire::decode_frame(&buf) {
        Ok(Some((frame, _))) => Ok(Some(frame)),
        Ok(None) => Err(SessionError::Protocol("short frame".into())),
        Err(e) => Err(SessionError::Protocol(e.to_string())),
    }
}

async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), SessionError> {
    send.write_all(&wire::encode_frame(frame))
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))
}
