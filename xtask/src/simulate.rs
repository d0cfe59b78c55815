//! `cargo xtask simulate`: replay a week of Azure-like serverless load through the keep-alive
//! policies of `strata-policy` (the very code the daemon runs) and compare their cold starts
//! and wasted memory at equal idle-memory budgets.
//!
//! ```text
//! cargo xtask simulate --synthetic [--functions 10000] [--days 7] [--seed 1] [--report docs/cold-starts.md]
//! cargo xtask simulate --azure DIR [--seed 1] [--report PATH]
//! ```
//!
//! # The model
//!
//! - **Unit.** A trace function is what gets loaded: a Strata function, an Azure application
//!   (whose functions share its memory, as in the paper's simulation), or a synthetic function.
//!   Each has a memory size, a call duration and a cold-start cost.
//! - **One instance per function**, serving its calls concurrently (the paper's simulator: one
//!   container per application; memory does not grow with concurrency). A function is either
//!   without an instance, idle, or busy.
//! - **Calls.** The trace gives calls per minute. A minute's `c` calls are spread uniformly at
//!   random inside it (seeded per function and minute): the first arrival is drawn as the
//!   minimum of `c` uniforms, the last as the maximum of the other `c − 1` above it. Calls in
//!   between arrive while the instance is busy, so only the first call of the minute can be
//!   cold: the idle gaps inside a minute are not simulated (they are seconds long where `c` is
//!   large, far below any keep-alive window). The instance is busy from the first arrival to
//!   the last arrival plus the duration (plus the cold-start cost if the first call was cold);
//!   if the next minute's first call comes before that, it joins the busy period.
//! - **Policy events.** The first call of a busy period is `on_call` (warm if the instance was
//!   idle, cold if there was none), its other calls `on_joined`, the end of the busy period
//!   `on_idle`. Whenever `next_deadline` is due the driver calls `decide` and applies it: a
//!   stop unloads the idle instance, a prewarm loads one (idle, holding its memory) at once.
//!   Ties at the same millisecond: ends, then decisions, then calls.
//! - **Metrics.** Cold-start fraction: cold calls / calls. Per-function cold percentage and its
//!   75th percentile over the functions called at least once (the paper's Figure 15 metric,
//!   "3rd quartile app cold start %"). Wasted memory: memory × time of idle instances (loaded,
//!   not serving), GB·s, until the end of the trace. Cold-start seconds: Σ cold calls × the
//!   function's cold-start cost.
//! - **Budgets.** A budget caps the memory of idle instances. *Keep-forever memory* is the sum
//!   of the memory of every function called at least once in the trace: what keeping every
//!   instance forever holds at the end (its peak). Budgets are shares of it; 100% never binds.
//!   "= fixed" and "= hybrid" budgets equal the mean idle memory of the fixed and hybrid
//!   policies at 100%, so that a policy that fills its budget (greedy-dual) is compared at the
//!   memory the others actually use.
//!
//! After the policies × budgets runs come the explaining runs (skipped with `--no-matched`):
//! every policy at "= fixed", greedy-dual at "= hybrid", greedy-dual with FaasCache's way of
//! counting frequency at "= fixed", the hybrid with the fixed keep-alive as its fallback, and
//! the hazard policy at other prices of a cold start, per call and per function (its curve of
//! memory against cold starts: its price is its memory knob, as the budget is greedy-dual's).
//! The report judges the issue's targets from the numbers and says why they came out so.
//!
//! Runs are independent and spread over `--threads` threads (default: the cores). The trace,
//! the spread of calls and the policies are deterministic: the same command line gives the same
//! report on any machine with the same floating-point library (the trace generator uses
//! `exp`, `ln`, `powf` and `sin`).

mod azure;
pub(crate) mod replay;
mod report;
mod synthetic;
pub(crate) mod trace;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use strata_policy::{Config, Frequency, MINUTE, PolicyKind};

use self::replay::{RunResult, Schedule, simulate};
use self::synthetic::Synthetic;
use self::trace::{Properties, Trace};

const USAGE: &str = "usage: cargo xtask simulate (--synthetic [--functions N] [--days D] | --azure DIR) [--seed N] \
[--policies fixed,hybrid,greedy-dual,hazard] [--budgets 25,50,100] [--no-matched] [--keep-alive-min 10] \
[--hybrid-fallback-min 240] [--greedy-dual-frequency accesses|calls-since-load] [--hazard-worth 3500] \
[--hazard-app-weight 0] [--hazard-prior 4] [--hazard-min-samples 3] [--threads N] [--report PATH]";

/// Where the trace comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Synthetic(Synthetic),
    Azure(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
struct Args {
    source: Source,
    seed: u64,
    policies: Vec<PolicyKind>,
    /// Budgets in percent of keep-forever memory; 100 always included.
    budgets: Vec<u32>,
    /// Also run at the mean idle memory of fixed and hybrid.
    matched: bool,
    config: Config,
    threads: usize,
    report: Option<PathBuf>,
    /// The command line, for the report.
    command: String,
}

impl Args {
    fn parse(args: &[String]) -> anyhow::Result<Args> {
        let mut synthetic = None::<bool>;
        let mut azure = None;
        let (mut functions, mut days, mut seed) = (10_000u32, 7u32, 1u64);
        let mut policies = PolicyKind::ALL.to_vec();
        let mut budgets = vec![25, 50, 100];
        let mut matched = true;
        let mut config = Config::default();
        let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut report = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
            let number = |v: &str| -> anyhow::Result<u64> {
                v.parse().with_context(|| format!("{a} {v:?} is not a whole number"))
            };
            match a.as_str() {
                "--synthetic" => synthetic = Some(true),
                "--azure" => azure = Some(PathBuf::from(value()?)),
                "--functions" => functions = number(value()?)?.try_into()?,
                "--days" => days = number(value()?)?.try_into()?,
                "--seed" => seed = number(value()?)?,
                "--policies" => {
                    policies = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<Vec<PolicyKind>, _>>()?;
                }
                "--budgets" => {
                    budgets = value()?
                        .split(',')
                        .map(|b| Ok(number(b.trim_end_matches('%'))?.try_into()?))
                        .collect::<anyhow::Result<Vec<u32>>>()?;
                }
                "--no-matched" => matched = false,
                "--keep-alive-min" => config.keep_alive = number(value()?)? * MINUTE,
                "--hybrid-fallback-min" => config.hybrid.fallback_keep_alive = number(value()?)? * MINUTE,
                "--greedy-dual-frequency" => {
                    config.frequency = match value()?.as_str() {
                        "accesses" => Frequency::Accesses,
                        "calls-since-load" => Frequency::CallsSinceLoad,
                        other => bail!("--greedy-dual-frequency {other:?}: expected accesses or calls-since-load"),
                    }
                }
                "--hazard-worth" => config.hazard.worth_mb_min = number(value()?)?,
                "--hazard-app-weight" => config.hazard.app_weight = value()?.parse().context("--hazard-app-weight")?,
                "--hazard-prior" => config.hazard.prior_bins = value()?.parse().context("--hazard-prior")?,
                "--hazard-min-samples" => config.hazard.min_samples = number(value()?)?.try_into()?,
                "--threads" => threads = number(value()?)?.max(1) as usize,
                "--report" => report = Some(PathBuf::from(value()?)),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        let source = match (synthetic, azure) {
            (Some(_), None) => Source::Synthetic(Synthetic { functions, days, seed }),
            (None, Some(dir)) => Source::Azure(dir),
            _ => bail!("give one of --synthetic or --azure DIR\n{USAGE}"),
        };
        if days == 0 || functions == 0 {
            bail!("--functions {functions} and --days {days} must be above 0");
        }
        if !budgets.contains(&100) {
            budgets.push(100);
        }
        budgets.sort_unstable();
        budgets.dedup();
        policies.dedup();
        config.validate()?;
        let command = std::iter::once("cargo xtask simulate".to_owned())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Args {
            source,
            seed,
            policies,
            budgets,
            matched,
            config,
            threads,
            report,
            command,
        })
    }
}

/// An idle-memory budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// This percent of keep-forever memory.
    Share(u32),
    /// The mean idle memory of this policy at 100%.
    Matched(PolicyKind, u64),
}

impl Budget {
    pub fn label(&self) -> String {
        match self {
            Budget::Share(p) => format!("{p}%"),
            Budget::Matched(k, _) => format!("= {k}"),
        }
    }

    /// Whether this is the budget matched to `reference`'s memory.
    pub fn matches(&self, reference: PolicyKind) -> bool {
        matches!(self, Budget::Matched(r, _) if *r == reference)
    }

    fn mb(&self, keep_forever_mb: u64) -> u64 {
        match *self {
            Budget::Share(p) => keep_forever_mb * u64::from(p) / 100,
            Budget::Matched(_, mb) => mb,
        }
    }
}

/// A policy setting other than the configured one, run to explain the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The configuration of the command line.
    Configured,
    /// Greedy-dual counting frequency as FaasCache does ([`Frequency::CallsSinceLoad`]).
    FaasCacheFrequency,
    /// The hybrid policy falling back to the fixed policy's keep-alive instead of 4 hours.
    FixedFallback,
    /// The hazard policy at another price of a cold start (MB·minutes), counting cold starts
    /// per call (`per_function` false) or as shares of each function's calls (app weight 1).
    Price { worth_mb_min: u64, per_function: bool },
}

impl Variant {
    /// How the report names it, after the policy ("" when configured).
    pub fn label(&self) -> String {
        match *self {
            Variant::Configured => String::new(),
            Variant::FaasCacheFrequency => " (FaasCache frequency)".into(),
            Variant::FixedFallback => " (fixed keep-alive as fallback)".into(),
            Variant::Price {
                worth_mb_min,
                per_function: false,
            } => format!(" (price {worth_mb_min} MB·min)"),
            Variant::Price {
                worth_mb_min,
                per_function: true,
            } => format!(" (per function, price {worth_mb_min} MB·min)"),
        }
    }

    /// Where the report lists it among the variants.
    pub fn rank(&self) -> (u32, u64) {
        match *self {
            Variant::Configured => (0, 0),
            Variant::FaasCacheFrequency => (1, 0),
            Variant::FixedFallback => (2, 0),
            Variant::Price {
                worth_mb_min,
                per_function,
            } => (3 + u32::from(per_function), worth_mb_min),
        }
    }

    fn apply(&self, config: &mut Config) {
        match *self {
            Variant::Configured => {}
            Variant::FaasCacheFrequency => config.frequency = Frequency::CallsSinceLoad,
            Variant::FixedFallback => config.hybrid.fallback_keep_alive = config.keep_alive,
            Variant::Price {
                worth_mb_min,
                per_function,
            } => {
                config.hazard.worth_mb_min = worth_mb_min;
                config.hazard.app_weight = if per_function { 1.0 } else { 0.0 };
            }
        }
    }
}

/// One run to make.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Job {
    policy: PolicyKind,
    budget: Budget,
    variant: Variant,
}

/// Make every run on `threads` threads; results in the order of `jobs`.
fn run_all(
    trace: &Trace,
    schedule: &Schedule,
    jobs: &[Job],
    args: &Args,
    keep_forever_mb: u64,
) -> anyhow::Result<Vec<RunResult>> {
    let results: Mutex<Vec<Option<anyhow::Result<RunResult>>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..args.threads.min(jobs.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&job) = jobs.get(i) else { break };
                    // A budget of keep-forever memory or more never binds: skip its bookkeeping.
                    let mb = job.budget.mb(keep_forever_mb);
                    let mut config = Config {
                        budget_mb: (mb < keep_forever_mb).then_some(mb),
                        ..args.config.clone()
                    };
                    job.variant.apply(&mut config);
                    let r = simulate(trace, schedule, job.policy, &config).map(|mut r| {
                        r.budget_mb = mb;
                        r.budget = job.budget;
                        r.variant = job.variant;
                        r
                    });
                    if let Ok(r) = &r {
                        eprintln!(
                            "xtask: simulate: {}{} at {} in {:.1} s",
                            job.policy,
                            job.variant.label(),
                            job.budget.label(),
                            r.elapsed.as_secs_f64()
                        );
                    }
                    results.lock().expect("no worker panics holding it")[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("workers are done")
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// The runs that explain the first ones: each policy at the memory fixed and hybrid actually
/// use (their mean idle memory at 100%), and the variants at those points.
fn explaining_jobs(args: &Args, first: &[RunResult]) -> Vec<Job> {
    let mean_mb = |k: PolicyKind| {
        first
            .iter()
            .find(|r| r.policy == k && r.budget == Budget::Share(100))
            .map(|r| (r.mean_idle_gb * 1024.0).round() as u64)
    };
    let has = |k: PolicyKind| args.policies.contains(&k);
    let job = |policy, budget, variant| Job {
        policy,
        budget,
        variant,
    };
    let mut jobs = Vec::new();
    if let Some(mb) = mean_mb(PolicyKind::Fixed) {
        let at = Budget::Matched(PolicyKind::Fixed, mb);
        for p in &args.policies {
            jobs.push(job(*p, at, Variant::Configured));
        }
        if has(PolicyKind::GreedyDual) && args.config.frequency != Frequency::CallsSinceLoad {
            jobs.push(job(PolicyKind::GreedyDual, at, Variant::FaasCacheFrequency));
        }
    }
    if let Some(mb) = mean_mb(PolicyKind::Hybrid)
        && has(PolicyKind::GreedyDual)
    {
        jobs.push(job(
            PolicyKind::GreedyDual,
            Budget::Matched(PolicyKind::Hybrid, mb),
            Variant::Configured,
        ));
    }
    if has(PolicyKind::Hybrid) && args.config.hybrid.fallback_keep_alive != args.config.keep_alive {
        jobs.push(job(PolicyKind::Hybrid, Budget::Share(100), Variant::FixedFallback));
    }
    if has(PolicyKind::Hazard) {
        // The hazard policy's knob is its price: its curve of memory against cold starts, per
        // call and per function.
        for (worth_mb_min, per_function) in HAZARD_PRICES {
            let v = Variant::Price {
                worth_mb_min,
                per_function,
            };
            let mut c = args.config.clone();
            v.apply(&mut c);
            if c.hazard != args.config.hazard {
                jobs.push(job(PolicyKind::Hazard, Budget::Share(100), v));
            }
        }
    }
    jobs
}

/// The prices (MB·minutes per cold start) and objectives the hazard policy is also run at.
const HAZARD_PRICES: [(u64, bool); 6] = [
    (1_800, false),
    (5_000, false),
    (10_000, false),
    (500, true),
    (700, true),
    (1_000, true),
];

/// The trace and how it was made, for the report.
pub struct Input {
    pub trace: Trace,
    pub properties: Properties,
    /// One line saying where the trace came from.
    pub source: String,
}

pub fn run(repo: &Path, args: &[String]) -> anyhow::Result<()> {
    let args = Args::parse(args)?;
    let t0 = Instant::now();
    let (trace, source) = match &args.source {
        Source::Synthetic(s) => (
            s.generate(),
            format!(
                "synthetic, {} functions over {} days, seed {} (xtask/src/simulate/synthetic.rs)",
                s.functions, s.days, s.seed
            ),
        ),
        Source::Azure(dir) => {
            let (t, info) = azure::load(dir, args.seed)?;
            let source = format!(
                "Azure Functions 2019 trace, days {:?} ({} apps, {} functions; {} apps without memory, {} without durations: given the median), seed {} for cold-start costs",
                info.days, info.apps, info.functions, info.apps_without_memory, info.apps_without_duration, args.seed
            );
            (t, source)
        }
    };
    let properties = Properties::of(&trace);
    eprintln!(
        "xtask: simulate: trace ready in {:.1} s: {} functions, {} calls, {} active minutes",
        t0.elapsed().as_secs_f64(),
        properties.called,
        properties.calls,
        trace.cells()
    );
    let input = Input {
        trace,
        properties,
        source,
    };
    let keep_forever_mb = input.trace.keep_forever_mb();
    let schedule = Schedule::new(&input.trace, args.seed);
    let mut jobs: Vec<Job> = Vec::new();
    for &policy in &args.policies {
        for &b in &args.budgets {
            jobs.push(Job {
                policy,
                budget: Budget::Share(b),
                variant: Variant::Configured,
            });
        }
    }
    let mut results = run_all(&input.trace, &schedule, &jobs, &args, keep_forever_mb)?;
    if args.matched {
        let more = explaining_jobs(&args, &results);
        results.extend(run_all(&input.trace, &schedule, &more, &args, keep_forever_mb)?);
    }
    let rep = report::Report::new(&args.command, &args.config, &input, keep_forever_mb, &results);
    println!("{}", rep.table());
    println!("{}", rep.classes_text());
    println!("{}", rep.verdicts_text());
    eprintln!("xtask: simulate: done in {:.1} s", t0.elapsed().as_secs_f64());
    if let Some(path) = &args.report {
        let path = if path.is_absolute() {
            path.clone()
        } else {
            repo.join(path)
        };
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, rep.markdown(&old)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: simulate: wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_and_bad_ones_are_named() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let args = Args::parse(&a("--synthetic --functions 50 --days 2 --seed 9 --budgets 25,50")).unwrap();
        assert_eq!(
            args.source,
            Source::Synthetic(Synthetic {
                functions: 50,
                days: 2,
                seed: 9
            })
        );
        assert_eq!(args.budgets, vec![25, 50, 100], "100 is always run");
        let err = Args::parse(&a("--synthetic --policies fixed,lru")).unwrap_err();
        assert!(err.to_string().contains("\"lru\""), "{err}");
        assert!(Args::parse(&a("--functions 5")).is_err(), "no source");
    }
}
