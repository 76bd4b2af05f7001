//! Moving the database: a pg_dump/pg_restore into a second PostgreSQL cluster that the
//! test starts itself, and a cursor that cannot belong to the database it is in.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use rsvp_contract::testing::{self, Broker};
use rsvp_relay::{
    leader::{self, Candidate},
    observe::Observer,
};
use sqlx::{postgres::PgPoolOptions, Connection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::helpers::*;

/// The PostgreSQL server binaries: `$PG_BIN`, else Debian's place for version 15.
fn pg_bin(name: &str) -> PathBuf {
    Path::new(&std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())).join(name)
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A server command; as root it runs as the `postgres` user (initdb refuses root).
fn server_command(name: &str) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        command
    } else {
        Command::new(pg_bin(name))
    }
}

fn run(mut command: Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A second PostgreSQL cluster (its own initdb, so its own system identifier and
/// transaction ids) on a free port; stopped and removed on drop.
struct SecondCluster {
    dir: PathBuf,
    port: u16,
}

impl SecondCluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("rsvp-second-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        if running_as_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(&dir);
                    c
                },
                "chown the cluster directory",
            );
        }
        let cluster = Self { dir, port: testing::free_port() };
        let data = cluster.dir.join("data");
        let mut initdb = server_command("initdb");
        initdb.arg("-D").arg(&data).args(["-U", "root", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]);
        run(initdb, "initdb");
        let mut start = server_command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", cluster.port, cluster.dir.display()))
            .arg("start");
        run(start, "pg_ctl start");
        cluster
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://root@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for SecondCluster {
    fn drop(&mut self) {
        let mut stop = server_command("pg_ctl");
        stop.arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next transaction id of the cluster `pool` is on.
async fn next_xid(pool: &PgPool) -> u64 {
    let xid: String =
        sqlx::query_scalar("select pg_snapshot_xmax(pg_current_snapshot())::text").fetch_one(pool).await.unwrap();
    xid.parse().unwrap()
}

/// Uses up transaction ids until the cluster's next one is at least `at_least`: one
/// subtransaction per id, all in one statement.
async fn burn_xids_until(pool: &PgPool, at_least: u64) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("create temp table if not exists burnt (x int)").execute(&mut *conn).await.unwrap();
    while next_xid(pool).await < at_least {
        let missing = at_least.saturating_sub(next_xid(pool).await).min(50_000) as i32;
        sqlx::query(&format!(
            "do $$ begin for i in 1..{missing} loop
                 begin insert into burnt values (i); exception when others then null; end;
             end loop; end $$"
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
    }
}

/// One row per event, for each version in `versions`, one transaction per row.
async fn write_versions(pool: &PgPool, events: &[Uuid], versions: std::ops::RangeInclusive<i64>) -> Vec<Written> {
    let mut written = Vec::new();
    for version in versions {
        for event in events {
            let mut tx: Transaction<'_, Postgres> = pool.begin().await.unwrap();
            written.push(append(&mut tx, *event, version).await);
            tx.commit().await.unwrap();
        }
    }
    written
}

#[tokio::test]
async fn after_a_restore_into_another_cluster_every_row_reaches_the_topic_in_order_per_key_and_the_move_is_counted() {
    // Arrange: the first cluster's transaction ids well ahead of the second's, as
    // after any real use, so that rows written after the restore sort below the cursor.
    let broker = Broker::start().await;
    let first = fresh_db().await;
    let second = SecondCluster::start();
    let mut admin = sqlx::PgConnection::connect(&second.url("postgres")).await.expect("connect to the second cluster");
    let second_start =
        next_xid(&PgPoolOptions::new().max_connections(1).connect(&second.url("postgres")).await.unwrap()).await;
    burn_xids_until(&first.pool, second_start + 20_000).await;

    // A published part and an unpublished part on the first cluster.
    let events: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let first_settings = settings(&first, &broker.address());
    let mut written = write_versions(&first.pool, &events, 1..=3).await;
    let mut worker = leader_worker(&first_settings).await;
    drain(&mut worker, written.len()).await;
    worker.resign().await;
    written.extend(write_versions(&first.pool, &events, 4..=6).await);

    // pg_dump -Fc | pg_restore into the second cluster.
    let dump = second.dir.join("rsvp.dump");
    run(
        {
            let mut c = Command::new("pg_dump");
            c.args(["-Fc", "-f"]).arg(&dump).arg(&first.url);
            c
        },
        "pg_dump",
    );
    sqlx::query("create database rsvp").execute(&mut admin).await.unwrap();
    run(
        {
            let mut c = Command::new("pg_restore");
            c.args(["--no-owner", "-d", &second.url("rsvp")]).arg(&dump);
            c
        },
        "pg_restore",
    );
    let pool = PgPoolOptions::new().max_connections(10).connect(&second.url("rsvp")).await.unwrap();
    let moved = TestDb { pool: pool.clone(), url: second.url("rsvp") };
    let cursor_xid: String = sqlx::query_scalar("select xid::text from relay_cursors").fetch_one(&pool).await.unwrap();
    assert!(
        cursor_xid.parse::<u64>().unwrap() > next_xid(&pool).await + 1_000,
        "the restored cursor is ahead of every transaction id of the second cluster"
    );

    // Act: more rows of the same events on the second cluster (small xids), before
    // and while a relay runs there against the same topic.
    written.extend(write_versions(&pool, &events, 7..=8).await);
    let seen = Observer::new(pool.clone(), "rsvp-events", Duration::from_secs(5)).tick().await.unwrap();
    assert_eq!(
        (seen.backlog_rows, seen.earlier_cluster_rows),
        (20, 12),
        "the backlog shows the rows from before and after the move"
    );
    let relay = RunningRelay::start(settings(&moved, &broker.address())).await;
    written.extend(write_versions(&pool, &events, 9..=10).await);
    wait_until_drained(&pool, Duration::from_secs(30)).await;
    let moves = scrape(relay.admin_port, "relay_cluster_moves_total").await;
    eventually(Duration::from_secs(10), "outbox_backlog_rows and outbox_earlier_cluster_rows 0", || async {
        let backlog = scrape(relay.admin_port, "outbox_backlog_rows").await;
        let earlier = scrape(relay.admin_port, "outbox_earlier_cluster_rows").await;
        (backlog == Some(0.0) && earlier == Some(0.0)).then_some(())
    })
    .await;
    relay.stop().await;

    // Assert: every row once or more, in order per key; the move seen and counted.
    let records = read_topic(&broker.address(), "rsvp-events").await;
    let acknowledged = receipts(&pool).await;
    assert_nothing_lost(&records, &written, &acknowledged);
    assert_eq!(acknowledged.len(), written.len(), "every row has a receipt on the new cluster");
    assert!(moves.unwrap_or(0.0) >= 1.0, "relay_cluster_moves_total counts the move: {moves:?}");
    let (clean, summary) = run_command(&settings(&moved, &broker.address()), &["audit"]).await;
    assert!(clean, "audit on the new cluster: {summary}");
}

#[tokio::test]
async fn a_cursor_ahead_of_every_transaction_of_its_cluster_makes_the_relay_refuse_and_say_so() {
    // Arrange: rows to publish, and a cursor at a transaction this cluster has not
    // reached (what a restore of another cluster's data looks like without its cluster).
    let broker = Broker::start().await;
    let db = fresh_db().await;
    let settings = settings(&db, &broker.address());
    write_rows(&db.pool, 2, 2).await;
    let ahead = (next_xid(&db.pool).await + 1_000_000).to_string();
    sqlx::query("insert into relay_cursors (name, xid, id) values ('rsvp-events', $1::xid8, 0)")
        .bind(&ahead)
        .execute(&db.pool)
        .await
        .unwrap();

    // Act
    let relay = RunningRelay::start(settings.clone()).await;
    let options = leader::connect_options(settings.common.database_url.expose()).unwrap();
    let pool = rsvp_relay::pool::connect(&settings).await.unwrap();

    // Assert: not ready, the gauge and the error counter say why, nothing published.
    let readiness: serde_json::Value = eventually(Duration::from_secs(10), "/readyz to report the cursor", || async {
        let response = reqwest::get(format!("http://127.0.0.1:{}/readyz", relay.admin_port)).await.ok()?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.ok()?;
        (status == reqwest::StatusCode::SERVICE_UNAVAILABLE && body["checks"]["cursor"] == "down").then_some(body)
    })
    .await;
    assert_eq!(readiness["checks"]["postgres"], "up");
    eventually(Duration::from_secs(10), "relay_cursor_impossible 1", || async {
        (scrape(relay.admin_port, "relay_cursor_impossible").await == Some(1.0)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "a relay_errors_total{kind=\"cursor\"}", || async {
        let body =
            reqwest::get(format!("http://127.0.0.1:{}/metrics", relay.admin_port)).await.ok()?.text().await.ok()?;
        body.lines().any(|l| l.starts_with("relay_errors_total{kind=\"cursor\"}")).then_some(())
    })
    .await;
    relay.stop().await;
    let candidate = Candidate::connect(&options, &settings.kafka.topic, settings.role_loss_timeout).await.unwrap();
    let leader = candidate.try_lead().await.unwrap().ok().expect("no other relay leads");
    let error = match rsvp_relay::Worker::start(leader, settings.clone(), pool).await {
        Ok(_) => panic!("the relay leads from a cursor ahead of its cluster"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("docs/RUNBOOK.md#moving-the-database"), "the error names the runbook section: {error}");
    assert!(error.contains(&ahead), "the error names the cursor's transaction: {error}");
    assert!(read_topic(&broker.address(), "rsvp-events").await.is_empty(), "nothing published");
    let stored: String = sqlx::query_scalar("select xid::text from relay_cursors").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stored, ahead, "the cursor stays where it was");
}

/// A fresh database on the first cluster with the migrations from before outbox rows
/// recorded their cluster: what a dump taken before that upgrade holds.
async fn database_before_generations() -> TestDb {
    let server = testing::test_server_url();
    let name = format!("test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!(r#"create database "{name}""#)).execute(&mut admin).await.unwrap();
    let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
    let pool = PgPoolOptions::new().max_connections(5).connect(&url).await.unwrap();
    // The migrator's fields are what sqlx::migrate! fills in; a prefix of its list is
    // the schema of an older release.
    let older = sqlx::migrate::Migrator {
        migrations: rsvp_contract::runtime::database::MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version < 20261201000002)
            .cloned()
            .collect(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    older.run(&pool).await.unwrap();
    TestDb { pool, url }
}

#[tokio::test]
async fn a_database_restored_before_the_cluster_migration_is_drained_as_a_move() {
    // Arrange: an older release's database on the first cluster, well ahead in xids,
    // with a cursor halfway (rows up to it count as published).
    let broker = Broker::start().await;
    let second = SecondCluster::start();
    let mut admin = sqlx::PgConnection::connect(&second.url("postgres")).await.expect("connect to the second cluster");
    let second_start =
        next_xid(&PgPoolOptions::new().max_connections(1).connect(&second.url("postgres")).await.unwrap()).await;
    let first = database_before_generations().await;
    burn_xids_until(&first.pool, second_start + 20_000).await;
    let events: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let written = write_versions(&first.pool, &events, 1..=3).await;
    let (published, mut pending) = (written[..6].to_vec(), written[6..].to_vec());
    sqlx::query("insert into relay_cursors (name, xid, id) select 'rsvp-events', xid, id from outbox where id = $1")
        .bind(published.last().unwrap().id)
        .execute(&first.pool)
        .await
        .unwrap();

    // Act: dump, restore into the second cluster, and run this release there (its
    // migrations run at start), with more writes.
    let dump = second.dir.join("older.dump");
    run(
        {
            let mut c = Command::new("pg_dump");
            c.args(["-Fc", "-f"]).arg(&dump).arg(&first.url);
            c
        },
        "pg_dump",
    );
    sqlx::query("create database rsvp").execute(&mut admin).await.unwrap();
    run(
        {
            let mut c = Command::new("pg_restore");
            c.args(["--no-owner", "-d", &second.url("rsvp")]).arg(&dump);
            c
        },
        "pg_restore",
    );
    let moved = TestDb {
        pool: PgPoolOptions::new().max_connections(10).connect(&second.url("rsvp")).await.unwrap(),
        url: second.url("rsvp"),
    };
    let relay = RunningRelay::start(settings(&moved, &broker.address())).await;
    pending.extend(write_versions(&moved.pool, &events, 4..=5).await);
    wait_until_drained(&moved.pool, Duration::from_secs(30)).await;
    let moves = scrape(relay.admin_port, "relay_cluster_moves_total").await;
    relay.stop().await;

    // Assert: the rows after the cursor, old and new, once or more and in order per key.
    let records = read_topic(&broker.address(), "rsvp-events").await;
    assert_nothing_lost(&records, &pending, &receipts(&moved.pool).await);
    assert!(moves.unwrap_or(0.0) >= 1.0, "relay_cluster_moves_total counts the move: {moves:?}");
}
