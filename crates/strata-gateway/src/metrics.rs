//! Prometheus metrics, with OpenFaaS's names where they overlap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnCode {
    function_name: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Fn {
    function_name: String,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    invocations: Family<FnCode, Counter>,
    seconds: Family<Fn, Histogram>,
    coldstarts: Family<Fn, Counter>,
    instances: Family<Fn, Gauge>,
    queue: Family<Fn, Gauge>,
    async_depth: Family<Fn, Gauge>,
    async_oldest: Family<Fn, Gauge<f64, std::sync::atomic::AtomicU64>>,
    async_retries: Family<Fn, Gauge>,
    async_dead: Family<Fn, Gauge>,
    /// Each function's metrics, looked up once: a call then counts itself without building
    /// label sets (three strings) or taking the families' locks.
    functions: RwLock<HashMap<String, Arc<FnMetrics>>>,
}

/// One function's handles into the families (clones share the families' values), and its
/// total for the API.
struct FnMetrics {
    total: AtomicU64,
    seconds: Histogram,
    coldstarts: Counter,
    /// Per status code; a handful per function.
    codes: RwLock<Vec<(u16, Counter)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<FnCode, Counter>::default();
        // Buckets from 100 µs to ~30 s: warm calls land in the first few, timeouts in the last.
        let seconds = Family::<Fn, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 3.0, 12,
            ))
        });
        let coldstarts = Family::<Fn, Counter>::default();
        let instances = Family::<Fn, Gauge>::default();
        let queue = Family::<Fn, Gauge>::default();
        registry.register(
            "gateway_function_invocation",
            "Invocations by function and status code",
            invocations.clone(),
        );
        registry.register(
            "gateway_functions_seconds",
            "Invocation duration through the gateway",
            seconds.clone(),
        );
        registry.register(
            "faas_coldstarts",
            "Invocations that waited for a new instance",
            coldstarts.clone(),
        );
        registry.register("faas_instances", "Ready instances per function", instances.clone());
        registry.register(
            "faas_queue_depth",
            "Calls waiting for an instance per function",
            queue.clone(),
        );
        let async_depth = Family::<Fn, Gauge>::default();
        let async_oldest = Family::<Fn, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let async_retries = Family::<Fn, Gauge>::default();
        let async_dead = Family::<Fn, Gauge>::default();
        registry.register(
            "strata_async_queue_depth",
            "Asynchronous calls accepted and not finished",
            async_depth.clone(),
        );
        registry.register(
            "strata_async_oldest_age_seconds",
            "Age of the oldest queued asynchronous call",
            async_oldest.clone(),
        );
        registry.register(
            "strata_async_retries",
            "Retries scheduled since the daemon started",
            async_retries.clone(),
        );
        registry.register(
            "strata_async_dead_letters",
            "Calls dead-lettered since the daemon started",
            async_dead.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            invocations,
            seconds,
            coldstarts,
            instances,
            queue,
            async_depth,
            async_oldest,
            async_retries,
            async_dead,
            functions: RwLock::default(),
        }
    }

    /// Count one invocation of a deployed function (a name that is not one must not make a
    /// series: any caller could grow the metrics without bound).
    pub fn observe(&self, function: &str, status: u16, took: Duration, cold: bool) {
        // Counted under the read lock: no reference count shared by both HTTP threads to
        // bump and drop on every call. A function's first call makes its handles first.
        if let Some(f) = self.functions.read().expect("functions lock").get(function) {
            return self.count(f, function, status, took, cold);
        }
        let f = self.handles(function);
        self.count(&f, function, status, took, cold);
    }

    fn count(&self, f: &FnMetrics, function: &str, status: u16, took: Duration, cold: bool) {
        f.total.fetch_add(1, Ordering::Relaxed);
        f.seconds.observe(took.as_secs_f64());
        if cold {
            f.coldstarts.inc();
        }
        if let Some((_, c)) = f.codes.read().expect("codes lock").iter().find(|(c, _)| *c == status) {
            c.inc();
            return;
        }
        let mut codes = f.codes.write().expect("codes lock");
        if let Some((_, c)) = codes.iter().find(|(c, _)| *c == status) {
            c.inc();
            return;
        }
        let counter = self
            .invocations
            .get_or_create(&FnCode {
                function_name: function.into(),
                code: status.to_string(),
            })
            .clone();
        counter.inc();
        codes.push((status, counter));
    }

    /// A function's handles, made on its first call.
    fn handles(&self, name: &str) -> Arc<FnMetrics> {
        let label = Fn {
            function_name: name.into(),
        };
        let f = Arc::new(FnMetrics {
            total: AtomicU64::new(0),
            seconds: self.seconds.get_or_create(&label).clone(),
            coldstarts: self.coldstarts.get_or_create(&label).clone(),
            codes: RwLock::default(),
        });
        Arc::clone(
            self.functions
                .write()
                .expect("functions lock")
                .entry(name.to_owned())
                .or_insert(f),
        )
    }

    /// Total invocations of a function.
    pub fn invocations_of(&self, function: &str) -> u64 {
        self.functions
            .read()
            .expect("functions lock")
            .get(function)
            .map_or(0, |f| f.total.load(Ordering::Relaxed))
    }

    fn render(
        &self,
        stats: &[(String, strata_orchestrator::PoolStats)],
        queue: &std::collections::HashMap<String, strata_orchestrator::queue::QueueStats>,
    ) -> String {
        self.instances.clear();
        self.queue.clear();
        // Rebuilt from the snapshot every scrape, so a drained queue reads 0, not its last depth.
        self.async_depth.clear();
        self.async_oldest.clear();
        self.async_retries.clear();
        self.async_dead.clear();
        for name in stats.iter().map(|(n, _)| n) {
            self.async_depth
                .get_or_create(&Fn {
                    function_name: name.clone(),
                })
                .set(0);
        }
        for (name, q) in queue {
            let f = Fn {
                function_name: name.clone(),
            };
            self.async_depth.get_or_create(&f).set(q.depth as i64);
            self.async_oldest.get_or_create(&f).set(q.oldest_age_ms as f64 / 1000.0);
            self.async_retries.get_or_create(&f).set(q.retries as i64);
            self.async_dead.get_or_create(&f).set(q.dead_letters as i64);
        }
        for (name, s) in stats {
            self.instances
                .get_or_create(&Fn {
                    function_name: name.clone(),
                })
                .set(i64::from(s.instances));
            self.queue
                .get_or_create(&Fn {
                    function_name: name.clone(),
                })
                .set(i64::from(s.waiting));
        }
        let mut out = String::new();
        let reg = self.registry.lock().expect("metrics lock");
        if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
            out.clear();
        }
        out
    }
}

pub(crate) async fn handler(State(s): State<AppState>) -> impl IntoResponse {
    let body = s.metrics.render(&s.orch.stats(), &s.queue.stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_per_function_and_status() {
        let m = Metrics::new();
        m.observe("f", 200, Duration::from_millis(1), true);
        m.observe("f", 200, Duration::from_millis(2), false);
        m.observe("f", 502, Duration::from_millis(3), false);
        m.observe("g", 200, Duration::from_millis(1), false);
        assert_eq!(m.invocations_of("f"), 3);
        assert_eq!(m.invocations_of("g"), 1);
        assert_eq!(m.invocations_of("nobody"), 0);
        let text = m.render(&[], &HashMap::new());
        for line in [
            "gateway_function_invocation_total{function_name=\"f\",code=\"200\"} 2",
            "gateway_function_invocation_total{function_name=\"f\",code=\"502\"} 1",
            "gateway_function_invocation_total{function_name=\"g\",code=\"200\"} 1",
            "faas_coldstarts_total{function_name=\"f\"} 1",
            "gateway_functions_seconds_count{function_name=\"f\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
