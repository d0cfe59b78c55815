//! The Azure Functions 2019 public trace (Azure/AzurePublicDataset, AzureFunctionsDataset2019):
//! per-function invocation counts per minute, per-function execution times and per-app
//! allocated memory, one file of each per day.
//!
//! The unit of loading is the application, as in the paper's simulation: an app's functions
//! share its memory, so its calls are summed per minute, its duration is the call-weighted
//! mean of its functions' averages over the days read, its memory the mean of its daily
//! `AverageAllocatedMb`. Apps without a duration or memory row (the memory files cover 12 of
//! the 14 days) get the median of the others. The trace has no cold-start costs: they come
//! from the same model as the synthetic trace's, seeded by the app's hash.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, bail};

use super::synthetic::cold_start_ms;
use super::trace::{Rng, Trace, TraceFn, percentile};

/// What was read, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct AzureInfo {
    /// The `dNN` days read, in order (placed one after the other).
    pub days: Vec<u32>,
    pub apps: usize,
    pub functions: usize,
    pub apps_without_memory: usize,
    pub apps_without_duration: usize,
}

#[derive(Debug, Default)]
struct App {
    key: String,
    triggers: BTreeSet<String>,
    cells: Vec<(u32, u32)>,
    /// Σ average × count and Σ count of its functions' durations.
    duration_sum: f64,
    duration_count: f64,
    memory_sum: f64,
    memory_days: u32,
}

fn invocations(dir: &Path, day: u32) -> std::path::PathBuf {
    dir.join(format!("invocations_per_function_md.anon.d{day:02}.csv"))
}

/// FNV-1a, 64-bit: a stable hash of an app's key for its cold-start draw.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Lines of a CSV file with the column index of each `wanted` header name.
fn open_csv(path: &Path, wanted: &[&str]) -> anyhow::Result<(Vec<usize>, std::io::Lines<BufReader<std::fs::File>>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let header = lines.next().transpose()?.unwrap_or_default();
    let names: Vec<&str> = header.trim_end().split(',').collect();
    let cols = wanted
        .iter()
        .map(|w| {
            names
                .iter()
                .position(|n| n == w)
                .with_context(|| format!("{}: no column {w:?} in the header", path.display()))
        })
        .collect::<anyhow::Result<Vec<usize>>>()?;
    Ok((cols, lines))
}

/// For each row of `{prefix}.anon.dNN.csv` (the days present) whose app is known: the app's
/// index and the row's values of the `wanted` columns (after HashOwner and HashApp).
fn for_each_app_row(
    dir: &Path,
    days: &[u32],
    prefix: &str,
    wanted: &[&str],
    index: &std::collections::HashMap<String, usize>,
    mut row: impl FnMut(usize, &[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut columns = vec!["HashOwner", "HashApp"];
    columns.extend_from_slice(wanted);
    for &day in days {
        let path = dir.join(format!("{prefix}.anon.d{day:02}.csv"));
        if !path.is_file() {
            continue;
        }
        let (cols, lines) = open_csv(&path, &columns)?;
        for line in lines {
            let line = line?;
            let fields: Vec<&str> = line.trim_end().split(',').collect();
            if fields.len() <= cols.iter().copied().max().unwrap_or(0) {
                continue;
            }
            let Some(&a) = index.get(&format!("{}/{}", fields[cols[0]], fields[cols[1]])) else {
                continue;
            };
            let values: Vec<&str> = cols[2..].iter().map(|&c| fields[c]).collect();
            row(a, &values)?;
        }
    }
    Ok(())
}

/// Read the days present in `dir` (d01 to d14).
pub fn load(dir: &Path, seed: u64) -> anyhow::Result<(Trace, AzureInfo)> {
    let days: Vec<u32> = (1..=14).filter(|&d| invocations(dir, d).is_file()).collect();
    if days.is_empty() {
        bail!(
            "no invocations_per_function_md.anon.dNN.csv in {} (the Azure Functions 2019 trace)",
            dir.display()
        );
    }
    let mut apps: Vec<App> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut functions: BTreeSet<String> = BTreeSet::new();
    for (slot, &day) in days.iter().enumerate() {
        let path = invocations(dir, day);
        let (cols, lines) = open_csv(&path, &["HashOwner", "HashApp", "HashFunction", "Trigger", "1"])?;
        let first_minute = cols[4];
        for (n, line) in lines.enumerate() {
            let line = line?;
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() < first_minute + 1440 {
                bail!(
                    "{}:{}: {} fields, expected {}",
                    path.display(),
                    n + 2,
                    fields.len(),
                    first_minute + 1440
                );
            }
            let key = format!("{}/{}", fields[cols[0]], fields[cols[1]]);
            functions.insert(format!("{key}/{}", fields[cols[2]]));
            let a = *index.entry(key.clone()).or_insert_with(|| {
                apps.push(App { key, ..App::default() });
                apps.len() - 1
            });
            apps[a].triggers.insert(fields[cols[3]].to_owned());
            for (m, v) in fields[first_minute..first_minute + 1440].iter().enumerate() {
                let c: u32 = v
                    .parse()
                    .with_context(|| format!("{}:{}: count {v:?} in minute {}", path.display(), n + 2, m + 1))?;
                if c > 0 {
                    apps[a].cells.push((slot as u32 * 1440 + m as u32, c));
                }
            }
        }
    }
    for_each_app_row(
        dir,
        &days,
        "function_durations_percentiles",
        &["Average", "Count"],
        &index,
        |a, v| {
            let (avg, count): (f64, f64) = (v[0].parse()?, v[1].parse()?);
            apps[a].duration_sum += avg * count;
            apps[a].duration_count += count;
            Ok(())
        },
    )?;
    for_each_app_row(
        dir,
        &days,
        "app_memory_percentiles",
        &["AverageAllocatedMb"],
        &index,
        |a, v| {
            apps[a].memory_sum += v[0].parse::<f64>()?;
            apps[a].memory_days += 1;
            Ok(())
        },
    )?;
    let memory =
        |a: &App| (a.memory_days > 0).then(|| (a.memory_sum / f64::from(a.memory_days)).round().max(1.0) as u32);
    let duration =
        |a: &App| (a.duration_count > 0.0).then(|| (a.duration_sum / a.duration_count).round().max(1.0) as u32);
    let mut known_mem: Vec<u32> = apps.iter().filter_map(memory).collect();
    known_mem.sort_unstable();
    let mut known_dur: Vec<u32> = apps.iter().filter_map(duration).collect();
    known_dur.sort_unstable();
    let default_mem = percentile(&known_mem, 50.0).unwrap_or(170);
    let default_dur = percentile(&known_dur, 50.0).unwrap_or(1_000);
    let info = AzureInfo {
        days: days.clone(),
        apps: apps.len(),
        functions: functions.len(),
        apps_without_memory: apps.len() - known_mem.len(),
        apps_without_duration: apps.len() - known_dur.len(),
    };
    let mut trace = Trace::new(days.len() as u32 * 1440);
    for mut a in apps {
        let memory_mb = memory(&a).unwrap_or(default_mem);
        let duration_ms = duration(&a).unwrap_or(default_dur);
        a.cells.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(a.cells.len());
        for (m, c) in a.cells {
            match merged.last_mut() {
                Some((last, n)) if *last == m => *n += c,
                _ => merged.push((m, c)),
            }
        }
        let mut rng = Rng::new(&[seed, fnv1a(&a.key)]);
        let f = TraceFn {
            name: a.key.clone(),
            memory_mb,
            duration_ms,
            cold_start_ms: cold_start_ms(memory_mb, &mut rng),
            kind: a.triggers.into_iter().collect::<Vec<_>>().join("+"),
        };
        trace.push(f, merged);
    }
    Ok((trace, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_parses_into_apps() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/azure-sample");
        let (t, info) = load(&dir, 1).expect("the sample parses");
        assert_eq!(
            info,
            AzureInfo {
                days: vec![1, 2],
                apps: 4,
                functions: 5,
                apps_without_memory: 1,
                apps_without_duration: 1,
            }
        );
        assert_eq!(t.minutes, 2 * 1440);
        let by_kind = |k: &str| t.fns.iter().position(|f| f.kind == k).expect(k);
        // App 1: a 5-minute timer both days and an HTTP function on day 1.
        let a1 = by_kind("http+timer");
        assert_eq!(t.calls_of(a1), 288 * 2 + 4);
        assert_eq!(t.fns[a1].memory_mb, 150);
        assert_eq!(t.fns[a1].duration_ms, 123, "(100·288 + 2000·4 + 120·288) / 580");
        let cells: Vec<(u32, u32)> = t.range(a1).map(|i| t.at(i)).take(22).collect();
        assert_eq!(
            cells[20],
            (99, 3),
            "the timer's minute 95, then the 3 HTTP calls of minute 100"
        );
        // App 2: a queue function at the first minute of day 1 and the last of day 2.
        let a2 = by_kind("queue");
        assert_eq!(
            t.range(a2).map(|i| t.at(i)).collect::<Vec<_>>(),
            vec![(0, 10), (2879, 2)]
        );
        assert_eq!((t.fns[a2].memory_mb, t.fns[a2].duration_ms), (300, 53));
        // App 3: day 2 only, no memory row: the median of 64, 150 and 300.
        let a3 = t.fns.iter().position(|f| f.kind == "http").expect("http-only app");
        assert_eq!(
            t.range(a3).map(|i| t.at(i)).collect::<Vec<_>>(),
            vec![(1499, 1), (1500, 1)]
        );
        assert_eq!((t.fns[a3].memory_mb, t.fns[a3].duration_ms), (150, 500));
        // App 4: listed, never called (its duration row has no calls).
        assert_eq!(t.calls_of(by_kind("event")), 0);
        assert_eq!(t.keep_forever_mb(), 150 + 300 + 150);
        assert!(t.fns.iter().all(|f| (10..=20_000).contains(&f.cold_start_ms)));
    }

    #[test]
    fn a_directory_without_the_trace_is_named() {
        let err = load(Path::new("/nonexistent"), 1).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }
}
