//! Min, median and max over a benchmark's runs.

use serde::{Deserialize, Serialize};

/// One figure over N runs, in the unit its field name or context gives
/// (milliseconds unless said otherwise). The samples are kept so the JSON
/// can be re-analysed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Stat {
    /// `None` for no samples (or any NaN: a figure that cannot be ordered
    /// is not a figure).
    pub fn of(samples: &[f64]) -> Option<Stat> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stat {
            n,
            min: sorted[0],
            median,
            max: sorted[n - 1],
            samples: samples.to_vec(),
        })
    }
}

/// Samples gathered per named figure, in first-seen order.
#[derive(Debug, Clone, Default)]
pub struct Series {
    names: Vec<String>,
    values: Vec<Vec<f64>>,
}

impl Series {
    pub fn push(&mut self, name: &str, value: f64) {
        match self.names.iter().position(|n| n == name) {
            Some(i) => self.values[i].push(value),
            None => {
                self.names.push(name.to_owned());
                self.values.push(vec![value]);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<Stat> {
        let i = self.names.iter().position(|n| n == name)?;
        Stat::of(&self.values[i])
    }

    /// Every figure with its statistics, in first-seen order.
    pub fn stats(&self) -> Vec<(String, Stat)> {
        self.names
            .iter()
            .zip(&self.values)
            .filter_map(|(n, v)| Stat::of(v).map(|s| (n.clone(), s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_medians() {
        let s = Stat::of(&[5.0, 1.0, 3.0]).expect("stat");
        assert_eq!((s.n, s.min, s.median, s.max), (3, 1.0, 3.0, 5.0));
        // Samples stay in run order.
        assert_eq!(s.samples, vec![5.0, 1.0, 3.0]);
        let s = Stat::of(&[4.0, 1.0, 2.0, 10.0]).expect("stat");
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 10.0));
        let one = Stat::of(&[7.5]).expect("stat");
        assert_eq!((one.min, one.median, one.max), (7.5, 7.5, 7.5));
    }

    #[test]
    fn no_figure_from_nothing_or_nan() {
        assert!(Stat::of(&[]).is_none());
        assert!(Stat::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn series_keeps_order_and_groups() {
        let mut s = Series::default();
        s.push("kernel", 10.0);
        s.push("init", 2.0);
        s.push("kernel", 30.0);
        let names: Vec<String> = s.stats().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["kernel", "init"]);
        assert_eq!(s.get("kernel").map(|k| k.median), Some(20.0));
        assert!(s.get("nope").is_none());
    }
}
