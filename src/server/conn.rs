//! The connection slots of one HTTP listener: who may be shed, and who must be answered.
//!
//! Owns: the table of open connections ([`Slots`]), what each one is doing ([`Conn`]), the
//! socket wrapper that notices request bytes ([`TrackedIo`]) and the per-connection service
//! that marks where each request starts and ends ([`ConnService`]).
//!
//! A connection is **waiting** from the moment it is accepted until it has sent a complete
//! request (head and body), and again from the end of each response until its next request is
//! complete. Otherwise it is **serving**. Promises:
//! - when every slot is taken, a new connection takes the slot of the connection that has been
//!   waiting longest (it is closed: it has sent no complete request, so no answer is owed).
//!   A serving connection is never shed, so a client that has sent its request never waits
//!   behind clients that have not — however many there are, however slowly they send;
//! - when every connection is serving, new connections wait in the kernel's backlog until one
//!   finishes its response;
//! - on shutdown, a waiting connection that has sent no byte of a next request (none read,
//!   none in the socket's receive queue) is closed at once; every other connection finishes:
//!   its request is read and answered with `Connection: close`, then it is closed;
//! - the `Host` check ([`HostPolicy`]) runs before routing, so it covers every path.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tower::Service as _;

use super::host::HostPolicy;
use crate::metrics::Metrics;

/// Set in [`Conn::state`] once the connection is being closed (shed, or drained while idle);
/// the low bits count its complete requests not yet answered.
const CLOSING: u32 = 1 << 31;

/// The open connections of one listener.
pub(crate) struct Slots {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Orders waiting connections: a smaller `waiting_since` has waited longer.
    order: AtomicU64,
    /// Signalled whenever a connection starts waiting (the accept loop may shed it).
    became_waiting: Notify,
    draining: AtomicBool,
}

impl Slots {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            order: AtomicU64::new(0),
            became_waiting: Notify::new(),
            draining: AtomicBool::new(false),
        })
    }

    /// Registers an accepted connection holding `slot`.
    pub(crate) fn open(
        self: &Arc<Self>,
        stream: Arc<TcpStream>,
        slot: OwnedSemaphorePermit,
    ) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            slots: self.clone(),
            stream,
            state: AtomicU32::new(0),
            waiting_since: AtomicU64::new(self.order.fetch_add(1, Ordering::Relaxed)),
            started: AtomicBool::new(false),
            close: Notify::new(),
            slot: Mutex::new(Some(slot)),
        });
        self.lock().insert(id, conn.clone());
        conn
    }

    /// Forgets a connection that ended, releasing its slot unless it was handed over.
    pub(crate) fn closed(&self, conn: &Conn) {
        self.lock().remove(&conn.id);
        drop(conn.take_slot());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection that has been waiting longest, if any connection is waiting, and
    /// hands over its slot at once (its socket closes as soon as its task runs).
    pub(crate) fn shed_longest_waiting(&self) -> Option<OwnedSemaphorePermit> {
        // A candidate can start serving between the scan and the claim; then scan again.
        for _ in 0..8 {
            let candidate = self
                .lock()
                .values()
                .filter(|c| c.state.load(Ordering::Acquire) == 0)
                .min_by_key(|c| c.waiting_since.load(Ordering::Relaxed))
                .cloned();
            match candidate {
                None => return None,
                Some(c) if c.claim_for_closing() => match c.take_slot() {
                    Some(slot) => return Some(slot),
                    None => continue,
                },
                Some(_) => continue,
            }
        }
        None
    }

    /// Waits until some connection starts waiting (it may then be shed).
    pub(crate) async fn someone_waiting(&self) {
        self.became_waiting.notified().await;
    }

    /// Shutdown: from now on responses carry `Connection: close`; idle connections close now.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let conns: Vec<Arc<Conn>> = self.lock().values().cloned().collect();
        for c in conns {
            c.close_if_idle();
        }
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// One open connection.
pub(crate) struct Conn {
    id: u64,
    slots: Arc<Slots>,
    /// Shared with [`TrackedIo`] so a drain can look at the receive queue.
    stream: Arc<TcpStream>,
    /// Complete requests not yet answered, plus [`CLOSING`].
    state: AtomicU32,
    /// When it last started waiting (in [`Slots::order`] units).
    waiting_since: AtomicU64,
    /// Bytes of a next request were read since its last request was complete.
    started: AtomicBool,
    /// Wakes the connection's task to close it.
    close: Notify,
    /// Its connection slot: released when the connection ends, or handed to a new connection
    /// when this one is shed.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Conn {
    fn take_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Resolves when the connection was chosen to be closed.
    pub(crate) async fn close_requested(&self) {
        self.close.notified().await;
    }

    /// Marks it closing if it is waiting; then its task closes it.
    fn claim_for_closing(&self) -> bool {
        let claimed = self
            .state
            .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if claimed {
            self.close.notify_one();
        }
        claimed
    }

    /// During a drain: closes it if it is waiting and nothing of a next request has arrived.
    fn close_if_idle(&self) {
        if self.started.load(Ordering::Acquire) || self.bytes_queued() {
            return;
        }
        self.claim_for_closing();
    }

    /// Whether the socket's receive queue holds bytes hyper has not read yet.
    fn bytes_queued(&self) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(&*self.stream).peek(&mut probe),
            Ok(n) if n > 0
        )
    }

    fn bytes_read(&self) {
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Release);
        }
    }

    /// A request's head and body are in: it is serving. False when it is already closing.
    fn request_complete(&self) -> bool {
        let counted = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & CLOSING == 0).then_some(v + 1)
            })
            .is_ok();
        self.started.store(false, Ordering::Release);
        counted
    }

    /// A counted request's response is finished (or abandoned).
    fn response_done(&self) {
        let before = self.state.fetch_sub(1, Ordering::AcqRel);
        if before & !CLOSING == 1 {
            self.waiting_since.store(
                self.slots.order.fetch_add(1, Ordering::Relaxed),
                Ordering::Relaxed,
            );
            self.slots.became_waiting.notify_one();
            if self.slots.draining() {
                self.close_if_idle();
            }
        }
    }
}

/// The socket, noticing when request bytes are read.
pub(crate) struct TrackedIo {
    stream: Arc<TcpStream>,
    conn: Arc<Conn>,
}

impl TrackedIo {
    pub(crate) fn new(stream: Arc<TcpStream>, conn: Arc<Conn>) -> Self {
        Self { stream, conn }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            // Into the unfilled (uninitialised) part of hyper's buffer: nothing is zeroed first.
            // A read shorter than the room left drained the socket: its readiness is cleared
            // (the closure's WouldBlock makes `try_io` do it), so the next poll waits for epoll
            // instead of costing a recv that can only fail — tokio's own rule for a TcpStream
            // it owns, which this shared one cannot use.
            let mut read = None;
            let outcome = self.stream.try_io(tokio::io::Interest::READABLE, || {
                let n = self.stream.try_read_buf(buf)?;
                read = Some(n);
                if n > 0 && n < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match (outcome, read) {
                (Ok(()), Some(n)) | (Err(_), Some(n)) => {
                    if n > 0 {
                        self.conn.bytes_read();
                    }
                    return Poll::Ready(Ok(()));
                }
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
                (Ok(()), None) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Where one request is: its body not yet complete, complete (counted as serving), or done.
struct Progress {
    conn: Arc<Conn>,
    state: AtomicU8,
}

const PENDING: u8 = 0;
const COUNTED: u8 = 1;
const DONE: u8 = 2;

impl Progress {
    fn complete(&self) {
        if self
            .state
            .compare_exchange(PENDING, COUNTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && !self.conn.request_complete()
        {
            self.state.store(DONE, Ordering::Release);
        }
    }

    fn done(&self) {
        if self.state.swap(DONE, Ordering::AcqRel) == COUNTED {
            self.conn.response_done();
        }
    }
}

impl Drop for Progress {
    /// A request abandoned without a response body (its handler was dropped) is done too.
    fn drop(&mut self) {
        self.done();
    }
}

/// A request body that marks the request complete at its end.
pub(crate) struct RequestBody {
    inner: Incoming,
    progress: Arc<Progress>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.progress.complete(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.progress.complete(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks the response finished when hyper is done with it.
pub(crate) struct ResponseBody {
    inner: Body,
    _done: Finished,
}

struct Finished(Arc<Progress>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.done();
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One path answered before the router: a request for exactly `path` (any method, any query)
/// goes straight to `answer`, which skips the router's dispatch (path lookup, boxed service
/// futures, extensions). For the container endpoint's cached path, where that dispatch cost
/// more than the answer itself (callgrind, BENCHMARKS.md). The router still holds the same
/// route; both call the same handler.
#[derive(Clone)]
pub struct DirectRoute {
    /// The exact path.
    pub path: &'static str,
    /// The handler.
    pub answer: Arc<dyn Fn(Request<Body>) -> DirectAnswer + Send + Sync>,
}

/// What a [`DirectRoute`]'s handler returns: the response, or the work still to do.
pub enum DirectAnswer {
    /// Answered at once (no future allocated: the cached path).
    Ready(Response<Body>),
    /// Answered when this completes.
    Later(DirectFuture),
}

/// The future of a [`DirectAnswer::Later`].
pub type DirectFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

impl std::fmt::Debug for DirectRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectRoute")
            .field("path", &self.path)
            .finish()
    }
}

/// What every connection of a listener shares.
pub(crate) struct ListenerShared {
    pub(crate) router: Router,
    pub(crate) direct: Option<DirectRoute>,
    pub(crate) hosts: Option<Arc<HostPolicy>>,
    pub(crate) name: &'static str,
    pub(crate) metrics: Option<Metrics>,
}

/// The hyper service of one connection: the Host check, then the router.
#[derive(Clone)]
pub(crate) struct ConnService {
    pub(crate) shared: Arc<ListenerShared>,
    pub(crate) conn: Arc<Conn>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ConnFuture;

    fn call(&self, request: Request<Incoming>) -> ConnFuture {
        let progress = Arc::new(Progress {
            conn: self.conn.clone(),
            state: AtomicU8::new(PENDING),
        });
        let (parts, body) = request.into_parts();
        if body.is_end_stream() {
            progress.complete();
        }
        let request = Request::from_parts(
            parts,
            RequestBody {
                inner: body,
                progress: progress.clone(),
            },
        );
        let shared = &self.shared;
        let answer = match shared.hosts.as_ref().and_then(|h| h.refusal(&request)) {
            Some(refusal) => {
                if let Some(m) = &shared.metrics {
                    m.http_host_refusals.with_label_values(&[shared.name]).inc();
                }
                Answer::Ready(Some(refusal))
            }
            None => match &shared.direct {
                Some(direct) if request.uri().path() == direct.path => {
                    match (direct.answer)(request.map(Body::new)) {
                        DirectAnswer::Ready(response) => Answer::Ready(Some(response)),
                        DirectAnswer::Later(future) => Answer::Direct(future),
                    }
                }
                // `Router` is always ready: no `poll_ready` needed before `call`.
                _ => Answer::Routed(shared.router.clone().call(request)),
            },
        };
        ConnFuture {
            answer,
            progress,
            slots: self.conn.slots.clone(),
        }
    }
}

/// The answer of [`ConnService`]: the router's, or a refusal made before routing.
pub(crate) struct ConnFuture {
    answer: Answer,
    progress: Arc<Progress>,
    slots: Arc<Slots>,
}

enum Answer {
    Routed(RouteFuture<Infallible>),
    Direct(DirectFuture),
    Ready(Option<Response<Body>>),
}

impl Future for ConnFuture {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut response = match &mut this.answer {
            Answer::Routed(routed) => match ready!(Pin::new(routed).poll(cx)) {
                Ok(r) => r,
                Err(never) => match never {},
            },
            Answer::Direct(direct) => ready!(direct.as_mut().poll(cx)),
            Answer::Ready(ready) => match ready.take() {
                Some(r) => r,
                // Polled again after it completed: hyper never does.
                None => return Poll::Pending,
            },
        };
        if this.slots.draining() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let progress = this.progress.clone();
        Poll::Ready(Ok(response.map(|inner| ResponseBody {
            inner,
            _done: Finished(progress),
        })))
    }
}
