//! The service graph: who calls whom, learned from `tcp_connections` (sans-IO).
//!
//! Input: [`ConnObservation`]s, each a group of TCP rows of one component on one side of
//! connections (a raw row is a group of one; the driver asks DataFusion to group, so the
//! ephemeral client ports never reach us). Output: a [`ServiceGraph`].
//!
//! Matching: a connecting side (`tcp.connect`, or `tcp.close` with direction `out`) goes
//! `saddr → daddr:dport`. Its callee is, in this order:
//! 1. `listener`: the component that accepted connections on `daddr:dport` (an accept-side
//!    row, direction `in`, whose local `saddr:sport` is that address), on any node; loopback
//!    addresses only match on the caller's own node;
//! 2. `node_port`: the component that accepted on port `dport` on the node owning `daddr`
//!    (a node owns the local addresses its rows show), e.g. a listener bound to 0.0.0.0;
//! 3. `node_address`: `host@<node>` when only the node owning `daddr` is known;
//! 4. `external`: `ext:<daddr>:<dport>`.
//!
//! Accept-side rows that no connecting row explains (the client is not one of ours) add an
//! edge from `host@<node>` of the client's address, or from `ext:<addr>`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::component;

/// Which end of connections an observation describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// The active opener (client).
    Connect,
    /// The passive side (server, accepted connections).
    Accept,
}

/// TCP rows of one component on one side, grouped.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnObservation {
    /// Node that reported the rows.
    pub node: String,
    /// The component ([`component::component`]) that owned the sockets.
    pub component: String,
    /// Which end.
    pub side: Side,
    /// Local address (`saddr`).
    pub local_addr: String,
    /// Local port: the listening port on the accept side; absent on the connect side.
    pub local_port: Option<i64>,
    /// Remote address (`daddr`).
    pub remote_addr: String,
    /// Remote port: the server port on the connect side; absent on the accept side.
    pub remote_port: Option<i64>,
    /// `tcp.connect` rows.
    pub connects: u64,
    /// `tcp.close` rows.
    pub closes: u64,
    /// Failed connects (result other than `ok`).
    pub errors: u64,
    /// Rows with a reset sent or received.
    pub resets: u64,
    /// Retransmits, summed.
    pub retransmits: u64,
    /// Sum of connect latencies (µs) over `latency_n` connects.
    pub latency_sum_us: f64,
    /// Connects with a latency.
    pub latency_n: u64,
    /// Earliest row, ms.
    pub first_ms: i64,
    /// Latest row, ms.
    pub last_ms: i64,
}

/// Bounds on one graph.
#[derive(Clone, Copy, Debug)]
pub struct GraphLimits {
    /// Components at most; edges touching more are dropped and counted.
    pub max_nodes: usize,
    /// Edges at most.
    pub max_edges: usize,
    /// Addresses kept as evidence per edge.
    pub max_addresses: usize,
}

impl Default for GraphLimits {
    fn default() -> Self {
        GraphLimits {
            max_nodes: 5_000,
            max_edges: 20_000,
            max_addresses: 8,
        }
    }
}

/// A component in the graph.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphNode {
    /// Component name.
    pub id: String,
    /// `pod`, `container`, `process`, `host` or `external`.
    pub kind: &'static str,
    /// Nodes it was seen on (empty for external peers).
    pub nodes: Vec<String>,
}

/// Calls from one component to another.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Edge {
    /// Calling component.
    pub caller: String,
    /// Called component.
    pub callee: String,
    /// Connections: the larger of connects and closes seen (each connection may show both).
    pub connections: u64,
    /// `tcp.connect` rows.
    pub connects: u64,
    /// `tcp.close` rows.
    pub closes: u64,
    /// Failed connects.
    pub errors: u64,
    /// Resets.
    pub resets: u64,
    /// Retransmits.
    pub retransmits: u64,
    /// Mean connect latency, µs.
    pub mean_connect_latency_us: Option<f64>,
    /// First row, ms.
    pub first_seen_ms: i64,
    /// Last row, ms.
    pub last_seen_ms: i64,
    /// How the callee was found: `listener`, `node_port`, `node_address`, `external` or
    /// `accept_only`.
    pub resolved_by: &'static str,
    /// Server addresses seen (`addr:port`), bounded.
    pub addresses: Vec<String>,
}

/// The graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceGraph {
    /// Components, by name.
    pub nodes: Vec<GraphNode>,
    /// Edges, by (caller, callee).
    pub edges: Vec<Edge>,
    /// Edges left out by the bounds.
    pub dropped_edges: usize,
}

impl ServiceGraph {
    /// `(caller, callee)` pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.edges
            .iter()
            .map(|e| (e.caller.as_str(), e.callee.as_str()))
    }
}

fn is_loopback(addr: &str) -> bool {
    addr.starts_with("127.") || addr == "::1" || addr.starts_with("::ffff:127.")
}

fn is_unspecified(addr: &str) -> bool {
    addr.is_empty() || addr == "0.0.0.0" || addr == "::"
}

/// A listening address, scoped to its node when it is a loopback one.
fn scoped(node: &str, addr: &str) -> String {
    if is_loopback(addr) {
        format!("{node}|{addr}")
    } else {
        addr.to_string()
    }
}

#[derive(Default)]
struct EdgeAcc {
    connects: u64,
    closes: u64,
    errors: u64,
    resets: u64,
    retransmits: u64,
    lat_sum: f64,
    lat_n: u64,
    first: i64,
    last: i64,
    resolved_by: &'static str,
    addresses: BTreeSet<String>,
}

impl EdgeAcc {
    fn add(&mut self, o: &ConnObservation, max_addresses: usize, address: Option<String>) {
        let fresh = self.connects == 0 && self.closes == 0;
        self.connects += o.connects;
        self.closes += o.closes;
        self.errors += o.errors;
        self.resets += o.resets;
        self.retransmits += o.retransmits;
        self.lat_sum += o.latency_sum_us;
        self.lat_n += o.latency_n;
        if fresh {
            self.first = o.first_ms;
            self.last = o.last_ms;
        } else {
            self.first = self.first.min(o.first_ms);
            self.last = self.last.max(o.last_ms);
        }
        if let Some(a) = address
            && self.addresses.len() < max_addresses
        {
            self.addresses.insert(a);
        }
    }
}

/// Builds the graph. Deterministic: the same observations in any order give the same
/// graph.
pub fn build(observations: &[ConnObservation], limits: GraphLimits) -> ServiceGraph {
    // Which node owns which address, and who listens where.
    let mut addr_node: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    // (scoped addr, port) -> component -> connections
    let mut listeners: BTreeMap<(String, i64), BTreeMap<&str, u64>> = BTreeMap::new();
    let mut node_ports: BTreeMap<(&str, i64), BTreeMap<&str, u64>> = BTreeMap::new();
    let mut component_nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in observations {
        if !is_loopback(&o.local_addr) && !is_unspecified(&o.local_addr) {
            addr_node.entry(&o.local_addr).or_default().insert(&o.node);
        }
        component_nodes
            .entry(o.component.clone())
            .or_default()
            .insert(o.node.clone());
        if o.side == Side::Accept
            && let Some(port) = o.local_port
        {
            let n = o.connects.max(o.closes).max(1);
            *listeners
                .entry((scoped(&o.node, &o.local_addr), port))
                .or_default()
                .entry(&o.component)
                .or_default() += n;
            *node_ports
                .entry((&o.node, port))
                .or_default()
                .entry(&o.component)
                .or_default() += n;
        }
    }
    let busiest = |m: &BTreeMap<&str, u64>| -> Option<String> {
        // Most connections; ties by name (BTreeMap order, first wins).
        let mut best: Option<(&str, u64)> = None;
        for (c, n) in m {
            if best.is_none_or(|(_, b)| *n > b) {
                best = Some((c, *n));
            }
        }
        best.map(|(c, _)| c.to_string())
    };
    let node_of_addr = |caller_node: &str, addr: &str| -> Option<String> {
        if is_loopback(addr) {
            return Some(caller_node.to_string());
        }
        addr_node
            .get(addr)
            .and_then(|s| s.iter().next())
            .map(|n| n.to_string())
    };

    let mut acc: BTreeMap<(String, String), EdgeAcc> = BTreeMap::new();
    // (client node, callee) pairs explained by connecting rows.
    let mut explained: BTreeSet<(String, String)> = BTreeSet::new();
    let mut sorted: Vec<&ConnObservation> = observations.iter().collect();
    sorted.sort_by(|a, b| {
        (
            &a.node,
            &a.component,
            a.side,
            &a.remote_addr,
            a.remote_port,
            a.first_ms,
        )
            .cmp(&(
                &b.node,
                &b.component,
                b.side,
                &b.remote_addr,
                b.remote_port,
                b.first_ms,
            ))
    });
    for o in sorted.iter().filter(|o| o.side == Side::Connect) {
        let port = o.remote_port;
        let by_listener = port.and_then(|p| {
            listeners
                .get(&(scoped(&o.node, &o.remote_addr), p))
                .and_then(busiest)
        });
        let server_node = node_of_addr(&o.node, &o.remote_addr);
        let (callee, how) = if let Some(c) = by_listener {
            (c, "listener")
        } else if let Some(n) = &server_node {
            match port.and_then(|p| node_ports.get(&(n.as_str(), p)).and_then(busiest)) {
                Some(c) => (c, "node_port"),
                None => (format!("host@{n}"), "node_address"),
            }
        } else {
            (component::external(&o.remote_addr, port), "external")
        };
        if callee == o.component {
            continue;
        }
        if server_node.is_some() {
            explained.insert((o.node.clone(), callee.clone()));
        }
        let address = Some(match port {
            Some(p) => format!("{}:{p}", o.remote_addr),
            None => o.remote_addr.clone(),
        });
        let e = acc.entry((o.component.clone(), callee)).or_default();
        if e.resolved_by.is_empty() || rank(how) < rank(e.resolved_by) {
            e.resolved_by = how;
        }
        e.add(o, limits.max_addresses, address);
    }
    for o in sorted.iter().filter(|o| o.side == Side::Accept) {
        let client_node = node_of_addr(&o.node, &o.remote_addr);
        if let Some(n) = &client_node
            && explained.contains(&(n.clone(), o.component.clone()))
        {
            continue;
        }
        let caller = match &client_node {
            Some(n) => format!("host@{n}"),
            None => component::external(&o.remote_addr, None),
        };
        if caller == o.component {
            continue;
        }
        let address = o.local_port.map(|p| format!("{}:{p}", o.local_addr));
        let e = acc.entry((caller, o.component.clone())).or_default();
        if e.resolved_by.is_empty() {
            e.resolved_by = "accept_only";
        }
        e.add(o, limits.max_addresses, address);
    }

    let mut graph = ServiceGraph::default();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for ((caller, callee), e) in acc {
        let new_names = [&caller, &callee]
            .iter()
            .filter(|n| !names.contains(n.as_str()))
            .count();
        if graph.edges.len() >= limits.max_edges || names.len() + new_names > limits.max_nodes {
            graph.dropped_edges += 1;
            continue;
        }
        names.insert(caller.clone());
        names.insert(callee.clone());
        graph.edges.push(Edge {
            caller,
            callee,
            connections: e.connects.max(e.closes),
            connects: e.connects,
            closes: e.closes,
            errors: e.errors,
            resets: e.resets,
            retransmits: e.retransmits,
            mean_connect_latency_us: (e.lat_n > 0).then(|| e.lat_sum / e.lat_n as f64),
            first_seen_ms: e.first,
            last_seen_ms: e.last,
            resolved_by: e.resolved_by,
            addresses: e.addresses.into_iter().collect(),
        });
    }
    graph.nodes = names
        .into_iter()
        .map(|id| {
            let mut nodes: Vec<String> = component_nodes
                .get(&id)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            if nodes.is_empty()
                && let Some(n) = component::node_of(&id)
            {
                nodes.push(n.to_string());
            }
            GraphNode {
                kind: component::kind_of(&id),
                id,
                nodes,
            }
        })
        .collect();
    graph
}

fn rank(how: &str) -> u8 {
    match how {
        "listener" => 0,
        "node_port" => 1,
        "node_address" => 2,
        "external" => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(node: &str, comp: &str, side: Side, local: &str, remote: &str) -> ConnObservation {
        let (la, lp) = split(local);
        let (ra, rp) = split(remote);
        ConnObservation {
            node: node.into(),
            component: comp.into(),
            side,
            local_addr: la,
            local_port: if side == Side::Accept { lp } else { None },
            remote_addr: ra,
            remote_port: if side == Side::Connect { rp } else { None },
            connects: if side == Side::Connect { 2 } else { 0 },
            closes: 2,
            errors: 0,
            resets: 0,
            retransmits: 1,
            latency_sum_us: 300.0,
            latency_n: if side == Side::Connect { 2 } else { 0 },
            first_ms: 1_000,
            last_ms: 5_000,
        }
    }

    fn split(s: &str) -> (String, Option<i64>) {
        match s.rsplit_once(':') {
            Some((a, p)) => (a.to_string(), p.parse().ok()),
            None => (s.to_string(), None),
        }
    }

    fn edge<'a>(g: &'a ServiceGraph, caller: &str, callee: &str) -> Option<&'a Edge> {
        g.edges
            .iter()
            .find(|e| e.caller == caller && e.callee == callee)
    }

    /// Table of scenarios: observations → expected (caller, callee, resolved_by) edges.
    #[test]
    fn callers_are_matched_to_listeners_across_nodes() {
        use Side::*;
        type Case = (
            &'static str,
            Vec<ConnObservation>,
            Vec<(&'static str, &'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "client and server both seen",
                vec![
                    obs("n1", "payments@n1", Connect, "10.0.0.1:0", "10.0.0.2:8080"),
                    obs("n2", "ledger@n2", Accept, "10.0.0.2:8080", "10.0.0.1"),
                ],
                vec![("payments@n1", "ledger@n2", "listener")],
            ),
            (
                "server bound to 0.0.0.0 is found by node address and port",
                vec![
                    obs("n1", "payments@n1", Connect, "10.0.0.1:0", "10.0.0.2:8080"),
                    obs("n2", "ledger@n2", Accept, "192.168.1.2:8080", "192.168.1.1"),
                    obs("n2", "ledger@n2", Connect, "10.0.0.2:0", "10.0.0.9:5432"),
                ],
                vec![
                    ("payments@n1", "ledger@n2", "node_port"),
                    ("ledger@n2", "ext:10.0.0.9:5432", "external"),
                    ("ext:192.168.1.1", "ledger@n2", "accept_only"),
                ],
            ),
            (
                "only the client side: the server node by its address",
                vec![
                    obs("n1", "checkout@n1", Connect, "10.0.0.1:0", "10.0.0.2:9090"),
                    obs("n2", "other@n2", Connect, "10.0.0.2:0", "10.0.0.1:22"),
                ],
                vec![
                    ("checkout@n1", "host@n2", "node_address"),
                    ("other@n2", "host@n1", "node_address"),
                ],
            ),
            (
                "loopback stays on its node",
                vec![
                    obs("n1", "api@n1", Connect, "127.0.0.1:0", "127.0.0.1:6379"),
                    obs("n1", "redis@n1", Accept, "127.0.0.1:6379", "127.0.0.1"),
                    obs("n2", "api@n2", Connect, "127.0.0.1:0", "127.0.0.1:6379"),
                    obs("n2", "cache@n2", Accept, "127.0.0.1:6379", "127.0.0.1"),
                ],
                vec![
                    ("api@n1", "redis@n1", "listener"),
                    ("api@n2", "cache@n2", "listener"),
                ],
            ),
        ];
        for (name, observations, want) in cases {
            let g = build(&observations, GraphLimits::default());
            let got: Vec<(&str, &str, &str)> = g
                .edges
                .iter()
                .map(|e| (e.caller.as_str(), e.callee.as_str(), e.resolved_by))
                .collect();
            let mut want = want;
            want.sort();
            assert_eq!(got, want, "{name}");
            // Order does not matter.
            let mut reversed = observations.clone();
            reversed.reverse();
            assert_eq!(build(&reversed, GraphLimits::default()), g, "{name}");
        }
    }

    #[test]
    fn edges_carry_counts_and_time_ranges() {
        let mut a = obs(
            "n1",
            "payments@n1",
            Side::Connect,
            "10.0.0.1:0",
            "10.0.0.2:80",
        );
        a.errors = 1;
        a.resets = 3;
        let mut b = a.clone();
        b.first_ms = 500;
        b.last_ms = 9_000;
        let server = obs("n2", "web@n2", Side::Accept, "10.0.0.2:80", "10.0.0.1");
        let g = build(&[a, b, server], GraphLimits::default());
        let e = edge(&g, "payments@n1", "web@n2").unwrap();
        assert_eq!(e.connections, 4);
        assert_eq!(e.errors, 2);
        assert_eq!(e.resets, 6);
        assert_eq!(e.retransmits, 2);
        assert_eq!(e.mean_connect_latency_us, Some(150.0));
        assert_eq!((e.first_seen_ms, e.last_seen_ms), (500, 9_000));
        assert_eq!(e.addresses, vec!["10.0.0.2:80".to_string()]);
        assert_eq!(
            g.edges.len(),
            1,
            "the accept side is explained by the client"
        );
        let kinds: Vec<_> = g.nodes.iter().map(|n| (n.id.as_str(), n.kind)).collect();
        assert_eq!(
            kinds,
            vec![("payments@n1", "process"), ("web@n2", "process")]
        );
    }

    #[test]
    fn the_graph_is_bounded() {
        let many: Vec<ConnObservation> = (0..50)
            .map(|i| {
                obs(
                    "n1",
                    &format!("c{i}@n1"),
                    Side::Connect,
                    "10.0.0.1:0",
                    &format!("8.8.8.{i}:53"),
                )
            })
            .collect();
        let limits = GraphLimits {
            max_nodes: 20,
            max_edges: 5,
            max_addresses: 1,
        };
        let g = build(&many, limits);
        assert_eq!(g.edges.len(), 5);
        assert_eq!(g.dropped_edges, 45);
        assert!(g.nodes.len() <= 20);
    }
}
