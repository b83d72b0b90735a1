use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{TimeZone, Utc};

use super::*;
use crate::aws::AwsFailure;
use crate::config::{WatchConfig, WatchMode};
use crate::metrics::{AwsOutcome, RelayOutcome};
use crate::timefmt::TimeFormat;

/// An in-memory queue pair whose forward answers are scripted per call.
#[derive(Default)]
struct MemQueues {
    inbox: Mutex<VecDeque<Message>>,
    /// Per forward call: for each entry (by message id), the answer; missing = Ok.
    forward_script: Mutex<VecDeque<Result<HashMap<String, Entry>, AwsFailure>>>,
    forwarded: Mutex<Vec<String>>,
    forward_calls: Mutex<Vec<Vec<String>>>,
    deleted: Mutex<Vec<String>>,
}

impl RelayQueues for MemQueues {
    async fn receive(&self) -> Result<Vec<Message>, AwsFailure> {
        let mut q = self.inbox.lock().unwrap();
        let n = q.len().min(10);
        Ok(q.drain(..n).collect())
    }

    async fn forward(&self, msgs: &[&Message]) -> Result<Vec<Entry>, AwsFailure> {
        self.forward_calls
            .lock()
            .unwrap()
            .push(msgs.iter().map(|m| m.message_id.clone()).collect());
        let script = self.forward_script.lock().unwrap().pop_front();
        let answers = match script {
            Some(Err(e)) => return Err(e),
            Some(Ok(a)) => a,
            None => HashMap::new(),
        };
        Ok(msgs
            .iter()
            .map(|m| {
                let e = answers.get(&m.message_id).cloned().unwrap_or(Entry::Ok);
                if e == Entry::Ok {
                    self.forwarded.lock().unwrap().push(m.message_id.clone());
                }
                e
            })
            .collect())
    }

    async fn delete(&self, msgs: &[&Message]) -> Result<Vec<Entry>, AwsFailure> {
        self.deleted
            .lock()
            .unwrap()
            .extend(msgs.iter().map(|m| m.message_id.clone()));
        Ok(vec![Entry::Ok; msgs.len()])
    }
}

fn msg(i: usize, body: &str) -> Message {
    Message {
        message_id: format!("m{i}"),
        receipt_handle: format!("rh{i}"),
        body: body.to_string(),
        sent: Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, i as u32 % 60)
            .unwrap(),
        attributes: HashMap::new(),
        group_id: None,
        dedup_id: None,
    }
}

fn relay(
    q: MemQueues,
) -> (
    Relay<MemQueues>,
    mpsc::Receiver<Vec<Observation>>,
    Arc<Metrics>,
) {
    let (tx, rx) = mpsc::channel(16);
    let metrics = Arc::new(Metrics::new());
    let extractor = Extractor::new(&WatchConfig {
        mode: WatchMode::Relay,
        forward_to: None,
        event_time: Some("/t".into()),
        event_time_format: TimeFormat::UnixS,
        record_id: Some("/id".into()),
        envelope: Default::default(),
        envelope_fields: Default::default(),
        pollers: std::num::NonZeroUsize::MIN,
    });
    let r =
        Relay::new("orders".into(), q, extractor, tx, metrics.clone()).with_policy(RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            max_retries: ATTEMPTS,
        });
    (r, rx, metrics)
}

fn counter(m: &Metrics, outcome: RelayOutcome) -> u64 {
    let series = format!("gapwatch_relay_messages_total{{feed=\"orders\",outcome=\"{outcome}\"}}");
    m.value(&series).unwrap_or(0.0) as u64
}

#[tokio::test]
async fn partial_failures_retry_only_the_failed_entries() {
    let q = MemQueues::default();
    q.forward_script
        .lock()
        .unwrap()
        .push_back(Ok(HashMap::from([
            ("m1".to_string(), Entry::Retry("throttled".into())),
            ("m2".to_string(), Entry::Fatal("invalid".into())),
        ])));
    let (r, mut rx, metrics) = relay(q);
    let msgs = (0..4)
        .map(|i| msg(i, &format!(r#"{{"id":"r{i}","t":{}}}"#, 1_767_225_600 + i)))
        .collect();
    r.relay_batch(msgs).await;

    let calls = r.queues.forward_calls.lock().unwrap().clone();
    assert_eq!(calls, vec![vec!["m0", "m1", "m2", "m3"], vec!["m1"]]);
    let mut deleted = r.queues.deleted.lock().unwrap().clone();
    deleted.sort();
    // m2 was refused: it was not forwarded, so it must not be deleted.
    assert_eq!(deleted, vec!["m0", "m1", "m3"]);
    assert_eq!(counter(&metrics, RelayOutcome::Forwarded), 3);
    assert_eq!(counter(&metrics, RelayOutcome::Failed), 1);
    let obs = rx.recv().await.unwrap();
    let ids: Vec<_> = obs.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, vec!["r0", "r3", "r1"]);
    assert_eq!(
        obs[0].event_time,
        Utc.timestamp_opt(1_767_225_600, 0).unwrap()
    );
}

#[tokio::test]
async fn a_failed_batch_call_deletes_nothing() {
    let q = MemQueues::default();
    q.forward_script.lock().unwrap().push_back(Err(AwsFailure {
        outcome: AwsOutcome::Error,
        retryable: false,
        code: Some("AccessDenied".into()),
        message: "denied".into(),
    }));
    let (r, mut rx, metrics) = relay(q);
    r.relay_batch(vec![msg(0, "{}"), msg(1, "{}")]).await;
    assert!(r.queues.deleted.lock().unwrap().is_empty());
    assert_eq!(counter(&metrics, RelayOutcome::Failed), 2);
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn throttled_calls_are_retried_until_they_pass() {
    let q = MemQueues::default();
    for _ in 0..3 {
        q.forward_script.lock().unwrap().push_back(Err(AwsFailure {
            outcome: AwsOutcome::Throttled,
            retryable: true,
            code: Some("RequestThrottled".into()),
            message: "slow down".into(),
        }));
    }
    let (r, _rx, metrics) = relay(q);
    r.relay_batch(vec![msg(0, "not json")]).await;
    assert_eq!(r.queues.forward_calls.lock().unwrap().len(), 4);
    assert_eq!(r.queues.deleted.lock().unwrap().clone(), vec!["m0"]);
    assert_eq!(counter(&metrics, RelayOutcome::Forwarded), 1);
    // The body is not JSON: forwarded all the same, and counted.
    assert_eq!(
        metrics.value(
            "gapwatch_rejected_input_total{feed=\"orders\",reason=\"body_not_json\",source=\"queue\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn batches_are_split_by_size() {
    let big = "x".repeat(100 * 1024);
    let msgs: Vec<_> = (0..4).map(|i| msg(i, &big)).collect();
    let groups = size_groups(&msgs);
    assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2]);
    let small: Vec<_> = (0..12).map(|i| msg(i, "{}")).collect();
    assert_eq!(
        size_groups(&small).iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 2]
    );
}

#[tokio::test]
async fn a_message_delivered_twice_is_forwarded_once_and_both_copies_deleted() {
    let (r, mut rx, metrics) = relay(MemQueues::default());
    let body = r#"{"id":"r0","t":1767225600}"#;
    let mut copy = msg(0, body);
    copy.receipt_handle = "rh0-again".into();
    // Two loops received the same message at once.
    let (a, b) = tokio::join!(r.relay_batch(vec![msg(0, body)]), async {
        tokio::task::yield_now().await;
        r.relay_batch(vec![copy.clone()]).await
    });
    let ((), ()) = (a, b);
    assert_eq!(r.queues.forwarded.lock().unwrap().clone(), vec!["m0"]);
    assert_eq!(counter(&metrics, RelayOutcome::Forwarded), 1);
    // Later, once more: forwarded already, so only deleted.
    r.relay_batch(vec![copy]).await;
    assert_eq!(r.queues.forwarded.lock().unwrap().len(), 1);
    assert!(r.queues.deleted.lock().unwrap().len() >= 2);
    assert_eq!(rx.recv().await.unwrap().len(), 1);
    assert!(rx.try_recv().is_err());
}
