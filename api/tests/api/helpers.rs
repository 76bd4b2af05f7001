//! `spawn_app`: the real api on free ports, with its own fresh database.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use rsvp_api::{cache::Cache, config::Settings, startup::Application};
use rsvp_contract::runtime::{database::MIGRATOR, settings::CommonSettings};
use rsvp_contract::testing::fresh_database;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub db: PgPool,
    pub cache: Cache,
    pub client: reqwest::Client,
    database_url: String,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with_redis(REDIS_URL).await
}

/// The api with its cache at `redis_url`: a closed port or a cut proxy is "Redis down".
pub async fn spawn_app_with_redis(redis_url: &str) -> TestApp {
    spawn_app_with(|settings| settings.redis_url = redis_url.into()).await
}

/// The api with settings changed by `configure`; writes are coalesced as in production.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    rsvp_contract::runtime::logging::init_logging();
    let (db, database_url) = fresh_database(&MIGRATOR).await;
    spawn_app_on(db, database_url, configure).await
}

/// One worker that waits long enough for every request of a test to join its batch.
pub async fn spawn_app_with_one_wide_batch() -> TestApp {
    spawn_app_with(|settings| {
        settings.write_workers = 1;
        settings.write_batch_max = 64;
        settings.write_batch_wait = Duration::from_millis(400);
    })
    .await
}

/// The api on `database_url`, whose pool the test keeps as `db`.
async fn spawn_app_on(db: PgPool, database_url: String, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings {
        common: CommonSettings {
            database_url: database_url.clone().into(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
        },
        analytics_database_url: None,
        redis_url: REDIS_URL.into(),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        admin_token: ADMIN_TOKEN.into(),
        database_max_connections: 8,
        redis_timeout: Duration::from_millis(250),
        request_timeout: Duration::from_secs(10),
        database_lock_timeout: Duration::from_secs(2),
        database_statement_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(10),
        max_connections: 10_000,
        write_coalescing: true,
        write_batch_max: 64,
        write_batch_wait: Duration::from_millis(2),
        write_workers: 4,
        idempotency_key_ttl: Duration::from_secs(24 * 3600),
        idempotency_prune_interval: Duration::from_secs(60),
    };
    configure(&mut settings);
    let app = Application::build(&settings).await.expect("build the api");
    let address = format!("http://127.0.0.1:{}", app.api_port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let cache = app.state().cache.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp { address, admin_address, db, cache, client: reqwest::Client::new(), database_url }
}

impl TestApp {
    /// A second api process on this app's database, as behind a load balancer.
    pub async fn another_instance(&self, configure: impl FnOnce(&mut Settings)) -> TestApp {
        spawn_app_on(self.db.clone(), self.database_url.clone(), configure).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    /// What the admin port's `/metrics` serves now.
    pub async fn scraped_metrics(&self) -> String {
        let response = self.client.get(format!("{}/metrics", self.admin_address)).send().await.expect("scrape");
        response.text().await.expect("metrics text")
    }

    pub async fn create_event_with(&self, body: &Value) -> Response {
        self.client.post(self.url("/events")).bearer_auth(ADMIN_TOKEN).json(body).send().await.expect("request")
    }

    /// A new event starting in a year; `capacity` null for unlimited.
    pub async fn create_event(&self, capacity: Option<i64>) -> Uuid {
        let response = self
            .create_event_with(&json!({"title": "Rust meetup", "starts_at": in_a_year(), "capacity": capacity}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        id_of(&response.json::<Value>().await.unwrap())
    }

    pub async fn create_rsvp_with(&self, event_id: Uuid, body: &Value) -> Response {
        self.post_json(&format!("/events/{event_id}/rsvps"), body).await
    }

    /// A going rsvp with `guests`; returns the response body (with its token).
    pub async fn create_rsvp(&self, event_id: Uuid, email: &str, guests: i64) -> Value {
        let response = self
            .create_rsvp_with(event_id, &json!({"name": "Ada", "email": email, "status": "going", "guests": guests}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    pub async fn patch_rsvp(&self, rsvp_id: Uuid, token: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(&format!("/rsvps/{rsvp_id}")))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn cancel_rsvp(&self, token: &str) -> Response {
        self.post_json("/rsvps/cancel", &json!({"token": token})).await
    }

    pub async fn delete_rsvp(&self, rsvp_id: Uuid, token: Option<&str>) -> Response {
        let mut request = self.client.delete(self.url(&format!("/rsvps/{rsvp_id}")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    pub async fn outbox_payloads(&self) -> Vec<Value> {
        sqlx::query_scalar("select payload from outbox order by id").fetch_all(&self.db).await.unwrap()
    }

    /// Row counts of the tables a write touches, to prove a rejected request wrote nothing.
    pub async fn written_rows(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "select (select count(*) from outbox), (select count(*) from rsvps),
                    (select coalesce(sum(seats_taken), 0)::bigint from events)",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// What the cache consumer does after publishing a change of `event_id`/`rsvp_id`.
    pub async fn invalidate(&self, event_id: Uuid, rsvp_id: Option<Uuid>) {
        let mut keys = vec![rsvp_contract::cache_keys::event_generation(event_id)];
        keys.extend(rsvp_id.map(rsvp_contract::cache_keys::rsvp_generation));
        self.cache.invalidate(&keys).await.expect("invalidate");
    }
}

pub fn in_a_year() -> String {
    (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339()
}

pub fn id_of(body: &Value) -> Uuid {
    body["id"].as_str().and_then(|id| id.parse().ok()).expect("a uuid id")
}

/// The id and token of a created rsvp, as its 201 answer gives them.
pub fn id_and_token_of(created: &Value) -> (Uuid, String) {
    (id_of(created), created["token"].as_str().expect("a token").to_owned())
}

/// Asserts the standard error body and returns its `fields`.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    body["error"]["fields"].clone()
}

/// Makes the `COMMIT` of every transaction that inserted a row of `table` matching
/// `condition` (on `new`; `true` for all) wait, in a deferred trigger, for advisory
/// lock 4242, which the returned connection holds until [`unblock_commits`].
pub async fn block_commits_inserting(db: &PgPool, table: &str, condition: &str) -> PgConnection {
    let mut holder = PgConnection::connect_with(&db.connect_options()).await.unwrap();
    sqlx::query("select pg_advisory_lock(4242)").execute(&mut holder).await.unwrap();
    sqlx::raw_sql(&format!(
        "create function wait_at_commit() returns trigger language plpgsql as
           $$ begin perform pg_advisory_xact_lock(4242); return null; end; $$;
         create constraint trigger wait_at_commit after insert on {table}
           deferrable initially deferred for each row
           when ({condition}) execute function wait_at_commit();"
    ))
    .execute(db)
    .await
    .unwrap();
    holder
}

/// Lets the commits [`block_commits_inserting`] holds go through.
pub async fn unblock_commits(holder: &mut PgConnection) {
    sqlx::query("select pg_advisory_unlock(4242)").execute(holder).await.unwrap();
}

/// Sessions waiting for an advisory lock of this test's database (`pg_locks` shows
/// every database's: the tests running beside this one have their own).
pub async fn advisory_lock_waiters(db: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_locks
         where locktype = 'advisory' and not granted
           and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// Waits, up to 10 s, until `count` sessions wait for an advisory lock.
pub async fn until_advisory_lock_waiters(db: &PgPool, count: i64, what: &str) {
    let waiting = async {
        while advisory_lock_waiters(db).await < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap_or_else(|_| panic!("timed out: {what}"));
}

/// Sessions of this test's database waiting for any lock (a row, an advisory lock).
pub async fn lock_waiters(db: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// Waits, up to 10 s, until `condition` holds.
pub async fn wait_for(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
