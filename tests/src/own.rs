//! Services of a test's own, on free loopback ports, so a test can stop and restart them
//! without disturbing the shared ones `deploy/services.sh up` started for every test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An etcd of our own on free loopback ports, so it can be stopped and restarted without
/// disturbing the shared one.
#[derive(Debug)]
pub struct OwnEtcd {
    /// Where clients connect.
    pub client_url: String,
    peer_url: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl OwnEtcd {
    /// An instance keeping its data and log under `dir` (not started).
    pub fn new(dir: &Path) -> Self {
        Self {
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            data: dir.join("data"),
            log: dir.join("etcd.log"),
            child: None,
        }
    }

    /// Starts it (again, with the same data).
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new("etcd")
            .args(["--name", "lag-outage-test", "--data-dir"])
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &self.client_url,
                "--advertise-client-urls",
                &self.client_url,
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
                "--initial-cluster",
                &format!("lag-outage-test={}", self.peer_url),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd binary (Debian's etcd-server; deploy/services.sh installs it)");
        self.child = Some(child);
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A single-node Kafka (KRaft) of our own, started by `deploy/services.sh` with its own state
/// directory and ports (the jars the shared one was installed from are reused): about 20 s
/// to start on this machine.
#[derive(Debug)]
pub struct OwnKafka {
    /// `127.0.0.1:<port>`.
    pub brokers: String,
    port: u16,
    controller_port: u16,
    state: PathBuf,
    running: bool,
}

impl OwnKafka {
    /// An instance with its state under `dir` (not started).
    pub fn new(dir: &Path) -> Self {
        let port = free_port();
        Self {
            brokers: format!("127.0.0.1:{port}"),
            port,
            controller_port: free_port(),
            state: dir.join("kafka-state"),
            running: false,
        }
    }

    fn script(&self, verb: &str) -> std::io::Result<std::process::Output> {
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/services.sh"
            ))
            .args([verb, "kafka"])
            .env("LAG_SERVICES_DIR", &self.state)
            .env("LAG_KAFKA_PORT", self.port.to_string())
            .env(
                "LAG_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("LAG_KAFKA_HEAP", "-Xms128m -Xmx512m")
            .stdin(Stdio::null())
            .output()
    }

    /// Starts it and waits until it answers; `Err` with the script's output otherwise.
    pub fn start(&mut self) -> Result<(), String> {
        let out = self
            .script("up")
            .map_err(|e| format!("deploy/services.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "deploy/services.sh up kafka: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.running = true;
        Ok(())
    }

    /// Stops it (the broker process ends; clients see a dead broker).
    pub fn stop(&mut self) {
        if self.running {
            let _ = self.script("down");
            self.running = false;
        }
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A redis-server of our own on `port` (no persistence); killed on drop.
#[derive(Debug)]
pub struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts it and waits (up to 10 s) until it answers PING.
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pong(port) {
            assert!(Instant::now() < deadline, "own redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis server on `port` answers an inline PING with `+PONG`.
fn pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
