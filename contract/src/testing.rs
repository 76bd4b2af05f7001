//! Real services for integration tests: a Tansu broker started per test, a TCP proxy
//! that can cut connections to simulate an outage, and a fresh migrated database.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    task::JoinSet,
};

pub mod counting;

/// Where the Tansu binary is: `$TANSU_BIN`, else `tansu` on PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("tansu")).find(|p| p.is_file()))
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo/bin/tansu")
    })
}

/// A free loopback port (racy in theory, fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

async fn wait_for_port(addr: SocketAddr, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A Tansu broker with in-memory storage, private to one test; killed on drop.
pub struct Broker {
    child: Child,
    port: u16,
    /// The port clients are told to connect to: `port`, or a proxy's.
    advertised: u16,
}

impl Broker {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Self {
        Self::start_advertising(port, port).await
    }

    /// Listens on `port` and tells clients to connect to `advertised` (a proxy's port).
    async fn start_advertising(port: u16, advertised: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised_url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e} (run scripts/test.sh, which installs it)", tansu_binary().display())
            });
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(wait_for_port(addr, Duration::from_secs(20)).await, "tansu did not listen on {addr}");
        Self { child, port, advertised }
    }

    /// The broker's process id, to read its CPU time from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `host:port`, as `KAFKA_BROKERS` takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the broker is running").to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid} failed");
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the broker and starts an empty one on the same port: everything it held is lost.
    pub async fn restart_empty(&mut self) {
        self.child.kill().await.expect("kill the broker");
        let (port, advertised) = (self.port, self.advertised);
        *self = Self::start_advertising(port, advertised).await;
    }
}

/// A TCP proxy in front of a real service, so a test can cut the connection (an
/// outage as the client sees it) and restore it.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    open: bool,
    connections: JoinSet<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(ProxyState { open: true, connections: JoinSet::new() }));
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = accept_state.lock().expect("proxy state");
                if !state.open {
                    continue; // dropping `inbound` refuses the client
                }
                state.connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, state, accept }
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.open = false;
        state.connections.abort_all();
    }

    pub fn restore(&self) {
        self.state.lock().expect("proxy state").open = true;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut state) = self.state.lock() {
            state.connections.abort_all();
        }
    }
}

/// The server tests create their databases on: `$TEST_DATABASE_URL`, else local trust auth.
pub fn test_server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

/// A new, empty, migrated database named `test_<random>`; returns its pool and URL.
/// `scripts/test.sh` drops the leftovers of earlier runs.
pub async fn fresh_database(migrator: &sqlx::migrate::Migrator) -> (sqlx::PgPool, String) {
    use sqlx::Connection;
    let server = test_server_url();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("connect to the test postgres server");
    // Dynamic: a database name cannot be a bind parameter.
    sqlx::query(&format!(r#"create database "{name}""#)).execute(&mut admin).await.expect("create the test database");
    let url = match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TEST_DATABASE_URL has no database name: {server}"),
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await
        .expect("connect to the test database");
    migrator.run(&pool).await.expect("migrate the test database");
    (pool, url)
}

/// The metrics of a Prometheus scrape that have no `# HELP` line: every metric a
/// process records must be described (`metric_names.rs`).
pub fn undescribed_metrics(scrape: &str) -> Vec<String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| !scrape.lines().any(|line| line.starts_with(&format!("# HELP {name} "))))
        .map(str::to_owned)
        .collect()
}
