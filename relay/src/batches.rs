//! Cutting a step's rows into one record batch per partition, each below the batch
//! limit by its exact encoded size, all of them together below the step limit.

use std::collections::BTreeMap;

use rskafka::record::Record;

use crate::{batch_size::BatchSize, outbox::OutboxRow};

/// The records one partition gets in a step, in commit order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Indexes of the batch's rows in the step's rows.
    pub indexes: Vec<usize>,
    pub records: Vec<Record>,
    /// Encoded size, as [`crate::batch_size`] computes it.
    pub size: BatchSize,
}

/// A step's rows cut to what is published now.
#[derive(Debug)]
pub struct Plan {
    /// The partition of every kept row.
    pub partition_of: Vec<i32>,
    pub batches: BTreeMap<i32, Batch>,
}

/// Keeps the longest prefix of `rows` whose batches stay within `max_batch_bytes` each
/// and `max_step_bytes` together, and moves the unpublished rows' records into
/// batches. A prefix, so that the cursor can pass every row kept; always at least one
/// unpublished row, so that a row larger than the limit still goes alone rather than
/// never (the broker then says whether it takes it).
pub fn plan(rows: &mut Vec<OutboxRow>, partitions: i32, max_batch_bytes: usize, max_step_bytes: usize) -> Plan {
    let mut partition_of = Vec::with_capacity(rows.len());
    let mut batches: BTreeMap<i32, Batch> = BTreeMap::new();
    let mut step_bytes = 0;
    let mut keep = rows.len();
    for (index, row) in rows.iter_mut().enumerate() {
        let partition = row.message.partition(partitions);
        if !row.published {
            // Moves key and payload out: a row cut here is read again in a later step.
            let record = row.message.take_record();
            let batch = batches.entry(partition).or_default();
            let batch_bytes = batch.size.with(&record);
            let grown_step = step_bytes - batch.size.bytes() + batch_bytes;
            let first = step_bytes == 0;
            if !first && (batch_bytes > max_batch_bytes || grown_step > max_step_bytes) {
                keep = index;
                break;
            }
            batch.size.push(&record);
            batch.indexes.push(index);
            batch.records.push(record);
            step_bytes = grown_step;
        }
        partition_of.push(partition);
    }
    rows.truncate(keep);
    batches.retain(|_, batch| !batch.records.is_empty());
    Plan { partition_of, batches }
}

/// Cuts one partition's `records` (in commit order) into consecutive batches of at most
/// `max_batch_bytes` each by encoded size; a record larger than the limit goes alone.
/// For callers that send a partition's batches one after the other (replay), which
/// keeps their order.
pub fn chunks(records: Vec<Record>, max_batch_bytes: usize) -> Vec<Vec<Record>> {
    let mut chunks: Vec<Vec<Record>> = Vec::new();
    let mut size = BatchSize::default();
    for record in records {
        if chunks.is_empty() || size.with(&record) > max_batch_bytes {
            chunks.push(Vec::new());
            size = BatchSize::default();
        }
        size.push(&record);
        chunks.last_mut().expect("a chunk was just pushed").push(record);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use rsvp_contract::{
        outbox_record::{OutboxColumns, OutboxMessage},
        partitioner::partition_for_key,
    };

    use super::*;
    use crate::{batch_size, outbox::Position};

    fn row(id: i64, key: &str, payload_len: usize) -> OutboxRow {
        let message = OutboxMessage::from_columns(OutboxColumns {
            kafka_key: key.into(),
            message_id: uuid::Uuid::nil(),
            event_type: "RSVP_CREATED".into(),
            rsvp_version: 1,
            payload: "x".repeat(payload_len),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            created_at: Utc::now(),
        });
        OutboxRow { position: Position { xid: 1, id }, message, published: false }
    }

    /// Keys that land on partitions 0 and 1 of 2.
    fn keys() -> (String, String) {
        let key = |p| (0..).map(|i| format!("k{i}")).find(|k| partition_for_key(k.as_bytes(), 2) == p).unwrap();
        (key(0), key(1))
    }

    #[test]
    fn every_batch_stays_within_the_batch_limit_by_its_encoded_size() {
        let mut rows: Vec<OutboxRow> = (1..=100).map(|id| row(id, "k", 1000)).collect();
        let plan = plan(&mut rows, 1, 10_000, usize::MAX);
        let batch = &plan.batches[&0];
        assert!(batch.size.bytes() <= 10_000);
        assert_eq!(batch.size.bytes(), batch_size::encoded_len(&batch.records));
        // The next row would not have fitted.
        let mut next = row(0, "k", 1000);
        assert!(batch.size.with(&next.message.take_record()) > 10_000);
        assert_eq!(rows.len(), batch.records.len());
        assert_eq!(plan.partition_of.len(), rows.len());
    }

    #[test]
    fn the_cut_is_a_prefix_in_commit_order_across_partitions() {
        let (a, b) = keys();
        // Partition 0 fills up at the fourth row; the rows after it wait, even on partition 1.
        let mut rows = vec![row(1, &a, 3000), row(2, &b, 10), row(3, &a, 3000), row(4, &a, 3000), row(5, &b, 10)];
        let plan = plan(&mut rows, 2, 8000, usize::MAX);
        assert_eq!(rows.iter().map(|r| r.position.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(plan.batches[&0].indexes, [0, 2]);
        assert_eq!(plan.batches[&1].indexes, [1]);
        assert_eq!(plan.partition_of, [0, 1, 0]);
    }

    #[test]
    fn the_step_limit_bounds_all_batches_together() {
        let (a, b) = keys();
        let mut rows: Vec<OutboxRow> = (1..=20).map(|id| row(id, if id % 2 == 0 { &a } else { &b }, 1000)).collect();
        let plan = plan(&mut rows, 2, 1_000_000, 5000);
        let total: usize = plan.batches.values().map(|b| b.size.bytes()).sum();
        assert!(total <= 5000 && total > 5000 - 1300, "{total} bytes in {} rows", rows.len());
    }

    #[test]
    fn a_row_larger_than_the_limit_goes_alone() {
        let mut rows = vec![row(1, "k", 50_000), row(2, "k", 10)];
        let plan = plan(&mut rows, 1, 32 * 1024, usize::MAX);
        assert_eq!(rows.len(), 1);
        assert_eq!(plan.batches[&0].records.len(), 1);
    }

    #[test]
    fn published_rows_are_kept_without_a_record() {
        let mut rows = vec![row(1, "k", 10), row(2, "k", 10), row(3, "k", 10)];
        rows[1].published = true;
        let plan = plan(&mut rows, 1, 1_000_000, usize::MAX);
        assert_eq!(rows.len(), 3);
        assert_eq!(plan.batches[&0].indexes, [0, 2]);
        // Only published rows: nothing to send.
        let mut rows = vec![row(1, "k", 10)];
        rows[0].published = true;
        assert!(super::plan(&mut rows, 1, 1_000_000, usize::MAX).batches.is_empty());
    }

    #[test]
    fn replayed_records_are_cut_into_consecutive_batches_within_the_limit() {
        let mut rows: Vec<OutboxRow> = (1..=50).map(|id| row(id, "k", 1000 + id as usize)).collect();
        let records: Vec<Record> = rows.iter_mut().map(|row| row.message.take_record()).collect();
        let lengths =
            |records: &[Record]| records.iter().map(|r| r.value.as_ref().map_or(0, Vec::len)).collect::<Vec<_>>();
        let values = lengths(&records);
        let cut = chunks(records, 10_000);
        assert!(cut.len() > 1);
        for chunk in &cut {
            assert!(batch_size::encoded_len(chunk) <= 10_000);
        }
        let again = lengths(&cut.concat());
        assert_eq!(again, values, "same records, same order");
        let mut big = row(1, "k", 50_000);
        assert_eq!(chunks(vec![big.message.take_record()], 10_000).len(), 1);
        assert!(chunks(Vec::new(), 10_000).is_empty());
    }
}
