//! An HTTP load generator for rsvp creates: fixed concurrency, fixed duration,
//! every latency recorded, progress on stderr.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::json;
use uuid::Uuid;

pub(crate) struct LoadResult {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    /// Sorted latencies of successful requests, in microseconds.
    pub(crate) latencies_us: Vec<u64>,
}

impl LoadResult {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        percentile_us(&self.latencies_us, p) as f64 / 1000.0
    }
}

/// The `p`th percentile (0..=100) of sorted microseconds; 0 for none.
pub(crate) fn percentile_us(sorted: &[u64], p: f64) -> u64 {
    percentile(sorted, p).unwrap_or(0)
}

/// The `p`th percentile (0..=100) of sorted values, by the nearest rank; none for none.
pub(crate) fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = ((p / 100.0) * last as f64).round() as usize;
    Some(sorted[rank.min(last)])
}

/// Prints `label: N done, R/s` every second until dropped.
pub(crate) struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    pub(crate) fn start(label: String, done: Arc<AtomicU64>, total: Option<u64>) -> Self {
        Self(tokio::spawn(async move {
            let started = Instant::now();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let finished = done.load(Ordering::Relaxed);
                let rate = finished as f64 / started.elapsed().as_secs_f64();
                match total {
                    Some(total) => eprint!(
                        "\r  {label}: {finished}/{total} ({:.0}%), {rate:.0}/s   ",
                        100.0 * finished as f64 / total.max(1) as f64
                    ),
                    None => eprint!("\r  {label}: {finished} done, {rate:.0}/s   "),
                }
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
        eprintln!();
    }
}

/// `concurrency` clients POST going rsvps with unique emails to `events` for `duration`;
/// with `keys`, each request carries its own `Idempotency-Key`, as a client that
/// retries safely sends it.
pub(crate) async fn create_rsvps(
    base: &str,
    events: Arc<Vec<Uuid>>,
    concurrency: usize,
    duration: Duration,
    keys: bool,
) -> LoadResult {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("http client");
    let done = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(format!("{concurrency} clients"), done.clone(), None);
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (client, events, done, base) = (client.clone(), events.clone(), done.clone(), base.to_owned());
        workers.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut sent_count = 0usize;
            while Instant::now() < deadline {
                let event = events[(worker * 7919 + sent_count) % events.len()];
                let body = json!({"name": "Bench", "email": format!("w{worker}-{sent_count}-{}@bench.example", Uuid::new_v4().simple()), "status": "going"});
                let sent = Instant::now();
                let mut request = client.post(format!("{base}/events/{event}/rsvps")).json(&body);
                if keys {
                    request = request.header("idempotency-key", Uuid::new_v4().to_string());
                }
                let response = request.send().await;
                match response {
                    Ok(answer) if answer.status() == reqwest::StatusCode::CREATED => {
                        latencies.push(sent.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => errors += 1,
                }
                sent_count += 1;
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for (latencies, worker_errors) in workers.join_all().await {
        all.extend(latencies);
        errors += worker_errors;
    }
    all.sort_unstable();
    LoadResult { ok: all.len() as u64, errors, elapsed: started.elapsed(), latencies_us: all }
}
