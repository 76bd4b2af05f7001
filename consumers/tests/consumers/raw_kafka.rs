//! Producing records that rskafka cannot express (a header name that is not UTF-8):
//! a Produce v3 request with a v2 record batch, written byte by byte.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A record as bytes: key, value and headers with raw names.
pub(crate) struct RawRecord {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// CRC-32C (Castagnoli), which a v2 record batch carries.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// A zigzag varint, as record fields are encoded.
fn varint(buf: &mut Vec<u8>, n: i64) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varbytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    varint(buf, bytes.len() as i64);
    buf.extend_from_slice(bytes);
}

/// One uncompressed v2 record batch holding `records`.
fn record_batch(records: &[RawRecord]) -> Vec<u8> {
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let mut body = Vec::new();
    for (delta, record) in records.iter().enumerate() {
        let mut r = vec![0u8]; // attributes
        varint(&mut r, 0); // timestamp delta
        varint(&mut r, delta as i64);
        varbytes(&mut r, &record.key);
        varbytes(&mut r, &record.value);
        varint(&mut r, record.headers.len() as i64);
        for (name, value) in &record.headers {
            varbytes(&mut r, name);
            varbytes(&mut r, value);
        }
        varint(&mut body, r.len() as i64);
        body.extend(r);
    }
    // What the crc covers: attributes to the end.
    let mut covered = Vec::new();
    covered.extend(0i16.to_be_bytes()); // attributes: no compression
    covered.extend(i32::try_from(records.len() - 1).unwrap().to_be_bytes()); // last offset delta
    covered.extend(now.to_be_bytes()); // first timestamp
    covered.extend(now.to_be_bytes()); // max timestamp
    covered.extend((-1i64).to_be_bytes()); // producer id
    covered.extend((-1i16).to_be_bytes()); // producer epoch
    covered.extend((-1i32).to_be_bytes()); // base sequence
    covered.extend(i32::try_from(records.len()).unwrap().to_be_bytes());
    covered.extend(body);
    let mut after_length = Vec::new();
    after_length.extend((-1i32).to_be_bytes()); // partition leader epoch
    after_length.push(2); // magic
    after_length.extend(crc32c(&covered).to_be_bytes());
    after_length.extend(covered);
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset, set by the broker
    batch.extend(i32::try_from(after_length.len()).unwrap().to_be_bytes());
    batch.extend(after_length);
    batch
}

fn string(buf: &mut Vec<u8>, s: &str) {
    buf.extend(i16::try_from(s.len()).unwrap().to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Produces `records` as one batch to `topic`/`partition` on the broker at
/// `address`, which must lead it; panics unless the broker accepts them.
pub(crate) async fn produce(address: &str, topic: &str, partition: i32, records: &[RawRecord]) {
    let batch = record_batch(records);
    let mut request = Vec::new();
    request.extend(0i16.to_be_bytes()); // api key: Produce
    request.extend(3i16.to_be_bytes()); // api version
    request.extend(7i32.to_be_bytes()); // correlation id
    string(&mut request, "raw-test-producer");
    request.extend((-1i16).to_be_bytes()); // transactional id: null
    request.extend((-1i16).to_be_bytes()); // acks: all
    request.extend(5_000i32.to_be_bytes()); // timeout
    request.extend(1i32.to_be_bytes());
    string(&mut request, topic);
    request.extend(1i32.to_be_bytes());
    request.extend(partition.to_be_bytes());
    request.extend(i32::try_from(batch.len()).unwrap().to_be_bytes());
    request.extend(batch);

    let mut stream = TcpStream::connect(address).await.expect("connect to the broker");
    stream.write_all(&i32::try_from(request.len()).unwrap().to_be_bytes()).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let size = usize::try_from(stream.read_i32().await.expect("a produce response")).unwrap();
    let mut response = vec![0u8; size];
    stream.read_exact(&mut response).await.unwrap();
    // correlation id, topics (1), name, partitions (1), index, then the error code.
    let name_len = usize::try_from(i16::from_be_bytes([response[8], response[9]])).unwrap();
    let at = 10 + name_len + 4 + 4;
    let error_code = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(error_code, 0, "the broker refused the raw batch");
}
