//! Triggers: cron schedules, durable topics and CloudEvents routing. Each turns into
//! asynchronous calls on the durable queue; every call carries a CloudEvent in HTTP binary
//! mode (`ce-*` headers), whatever its source.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use strata_store::now_ms;
use strata_types::Trigger;
use strata_types::units::format_rfc3339_ms;

use crate::Orchestrator;
use crate::queue::{AsyncQueue, NewCall, QueueError};

/// A CloudEvent's context attributes (lowercase names) and data.
#[derive(Debug, Clone, Default)]
pub struct CloudEvent {
    /// specversion, id, source, type, and optional and extension attributes.
    pub attributes: BTreeMap<String, String>,
    /// The data's media type.
    pub datacontenttype: Option<String>,
    /// The data.
    pub data: Bytes,
}

/// Binary-mode headers of an event.
fn ce_headers(ev: &CloudEvent) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = ev
        .attributes
        .iter()
        .map(|(k, v)| (format!("ce-{k}"), v.clone()))
        .collect();
    if let Some(ct) = &ev.datacontenttype {
        h.push(("content-type".into(), ct.clone()));
    }
    h
}

fn event_call(function: &str, ev: &CloudEvent, source: String) -> NewCall {
    NewCall {
        call_id: uuid::Uuid::now_v7().to_string(),
        function: function.to_owned(),
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: ce_headers(ev),
        body: ev.data.clone(),
        callback_url: None,
        source,
    }
}

impl Orchestrator {
    /// Functions subscribed to `topic`.
    pub fn subscribers(&self, topic: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .specs()
            .into_iter()
            .filter(|s| {
                s.triggers
                    .iter()
                    .any(|t| matches!(t, Trigger::Topic { topic: x } if x == topic))
            })
            .map(|s| s.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Functions whose event filters match the event.
    pub fn event_targets(&self, ev: &CloudEvent) -> Vec<String> {
        let mut v: Vec<String> = self
            .specs()
            .into_iter()
            .filter(|s| {
                s.triggers.iter().any(|t| match t {
                    Trigger::Event { filter } => filter.iter().all(|(k, want)| ev.attributes.get(k) == Some(want)),
                    _ => false,
                })
            })
            .map(|s| s.name.clone())
            .collect();
        v.sort();
        v
    }
}

/// Publish a message to a topic: one durable call per subscriber, all or none.
pub async fn publish(
    q: &Arc<AsyncQueue>,
    orch: &Orchestrator,
    topic: &str,
    content_type: Option<String>,
    body: Bytes,
) -> Result<(String, Vec<String>), QueueError> {
    let id = uuid::Uuid::now_v7().to_string();
    let mut ev = CloudEvent {
        datacontenttype: content_type,
        data: body,
        ..Default::default()
    };
    for (k, v) in [
        ("specversion", "1.0".to_owned()),
        ("id", id.clone()),
        ("source", format!("/strata/topics/{topic}")),
        ("type", "dev.strata.topic.message".to_owned()),
        ("time", format_rfc3339_ms(now_ms())),
    ] {
        ev.attributes.insert(k.into(), v);
    }
    let subs = orch.subscribers(topic);
    let calls = subs
        .iter()
        .map(|f| event_call(f, &ev, format!("topic:{topic}")))
        .collect();
    q.accept(calls).await?;
    Ok((id, subs))
}

/// Route an event to every matching function.
pub async fn route_event(q: &Arc<AsyncQueue>, orch: &Orchestrator, ev: &CloudEvent) -> Result<Vec<String>, QueueError> {
    let targets = orch.event_targets(ev);
    let calls = targets.iter().map(|f| event_call(f, ev, "event".into())).collect();
    q.accept(calls).await?;
    Ok(targets)
}

/// The next tick of `cron` strictly after `after_ms`.
pub fn next_tick(cron: &croner::Cron, after_ms: u64) -> Option<u64> {
    let after: DateTime<Utc> = Utc.timestamp_millis_opt(after_ms as i64).single()?;
    cron.find_next_occurrence(&after, false)
        .ok()
        .map(|t| t.timestamp_millis() as u64)
}

/// The latest tick of `cron` at or before `at_ms`, if it is after `after_ms`.
fn latest_tick_between(cron: &croner::Cron, after_ms: u64, at_ms: u64) -> Option<u64> {
    let at: DateTime<Utc> = Utc.timestamp_millis_opt(at_ms as i64).single()?;
    let t = cron.find_previous_occurrence(&at, true).ok()?.timestamp_millis() as u64;
    (t > after_ms).then_some(t)
}

/// Fires cron triggers on time, once per tick, durably. Missed ticks while the daemon was
/// down: the latest one fires once at start (documented policy), the rest are skipped.
pub async fn run_cron(q: Arc<AsyncQueue>, orch: Arc<Orchestrator>) {
    // (function, trigger index, schedule) → next tick.
    let mut next: HashMap<(String, u32, String), u64> = HashMap::new();
    loop {
        let now = now_ms();
        let mut live = Vec::new();
        for spec in orch.specs() {
            for (i, t) in spec.triggers.iter().enumerate() {
                let Trigger::Cron { schedule } = t else { continue };
                let Ok(cron) = croner::Cron::from_str(schedule) else {
                    continue;
                };
                let key = (spec.name.clone(), i as u32, schedule.clone());
                if !next.contains_key(&key) {
                    let last = q.store().cron_last(&spec.name, i as u32).ok().flatten();
                    let first = match last.and_then(|l| latest_tick_between(&cron, l, now)) {
                        Some(missed) => missed,
                        None => next_tick(&cron, now).unwrap_or(u64::MAX),
                    };
                    next.insert(key.clone(), first);
                }
                live.push((key, cron));
            }
        }
        next.retain(|k, _| live.iter().any(|(l, _)| l == k));
        let mut soonest = now + 250;
        for (key, cron) in &live {
            let due = next[key];
            if due <= now {
                fire(&q, &key.0, key.1, due).await;
                next.insert(
                    key.clone(),
                    next_tick(cron, due.max(now.saturating_sub(1))).unwrap_or(u64::MAX),
                );
            }
            soonest = soonest.min(next[key]);
        }
        let wait = soonest.saturating_sub(now_ms()).min(250);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

async fn fire(q: &AsyncQueue, function: &str, index: u32, tick_ms: u64) {
    let mut attributes = BTreeMap::new();
    for (k, v) in [
        ("specversion", "1.0".to_owned()),
        ("id", format!("{function}-{index}-{tick_ms}")),
        ("source", format!("/strata/cron/{function}/{index}")),
        ("type", "dev.strata.cron.tick".to_owned()),
        ("time", format_rfc3339_ms(tick_ms)),
    ] {
        attributes.insert(k.to_owned(), v);
    }
    let ev = CloudEvent {
        attributes,
        datacontenttype: None,
        data: Bytes::new(),
    };
    let mut call = event_call(function, &ev, "cron".into());
    call.call_id = format!("cron-{function}-{index}-{tick_ms}");
    match q.enqueue_cron(index, tick_ms, call).await {
        Ok(()) => tracing::debug!(function, tick_ms, "cron fired"),
        Err(e) => tracing::warn!(function, error = %e, "cron tick not enqueued"),
    }
}
