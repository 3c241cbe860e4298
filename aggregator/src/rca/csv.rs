//! CSV readers for the offline RCA path (`aggregator rca`): a wide series file and a
//! call-graph edge list, turned into the same [`SeriesData`] / [`CallEdge`] the online
//! path builds from the store. Total functions: hostile text gives a typed
//! [`RcaError`] with line and column, never a panic.
//!
//! Wide format: a header `timestamp,<col>,<col>...`, then one row per timestamp. A
//! column named `component:metric` splits at the first `:`; a name without `:` splits
//! at its first `_` (Kubernetes names cannot contain `_`, so `cartservice_cpu` is
//! `cartservice` + `cpu`); a name with neither is component-level metric `value`.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{CallEdge, RcaError, SeriesData};

/// Why a timestamp did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("empty timestamp")]
    Empty,
    #[error("not a number or an ISO-8601 / RFC 3339 date-time")]
    Format,
    #[error("out of range (years 0 to 9999)")]
    OutOfRange,
}

/// Most columns in a wide file: bounds the per-row work and the header map.
const MAX_COLUMNS: usize = 100_000;
/// Largest magnitude accepted for a value: beyond it arithmetic stops being exact
/// enough to mean anything, and it is almost always a corrupted cell.
const MAX_ABS_VALUE: f64 = 1e18;
const MIN_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/// Parses a timestamp to unix milliseconds. Numbers are read by magnitude: below 1e11
/// seconds, below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds
/// (fractions allowed). Text is ISO-8601 / RFC 3339: `2024-05-01T10:32:05Z`,
/// `2024-05-01 10:32:05.250+02:00`, `2024-05-01` (midnight); no zone means UTC.
pub fn parse_timestamp(text: &str) -> Result<i64, TimestampError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(TimestampError::Empty);
    }
    let ms = if let Ok(v) = t.parse::<i64>() {
        let a = v.unsigned_abs();
        if a < 100_000_000_000 {
            v.checked_mul(1000).ok_or(TimestampError::OutOfRange)?
        } else if a < 100_000_000_000_000 {
            v
        } else if a < 100_000_000_000_000_000 {
            v / 1000
        } else {
            v / 1_000_000
        }
    } else if let Ok(v) = t.parse::<f64>() {
        if !v.is_finite() {
            return Err(TimestampError::OutOfRange);
        }
        let a = v.abs();
        let ms = if a < 1e11 {
            v * 1e3
        } else if a < 1e14 {
            v
        } else if a < 1e17 {
            v / 1e3
        } else {
            v / 1e6
        };
        if !(MIN_MS as f64..=MAX_MS as f64).contains(&ms) {
            return Err(TimestampError::OutOfRange);
        }
        ms.round() as i64
    } else {
        parse_iso(t)?
    };
    if !(MIN_MS..=MAX_MS).contains(&ms) {
        return Err(TimestampError::OutOfRange);
    }
    Ok(ms)
}

fn parse_iso(t: &str) -> Result<i64, TimestampError> {
    let b = t.as_bytes();
    let num = |s: &[u8]| -> Result<i64, TimestampError> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return Err(TimestampError::Format);
        }
        Ok(s.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(TimestampError::Format);
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return Err(TimestampError::OutOfRange);
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    let rest = &b[10..];
    if rest.is_empty() {
        return Ok(ms);
    }
    if !(rest[0] == b'T' || rest[0] == b't' || rest[0] == b' ') || rest.len() < 6 || rest[3] != b':'
    {
        return Err(TimestampError::Format);
    }
    let (h, mi) = (num(&rest[1..3])?, num(&rest[4..6])?);
    let mut i = 6;
    let mut sec = 0;
    let mut frac_ms = 0;
    if rest.get(i) == Some(&b':') {
        sec = num(rest.get(i + 1..i + 3).ok_or(TimestampError::Format)?)?;
        i += 3;
        if matches!(rest.get(i), Some(b'.') | Some(b',')) {
            let start = i + 1;
            let mut end = start;
            while rest.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if end == start {
                return Err(TimestampError::Format);
            }
            // Milliseconds: the first three digits, padded.
            let digits = &rest[start..end.min(start + 3)];
            frac_ms = num(digits)? * 10i64.pow(3 - digits.len() as u32);
            i = end;
        }
    }
    // Leap seconds (`:60`) are read as :59.
    if h > 23 || mi > 59 || sec > 60 {
        return Err(TimestampError::OutOfRange);
    }
    ms += h * 3_600_000 + mi * 60_000 + sec.min(59) * 1000 + frac_ms;
    let zone = &rest[i..];
    let offset_min = match zone {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), z @ ..] => {
            let (zh, zm) = match z {
                [a, b] => (num(&[*a, *b])?, 0),
                [a, b, b':', c, d] | [a, b, c, d] => (num(&[*a, *b])?, num(&[*c, *d])?),
                _ => return Err(TimestampError::Format),
            };
            if zh > 23 || zm > 59 {
                return Err(TimestampError::OutOfRange);
            }
            let o = zh * 60 + zm;
            if *sign == b'-' { -o } else { o }
        }
        _ => return Err(TimestampError::Format),
    };
    Ok(ms - offset_min * 60_000)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Splits one CSV line into fields (RFC 4180 quoting within the line; `""` is a quote).
fn split_fields(line: &str, line_no: usize) -> Result<Vec<Cow<'_, str>>, RcaError> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        let column = out.len() + 1;
        let trimmed = rest.trim_start();
        if let Some(q) = trimmed.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let after = loop {
                match chars.next() {
                    Some((i, '"')) => {
                        if q[i + 1..].starts_with('"') {
                            value.push('"');
                            chars.next();
                        } else {
                            break &q[i + 1..];
                        }
                    }
                    Some((_, c)) => value.push(c),
                    None => {
                        return Err(RcaError::Unterminated {
                            line: line_no,
                            column,
                        });
                    }
                }
            };
            out.push(Cow::Owned(value));
            let after = after.trim_start();
            match after.strip_prefix(',') {
                Some(r) => rest = r,
                None if after.is_empty() => return Ok(out),
                // Text after a closing quote: treat as part of a malformed field.
                None => {
                    return Err(RcaError::Unterminated {
                        line: line_no,
                        column,
                    });
                }
            }
        } else {
            match rest.split_once(',') {
                Some((f, r)) => {
                    out.push(Cow::Borrowed(f.trim()));
                    rest = r;
                }
                None => {
                    out.push(Cow::Borrowed(rest.trim()));
                    return Ok(out);
                }
            }
        }
    }
}

/// Non-empty lines with their 1-based numbers (a leading UTF-8 BOM is dropped).
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
}

fn split_name(name: &str) -> (&str, &str) {
    if let Some((c, m)) = name.split_once(':') {
        (c.trim(), m.trim())
    } else if let Some((c, m)) = name.split_once('_') {
        (c.trim(), m.trim())
    } else {
        (name, "value")
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Reads a wide CSV (see the module doc). Empty cells and `NaN`/`null`/`NA`/`-` are
/// gaps, not errors. Rows may come in any order; each series is sorted by time and
/// the last row wins on a repeated timestamp.
pub fn parse_wide_csv(text: &str) -> Result<Vec<SeriesData>, RcaError> {
    let mut it = lines(text);
    let (hline, header) = it.next().ok_or(RcaError::Empty)?;
    let names = split_fields(header, hline)?;
    if names.len() > MAX_COLUMNS + 1 {
        return Err(RcaError::TooManyColumns {
            line: hline,
            found: names.len(),
            max: MAX_COLUMNS + 1,
        });
    }
    let first = names
        .first()
        .map(|n| n.to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(
        first.as_str(),
        "timestamp" | "time" | "ts" | "date" | "datetime"
    ) {
        return Err(RcaError::MissingTimestamp {
            line: hline,
            found: short(&first),
        });
    }
    if names.len() < 2 {
        return Err(RcaError::NoSeriesColumns { line: hline });
    }
    let mut series = Vec::with_capacity(names.len() - 1);
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, name) in names.iter().enumerate().skip(1) {
        let column = i + 1;
        let (component, metric) = split_name(name);
        if component.is_empty() || metric.is_empty() {
            return Err(RcaError::EmptyColumnName {
                line: hline,
                column,
            });
        }
        if let Some(&first) = seen.get(&(component, metric)) {
            return Err(RcaError::DuplicateColumn {
                line: hline,
                column,
                first,
                name: short(name),
            });
        }
        seen.insert((component, metric), column);
        series.push(SeriesData {
            component: component.to_string(),
            metric: metric.to_string(),
            points: Vec::new(),
        });
    }
    let mut rows = 0usize;
    for (line, text) in it {
        let fields = split_fields(text, line)?;
        if fields.len() != names.len() {
            return Err(RcaError::Ragged {
                line,
                expected: names.len(),
                found: fields.len(),
            });
        }
        let ts = parse_timestamp(&fields[0]).map_err(|source| RcaError::BadTimestamp {
            line,
            column: 1,
            value: short(&fields[0]),
            source,
        })?;
        rows += 1;
        for (i, cell) in fields.iter().enumerate().skip(1) {
            let cell = cell.trim();
            if cell.is_empty()
                || ["nan", "null", "na", "n/a", "none", "-"]
                    .iter()
                    .any(|g| cell.eq_ignore_ascii_case(g))
            {
                continue;
            }
            let name = || short(&names[i]);
            let v: f64 = cell.parse().map_err(|_| RcaError::NotNumeric {
                line,
                column: i + 1,
                name: name(),
                value: short(cell),
            })?;
            if !v.is_finite() || v.abs() > MAX_ABS_VALUE {
                return Err(RcaError::OutOfRange {
                    line,
                    column: i + 1,
                    name: name(),
                    value: short(cell),
                });
            }
            series[i - 1].points.push((ts, v));
        }
    }
    if rows == 0 {
        return Err(RcaError::NoRows);
    }
    for s in &mut series {
        if !s.points.windows(2).all(|w| w[0].0 < w[1].0) {
            s.points.sort_by_key(|p| p.0);
            // Stable sort: of equal timestamps the later row comes last and wins.
            let mut out: Vec<(i64, f64)> = Vec::with_capacity(s.points.len());
            for p in s.points.drain(..) {
                match out.last_mut() {
                    Some(last) if last.0 == p.0 => *last = p,
                    _ => out.push(p),
                }
            }
            s.points = out;
        }
    }
    Ok(series)
}

/// Reads `caller,callee` lines. An optional header (`caller,callee`, `source,target`,
/// `src,dst`, `from,to`) is skipped, as are `#` comments; extra columns (a call count,
/// say) are ignored. An empty file is an empty graph.
pub fn parse_edges_csv(text: &str) -> Result<Vec<CallEdge>, RcaError> {
    let mut out = Vec::new();
    let mut first = true;
    for (line, text) in lines(text) {
        if text.trim_start().starts_with('#') {
            continue;
        }
        let fields = split_fields(text, line)?;
        let (a, b) = match (fields.first(), fields.get(1)) {
            (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => (a, b),
            _ => return Err(RcaError::BadEdge { line }),
        };
        if std::mem::take(&mut first) {
            let pair = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
            if matches!(
                (pair.0.as_str(), pair.1.as_str()),
                ("caller", "callee") | ("source", "target") | ("src", "dst") | ("from", "to")
            ) {
                continue;
            }
        }
        out.push(CallEdge {
            caller: a.to_string(),
            callee: b.to_string(),
        });
    }
    Ok(out)
}
