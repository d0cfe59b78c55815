//! A trace: per function, its profile and its calls per minute (function-major, sparse), and
//! the properties that say whether it looks like the Azure Functions 2019 workload.

use std::collections::BTreeMap;

/// One function of a trace: the unit that is loaded (an Azure application, see the module docs
/// of `simulate`).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceFn {
    /// A name for messages (the Azure app hash, or `f123`).
    pub name: String,
    /// Memory of its instance, MB.
    pub memory_mb: u32,
    /// How long one call runs, ms.
    pub duration_ms: u32,
    /// What a cold start costs, ms.
    pub cold_start_ms: u32,
    /// Its trigger or invocation pattern (`timer`, `poisson`, `bursty`; Azure: the triggers of
    /// its functions, `+`-joined).
    pub kind: String,
}

/// Functions and their calls per minute.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Length of the trace, minutes.
    pub minutes: u32,
    pub fns: Vec<TraceFn>,
    /// Function `f`'s active minutes are `minute[offsets[f]..offsets[f + 1]]`, ascending.
    offsets: Vec<usize>,
    minute: Vec<u32>,
    calls: Vec<u32>,
}

impl Trace {
    pub fn new(minutes: u32) -> Self {
        Trace {
            minutes,
            offsets: vec![0],
            ..Trace::default()
        }
    }

    /// Append a function with its (minute, calls) pairs, minutes strictly ascending, calls > 0.
    pub fn push(&mut self, f: TraceFn, active: impl IntoIterator<Item = (u32, u32)>) {
        let mut last = None;
        for (m, c) in active {
            debug_assert!(last.is_none_or(|l| l < m) && c > 0 && m < self.minutes);
            last = Some(m);
            self.minute.push(m);
            self.calls.push(c);
        }
        self.fns.push(f);
        self.offsets.push(self.minute.len());
    }

    /// Function `f`'s (minute, calls) pairs, by index range into [`Trace::at`].
    pub fn range(&self, f: usize) -> std::ops::Range<usize> {
        self.offsets[f]..self.offsets[f + 1]
    }

    /// The (minute, calls) pair at index `i`.
    pub fn at(&self, i: usize) -> (u32, u32) {
        (self.minute[i], self.calls[i])
    }

    /// Calls of function `f` over the trace.
    pub fn calls_of(&self, f: usize) -> u64 {
        self.calls[self.range(f)].iter().map(|&c| u64::from(c)).sum()
    }

    /// Active (function, minute) cells.
    pub fn cells(&self) -> usize {
        self.minute.len()
    }

    /// Memory of every function called at least once, MB: what keep-forever holds at the end.
    pub fn keep_forever_mb(&self) -> u64 {
        (0..self.fns.len())
            .filter(|&f| !self.range(f).is_empty())
            .map(|f| u64::from(self.fns[f].memory_mb))
            .sum()
    }
}

/// SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA'14): a 64-bit counter through a mixing function. Small, fast, and the same numbers on
/// every machine and every version, which is what a reproducible trace needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// The SplitMix64 output function: a bijective 64-bit mixer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for the stream named by `parts` (e.g. seed, function, minute).
    pub fn new(parts: &[u64]) -> Self {
        Rng(parts.iter().fold(0x6a09_e667_f3bc_c909, |h, &p| mix(h ^ p)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe under `ln`.
    pub fn open01(&mut self) -> f64 {
        1.0 - self.f64()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Log-uniform in [lo, hi].
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.f64() * (hi.ln() - lo.ln())).exp()
    }

    /// Exponential with rate `rate`.
    pub fn exp(&mut self, rate: f64) -> f64 {
        -self.open01().ln() / rate
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        (-2.0 * self.open01().ln()).sqrt() * (std::f64::consts::TAU * self.f64()).cos()
    }

    /// Poisson with mean `lambda`: Knuth's product method below 30, a rounded normal above
    /// (relative error of the variance under 2% there).
    pub fn poisson(&mut self, lambda: f64) -> u32 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let (mut k, mut p) = (0, self.f64());
            while p > limit {
                k += 1;
                p *= self.f64();
            }
            return k;
        }
        (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u32
    }
}

/// What the trace looks like, next to what the Azure Functions 2019 paper reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Properties {
    pub functions: usize,
    pub called: usize,
    pub calls: u64,
    pub minutes: u32,
    /// Share of called functions with an average rate of at most one call per hour (paper: 45%).
    pub at_most_hourly: f64,
    /// ... of at most one call per minute (paper: 81%).
    pub at_most_per_minute: f64,
    /// Share of all calls made by the most-called 18.6% of functions (paper: 99.6%).
    pub top_share: f64,
    /// log10 of the ratio between the highest and the lowest average rate (paper: 8).
    pub rate_orders: f64,
    /// Share of functions (with ≥ 3 calls) whose inter-arrival times have a CV above 1
    /// (paper: 40%), calls spread evenly inside their minute.
    pub iat_cv_over_1: f64,
    /// Median and 90th percentile of the functions' memory, MB (paper: 50% ≤ 170 MB, 90% of
    /// apps never above 400 MB).
    pub memory_p50: u32,
    pub memory_p90: u32,
    /// Share of functions whose calls average under 1 s / 60 s (paper: 50% / 96%).
    pub under_1s: f64,
    pub under_60s: f64,
    /// Per kind: (share of functions, share of calls), the commonest first.
    pub kinds: Vec<(String, f64, f64)>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Properties {
    pub fn of(t: &Trace) -> Properties {
        let n = t.fns.len();
        let called: Vec<usize> = (0..n).filter(|&f| !t.range(f).is_empty()).collect();
        let per_fn: Vec<u64> = called.iter().map(|&f| t.calls_of(f)).collect();
        let calls: u64 = per_fn.iter().sum();
        let minutes = f64::from(t.minutes.max(1));
        let share = |k: usize| k as f64 / called.len().max(1) as f64;
        let rate = |c: u64| c as f64 / minutes;
        let at_most_hourly = share(per_fn.iter().filter(|&&c| rate(c) <= 1.0 / 60.0).count());
        let at_most_per_minute = share(per_fn.iter().filter(|&&c| rate(c) <= 1.0).count());
        let mut sorted = per_fn.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top = (0.186 * sorted.len() as f64).ceil() as usize;
        let top_share = sorted[..top].iter().sum::<u64>() as f64 / calls.max(1) as f64;
        let rate_orders = match (sorted.first(), sorted.last()) {
            (Some(&hi), Some(&lo)) if lo > 0 => (hi as f64 / lo as f64).log10(),
            _ => 0.0,
        };
        let (mut cv_over, mut cv_n) = (0usize, 0usize);
        for &f in &called {
            if let Some(cv) = iat_cv(t, f) {
                cv_n += 1;
                cv_over += usize::from(cv > 1.0);
            }
        }
        let mut mem: Vec<u32> = called.iter().map(|&f| t.fns[f].memory_mb).collect();
        mem.sort_unstable();
        let under = |ms: u32| share(called.iter().filter(|&&f| t.fns[f].duration_ms < ms).count());
        let mut kinds: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
        for (i, &f) in called.iter().enumerate() {
            let e = kinds.entry(t.fns[f].kind.as_str()).or_default();
            e.0 += 1;
            e.1 += per_fn[i];
        }
        let mut kinds: Vec<(String, f64, f64)> = kinds
            .into_iter()
            .map(|(k, (nf, nc))| (k.to_owned(), share(nf), nc as f64 / calls.max(1) as f64))
            .collect();
        kinds.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Properties {
            functions: n,
            called: called.len(),
            calls,
            minutes: t.minutes,
            at_most_hourly,
            at_most_per_minute,
            top_share,
            rate_orders,
            iat_cv_over_1: cv_over as f64 / cv_n.max(1) as f64,
            memory_p50: percentile(&mem, 50.0).unwrap_or(0),
            memory_p90: percentile(&mem, 90.0).unwrap_or(0),
            under_1s: under(1_000),
            under_60s: under(60_000),
            kinds,
        }
    }
}

/// Coefficient of variation of `f`'s inter-arrival times, the calls of a minute spread evenly
/// inside it; `None` under 3 calls.
fn iat_cv(t: &Trace, f: usize) -> Option<f64> {
    let (mut n, mut sum, mut sum_sq) = (0f64, 0f64, 0f64);
    let mut add = |g: f64, k: f64| {
        n += k;
        sum += g * k;
        sum_sq += g * g * k;
    };
    let mut prev_last: Option<f64> = None;
    for i in t.range(f) {
        let (m, c) = t.at(i);
        let (m, c) = (f64::from(m), f64::from(c));
        if c > 1.0 {
            add(1.0 / c, c - 1.0);
        }
        let first = m + 0.5 / c;
        if let Some(p) = prev_last {
            add(first - p, 1.0);
        }
        prev_last = Some(m + 1.0 - 0.5 / c);
    }
    if n < 2.0 {
        return None;
    }
    let mean = sum / n;
    let var = (sum_sq / n - mean * mean).max(0.0);
    Some(var.sqrt() / mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: &str) -> TraceFn {
        TraceFn {
            name: kind.into(),
            memory_mb: 100,
            duration_ms: 500,
            cold_start_ms: 100,
            kind: kind.into(),
        }
    }

    #[test]
    fn properties_of_a_small_trace() {
        let mut t = Trace::new(600);
        // A timer every 5 minutes, one call: CV 0; two busy minutes apart.
        t.push(f("timer"), (0..120).map(|k| (k * 5, 1)));
        t.push(f("bursty"), [(10, 50), (500, 50)]);
        t.push(f("never"), []);
        let p = Properties::of(&t);
        assert_eq!((p.functions, p.called, p.calls), (3, 2, 220));
        assert_eq!(p.at_most_hourly, 0.0);
        assert_eq!(p.at_most_per_minute, 1.0);
        assert_eq!(p.top_share, 120.0 / 220.0, "the top 18.6% of 2 functions is 1");
        assert_eq!(p.iat_cv_over_1, 0.5, "the timer's CV is 0, the bursts' far above 1");
        assert_eq!(p.kinds[0].0, "bursty");
        assert_eq!(t.keep_forever_mb(), 200);
    }

    #[test]
    fn the_generator_is_the_same_everywhere() {
        let mut r = Rng::new(&[1, 2, 3]);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(first, {
            let mut r = Rng::new(&[1, 2, 3]);
            (0..3).map(|_| r.next_u64()).collect::<Vec<_>>()
        });
        // SplitMix64's published first output for seed 0 (state advanced once, then mixed).
        assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        let mut r = Rng::new(&[7]);
        let mean = (0..100_000).map(|_| f64::from(r.poisson(3.5))).sum::<f64>() / 100_000.0;
        assert!((mean - 3.5).abs() < 0.05, "{mean}");
    }
}
