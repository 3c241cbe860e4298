//! Groups collected values into one batch per shipping interval.
//!
//! Series keep the order they first appeared in; all series sampled at one tick share
//! that tick's timestamp, which the codec then stores once per batch.

use std::collections::HashMap;

use common::model::{Batch, Event, Point, SeriesKey, SeriesPoints};

/// Accumulates ticks until [`Batcher::finish`].
#[derive(Debug, Default)]
pub struct Batcher {
    series: Vec<SeriesPoints>,
    index: HashMap<SeriesKey, usize>,
    events: Vec<Event>,
}

impl Batcher {
    /// Adds one tick's values, all taken at `ts_ms`.
    pub fn add_tick(&mut self, ts_ms: i64, values: &mut Vec<(SeriesKey, f64)>) {
        for (key, value) in values.drain(..) {
            let point = Point { ts_ms, value };
            match self.index.get(&key) {
                Some(&idx) => self.series[idx].points.push(point),
                None => {
                    self.index.insert(key.clone(), self.series.len());
                    self.series.push(SeriesPoints {
                        key,
                        points: vec![point],
                    });
                }
            }
        }
    }

    /// Adds an event.
    pub fn add_event(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Nothing collected since the last batch.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty() && self.events.is_empty()
    }

    /// Takes the batch built so far.
    pub fn finish(&mut self) -> Batch {
        self.index.clear();
        Batch {
            series: std::mem::take(&mut self.series),
            events: std::mem::take(&mut self.events),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_become_series_with_shared_timestamps() {
        let mut b = Batcher::default();
        let key = |m: &str| SeriesKey::new("host", m);
        b.add_tick(1000, &mut vec![(key("a"), 1.0), (key("b"), 2.0)]);
        b.add_tick(2000, &mut vec![(key("b"), 3.0), (key("c"), 4.0)]);
        let batch = b.finish();
        assert!(b.is_empty());
        let got: Vec<(String, Vec<i64>)> = batch
            .series
            .iter()
            .map(|s| {
                (
                    s.key.metric.clone(),
                    s.points.iter().map(|p| p.ts_ms).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), vec![1000]),
                ("b".into(), vec![1000, 2000]),
                ("c".into(), vec![2000])
            ]
        );
        assert_eq!(batch.n_samples(), 4);
    }
}
