//! Online log-template mining: a Drain-style fixed-depth parse tree over masked tokens.
//!
//! Each line is masked ([`super::mask`]), then routed by its token count and by its first
//! `depth - 2` *constant* tokens (masked variables are skipped, so a leading timestamp or
//! pid does not scatter one event over many branches) to a leaf holding a few templates.
//! The most similar template of the same length (fraction of equal positions) absorbs the
//! line if it reaches `similarity`, turning the differing positions into `<*>` (keeping
//! `key=` prefixes); otherwise the line starts a new template. Template ids are never
//! reused, so an id is stable for the life of the miner even when its text generalises.
//!
//! Bounded: at most `max_templates` templates (the least recently matched is evicted and
//! counted), `max_children` branches per tree node (the rest share a `<*>` branch), and
//! lines are cut to `max_line_len` bytes and `max_tokens` tokens.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::mask::{self, WILDCARD};

/// Miner settings. Read from JSON by `node-agent logs --config`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinerConfig {
    /// Tree depth as in Drain: routing uses the first `depth - 2` constant tokens.
    pub depth: usize,
    /// Fraction of equal positions for a line to join a template.
    pub similarity: f64,
    /// Branches per tree node before new tokens share the `<*>` branch.
    pub max_children: usize,
    /// Templates kept; the least recently matched is evicted past it.
    pub max_templates: usize,
    /// Lines are cut to this many bytes before mining.
    pub max_line_len: usize,
    /// Tokens per line; the rest is folded into the last token.
    pub max_tokens: usize,
}

impl Default for MinerConfig {
    fn default() -> Self {
        MinerConfig {
            depth: 4,
            similarity: 0.5,
            max_children: 100,
            max_templates: 10_000,
            max_line_len: 16 * 1024,
            max_tokens: 256,
        }
    }
}

/// Where a line went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchResult {
    /// Stable for the life of the miner; never reused, even after eviction.
    pub template_id: u64,
    /// The template as it stands after this line, `<*>` for variables.
    pub template: String,
    /// True when this line created the template.
    pub is_new: bool,
}

#[derive(Default)]
struct Node {
    children: HashMap<String, Node>,
    clusters: Vec<u64>,
}

struct Cluster {
    tokens: Vec<String>,
    /// Routing keys from the root (token count first), to find the leaf on eviction.
    path: Vec<String>,
    count: u64,
    last_used: u64,
}

/// The online template miner. See the module documentation.
pub struct TemplateMiner {
    cfg: MinerConfig,
    root: HashMap<usize, Node>,
    clusters: HashMap<u64, Cluster>,
    /// `last_used` → id, for least-recently-used eviction.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    next_id: u64,
    evictions: u64,
    truncated: u64,
}

impl TemplateMiner {
    /// An empty miner.
    pub fn new(cfg: MinerConfig) -> Self {
        TemplateMiner {
            cfg,
            root: HashMap::new(),
            clusters: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            next_id: 1,
            evictions: 0,
            truncated: 0,
        }
    }

    /// Mines one line (without its newline).
    pub fn add(&mut self, line: &str) -> MatchResult {
        let line = if line.len() > self.cfg.max_line_len {
            self.truncated += 1;
            cut(line, self.cfg.max_line_len)
        } else {
            line
        };
        let mut tokens: Vec<String> = mask::tokenize(line, self.cfg.max_tokens)
            .into_iter()
            .map(|t| mask::mask_token(t).into_owned())
            .collect();
        mask::mask_access_log(&mut tokens);
        self.tick += 1;
        let path = self.route(&tokens);
        let best = self
            .leaf(&path)
            .and_then(|leaf| self.best_match(leaf, &tokens));
        if let Some(id) = best {
            let tick = self.tick;
            let Some(cluster) = self.clusters.get_mut(&id) else {
                return self.create(tokens, path);
            };
            for (t, l) in cluster.tokens.iter_mut().zip(&tokens) {
                if t != l {
                    *t = merge_token(t, l);
                }
            }
            cluster.count += 1;
            self.lru.remove(&cluster.last_used);
            cluster.last_used = tick;
            self.lru.insert(tick, id);
            return MatchResult {
                template_id: id,
                template: cluster.tokens.join(" "),
                is_new: false,
            };
        }
        self.create(tokens, path)
    }

    /// The current text of a template.
    pub fn template(&self, id: u64) -> Option<String> {
        self.clusters.get(&id).map(|c| c.tokens.join(" "))
    }

    /// Lines matched by a template so far.
    pub fn count(&self, id: u64) -> Option<u64> {
        self.clusters.get(&id).map(|c| c.count)
    }

    /// Templates currently kept.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// True when no template is kept.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// Templates evicted to stay within `max_templates`.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Lines cut to `max_line_len`.
    pub fn truncated_lines(&self) -> u64 {
        self.truncated
    }

    /// `(id, template, count)` of every kept template, by id.
    pub fn templates(&self) -> Vec<(u64, String, u64)> {
        let mut out: Vec<_> = self
            .clusters
            .iter()
            .map(|(&id, c)| (id, c.tokens.join(" "), c.count))
            .collect();
        out.sort_unstable_by_key(|t| t.0);
        out
    }

    /// Routing keys: the token count, then up to `depth - 2` constant tokens. Keys that
    /// would overflow a node's `max_children` become `<*>`.
    fn route(&mut self, tokens: &[String]) -> Vec<String> {
        let mut path = vec![tokens.len().to_string()];
        let levels = self.cfg.depth.saturating_sub(2);
        let max_children = self.cfg.max_children.max(1);
        let mut node = self.root.entry(tokens.len()).or_default();
        for token in tokens
            .iter()
            .filter(|t| !mask::is_variable(t))
            .map(|t| routing_key(t))
            .take(levels)
        {
            let key = if node.children.contains_key(token) || node.children.len() + 1 < max_children
            {
                token.to_string()
            } else {
                WILDCARD.to_string()
            };
            node = node.children.entry(key.clone()).or_default();
            path.push(key);
        }
        path
    }

    fn leaf(&self, path: &[String]) -> Option<&Node> {
        let len: usize = path.first()?.parse().ok()?;
        let mut node = self.root.get(&len)?;
        for key in &path[1..] {
            node = node.children.get(key)?;
        }
        Some(node)
    }

    fn best_match(&self, leaf: &Node, tokens: &[String]) -> Option<u64> {
        let mut best: Option<(f64, usize, u64)> = None;
        for &id in &leaf.clusters {
            let Some(c) = self.clusters.get(&id) else {
                continue;
            };
            if c.tokens.len() != tokens.len() {
                continue;
            }
            let sim = similarity(&c.tokens, tokens);
            let wild = c.tokens.iter().filter(|t| t.as_str() == WILDCARD).count();
            let better = match best {
                None => true,
                Some((s, w, _)) => sim > s || (sim == s && wild > w),
            };
            if better {
                best = Some((sim, wild, id));
            }
        }
        best.filter(|(sim, _, _)| *sim >= self.cfg.similarity)
            .map(|(_, _, id)| id)
    }

    fn create(&mut self, tokens: Vec<String>, path: Vec<String>) -> MatchResult {
        let id = self.next_id;
        self.next_id += 1;
        let template = tokens.join(" ");
        if let Some(leaf) = self.leaf_mut(&path) {
            leaf.clusters.push(id);
        }
        self.clusters.insert(
            id,
            Cluster {
                tokens,
                path,
                count: 1,
                last_used: self.tick,
            },
        );
        self.lru.insert(self.tick, id);
        while self.clusters.len() > self.cfg.max_templates.max(1) {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            self.evict(victim);
        }
        MatchResult {
            template_id: id,
            template,
            is_new: true,
        }
    }

    fn leaf_mut(&mut self, path: &[String]) -> Option<&mut Node> {
        let len: usize = path.first()?.parse().ok()?;
        let mut node = self.root.get_mut(&len)?;
        for key in &path[1..] {
            node = node.children.get_mut(key)?;
        }
        Some(node)
    }

    fn evict(&mut self, id: u64) {
        let Some(cluster) = self.clusters.remove(&id) else {
            return;
        };
        self.evictions += 1;
        let Some(len) = cluster.path.first().and_then(|l| l.parse::<usize>().ok()) else {
            return;
        };
        if let Some(top) = self.root.get_mut(&len) {
            prune(top, &cluster.path[1..], id);
            if top.children.is_empty() && top.clusters.is_empty() {
                self.root.remove(&len);
            }
        }
    }
}

/// Removes `id` from the leaf at `path` below `node`, dropping nodes left empty.
fn prune(node: &mut Node, path: &[String], id: u64) {
    match path.split_first() {
        None => node.clusters.retain(|&c| c != id),
        Some((key, rest)) => {
            if let Some(child) = node.children.get_mut(key) {
                prune(child, rest, id);
                if child.children.is_empty() && child.clusters.is_empty() {
                    node.children.remove(key);
                }
            }
        }
    }
}

/// The routing key of a constant token: the key alone of a `key=value` token (the value
/// is a parameter far more often than not: `containerName="app"`, `resource=memory`), else
/// the token.
fn routing_key(token: &str) -> &str {
    match token.find('=') {
        Some(eq)
            if eq > 0
                && token[..eq]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) =>
        {
            &token[..=eq]
        }
        _ => token,
    }
}

/// Drain's similarity, with masked variables set aside: the fraction of equal tokens over
/// the positions where the line or the template holds a constant. A position where both
/// hold a bare `<*>` (a masked timestamp, pid or address in a header, or a variable the
/// template already learned that this line also masks) says nothing either way, so a long
/// masked header neither inflates nor dilutes the score of the message after it.
fn similarity(template: &[String], line: &[String]) -> f64 {
    let mut equal = 0usize;
    let mut compared = 0usize;
    for (t, l) in template.iter().zip(line) {
        if t == WILDCARD && l == WILDCARD {
            continue;
        }
        compared += 1;
        if t == l {
            equal += 1;
        }
    }
    if compared == 0 {
        1.0
    } else {
        equal as f64 / compared as f64
    }
}

/// Two differing tokens at one position: `key=<*>` when they share the key, else `<*>`.
fn merge_token(template: &str, line: &str) -> String {
    if let (Some(a), Some(b)) = (template.find('='), line.find('='))
        && a == b
        && a > 0
        && template[..a] == line[..b]
    {
        return format!("{}{}", &template[..=a], WILDCARD);
    }
    WILDCARD.to_string()
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
