//! Every record the real relay publishes matches docs/asyncapi.yaml, as the AsyncAPI
//! parser reads it (scripts/checks/asyncapi.sh).

use std::{path::PathBuf, time::Duration};

use rskafka::client::partition::UnknownTopicHandling;
use rsvp_relay::{config::Settings, startup::Application};
use serde_json::{json, Value};

use crate::helpers::{wait_until, Api, TestEnv, TOPIC};

/// Runs the check script on `records` (JSON lines); its success and output.
async fn check(records: &[Value]) -> (bool, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = std::env::temp_dir().join(format!("asyncapi-records-{}.ndjson", uuid::Uuid::new_v4()));
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = tokio::process::Command::new("bash")
        .arg(root.join("scripts/checks/asyncapi.sh"))
        .arg(&file)
        .output()
        .await
        .expect("run scripts/checks/asyncapi.sh");
    let _ = std::fs::remove_file(&file);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn text(bytes: Option<&[u8]>) -> Value {
    bytes.and_then(|b| std::str::from_utf8(b).ok()).map_or(Value::Null, |s| json!(s))
}

#[tokio::test]
async fn every_record_the_relay_publishes_validates_against_the_asyncapi_document() {
    // Arrange: every event type written through the api, one with a traceparent.
    let env = TestEnv::start(3).await;
    let api = Api::spawn(&env).await;
    let event = api.create_event(None).await;
    api.mixed_workload(event, 12).await;
    let body = json!({ "name": "Traced", "email": "traced@example.com", "status": "going", "guests": 0 });
    let response = api
        .http
        .post(format!("{}/events/{event}/rsvps", api.url))
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let rows: i64 = sqlx::query_scalar("select count(*) from outbox").fetch_one(&env.db).await.unwrap();

    // Act: the real relay publishes the outbox; read every record back.
    let mut settings = Settings::defaults(&env.db_url, &env.broker.address());
    settings.common.admin_addr = "127.0.0.1:0".parse().unwrap();
    settings.poll_interval = Duration::from_millis(100);
    let relay = Application::build(settings).await.expect("build the relay");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(relay.run_until(async move {
        let _ = stopped.await;
    }));
    wait_until(Duration::from_secs(30), "the relay published every outbox row", || async {
        env.records_on_topic().await == rows
    })
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), relay).await;
    let mut records = Vec::new();
    for partition in 0..env.partitions {
        let client = env.kafka.partition_client(TOPIC, partition, UnknownTopicHandling::Retry).await.unwrap();
        let mut offset = 0;
        loop {
            let (fetched, high_watermark) = client.fetch_records(offset, 1..10_000_000, 100).await.unwrap();
            for r in &fetched {
                let headers: serde_json::Map<String, Value> =
                    r.record.headers.iter().map(|(name, value)| (name.clone(), text(Some(value)))).collect();
                records.push(json!({
                    "partition": partition, "offset": r.offset, "key": text(r.record.key.as_deref()),
                    "headers": headers, "value": text(r.record.value.as_deref()),
                }));
            }
            offset = fetched.last().map_or(offset, |r| r.offset + 1);
            if offset >= high_watermark {
                break;
            }
        }
    }
    assert_eq!(records.len() as i64, rows);
    let types: std::collections::BTreeSet<&str> =
        records.iter().filter_map(|r| r["headers"]["ce_type"].as_str()).collect();
    assert_eq!(types.len(), 4, "every event type: {types:?}");
    assert!(records.iter().any(|r| r["headers"].get("traceparent").is_some()));

    // Assert: all valid; and the check does reject a record that breaks the contract.
    let (ok, output) = check(&records).await;
    assert!(ok, "{output}");
    let mut broken = records[0].clone();
    broken["headers"]["rsvp_version"] = json!("0");
    let (ok, output) = check(&[broken]).await;
    assert!(!ok && output.contains("headers"), "a record with rsvp_version 0 passed: {output}");
}
