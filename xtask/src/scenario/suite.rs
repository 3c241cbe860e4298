//! `cargo xtask bench rca`: every scenario of the suite (`scenarios/*.yaml`), one after the
//! other on one build, and the score table: per scenario the expected root cause, top-1 and
//! top-3 hits and the time from fault start to RCA; then top-1 %, top-3 % and the median
//! and maximum time to RCA. Each RESULT.json goes to `target/scenario/results/`, the whole
//! table to `target/bench-rca.json`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Bins, Scenario, check_interrupted, run_one, summary, target_dir, write_result};
use crate::cmd;

#[derive(clap::Args)]
pub struct Args {
    /// Directory of scenario files [default: scenarios/ in the workspace root].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Only scenarios whose name contains this (repeatable).
    #[arg(long, value_name = "TEXT")]
    only: Vec<String>,
    /// Use the binaries already built in target/release (no cargo build).
    #[arg(long)]
    no_build: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    super::require_root()?;
    super::catch_stop_signals()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| cmd::repo_root().join("scenarios"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    // Parse everything first: a bad file fails the bench before anything runs.
    let mut scenarios = Vec::new();
    for f in &files {
        let s = Scenario::load(f)?;
        if args.only.is_empty() || args.only.iter().any(|o| s.name.contains(o.as_str())) {
            scenarios.push(s);
        }
    }
    if scenarios.is_empty() {
        bail!("no scenario to run in {}", dir.display());
    }
    let bins = if args.no_build {
        Bins::locate()?
    } else {
        Bins::build()?
    };
    let results_dir = target_dir().join("scenario").join("results");
    let mut results = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        check_interrupted()?;
        println!(
            "xtask: bench rca: [{}/{}] {}",
            i + 1,
            scenarios.len(),
            s.name
        );
        let result = match run_one(s, &bins) {
            Ok(r) => r,
            Err(e) => {
                check_interrupted()?;
                json!({"name": s.name, "fault": serde_json::to_value(&s.fault)?,
                       "expected": s.fault.accepted(), "ranking": [], "top1": false,
                       "top3": false, "error": format!("{e:#}")})
            }
        };
        write_result(&results_dir.join(format!("{}.json", s.name)), &result)?;
        println!("{}", summary(&result));
        results.push(result);
    }
    let table = score_table(&results);
    println!("{}", render(&results, &table));
    let out = target_dir().join("bench-rca.json");
    write_result(&out, &json!({"summary": table, "scenarios": results}))?;
    println!("xtask: bench rca: wrote {}", out.display());
    Ok(())
}

/// Totals: counts, top-1 / top-3 %, median and max time to RCA (of the scenarios that got
/// one), and how many ended with an error.
pub fn score_table(results: &[Value]) -> Value {
    let n = results.len();
    let count = |k: &str| {
        results
            .iter()
            .filter(|r| r[k].as_bool() == Some(true))
            .count()
    };
    let (top1, top3) = (count("top1"), count("top3"));
    let mut times: Vec<f64> = results
        .iter()
        .filter_map(|r| r["time_to_rca_s"].as_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    let median = if times.is_empty() {
        None
    } else if times.len() % 2 == 1 {
        Some(times[times.len() / 2])
    } else {
        Some((times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0)
    };
    let pct = |k: usize| {
        if n == 0 {
            0.0
        } else {
            (k as f64 * 1000.0 / n as f64).round() / 10.0
        }
    };
    json!({
        "scenarios": n,
        "top1": top1,
        "top3": top3,
        "top1_pct": pct(top1),
        "top3_pct": pct(top3),
        "with_rca": times.len(),
        "median_time_to_rca_s": median,
        "max_time_to_rca_s": times.last(),
        "errors": results.iter().filter(|r| r.get("error").is_some()).count(),
    })
}

/// The table as text.
pub fn render(results: &[Value], table: &Value) -> String {
    let mut out = format!(
        "{:<36} {:<11} {:<10} {:<22} {:>4} {:>4} {:>8}\n",
        "scenario", "fault", "expected", "top-1", "top1", "top3", "rca (s)"
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for r in results {
        let top = r["ranking"]
            .get(0)
            .and_then(|e| e["target"].as_str())
            .unwrap_or("-");
        out.push_str(&format!(
            "{:<36} {:<11} {:<10} {:<22} {:>4} {:>4} {:>8}{}\n",
            r["name"].as_str().unwrap_or("?"),
            r["fault"]["kind"].as_str().unwrap_or("?"),
            r["fault"]["target"].as_str().unwrap_or("?"),
            top,
            yes(r["top1"].as_bool() == Some(true)),
            yes(r["top3"].as_bool() == Some(true)),
            r["time_to_rca_s"]
                .as_f64()
                .map(|t| format!("{t:.1}"))
                .unwrap_or_else(|| "-".into()),
            r["error"]
                .as_str()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default(),
        ));
    }
    let opt = |v: &Value| {
        v.as_f64()
            .map(|t| format!("{t:.1} s"))
            .unwrap_or_else(|| "-".into())
    };
    out.push_str(&format!(
        "total: {} scenarios, top-1 {}/{} ({}%), top-3 {}/{} ({}%), time to RCA median {}, max {}, errors {}",
        table["scenarios"],
        table["top1"],
        table["scenarios"],
        table["top1_pct"],
        table["top3"],
        table["scenarios"],
        table["top3_pct"],
        opt(&table["median_time_to_rca_s"]),
        opt(&table["max_time_to_rca_s"]),
        table["errors"],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_hits_and_times() {
        let results = vec![
            json!({"name": "a", "top1": true, "top3": true, "time_to_rca_s": 10.0, "ranking": []}),
            json!({"name": "b", "top1": false, "top3": true, "time_to_rca_s": 30.0, "ranking": []}),
            json!({"name": "c", "top1": false, "top3": false, "error": "x", "ranking": []}),
            json!({"name": "d", "top1": true, "top3": true, "time_to_rca_s": 20.0, "ranking": []}),
        ];
        let t = score_table(&results);
        assert_eq!(t["top1"], 2);
        assert_eq!(t["top3_pct"], 75.0);
        assert_eq!(t["median_time_to_rca_s"], 20.0);
        assert_eq!(t["max_time_to_rca_s"], 30.0);
        assert_eq!(t["errors"], 1);
        assert!(render(&results, &t).contains("top-1 2/4 (50.0%)"));
    }
}
