//! One rsvp's changes reach the topic in commit order, whichever write path made them
//! (a shared transaction, a transaction of its own) and whatever locks they waited
//! for: the real api writes, the real relay publishes, the test reads the topic back.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use reqwest::StatusCode;
use rskafka::client::partition::UnknownTopicHandling;
use rsvp_contract::CloudEvent;
use rsvp_relay::{
    leader::{self, Candidate},
    StepOutcome, Worker,
};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::helpers::{wait_until, Api, TestEnv, ADMIN_TOKEN, TOPIC};

/// Publishes every outbox row with the real relay's worker, stepped until each row
/// was published. Bounded waits: another test's open transaction on the shared server
/// holds the relay's watermark back for a moment.
async fn publish_everything(env: &TestEnv) {
    let brokers = env.broker.address();
    let mut settings = rsvp_relay::config::Settings::defaults(&env.db_url, &brokers);
    settings.kafka.topic = TOPIC.to_owned();
    settings.common.admin_addr = "127.0.0.1:0".parse().unwrap();
    let options = leader::connect_options(settings.common.database_url.expose()).unwrap();
    let candidate = Candidate::connect(&options, &settings.kafka.topic, settings.role_loss_timeout).await.unwrap();
    let leader = candidate.try_lead().await.unwrap().ok().expect("no other relay leads");
    let pool = rsvp_relay::pool::connect(&settings).await.unwrap();
    let mut worker = Worker::start(leader, settings, pool).await.unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from outbox").fetch_one(&env.db).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut published = 0;
    while published < rows {
        match worker.step().await.expect("relay step") {
            StepOutcome::Published { rows } => published += i64::try_from(rows).unwrap(),
            StepOutcome::Idle => {
                assert!(tokio::time::Instant::now() < deadline, "published {published} of {rows} rows");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    worker.resign().await;
}

/// A record as read back from the topic.
#[derive(Debug)]
struct Published {
    partition: i32,
    offset: i64,
    event: CloudEvent,
}

/// Every record of every partition, in offset order per partition.
async fn read_topic(env: &TestEnv) -> Vec<Published> {
    let mut published = Vec::new();
    for partition in 0..env.partitions {
        let client = env.kafka.partition_client(TOPIC, partition, UnknownTopicHandling::Retry).await.unwrap();
        let mut next = 0;
        loop {
            // From offset 0 and then from the offset after a whole fetched batch:
            // Tansu skips the rest of a batch a fetch starts inside of.
            let (records, high_watermark) = client.fetch_records(next, 1..10_000_000, 100).await.unwrap();
            for record in records {
                let value = record.record.value.as_deref().expect("a record value");
                let event: CloudEvent = serde_json::from_slice(value).expect("a CloudEvent");
                published.push(Published { partition, offset: record.offset, event });
                next = record.offset + 1;
            }
            if next >= high_watermark {
                break;
            }
        }
    }
    published
}

/// Each rsvp's versions in the order its partition carries them, first copies only (a
/// record published again keeps its ce_id).
fn versions_by_rsvp(published: &[Published]) -> BTreeMap<Uuid, Vec<(i64, String)>> {
    let mut seen = HashSet::new();
    let mut versions: BTreeMap<Uuid, Vec<(i64, String)>> = BTreeMap::new();
    let mut in_order: Vec<&Published> = published.iter().collect();
    in_order.sort_by_key(|p| (p.partition, p.offset));
    for record in in_order {
        if seen.insert(record.event.id) {
            let entry = versions.entry(record.event.data.id).or_default();
            entry.push((record.event.data.version, record.event.event_type.as_str().to_owned()));
        }
    }
    versions
}

fn strictly_increasing(versions: &[(i64, String)]) -> bool {
    versions.windows(2).all(|pair| pair[0].0 < pair[1].0)
}

/// Sessions of this database waiting for a lock (a row lock or an advisory lock).
async fn lock_waiters(db: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsvp_changed_by_a_shared_transaction_that_waited_for_a_locked_event_reaches_the_topic_in_commit_order() {
    // Arrange: events E1 < E2 < E3, rsvp r in E3; an api whose one lane gathers
    // concurrent writes into one transaction, and an api without coalescing.
    let env = TestEnv::start(3).await;
    let coalescing = Api::spawn_with(&env, &["--write-workers", "1", "--write-batch-wait", "500ms"]).await;
    let alone = Api::spawn_with(&env, &["--write-coalescing", "false"]).await;
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(alone.create_event(None).await);
    }
    events.sort();
    let (e1, e2, e3) = (events[0], events[1], events[2]);
    let (r, token) = alone.rsvp(e3, "r@example.com", "going", 1).await;
    let mut holder = PgConnection::connect(&env.db_url).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("select id from events where id = $1 for update").bind(e2).execute(&mut *held).await.unwrap();

    // Act: creates in E1 and E2 and a cancel of r share one transaction, which waits
    // for E2; meanwhile r is changed alone; then E2 is released.
    let shared = [
        (format!("/events/{e1}/rsvps"), json!({ "name": "One", "email": "one@example.com", "status": "going" })),
        (format!("/events/{e2}/rsvps"), json!({ "name": "Two", "email": "two@example.com", "status": "going" })),
        ("/rsvps/cancel".to_owned(), json!({ "token": token })),
    ];
    let mut shared_requests = tokio::task::JoinSet::new();
    for (path, body) in shared {
        let request = coalescing.http.post(format!("{}{path}", coalescing.url)).json(&body);
        shared_requests.spawn(async move { request.send().await.unwrap().status() });
    }
    wait_until(Duration::from_secs(10), "the shared transaction waits for E2", || async {
        lock_waiters(&env.db).await >= 1
    })
    .await;
    let update =
        alone.http.patch(format!("{}/rsvps/{r}", alone.url)).bearer_auth(&token).json(&json!({ "name": "Renamed" }));
    let update = tokio::spawn(async move { update.send().await.unwrap().status() });
    // The update either commits now (nothing orders it after the waiting transaction)
    // or waits for r's event behind that transaction.
    wait_until(Duration::from_secs(10), "the update committed or waits", || async {
        update.is_finished() || lock_waiters(&env.db).await >= 2
    })
    .await;
    held.rollback().await.unwrap();

    // Assert: every write succeeded, the three shared one transaction, and r's
    // versions are on the topic in increasing order.
    let statuses = shared_requests.join_all().await;
    assert!(statuses.iter().all(StatusCode::is_success), "shared writes: {statuses:?}");
    assert_eq!(update.await.unwrap(), StatusCode::OK);
    let shared_xids: i64 = sqlx::query_scalar(
        "select count(distinct xid) from outbox where event_type = 'RSVP_CANCELLED' or kafka_key in ($1, $2)",
    )
    .bind(e1.to_string())
    .bind(e2.to_string())
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(shared_xids, 1, "the creates in E1 and E2 and the cancel shared one transaction");
    publish_everything(&env).await;
    let versions = versions_by_rsvp(&read_topic(&env).await).remove(&r).expect("r's records");
    assert_eq!(versions.len(), 3, "{versions:?}");
    assert!(strictly_increasing(&versions), "r's versions in offset order: {versions:?}");
}

/// A small deterministic generator (splitmix64): the seed is printed, so a failing
/// run can be repeated with `ORDERING_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// Rsvps the writers share: id, token.
type Shared = Arc<Mutex<Vec<(Uuid, String)>>>;

/// One random write through `api`; panics on an answer a correct api never gives
/// (a 5xx: a deadlock or a failed transaction would show here).
async fn random_write(api: &Api, events: &[Uuid], rsvps: &Shared, rng: &mut Rng, n: usize) {
    let statuses = ["going", "maybe", "declined"];
    let pick = {
        let rsvps = rsvps.lock().unwrap();
        (!rsvps.is_empty()).then(|| rsvps[rng.below(rsvps.len())].clone())
    };
    let kind = rng.below(10);
    let response = match (kind, pick) {
        (0..=2, _) | (_, None) => {
            let event = events[rng.below(events.len())];
            let body = json!({ "name": "R", "email": format!("w{n}-{}@example.com", rng.next()), "status": statuses[rng.below(3)], "guests": rng.below(3) });
            let response = api.http.post(format!("{}/events/{event}/rsvps", api.url)).json(&body).send().await.unwrap();
            if response.status() == StatusCode::CREATED {
                let created: Value = response.json().await.unwrap();
                let id = created["id"].as_str().unwrap().parse().unwrap();
                rsvps.lock().unwrap().push((id, created["token"].as_str().unwrap().to_owned()));
                return;
            }
            response
        }
        (3..=6, Some((id, token))) => {
            let body = json!({ "status": statuses[rng.below(3)], "guests": rng.below(4) });
            api.http.patch(format!("{}/rsvps/{id}", api.url)).bearer_auth(token).json(&body).send().await.unwrap()
        }
        (7..=8, Some((_, token))) => {
            api.http.post(format!("{}/rsvps/cancel", api.url)).json(&json!({ "token": token })).send().await.unwrap()
        }
        (_, Some((id, _))) => {
            api.http.delete(format!("{}/rsvps/{id}", api.url)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()
        }
    };
    let status = response.status();
    // 404: deleted meanwhile; 409: cancelled twice or no seat left.
    assert!(
        status.is_success() || status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT,
        "unexpected {status}: {}",
        response.text().await.unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_shared_and_own_transactions_reach_the_topic_in_each_rsvps_version_order() {
    // Arrange: four events (two with few seats), rsvps shared by every writer, an api
    // with three lanes and a short batch wait, and one without coalescing.
    let seed = std::env::var("ORDERING_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand_seed);
    eprintln!("ORDERING_SEED={seed}");
    let env = TestEnv::start(3).await;
    let coalescing = Arc::new(Api::spawn_with(&env, &["--write-workers", "3", "--write-batch-wait", "5ms"]).await);
    let alone = Arc::new(Api::spawn_with(&env, &["--write-coalescing", "false"]).await);
    let events = vec![
        alone.create_event(None).await,
        alone.create_event(Some(12)).await,
        alone.create_event(None).await,
        alone.create_event(Some(20)).await,
    ];
    let rsvps: Shared = Arc::default();
    let mut rng = Rng(seed);
    for i in 0..12 {
        random_write(&alone, &events, &rsvps, &mut rng, i).await;
    }

    // Act: writers through both apis at once, while now and then a session holds an
    // event row for a moment (as a slow transaction would).
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let (db_url, events, stop) = (env.db_url.clone(), events.clone(), stop.clone());
        let mut rng = Rng(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut connection = PgConnection::connect(&db_url).await.unwrap();
            let mut holds = 0;
            while !stop.load(Ordering::SeqCst) {
                let event = events[rng.below(events.len())];
                let mut tx = connection.begin().await.unwrap();
                sqlx::query("select id from events where id = $1 for update")
                    .bind(event)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
                tx.rollback().await.unwrap();
                holds += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            holds
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let (api, events, rsvps) =
            (if w % 2 == 0 { coalescing.clone() } else { alone.clone() }, events.clone(), rsvps.clone());
        let mut rng = Rng(seed.wrapping_add(w + 1));
        writers.spawn(async move {
            for i in 0..30 {
                random_write(&api, &events, &rsvps, &mut rng, usize::try_from(w).unwrap() * 1000 + i).await;
            }
        });
    }
    let within = tokio::time::timeout(Duration::from_secs(120), writers.join_all()).await;
    stop.store(true, Ordering::SeqCst);
    within.expect("the writes finished within two minutes");
    let holds = holder.await.unwrap();
    publish_everything(&env).await;

    // Assert: every outbox row is on the topic, and each rsvp's versions increase in
    // offset order.
    let published = read_topic(&env).await;
    let on_topic: HashSet<Uuid> = published.iter().map(|p| p.event.id).collect();
    let rows: Vec<(Uuid, i64)> = sqlx::query_as("select message_id, id from outbox").fetch_all(&env.db).await.unwrap();
    let missing: Vec<i64> = rows.iter().filter(|(m, _)| !on_topic.contains(m)).map(|(_, id)| *id).collect();
    assert!(missing.is_empty(), "outbox rows not on the topic: {missing:?}");
    let versions = versions_by_rsvp(&published);
    let out_of_order: HashMap<&Uuid, &Vec<(i64, String)>> =
        versions.iter().filter(|(_, v)| !strictly_increasing(v)).collect();
    let changes = versions.values().filter(|v| v.len() > 1).count();
    eprintln!(
        "{} records, {} rsvps ({changes} changed after creation), {holds} event locks held",
        rows.len(),
        versions.len()
    );
    assert!(out_of_order.is_empty(), "rsvps whose versions are out of order on the topic: {out_of_order:?}");
}

fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    u64::try_from(nanos % u128::from(u64::MAX)).unwrap()
}
