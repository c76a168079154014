//! The relay: one task per client connection, owning the client socket and its upstream
//! connection(s).
//!
//! Owns: the client side of the protocol (credbroker's `connection_ack` and `ka`s, the checks on
//! every `start`, `stop`), forwarding AppSync's `start_ack`/`data`/`error`/`complete` verbatim,
//! the upstream keep-alive watchdog, the expiry deadline, renewal (a second upstream connection,
//! every live subscription started again on it, then the switch) and every way a connection
//! ends (close codes in [`protocol::close`]).
//!
//! Promises:
//! - backpressure, not buffers: one task awaits every send (each under
//!   `appsync.realtime.send_timeout` towards the client), so at most one message per direction is
//!   in flight and a slow reader slows AppSync's socket down through TCP; a client slower than
//!   `send_timeout` is dropped (1013);
//! - every `start` is checked (id, duplicate, `payload.data` a string, the per-connection cap,
//!   `allowed_operations`) and rebuilt: `data` unchanged, `extensions` replaced by credbroker's
//!   own `authorization`; nothing the caller put in `extensions` reaches AppSync;
//! - credbroker's own refusals never use `Unauthorized*` error types;
//! - a raw ID token's connection closes with 4001 `token_expiry_margin` before `exp`; a
//!   renewable one re-authenticates from `E - min(renew_ahead, lifetime/2)` on (`E`: its token's
//!   or credentials' expiry; `lifetime`: what was left of it when the link connected; while
//!   nothing newer exists, every `min(10 s, a quarter of the time left)`), make-before-break: a subscription delivers from the old connection
//!   until the new one acknowledged it, then only from the new one (never twice); a connection
//!   that cannot renew by `E - token_expiry_margin` closes with 4002, a lost session with 4401;
//! - AppSync's close codes pass through when sendable, a drop or silence beyond its
//!   `connectionTimeoutMs` is 1011, an upstream `connection_error` is forwarded and closes 1000;
//!   shutdown closes 1001 (upstream 1000) and waits at most a second for the client's reply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{self, CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::time::{Instant, Interval, sleep_until};
use tokio_tungstenite::tungstenite;

use super::auth::{self, Credential};
use super::limits::Admitted;
use super::protocol::{self, Envelope, close, reason};
use super::upstream::{self, ConnectError, Upstream};
use super::{AuthError, BoxFuture, CallerAuth, Realtime, Target};
use crate::appsync::operations::{self, OperationError};
use crate::clock;

/// How long a closing side waits for the peer's close reply.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between renewal attempts.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What one relay is given by the surface.
pub struct Params {
    /// The API.
    pub target: Arc<Target>,
    /// How the caller authenticates upstream.
    pub auth: Arc<dyn CallerAuth>,
    /// The authentication for the first upstream connection (obtained before the upgrade).
    pub credential: Credential,
    /// Its place among the open connections.
    pub admitted: Admitted,
}

/// Runs one client connection to its end.
pub async fn run(shared: Arc<Realtime>, mut client: WebSocket, params: Params) {
    let name = params.target.name.clone();
    let _open = Gauge::new(&shared, &name);
    let lost = params.auth.lost();
    let first = tokio::select! {
        () = shared.shutdown.cancelled() => Err(End::going_away()),
        () = lost => Err(End::session_ended()),
        connected = upstream::connect(
            &shared.dialer,
            &params.target,
            params.credential,
            shared.clock.now(),
        ) => connected.map_err(End::from_connect),
    };
    let upstream = match first {
        Ok(up) => up,
        Err(end) => {
            if let Some(text) = &end.message {
                let _ = send(&shared, &mut client, text.clone()).await;
            }
            end.record(&shared, &name);
            close_client(&shared, &mut client, &end).await;
            return;
        }
    };
    let mut relay = Relay::new(shared, client, params.target, params.auth, upstream);
    relay._admitted = Some(params.admitted);
    let end = relay.serve().await;
    relay.finish(end).await;
}

/// How a connection ends: what the client is sent, and the `closes_total` reason.
#[derive(Debug)]
struct End {
    /// The close frame for the client (`None`: the client is gone, or closed first).
    frame: Option<(u16, String)>,
    /// A message sent before the close (an upstream `connection_error`).
    message: Option<ws::Utf8Bytes>,
    /// The metric label.
    label: &'static str,
}

impl End {
    fn close(code: u16, reason: &str, label: &'static str) -> Self {
        Self {
            frame: Some((code, reason.to_owned())),
            message: None,
            label,
        }
    }

    fn gone(label: &'static str) -> Self {
        Self {
            frame: None,
            message: None,
            label,
        }
    }

    fn going_away() -> Self {
        Self::close(close::GOING_AWAY, reason::GOING_AWAY, "going_away")
    }

    fn session_ended() -> Self {
        Self::close(close::SESSION_ENDED, reason::SESSION_ENDED, "session_ended")
    }

    fn upstream_lost() -> Self {
        Self::close(close::INTERNAL, reason::UPSTREAM_LOST, "upstream_lost")
    }

    /// The first upstream connection failed.
    fn from_connect(e: ConnectError) -> Self {
        let (message, code, label) = match &e {
            ConnectError::Refused(text) => {
                let text = ws::Utf8Bytes::from(text.as_str());
                let mut end = Self::close(close::NORMAL, "", "upstream_refused");
                end.message = Some(text);
                return end;
            }
            ConnectError::Timeout(_) => (
                protocol::connection_error("UpstreamTimeout", &e.to_string(), 504),
                close::INTERNAL,
                "upstream_unavailable",
            ),
            ConnectError::Unreachable(_) | ConnectError::Signing(_) => (
                protocol::connection_error("UpstreamUnavailable", &e.to_string(), 502),
                close::INTERNAL,
                "upstream_unavailable",
            ),
        };
        tracing::debug!(error = %e, "appsync real-time upstream connection failed");
        let mut end = Self::close(code, reason::UPSTREAM_UNAVAILABLE, label);
        end.message = Some(message.into());
        end
    }

    fn record(&self, shared: &Realtime, api: &str) {
        shared
            .metrics
            .appsync_realtime_closes
            .with_label_values(&[api, self.label])
            .inc();
    }
}

/// `connections{api}` for as long as the relay runs.
struct Gauge {
    gauge: prometheus::IntGauge,
}

impl Gauge {
    fn new(shared: &Realtime, api: &str) -> Self {
        let gauge = shared
            .metrics
            .appsync_realtime_connections
            .with_label_values(&[api]);
        gauge.inc();
        Self { gauge }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Sends `text` to the client within `send_timeout`; the `End` when that failed.
async fn send(
    shared: &Realtime,
    client: &mut WebSocket,
    text: impl Into<ws::Utf8Bytes>,
) -> Result<(), End> {
    let sent = tokio::time::timeout(
        shared.config.send_timeout,
        client.send(Message::Text(text.into())),
    )
    .await;
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::gone("client_gone")),
        Err(_) => Err(End::close(
            close::TRY_AGAIN,
            reason::TOO_SLOW,
            "slow_client",
        )),
    }
}

/// Sends the close frame of `end` (if any) and waits briefly for the client's reply.
async fn close_client(shared: &Realtime, client: &mut WebSocket, end: &End) {
    let Some((code, text)) = &end.frame else {
        let _ = tokio::time::timeout(CLOSE_WAIT, client.close()).await;
        return;
    };
    let frame = CloseFrame {
        code: *code,
        reason: text.as_str().into(),
    };
    let sent = tokio::time::timeout(
        shared.config.send_timeout,
        client.send(Message::Close(Some(frame))),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(m)) = client.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Closes an upstream socket (1000), not waiting long.
async fn close_upstream(mut socket: upstream::Socket) {
    let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(None)).await;
}

/// One upstream connection of a relay.
struct Link {
    generation: u64,
    up: Upstream,
    last_seen: Instant,
}

/// One live subscription.
#[derive(Debug)]
struct Sub {
    /// The start's `data`, as received (re-sent on renewal).
    data: Arc<str>,
    /// The link whose messages for it are forwarded.
    on: u64,
    /// The link it is being started on again (a renewal), until that link acknowledges.
    restarting: Option<u64>,
    /// Whether the client has had its `start_ack`.
    acked: bool,
    /// Whether the client asked to stop it.
    stopping: bool,
    /// Digests of the events the old link delivered while the new one was starting it: the
    /// new link may deliver the same events again right after its acknowledgement.
    overlap: Vec<[u8; 32]>,
}

impl Sub {
    fn new(data: Arc<str>, on: u64) -> Self {
        Self {
            data,
            on,
            restarting: None,
            acked: false,
            stopping: false,
            overlap: Vec::new(),
        }
    }
}

/// The result of a renewal attempt.
enum Renewal {
    Connected(Box<Upstream>),
    Unchanged,
    Failed(String),
    Ended,
}

/// Which link a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Current,
    Next,
}

struct Relay {
    shared: Arc<Realtime>,
    target: Arc<Target>,
    auth: Arc<dyn CallerAuth>,
    client: WebSocket,
    current: Link,
    next: Option<Link>,
    connecting: Option<BoxFuture<'static, Renewal>>,
    subs: BTreeMap<String, Sub>,
    client_acked: bool,
    ka: Interval,
    /// When to renew (renewable connections only).
    renew_at: Option<Instant>,
    /// When the current link must be given up, and how.
    deadline: Option<(Instant, u16)>,
    /// When a switch in progress is completed, acknowledged or not.
    switch_until: Option<Instant>,
    generations: u64,
    lost: BoxFuture<'static, ()>,
    _admitted: Option<Admitted>,
}

/// Waits on an optional future (never resolves for `None`).
async fn maybe<T>(future: &mut Option<BoxFuture<'static, T>>) -> T {
    match future {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The next message of an optional link.
async fn next_of(
    link: &mut Option<Link>,
) -> Option<Result<tungstenite::Message, tungstenite::Error>> {
    match link {
        Some(l) => l.up.socket.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at` (never, for `None`).
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether an axum WebSocket error is a message over the size cap.
fn too_big(e: axum::Error) -> bool {
    e.into_inner()
        .downcast::<tungstenite::Error>()
        .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)))
}

impl Relay {
    fn new(
        shared: Arc<Realtime>,
        client: WebSocket,
        target: Arc<Target>,
        auth: Arc<dyn CallerAuth>,
        up: Upstream,
    ) -> Self {
        let mut ka = tokio::time::interval(shared.config.keepalive_interval);
        ka.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = auth.lost();
        let mut relay = Self {
            shared,
            target,
            auth,
            client,
            current: Link {
                generation: 0,
                up,
                last_seen: Instant::now(),
            },
            next: None,
            connecting: None,
            subs: BTreeMap::new(),
            client_acked: false,
            ka,
            renew_at: None,
            deadline: None,
            switch_until: None,
            generations: 0,
            lost,
            _admitted: None,
        };
        relay.schedule();
        relay
    }

    fn api(&self) -> &str {
        &self.target.name
    }

    /// Until the connection ends.
    async fn serve(&mut self) -> End {
        loop {
            let silent_at = self.current.last_seen + self.current.up.silence_limit;
            let renew_at = self
                .renew_at
                .filter(|_| self.connecting.is_none() && self.next.is_none());
            let deadline = self.deadline.map(|(at, _)| at);
            let step = tokio::select! {
                () = self.shared.shutdown.cancelled() => Err(End::going_away()),
                () = &mut self.lost => Err(End::session_ended()),
                m = self.client.recv() => self.on_client(m).await,
                m = self.current.up.socket.next() => self.on_upstream(Which::Current, m).await,
                m = next_of(&mut self.next) => self.on_upstream(Which::Next, m).await,
                r = maybe(&mut self.connecting) => {
                    self.connecting = None;
                    self.on_renewal(r).await
                }
                _ = self.ka.tick(), if self.client_acked => self.tell_client(protocol::ka()).await,
                () = sleep_until(silent_at) => Err(End::close(
                    close::INTERNAL,
                    reason::UPSTREAM_SILENT,
                    "upstream_silent",
                )),
                () = until(deadline) => self.at_deadline().await,
                () = until(renew_at) => {
                    self.renew_at = None;
                    self.begin_renewal();
                    Ok(())
                }
                () = until(self.switch_until) => self.promote().await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// At the deadline: a switch in progress is completed now (the new link is authenticated;
    /// subscriptions it has not acknowledged yet move with it), otherwise the connection ends.
    async fn at_deadline(&mut self) -> Result<(), End> {
        let renewal_deadline = matches!(self.deadline, Some((_, close::RENEWAL_FAILED)));
        if renewal_deadline && self.next.is_some() {
            return self.promote().await;
        }
        Err(self.expired())
    }

    /// The end at the deadline: 4001 for a raw token, 4002 for a renewal that did not happen.
    fn expired(&self) -> End {
        match self.deadline {
            Some((_, close::TOKEN_EXPIRING)) => End::close(
                close::TOKEN_EXPIRING,
                reason::TOKEN_EXPIRING,
                "token_expiring",
            ),
            _ => End::close(
                close::RENEWAL_FAILED,
                reason::RENEWAL_FAILED,
                "renewal_failed",
            ),
        }
    }

    async fn tell_client(&mut self, text: impl Into<ws::Utf8Bytes>) -> Result<(), End> {
        send(&self.shared, &mut self.client, text).await
    }

    async fn finish(mut self, end: End) {
        end.record(&self.shared, &self.target.name);
        if self.connecting.is_some() || self.next.is_some() {
            self.renewal_gauge().dec();
        }
        if let Some(text) = end.message.clone() {
            let _ = self.tell_client(text).await;
        }
        close_client(&self.shared, &mut self.client, &end).await;
        let gauge = self
            .shared
            .metrics
            .appsync_realtime_subscriptions
            .with_label_values(&[&self.target.name]);
        gauge.sub(i64::try_from(self.subs.len()).unwrap_or(0));
        if let Some(next) = self.next.take() {
            close_upstream(next.up.socket).await;
        }
        close_upstream(self.current.up.socket).await;
    }

    // ---- Scheduling: the deadline and the renewal point of the current link ----

    /// Sets the deadline and (renewable connections) the renewal point for the current link.
    fn schedule(&mut self) {
        let now = Instant::now();
        let clock_now = self.shared.clock.now();
        let at = |t: SystemTime| now + clock::saturating_sub(t, clock_now);
        let margin = self.shared.token_expiry_margin;
        let expires = self.current.up.credential.expires_at();
        let soft = expires.checked_sub(margin).unwrap_or(expires);
        let hard = self
            .auth
            .hard_expiry()
            .map(|h| h.checked_sub(margin).unwrap_or(h));
        let renewable = self.auth.renewable();
        self.deadline = Some(match hard {
            Some(h) if !renewable || h <= soft => (at(h), close::TOKEN_EXPIRING),
            _ => (at(soft), close::RENEWAL_FAILED),
        });
        self.renew_at = None;
        if renewable {
            let lifetime = clock::saturating_sub(expires, self.current.up.connected_at);
            // Half the lifetime at most: a link made from a token refreshed late in its own
            // life still leaves time to retry before the deadline.
            let lead = self.shared.config.renew_ahead.min(lifetime / 2);
            let point = expires.checked_sub(lead).unwrap_or(expires);
            if hard.is_none_or(|h| point < h) {
                self.renew_at = Some(at(point));
            }
        }
    }

    /// After a renewal brought nothing (or failed): try again in a while, before the deadline.
    fn retry_later(&mut self) {
        let now = Instant::now();
        let left = self
            .deadline
            .map_or(MAX_RETRY, |(at, _)| at.saturating_duration_since(now));
        let wait = MAX_RETRY.min(left / 4).max(Duration::from_secs(1));
        self.renew_at = Some(now + wait);
    }

    // ---- The client side ----

    async fn on_client(&mut self, m: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        match m {
            Some(Ok(Message::Text(t))) => self.on_client_text(t.as_str()).await,
            Some(Ok(Message::Binary(_))) => Err(End::close(
                close::UNSUPPORTED_DATA,
                reason::BINARY,
                "unsupported",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Ok(Message::Close(_))) => Err(End::gone("client")),
            Some(Err(e)) => Err(if too_big(e) {
                End::close(close::TOO_BIG, reason::TOO_BIG, "too_big")
            } else {
                End::gone("client_gone")
            }),
            None => Err(End::gone("client_gone")),
        }
    }

    async fn on_client_text(&mut self, text: &str) -> Result<(), End> {
        let Some(envelope) = Envelope::parse(text) else {
            let e = protocol::error(None, "UnsupportedOperation", "messages are JSON objects");
            return self.tell_client(e).await;
        };
        match envelope.kind() {
            "connection_init" => self.on_init().await,
            "start" => self.on_start(&envelope, text).await,
            "stop" => self.on_stop(envelope.id()).await,
            _ => {
                let e = protocol::error(
                    envelope.id(),
                    "UnsupportedOperation",
                    "unknown message type; send connection_init, start or stop",
                );
                self.tell_client(e).await
            }
        }
    }

    async fn on_init(&mut self) -> Result<(), End> {
        if self.client_acked {
            let e = protocol::error(
                None,
                "UnsupportedOperation",
                "the connection is already acknowledged",
            );
            return self.tell_client(e).await;
        }
        let timeout = self.shared.config.connection_timeout.as_millis();
        self.tell_client(protocol::connection_ack(timeout)).await?;
        self.client_acked = true;
        self.ka.reset();
        self.tell_client(protocol::ka()).await
    }

    /// Refuses a start: `error` to the client, counted by `outcome`.
    async fn refuse(
        &mut self,
        id: Option<&str>,
        outcome: &'static str,
        error_type: &str,
        message: &str,
    ) -> Result<(), End> {
        self.count_start(outcome);
        self.tell_client(protocol::error(id, error_type, message))
            .await
    }

    fn count_start(&self, outcome: &'static str) {
        self.shared
            .metrics
            .appsync_realtime_starts
            .with_label_values(&[self.api(), outcome])
            .inc();
    }

    async fn on_start(&mut self, envelope: &Envelope, text: &str) -> Result<(), End> {
        let Some(id) = protocol::start_id(envelope) else {
            let m = "a start needs an id of 1 to 128 visible ASCII characters";
            return self.refuse(None, "malformed", "MalformedRequest", m).await;
        };
        let id = id.to_owned();
        if self.subs.contains_key(&id) {
            let m = "a subscription with this id is already started on this connection";
            return self
                .refuse(Some(&id), "duplicate", "DuplicateSubscriptionId", m)
                .await;
        }
        let Some(data) = protocol::start_data(text) else {
            let m = "payload.data must be a string: the JSON of {\"query\", \"variables\"}";
            return self
                .refuse(Some(&id), "malformed", "MalformedRequest", m)
                .await;
        };
        let max = self.shared.config.max_subscriptions_per_connection;
        if self.subs.len() >= max {
            let m = format!("Max number of {max} subscriptions reached");
            return self
                .refuse(Some(&id), "limit", "MaxSubscriptionsReachedError", &m)
                .await;
        }
        if let Some(allowed) = &self.target.allowed_operations
            && let Err(e) = operations::check(data.as_bytes(), allowed)
        {
            let (outcome, error_type) = match e {
                OperationError::NotAllowed { .. } => ("operation_refused", "OperationNotAllowed"),
                _ => ("malformed", "MalformedRequest"),
            };
            return self
                .refuse(Some(&id), outcome, error_type, &e.to_string())
                .await;
        }
        let on = self
            .next
            .as_ref()
            .map_or(self.current.generation, |n| n.generation);
        let data: Arc<str> = data.into();
        if let Err(e) = self.start_on(on, &id, &data).await {
            return self
                .refuse(Some(&id), "signing_failed", "SigningFailed", &e.to_string())
                .await;
        }
        self.count_start("forwarded");
        self.subs.insert(id, Sub::new(data, on));
        self.subscriptions_changed(1);
        Ok(())
    }

    fn subscriptions_changed(&self, delta: i64) {
        self.shared
            .metrics
            .appsync_realtime_subscriptions
            .with_label_values(&[self.api()])
            .add(delta);
    }

    async fn on_stop(&mut self, id: Option<&str>) -> Result<(), End> {
        let Some(id) = id else {
            let e = protocol::error(
                None,
                "MalformedRequest",
                "a stop needs the subscription's id",
            );
            return self.tell_client(e).await;
        };
        let Some(sub) = self.subs.get_mut(id) else {
            return self.tell_client(protocol::complete(id)).await;
        };
        if sub.stopping {
            return Ok(());
        }
        sub.stopping = true;
        let targets = [Some(sub.on), sub.restarting];
        for generation in targets.into_iter().flatten() {
            self.tell_link(generation, protocol::stop(id)).await;
        }
        Ok(())
    }

    // ---- The upstream side ----

    fn link(&self, generation: u64) -> Option<&Link> {
        if self.current.generation == generation {
            return Some(&self.current);
        }
        self.next.as_ref().filter(|n| n.generation == generation)
    }

    fn link_mut(&mut self, generation: u64) -> Option<&mut Link> {
        if self.current.generation == generation {
            return Some(&mut self.current);
        }
        self.next.as_mut().filter(|n| n.generation == generation)
    }

    fn generation_of(&self, which: Which) -> Option<u64> {
        match which {
            Which::Current => Some(self.current.generation),
            Which::Next => self.next.as_ref().map(|n| n.generation),
        }
    }

    /// Sends `text` on a link; a failure shows up as that link's next read failing.
    async fn tell_link(&mut self, generation: u64, text: String) {
        let timeout = self.shared.config.send_timeout;
        if let Some(link) = self.link_mut(generation) {
            let sent = tokio::time::timeout(timeout, link.up.socket.send(text.into())).await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::debug!("appsync real-time: a send to AppSync failed");
            }
        }
    }

    /// Starts `id` on a link with that link's own authorization.
    async fn start_on(
        &mut self,
        generation: u64,
        id: &str,
        data: &str,
    ) -> Result<(), auth::SigningError> {
        let now = self.shared.clock.now();
        let Some(link) = self.link(generation) else {
            return Ok(());
        };
        let authorization =
            auth::start_authorization(&self.target, &link.up.credential, data, now)?;
        self.tell_link(generation, protocol::start(id, data, authorization))
            .await;
        Ok(())
    }

    async fn on_upstream(
        &mut self,
        which: Which,
        m: Option<Result<tungstenite::Message, tungstenite::Error>>,
    ) -> Result<(), End> {
        let Some(generation) = self.generation_of(which) else {
            return Ok(());
        };
        if let Some(link) = self.link_mut(generation) {
            link.last_seen = Instant::now();
        }
        match m {
            Some(Ok(tungstenite::Message::Text(t))) => {
                self.on_upstream_text(which, generation, t).await
            }
            Some(Ok(tungstenite::Message::Close(frame))) => self.upstream_ended(which, frame).await,
            Some(Ok(_)) => Ok(()),
            Some(Err(tungstenite::Error::Capacity(_))) if which == Which::Current => {
                Err(End::close(close::TOO_BIG, reason::TOO_BIG, "too_big"))
            }
            Some(Err(_)) | None => self.upstream_ended(which, None).await,
        }
    }

    /// A link ended: the current one ends the connection (unless a switch can take over), the
    /// next one is a failed renewal.
    async fn upstream_ended(
        &mut self,
        which: Which,
        frame: Option<tungstenite::protocol::CloseFrame>,
    ) -> Result<(), End> {
        if which == Which::Next {
            self.abandon_next("failed").await;
            return Ok(());
        }
        if self.next.is_some() {
            return self.promote().await;
        }
        match frame {
            Some(f) if f.code.is_allowed() && u16::from(f.code) != 1005 => Err(End::close(
                u16::from(f.code),
                f.reason.as_str(),
                "upstream_closed",
            )),
            _ => Err(End::upstream_lost()),
        }
    }

    /// Forwards an upstream text message verbatim.
    async fn forward(&mut self, text: tungstenite::Utf8Bytes) -> Result<(), End> {
        match ws::Utf8Bytes::try_from(Bytes::from(text)) {
            Ok(t) => self.tell_client(t).await,
            Err(_) => Ok(()),
        }
    }

    async fn on_upstream_text(
        &mut self,
        which: Which,
        generation: u64,
        text: tungstenite::Utf8Bytes,
    ) -> Result<(), End> {
        let Some(envelope) = Envelope::parse(text.as_str()) else {
            return Ok(());
        };
        let id = envelope.id().map(str::to_owned);
        let sub = id.as_deref().and_then(|id| self.subs.get(id));
        let delivering = sub.is_some_and(|s| s.on == generation);
        match envelope.kind() {
            "data" if delivering => match id.as_deref() {
                Some(id) if self.fresh(id, generation, &text) => self.forward(text).await,
                _ => Ok(()),
            },
            "start_ack" => self.on_start_ack(generation, id.as_deref(), text).await,
            "error" => {
                self.on_upstream_error(which, generation, id.as_deref(), text)
                    .await
            }
            "complete" if delivering => {
                if let Some(id) = &id {
                    self.remove(id);
                }
                self.forward(text).await
            }
            "connection_error" if which == Which::Current => {
                let mut end = End::close(close::NORMAL, "", "upstream_refused");
                end.message = ws::Utf8Bytes::try_from(Bytes::from(text)).ok();
                Err(end)
            }
            "connection_error" => {
                self.abandon_next("failed").await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether an event for `id` from the link that delivers it is new to the client. While a
    /// renewal restarts the subscription, the old link's events are remembered; once the new
    /// link took over, its first events are dropped while they repeat those (in order), so the
    /// switch delivers no event twice.
    fn fresh(&mut self, id: &str, generation: u64, text: &tungstenite::Utf8Bytes) -> bool {
        let Some(sub) = self.subs.get_mut(id) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if sub.restarting.is_some() {
            sub.overlap.push(digest);
            return true;
        }
        if sub.on != generation || sub.overlap.is_empty() {
            return true;
        }
        match sub.overlap.iter().position(|d| *d == digest) {
            Some(i) => {
                sub.overlap.drain(..=i);
                false
            }
            None => {
                sub.overlap.clear();
                true
            }
        }
    }

    fn remove(&mut self, id: &str) -> Option<Sub> {
        let sub = self.subs.remove(id);
        if sub.is_some() {
            self.subscriptions_changed(-1);
        }
        sub
    }

    async fn on_start_ack(
        &mut self,
        generation: u64,
        id: Option<&str>,
        text: tungstenite::Utf8Bytes,
    ) -> Result<(), End> {
        let Some((id, sub)) = id.and_then(|id| self.subs.get_mut(id).map(|s| (id, s))) else {
            return Ok(());
        };
        let first_ack = !sub.acked;
        if sub.restarting == Some(generation) {
            // The renewal's link took it over: the old one stops delivering it.
            let old = sub.on;
            sub.on = generation;
            sub.restarting = None;
            sub.acked = true;
            let stopping = sub.stopping;
            if !stopping {
                self.tell_link(old, protocol::stop(id)).await;
            }
            if first_ack {
                self.forward(text).await?;
            }
            return self.promote_if_switched().await;
        }
        if sub.on == generation && first_ack {
            sub.acked = true;
            return self.forward(text).await;
        }
        Ok(())
    }

    async fn on_upstream_error(
        &mut self,
        which: Which,
        generation: u64,
        id: Option<&str>,
        text: tungstenite::Utf8Bytes,
    ) -> Result<(), End> {
        let Some(id) = id else {
            return match which {
                Which::Current => self.forward(text).await,
                Which::Next => Ok(()),
            };
        };
        let Some(sub) = self.subs.get(id) else {
            return Ok(());
        };
        if sub.on != generation && sub.restarting != Some(generation) {
            return Ok(());
        }
        // A refused start (or restart): the subscription is gone on AppSync's side.
        if let Some(sub) = self.remove(id) {
            let other = if sub.on == generation {
                sub.restarting
            } else {
                Some(sub.on)
            };
            if let Some(other) = other {
                self.tell_link(other, protocol::stop(id)).await;
            }
        }
        self.forward(text).await?;
        self.promote_if_switched().await
    }

    // ---- Renewal ----

    fn renewal_gauge(&self) -> prometheus::IntGauge {
        self.shared
            .metrics
            .appsync_realtime_renewal_in_progress
            .with_label_values(&[self.api()])
    }

    fn count_renewal(&self, outcome: &'static str) {
        self.shared
            .metrics
            .appsync_realtime_renewals
            .with_label_values(&[self.api(), outcome])
            .inc();
    }

    /// Starts connecting a second upstream link with the caller's newest authentication.
    fn begin_renewal(&mut self) {
        self.renewal_gauge().inc();
        let auth = self.auth.clone();
        let shared = self.shared.clone();
        let target = self.target.clone();
        let current = self.current.up.credential.clone();
        self.connecting = Some(Box::pin(async move {
            let fresh = match auth.current().await {
                Ok(c) => c,
                Err(AuthError::Ended) => return Renewal::Ended,
                Err(AuthError::Unavailable(m)) => return Renewal::Failed(m),
            };
            if fresh.same_as(&current) {
                return Renewal::Unchanged;
            }
            let now = shared.clock.now();
            match upstream::connect(&shared.dialer, &target, fresh, now).await {
                Ok(up) => Renewal::Connected(Box::new(up)),
                Err(e) => Renewal::Failed(e.to_string()),
            }
        }));
    }

    async fn on_renewal(&mut self, renewal: Renewal) -> Result<(), End> {
        let up = match renewal {
            Renewal::Connected(up) => *up,
            Renewal::Ended => return Err(End::session_ended()),
            Renewal::Unchanged => {
                self.renewal_gauge().dec();
                self.count_renewal("unchanged");
                self.retry_later();
                return Ok(());
            }
            Renewal::Failed(why) => {
                tracing::debug!(api = self.api(), error = %why, "appsync real-time renewal failed");
                self.renewal_gauge().dec();
                self.count_renewal("failed");
                self.retry_later();
                return Ok(());
            }
        };
        self.generations += 1;
        let generation = self.generations;
        self.next = Some(Link {
            generation,
            up,
            last_seen: Instant::now(),
        });
        let current = self.current.generation;
        let restart: Vec<(String, Arc<str>)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.on == current && !s.stopping)
            .map(|(id, s)| (id.clone(), s.data.clone()))
            .collect();
        for (id, data) in restart {
            if self.start_on(generation, &id, &data).await.is_ok()
                && let Some(sub) = self.subs.get_mut(&id)
            {
                sub.restarting = Some(generation);
                sub.overlap.clear();
            }
        }
        self.switch_until = Some(Instant::now() + self.shared.config.ack_timeout);
        self.promote_if_switched().await
    }

    /// Promotes the next link once no live subscription depends on the current one.
    async fn promote_if_switched(&mut self) -> Result<(), End> {
        let Some(next) = self.next.as_ref().map(|n| n.generation) else {
            return Ok(());
        };
        let current = self.current.generation;
        let waiting = self
            .subs
            .values()
            .any(|s| s.on == current && s.restarting == Some(next));
        if waiting {
            Ok(())
        } else {
            self.promote().await
        }
    }

    /// Makes the next link current (subscriptions still restarting move with it) and closes
    /// the old one.
    async fn promote(&mut self) -> Result<(), End> {
        self.switch_until = None;
        let Some(next) = self.next.take() else {
            return Ok(());
        };
        let old = std::mem::replace(&mut self.current, next);
        let now = self.current.generation;
        let mut dropped = Vec::new();
        for (id, sub) in &mut self.subs {
            if sub.restarting == Some(now) {
                sub.on = now;
                sub.restarting = None;
            } else if sub.on == old.generation {
                // Not started again (stopping, or its restart could not be signed): gone.
                dropped.push(id.clone());
            }
        }
        for id in dropped {
            let stopping = self.remove(&id).is_some_and(|s| s.stopping);
            let message = if stopping {
                protocol::complete(&id)
            } else {
                protocol::error(
                    Some(&id),
                    "SubscriptionLost",
                    "the subscription could not be started again on the renewed connection",
                )
            };
            self.tell_client(message).await?;
        }
        close_upstream(old.up.socket).await;
        self.renewal_gauge().dec();
        self.count_renewal("ok");
        self.schedule();
        Ok(())
    }

    /// The next link failed before the switch: subscriptions stay on the current one, and
    /// those started on the next link only are started on the current one.
    async fn abandon_next(&mut self, outcome: &'static str) {
        let Some(next) = self.next.take() else {
            return;
        };
        self.switch_until = None;
        let current = self.current.generation;
        let mut moved = Vec::new();
        for (id, sub) in &mut self.subs {
            if sub.restarting == Some(next.generation) {
                sub.restarting = None;
                sub.overlap.clear();
            }
            if sub.on == next.generation {
                sub.on = current;
                if !sub.stopping {
                    moved.push((id.clone(), sub.data.clone()));
                }
            }
        }
        close_upstream(next.up.socket).await;
        for (id, data) in moved {
            if let Err(e) = self.start_on(current, &id, &data).await {
                tracing::debug!(error = %e, "appsync real-time: a start could not be moved");
            }
        }
        self.renewal_gauge().dec();
        self.count_renewal(outcome);
        self.retry_later();
    }
}
