//! Ingest: the QUIC endpoint nodes stream their batches to.
//!
//! Data path: **ingest** → wal → store. Per connection: the TLS handshake proves the
//! node's identity (its client certificate, signed by our CA, names it); the first frame
//! must be a `Hello` for that same node; then every `Batch` is checked (node and session
//! match the connection), decoded (bounds-checked; undecodable → `Nack`), queued in the
//! WAL in arrival order, and acked only once durable. Acks go back in order while later
//! batches are already being written (pipelining).
//!
//! Protocol 2 connections name series by ids (`common::dict`): each connection keeps its
//! own bounded dictionary, and a batch is resolved back to the self-contained form before
//! the WAL, so the WAL, dedup and the store never see ids. A connection whose dictionary
//! cannot be trusted any more (an id used before its definition, a redefinition, over the
//! cap) is closed after the acks of the batches before it; the agent's next connection
//! starts both dictionaries empty and resends what was not acked.
//!
//! Bounds: connections (a semaphore; past it, new connections are refused with a clear
//! close reason), unread bytes per connection (the QUIC receive windows), batches in flight
//! per connection, decoded bytes in flight overall, batches decoding at once (off the async
//! runtime), and the store's memory (ingest waits while a flush catches up).

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use common::codec;
use common::dict::{DictError, ReceiverDict, Resolved};
use common::wire::{
    self, DICTIONARY_VERSION, Frame, Hello, HelloAck, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use quinn::{RecvStream, SendStream};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::metrics::Metrics;
use crate::store::schema::DecodedBatch;
use crate::store::state::Applied;
use crate::store::{IngestPending, Store, schema};
use crate::wal::WalEntry;

/// Ingest limits.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Node connections at once.
    pub max_connections: usize,
    /// Batches one connection may have in flight (read but not yet acked).
    pub max_inflight_batches: usize,
    /// KiB in flight over all connections: batches read but not yet acked, counted as
    /// they are once decoded (Arrow rows plus the WAL copy).
    pub max_inflight_kib: usize,
    /// Batches decoded at once (each on a thread of the blocking pool).
    pub decoders: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_connections: 10_000,
            max_inflight_batches: 64,
            max_inflight_kib: 128 * 1024,
            decoders: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// QUIC application close codes (also in docs/wire.md).
pub mod close_code {
    /// Normal end.
    pub const DONE: u32 = 0;
    /// Hello refused (version, identity).
    pub const REFUSED: u32 = 1;
    /// Protocol violation (unexpected or malformed frame).
    pub const PROTOCOL: u32 = 2;
    /// Too many connections: try again later.
    pub const BUSY: u32 = 3;
    /// Aggregator cannot store right now (disk): try again later.
    pub const UNAVAILABLE: u32 = 4;
    /// A batch claimed another node's identity.
    pub const IDENTITY: u32 = 5;
    /// The connection's series dictionary is out of sync (an id used before its
    /// definition): reconnect, both ends start empty, nothing acked is lost.
    pub const RESYNC: u32 = 6;
}

/// Why a connection ended badly.
#[derive(Debug, Error)]
enum ConnError {
    #[error("TLS/QUIC handshake failed: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error("no usable client certificate: {0}")]
    Identity(String),
    #[error("stream read failed: {0}")]
    Read(String),
    #[error("stream write failed: {0}")]
    Write(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("store unavailable: {0}")]
    Store(String),
    /// The connection's series dictionary cannot be trusted; closed with `code` once the
    /// batches before are acked.
    #[error("series dictionary: {reason}")]
    Dictionary { code: u32, reason: String },
}

/// Serves connections on `endpoint` until `shutdown` turns true.
pub async fn run(
    endpoint: quinn::Endpoint,
    store: Store,
    metrics: Metrics,
    limits: IngestLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn_slots = Arc::new(Semaphore::new(limits.max_connections));
    let budgets = Arc::new(Budgets {
        inflight: Arc::new(Semaphore::new(limits.max_inflight_kib)),
        inflight_kib: limits.max_inflight_kib.max(1),
        decoders: Semaphore::new(limits.decoders.max(1)),
    });
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.changed() => break,
        };
        let Ok(slot) = conn_slots.clone().try_acquire_owned() else {
            metrics.connections.with_label_values(&["shed"]).inc();
            tracing::warn!(remote = %incoming.remote_address(), limit = limits.max_connections, "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let (store, metrics, budgets, limits) = (
            store.clone(),
            metrics.clone(),
            budgets.clone(),
            limits.clone(),
        );
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            metrics.connections_open.inc();
            let res = handle(incoming, &store, &metrics, &budgets, &limits).await;
            metrics.connections_open.dec();
            drop(slot);
            match res {
                Ok(node) => tracing::info!(%remote, node = %node, "node disconnected"),
                Err(ConnError::Handshake(e)) => {
                    metrics
                        .connections
                        .with_label_values(&["refused_tls"])
                        .inc();
                    tracing::warn!(%remote, error = %e, "connection refused during TLS handshake (unknown CA or bad certificate?)");
                }
                Err(e) => tracing::warn!(%remote, error = %e, "connection ended"),
            }
        });
    }
    endpoint.close(
        quinn::VarInt::from_u32(close_code::DONE),
        b"aggregator shutting down",
    );
}

/// What all connections share: memory in flight, and the decoders.
struct Budgets {
    /// Permits are KiB of decoded batches not yet acked.
    inflight: Arc<Semaphore>,
    /// Its size: one batch never waits for more than all of it.
    inflight_kib: usize,
    /// Permits are batches being decoded.
    decoders: Semaphore,
}

/// Binds the QUIC endpoint.
pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    quinn::Endpoint::server(config, addr)
        .map_err(|e| anyhow::anyhow!("cannot bind QUIC on {addr}: {e}"))
}

fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(quinn::VarInt::from_u32(code), reason.as_bytes());
}

async fn handle(
    incoming: quinn::Incoming,
    store: &Store,
    metrics: &Metrics,
    budgets: &Budgets,
    limits: &IngestLimits,
) -> Result<String, ConnError> {
    let conn = incoming.await?;
    let node = peer_node(&conn)?;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| ConnError::Read(e.to_string()))?;

    let first = match read_frame(&mut recv).await {
        Ok(f) => f,
        Err(ConnError::Protocol(why)) => {
            close(&conn, close_code::PROTOCOL, &why);
            return Err(ConnError::Protocol(why));
        }
        Err(e) => return Err(e),
    };
    let hello = match first {
        Some(Frame::Hello(h)) => h,
        Some(other) => {
            return Err(refuse(
                &conn,
                &mut send,
                close_code::PROTOCOL,
                format!("expected Hello, got {}", frame_name(&other)),
            )
            .await);
        }
        None => return Err(ConnError::Protocol("stream closed before Hello".into())),
    };
    if let Err(why) = check_hello(&hello, &node) {
        metrics
            .connections
            .with_label_values(&["refused_hello"])
            .inc();
        return Err(refuse(&conn, &mut send, close_code::REFUSED, why).await);
    }
    store
        .record_hello(WalEntry::Hello {
            node: node.clone(),
            agent_version: hello.agent_version.clone(),
            boot_id: hello.boot_id.clone(),
            session: hello.session,
            capabilities: hello.capabilities.clone(),
            received_ms: now_ms(),
        })
        .await
        .map_err(|e| ConnError::Store(e.to_string()))?;
    let durable_through = store.durable_through(&node, hello.session);
    let version = hello.protocol_version.min(PROTOCOL_VERSION);
    write_frame(
        &mut send,
        &Frame::HelloAck(HelloAck {
            protocol_version: version,
            durable_through,
        }),
    )
    .await?;
    metrics.connections.with_label_values(&["accepted"]).inc();
    tracing::info!(node = %node, session = hello.session, agent = %hello.agent_version, protocol = version, ?durable_through, "node connected");
    let dict = (version >= DICTIONARY_VERSION).then(ReceiverDict::default);

    // Acks leave in the order batches arrived, while later batches are being written.
    let (ack_tx, mut ack_rx) = mpsc::channel::<AckJob>(limits.max_inflight_batches);
    let ack_metrics = metrics.clone();
    let ack_conn = conn.clone();
    let acker = tokio::spawn(async move {
        while let Some(job) = ack_rx.recv().await {
            let frame = match job.outcome {
                Outcome::Ready(frame) => frame,
                Outcome::Pending(p) => match p.wait().await {
                    Ok(Applied::Stored { samples }) => {
                        ack_metrics.batches.with_label_values(&["stored"]).inc();
                        ack_metrics.samples.inc_by(samples as u64);
                        Frame::Ack {
                            session: job.session,
                            seq: job.seq,
                        }
                    }
                    Ok(Applied::Duplicate) => {
                        ack_metrics.batches.with_label_values(&["duplicate"]).inc();
                        Frame::Ack {
                            session: job.session,
                            seq: job.seq,
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "batch not stored; closing so the node resends later");
                        close(
                            &ack_conn,
                            close_code::UNAVAILABLE,
                            "aggregator cannot store right now",
                        );
                        return;
                    }
                },
            };
            drop(job.permit);
            if write_frame(&mut send, &frame).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });

    let result = read_batches(
        &conn, &mut recv, &node, &hello, dict, store, metrics, budgets, &ack_tx,
    )
    .await;
    drop(ack_tx);
    let _ = acker.await;
    match result {
        Ok(()) => {
            close(&conn, close_code::DONE, "bye");
            Ok(node)
        }
        Err(ConnError::Dictionary { code, reason }) => {
            close(&conn, code, &reason);
            Err(ConnError::Dictionary { code, reason })
        }
        Err(e) => Err(e),
    }
}

enum Outcome {
    Ready(Frame),
    Pending(IngestPending),
}

struct AckJob {
    session: u64,
    seq: u64,
    outcome: Outcome,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

#[allow(clippy::too_many_arguments)]
async fn read_batches(
    conn: &quinn::Connection,
    recv: &mut RecvStream,
    node: &str,
    hello: &Hello,
    mut dict: Option<ReceiverDict>,
    store: &Store,
    metrics: &Metrics,
    budgets: &Budgets,
    ack_tx: &mpsc::Sender<AckJob>,
) -> Result<(), ConnError> {
    loop {
        let frame = match read_frame(recv).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(ConnError::Protocol(why)) => {
                close(conn, close_code::PROTOCOL, &why);
                return Err(ConnError::Protocol(why));
            }
            Err(e) => return Err(e),
        };
        let Frame::Batch(batch) = frame else {
            let why = format!("expected Batch, got {}", frame_name(&frame));
            close(conn, close_code::PROTOCOL, &why);
            return Err(ConnError::Protocol(why));
        };
        if batch.node != node {
            metrics
                .batches
                .with_label_values(&["rejected_identity"])
                .inc();
            let why = format!(
                "batch for node {:?} on a connection authenticated as {:?}",
                batch.node, node
            );
            close(conn, close_code::IDENTITY, &why);
            return Err(ConnError::Refused(why));
        }
        if batch.session != hello.session {
            let why = format!(
                "batch for session {} on a connection opened for session {}",
                batch.session, hello.session
            );
            close(conn, close_code::PROTOCOL, &why);
            return Err(ConnError::Protocol(why));
        }
        metrics.payload_bytes.inc_by(batch.payload.len() as u64);
        let (session, seq) = (batch.session, batch.seq);
        if store
            .durable_through(node, session)
            .is_some_and(|max| seq <= max)
        {
            // It will be acked, and the agent then counts the definitions it carried as
            // known here: learn them although the records are not stored again.
            if let Some(d) = dict.as_mut() {
                match d.learn(&batch.payload) {
                    Err(e) if e.ends_connection() => return Err(dictionary_error(node, seq, e)),
                    Err(e) => {
                        tracing::debug!(node = %node, session, seq, error = %e, "duplicate batch does not decode; acked anyway")
                    }
                    Ok(_) => {}
                }
            }
            metrics.batches.with_label_values(&["duplicate"]).inc();
            send_job(
                ack_tx,
                AckJob {
                    session,
                    seq,
                    outcome: Outcome::Ready(Frame::Ack { session, seq }),
                    permit: None,
                },
            )
            .await?;
            continue;
        }
        // Decoding is CPU work of milliseconds: it runs on the blocking pool, a few batches
        // at a time, so the QUIC endpoint and the other connections keep being served.
        let slot = budgets
            .decoders
            .acquire()
            .await
            .map_err(|e| ConnError::Store(e.to_string()))?;
        let (returned, decoded) = decode_off_runtime(dict.take(), node, batch.payload).await?;
        dict = returned;
        let decoded = match decoded {
            Err(Undecodable::Dictionary(e)) => return Err(dictionary_error(node, seq, e)),
            Err(Undecodable::Batch(why)) => Err(why),
            Ok(d) => Ok(d),
        };
        // The in-flight budget counts what a batch holds once decoded (Arrow rows plus the
        // WAL copy), not its wire size: protocol 2 makes the wire 40 times smaller.
        let kib = match &decoded {
            Ok((arrow, wal_payload)) => (arrow.memory_size() + wal_payload.len()) / 1024 + 1,
            Err(_) => 1,
        };
        let permit = budgets
            .inflight
            .clone()
            .acquire_many_owned(kib.min(budgets.inflight_kib) as u32)
            .await
            .map_err(|e| ConnError::Store(e.to_string()))?;
        drop(slot);
        if decoded.is_ok() {
            store.wait_for_room().await;
        }
        let outcome = match decoded {
            Ok((decoded, wal_payload)) => {
                let entry = WalEntry::Batch {
                    node: node.to_string(),
                    session,
                    seq,
                    received_ms: now_ms(),
                    payload: wal_payload,
                };
                let pending = store
                    .submit(entry, decoded)
                    .await
                    .map_err(|e| ConnError::Store(e.to_string()))?;
                Outcome::Pending(pending)
            }
            Err(why) => {
                metrics
                    .batches
                    .with_label_values(&["rejected_malformed"])
                    .inc();
                tracing::warn!(node = %node, session, seq, error = %why, "undecodable batch refused");
                Outcome::Ready(Frame::Nack {
                    session,
                    seq,
                    reason: why,
                })
            }
        };
        send_job(
            ack_tx,
            AckJob {
                session,
                seq,
                outcome,
                permit: Some(permit),
            },
        )
        .await?;
    }
}

/// Why a batch could not be decoded.
enum Undecodable {
    /// The connection's dictionary cannot be trusted any more: the connection ends.
    Dictionary(DictError),
    /// This batch is bad (it is nacked); the connection goes on.
    Batch(String),
}

type Decoded = Result<(DecodedBatch, Vec<u8>), Undecodable>;

/// Decodes a batch on the blocking pool: resolves its series ids through the connection's
/// dictionary (protocol 2), converts it to Arrow, and returns what the WAL keeps. The WAL
/// holds self-contained payloads only, because replay has no dictionary.
async fn decode_off_runtime(
    mut dict: Option<ReceiverDict>,
    node: &str,
    payload: Vec<u8>,
) -> Result<(Option<ReceiverDict>, Decoded), ConnError> {
    let node = node.to_string();
    tokio::task::spawn_blocking(move || {
        let resolved = match dict.as_mut() {
            Some(d) => d.decode(&payload),
            None => codec::decode_batch(&payload)
                .map(|batch| Resolved {
                    batch,
                    self_contained: None,
                    definitions: 0,
                })
                .map_err(DictError::from),
        };
        let decoded = match resolved {
            Err(e) if e.ends_connection() => Err(Undecodable::Dictionary(e)),
            Err(e) => Err(Undecodable::Batch(e.to_string())),
            Ok(r) => match schema::to_arrow(&node, &r.batch) {
                Ok(arrow) => Ok((arrow, r.self_contained.unwrap_or(payload))),
                Err(e) => Err(Undecodable::Batch(e.to_string())),
            },
        };
        (dict, decoded)
    })
    .await
    .map_err(|e| ConnError::Store(format!("decoder task failed: {e}")))
}

async fn send_job(tx: &mpsc::Sender<AckJob>, job: AckJob) -> Result<(), ConnError> {
    tx.send(job)
        .await
        .map_err(|_| ConnError::Write("ack writer stopped".into()))
}

/// What to close the connection with when its dictionary fails.
fn dictionary_error(node: &str, seq: u64, e: DictError) -> ConnError {
    let code = match e {
        DictError::UnknownId { .. } => close_code::RESYNC,
        _ => close_code::PROTOCOL,
    };
    let reason = format!("batch {seq}: {e}");
    tracing::warn!(node = %node, seq, error = %e, code, "series dictionary unusable; closing the connection");
    ConnError::Dictionary { code, reason }
}

fn check_hello(hello: &Hello, cert_node: &str) -> Result<(), String> {
    // Newer agents are answered with our version and must speak it; older than
    // MIN_PROTOCOL_VERSION cannot be served.
    if hello.protocol_version < MIN_PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} not supported (this aggregator speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
            hello.protocol_version
        ));
    }
    if hello.node != cert_node {
        return Err(format!(
            "hello names node {:?} but the client certificate is for {:?}",
            hello.node, cert_node
        ));
    }
    Ok(())
}

async fn refuse(
    conn: &quinn::Connection,
    send: &mut SendStream,
    code: u32,
    reason: String,
) -> ConnError {
    let _ = write_frame(
        send,
        &Frame::Reject {
            reason: reason.clone(),
        },
    )
    .await;
    let _ = send.finish();
    // Give the reject a moment to leave before the close discards it.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), send.stopped()).await;
    close(conn, code, &reason);
    ConnError::Refused(reason)
}

fn peer_node(conn: &quinn::Connection) -> Result<String, ConnError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| ConnError::Identity("no client certificate".into()))?;
    let certs = identity
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .map_err(|_| ConnError::Identity("unexpected identity type".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| ConnError::Identity("empty certificate chain".into()))?;
    common::pki::node_name_from_cert(leaf.as_ref()).map_err(|e| ConnError::Identity(e.to_string()))
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::HelloAck(_) => "HelloAck",
        Frame::Reject { .. } => "Reject",
        Frame::Batch(_) => "Batch",
        Frame::Ack { .. } => "Ack",
        Frame::Nack { .. } => "Nack",
    }
}

/// Reads one frame; `None` on a clean end of stream between frames.
async fn read_frame(recv: &mut RecvStream) -> Result<Option<Frame>, ConnError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(ConnError::Protocol(
                "stream ended inside a frame header".into(),
            ));
        }
        // The agent closing the connection between frames is a normal goodbye.
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(_),
        ))) => {
            return Ok(None);
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ConnError::Read(e.to_string())),
    }
    let len = wire::peek_frame_len(&prefix)
        .map_err(|e| ConnError::Protocol(e.to_string()))?
        .unwrap_or(0);
    let mut buf = vec![0u8; 4 + len];
    buf[..4].copy_from_slice(&prefix);
    recv.read_exact(&mut buf[4..]).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            ConnError::Protocol("stream ended inside a frame".into())
        }
        quinn::ReadExactError::ReadError(e) => ConnError::Read(e.to_string()),
    })?;
    match wire::decode_frame(&buf) {
        Ok(Some((frame, _))) => Ok(Some(frame)),
        Ok(None) => Err(ConnError::Protocol(
            "frame shorter than its length prefix".into(),
        )),
        Err(e) => Err(ConnError::Protocol(e.to_string())),
    }
}

async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), ConnError> {
    send.write_all(&wire::encode_frame(frame))
        .await
        .map_err(|e| ConnError::Write(e.to_string()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u16, node: &str) -> Hello {
        Hello {
            protocol_version: version,
            node: node.into(),
            agent_version: "t".into(),
            boot_id: "b".into(),
            session: 1,
            capabilities: vec![],
        }
    }

    #[test]
    fn both_protocol_versions_accepted() {
        assert!(check_hello(&hello(1, "n1"), "n1").is_ok());
        assert!(check_hello(&hello(PROTOCOL_VERSION, "n1"), "n1").is_ok());
        // A newer agent is answered with our version (min of both) and must speak it.
        assert!(check_hello(&hello(PROTOCOL_VERSION + 1, "n1"), "n1").is_ok());
        let why = check_hello(&hello(0, "n1"), "n1").unwrap_err();
        assert!(why.starts_with("protocol version"), "{why}");
        assert!(check_hello(&hello(2, "n2"), "n1").is_err());
    }

    #[test]
    fn dictionary_failures_map_to_close_codes() {
        let code = |e| match dictionary_error("n", 1, e) {
            ConnError::Dictionary { code, .. } => code,
            _ => unreachable!(),
        };
        assert_eq!(code(DictError::UnknownId { id: 3 }), close_code::RESYNC);
        assert_eq!(code(DictError::Redefined { id: 3 }), close_code::PROTOCOL);
        assert_eq!(code(DictError::OverCap("x".into())), close_code::PROTOCOL);
    }
}
