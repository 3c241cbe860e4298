//! Reading the aggregator's incidents, RCA and anomalies over its HTTP API, tolerant of the
//! envelope (`{"items": [..]}`, `{"incidents": [..]}` or a bare array) and of the API not
//! being there at all (404: an aggregator without incidents yet).

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

pub struct Api {
    base: String,
    agent: ureq::Agent,
}

/// What the API said about incidents this poll.
pub enum Incidents {
    /// The route does not exist (404).
    Missing,
    List(Vec<Value>),
}

impl Api {
    pub fn new(http_port: u16) -> Api {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .proxy(None)
            .http_status_as_error(false)
            .build()
            .new_agent();
        Api {
            base: format!("http://127.0.0.1:{http_port}"),
            agent,
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub fn healthy(&self) -> bool {
        self.get("/healthz").is_ok_and(|(s, _)| s == 200)
    }

    /// `GET /api/v1/incidents?since=..`.
    pub fn incidents(&self, since_ms: i64) -> anyhow::Result<Incidents> {
        let (status, body) = self.get(&format!("/api/v1/incidents?since={since_ms}&limit=100"))?;
        if status == 404 || status == 405 {
            return Ok(Incidents::Missing);
        }
        anyhow::ensure!(status == 200, "incidents answered {status}: {body}");
        let list = match &body {
            Value::Array(a) => a.clone(),
            _ => ["items", "incidents", "data"]
                .iter()
                .find_map(|k| body[*k].as_array().cloned())
                .unwrap_or_default(),
        };
        Ok(Incidents::List(list))
    }

    /// `GET /api/v1/incidents/{id}` (the incident with its `rca`).
    pub fn incident(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let (status, body) = self.get(&format!("/api/v1/incidents/{id}"))?;
        if status == 404 {
            return Ok(None);
        }
        anyhow::ensure!(status == 200, "incident {id} answered {status}: {body}");
        // Either the incident itself or `{"incident": {...}, "rca": {...}}`.
        Ok(Some(match body.get("incident") {
            Some(inc) if inc.is_object() => {
                let mut inc = inc.clone();
                if let (Some(obj), Some(rca)) = (inc.as_object_mut(), body.get("rca")) {
                    obj.insert("rca".into(), rca.clone());
                }
                inc
            }
            _ => body,
        }))
    }

    /// One number from SQL (`None` when the query fails or gives NULL).
    pub fn sql_i64(&self, sql: &str) -> Option<i64> {
        let url = format!("{}/api/v1/sql", self.base);
        let mut resp = self
            .agent
            .post(&url)
            .send_json(serde_json::json!({ "sql": sql }))
            .ok()?;
        if resp.status().as_u16() != 200 {
            return None;
        }
        let body: Value = resp.body_mut().read_json().ok()?;
        let v = body["rows"].get(0)?.get(0)?;
        v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
    }

    /// Earliest anomaly at or after `since_ms` (on the target's process when `comm` is
    /// given), ms since the epoch.
    pub fn first_anomaly_ms(&self, since_ms: i64, comm: Option<&str>) -> Option<i64> {
        let filter = match comm {
            Some(c) => format!(
                " AND (labels LIKE '%comm={c}%' OR entity LIKE '%{c}%')",
                c = c.replace('\'', "")
            ),
            None => String::new(),
        };
        self.sql_i64(&format!(
            "SELECT CAST(date_part('epoch', min(ts)) * 1000 AS BIGINT) FROM anomalies \
             WHERE ts >= to_timestamp_millis({since_ms}){filter}"
        ))
    }
}

/// A field as ms since the epoch: a number, or an RFC 3339 string.
pub fn ms_field(v: &Value, key: &str) -> Option<i64> {
    let f = v.get(key)?;
    f.as_i64()
        .or_else(|| f.as_f64().map(|x| x as i64))
        .or_else(|| f.as_str().and_then(parse_rfc3339_ms))
}

/// `2026-05-01T12:00:00.123Z` (or with `+hh:mm`) → ms since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset_min) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, mi) = off[1..].split_once(':')?;
        (
            c,
            sign * (h.parse::<i64>().ok()? * 60 + mi.parse::<i64>().ok()?),
        )
    } else {
        (time, 0)
    };
    let mut c = clock.split(':');
    let (h, mi): (i64, i64) = (c.next()?.parse().ok()?, c.next()?.parse().ok()?);
    let sec: f64 = c.next().unwrap_or("0").parse().ok()?;
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + (sec * 1000.0).round() as i64)
}

/// The incident's id as text (ids may be numbers or strings).
pub fn id_of(inc: &Value) -> Option<String> {
    let id = inc.get("id")?;
    id.as_str()
        .map(str::to_string)
        .or_else(|| id.as_i64().map(|n| n.to_string()))
        .or_else(|| id.as_u64().map(|n| n.to_string()))
}

/// The component names of an incident (strings, or objects with a `name`/`id`).
pub fn components(inc: &Value) -> Vec<String> {
    inc.get("components")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    c.as_str()
                        .or_else(|| c.get("name").and_then(Value::as_str))
                        .or_else(|| c.get("id").and_then(Value::as_str))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a component / ranking target names one of `accepted` (service or node names).
/// Components are `<comm>@<node>` (`payments@n3`), `host@<node>`, `pod:..`, or plain.
pub fn names_one_of(target: &str, accepted: &[String]) -> bool {
    let has = |n: &str| accepted.iter().any(|a| a == n);
    match target.split_once('@') {
        Some(("host", node)) => has(node),
        Some((comm, _)) => has(comm),
        None => has(target) || target.rsplit(['/', ':']).next().is_some_and(has),
    }
}

/// The incident to follow: opened at or after the fault with the target among its
/// components; else the first opened at or after the fault; else one still updated after
/// the fault that involves the target (an incident that was already open).
pub fn pick_incident<'a>(
    list: &'a [Value],
    fault_start_ms: i64,
    accepted: &[String],
) -> Option<&'a Value> {
    let opened = |i: &Value| ms_field(i, "opened_at_ms").unwrap_or(i64::MIN);
    let involves = |i: &Value| components(i).iter().any(|c| names_one_of(c, accepted));
    let mut after: Vec<&Value> = list
        .iter()
        .filter(|i| opened(i) >= fault_start_ms)
        .collect();
    after.sort_by_key(|i| opened(i));
    after
        .iter()
        .find(|i| involves(i))
        .or_else(|| after.first())
        .copied()
        .or_else(|| {
            list.iter().find(|i| {
                ms_field(i, "updated_at_ms").is_some_and(|u| u >= fault_start_ms) && involves(i)
            })
        })
}

/// The RCA ranking of an incident (empty when not computed yet).
pub fn ranking(inc: &Value) -> Vec<Value> {
    inc.get("rca")
        .and_then(|r| r.get("ranking"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rfc3339_parses() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T01:00:00+01:00"),
            Some(951_782_400_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn targets_match_services_and_nodes() {
        let acc = vec!["payments".to_string(), "n3".to_string()];
        assert!(names_one_of("payments@n3", &acc));
        assert!(names_one_of("host@n3", &acc));
        assert!(!names_one_of("catalog@n3", &acc));
        assert!(!names_one_of("host@n1", &acc));
        assert!(names_one_of("payments", &acc));
        assert!(names_one_of("cgroup/ado-scenario/n3/payments", &acc));
        assert!(!names_one_of("paymentsx@n3", &acc));
    }

    #[test]
    fn the_incident_after_the_fault_with_the_target_wins() {
        let acc = vec!["payments".to_string()];
        let list = vec![
            json!({"id": 1, "opened_at_ms": 50, "updated_at_ms": 200, "components": ["payments@n3"]}),
            json!({"id": 2, "opened_at_ms": 120, "components": ["frontend@n1"]}),
            json!({"id": "3", "opened_at_ms": 130, "components": [{"name": "payments@n3"}]}),
        ];
        let pick = |l: &[Value]| pick_incident(l, 100, &acc).and_then(id_of);
        assert_eq!(pick(&list).as_deref(), Some("3"));
        assert_eq!(pick(&list[..2]).as_deref(), Some("2"));
        assert_eq!(pick(&list[..1]).as_deref(), Some("1"));
        assert_eq!(pick(&[]), None);
    }
}
