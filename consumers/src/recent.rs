//! The records the groups of one instance fetched lately, per partition, so that a
//! group behind another reads them from memory instead of fetching and decoding them
//! from the broker again: without it every record is fetched and decoded once per
//! group.
//!
//! A served batch is what a fetch from the worker's anchor could have brought:
//! - the window holds one stretch of one log. A broker's answer, once the worker that
//!   fetched it has checked it against its anchor, joins the window where the two
//!   overlap with the same record (fingerprint) at the same offset, or where it
//!   starts at the window's end and the window holds that worker's anchor record;
//!   an answer wholly before the window is dropped, and any other replaces it;
//! - a worker is served only when the window holds its anchor record (same
//!   fingerprint) and records after its next offset, so the anchor's log check holds
//!   for what it is served: those records follow its anchor in one log;
//! - a served batch ends where a broker's answer ended, which is the end of a record
//!   batch: the offset only ever moves to one (`crate::worker`).
//!
//! So this only ever saves requests. A worker whose anchor is not there, or which is
//! caught up with the window, fetches from the broker as before; the high watermark
//! served is the newest the window saw, which may be a few milliseconds old.
//!
//! The records are shared, not copied: the window and every worker it serves hold
//! the same reference-counted records the client decoded.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use rskafka::record::RecordAndOffset;

use crate::{offsets::Anchor, record::fingerprint_of};

/// Every partition's window of one topic, shared by the groups of one instance.
pub struct RecentRecords {
    /// The most record bytes a window keeps; the oldest go first.
    max_bytes: usize,
    windows: Mutex<HashMap<i32, Arc<Mutex<Window>>>>,
}

/// One stretch of a partition's log, as broker answers brought it.
#[derive(Default)]
struct Window {
    /// In offset order, without holes but those the log has.
    records: VecDeque<Held>,
    /// The offsets at which an answer that joined the window ended: record batch ends.
    ends: BTreeSet<i64>,
    high_watermark: i64,
    bytes: usize,
}

/// Where an answer goes.
enum Place {
    /// Into the window: the same log.
    Join,
    /// Nowhere: the window holds newer records.
    Older,
    /// In place of the window: another log, or one that cannot be told to be the same.
    Replace,
}

struct Held {
    record: Arc<RecordAndOffset>,
    bytes: usize,
}

impl RecentRecords {
    pub fn new(max_bytes_per_partition: usize) -> Arc<Self> {
        Arc::new(Self { max_bytes: max_bytes_per_partition, windows: Mutex::default() })
    }

    fn window(&self, partition: i32) -> Arc<Mutex<Window>> {
        self.windows.lock().expect("recent windows").entry(partition).or_default().clone()
    }

    /// Adds a broker's answer for `partition`: records from one fetch, in offset order,
    /// which the worker with `anchor` found to follow its anchor in the broker's log.
    pub fn remember(
        &self,
        partition: i32,
        records: &[Arc<RecordAndOffset>],
        high_watermark: i64,
        anchor: Option<&Anchor>,
    ) {
        if records.is_empty() {
            return;
        }
        let window = self.window(partition);
        let mut window = window.lock().expect("recent window");
        match window.place(records, anchor) {
            Place::Join => {}
            Place::Older => return,
            Place::Replace => *window = Window::default(),
        }
        window.add(records, high_watermark);
        window.trim(self.max_bytes);
    }

    /// The anchor's record and the records from `next_offset` to the end of an
    /// answer, at most `max_bytes` of them unless the first such end is further (what
    /// a fetch from the anchor brings, less the records before `next_offset`, which
    /// the worker has applied), with the newest high watermark seen; none unless the
    /// window holds the anchor record itself and something after `next_offset`.
    pub fn read(
        &self,
        partition: i32,
        anchor: &Anchor,
        next_offset: i64,
        max_bytes: usize,
    ) -> Option<(Vec<Arc<RecordAndOffset>>, i64)> {
        let window = self.windows.lock().expect("recent windows").get(&partition)?.clone();
        let window = window.lock().expect("recent window");
        let anchor_at = window.holding(anchor)?;
        let next = window.records.partition_point(|held| held.record.offset < next_offset);
        let (mut index, mut bytes, mut served_end) = (next, 0, None);
        for &end in window.ends.range(next_offset + 1..) {
            while window.records.get(index).is_some_and(|held| held.record.offset < end) {
                bytes += window.records[index].bytes;
                index += 1;
            }
            if served_end.is_some() && bytes > max_bytes {
                break;
            }
            served_end = Some(end);
        }
        let end = served_end?;
        let new = window.records.range(next..).take_while(|held| held.record.offset < end);
        let records = std::iter::once(&window.records[anchor_at]).chain(new).map(|held| held.record.clone());
        Some((records.collect(), window.high_watermark))
    }

    /// Drops what `partition`'s window holds: the broker may hold another log now.
    pub fn forget(&self, partition: i32) {
        self.windows.lock().expect("recent windows").remove(&partition);
    }
}

impl Window {
    fn start(&self) -> Option<i64> {
        self.records.front().map(|held| held.record.offset)
    }

    fn end(&self) -> Option<i64> {
        self.records.back().map(|held| held.record.offset + 1)
    }

    fn position(&self, offset: i64) -> Option<usize> {
        self.records.binary_search_by_key(&offset, |held| held.record.offset).ok()
    }

    /// Where the window holds `anchor`'s record, if it does.
    fn holding(&self, anchor: &Anchor) -> Option<usize> {
        let index = self.position(anchor.offset)?;
        (fingerprint_of(&self.records[index].record.record) == anchor.fingerprint).then_some(index)
    }

    /// What to do with an answer (not empty) checked against `anchor`.
    fn place(&self, records: &[Arc<RecordAndOffset>], anchor: Option<&Anchor>) -> Place {
        let (Some(start), Some(end)) = (self.start(), self.end()) else { return Place::Join };
        let (first, last) = (records[0].offset, records[records.len() - 1].offset);
        if last < start {
            return Place::Older;
        }
        if first == end {
            return match anchor.and_then(|anchor| self.holding(anchor)) {
                Some(_) => Place::Join,
                None => Place::Replace,
            };
        }
        if first > end {
            return Place::Replace;
        }
        let shared = first.max(start);
        let mine = self.position(shared);
        let theirs = records.binary_search_by_key(&shared, |record| record.offset).ok();
        match (mine, theirs) {
            (Some(mine), Some(theirs))
                if fingerprint_of(&self.records[mine].record.record) == fingerprint_of(&records[theirs].record) =>
            {
                Place::Join
            }
            _ => Place::Replace,
        }
    }

    /// Adds what `records` has before and after the window (all of it, to an empty one).
    fn add(&mut self, records: &[Arc<RecordAndOffset>], high_watermark: i64) {
        let held =
            |record: &Arc<RecordAndOffset>| Held { record: record.clone(), bytes: record.record.approximate_size() };
        // An empty window takes every record (as though all came after it).
        let (start, end) = match (self.start(), self.end()) {
            (Some(start), Some(end)) => (start, end),
            _ => (i64::MIN, i64::MIN),
        };
        for record in records.iter().rev().filter(|record| record.offset < start) {
            let record = held(record);
            self.bytes += record.bytes;
            self.records.push_front(record);
        }
        for record in records.iter().filter(|record| record.offset >= end) {
            let record = held(record);
            self.bytes += record.bytes;
            self.records.push_back(record);
        }
        self.ends.insert(records[records.len() - 1].offset + 1);
        self.high_watermark = self.high_watermark.max(high_watermark);
    }

    /// Drops the oldest records past `max_bytes`, keeping the newest answer's end.
    fn trim(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes && self.records.len() > 1 {
            let dropped = self.records.pop_front().expect("more than one record");
            self.bytes -= dropped.bytes;
        }
        if let Some(start) = self.start() {
            self.ends = self.ends.split_off(&(start + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use rskafka::record::Record;

    use super::*;

    fn record(offset: i64, id: &str) -> Arc<RecordAndOffset> {
        let headers = BTreeMap::from([("ce_id".to_owned(), id.as_bytes().to_vec())]);
        let record = Record { key: None, value: Some(vec![0; 100]), headers, timestamp: Utc::now() };
        Arc::new(RecordAndOffset { record, offset })
    }

    /// Records `from..to` of a log named `log`.
    fn answer(log: &str, from: i64, to: i64) -> Vec<Arc<RecordAndOffset>> {
        (from..to).map(|offset| record(offset, &format!("{log}-{offset:03}"))).collect()
    }

    fn anchor(log: &str, offset: i64) -> Anchor {
        Anchor { offset, fingerprint: format!("{log}-{offset:03}").into_bytes() }
    }

    /// The offsets served: the anchor's, then the new records'.
    fn served_from(anchor: i64, new: std::ops::Range<i64>) -> Vec<i64> {
        std::iter::once(anchor).chain(new).collect()
    }

    fn offsets(served: Option<(Vec<Arc<RecordAndOffset>>, i64)>) -> Option<(Vec<i64>, i64)> {
        served.map(|(records, high)| (records.iter().map(|r| r.offset).collect(), high))
    }

    #[test]
    fn overlapping_answers_of_one_log_are_served_from_the_anchor_to_the_newest_end() {
        let recent = RecentRecords::new(1 << 20);
        recent.remember(0, &answer("a", 10, 14), 14, None);
        recent.remember(0, &answer("a", 12, 18), 18, None);
        let served = recent.read(0, &anchor("a", 12), 14, 1 << 20);
        assert_eq!(offsets(served), Some((served_from(12, 14..18), 18)));
    }

    #[test]
    fn nothing_is_served_without_the_anchor_record_or_anything_new() {
        let recent = RecentRecords::new(1 << 20);
        recent.remember(0, &answer("a", 10, 14), 14, None);
        // Caught up with the window.
        assert!(recent.read(0, &anchor("a", 10), 14, 1 << 20).is_none());
        // The anchor is another log's record at that offset.
        assert!(recent.read(0, &anchor("b", 10), 12, 1 << 20).is_none());
        // The anchor lies before the window.
        assert!(recent.read(0, &anchor("a", 9), 12, 1 << 20).is_none());
        assert!(recent.read(1, &anchor("a", 10), 12, 1 << 20).is_none());
    }

    #[test]
    fn an_answer_from_another_log_replaces_the_window_instead_of_joining_it() {
        let recent = RecentRecords::new(1 << 20);
        recent.remember(0, &answer("old", 0, 20), 20, None);
        // The broker lost its log and was refilled: different records at 10..25.
        recent.remember(0, &answer("new", 10, 25), 25, None);
        assert!(recent.read(0, &anchor("old", 5), 8, 1 << 20).is_none());
        assert_eq!(offsets(recent.read(0, &anchor("new", 10), 12, 1 << 20)), Some((served_from(10, 12..25), 25)));
        // An answer that does not overlap cannot be told to be the same log.
        recent.remember(0, &answer("new", 25, 30), 30, None);
        assert!(recent.read(0, &anchor("new", 10), 12, 1 << 20).is_none());
    }

    #[test]
    fn a_served_batch_ends_where_an_answer_ended_and_stops_at_the_byte_limit_there() {
        let recent = RecentRecords::new(1 << 20);
        for (from, to) in [(0, 10), (5, 20), (15, 30)] {
            recent.remember(0, &answer("a", from, to), to, None);
        }
        let size = record(0, "a-000").record.approximate_size();
        // Ends at 10, 20 and 30; 12 records' worth from 5 reach the end at 10, not at 20.
        assert_eq!(offsets(recent.read(0, &anchor("a", 0), 5, 12 * size)), Some((served_from(0, 5..10), 30)));
        // The first end after the next offset is served even when over the limit.
        assert_eq!(offsets(recent.read(0, &anchor("a", 0), 12, size)), Some((served_from(0, 12..20), 30)));
        assert_eq!(offsets(recent.read(0, &anchor("a", 5), 12, 1 << 20)), Some((served_from(5, 12..30), 30)));
    }

    #[test]
    fn an_answer_at_the_windows_end_joins_it_only_for_a_worker_whose_anchor_it_holds() {
        let recent = RecentRecords::new(1 << 20);
        recent.remember(0, &answer("a", 0, 10), 10, None);
        recent.remember(0, &answer("a", 10, 20), 20, Some(&anchor("a", 5)));
        assert_eq!(offsets(recent.read(0, &anchor("a", 5), 10, 1 << 20)), Some((served_from(5, 10..20), 20)));
        // Checked against an anchor the window does not hold: it replaces the window.
        recent.remember(0, &answer("b", 20, 30), 30, Some(&anchor("b", 5)));
        assert!(recent.read(0, &anchor("a", 5), 10, 1 << 20).is_none());
        assert_eq!(offsets(recent.read(0, &anchor("b", 20), 22, 1 << 20)), Some((served_from(20, 22..30), 30)));
    }

    #[test]
    fn an_answer_wholly_before_the_window_leaves_it_as_it_is() {
        let recent = RecentRecords::new(1 << 20);
        recent.remember(0, &answer("a", 10, 20), 20, None);
        recent.remember(0, &answer("a", 0, 10), 10, None);
        assert!(recent.read(0, &anchor("a", 0), 5, 1 << 20).is_none());
        assert_eq!(offsets(recent.read(0, &anchor("a", 10), 12, 1 << 20)), Some((served_from(10, 12..20), 20)));
    }

    #[test]
    fn the_window_keeps_the_newest_records_within_its_bytes() {
        let size = record(0, "a-000").record.approximate_size();
        let recent = RecentRecords::new(10 * size);
        recent.remember(0, &answer("a", 0, 8), 8, None);
        recent.remember(0, &answer("a", 4, 16), 16, None);
        assert!(recent.read(0, &anchor("a", 4), 8, 1 << 20).is_none(), "offset 4 was dropped");
        assert_eq!(offsets(recent.read(0, &anchor("a", 6), 8, 1 << 20)), Some((served_from(6, 8..16), 16)));
        recent.forget(0);
        assert!(recent.read(0, &anchor("a", 6), 8, 1 << 20).is_none());
    }
}
