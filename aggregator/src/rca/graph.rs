//! Call-graph reasoning for the RCA engine, between per-component scoring and the
//! final ranking in [`super::score`].
//!
//! Symptoms propagate upstream: when a callee slows down or fails, its callers'
//! latency and errors rise too. So a component's *symptom* evidence is explained away
//! when one of its transitive callees was anomalous no later than it (within a slack
//! for sampling jitter); its own resource saturation is never explained away. A
//! component that explains the anomalies of its callers is consistent with being the
//! root. An explain-away rule rather than PageRank, so every demotion can be stated in
//! one sentence.

use std::collections::{BTreeMap, VecDeque};

use super::score::Comp;
use super::{CallEdge, EvidenceEvent};

/// Sets `explained_by`, `upstream` and `explains` on `comps`. Returns whether there was
/// a graph to reason with (no edges: no-graph mode, nothing changes).
pub fn analyse(
    comps: &mut [Comp],
    edges: &[CallEdge],
    events: &[EvidenceEvent],
    slack_ms: i64,
) -> bool {
    if edges.is_empty() {
        return false;
    }
    // Graph nodes: the components first (same indices), then names only seen in edges
    // (a component without data still passes propagation along).
    let mut ids: BTreeMap<String, usize> = comps
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    let mut n = comps.len();
    let mut pairs = Vec::with_capacity(edges.len());
    for e in edges {
        let mut id = |name: &str| -> usize {
            if let Some(&i) = ids.get(name) {
                return i;
            }
            ids.insert(name.to_string(), n);
            n += 1;
            n - 1
        };
        let (a, b) = (id(&e.caller), id(&e.callee));
        if a != b {
            pairs.push((a, b));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    let mut callees = vec![Vec::new(); n];
    let mut callers = vec![Vec::new(); n];
    for &(a, b) in &pairs {
        callees[a].push(b);
        callers[b].push(a);
    }

    let anomalous: Vec<bool> = (0..n)
        .map(|i| comps.get(i).is_some_and(Comp::anomalous))
        .collect();
    let onsets: Vec<Option<i64>> = comps.iter().map(|c| c.onset_ms).collect();
    // A caller's symptoms are what a callee must precede; without symptoms, its onset.
    let symptom_onsets: Vec<Option<i64>> = comps
        .iter()
        .map(|c| c.symptom_onset_ms.or(c.onset_ms))
        .collect();
    let symptom_onset = |i: usize| symptom_onsets.get(i).copied().flatten();
    let strengths: Vec<f64> = comps.iter().map(|c| c.strength).collect();
    let onset = |i: usize| onsets.get(i).copied().flatten();
    let mut seen = vec![false; n];
    let mut explainers: Vec<Vec<usize>> = vec![Vec::new(); comps.len()];
    let mut explains: Vec<Vec<usize>> = vec![Vec::new(); comps.len()];
    for c in 0..comps.len() {
        if !anomalous[c] {
            continue;
        }
        let (Some(oc), Some(sc)) = (onset(c), symptom_onset(c)) else {
            continue;
        };
        // Anomalous transitive callees that were anomalous by the time c's symptoms were.
        for d in reach(c, &callees, &mut seen) {
            if d < comps.len()
                && anomalous[d]
                && onset(d).is_some_and(|od| od <= sc.saturating_add(slack_ms))
            {
                explainers[c].push(d);
            }
        }
        // Anomalous transitive callers whose symptoms came no earlier than c.
        for a in reach(c, &callers, &mut seen) {
            if a < comps.len()
                && anomalous[a]
                && symptom_onset(a).is_some_and(|oa| oa >= oc.saturating_sub(slack_ms))
            {
                explains[c].push(a);
            }
        }
    }
    // Starved callees: a component with no cause evidence whose every anomaly is a
    // level falling (CPU, writes, log lines below normal) and that no callee explains
    // gets fewer requests because a caller failed: it is put down to an anomalous
    // caller with cause evidence of its own that turned anomalous no later than it.
    let mut upstream = vec![false; comps.len()];
    for c in 0..comps.len() {
        if !anomalous[c] || !explainers[c].is_empty() {
            continue;
        }
        let cc = &comps[c];
        let starved = cc.cause == 0.0 && cc.items.iter().all(|i| i.fall(events));
        let Some(oc) = onset(c).filter(|_| starved) else {
            continue;
        };
        let best = reach(c, &callers, &mut seen)
            .into_iter()
            .filter(|&a| {
                a < comps.len()
                    && anomalous[a]
                    && comps[a].cause > 0.0
                    && onset(a).is_some_and(|oa| oa <= oc.saturating_add(slack_ms))
            })
            .min_by(|&x, &y| {
                comps[y]
                    .cause
                    .total_cmp(&comps[x].cause)
                    .then_with(|| x.cmp(&y))
            });
        if let Some(a) = best {
            explainers[c].push(a);
            upstream[c] = true;
            if !explains[a].contains(&c) {
                explains[a].push(c);
            }
        }
    }
    // Point a victim at the root of the chain: prefer explainers that are not explained
    // themselves, then the stronger, then the earlier, then by name (index order).
    let explained: Vec<bool> = explainers.iter().map(|e| !e.is_empty()).collect();
    for c in 0..comps.len() {
        let best = explainers[c].iter().copied().min_by(|&x, &y| {
            explained[x]
                .cmp(&explained[y])
                .then_with(|| strengths[y].total_cmp(&strengths[x]))
                .then_with(|| onset(x).cmp(&onset(y)))
                .then_with(|| x.cmp(&y))
        });
        comps[c].explained_by = best;
        comps[c].upstream = upstream[c];
        explains[c].sort_unstable();
        comps[c].explains = std::mem::take(&mut explains[c]);
    }
    true
}

/// Nodes reachable from `start` (not itself), breadth first, in sorted order.
fn reach(start: usize, adj: &[Vec<usize>], seen: &mut [bool]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([start]);
    seen[start] = true;
    while let Some(v) = queue.pop_front() {
        for &w in &adj[v] {
            if !seen[w] {
                seen[w] = true;
                out.push(w);
                queue.push_back(w);
            }
        }
    }
    seen[start] = false;
    for &w in &out {
        seen[w] = false;
    }
    out.sort_unstable();
    out
}
