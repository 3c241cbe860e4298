//! Backtesting: run the streaming detector over a `timestamp,value` CSV text, exactly as the
//! agent would have seen the samples. Behind `node-agent detect`; pure text in, text out.
//!
//! Input: one `timestamp,value` row per line. The timestamp is ISO-8601 (`2024-01-01`,
//! `2024-01-01T00:00:00Z`, `2014-04-01 00:00:00`, fractions, `±hh:mm` offsets; no offset
//! means UTC) or unix seconds (integer or decimal; magnitudes from 1e11, 1e14 and 1e17 are
//! read as milliseconds, microseconds and nanoseconds). A first line that is neither is a
//! header. Blank lines are skipped, fields may be double-quoted, and columns after the
//! second are ignored (so labelled files can be scored as they are). `nan`/`inf` values are
//! accepted and score 0. Anything else is an error naming the line.

use std::borrow::Cow;
use std::io::{self, Write};

use super::config::DetectConfig;
use super::series::SeriesDetector;

/// One data row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row<'a> {
    /// 1-based line number in the input.
    pub line: usize,
    /// The timestamp field as given (unquoted).
    pub timestamp: Cow<'a, str>,
    /// The timestamp in unix milliseconds.
    pub ts_ms: i64,
    /// The value field as given (unquoted).
    pub value_text: Cow<'a, str>,
    /// The value.
    pub value: f64,
}

/// A row that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}: {row:?}")]
pub struct RowError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
    /// The line (cut to 200 bytes).
    pub row: String,
}

/// Parses the whole input; the first bad row is an error.
pub fn parse_csv(text: &str) -> Result<Vec<Row<'_>>, RowError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut seen_first = false;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let first = !seen_first;
        seen_first = true;
        let bad = |reason| RowError {
            line,
            reason,
            row: cut(trimmed, 200).to_string(),
        };
        let fields = split_fields(trimmed);
        if fields.len() < 2 {
            if first && parse_timestamp(&fields[0]).is_none() {
                continue;
            }
            return Err(bad("expected `timestamp,value`"));
        }
        let (ts_text, value_text) = (&fields[0], &fields[1]);
        let ts = parse_timestamp(ts_text);
        let value = parse_value(value_text);
        match (ts, value) {
            (Some(ts_ms), Some(value)) => rows.push(Row {
                line,
                timestamp: fields[0].clone(),
                ts_ms,
                value_text: fields[1].clone(),
                value,
            }),
            (None, None) if first => continue, // a header
            (None, _) => return Err(bad("timestamp is neither ISO-8601 nor unix seconds")),
            (_, None) => return Err(bad("value is not a number")),
        }
    }
    Ok(rows)
}

/// Scores every row with one fresh [`SeriesDetector`], in input order.
pub fn score_rows(rows: &[Row<'_>], cfg: &DetectConfig) -> Vec<f64> {
    let mut det = SeriesDetector::new(cfg);
    rows.iter()
        .map(|r| det.observe(cfg, r.ts_ms, r.value).score)
        .collect()
}

/// Writes `timestamp,value,anomaly_score` with one row per input row.
pub fn write_csv(rows: &[Row<'_>], scores: &[f64], out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "timestamp,value,anomaly_score")?;
    for (row, score) in rows.iter().zip(scores) {
        writeln!(
            out,
            "{},{},{:.6}",
            csv_field(&row.timestamp),
            csv_field(&row.value_text),
            score
        )?;
    }
    Ok(())
}

/// Parses, scores and writes; the whole `node-agent detect` minus the file handling.
pub fn run(text: &str, cfg: &DetectConfig, out: &mut impl Write) -> Result<usize, BacktestError> {
    let rows = parse_csv(text)?;
    let scores = score_rows(&rows, cfg);
    write_csv(&rows, &scores, out)?;
    Ok(rows.len())
}

/// Why a backtest failed.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// Bad input row.
    #[error(transparent)]
    Row(#[from] RowError),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Io(#[from] io::Error),
}

fn parse_value(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Unix milliseconds from ISO-8601 or unix seconds (see the module doc), or `None`.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let bytes = s.as_bytes();
    let numeric = !s.is_empty()
        && bytes.iter().enumerate().all(|(i, &c)| match c {
            b'0'..=b'9' | b'.' | b'e' | b'E' => true,
            b'-' | b'+' => i == 0 || matches!(bytes[i - 1], b'e' | b'E'),
            _ => false,
        });
    if numeric && let Ok(v) = s.parse::<f64>() {
        if !v.is_finite() {
            return None;
        }
        let a = v.abs();
        let ms = if a >= 1e17 {
            v / 1e6
        } else if a >= 1e14 {
            v / 1e3
        } else if a >= 1e11 {
            v
        } else {
            v * 1e3
        };
        return (ms.abs() < 9e15).then(|| ms.round() as i64);
    }
    parse_iso8601(s)
}

/// `YYYY-MM-DD[(T| )hh:mm[:ss[(.|,)frac]]][Z|±hh[:mm]]`, also with `/` in the date.
fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let mut i = 0;
    let num = |i: &mut usize, len: usize| -> Option<i64> {
        let end = *i + len;
        let digits = b.get(*i..end)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *i = end;
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let year = num(&mut i, 4)?;
    let sep = *b.get(i)?;
    if sep != b'-' && sep != b'/' {
        return None;
    }
    i += 1;
    let month = num(&mut i, 2)?;
    if b.get(i) != Some(&sep) {
        return None;
    }
    i += 1;
    let day = num(&mut i, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    let mut frac_ms = 0i64;
    if i < b.len() {
        if !matches!(b[i], b'T' | b't' | b' ') {
            return None;
        }
        i += 1;
        let hh = num(&mut i, 2)?;
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        let mm = num(&mut i, 2)?;
        let mut ss = 0;
        if b.get(i) == Some(&b':') {
            i += 1;
            ss = num(&mut i, 2)?;
            if matches!(b.get(i), Some(b'.') | Some(b',')) {
                i += 1;
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start {
                    return None;
                }
                let digits = &s[start..i.min(start + 3)];
                frac_ms = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
            }
        }
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        secs += hh * 3600 + mm * 60 + ss;
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        match b.get(i) {
            None => {}
            Some(b'Z') | Some(b'z') if i + 1 == b.len() => i += 1,
            Some(&sign @ (b'+' | b'-')) => {
                i += 1;
                let oh = num(&mut i, 2)?;
                if b.get(i) == Some(&b':') {
                    i += 1;
                }
                let om = if i < b.len() { num(&mut i, 2)? } else { 0 };
                if oh > 23 || om > 59 {
                    return None;
                }
                let offset = oh * 3600 + om * 60;
                secs -= if sign == b'+' { offset } else { -offset };
            }
            _ if s[i..].eq_ignore_ascii_case("utc") => i = b.len(),
            _ => return None,
        }
        if i != b.len() {
            return None;
        }
    }
    secs.checked_mul(1000)?.checked_add(frac_ms)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Splits a CSV line on commas outside double quotes; quoted fields are unquoted.
fn split_fields(line: &str) -> Vec<Cow<'_, str>> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        let field = rest.trim_start();
        if let Some(body) = field.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = body.char_indices();
            let mut end = body.len();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if body[i + 1..].starts_with('"') {
                        value.push('"');
                        chars.next();
                    } else {
                        end = i + 1;
                        break;
                    }
                } else {
                    value.push(c);
                }
            }
            out.push(Cow::Owned(value));
            let after = &body[end.min(body.len())..];
            match after.find(',') {
                Some(pos) => rest = &after[pos + 1..],
                None => return out,
            }
        } else {
            match field.find(',') {
                Some(pos) => {
                    out.push(Cow::Borrowed(field[..pos].trim()));
                    rest = &field[pos + 1..];
                }
                None => {
                    out.push(Cow::Borrowed(field.trim()));
                    return out;
                }
            }
        }
    }
}

/// Quotes a field when it needs it.
pub(crate) fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
