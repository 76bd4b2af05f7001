//! An HTTP load generator for rsvp creates: fixed concurrency, fixed duration,
//! every latency recorded, progress on stderr.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http_body_util::BodyExt;
use hyper::{
    client::conn::http1::SendRequest,
    header::{CONTENT_TYPE, HOST},
    Request, StatusCode,
};
use hyper_util::rt::TokioIo;
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
///
/// Each client keeps one HTTP/1.1 connection of its own and sends its next request
/// when the answer to the last one is in, as a pooled client does, but without the
/// pool, the URL parsing and the JSON value per request: the load generator shares
/// the machine's two cores with the api and PostgreSQL, so what it spends per request
/// is taken from what it measures.
pub(crate) async fn create_rsvps(
    base: &str,
    events: Arc<Vec<Uuid>>,
    concurrency: usize,
    duration: Duration,
    keys: bool,
) -> LoadResult {
    let authority: Arc<str> = base.trim_start_matches("http://").trim_end_matches('/').into();
    let paths: Arc<Vec<String>> = Arc::new(events.iter().map(|event| format!("/events/{event}/rsvps")).collect());
    // Emails and keys are unique within a run by worker and count, and across runs
    // against the same database by this run's random part.
    let run: u128 = rand::random();
    let done = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(format!("{concurrency} clients"), done.clone(), None);
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (authority, paths, done) = (authority.clone(), paths.clone(), done.clone());
        workers.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut connection = None;
            let mut sent_count = 0usize;
            while Instant::now() < deadline {
                let path = &paths[(worker * 7919 + sent_count) % paths.len()];
                let body = format!(
                    r#"{{"email":"w{worker}-{sent_count}-{run:032x}@bench.example","name":"Bench","status":"going"}}"#
                );
                let mut request =
                    Request::post(path.as_str()).header(HOST, &*authority).header(CONTENT_TYPE, "application/json");
                if keys {
                    let key = Uuid::from_u64_pair((run >> 64) as u64 ^ worker as u64, (run as u64) ^ sent_count as u64);
                    request = request.header("idempotency-key", key.hyphenated().to_string());
                }
                let request = request.body(body).expect("a valid request");
                let sent = Instant::now();
                if post(&mut connection, &authority, request).await == Some(StatusCode::CREATED) {
                    latencies.push(sent.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
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

/// Sends `request` on `connection` and reads the whole answer: its status, or none
/// when the connection failed (it is then dropped, and the next request opens
/// another). A connection the server closed after its last answer (keep-alive ended)
/// is replaced before the request goes out: nothing was sent on it, so nothing failed.
async fn post(
    connection: &mut Option<SendRequest<String>>,
    authority: &str,
    request: Request<String>,
) -> Option<StatusCode> {
    if let Some(sender) = connection {
        if sender.ready().await.is_err() {
            *connection = None;
        }
    }
    if connection.is_none() {
        *connection = connect(authority).await.ok();
    }
    let sender = connection.as_mut()?;
    let answer = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    }
    .await;
    if answer.is_err() {
        *connection = None;
    }
    answer.ok()
}

/// An HTTP/1.1 connection to `authority`, its I/O driven by a task of its own.
async fn connect(authority: &str) -> anyhow::Result<SendRequest<String>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, sync::Mutex};

    use hyper::{body::Incoming, header::CONNECTION, server::conn::http1, service::service_fn, Response};

    use super::*;

    /// What the server saw of one request.
    struct Seen {
        path: String,
        content_type: Option<String>,
        key: Option<String>,
        email: String,
    }

    /// An HTTP/1.1 server on a port of its own that answers every request 201 and
    /// keeps what it saw. It ends each connection after its third answer
    /// (`Connection: close`), as a server ending keep-alive does.
    async fn recording_server() -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let answered = Arc::new(AtomicU64::new(0));
                let service = service_fn(move |request: Request<Incoming>| {
                    let (seen, answered) = (seen.clone(), answered.clone());
                    async move {
                        let header =
                            |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let (path, content_type, key) =
                            (request.uri().path().to_owned(), header(CONTENT_TYPE.as_str()), header("idempotency-key"));
                        let body = request.into_body().collect().await?.to_bytes();
                        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let email = body["email"].as_str().unwrap_or_default().to_owned();
                        seen.lock().expect("not poisoned").push(Seen { path, content_type, key, email });
                        let mut answer = Response::builder().status(StatusCode::CREATED);
                        if answered.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
                            answer = answer.header(CONNECTION, "close");
                        }
                        Ok::<_, hyper::Error>(answer.body(String::from("{}")).expect("a response"))
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        (base, recorded)
    }

    async fn load_with(keys: bool) -> (LoadResult, Vec<Seen>, Arc<Vec<Uuid>>) {
        let (base, seen) = recording_server().await;
        let events = Arc::new(vec![Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()]);
        let load = create_rsvps(&base, events.clone(), 4, Duration::from_millis(300), keys).await;
        let seen = std::mem::take(&mut *seen.lock().expect("not poisoned"));
        (load, seen, events)
    }

    #[tokio::test]
    async fn every_request_is_a_json_create_with_its_own_email_and_each_answer_is_counted() {
        let (load, seen, events) = load_with(false).await;
        assert!(load.ok > 12, "only {} creates", load.ok);
        assert_eq!(load.errors, 0, "the server's closed connections were replaced, not failed");
        assert_eq!(load.ok as usize, seen.len());
        let paths: HashSet<String> = events.iter().map(|event| format!("/events/{event}/rsvps")).collect();
        assert!(seen.iter().all(|s| paths.contains(&s.path)), "a request to another path");
        assert!(seen.iter().all(|s| s.content_type.as_deref() == Some("application/json")));
        assert!(seen.iter().all(|s| s.key.is_none()), "a key sent without keys");
        let emails: HashSet<&str> = seen.iter().map(|s| s.email.as_str()).collect();
        assert_eq!(emails.len(), seen.len(), "an email sent twice");
        assert!(emails.iter().all(|email| email.ends_with("@bench.example")));
    }

    #[tokio::test]
    async fn with_keys_every_request_carries_a_key_of_its_own() {
        let (load, seen, _) = load_with(true).await;
        assert_eq!(load.errors, 0);
        assert_eq!(load.ok as usize, seen.len());
        let keys: HashSet<&str> = seen.iter().map(|s| s.key.as_deref().expect("a key on every request")).collect();
        assert_eq!(keys.len(), seen.len(), "a key sent twice");
        assert!(keys.iter().all(|key| Uuid::parse_str(key).is_ok()), "keys are uuids, as clients send");
    }
}
