//! Offline mining of a whole log file with the agent's own code: behind `node-agent logs`.
//!
//! Every physical line gets a row `line_number,template_id,template`. Lines are read in
//! the given format (partial CRI / Docker lines are joined, and each physical line of a
//! joined message gets the message's template). Ids are the miner's online assignment;
//! the template text is each template's final text, and templates whose final texts are
//! identical (two branches that generalised to the same pattern) are reported under the
//! smallest of their ids, so grouping by id and grouping by text agree.

use std::collections::HashMap;
use std::io::{self, Write};

use super::formats::{Assembler, LogFormat};
use super::miner::{MinerConfig, TemplateMiner};

/// Mines `text` line by line; returns `(line_number, template_id)` for every line, in
/// order, and the miner (for the templates' final texts).
pub fn mine_text(
    text: &str,
    format: LogFormat,
    cfg: &MinerConfig,
) -> (Vec<(usize, u64)>, TemplateMiner) {
    let mut miner = TemplateMiner::new(cfg.clone());
    let mut assembler = Assembler::new(format, cfg.max_line_len);
    let mut ids: Vec<u64> = Vec::new();
    let assign = |ids: &mut Vec<u64>, parts: &[u64], id: u64| {
        for &p in parts {
            if let Some(slot) = ids.get_mut(p as usize) {
                *slot = id;
            }
        }
    };
    for (idx, line) in text.lines().enumerate() {
        ids.push(0);
        if let Some(msg) = assembler.push(idx as u64, line) {
            let res = miner.add(&msg.text);
            assign(&mut ids, &msg.parts, res.template_id);
        }
    }
    for msg in assembler.flush() {
        let res = miner.add(&msg.text);
        assign(&mut ids, &msg.parts, res.template_id);
    }
    (
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| (i + 1, id))
            .collect(),
        miner,
    )
}

/// Resolves every row to `(line_number, template_id, template)` with final texts, and one
/// id per distinct final text (the smallest).
pub fn resolve(
    rows: &[(usize, u64)],
    miner: &TemplateMiner,
) -> Vec<(usize, u64, std::rc::Rc<str>)> {
    let mut canonical: HashMap<String, u64> = HashMap::new();
    let mut text_of: HashMap<u64, (u64, std::rc::Rc<str>)> = HashMap::new();
    for (id, text, _) in miner.templates() {
        let first = *canonical.entry(text.clone()).or_insert(id);
        text_of.insert(id, (first, text.into()));
    }
    let empty: std::rc::Rc<str> = "".into();
    rows.iter()
        .map(|&(line, id)| match text_of.get(&id) {
            Some((canon, text)) => (line, *canon, text.clone()),
            None => (line, id, empty.clone()),
        })
        .collect()
}

/// Writes the CSV (header `line_number,template_id,template`).
pub fn write_csv(
    rows: &[(usize, u64)],
    miner: &TemplateMiner,
    out: &mut impl Write,
) -> io::Result<()> {
    writeln!(out, "line_number,template_id,template")?;
    for (line, id, text) in resolve(rows, miner) {
        writeln!(out, "{line},{id},{}", csv_field(&text))?;
    }
    Ok(())
}

/// Mines and writes; returns the number of lines.
pub fn run(
    text: &str,
    format: LogFormat,
    cfg: &MinerConfig,
    out: &mut impl Write,
) -> io::Result<usize> {
    let (rows, miner) = mine_text(text, format, cfg);
    write_csv(&rows, &miner, out)?;
    Ok(rows.len())
}

/// Quotes a CSV field when it holds a comma, quote, newline or leading/trailing space.
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        std::borrow::Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}
