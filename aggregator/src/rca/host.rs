//! Node-level reasoning for the RCA engine, between per-component scoring and the call
//! graph in [`super::score`].
//!
//! Components named `<prefix><node>` (`host@n1`: the node as a whole, the naming of
//! `correlate::component`) stand for a machine, and everything named `<x>@<node>` runs
//! on it. Two rules keep a node's own signals from out-ranking the process that caused
//! them:
//!
//! - **Common mode.** A node-level series that is anomalous, in the same direction, on
//!   every node that reports it (two or more) is not one node's root cause: something
//!   shared moved (the nodes are namespaces of one machine, a shared storage array, a
//!   cluster-wide load change). Its weight is multiplied by `common_mode_factor`.
//! - **Containment.** A node's saturation is the sum of what runs on it. When a process
//!   on the node shows its own resource rising (cause evidence), the node's anomalies
//!   are what that rise looks like from the node, and are explained away like a
//!   caller's symptoms by its callee (`explain_factor`).
//!
//! Data without such names (public data sets name services only) is left as it is.

use std::collections::{BTreeMap, BTreeSet};

use super::score::{Comp, Item};
use super::{RcaConfig, RcaInput};

/// Why a node component's evidence was discounted, for the evidence notes and the
/// explanation.
#[derive(Clone, Debug)]
pub enum Discount {
    /// Anomalous on every node: shared, not this node's.
    CommonMode { n_nodes: usize },
    /// A process on the node with its own resource rising explains it.
    Contained { by: usize },
}

/// Discounts node-level evidence in place (`Item` weights) and records why on
/// `Comp::discount`. Runs before the per-component strengths are taken.
pub fn discount(comps: &mut [Comp], input: &RcaInput, cfg: &RcaConfig) {
    let Some(prefix) = cfg.host_prefix.as_deref().filter(|p| !p.is_empty()) else {
        return;
    };
    let is_host = |name: &str| name.starts_with(prefix);
    // Nodes reporting each node-level metric, and the nodes where it is anomalous per
    // direction.
    let mut reported: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in input.series.iter().take(cfg.max_series) {
        if is_host(&s.component) && !s.points.is_empty() {
            reported
                .entry(s.metric.as_str())
                .or_default()
                .insert(s.component.as_str());
        }
    }
    let mut anomalous: BTreeMap<(&str, bool), BTreeSet<usize>> = BTreeMap::new();
    for (ci, c) in comps.iter().enumerate().filter(|(_, c)| is_host(&c.name)) {
        for item in &c.items {
            if let Item::Series(e) = item
                && let Some(s) = input.series.get(e.series)
            {
                anomalous
                    .entry((s.metric.as_str(), e.up))
                    .or_default()
                    .insert(ci);
            }
        }
    }
    let mut shared: BTreeSet<(usize, usize)> = BTreeSet::new(); // (comp, series)
    let mut n_shared_nodes: BTreeMap<usize, usize> = BTreeMap::new();
    for ((metric, _), hosts) in &anomalous {
        let n = reported.get(metric).map_or(0, BTreeSet::len);
        if n >= 2 && hosts.len() >= n {
            for &ci in hosts {
                for item in &comps[ci].items {
                    if let Item::Series(e) = item
                        && input
                            .series
                            .get(e.series)
                            .is_some_and(|s| s.metric == *metric)
                    {
                        shared.insert((ci, e.series));
                    }
                }
                let m = n_shared_nodes.entry(ci).or_insert(0);
                *m = (*m).max(n);
            }
        }
    }
    for &(ci, si) in &shared {
        for item in &mut comps[ci].items {
            if let Item::Series(e) = item
                && e.series == si
            {
                e.weighted *= cfg.common_mode_factor;
                e.shared = true;
            }
        }
    }
    // A node all of whose anomalous series are shared has nothing of its own.
    for (&ci, &n) in &n_shared_nodes {
        let own = comps[ci]
            .items
            .iter()
            .any(|i| matches!(i, Item::Series(e) if !e.shared));
        if !own {
            comps[ci].discount = Some(Discount::CommonMode { n_nodes: n });
        }
    }

    // Containment: the strongest process on the node with cause evidence of its own.
    let node_of = |name: &str| name.rsplit_once('@').map(|(_, n)| n.to_string());
    let mut best_on_node: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (ci, c) in comps.iter().enumerate() {
        if is_host(&c.name) {
            continue;
        }
        let Some(node) = node_of(&c.name) else {
            continue;
        };
        let cause = c
            .items
            .iter()
            .filter(|i| i.cause())
            .map(Item::weighted)
            .fold(0.0f64, f64::max);
        if cause >= cfg.containment_min {
            let slot = best_on_node.entry(node).or_insert((cause, ci));
            if cause > slot.0 {
                *slot = (cause, ci);
            }
        }
    }
    for c in comps.iter_mut().filter(|c| is_host(&c.name)) {
        let Some(node) = c.name.strip_prefix(prefix) else {
            continue;
        };
        let Some(&(_, by)) = best_on_node.get(node) else {
            continue;
        };
        for item in &mut c.items {
            item.scale(cfg.explain_factor);
        }
        c.discount = Some(Discount::Contained { by });
    }
}
