//! The results as a terminal table and as `docs/cold-starts.md`, with the issue's targets
//! judged from the numbers.

use std::fmt::Write as _;

use strata_policy::{Config, MINUTE, PolicyKind};

use super::{Budget, Input, RunResult, Variant};

/// The section another tool fills; kept when the report is rewritten.
const LIVE_REPLAY: &str = "## Live replay";

/// Fewer cold starts than fixed keep-alive the best policy must reach (target a).
const FEWER: f64 = 2.0;

pub struct Report<'a> {
    command: &'a str,
    config: &'a Config,
    keep_alive_min: u64,
    input: &'a Input,
    keep_forever_mb: u64,
    results: &'a [RunResult],
}

/// The verdict on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub met: bool,
    /// What was compared, with the numbers.
    pub text: String,
}

fn gb(mb: u64) -> f64 {
    mb as f64 / 1024.0
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn word(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// "policy (variant) at budget".
fn name(r: &RunResult) -> String {
    format!("{}{} at {}", r.policy, r.variant.label(), r.budget.label())
}

const HEADERS: [&str; 12] = [
    "policy",
    "budget",
    "budget GB",
    "cold starts",
    "cold / calls",
    "app cold % p50 / p75 / p90",
    "wasted GB·s",
    "mean idle GB",
    "peak idle GB",
    "cold-start s",
    "prewarms",
    "stops",
];

impl<'a> Report<'a> {
    pub fn new(
        command: &'a str,
        config: &'a Config,
        input: &'a Input,
        keep_forever_mb: u64,
        results: &'a [RunResult],
    ) -> Self {
        Report {
            command,
            config,
            keep_alive_min: config.keep_alive / MINUTE,
            input,
            keep_forever_mb,
            results,
        }
    }

    fn find(&self, policy: PolicyKind, budget: Budget, variant: Variant) -> Option<&RunResult> {
        self.results
            .iter()
            .find(|r| r.policy == policy && r.budget == budget && r.variant == variant)
    }

    fn at_100(&self, policy: PolicyKind) -> Option<&RunResult> {
        self.find(policy, Budget::Share(100), Variant::Configured)
    }

    fn matched(&self, policy: PolicyKind, reference: PolicyKind) -> Option<&RunResult> {
        self.results
            .iter()
            .find(|r| r.policy == policy && r.variant == Variant::Configured && r.budget.matches(reference))
    }

    /// The runs of `policy` with the configured settings.
    fn runs_of(&self, policy: PolicyKind) -> impl Iterator<Item = &RunResult> {
        self.results
            .iter()
            .filter(move |r| r.policy == policy && r.variant == Variant::Configured)
    }

    /// One row per run, in [`HEADERS`] order: shares of keep-forever memory first, then the
    /// explaining runs.
    fn rows(&self) -> Vec<[String; 12]> {
        let mut runs: Vec<&RunResult> = self.results.iter().collect();
        runs.sort_by_key(|r| {
            let b = match r.budget {
                Budget::Share(p) => (0, p, 0),
                Budget::Matched(k, _) => (1, 0, k as u32),
            };
            (r.variant != Variant::Configured, r.policy as u32, b, r.variant.rank())
        });
        runs.iter()
            .map(|r| {
                [
                    format!("{}{}", r.policy, r.variant.label()),
                    r.budget.label(),
                    format!("{:.0}", gb(r.budget_mb)),
                    r.cold.to_string(),
                    format!("{:.3}%", 100.0 * r.cold_fraction()),
                    format!(
                        "{:.1}% / {:.1}% / {:.1}%",
                        r.app_cold_pct[0], r.app_cold_pct[1], r.app_cold_pct[2]
                    ),
                    format!("{:.3e}", r.wasted_gb_s),
                    format!("{:.0}", r.mean_idle_gb),
                    format!("{:.0}", r.peak_idle_gb),
                    format!("{:.0}", r.cold_start_s),
                    r.prewarms.to_string(),
                    r.stops.to_string(),
                ]
            })
            .collect()
    }

    /// The results for a terminal.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let mut width: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: Vec<&str>| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&width)
                .enumerate()
                .map(|(i, (c, w))| {
                    let pad = " ".repeat(w - c.chars().count());
                    if i < 2 {
                        format!("{c}{pad}")
                    } else {
                        format!("{pad}{c}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        };
        line(HEADERS.to_vec());
        for r in &rows {
            line(r.iter().map(String::as_str).collect());
        }
        let _ = write!(
            out,
            "keep-forever memory {:.0} GB; {} calls over {} minutes",
            gb(self.keep_forever_mb),
            self.input.properties.calls,
            self.input.properties.minutes
        );
        out
    }

    /// Every run of `policy`, whatever its settings.
    fn all_runs_of(&self, policy: PolicyKind) -> impl Iterator<Item = &RunResult> {
        self.results.iter().filter(move |r| r.policy == policy)
    }

    /// Target (a) for `policy`: its run (any budget, any setting) with the fewest cold starts
    /// among those wasting no more than fixed at 100%, and how many times fewer cold starts
    /// that is.
    fn fewer_than_fixed(&self, policy: PolicyKind) -> Option<(&RunResult, f64)> {
        let f = self.at_100(PolicyKind::Fixed)?;
        self.all_runs_of(policy)
            .filter(|r| r.wasted_gb_s <= f.wasted_gb_s)
            .min_by_key(|r| r.cold)
            .map(|r| (r, f.cold as f64 / r.cold.max(1) as f64))
    }

    /// (a): the best policy, at no more wasted memory than fixed keep-alive at 100%, has at
    /// least 2× fewer cold starts. Also returns the best policy.
    pub fn target_a(&self) -> Option<(Verdict, Option<PolicyKind>)> {
        let f = self.at_100(PolicyKind::Fixed)?;
        let mut parts = Vec::new();
        let mut best: Option<(PolicyKind, f64)> = None;
        for p in [PolicyKind::Hybrid, PolicyKind::GreedyDual, PolicyKind::Hazard] {
            match self.fewer_than_fixed(p) {
                Some((r, ratio)) => {
                    parts.push(format!(
                        "{p}: {ratio:.2}× ({} cold starts, {}, wasting {:.0}% of fixed's memory)",
                        r.cold,
                        name(r),
                        100.0 * r.wasted_gb_s / f.wasted_gb_s
                    ));
                    if best.is_none_or(|(_, b)| ratio > b) {
                        best = Some((p, ratio));
                    }
                }
                None if self.runs_of(p).next().is_some() => {
                    parts.push(format!("{p}: every run wastes more memory than fixed"));
                }
                None => {}
            }
        }
        let met = best.is_some_and(|(_, ratio)| ratio >= FEWER);
        let text = format!(
            "fixed keep-alive makes {} cold starts wasting {:.3e} GB·s; at no more waste, the fewest cold starts of {}",
            f.cold,
            f.wasted_gb_s,
            parts.join("; ")
        );
        Some((Verdict { met, text }, best.map(|(p, _)| p)))
    }

    /// (b) for `policy`: for every hybrid run, a run of `policy` (any budget, any setting)
    /// wasting no more memory has a 75th-percentile app cold % no higher.
    pub fn target_b(&self, policy: PolicyKind) -> Option<Verdict> {
        let mut lines = Vec::new();
        let mut met = true;
        let mut any = false;
        for h in self.runs_of(PolicyKind::Hybrid) {
            any = true;
            let rival = self
                .all_runs_of(policy)
                .filter(|r| r.wasted_gb_s <= h.wasted_gb_s)
                .min_by(|a, b| a.app_cold_pct[1].total_cmp(&b.app_cold_pct[1]));
            match rival {
                Some(r) => {
                    let ok = r.app_cold_pct[1] <= h.app_cold_pct[1];
                    met &= ok;
                    lines.push(format!(
                        "hybrid at {} has p75 {:.1}% wasting {:.3e} GB·s, {} {:.1}% wasting {:.3e} ({})",
                        h.budget.label(),
                        h.app_cold_pct[1],
                        h.wasted_gb_s,
                        name(r),
                        r.app_cold_pct[1],
                        r.wasted_gb_s,
                        if ok { "no worse" } else { "worse" }
                    ));
                }
                None => {
                    met = false;
                    lines.push(format!(
                        "hybrid at {} wastes {:.3e} GB·s, less than any {policy} run",
                        h.budget.label(),
                        h.wasted_gb_s
                    ));
                }
            }
        }
        (any && self.all_runs_of(policy).next().is_some()).then(|| Verdict {
            met,
            text: lines.join("; "),
        })
    }

    /// The policies (b) is judged for, the best first.
    const B_POLICIES: [PolicyKind; 2] = [PolicyKind::Hazard, PolicyKind::GreedyDual];

    pub fn verdicts_text(&self) -> String {
        let mut out = String::new();
        match self.target_a() {
            Some((a, _)) => {
                let _ = writeln!(out, "target (a) {}: {}", word(a.met), a.text);
            }
            None => out.push_str("target (a) not judged: fixed at 100% was not run\n"),
        }
        for p in Self::B_POLICIES {
            if let Some(b) = self.target_b(p) {
                let _ = writeln!(out, "target (b) {} ({p} against hybrid): {}", word(b.met), b.text);
            }
        }
        out
    }

    /// Per run at 100% and at matched budgets: cold / calls and the share of wasted memory of
    /// each rate class.
    fn class_table(&self) -> String {
        let mut d = String::from(
            "| run | cold / calls: ≤ 1/hour | 1/hour-1/minute | > 1/minute | share of wasted memory: ≤ 1/hour | 1/hour-1/minute | > 1/minute |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        );
        let c = &self.results[0].by_class;
        let _ = writeln!(
            d,
            "| (functions in the class) | {} | {} | {} | | | |",
            c[0].functions, c[1].functions, c[2].functions
        );
        for r in self
            .results
            .iter()
            .filter(|r| r.budget == Budget::Share(100) || matches!(r.budget, Budget::Matched(..)))
        {
            let cold: Vec<String> = r
                .by_class
                .iter()
                .map(|c| format!("{:.2}%", 100.0 * c.cold as f64 / c.calls.max(1) as f64))
                .collect();
            let waste: Vec<String> = r
                .by_class
                .iter()
                .map(|c| pct(c.wasted_gb_s / r.wasted_gb_s.max(f64::MIN_POSITIVE)))
                .collect();
            let _ = writeln!(d, "| {} | {} | {} |", name(r), cold.join(" | "), waste.join(" | "));
        }
        d
    }

    pub fn classes_text(&self) -> String {
        self.class_table()
    }

    /// Why the targets came out as they did, from the numbers (only the comparisons whose runs
    /// exist).
    fn why(&self) -> String {
        let mut d = String::new();
        let (Some(f), Some(h), Some(g)) = (
            self.at_100(PolicyKind::Fixed),
            self.at_100(PolicyKind::Hybrid),
            self.at_100(PolicyKind::GreedyDual),
        ) else {
            return d;
        };
        let _ = writeln!(
            d,
            "- **Unconstrained**, the hybrid policy makes {:.1}× fewer cold starts than fixed keep-alive and greedy-dual (which then never evicts: keep-forever) {:.0}× fewer, but they waste {:.1}× and {:.1}× its memory: the hybrid keeps an instance up to the 99th percentile of its idle times (for a Poisson function, about 4.6 mean gaps) and {} minutes while its histogram is not representative, against {} minutes.",
            f.cold as f64 / h.cold.max(1) as f64,
            f.cold as f64 / g.cold.max(1) as f64,
            h.wasted_gb_s / f.wasted_gb_s,
            g.wasted_gb_s / f.wasted_gb_s,
            self.config.hybrid.fallback_keep_alive / MINUTE,
            self.keep_alive_min
        );
        if let Some(hf) = self.find(PolicyKind::Hybrid, Budget::Share(100), Variant::FixedFallback) {
            let _ = writeln!(
                d,
                "- With the fixed {}-minute keep-alive as its fallback instead of {} minutes, the hybrid policy wastes {:.1}× fixed's memory ({:.1}× otherwise) and makes {} cold starts: {}.",
                self.keep_alive_min,
                self.config.hybrid.fallback_keep_alive / MINUTE,
                hf.wasted_gb_s / f.wasted_gb_s,
                h.wasted_gb_s / f.wasted_gb_s,
                hf.cold,
                if hf.wasted_gb_s > f.wasted_gb_s {
                    "most of its memory goes to its histogram windows, not to the fallback"
                } else {
                    "the fallback is where its extra memory goes"
                }
            );
        }
        if let Some(ff) = self.matched(PolicyKind::Fixed, PolicyKind::Fixed) {
            let _ = writeln!(
                d,
                "- **A budget is a constant; fixed keep-alive's memory follows the load.** Fixed keep-alive holds {:.0} GB idle on average and {:.0} GB at its peak. Capped at its own mean ({:.0} GB, \"= fixed\"), fixed keep-alive itself makes {:.2}× the cold starts. A policy that keeps everything up to its budget, as greedy-dual does, holds its budget whatever the load: to waste no more than fixed keep-alive it must live within fixed's *mean* at the peaks.",
                f.mean_idle_gb,
                f.peak_idle_gb,
                gb(ff.budget_mb),
                ff.cold as f64 / f.cold.max(1) as f64
            );
            if let Some(gf) = self.matched(PolicyKind::GreedyDual, PolicyKind::Fixed) {
                let _ = writeln!(
                    d,
                    "- At that cap, greedy-dual makes {} cold starts; capped fixed keep-alive (least-recently-used eviction) makes {:.2}× as many, uncapped fixed keep-alive {:.2}× as many.",
                    gf.cold,
                    ff.cold as f64 / gf.cold.max(1) as f64,
                    f.cold as f64 / gf.cold.max(1) as f64,
                );
            }
            if let Some(hm) = self.matched(PolicyKind::Hybrid, PolicyKind::Fixed) {
                let _ = writeln!(
                    d,
                    "- The hybrid policy capped there (evicting the longest idle first) makes {} cold starts (uncapped fixed keep-alive {:.2}× as many), wasting {:.0}% of fixed's memory.",
                    hm.cold,
                    f.cold as f64 / hm.cold.max(1) as f64,
                    100.0 * hm.wasted_gb_s / f.wasted_gb_s
                );
            }
        }
        if let Some(gv) = self.results.iter().find(|r| r.variant == Variant::FaasCacheFrequency)
            && let Some(gf) = self.matched(PolicyKind::GreedyDual, PolicyKind::Fixed)
        {
            let _ = writeln!(
                d,
                "- Greedy-dual tuning: counting frequency as FaasCache does (every call, restarting from zero when a function's last instance is evicted) makes {} cold starts at the same cap, against {} with the default (busy periods started, kept across evictions){}.",
                gv.cold,
                gf.cold,
                if gv.cold > gf.cold {
                    ": with FaasCache's count an evicted function comes back at the lowest priority and is evicted again before its count can grow"
                } else {
                    ""
                }
            );
        }
        if let Some(z) = self.at_100(PolicyKind::Hazard) {
            let _ = writeln!(
                d,
                "- **The hazard policy buys idle time by its yield.** At its default price ({} MB·min per cold start) it makes {:.2}× fewer cold starts than fixed keep-alive wasting {:.0}% of its memory: fixed keep-alive spends 10 minutes on every idle period of every function, and most of that memory (the class table: {:.0}% of it goes to functions called between once an hour and once a minute) is held by functions whose next call is unlikely to come in those 10 minutes, while functions called often enough for their size are stopped after 10 minutes though their next call is near. The hazard policy holds the second kind through their whole idle time, prewarms timers in the minute before they fire and holds nothing for the first kind.",
                self.config.hazard.worth_mb_min,
                f.cold as f64 / z.cold.max(1) as f64,
                100.0 * z.wasted_gb_s / f.wasted_gb_s,
                100.0 * f.by_class[1].wasted_gb_s / f.wasted_gb_s.max(f64::MIN_POSITIVE),
            );
            let _ = writeln!(
                d,
                "- **Counting per call and per function pull apart.** Per call (app weight 0, the default), a rarely called function's idle time is the worst buy there is, so its calls stay cold and the per-application p75 stays high ({:.1}% at the default price). Counting each function's *share* of cold calls (app weight 1, \"per function\"; `strata up --cold-start-objective functions`) values a cold start of a function by the inverse of its rate: memory goes to the rare functions, the p75 falls below the hybrid policy's at its memory, and cold starts per call rise. Which to run is the operator's objective; the runs above draw both curves.",
                z.app_cold_pct[1]
            );
        }
        let c = &f.by_class;
        let called = (c[0].functions + c[1].functions + c[2].functions).max(1);
        let rare = |r: &RunResult| 100.0 * r.by_class[0].cold as f64 / r.by_class[0].calls.max(1) as f64;
        let mut line = format!(
            "- **The per-application 75th percentile is decided by the rare functions**: {} of the functions are called at most once an hour, the paper's 45%. Greedy-dual ranks them last (their frequency is low), so below keep-forever memory they go first",
            pct(c[0].functions as f64 / called as f64)
        );
        if let (Some(gh), Some(hh)) = (
            self.matched(PolicyKind::GreedyDual, PolicyKind::Hybrid),
            self.at_100(PolicyKind::Hybrid),
        ) {
            let _ = write!(
                line,
                ": at the hybrid policy's memory, {:.1}% of their calls are cold under greedy-dual against {:.1}% under the hybrid, which keeps them for its standard keep-alive or prewarms them when their idle times are regular (timers)",
                rare(gh),
                rare(hh)
            );
        }
        line.push_str(". Greedy-dual is built to save cold starts weighted by calls and cost, and does not protect the long tail of rarely called functions that the per-application metric counts.");
        let _ = writeln!(d, "{line}");
        d
    }

    /// The whole document; `old` is the previous one, whose live-replay section is kept.
    pub fn markdown(&self, old: &str) -> String {
        let p = &self.input.properties;
        let mut d = String::new();
        let _ = writeln!(d, "# Cold starts: keep-alive policies on an Azure-like trace\n");
        let _ = writeln!(
            d,
            "Written by `{}`; rerun it rather than editing the numbers. They depend only on that command line: the trace and the spread of calls are seeded, the policies are the `strata-policy` code the daemon runs, and nothing here is timed.\n",
            self.command
        );
        d.push_str(MODEL);
        let _ = writeln!(d, "\n## The trace\n");
        let _ = writeln!(d, "Source: {}.\n", self.input.source);
        let _ = writeln!(
            d,
            "{} functions ({} called at least once), {} calls over {} minutes ({} active function-minutes). What the paper reports (Shahrad et al., ATC'20, §3) next to what this trace has, both measured the same way (average rates over the whole trace):\n",
            p.functions,
            p.called,
            p.calls,
            p.minutes,
            self.input.trace.cells()
        );
        let _ = writeln!(d, "| property | this trace | Azure 2019 (paper) |\n| --- | --- | --- |");
        let rows = [
            (
                "functions invoked at most once per hour on average",
                pct(p.at_most_hourly),
                "45% of apps",
            ),
            ("... at most once per minute", pct(p.at_most_per_minute), "81% of apps"),
            ("calls made by the most-called 18.6%", pct(p.top_share), "99.6%"),
            (
                "span of average rates (orders of magnitude)",
                format!("{:.1}", p.rate_orders),
                "8",
            ),
            (
                "inter-arrival CV above 1 (functions with ≥ 3 calls)",
                pct(p.iat_cv_over_1),
                "40% of apps",
            ),
            (
                "memory, median / 90th percentile",
                format!("{} / {} MB", p.memory_p50, p.memory_p90),
                "≤ 170 MB / ≤ 400 MB (max)",
            ),
            (
                "average duration under 1 s / under 60 s",
                format!("{} / {}", pct(p.under_1s), pct(p.under_60s)),
                "50% / 96% of functions",
            ),
        ];
        for (k, v, paper) in rows {
            let _ = writeln!(d, "| {k} | {v} | {paper} |");
        }
        let kinds: Vec<String> = p
            .kinds
            .iter()
            .take(6)
            .map(|(k, nf, nc)| format!("{k} {} of functions and {} of calls", pct(*nf), pct(*nc)))
            .collect();
        let _ = writeln!(
            d,
            "\nKinds: {} (paper: timers are 15.6% of functions and 2% of invocations). The share with an inter-arrival CV above 1 is higher than the paper's: the diurnal and weekly modulation of their rate puts most Poisson functions called between once an hour and once a minute just above 1.\n",
            kinds.join("; ")
        );
        let _ = writeln!(d, "## Results\n");
        let _ = writeln!(
            d,
            "Keep-forever memory, the memory of every function called at least once (what keeping every instance forever holds at the end of the trace, its peak): **{:.0} GB**. Budgets cap the memory of idle instances, as shares of it; \"= fixed\" and \"= hybrid\" are the mean idle memory of those policies at 100%. Fixed keep-alive is {} minutes. Cold starts and calls are counted per call; the app cold % is each function's share of cold calls, its percentiles taken over the functions called at least once (p75 is the paper's \"3rd quartile app cold start %\"). Peak idle memory is the most held for at least a millisecond.\n",
            gb(self.keep_forever_mb),
            self.keep_alive_min
        );
        let _ = writeln!(d, "| {} |", HEADERS.join(" | "));
        let _ = writeln!(d, "|{}", " --- |".repeat(HEADERS.len()));
        for r in self.rows() {
            let _ = writeln!(d, "| {} |", r.join(" | "));
        }
        let _ = writeln!(d, "\nPolicy counters:\n");
        for r in self.results.iter().filter(|r| r.budget == Budget::Share(100)) {
            let s: Vec<String> = r.stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(d, "- {}: {}", name(r), s.join(", "));
        }
        let _ = writeln!(
            d,
            "\nBy class of average rate (the share of each class's calls that were cold, and of the wasted memory):\n"
        );
        d.push_str(&self.class_table());
        let _ = writeln!(d, "\n## Targets\n");
        match self.target_a() {
            Some((a, _)) => {
                let _ = writeln!(
                    d,
                    "**(a) {}.** The best policy should make at least {FEWER}× fewer cold starts than fixed {}-minute keep-alive (at 100%, i.e. unconstrained) while wasting no more memory. For each policy, its run with the fewest cold starts among those wasting at most what fixed keep-alive does: {}.\n",
                    word(a.met),
                    self.keep_alive_min,
                    a.text
                );
            }
            None => d.push_str("(a) not judged: fixed keep-alive at 100% was not run.\n\n"),
        }
        let mut first = true;
        for p in Self::B_POLICIES {
            if let Some(b) = self.target_b(p) {
                if first {
                    let _ = writeln!(
                        d,
                        "**(b) {}.** Its 75th-percentile app cold-start percentage should be no worse than the hybrid histogram policy's at equal memory. Judged for {p} (the best policy of (a); the hybrid cannot be compared with itself): for every hybrid run, the {p} run with the lowest p75 among those wasting no more memory: {}.\n",
                        word(b.met),
                        b.text
                    );
                    first = false;
                } else {
                    let _ = writeln!(d, "For comparison, {p} ({}): {}.\n", word(b.met), b.text);
                }
            }
        }
        let why = self.why();
        if !why.is_empty() {
            let _ = write!(d, "### Why\n\n{why}");
        }
        d.push_str(&self.per_budget());
        let _ = writeln!(d, "\n## Reproduce\n");
        let _ = writeln!(
            d,
            "```sh\n{}\n```\n\n`cargo xtask` builds xtask and `strata-policy` with optimisations; `--threads N` spreads the runs over N threads without changing a number, `--no-matched` skips the explaining runs (\"= fixed\", \"= hybrid\", the variants). `--azure DIR` replays the public trace instead: the `invocations_per_function_md.anon.dNN.csv`, `function_durations_percentiles.anon.dNN.csv` and `app_memory_percentiles.anon.dNN.csv` files of Azure/AzurePublicDataset (a tiny sample is in `xtask/testdata/azure-sample/`). `--policies`, `--budgets`, `--keep-alive-min`, `--hybrid-fallback-min`, `--greedy-dual-frequency`, `--hazard-worth`, `--hazard-app-weight`, `--hazard-prior` and `--hazard-min-samples` change the policies' settings.\n",
            self.command
        );
        d.push_str(&live_replay(old));
        d
    }

    /// Each policy against fixed at the same budget.
    fn per_budget(&self) -> String {
        let mut d = String::from(
            "\nAgainst fixed keep-alive at the same budget:\n\n| budget | policy | cold starts, fixed ÷ policy | wasted memory, policy ÷ fixed | p75 app cold %, policy / fixed |\n| --- | --- | --- | --- | --- |\n",
        );
        for f in self.runs_of(PolicyKind::Fixed) {
            for r in self
                .results
                .iter()
                .filter(|r| r.policy != PolicyKind::Fixed && r.variant == Variant::Configured && r.budget == f.budget)
            {
                let _ = writeln!(
                    d,
                    "| {} | {} | {:.2}× | {:.2}× | {:.1}% / {:.1}% |",
                    f.budget.label(),
                    r.policy,
                    f.cold as f64 / r.cold.max(1) as f64,
                    r.wasted_gb_s / f.wasted_gb_s.max(f64::MIN_POSITIVE),
                    r.app_cold_pct[1],
                    f.app_cold_pct[1]
                );
            }
        }
        d
    }
}

/// The live-replay section of `old`, or a placeholder.
fn live_replay(old: &str) -> String {
    let Some(start) = old.find(&format!("\n{LIVE_REPLAY}\n")).map(|i| i + 1) else {
        return format!("{LIVE_REPLAY}\n\n(to be filled by cargo xtask replay)\n");
    };
    let body = start + LIVE_REPLAY.len();
    let end = old[body..].find("\n## ").map_or(old.len(), |i| body + i + 1);
    let mut s = old[start..end].to_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

const MODEL: &str = "## What the simulator models

- **Unit**: a trace function is what gets loaded: a Strata function, an Azure application (its
  functions share its memory, as in the paper's simulation) or a synthetic function, with a
  memory size, a call duration and a cold-start cost.
- **One instance per function**, serving its calls concurrently (the paper's simulator keeps one
  container per application; memory does not grow with concurrency).
- **Calls**: the trace gives calls per minute; a minute's calls are spread uniformly at random
  inside it (seeded per function and minute: the first arrival is the minimum of that many
  uniform draws, the last the maximum of the others). The instance is busy from the minute's
  first arrival to its last arrival plus the call duration (plus the cold-start cost when the
  first call was cold), and a busy period still running when the next minute's first call
  arrives takes that minute's calls too. So only the first call of a busy period can be cold,
  and idle gaps inside one minute are not simulated (seconds where a minute has many calls, far
  below any keep-alive window).
- **Policies**: the driver reports `on_call` (warm or cold), `on_joined` (the rest of the
  minute's calls) and `on_idle` (end of the busy period) to the policy, and applies `decide`
  whenever `next_deadline` is due: a stop unloads the idle instance, a prewarm loads one at once
  (idle, its memory counted as wasted until a call takes it). Ties at one millisecond: ends of
  busy periods, then decisions, then calls.
- **Metrics**: cold starts / calls; per function the share of its calls that were cold, and the
  75th percentile of that over the functions called at least once (the paper's \"3rd quartile
  app cold start %\"); wasted memory = memory × time of idle instances until the end of the
  trace, GB·s (memory-weighted, as FaasCache's and dslab's simulators; the paper counts time);
  cold-start seconds = Σ cold starts × that function's cost.
- **Budgets** cap the memory of idle instances (busy ones are never evicted): the fixed and
  hybrid policies then evict the longest idle first, greedy-dual the lowest priority, the
  hazard policy the lowest hazard per MB.
- **Prices**: the hazard policy holds an instance where its function's idle-time hazard per MB
  is above a price; it is also run at other prices (\"price N MB·min\"), counting cold starts per
  call or, \"per function\", as shares of each function's calls (its app weight 1): the price is
  its memory knob, so its runs draw its curve of memory against cold starts.
- **Not modelled**: queueing, CPU contention, concurrency limits, the time a prewarm takes (a
  prewarmed instance is ready at once), more than one instance per function.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_replay_section_survives_a_rewrite() {
        assert_eq!(
            live_replay("# X\n\n## Results\n\nold\n"),
            "## Live replay\n\n(to be filled by cargo xtask replay)\n"
        );
        let old = "# X\n\n## Live replay\n\nreplayed 10 functions\n\n## Later\n\nmore\n";
        assert_eq!(live_replay(old), "## Live replay\n\nreplayed 10 functions\n\n");
        assert_eq!(live_replay("# X\n\n## Live replay\n\nlast"), "## Live replay\n\nlast\n");
    }
}
