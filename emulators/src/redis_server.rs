//! A real `redis-server` of the tests' and benchmarks' own (not an emulator: fleet mode is
//! tested against the real thing), on a Unix socket in a temporary directory, stopped on drop.
//!
//! Needs the `redis-server` binary (Debian: `apt-get install redis-server`; `.ci/run` installs
//! it). Persistence is off, so a restarted server is empty: the cold-Redis case.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running redis-server.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
    owns_dir: bool,
    /// `Some(port)`: TCP on 127.0.0.1; `None`: the Unix socket.
    port: Option<u16>,
    /// Extra arguments (cluster or sentinel mode).
    extra: Vec<String>,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    /// The binary is missing or could not run.
    #[error("cannot run redis-server (install it: apt-get install redis-server): {0}")]
    Spawn(std::io::Error),
    /// It ran but did not open its socket within 5 s.
    #[error("redis-server did not open {0} within 5 s")]
    NotListening(PathBuf),
}

impl RedisServer {
    /// Starts a server in `dir` (created if missing; removed on drop when created here).
    pub fn start_in(dir: &Path) -> Result<Self, RedisServerError> {
        let owns_dir = !dir.exists();
        std::fs::create_dir_all(dir).map_err(RedisServerError::Spawn)?;
        let mut server = Self {
            child: None,
            dir: dir.to_owned(),
            owns_dir,
            port: None,
            extra: Vec::new(),
        };
        server.boot()?;
        Ok(server)
    }

    /// Starts a server on a free TCP port of 127.0.0.1 with `extra` arguments (e.g. cluster
    /// mode; `{port}` in them is replaced with the port, e.g. `--port 0 --tls-port {port}`
    /// for TLS only); the first argument may be a config file (sentinel mode).
    pub fn start_tcp_in(dir: &Path, extra: &[String]) -> Result<Self, RedisServerError> {
        let owns_dir = !dir.exists();
        std::fs::create_dir_all(dir).map_err(RedisServerError::Spawn)?;
        let port = free_port().map_err(RedisServerError::Spawn)?;
        let mut server = Self {
            child: None,
            dir: dir.to_owned(),
            owns_dir,
            port: Some(port),
            extra: extra
                .iter()
                .map(|a| a.replace("{port}", &port.to_string()))
                .collect(),
        };
        server.boot()?;
        Ok(server)
    }

    /// The TCP port, for servers started with [`RedisServer::start_tcp_in`].
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The directory it runs in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// `unix://<socket>`: credbroker's `shared.url`.
    pub fn url(&self) -> String {
        match self.port {
            Some(p) => format!("redis://127.0.0.1:{p}/"),
            None => format!("unix://{}", self.socket().display()),
        }
    }

    fn boot(&mut self) -> Result<(), RedisServerError> {
        let mut cmd = Command::new("redis-server");
        // A config file (sentinel mode) must come first.
        let (file, flags) = match self.extra.split_first() {
            Some((f, rest)) if !f.starts_with("--") => (Some(f.clone()), rest),
            _ => (None, self.extra.as_slice()),
        };
        if let Some(f) = file {
            cmd.arg(f);
        }
        match self.port {
            Some(p) => cmd.args(["--port", &p.to_string(), "--bind", "127.0.0.1"]),
            None => cmd
                .args(["--port", "0", "--unixsocket"])
                .arg(self.socket())
                .args(["--unixsocketperm", "700"]),
        };
        cmd.args(flags)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().map_err(RedisServerError::Spawn)?);
        for _ in 0..200 {
            let up = match self.port {
                Some(p) => std::net::TcpStream::connect(("127.0.0.1", p)).is_ok(),
                None => std::os::unix::net::UnixStream::connect(self.socket()).is_ok(),
            };
            if up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.stop();
        Err(RedisServerError::NotListening(self.socket()))
    }

    /// Stops it (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts it again, empty, on the same socket.
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.stop();
        self.boot()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Redis Cluster of `n` masters (no replicas) on loopback, stopped on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (≥ 3) cluster-enabled servers under `dir` and joins them.
    pub fn start_in(dir: &Path, n: usize) -> Result<Self, RedisServerError> {
        let mut nodes = Vec::new();
        for i in 0..n {
            let node_dir = dir.join(format!("node-{i}"));
            // Without --cluster-port the bus is port + 10000, which fails above 55535.
            let bus = free_port().map_err(RedisServerError::Spawn)?.to_string();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                bus.as_str(),
            ]
            .map(str::to_owned);
            nodes.push(RedisServer::start_tcp_in(&node_dir, &extra)?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .filter_map(|n| n.port().map(|p| format!("127.0.0.1:{p}")))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(RedisServerError::Spawn)?;
        if !created.success() {
            return Err(RedisServerError::Spawn(std::io::Error::other(
                "redis-cli --cluster create failed",
            )));
        }
        let cluster = Self { nodes };
        for _ in 0..400 {
            if cluster.nodes.iter().all(|n| n.cluster_ok()) {
                return Ok(cluster);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(RedisServerError::NotListening(dir.to_owned()))
    }

    /// The nodes' URLs (credbroker's `shared.nodes`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

impl RedisServer {
    fn cluster_ok(&self) -> bool {
        let Some(p) = self.port else { return false };
        Command::new("redis-cli")
            .args(["-p", &p.to_string(), "cluster", "info"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
    }
}

/// A master, a replica of it and one sentinel monitoring it as `mymaster` (quorum 1, down
/// after 1 s, so stopping the master promotes the replica within seconds), stopped on drop.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The master.
    pub master: RedisServer,
    /// Its replica (promoted when the master stops).
    pub replica: RedisServer,
    /// The sentinel.
    pub sentinel: RedisServer,
}

impl RedisSentinel {
    /// The monitored master's name.
    pub const MASTER: &'static str = "mymaster";

    /// Starts both under `dir`.
    pub fn start_in(dir: &Path) -> Result<Self, RedisServerError> {
        let master = RedisServer::start_tcp_in(&dir.join("master"), &[])?;
        let port = master.port().unwrap_or_default();
        let replica = RedisServer::start_tcp_in(
            &dir.join("replica"),
            &[
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                port.to_string(),
            ],
        )?;
        let sentinel_dir = dir.join("sentinel");
        std::fs::create_dir_all(&sentinel_dir).map_err(RedisServerError::Spawn)?;
        let conf = sentinel_dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {m} 127.0.0.1 {port} 1\nsentinel down-after-milliseconds {m} 1000\n\
                 sentinel failover-timeout {m} 5000\n",
                m = Self::MASTER
            ),
        )
        .map_err(RedisServerError::Spawn)?;
        let sentinel = RedisServer::start_tcp_in(
            &sentinel_dir,
            &[conf.to_string_lossy().into_owned(), "--sentinel".to_owned()],
        )?;
        Ok(Self {
            master,
            replica,
            sentinel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_answers_ping_and_stops_when_dropped() {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!("redis-server is not installed (apt-get install redis-server)");
        }
        let dir = std::env::temp_dir().join(format!("cb-redis-{}", std::process::id()));
        let socket = {
            let server = RedisServer::start_in(&dir).expect("starts");
            let mut s = std::os::unix::net::UnixStream::connect(server.socket()).expect("connects");
            use std::io::{Read as _, Write as _};
            s.write_all(b"PING\r\n").expect("write");
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).expect("read");
            assert_eq!(&buf, b"+PONG\r\n");
            server.socket()
        };
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "stopped on drop"
        );
        assert!(!dir.exists(), "its directory is removed");
    }
}
