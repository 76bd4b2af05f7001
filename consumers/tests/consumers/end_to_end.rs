//! The whole pipeline: the api writes, the real relay publishes, the consumers apply.

use std::time::{Duration, Instant};

use clap::Parser;
use rsvp_consumers::startup::Application;
use rsvp_contract::testing::undescribed_metrics;
use uuid::Uuid;

use crate::helpers::{totals, truth_and_stats, wait_until, Api, TestEnv, TOPIC};

async fn fresh(api: &Api, env: &TestEnv, event: Uuid, rsvp: Uuid) -> bool {
    let (truth, _) = truth_and_stats(&env.db, event).await;
    let detail = api.get(&format!("/events/{event}")).await;
    let counts = ["going", "maybe", "declined", "cancelled"].map(|s| detail["counts"][s].as_i64().unwrap());
    let listed = api.attendees(event).await.iter().any(|r| r["id"] == rsvp.to_string());
    counts.to_vec() == truth[..4] && detail["guests_going"].as_i64() == Some(truth[4]) && listed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_write_is_read_fresh_within_a_second_and_stats_match_the_rsvps_table_after_a_mixed_workload() {
    // Arrange: api, relay and both consumer groups on one database and broker.
    let env = TestEnv::start(6).await;
    let api = Api::spawn(&env).await;
    let brokers = env.broker.address();
    let relay_settings = rsvp_relay::config::Settings::try_parse_from([
        "rsvp-relay",
        "--database-url",
        &env.db_url,
        "--kafka-brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--partitions",
        "6",
        "--admin-addr",
        "127.0.0.1:0",
        // Other tests' transactions on the shared server hold the relay's watermark back
        // for moments; a notification that finds its row not yet eligible then waits
        // for the next poll.
        "--poll-interval",
        "200ms",
    ])
    .unwrap();
    let relay = rsvp_relay::startup::Application::build(relay_settings).await.unwrap();
    tokio::spawn(relay.run_until(std::future::pending()));
    let consumers = Application::build(&env.settings(&[]), true).await.unwrap();
    let admin_port = consumers.admin_port();
    tokio::spawn(consumers.run_until(std::future::pending()));
    let event = api.create_event(None).await;
    let (warmup, _) = api.rsvp(event, "warmup@example.com", "going", 1).await;
    wait_until(Duration::from_secs(20), "the pipeline is up", || fresh(&api, &env, event, warmup)).await;

    // Act and assert: each write is visible through the cache within a second.
    for i in 0..5 {
        api.get(&format!("/events/{event}")).await;
        api.get(&format!("/events/{event}/rsvps")).await;
        let (rsvp, _) = api.rsvp(event, &format!("e2e{i}@example.com"), ["going", "maybe"][i % 2], 2).await;
        let written = Instant::now();
        wait_until(Duration::from_secs(5), "the write is read fresh", || fresh(&api, &env, event, rsvp)).await;
        let read_fresh = written.elapsed();
        // The relay's receipt tells how much of that was the relay's.
        let relayed: f64 = sqlx::query_scalar(
            "select extract(epoch from r.published_at - o.created_at)::float8
             from outbox o join relay_row_receipts r on r.outbox_id = o.id order by o.id desc limit 1",
        )
        .fetch_one(&env.db)
        .await
        .unwrap();
        eprintln!("write {i}: published {:.1} ms after commit, read fresh after {read_fresh:?}", relayed * 1000.0);
        assert!(
            read_fresh < Duration::from_secs(1) || relayed > 0.9,
            "the consumers took {read_fresh:?} to apply a write the relay published after {relayed} s"
        );
    }
    api.mixed_workload(event, 18).await;
    wait_until(Duration::from_secs(20), "the statistics match the rsvps table", || async {
        let (truth, stats) = truth_and_stats(&env.db, event).await;
        stats == truth && totals(&env.db, event).await.0 == totals(&env.db, event).await.1
    })
    .await;
    // The three processes share this test's recorder: every metric has help text.
    let scrape = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(scrape.contains("# HELP consumer_processed_total ") && scrape.contains("# HELP relay_published_total "));
    assert_eq!(undescribed_metrics(&scrape), Vec::<String>::new(), "in\n{scrape}");
}
