//! A function's idle-time histogram: range-limited bins, out-of-bounds count, the coefficient
//! of variation of the bin counts (kept up to date in O(1) per sample) and percentiles (a walk
//! over group sums, then one group's bins).

use crate::Millis;

/// How many recent idle times the out-of-bounds predictor averages.
pub(crate) const RECENT: usize = 5;

/// Bins per group: percentiles walk the group sums, then the bins of one group.
const GROUP: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct IdleHistogram {
    bin_ms: Millis,
    bins: usize,
    /// The count of each bin, then the sum of each group of [`GROUP`] bins.
    counts: Vec<u32>,
    /// Samples in range.
    n: u64,
    /// Sum of squared bin counts, for the coefficient of variation.
    sum_sq: u64,
    /// Samples beyond the last bin.
    oob: u64,
    /// Sum of all idle times, ms (what the function's average idle rate is taken from).
    total_ms: u128,
    /// Sum over the samples beyond the range of how far beyond it they ended, ms.
    oob_excess_ms: u128,
    /// The last idle times (in range or not), oldest overwritten first.
    recent: [Millis; RECENT],
    recent_len: usize,
    recent_next: usize,
}

impl IdleHistogram {
    pub fn new(bins: u32, bin_ms: Millis) -> Self {
        let bins = bins as usize;
        IdleHistogram {
            bin_ms,
            bins,
            counts: vec![0; bins + bins.div_ceil(GROUP)],
            n: 0,
            sum_sq: 0,
            oob: 0,
            total_ms: 0,
            oob_excess_ms: 0,
            recent: [0; RECENT],
            recent_len: 0,
            recent_next: 0,
        }
    }

    /// The idle period that began at `*idle_since`, if one did, ends at `now`: its length goes
    /// into `*hist` (made with `bins` bins of `bin_ms` on first use).
    pub fn end_idle(
        hist: &mut Option<Box<IdleHistogram>>,
        idle_since: &mut Option<Millis>,
        now: Millis,
        bins: u32,
        bin_ms: Millis,
    ) {
        if let Some(t0) = idle_since.take() {
            hist.get_or_insert_with(|| Box::new(IdleHistogram::new(bins, bin_ms)))
                .add(now.saturating_sub(t0));
        }
    }

    /// Record one idle time.
    pub fn add(&mut self, idle: Millis) {
        self.recent[self.recent_next] = idle;
        self.recent_next = (self.recent_next + 1) % RECENT;
        self.recent_len = (self.recent_len + 1).min(RECENT);
        self.total_ms += u128::from(idle);
        let bin = idle / self.bin_ms;
        if bin >= self.bins as u64 {
            self.oob += 1;
            self.oob_excess_ms += u128::from(idle - self.range_ms());
            return;
        }
        let bin = bin as usize;
        let c = u64::from(self.counts[bin]);
        self.sum_sq += 2 * c + 1; // (c + 1)² − c²
        self.counts[bin] += 1;
        self.counts[self.bins + bin / GROUP] += 1;
        self.n += 1;
    }

    /// Length of a bin, ms.
    pub fn bin_ms(&self) -> Millis {
        self.bin_ms
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.bins
    }

    /// Where the last bin ends, ms.
    pub fn range_ms(&self) -> Millis {
        self.bin_ms * self.bins as Millis
    }

    /// Samples in bin `i`.
    pub fn count(&self, i: usize) -> u64 {
        u64::from(self.counts[i])
    }

    /// Samples beyond the range.
    pub fn oob(&self) -> u64 {
        self.oob
    }

    /// Sum of every idle time recorded, ms.
    pub fn total_ms(&self) -> u128 {
        self.total_ms
    }

    /// Sum over the samples beyond the range of how far beyond it they ended, ms.
    pub fn oob_excess_ms(&self) -> u128 {
        self.oob_excess_ms
    }

    /// The last few idle times (at most [`RECENT`]), in no particular order.
    pub fn recent(&self) -> &[Millis] {
        &self.recent[..self.recent_len]
    }

    /// Samples in range and beyond it.
    pub fn samples(&self) -> u64 {
        self.n + self.oob
    }

    /// Out-of-bounds samples, percent of all (0 with no samples).
    pub fn oob_percent(&self) -> u64 {
        (self.oob * 100).checked_div(self.samples()).unwrap_or(0)
    }

    /// Coefficient of variation of the bin counts (sample standard deviation over the mean,
    /// over all bins, empty ones included); 0 with no sample in range.
    pub fn cv(&self) -> f64 {
        let bins = self.bins as f64;
        if self.n == 0 || self.bins < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        let mean = n / bins;
        let var = ((self.sum_sq as f64 - n * n / bins) / (bins - 1.0)).max(0.0);
        var.sqrt() / mean
    }

    /// The bin holding the `percent`-th percentile: the first bin where the cumulative count
    /// reaches `percent`% of the samples in range. `None` with no sample in range.
    pub fn percentile_bin(&self, percent: u32) -> Option<u32> {
        if self.n == 0 {
            return None;
        }
        // The smallest count c with c ≥ n·p/100.
        let target = (self.n * u64::from(percent)).div_ceil(100).max(1);
        let (counts, groups) = self.counts.split_at(self.bins);
        let mut cum = 0u64;
        for (g, &sum) in groups.iter().enumerate() {
            if cum + u64::from(sum) < target {
                cum += u64::from(sum);
                continue;
            }
            for (i, &c) in counts.iter().enumerate().skip(g * GROUP).take(GROUP) {
                cum += u64::from(c);
                if cum >= target {
                    return Some(i as u32);
                }
            }
        }
        unreachable!("the counts add up to n")
    }

    /// Mean of the last few idle times (at most [`RECENT`]).
    pub fn recent_mean(&self) -> Option<Millis> {
        let n = self.recent_len as u64;
        (n > 0).then(|| self.recent[..self.recent_len].iter().sum::<Millis>() / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_bin_is_concentrated_a_flat_spread_is_not() {
        let mut h = IdleHistogram::new(240, 60_000);
        for _ in 0..10 {
            h.add(4 * 60_000 + 59_000);
        }
        assert_eq!(h.percentile_bin(5), Some(4));
        assert_eq!(h.percentile_bin(99), Some(4));
        // All samples in 1 of 240 bins: the CV is √240 ≈ 15.5, whatever their number.
        assert!((h.cv() - 240f64.sqrt()).abs() < 1e-9, "cv {}", h.cv());
        let mut flat = IdleHistogram::new(240, 60_000);
        for b in 0..240 {
            flat.add(b * 60_000);
        }
        assert_eq!(flat.cv(), 0.0);
        assert_eq!(flat.percentile_bin(5), Some(11), "12 of 240 samples reach 5%");
        assert_eq!(flat.percentile_bin(99), Some(237));
        flat.add(240 * 60_000);
        assert_eq!(flat.samples(), 241);
        assert_eq!(flat.oob_percent(), 0);
        assert_eq!(flat.recent_mean(), Some((236 + 237 + 238 + 239 + 240) * 60_000 / 5));
    }

    proptest! {
        #[test]
        fn percentiles_and_cv_match_a_direct_count(
            bins in 2usize..300,
            samples in proptest::collection::vec(0u64..320, 1..200),
            p in 1u32..=100,
        ) {
            let mut h = IdleHistogram::new(bins as u32, 1);
            for &s in &samples {
                h.add(s);
            }
            let inside: Vec<u64> = samples.iter().copied().filter(|&s| s < bins as u64).collect();
            prop_assert_eq!(h.samples(), samples.len() as u64);
            if inside.is_empty() {
                prop_assert_eq!(h.percentile_bin(p), None);
            } else {
                let mut counts = vec![0u64; bins];
                for &s in &inside {
                    counts[s as usize] += 1;
                }
                let n = inside.len() as u64;
                let mut cum = 0;
                let want = counts.iter().position(|&c| { cum += c; cum * 100 >= n * u64::from(p) }).unwrap() as u32;
                prop_assert_eq!(h.percentile_bin(p), Some(want));
                let mean = n as f64 / bins as f64;
                let var = counts.iter().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / (bins - 1) as f64;
                prop_assert!((h.cv() - var.sqrt() / mean).abs() < 1e-6);
            }
        }
    }
}
