//! A Tansu broker whose clients all reach it through a proxy that counts their Kafka
//! requests by API key: what a process costs the broker, from outside the process
//! (so that an older build without any metric of its own is measured the same way).
//!
//! Kafka clients connect to the address the broker advertises, not the one they were
//! given, so the broker advertises the proxy's address.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::{free_port, Broker};

/// The Kafka API key of a fetch request.
pub const FETCH: i16 = 1;

/// Requests seen so far, by API key.
#[derive(Clone, Default)]
pub struct RequestCounts(Arc<Mutex<BTreeMap<i16, u64>>>);

impl RequestCounts {
    fn add(&self, api_key: i16) {
        *self.0.lock().expect("request counts").entry(api_key).or_default() += 1;
    }

    /// Requests with `api_key` so far.
    pub fn of(&self, api_key: i16) -> u64 {
        self.0.lock().expect("request counts").get(&api_key).copied().unwrap_or(0)
    }

    /// Requests of every kind so far.
    pub fn total(&self) -> u64 {
        self.0.lock().expect("request counts").values().sum()
    }
}

/// The counting proxy in front of a broker; stops on drop.
pub struct RequestCounter {
    proxy: SocketAddr,
    counts: RequestCounts,
    accept: JoinHandle<()>,
}

/// Starts a broker that advertises a counting proxy in front of it as its address,
/// so that every client connection after the first lookup goes through the proxy.
pub async fn start_broker() -> (Broker, RequestCounter) {
    let proxy_port = free_port();
    let broker = Broker::start_advertising(free_port(), proxy_port).await;
    let listener = TcpListener::bind(("127.0.0.1", proxy_port)).await.expect("bind the counting proxy");
    let target: SocketAddr = ([127, 0, 0, 1], broker.port).into();
    let counts = RequestCounts::default();
    let accept_counts = counts.clone();
    let accept = tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let counts = accept_counts.clone();
            tokio::spawn(async move {
                if let Ok(outbound) = TcpStream::connect(target).await {
                    forward_counting(inbound, outbound, counts).await;
                }
            });
        }
    });
    let counter = RequestCounter { proxy: ([127, 0, 0, 1], proxy_port).into(), counts, accept };
    (broker, counter)
}

impl RequestCounter {
    /// `host:port` of the proxy, as `KAFKA_BROKERS` takes it: the first lookup counts too.
    pub fn address(&self) -> String {
        self.proxy.to_string()
    }

    pub fn requests(&self) -> RequestCounts {
        self.counts.clone()
    }
}

impl Drop for RequestCounter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies requests frame by frame (a 4-byte size, then the request, whose header
/// starts with its API key), counting them, and responses as they come.
async fn forward_counting(inbound: TcpStream, outbound: TcpStream, counts: RequestCounts) {
    // A request goes out as two writes (its size, then the rest): with Nagle's
    // algorithm on, the second waits for the broker's delayed ACK of the first, about
    // 40 ms a request, which the idle benchmark measured as the pipeline's latency.
    if inbound.set_nodelay(true).is_err() || outbound.set_nodelay(true).is_err() {
        return;
    }
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut broker_read, mut broker_write) = outbound.into_split();
    let requests = async move {
        let mut frame = Vec::new();
        loop {
            let Ok(size) = client_read.read_i32().await else {
                return;
            };
            let Ok(size) = usize::try_from(size) else {
                return;
            };
            frame.resize(size, 0);
            if client_read.read_exact(&mut frame).await.is_err() || size < 2 {
                return;
            }
            counts.add(i16::from_be_bytes([frame[0], frame[1]]));
            let size = i32::try_from(size).expect("read as an i32").to_be_bytes();
            if broker_write.write_all(&size).await.is_err() || broker_write.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    let responses = async move {
        let _ = tokio::io::copy(&mut broker_read, &mut client_write).await;
    };
    tokio::join!(requests, responses);
}
