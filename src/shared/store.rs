//! The Redis side: one multiplexed connection (reconnecting), a timeout on every operation, the
//! Lua scripts, and the circuit breaker that makes Redis optional.
//!
//! Promises:
//! - no operation waits longer than `shared.op_timeout`;
//! - after a connectivity failure Redis is skipped (operations answer `Unavailable` at once,
//!   without traffic) for `shared.retry_interval`, doubling to 60 s while probes fail; one
//!   operation probes, success closes the breaker; each transition logs once;
//! - a Redis error is logged and counted by class only: its text can carry reply bytes.

use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo as _, Pipeline, RedisError, RedisFuture, Script, Value};

use crate::config::{SharedConfig, Topology};
use crate::metrics::Metrics;

const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// Redis could not be used for this operation (down, slow, refused, or skipped).
#[derive(Debug, Clone, Copy)]
pub struct Unavailable;

/// KEYS cr, lk; ARGV token, lease_ms, newer_than_ms.
/// → {2, value} a set newer than `newer_than` | {1, bad} lock acquired | {0, bad} contended;
/// `bad` is 1 when a value of another type was removed.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.pcall('GET', KEYS[1])
local bad = 0
if type(v) == 'table' and v.err then redis.call('DEL', KEYS[1]); v = false; bad = 1 end
if v then
  local exp = tonumber(string.match(v, '^c1:[%w_-]+:(%d+):'))
  if exp == nil or exp > tonumber(ARGV[3]) then return {2, v} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, bad} end
return {0, bad}
",
    )
});

/// KEYS cr, lk; ARGV envelope ('' = none), expires_ms, ttl_ms, token ('' = not holding).
/// Stores the set unless a later one is there, then releases the lock if held. → 1 if stored.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = 0
if ARGV[1] ~= '' then
  local cur = redis.pcall('GET', KEYS[1])
  if type(cur) == 'table' then cur = false end
  local held = cur and tonumber(string.match(cur, '^c1:[%w_-]+:(%d+):'))
  if not held or held < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]); stored = 1
  end
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
return stored
",
    )
});

/// KEYS k; ARGV value: deletes `k` only if it still holds `value`.
static DEL_IF_EQ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.pcall('GET', KEYS[1])
if v == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// GCRA on Redis time. KEYS bucket; ARGV T_us, tau_us, max_wait_us.
/// → {granted 0|1, wait_us}: granted with a wait is a reserved slot.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, tau, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.pcall('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local wait = tat - tau - now
if wait < 0 then wait = 0 end
if wait > max_wait then return {0, string.format('%.0f', wait)} end
local new_tat = tat + T
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, string.format('%.0f', wait)}
",
    )
});

/// What [`Store::acquire`] found.
pub enum Acquired {
    /// A stored set (still sealed).
    Found(Vec<u8>),
    /// This replica holds the lock.
    Locked,
    /// Another replica holds it.
    Contended,
}

struct Breaker {
    /// `Some((until, interval))` while open.
    open: Option<(tokio::time::Instant, Duration)>,
    probing: bool,
    since: Option<(SystemTime, &'static str)>,
}

/// A connection of whichever topology (every command and script goes through it).
#[derive(Clone)]
pub enum Conn {
    /// Standalone, or the master the sentinels named.
    Manager(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How connections are made: one reconnecting manager, or one made on first use (Cluster, and
/// the master a Sentinel names: re-resolved after every failure, so a failover is followed).
enum Backend {
    Standalone(ConnectionManager),
    Cluster {
        client: ClusterClient,
        conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        manager: ConnectionManagerConfig,
        conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    },
}

/// The configured CA (`shared.tls_ca_file`) instead of the system roots.
fn certificates(config: &SharedConfig) -> Option<redis::TlsCertificates> {
    config.tls_ca.as_ref().map(|pem| redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.clone()),
    })
}

fn manager_config(config: &SharedConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.op_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_pipeline_buffer_size(1024)
}

impl Backend {
    fn new(config: &SharedConfig) -> Result<Self, RedisError> {
        let nodes: Vec<&str> = config.nodes.iter().map(|n| n.expose_str()).collect();
        match &config.topology {
            Topology::Standalone => {
                let client = match certificates(config) {
                    Some(certs) => redis::Client::build_with_tls(config.url.expose_str(), certs)?,
                    None => redis::Client::open(config.url.expose_str())?,
                };
                Ok(Self::Standalone(ConnectionManager::new_lazy_with_config(
                    client,
                    manager_config(config),
                )?))
            }
            Topology::Cluster => Ok(Self::Cluster {
                client: {
                    let mut builder = ClusterClientBuilder::new(nodes)
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(config.op_timeout)
                        .retries(1);
                    if let Some(certs) = certificates(config) {
                        builder = builder.certs(certs);
                    }
                    builder.build()?
                },
                conn: tokio::sync::Mutex::new(None),
            }),
            Topology::Sentinel { master } => {
                let info = config.url.expose_str().into_connection_info()?;
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info.redis_settings().clone());
                if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    nodes,
                    master.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                Ok(Self::Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    manager: manager_config(config),
                    conn: tokio::sync::Mutex::new(None),
                })
            }
        }
    }

    /// A connection, made now if needed.
    async fn conn(&self) -> Result<Conn, RedisError> {
        match self {
            Self::Standalone(m) => Ok(Conn::Manager(m.clone())),
            Self::Cluster { client, conn } => {
                let mut held = conn.lock().await;
                if let Some(c) = held.as_ref() {
                    return Ok(Conn::Cluster(c.clone()));
                }
                let c = client.get_async_connection().await?;
                *held = Some(c.clone());
                Ok(Conn::Cluster(c))
            }
            Self::Sentinel {
                client,
                manager,
                conn,
            } => {
                let mut held = conn.lock().await;
                if let Some(c) = held.as_ref() {
                    return Ok(Conn::Manager(c.clone()));
                }
                let master = client.lock().await.async_get_client().await?;
                let c = ConnectionManager::new_lazy_with_config(master, manager.clone())?;
                *held = Some(c.clone());
                Ok(Conn::Manager(c))
            }
        }
    }

    /// After a connectivity failure: Cluster and Sentinel connections are made afresh.
    fn forget(&self) {
        match self {
            Self::Standalone(_) => {}
            Self::Cluster { conn, .. } => {
                if let Ok(mut c) = conn.try_lock() {
                    *c = None;
                }
            }
            Self::Sentinel { conn, .. } => {
                if let Ok(mut c) = conn.try_lock() {
                    *c = None;
                }
            }
        }
    }
}

/// The connection and the breaker.
pub struct Store {
    backend: Backend,
    op_timeout: Duration,
    retry_interval: Duration,
    breaker: Mutex<Breaker>,
    metrics: Metrics,
}

fn class(e: &RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        "io"
    } else if e.code().is_some() {
        "server"
    } else {
        "protocol"
    }
}

impl Store {
    /// A lazily connecting store (never blocks start-up).
    pub fn new(config: &SharedConfig, metrics: Metrics) -> Result<Self, String> {
        let backend =
            Backend::new(config).map_err(|e| format!("the shared tier's Redis: {}", class(&e)))?;
        metrics.shared.available.set(1);
        Ok(Self {
            backend,
            op_timeout: config.op_timeout,
            retry_interval: config.retry_interval,
            breaker: Mutex::new(Breaker {
                open: None,
                probing: false,
                since: None,
            }),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `None` while Redis answers; else since when it has not, and why (a class).
    pub fn outage(&self) -> Option<(SystemTime, &'static str)> {
        self.lock().since
    }

    fn admit(&self) -> bool {
        let mut b = self.lock();
        match b.open {
            None => true,
            Some((until, _)) if tokio::time::Instant::now() >= until && !b.probing => {
                b.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    fn succeeded(&self) {
        let mut b = self.lock();
        b.probing = false;
        if b.open.take().is_some() {
            b.since = None;
            self.metrics.shared.available.set(1);
            tracing::info!("shared tier available again; sharing resumes");
        }
    }

    fn failed(&self, op: &'static str, class: &'static str) {
        self.metrics
            .shared
            .errors
            .with_label_values(&[op, class])
            .inc();
        let mut b = self.lock();
        let interval = match (b.open, b.probing) {
            (Some((_, last)), true) => (last * 2).min(MAX_RETRY_INTERVAL),
            (Some((_, last)), false) => last,
            (None, _) => self.retry_interval,
        };
        b.probing = false;
        if b.open.is_none() {
            b.since = Some((SystemTime::now(), class));
            self.metrics.shared.available.set(0);
            tracing::warn!(
                op,
                class,
                retry_in_ms = interval.as_millis() as u64,
                "shared tier unavailable; this replica exchanges on its own until it answers"
            );
        }
        b.open = Some((tokio::time::Instant::now() + interval, interval));
    }

    /// Runs one operation under the breaker and the timeout.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if !self.admit() {
            return Err(Unavailable);
        }
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.op_timeout, async {
            let conn = self.backend.conn().await?;
            f(conn).await
        })
        .await;
        self.metrics
            .shared
            .op_latency
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => {
                self.succeeded();
                Ok(v)
            }
            Ok(Err(e)) if e.code() == Some("WRONGTYPE") => {
                // One bad entry, not an outage: the caller goes on without it.
                self.succeeded();
                self.metrics
                    .shared
                    .rejected
                    .with_label_values(&["wrong_type"])
                    .inc();
                Err(Unavailable)
            }
            Ok(Err(e)) => {
                self.backend.forget();
                self.failed(op, class(&e));
                Err(Unavailable)
            }
            Err(_) => {
                self.backend.forget();
                self.failed(op, "timeout");
                Err(Unavailable)
            }
        }
    }

    /// GET with the TTL renewed (identity ids are kept while used).
    pub async fn get_renew(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Vec<u8>>, Unavailable> {
        let ms = millis(ttl);
        let v: Value = self
            .run("get_id", |mut c| async move {
                redis::cmd("GETEX")
                    .arg(key)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.bytes(v, "get_id")
    }

    /// SET with a TTL.
    pub async fn set(
        &self,
        op: &'static str,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let ms = millis(ttl).max(1);
        let _: Value = self
            .run(op, |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Deletes `key` if it still holds `value`.
    pub async fn del_if_eq(&self, key: &str, value: &[u8]) -> Result<(), Unavailable> {
        let _: Value = self
            .run("delete", |mut c| async move {
                DEL_IF_EQ.key(key).arg(value).invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Deletes `key`.
    pub async fn del(&self, key: &str) -> Result<(), Unavailable> {
        let _: Value = self
            .run("delete", |mut c| async move {
                redis::cmd("DEL").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Looks up a set newer than `newer_than_ms`, or takes the lock.
    pub async fn acquire(
        &self,
        cr: &str,
        lk: &str,
        token: &str,
        lease: Duration,
        newer_than_ms: u64,
    ) -> Result<(Acquired, bool), Unavailable> {
        let v: Value = self
            .run("acquire", |mut c| async move {
                ACQUIRE
                    .key(cr)
                    .key(lk)
                    .arg(token)
                    .arg(millis(lease))
                    .arg(newer_than_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let parsed = match &v {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(2), Value::BulkString(b)] => Some((Acquired::Found(b.clone()), false)),
                [Value::Int(1), Value::Int(bad)] => Some((Acquired::Locked, *bad == 1)),
                [Value::Int(0), Value::Int(bad)] => Some((Acquired::Contended, *bad == 1)),
                _ => None,
            },
            _ => None,
        };
        parsed.ok_or_else(|| self.garbage("acquire"))
    }

    /// Stores `envelope` unless a later set is there, releasing the lock `token` holds.
    pub async fn publish(
        &self,
        cr: &str,
        lk: &str,
        envelope: &[u8],
        expires_ms: u64,
        ttl: Duration,
        token: &str,
    ) -> Result<(), Unavailable> {
        let _: Value = self
            .run("publish", |mut c| async move {
                PUBLISH
                    .key(cr)
                    .key(lk)
                    .arg(envelope)
                    .arg(expires_ms)
                    .arg(millis(ttl).max(1))
                    .arg(token)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// One GCRA decision: `(granted, wait)`.
    pub async fn gcra(
        &self,
        bucket: &str,
        period: Duration,
        tolerance: Duration,
        max_wait: Duration,
    ) -> Result<(bool, Duration), Unavailable> {
        let v: Value = self
            .run("budget", |mut c| async move {
                GCRA.key(bucket)
                    .arg(micros(period))
                    .arg(micros(tolerance))
                    .arg(micros(max_wait))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let parsed = match &v {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(g), Value::BulkString(w)] => std::str::from_utf8(w)
                    .ok()
                    .and_then(|w| w.parse::<u64>().ok())
                    .map(|w| (*g == 1, Duration::from_micros(w))),
                _ => None,
            },
            _ => None,
        };
        parsed.ok_or_else(|| self.garbage("budget"))
    }

    fn bytes(&self, v: Value, op: &'static str) -> Result<Option<Vec<u8>>, Unavailable> {
        match v {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(b)),
            _ => Err(self.garbage(op)),
        }
    }

    /// A reply of the wrong shape: the server is not the Redis we expect.
    fn garbage(&self, op: &'static str) -> Unavailable {
        self.failed(op, "protocol");
        Unavailable
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
