//! A broker that enforces `message.max.bytes`, which Tansu 0.6 does not: a real Tansu
//! advertised behind a proxy that reads every produce request, remembers the size of
//! its record batch, and answers `MESSAGE_TOO_LARGE` for a batch above the limit as
//! Kafka does (the record batch's size, with its offset and length fields, compared
//! with the limit). Everything else passes through untouched.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use rsvp_contract::testing;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedWriteHalf, TcpListener, TcpStream},
    process::{Child, Command},
    task::JoinSet,
};

const PRODUCE: i16 = 0;
const MESSAGE_TOO_LARGE: i16 = 10;

/// One record batch a client sent in a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeenBatch {
    pub(crate) records: i32,
    /// The record batch's encoded size.
    pub(crate) bytes: usize,
    pub(crate) refused: bool,
}

struct State {
    limit: usize,
    seen: Vec<SeenBatch>,
}

pub(crate) struct LimitedBroker {
    _tansu: Child,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl LimitedBroker {
    /// Tansu behind the proxy, refusing record batches larger than `limit` bytes.
    pub(crate) async fn start(limit: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let port = testing::free_port();
        // Clients learn the broker's address from its metadata: advertise the proxy.
        let tansu = Command::new(testing::tansu_binary())
            .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--advertised-listener-url", &format!("tcp://{addr}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu");
        let target: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(target).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "tansu did not listen on {target}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state = Arc::new(Mutex::new(State { limit, seen: Vec::new() }));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let (accept_state, accept_connections) = (state.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let state = accept_state.clone();
                accept_connections.lock().unwrap().spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        proxy(inbound, outbound, state).await;
                    }
                });
            }
        });
        Self { _tansu: tansu, addr, state, connections, accept }
    }

    /// `host:port`, as `KAFKA_BROKERS` takes it.
    pub(crate) fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Every record batch produced so far, in the order they arrived.
    pub(crate) fn seen(&self) -> Vec<SeenBatch> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for LimitedBroker {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut connections) = self.connections.lock() {
            connections.abort_all();
        }
    }
}

/// One Kafka frame with its 4-byte length prefix.
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await.ok()?;
    let mut frame = len.to_vec();
    frame.resize(4 + i32::from_be_bytes(len) as usize, 0);
    reader.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

async fn proxy(inbound: TcpStream, outbound: TcpStream, state: Arc<Mutex<State>>) {
    let (mut from_client, to_client) = inbound.into_split();
    let (mut from_broker, mut to_broker) = outbound.into_split();
    // Whole frames only, so that a refusal never lands inside a forwarded response.
    let to_client = Arc::new(tokio::sync::Mutex::new(to_client));
    let down = to_client.clone();
    let responses = tokio::spawn(async move {
        while let Some(frame) = read_frame(&mut from_broker).await {
            if down.lock().await.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    while let Some(frame) = read_frame(&mut from_client).await {
        if let Some(produce) = Produce::parse(&frame) {
            let refused = {
                let mut state = state.lock().unwrap();
                let refused = produce.batch_bytes > state.limit;
                state.seen.push(SeenBatch { records: produce.records, bytes: produce.batch_bytes, refused });
                refused
            };
            if refused {
                if refuse(&to_client, &produce).await.is_err() {
                    break;
                }
                continue;
            }
        }
        if to_broker.write_all(&frame).await.is_err() {
            break;
        }
    }
    responses.abort();
}

async fn refuse(to_client: &tokio::sync::Mutex<OwnedWriteHalf>, produce: &Produce) -> std::io::Result<()> {
    let response = produce.too_large_response();
    to_client.lock().await.write_all(&response).await
}

/// What the proxy needs of a produce request (versions 3 to 7, the ones rskafka 0.6
/// speaks, all with the non-flexible v1 request header): one topic, one partition.
struct Produce {
    version: i16,
    correlation_id: i32,
    topic: Vec<u8>,
    partition: i32,
    records: i32,
    batch_bytes: usize,
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn string(&mut self) -> Vec<u8> {
        let len = self.i16();
        if len < 0 {
            return Vec::new();
        }
        self.take(len as usize).to_vec()
    }
}

impl Produce {
    fn parse(frame: &[u8]) -> Option<Self> {
        let mut c = Cursor(&frame[4..]);
        if c.i16() != PRODUCE {
            return None;
        }
        let version = c.i16();
        assert!((3..=7).contains(&version), "produce v{version} is not what rskafka 0.6 sends");
        let correlation_id = c.i32();
        c.string(); // client id
        c.string(); // transactional id
        c.i16(); // acks
        c.i32(); // timeout
        assert_eq!(c.i32(), 1, "one topic per produce request");
        let topic = c.string();
        assert_eq!(c.i32(), 1, "one partition per produce request");
        let partition = c.i32();
        let batch_bytes = c.i32() as usize;
        let batch = c.take(batch_bytes);
        // The record count is the last field of the v2 batch header.
        let records = i32::from_be_bytes(batch[57..61].try_into().unwrap());
        Some(Self { version, correlation_id, topic, partition, records, batch_bytes })
    }

    /// A produce response refusing the partition's batch with `MESSAGE_TOO_LARGE`.
    fn too_large_response(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(self.correlation_id.to_be_bytes());
        body.extend(1i32.to_be_bytes()); // topics
        body.extend((self.topic.len() as i16).to_be_bytes());
        body.extend(&self.topic);
        body.extend(1i32.to_be_bytes()); // partitions
        body.extend(self.partition.to_be_bytes());
        body.extend(MESSAGE_TOO_LARGE.to_be_bytes());
        body.extend((-1i64).to_be_bytes()); // base offset
        body.extend((-1i64).to_be_bytes()); // log append time (v2+)
        if self.version >= 5 {
            body.extend((-1i64).to_be_bytes()); // log start offset
        }
        body.extend(0i32.to_be_bytes()); // throttle time
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend(body);
        frame
    }
}
