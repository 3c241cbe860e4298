//! The scenario file (YAML): what runs where, the load and the fault. Format:
//! `docs/scenarios.md`. Parsing is strict (unknown fields are errors) and [`Scenario::check`]
//! validates the references between the parts before anything is started.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Free text, shown in the summary and kept in RESULT.json.
    #[serde(default)]
    pub description: Option<String>,
    pub nodes: Vec<String>,
    pub services: Vec<ServiceSpec>,
    pub load: Load,
    pub fault: Fault,
    /// Give up waiting for the RCA this many seconds after the fault started.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Size of each node's data tmpfs, MiB (what `disk_fill` fills).
    #[serde(default = "default_disk_mb")]
    pub disk_mb: u64,
    /// Samples the agents' detectors learn from before scoring (the agent's default is 64;
    /// shorter keeps runs short; it must fit well inside `fault.after_s`).
    #[serde(default = "default_warmup")]
    pub detector_warmup: u32,
}

fn default_timeout() -> u64 {
    90
}
fn default_disk_mb() -> u64 {
    64
}
fn default_warmup() -> u32 {
    30
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub node: String,
    #[serde(default)]
    pub calls: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub entry: String,
    pub rps: f64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    CpuHog,
    MemLeak,
    NetDelay,
    NetLoss,
    DiskFill,
    CrashLoop,
    ErrorBurst,
    SlowIo,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::CpuHog => "cpu_hog",
            FaultKind::MemLeak => "mem_leak",
            FaultKind::NetDelay => "net_delay",
            FaultKind::NetLoss => "net_loss",
            FaultKind::DiskFill => "disk_fill",
            FaultKind::CrashLoop => "crash_loop",
            FaultKind::ErrorBurst => "error_burst",
            FaultKind::SlowIo => "slow_io",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub kind: FaultKind,
    /// The service the fault is injected on (and the expected root cause).
    pub target: String,
    /// Seconds of steady load before the fault.
    pub after_s: u64,
    /// Longest the fault lasts; it is stopped earlier, `settle_s` after the RCA is in.
    pub duration_s: u64,
    /// Seconds the fault goes on after the RCA first appears (the ranking may still move).
    #[serde(default = "default_settle")]
    pub settle_s: u64,
    /// The ranking is followed (and the fault kept on) until at least this long after
    /// the fault began: the RCA budget, so RESULT.json scores the ranking as it stands
    /// then, not a first guess made from a few seconds of data.
    #[serde(default = "default_observe")]
    pub observe_s: u64,
    /// Other names that count as a correct root cause (default: only `target`), e.g. its
    /// node for a network fault on a node's link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_accept: Vec<String>,
    // Fault parameters (all optional; defaults in docs/scenarios.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_per_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_pct: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_pct: Option<u64>,
    /// crash_loop: seconds a restarted process lives before it crashes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_after_s: Option<f64>,
}

fn default_settle() -> u64 {
    5
}

fn default_observe() -> u64 {
    30
}

impl Fault {
    /// The names a ranking entry may carry to count as a hit.
    pub fn accepted(&self) -> Vec<String> {
        let mut v = vec![self.target.clone()];
        v.extend(self.also_accept.iter().cloned());
        v
    }

    /// Query string of the service's `/admin/fault` for this fault lasting `secs`.
    pub fn admin_query(&self, secs: u64) -> String {
        let mut q = format!("kind={}&secs={secs}", self.kind.as_str());
        let params = [
            ("threads", self.threads),
            ("mb_per_s", self.mb_per_s),
            ("cap_mb", self.cap_mb),
            ("delay_ms", self.delay_ms),
            ("loss_pct", self.loss_pct),
            ("error_pct", self.error_pct),
        ];
        for (k, v) in params {
            if let Some(v) = v {
                q.push_str(&format!("&{k}={v}"));
            }
        }
        q
    }
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("bad scenario file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = serde_yaml_ng::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    /// The references between the parts hold and the names fit where they go.
    pub fn check(&self) -> anyhow::Result<()> {
        let name_ok = |n: &str, max: usize| {
            !n.is_empty()
                && n.len() <= max
                && !n.starts_with('-')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.name, 64) {
            bail!("name {:?}: use 1-64 letters, digits, '-' or '_'", self.name);
        }
        if self.nodes.is_empty() || self.nodes.len() > 32 {
            bail!("nodes: between 1 and 32 nodes");
        }
        let nodes: BTreeSet<&str> = self.nodes.iter().map(String::as_str).collect();
        if nodes.len() != self.nodes.len() {
            bail!("nodes: a node is listed twice");
        }
        for n in &self.nodes {
            if !name_ok(n, 12) {
                bail!("node {n:?}: use 1-12 letters, digits, '-' or '_'");
            }
            if n.starts_with("agent") {
                bail!("node {n:?}: names starting with `agent` are reserved");
            }
        }
        if self.services.is_empty() || self.services.len() > 64 {
            bail!("services: between 1 and 64 services");
        }
        let mut services = BTreeMap::new();
        for s in &self.services {
            // comm is at most 15 bytes: the service name must survive it whole.
            if !name_ok(&s.name, 15) {
                bail!(
                    "service {:?}: use 1-15 letters, digits, '-' or '_' (it becomes the process name)",
                    s.name
                );
            }
            if !nodes.contains(s.node.as_str()) {
                bail!("service {}: node {:?} is not in `nodes`", s.name, s.node);
            }
            if services.insert(s.name.as_str(), s).is_some() {
                bail!("service {:?} is defined twice", s.name);
            }
        }
        for s in &self.services {
            for c in &s.calls {
                if !services.contains_key(c.as_str()) {
                    bail!("service {} calls {c:?}, which is not defined", s.name);
                }
            }
        }
        // The call graph must be acyclic: each request would loop forever otherwise.
        let mut state: BTreeMap<&str, u8> = BTreeMap::new();
        fn visit<'a>(
            n: &'a str,
            g: &BTreeMap<&'a str, &'a ServiceSpec>,
            state: &mut BTreeMap<&'a str, u8>,
        ) -> anyhow::Result<()> {
            match state.get(n) {
                Some(1) => bail!("the call graph has a cycle through {n}"),
                Some(_) => return Ok(()),
                None => {}
            }
            state.insert(n, 1);
            if let Some(s) = g.get(n) {
                for c in &s.calls {
                    visit(c, g, state)?;
                }
            }
            state.insert(n, 2);
            Ok(())
        }
        for s in &self.services {
            visit(&s.name, &services, &mut state)?;
        }
        if !services.contains_key(self.load.entry.as_str()) {
            bail!("load.entry {:?} is not a service", self.load.entry);
        }
        if !(self.load.rps > 0.0 && self.load.rps <= 1000.0) {
            bail!("load.rps must be in (0, 1000], got {}", self.load.rps);
        }
        if !services.contains_key(self.fault.target.as_str()) {
            bail!("fault.target {:?} is not a service", self.fault.target);
        }
        if self.fault.duration_s == 0 {
            bail!("fault.duration_s must be at least 1");
        }
        if u64::from(self.detector_warmup) + 5 > self.fault.after_s {
            bail!(
                "fault.after_s ({}) must leave the detectors' warm-up ({} samples) and 5 s more",
                self.fault.after_s,
                self.detector_warmup
            );
        }
        if !(4..=4096).contains(&self.disk_mb) {
            bail!("disk_mb must be in [4, 4096]");
        }
        if self.timeout_s == 0 {
            bail!("timeout_s must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "
name: checkout-cpu-hog
nodes: [n1, n2, n3]
services:
  - {name: frontend, node: n1, calls: [checkout, catalog]}
  - {name: checkout, node: n2, calls: [payments]}
  - {name: payments, node: n3}
  - {name: catalog, node: n3}
load: {entry: frontend, rps: 50}
fault: {kind: cpu_hog, target: payments, after_s: 45, duration_s: 60}
";

    #[test]
    fn the_documented_example_parses() {
        let s = Scenario::parse(EXAMPLE).unwrap();
        assert_eq!(s.name, "checkout-cpu-hog");
        assert_eq!(s.services.len(), 4);
        assert_eq!(s.fault.kind, FaultKind::CpuHog);
        assert_eq!(s.timeout_s, 90);
        assert_eq!(s.fault.settle_s, 5);
        assert_eq!(s.fault.observe_s, 30);
        assert_eq!(s.fault.admin_query(60), "kind=cpu_hog&secs=60");
        assert_eq!(s.services[3].node, "n3");
    }

    #[test]
    fn every_fault_kind_parses() {
        for kind in [
            "cpu_hog",
            "mem_leak",
            "net_delay",
            "net_loss",
            "disk_fill",
            "crash_loop",
            "error_burst",
            "slow_io",
        ] {
            let text = EXAMPLE.replace("kind: cpu_hog", &format!("kind: {kind}"));
            let s = Scenario::parse(&text).unwrap();
            assert_eq!(s.fault.kind.as_str(), kind);
        }
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let bad = |from: &str, to: &str, why: &str| {
            let err = Scenario::parse(&EXAMPLE.replace(from, to)).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{err:#} lacks {why:?}");
        };
        bad("target: payments", "target: nope", "fault.target");
        bad("calls: [payments]", "calls: [frontend]", "cycle");
        bad("node: n3}", "node: n9}", "not in `nodes`");
        bad("rps: 50", "rps: 0", "load.rps");
        bad("after_s: 45", "after_s: 10", "warm-up");
        bad("{name: catalog,", "{name: averyveryverylongname,", "15");
        bad("kind: cpu_hog", "kind: meteor", "unknown variant");
        bad(
            "duration_s: 60}",
            "duration_s: 60, colour: red}",
            "unknown field",
        );
    }
}
