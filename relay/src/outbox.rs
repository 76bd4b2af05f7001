//! Reading outbox rows in commit order and turning them into Kafka records.

use std::{borrow::Cow, collections::BTreeMap};

use chrono::{DateTime, Utc};
use rskafka::record::Record;
use rsvp_contract::{event::DATA_CONTENT_TYPE, event::SPEC_VERSION, headers};
use sqlx::{postgres::PgRow, PgPool, Row};
use serde::Deserialize;
use uuid::Uuid;

/// A position in commit order: the writing transaction, then the row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub xid: u64,
    pub id: i64,
}

impl Position {
    /// `xid8` travels as text: sqlx has no type for it.
    pub fn xid_text(&self) -> String {
        self.xid.to_string()
    }
}

/// One outbox row with what its Kafka record needs.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub position: Position,
    pub kafka_key: String,
    pub message_id: Uuid,
    pub event_type: String,
    pub rsvp_version: i64,
    pub payload: String,
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub specversion: Option<String>,
    pub source: Option<String>,
    pub time: Option<String>,
    pub content_type: Option<String>,
    /// A receipt already exists for the relay's topic: acknowledged in an earlier step.
    pub published: bool,
}

/// An outbox row's columns as a read selects them (see [`select_rows`]).
pub struct SelectedRow {
    pub id: i64,
    /// `xid8` as text: sqlx has no type for it.
    pub xid: String,
    pub kafka_key: String,
    pub message_id: Uuid,
    pub event_type: String,
    pub rsvp_version: i64,
    pub payload: String,
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `select <row columns> from outbox o <rest>`, for the reads whose condition is
/// composed at run time (replays); [`read_eligible`] spells the same columns out in
/// its checked statements. The header fields inside the payload are picked out in
/// Rust rather than with `->>` in SQL: four jsonb lookups per row cost Postgres more
/// than the whole rest of the read (measured on 1000-row pages).
pub fn select_rows(rest: &str) -> String {
    format!(
        "select o.id, o.xid::text as xid, o.kafka_key, o.message_id, o.event_type, o.rsvp_version,
                o.payload::text as payload, o.traceparent, o.created_at
           from outbox o {rest}"
    )
}

/// The CloudEvent attributes that also travel as headers; every other field is skipped.
#[derive(Debug, Default, Deserialize)]
struct HeaderFields<'a> {
    #[serde(borrow)]
    specversion: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    datacontenttype: Option<Cow<'a, str>>,
}

impl<'a> HeaderFields<'a> {
    /// A payload that is not an object with string attributes gets the defaults.
    fn of(payload: &'a str) -> Self {
        serde_json::from_str(payload).unwrap_or_default()
    }
}

impl OutboxRow {
    /// A row of a [`select_rows`] statement.
    pub fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Self::from_selected(SelectedRow {
            id: row.try_get("id")?,
            xid: row.try_get("xid")?,
            kafka_key: row.try_get("kafka_key")?,
            message_id: row.try_get("message_id")?,
            event_type: row.try_get("event_type")?,
            rsvp_version: row.try_get("rsvp_version")?,
            payload: row.try_get("payload")?,
            traceparent: row.try_get("traceparent")?,
            created_at: row.try_get("created_at")?,
        })
    }

    pub fn from_selected(row: SelectedRow) -> Result<Self, sqlx::Error> {
        let xid = row.xid.parse::<u64>().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let fields = HeaderFields::of(&row.payload);
        let (specversion, source, time, content_type) = (
            fields.specversion.map(Cow::into_owned),
            fields.source.map(Cow::into_owned),
            fields.time.map(Cow::into_owned),
            fields.datacontenttype.map(Cow::into_owned),
        );
        Ok(Self {
            position: Position { xid, id: row.id },
            kafka_key: row.kafka_key,
            message_id: row.message_id,
            event_type: row.event_type,
            rsvp_version: row.rsvp_version,
            traceparent: row.traceparent,
            created_at: row.created_at,
            specversion,
            source,
            time,
            content_type,
            payload: row.payload,
            published: false,
        })
    }

    /// The Kafka record: key = event id, value = the CloudEvent JSON, CloudEvents
    /// binary-mode headers plus `rsvp_version`. Identical on every publish and replay.
    pub fn to_record(&self) -> Record {
        self.record_with(self.kafka_key.as_bytes().to_vec(), self.payload.as_bytes().to_vec())
    }

    /// [`Self::to_record`] without copying the key and payload: they move into the
    /// record and the row keeps only what the publishing step still needs.
    pub fn take_record(&mut self) -> Record {
        let (key, value) = (std::mem::take(&mut self.kafka_key), std::mem::take(&mut self.payload));
        self.record_with(key.into_bytes(), value.into_bytes())
    }

    fn record_with(&self, key: Vec<u8>, value: Vec<u8>) -> Record {
        let mut h: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut put = |name: &str, value: &str| {
            h.insert(name.to_owned(), value.as_bytes().to_vec());
        };
        put(headers::CE_SPECVERSION, self.specversion.as_deref().unwrap_or(SPEC_VERSION));
        put(headers::CE_ID, &self.message_id.to_string());
        put(headers::CE_TYPE, &self.event_type);
        if let Some(source) = &self.source {
            put(headers::CE_SOURCE, source);
        }
        if let Some(time) = &self.time {
            put(headers::CE_TIME, time);
        }
        put(headers::CONTENT_TYPE, self.content_type.as_deref().unwrap_or(DATA_CONTENT_TYPE));
        if let Some(traceparent) = &self.traceparent {
            put(headers::TRACEPARENT, traceparent);
        }
        put(headers::RSVP_VERSION, &self.rsvp_version.to_string());
        Record { key: Some(key), value: Some(value), headers: h,
            timestamp: self.created_at,
        }
    }
}

/// Which rows a read may return: one generation, the rows written on `cluster` with
/// an id from `since_id` on (see `docs/relay.md`, "Restores and moves").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub cluster: i64,
    pub since_id: i64,
    /// The rows were written on another cluster than the one the relay reads from:
    /// all of them are committed, and their xids are not comparable with this
    /// cluster's snapshot.
    pub earlier_cluster: bool,
}

/// Up to `limit` rows of `scope` after `after` in commit order. On the current
/// cluster, only rows from transactions older than every transaction still open:
/// such a row can no longer be joined by a row that sorts before it. Rows up to
/// `receipts_until` are checked for a receipt of `topic` (see
/// [`crate::store::Cursor::receipts_ahead`]); later rows cannot have one.
#[tracing::instrument(skip_all, fields(after_id = after.id, limit, earlier_cluster = scope.earlier_cluster), err)]
pub async fn read_eligible(
    db: &PgPool,
    topic: &str,
    scope: Scope,
    after: Position,
    limit: u32,
    receipts_until: Option<Position>,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    // Two texts rather than one with a flag: a generic plan of `$flag or xid < xmin`
    // could no longer bound the index scan by the snapshot. The generation test is
    // wrapped in a `case`, which the planner cannot estimate and so takes as
    // unselective: as `written_on = $4 and id >= $5` it was estimated to keep 0.5% of
    // the rows of a table without statistics yet (a fresh restore, a bulk load), and
    // the planner then sorted the whole backlog on every read (200k rows: 1 s a read,
    // the drain 6x slower) instead of walking the (xid, id) index.
    let rows = if scope.earlier_cluster {
        sqlx::query_as!(
            SelectedRow,
            r#"select o.id, o.xid::text as "xid!", o.kafka_key, o.message_id, o.event_type, o.rsvp_version,
                      o.payload::text as "payload!", o.traceparent, o.created_at
                 from outbox o
                where (o.xid, o.id) > ($1::text::xid8, $2)
                  and case when o.written_on = $4 then o.id >= $5 else false end
                order by o.xid, o.id
                limit $3"#,
            after.xid_text(),
            after.id,
            i64::from(limit),
            scope.cluster,
            scope.since_id,
        )
        .fetch_all(db)
        .await?
    } else {
        sqlx::query_as!(
            SelectedRow,
            r#"select o.id, o.xid::text as "xid!", o.kafka_key, o.message_id, o.event_type, o.rsvp_version,
                      o.payload::text as "payload!", o.traceparent, o.created_at
                 from outbox o
                where (o.xid, o.id) > ($1::text::xid8, $2)
                  and o.xid < pg_snapshot_xmin(pg_current_snapshot())
                  and case when o.written_on = $4 then o.id >= $5 else false end
                order by o.xid, o.id
                limit $3"#,
            after.xid_text(),
            after.id,
            i64::from(limit),
            scope.cluster,
            scope.since_id,
        )
        .fetch_all(db)
        .await?
    };
    let mut rows: Vec<OutboxRow> = rows.into_iter().map(OutboxRow::from_selected).collect::<Result<_, _>>()?;
    let Some(until) = receipts_until else { return Ok(rows) };
    // A separate lookup: every receipt holding a row after `after` ends after it,
    // which the receipts' (topic, last row) index finds without older receipts.
    if rows.first().is_some_and(|row| row.position <= until) {
        let published: Vec<i64> = sqlx::query_scalar!(
            r#"select unnest(outbox_ids) as "id!" from relay_receipts where topic = $1 and (last_xid, last_id) > ($2::text::xid8, $3)"#,
            topic,
            after.xid_text(),
            after.id,
        )
        .fetch_all(db)
        .await?;
        let published: std::collections::HashSet<i64> = published.into_iter().collect();
        for row in rows.iter_mut().take_while(|row| row.position <= until) {
            row.published = published.contains(&row.position.id);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(traceparent: Option<&str>) -> OutboxRow {
        OutboxRow {
            position: Position { xid: 7, id: 3 },
            kafka_key: "e1".into(),
            message_id: Uuid::nil(),
            event_type: "RSVP_CREATED".into(),
            rsvp_version: 4,
            payload: r#"{"id": "x"}"#.into(),
            traceparent: traceparent.map(str::to_owned),
            created_at: Utc::now(),
            specversion: Some("1.0".into()),
            source: Some("/rsvp-api".into()),
            time: Some("2026-11-28T10:00:00Z".into()),
            content_type: None,
            published: false,
        }
    }

    #[test]
    fn records_carry_the_cloudevents_headers_and_the_rsvp_version() {
        let record = row(Some("00-abc-def-01")).to_record();
        let header = |name: &str| String::from_utf8(record.headers[name].clone()).unwrap();
        assert_eq!(record.key.as_deref(), Some(&b"e1"[..]));
        assert_eq!(header("ce_id"), Uuid::nil().to_string());
        assert_eq!(header("ce_type"), "RSVP_CREATED");
        assert_eq!(header("ce_specversion"), "1.0");
        assert_eq!(header("ce_source"), "/rsvp-api");
        assert_eq!(header("ce_time"), "2026-11-28T10:00:00Z");
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("traceparent"), "00-abc-def-01");
        assert_eq!(header("rsvp_version"), "4");
    }

    #[test]
    fn header_fields_come_from_the_payload_and_default_when_it_is_not_an_object() {
        let fields = HeaderFields::of(r#"{"specversion":"1.0","data":{"source":"no"},"source":"/rsvp-api","time":"t"}"#);
        assert_eq!(fields.specversion.as_deref(), Some("1.0"));
        assert_eq!(fields.source.as_deref(), Some("/rsvp-api"));
        assert_eq!(fields.time.as_deref(), Some("t"));
        assert_eq!(fields.datacontenttype, None);
        assert_eq!(HeaderFields::of("[1, 2]").source, None);
        assert_eq!(HeaderFields::of(r#"{"source": 7}"#).source, None);
    }

    #[test]
    fn a_taken_record_equals_the_copied_one() {
        let mut row = row(Some("00-abc-def-01"));
        let copied = row.to_record();
        assert_eq!(row.take_record(), copied);
        assert!(row.payload.is_empty() && row.kafka_key.is_empty());
    }

    #[test]
    fn records_without_a_traceparent_have_no_traceparent_header() {
        assert!(!row(None).to_record().headers.contains_key("traceparent"));
    }
}
