//! A distribution in a few numbers.

/// Mean, extremes and quantiles (nearest rank) of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (sorted in place); all zeros when there are none.
    pub fn of(values: &mut [f64]) -> Summary {
        if values.is_empty() {
            return Summary { count: 0, mean: 0.0, min: 0.0, p10: 0.0, p50: 0.0, p90: 0.0, max: 0.0 };
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let quantile = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Summary {
            count: n,
            mean: values.iter().sum::<f64>() / n as f64,
            min: values[0],
            p10: quantile(0.1),
            p50: quantile(0.5),
            p90: quantile(0.9),
            max: values[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.count, s.min, s.p10, s.p50, s.p90, s.max), (10, 1.0, 1.0, 5.0, 9.0, 10.0));
        assert_eq!(s.mean, 5.5);
        assert_eq!(Summary::of(&mut []).count, 0);
    }
}
