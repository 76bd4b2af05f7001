//! Reading one record batch as bytes, for the batches rskafka cannot decode.
//!
//! rskafka decodes a whole fetch answer or fails it: a header name that is not UTF-8
//! (Kafka allows any bytes) fails every fetch that reaches its batch. So that such
//! records reach the dead-letter table with their bytes, this sends a Fetch (v4) of
//! its own for the batch at an offset and splits it into records without judging
//! any field. It reads uncompressed v2 batches only; for anything else (a compressed
//! batch, a broker that does not lead the partition) the caller falls back to a
//! placeholder dead letter.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::record::RawRecord;

/// Why the batch could not be read raw.
#[derive(Debug, thiserror::Error)]
pub enum RawFetchError {
    /// No broker answered in time.
    #[error("no broker answered the raw fetch: {0}")]
    Io(#[from] std::io::Error),
    #[error("the raw fetch timed out")]
    Timeout,
    /// The broker answered with an error code (not the leader, say).
    #[error("the broker answered the raw fetch with error code {0}")]
    Broker(i16),
    /// The answer or the batch is not one this reader understands.
    #[error("the raw batch cannot be read: {0}")]
    Unreadable(&'static str),
}

/// The records of the batch holding `offset` (from `offset` on) and the offset after
/// the batch; none when the partition has nothing there.
pub async fn fetch_batch(
    broker: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<Option<(Vec<RawRecord>, i64)>, RawFetchError> {
    let answer = tokio::time::timeout(timeout, round_trip(broker, &fetch_request(topic, partition, offset)))
        .await
        .map_err(|_| RawFetchError::Timeout)??;
    let records = partition_records(&answer)?;
    if records.is_empty() {
        return Ok(None);
    }
    parse_batch(records, offset).map(Some)
}

fn string(buf: &mut Vec<u8>, text: &str) {
    buf.extend(i16::try_from(text.len()).unwrap_or(i16::MAX).to_be_bytes());
    buf.extend_from_slice(text.as_bytes());
}

fn fetch_request(topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut request = Vec::new();
    request.extend(1i16.to_be_bytes()); // api key: Fetch
    request.extend(4i16.to_be_bytes()); // api version
    request.extend(1i32.to_be_bytes()); // correlation id
    string(&mut request, "rsvp-consumers-raw");
    request.extend((-1i32).to_be_bytes()); // replica id: a consumer
    request.extend(0i32.to_be_bytes()); // max wait
    request.extend(1i32.to_be_bytes()); // min bytes
    request.extend(1i32.to_be_bytes()); // max bytes: the first batch alone
    request.push(0); // isolation level: read uncommitted
    request.extend(1i32.to_be_bytes());
    string(&mut request, topic);
    request.extend(1i32.to_be_bytes());
    request.extend(partition.to_be_bytes());
    request.extend(offset.to_be_bytes());
    request.extend(1i32.to_be_bytes()); // partition max bytes
    request
}

async fn round_trip(broker: &str, request: &[u8]) -> Result<Vec<u8>, RawFetchError> {
    let mut stream = TcpStream::connect(broker).await?;
    let size = i32::try_from(request.len()).map_err(|_| RawFetchError::Unreadable("request too large"))?;
    stream.write_all(&size.to_be_bytes()).await?;
    stream.write_all(request).await?;
    let size = usize::try_from(stream.read_i32().await?).map_err(|_| RawFetchError::Unreadable("negative size"))?;
    let mut answer = vec![0; size];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

/// A cursor over big-endian fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RawFetchError> {
        if self.0.len() < n {
            return Err(RawFetchError::Unreadable("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn int<const N: usize>(&mut self) -> Result<[u8; N], RawFetchError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn i16(&mut self) -> Result<i16, RawFetchError> {
        Ok(i16::from_be_bytes(self.int()?))
    }

    fn i32(&mut self) -> Result<i32, RawFetchError> {
        Ok(i32::from_be_bytes(self.int()?))
    }

    fn i64(&mut self) -> Result<i64, RawFetchError> {
        Ok(i64::from_be_bytes(self.int()?))
    }

    fn len(&mut self, n: impl TryInto<usize>) -> Result<usize, RawFetchError> {
        n.try_into().map_err(|_| RawFetchError::Unreadable("negative length"))
    }

    /// A zigzag varint, as record fields are encoded.
    fn varint(&mut self) -> Result<i64, RawFetchError> {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
            shift += 7;
            if shift > 63 {
                return Err(RawFetchError::Unreadable("varint too long"));
            }
        }
    }

    /// Varint-length bytes; none for length -1.
    fn var_bytes(&mut self) -> Result<Option<Vec<u8>>, RawFetchError> {
        match self.varint()? {
            -1 => Ok(None),
            size => {
                let size = self.len(size)?;
                Ok(Some(self.take(size)?.to_vec()))
            }
        }
    }
}

/// The `records` bytes of the one partition a v4 Fetch answer holds.
fn partition_records(answer: &[u8]) -> Result<&[u8], RawFetchError> {
    let mut reader = Reader(answer);
    reader.i32()?; // correlation id
    reader.i32()?; // throttle time
    if reader.i32()? != 1 {
        return Err(RawFetchError::Unreadable("not one topic"));
    }
    let name = reader.i16()?;
    let name = reader.len(name)?;
    reader.take(name)?;
    if reader.i32()? != 1 {
        return Err(RawFetchError::Unreadable("not one partition"));
    }
    reader.i32()?; // partition
    match reader.i16()? {
        0 => {}
        code => return Err(RawFetchError::Broker(code)),
    }
    reader.i64()?; // high watermark
    reader.i64()?; // last stable offset
    let aborted = reader.i32()?;
    if aborted > 0 {
        let aborted = reader.len(aborted)?;
        reader.take(aborted * 16)?;
    }
    match reader.i32()? {
        -1 => Ok(&[]),
        size => {
            let size = reader.len(size)?;
            reader.take(size)
        }
    }
}

/// The records at and after `from` of the first batch in `records`, and the offset
/// after that batch.
fn parse_batch(records: &[u8], from: i64) -> Result<(Vec<RawRecord>, i64), RawFetchError> {
    let mut reader = Reader(records);
    let base_offset = reader.i64()?;
    let length = reader.i32()?;
    let length = reader.len(length)?;
    let mut reader = Reader(reader.take(length)?);
    reader.i32()?; // partition leader epoch
    if reader.take(1)?[0] != 2 {
        return Err(RawFetchError::Unreadable("not a v2 record batch"));
    }
    reader.take(4)?; // crc: the broker checked it when the batch was produced
    let attributes = reader.i16()?;
    if attributes & 0x07 != 0 {
        return Err(RawFetchError::Unreadable("a compressed batch"));
    }
    let last_offset_delta = reader.i32()?;
    reader.take(8 + 8 + 8 + 2 + 4)?; // timestamps, producer id and epoch, base sequence
    let count = reader.i32()?;
    let mut out = Vec::new();
    for _ in 0..reader.len(count)? {
        let size = reader.varint()?;
        let size = reader.len(size)?;
        let mut record = Reader(reader.take(size)?);
        record.take(1)?; // attributes
        record.varint()?; // timestamp delta
        let offset = base_offset + record.varint()?;
        let key = record.var_bytes()?;
        let value = record.var_bytes()?;
        let headers = record.varint()?;
        let mut header_pairs = Vec::new();
        for _ in 0..record.len(headers)? {
            let name = record.var_bytes()?.unwrap_or_default();
            let value = record.var_bytes()?.unwrap_or_default();
            header_pairs.push((name, value));
        }
        if offset >= from {
            out.push(RawRecord::from_bytes(offset, key, value, header_pairs));
        }
    }
    Ok((out, base_offset + i64::from(last_offset_delta) + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_zigzag() {
        assert_eq!(Reader(&[0x00]).varint().unwrap(), 0);
        assert_eq!(Reader(&[0x01]).varint().unwrap(), -1);
        assert_eq!(Reader(&[0x02]).varint().unwrap(), 1);
        assert_eq!(Reader(&[0xac, 0x02]).varint().unwrap(), 150);
        assert!(Reader(&[0x80]).varint().is_err());
    }

    #[test]
    fn a_truncated_answer_is_unreadable_not_a_panic() {
        assert!(matches!(partition_records(&[0, 0, 0, 1]), Err(RawFetchError::Unreadable(_))));
        assert!(matches!(parse_batch(&[0; 10], 0), Err(RawFetchError::Unreadable(_))));
    }
}
