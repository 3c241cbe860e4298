//! The QUIC client: keeps one connection to the aggregator and drains the outbox into it.
//!
//! One bidirectional stream per connection: `Hello` → `HelloAck` (resume point) → batches
//! pipelined up to a window, acks read concurrently. Any failure drops the connection;
//! unacked batches are resent on the next one, after an exponential backoff with jitter.
//! On stop, the client keeps going until the outbox is empty or the grace period ends.
//!
//! On a protocol-2 connection every batch is rewritten at send time into the connection
//! form (`common::dict::SenderDict`, one per connection, fed with the acks); the outbox and
//! spool keep the self-contained form, so a resend on any later connection works. When the
//! dictionary is full, the connection is drained and replaced by a fresh one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::dict::SenderDict;
use common::wire::{self, BatchFrame, DICTIONARY_VERSION, Frame, Hello};
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

/// How long a full dictionary's connection waits for its batches in flight to be answered
/// before it is replaced anyway (what is unanswered is resent on the next one).
const RENEW_DRAIN: Duration = Duration::from_secs(10);

/// How a session ended without error.
enum SessionEnd {
    /// Stopping: the outbox is drained or the grace period is over.
    Stopped,
    /// The series dictionary is full: open a fresh connection right away.
    Renew,
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
    let mut hello = cfg.hello.clone();
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
            &hello,
            &shared,
            &metrics,
            &mut stop,
            &mut deadline,
            &mut backoff,
        )
        .await
        {
            Ok(SessionEnd::Stopped) => break,
            Ok(SessionEnd::Renew) => {
                tracing::info!("series dictionary full; opening a fresh connection");
                continue;
            }
            Err(e) => {
                metrics.connect_failures.inc();
                metrics.connected.set(0);
                match &e {
                    // An aggregator older than protocol 2 refuses our version by name
                    // (its `check_hello` wording): speak protocol 1 to it from now on.
                    SessionError::Rejected(why)
                        if why.starts_with("protocol version")
                            && hello.protocol_version > wire::MIN_PROTOCOL_VERSION =>
                    {
                        tracing::warn!(error = %e, "aggregator speaks an older protocol; falling back to protocol 1 (self-contained batches)");
                        hello.protocol_version = wire::MIN_PROTOCOL_VERSION;
                    }
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

#[allow(clippy::too_many_arguments)]
async fn session(
    endpoint: &quinn::Endpoint,
    cfg: &ClientConfig,
    hello: &Hello,
    shared: &Shared,
    metrics: &AgentMetrics,
    stop: &mut watch::Receiver<bool>,
    deadline: &mut Option<Instant>,
    backoff: &mut Duration,
) -> Result<SessionEnd, SessionError> {
    let conn = endpoint
        .connect(cfg.aggregator, &cfg.server_name)
        .map_err(|e| SessionError::Connect(e.to_string()))?
        .await
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    write_frame(&mut send, &Frame::Hello(hello.clone())).await?;
    let version = match read_frame(&mut recv).await? {
        Some(Frame::HelloAck(ack)) => {
            shared.outbox().handle_connected(ack.durable_through);
            tracing::info!(aggregator = %cfg.aggregator, protocol = ack.protocol_version, durable_through = ?ack.durable_through, "connected");
            ack.protocol_version
        }
        Some(Frame::Reject { reason }) => return Err(SessionError::Rejected(reason)),
        Some(_) => return Err(SessionError::Protocol("expected HelloAck".into())),
        None => return Err(SessionError::Lost(close_reason(&conn))),
    };
    metrics.connected.set(1);
    *backoff = cfg.backoff_min;
    // This connection's dictionary (protocol 2); an older aggregator gets the spooled
    // self-contained payloads as they are.
    let version = version.min(hello.protocol_version);
    let dict_cell = Mutex::new((version >= DICTIONARY_VERSION).then(SenderDict::default));
    let dict = || lock(&dict_cell);

    let reader = async {
        loop {
            match read_frame(&mut recv).await? {
                Some(Frame::Ack { seq, .. }) => {
                    if let Some(d) = dict().as_mut() {
                        d.on_ack(seq);
                    }
                    let mut o = shared.outbox();
                    o.handle_ack(seq);
                    metrics.batches_acked.inc();
                    metrics.outbox_batches.set(o.len() as i64);
                    metrics.outbox_bytes.set(o.bytes() as i64);
                }
                Some(Frame::Nack { seq, reason, .. }) => {
                    tracing::error!(seq, reason = %reason, "aggregator refused a batch; dropped");
                    if let Some(d) = dict().as_mut() {
                        d.on_refused(seq);
                    }
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
                if dict().as_ref().is_some_and(SenderDict::is_full) {
                    return renew(shared, &dict_cell).await;
                }
                let Some(entry) = shared.outbox().next_to_send(cfg.window) else {
                    break;
                };
                // Outside the outbox lock: the collection loop keeps pushing meanwhile.
                let payload = match dict().as_mut() {
                    Some(d) => d.encode(entry.seq, &entry.payload).unwrap_or_else(|e| {
                        // The aggregator will refuse it with a reason; nothing to fix here.
                        tracing::error!(seq = entry.seq, error = %e, "spooled batch does not decode; sent as is");
                        entry.payload
                    }),
                    None => entry.payload,
                };
                metrics.payload_bytes_sent.inc_by(payload.len() as u64);
                let bytes = wire::encode_frame(&Frame::Batch(BatchFrame {
                    node: cfg.hello.node.clone(),
                    session: cfg.hello.session,
                    seq: entry.seq,
                    payload,
                }));
                send.write_all(&bytes)
                    .await
                    .map_err(|e| SessionError::Lost(e.to_string()))?;
                metrics.batches_sent.inc();
            }
            if *stop.borrow() {
                let d = *deadline.get_or_insert_with(|| Instant::now() + cfg.drain_grace);
                if shared.outbox().is_empty() || Instant::now() >= d {
                    return Ok::<SessionEnd, SessionError>(SessionEnd::Stopped);
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
    match &result {
        Ok(SessionEnd::Stopped) => {
            let _ = send.finish();
            conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
        }
        Ok(SessionEnd::Renew) => {
            let _ = send.finish();
            conn.close(quinn::VarInt::from_u32(0), b"series dictionary full");
        }
        Err(_) => {}
    }
    result
}

/// Waits (bounded) until every batch sent on this connection is answered, so the fresh
/// connection does not resend what was about to be acked.
async fn renew(
    shared: &Shared,
    dict: &Mutex<Option<SenderDict>>,
) -> Result<SessionEnd, SessionError> {
    let deadline = Instant::now() + RENEW_DRAIN;
    while lock(dict).as_ref().is_some_and(|d| d.unanswered() > 0) && Instant::now() < deadline {
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
    Ok(SessionEnd::Renew)
}

/// The dictionary: a poisoned lock still holds a consistent one (each method finishes its
/// bookkeeping before anything that could panic).
fn lock(dict: &Mutex<Option<SenderDict>>) -> MutexGuard<'_, Option<SenderDict>> {
    dict.lock().unwrap_or_else(|p| p.into_inner())
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
