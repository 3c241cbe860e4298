//! Explanations for the RCA engine: one plain-English paragraph per candidate, the
//! last step of [`super::rank`]. Built only from the evidence the scorer kept, so
//! every claim in the text can be checked against the `evidence` list (and Jamie can
//! quote it without a model).

use super::RcaInput;
use super::classify::MetricClass;
use super::host::Discount;
use super::score::{Comp, Item};

/// The paragraph for the candidate at `rank_pos` (0 = best), component `ci`.
pub fn paragraph(
    rank_pos: usize,
    ci: usize,
    comps: &[Comp],
    input: &RcaInput,
    graph_mode: bool,
) -> String {
    let c = &comps[ci];
    let mut out = String::new();
    let dependency = c.kind == "dependency";
    if dependency {
        out.push_str(&format!(
            "{} is probably a victim rather than the cause (score {:.2})",
            c.name, c.score
        ));
    } else if rank_pos == 0 {
        out.push_str(&format!(
            "{} is the most likely cause ({}, score {:.2})",
            c.name, c.kind, c.score
        ));
    } else {
        out.push_str(&format!(
            "{} is candidate #{} ({}, score {:.2})",
            c.name,
            rank_pos + 1,
            c.kind,
            c.score
        ));
    }
    let lead = c.lead_item();
    if let Some(item) = lead {
        out.push_str(": ");
        out.push_str(&describe(item, input, true));
    }
    out.push_str(&timing(ci, comps));
    // Up to two more pieces of evidence, strongest first.
    let mut rest: Vec<&Item> = c
        .items
        .iter()
        .filter(|i| lead.is_none_or(|l| !std::ptr::eq(*i, l)))
        .collect();
    rest.sort_by(|a, b| b.weighted().total_cmp(&a.weighted()));
    for item in rest.iter().take(2) {
        out.push_str("; also ");
        out.push_str(&describe(item, input, false));
    }
    out.push('.');

    if let Some(d) = c.explained_by.map(|d| &comps[d]) {
        let when = match (d.onset_ms, c.onset_ms) {
            (Some(od), Some(oc)) if od < oc => format!("{} earlier", duration(oc - od)),
            _ => "at about the same time".to_string(),
        };
        if dependency && c.upstream {
            out.push_str(&format!(
                " Its caller {} was anomalous {} ({}), so it most likely received fewer requests: a victim downstream of {}.",
                d.name,
                when,
                describe_kind(d, input),
                d.name
            ));
        } else if dependency {
            out.push_str(&format!(
                " Its callee {} was anomalous {} ({}), so these symptoms most likely propagated upstream from {}.",
                d.name,
                when,
                describe_kind(d, input),
                d.name
            ));
        } else {
            out.push_str(&format!(
                " Its callee {} is anomalous too ({}), but that does not explain this component's own {} evidence.",
                d.name,
                describe_kind(d, input),
                c.kind
            ));
        }
    }
    match &c.discount {
        Some(Discount::Contained { by }) => out.push_str(&format!(
            " {} runs on this node and shows its own resources rising, which explains the node's anomalies.",
            comps[*by].name
        )),
        Some(Discount::CommonMode { n_nodes }) => out.push_str(&format!(
            " Its anomalies are the same on all {n_nodes} nodes that report them: something shared moved, not this node alone."
        )),
        None => {}
    }
    if graph_mode && !dependency {
        let others = comps
            .iter()
            .enumerate()
            .filter(|(i, o)| *i != ci && o.anomalous())
            .count();
        if !c.explains.is_empty() {
            let names: Vec<&str> = c
                .explains
                .iter()
                .take(4)
                .map(|&a| comps[a].name.as_str())
                .collect();
            let more = c.explains.len().saturating_sub(4);
            let mut classes: Vec<&str> = c
                .explains
                .iter()
                .flat_map(|&a| comps[a].items.iter().map(|i| symptom_word(i.class())))
                .collect();
            classes.sort_unstable();
            classes.dedup();
            let who = if names.len() == 1 {
                "caller"
            } else {
                "callers"
            };
            out.push_str(&format!(
                " Its {} {}{} show{} {} anomalies afterwards, consistent with the fault propagating upstream.",
                who,
                join_and(&names),
                if more > 0 { format!(" and {more} more") } else { String::new() },
                if names.len() == 1 && more == 0 { "s" } else { "" },
                join_and(&classes)
            ));
        } else if others > 0 && c.explained_by.is_none() {
            out.push_str(" None of the other anomalous components depends on it, so it explains none of them.");
        }
    } else if !graph_mode {
        let others = comps
            .iter()
            .enumerate()
            .filter(|(i, o)| *i != ci && o.anomalous())
            .count();
        if others > 0 && rank_pos == 0 {
            out.push_str(
                " Without a call graph this rests on the size of the deviations, the kind of metric and the timing.",
            );
        }
    }
    out
}

fn describe_kind(c: &Comp, input: &RcaInput) -> String {
    match c.lead_item() {
        Some(Item::Series(e)) => {
            let metric = input
                .series
                .get(e.series)
                .map_or("?", |s| s.metric.as_str());
            format!("its {metric} {}", if e.up { "rose" } else { "fell" })
        }
        Some(Item::Event { event, .. }) => input.events.get(*event).map_or_else(
            || "an event".to_string(),
            |ev| format!("{} {} event", article(&ev.kind), ev.kind),
        ),
        None => c.kind.to_string(),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    }
}

fn symptom_word(class: MetricClass) -> &'static str {
    match class {
        MetricClass::Latency => "latency",
        MetricClass::Errors => "error",
        MetricClass::Crash => "crash",
        MetricClass::Unknown => "other",
        c => c.kind(),
    }
}

fn describe(item: &Item, input: &RcaInput, full: bool) -> String {
    match item {
        Item::Series(e) => {
            let metric = input
                .series
                .get(e.series)
                .map_or("?", |s| s.metric.as_str());
            let verb = if e.up { "rose" } else { "fell" };
            if full {
                format!(
                    "its {metric} {verb} to {} (baseline {}, {:.1} robust deviations) at {}",
                    number(e.value),
                    number(e.baseline),
                    e.z,
                    clock(e.onset_ms)
                )
            } else {
                format!("{metric} {verb} ({:.1} deviations)", e.z)
            }
        }
        Item::Event { event, count, .. } if *count > 1 => match input.events.get(*event) {
            Some(ev) => format!(
                "it logged {count} {} events from {}",
                ev.kind,
                clock(ev.ts_ms)
            ),
            None => "events".to_string(),
        },
        Item::Event { event, .. } => match input.events.get(*event) {
            Some(ev) if ev.detail.is_empty() => {
                format!(
                    "it logged {} {} event at {}",
                    article(&ev.kind),
                    ev.kind,
                    clock(ev.ts_ms)
                )
            }
            Some(ev) => format!(
                "it logged {} {} event at {} ({})",
                article(&ev.kind),
                ev.kind,
                clock(ev.ts_ms),
                ev.detail
            ),
            None => "an event".to_string(),
        },
    }
}

fn timing(ci: usize, comps: &[Comp]) -> String {
    let Some(own) = comps[ci].onset_ms else {
        return String::new();
    };
    let first_other = comps
        .iter()
        .enumerate()
        .filter(|(i, o)| *i != ci && o.anomalous())
        .filter_map(|(_, o)| o.onset_ms.map(|t| (t, o.name.as_str())))
        .min();
    match first_other {
        None => String::new(),
        Some((t, _)) if own < t => format!(", {} before any other component", duration(t - own)),
        Some((t, name)) if own == t => format!(", at the same time as {name}"),
        Some((t, name)) => format!(", {} after {name}", duration(own - t)),
    }
}

fn join_and(xs: &[&str]) -> String {
    match xs {
        [] => String::new(),
        [a] => (*a).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Time of day (UTC) of a unix-ms timestamp: `10:32:05`, or `10:32:05.250`.
pub fn clock(ms: i64) -> String {
    let day = ms.rem_euclid(86_400_000);
    let (h, m, s, frac) = (
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000,
    );
    if frac == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{frac:03}")
    }
}

fn duration(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        let s = ms as f64 / 1000.0;
        if ms % 1000 == 0 {
            format!("{s:.0} s")
        } else {
            format!("{s:.1} s")
        }
    } else {
        format!("{} min {} s", ms / 60_000, ms / 1000 % 60)
    }
}

/// A readable number: 97, 12.5, 0.031, 1.5G.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if a >= 1e6 {
        let (d, suffix) = if a >= 1e12 {
            (1e12, "T")
        } else if a >= 1e9 {
            (1e9, "G")
        } else {
            (1e6, "M")
        };
        format!("{}{suffix}", trim(format!("{:.2}", v / d)))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(clock(37_925_000), "10:32:05");
        assert_eq!(duration(8000), "8 s");
        assert_eq!(duration(150_000), "2 min 30 s");
        assert_eq!(number(97.2), "97.2");
        assert_eq!(number(12.0), "12");
        assert_eq!(number(1_500_000_000.0), "1.5G");
        assert_eq!(join_and(&["a", "b", "c"]), "a, b and c");
    }
}
