//! One client's HTTP/2 connection (RFC 9113), served in a single task: frames are read and
//! written here, and each stream's handler and response body are polled here too, woken
//! through the connection's ready list. No task per stream, no lock shared with one: a
//! request costs one pass through this loop, its handler's work, and one write.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::body::{Body as _, Bytes};
use hyper::header::HeaderMap;
use hyper::{Request, Response, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::{Inbox, Ready, RecvBody, StreamWaker};
use super::frame::{self, Head, MAX_FRAME, MAX_WINDOW, Reason};
use super::hpack::{self, Decoder};
use super::request::{CONNECTION_SPECIFIC, Fields};
use crate::http::{Client, ClientBody, H2_PREFACE};
use crate::upstream::Body;

/// What a connection allows its client, from the router's `Config`.
#[derive(Clone)]
pub(crate) struct Limits {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub header_read_timeout: Duration,
    /// Streams the client may reset before they were answered, beyond those answered.
    pub reset_allowance: usize,
    /// Streams the router may reset for the client's errors, beyond those answered.
    pub error_allowance: usize,
}

/// A stream's window as announced in SETTINGS: bounds what one request body buffers here.
const STREAM_WINDOW: i64 = 256 << 10;
/// The connection's window: bounds what all its request bodies buffer together.
const CONN_WINDOW: i64 = 1 << 20;
/// The protocol's initial window, before SETTINGS change it.
const DEFAULT_WINDOW: i64 = 65_535;
/// Reading stops while this much output waits for the client to take it.
const OUT_HIGH: usize = 64 << 10;
/// Bytes read at once: several frames, and always room for one whole.
const READ_BUF: usize = 64 << 10;
/// Loop turns before the task yields to others on its thread.
const BUDGET: usize = 32;
/// A compressed header block larger than this is refused whatever it decodes to.
const MAX_BLOCK: usize = 256 << 10;
/// Stream ids the router closed lately: frames the client sent before it learned are ignored.
const RECENTLY_CLOSED: usize = 1024;
/// After the last frame out, how long unread input is drained before the socket closes, so the
/// client gets what was sent instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

type Handling = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Stream ids are the client's own odd numbers: mixing them is enough of a hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Streams = HashMap<u32, Stream, BuildHasherDefault<IdHasher>>;

struct Stream {
    waker: Waker,
    /// The request's handler, until it answers.
    handling: Option<Handling>,
    /// The response body, from the answer until it ends.
    body: Option<Body>,
    /// Polled from the body, not yet let out by the windows.
    unsent: Bytes,
    send_window: i64,
    /// What the client may still send on this stream.
    recv_window: i64,
    /// Received bytes (taken by the handler, or padding) not yet given back as window.
    unreturned: i64,
    inbox: Option<Arc<Mutex<Inbox>>>,
    /// The client has not ended its side (END_STREAM).
    remote_open: bool,
    content_length: Option<u64>,
    received: u64,
    /// The router has ended its side.
    done: bool,
    /// In the connection's `starved` list.
    starved: bool,
}

/// A connection error: GOAWAY with the reason, then close.
struct Fatal(Reason, &'static str);

/// A header block arriving in more than one frame.
struct Continued {
    stream: u32,
    block: Vec<u8>,
    end_stream: bool,
    malformed: Option<&'static str>,
}

pub(crate) struct Connection {
    io: TcpStream,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    preface_read: bool,
    /// Once everything is sent: input read and dropped until the client closes, or this ends.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    core: Core,
}

/// Everything but the socket and the input, so a frame's payload can be borrowed from the
/// input while the rest changes.
struct Core {
    client: Arc<Client>,
    limits: Limits,
    decoder: Decoder,
    streams: Streams,
    ready: Arc<Ready>,
    /// Streams to look at in this turn (besides those woken).
    queue: Vec<u32>,
    woken: Vec<u32>,
    /// Streams waiting for connection window or output room.
    starved: Vec<u32>,
    /// Ids of streams the router closed or reset lately, oldest first.
    closed: std::collections::VecDeque<u32>,
    /// The client changed SETTINGS_HEADER_TABLE_SIZE: the next header block says the router's
    /// encoder uses a table of 0 (RFC 7541 §4.2), which it always does.
    table_size_update: bool,
    out: Vec<u8>,
    out_at: usize,
    scratch: Vec<u8>,
    settings_seen: bool,
    continued: Option<Continued>,
    /// While the client owes the rest of a header block (or its first SETTINGS).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the last stream closed: a connection with none open for `header_read_timeout`
    /// is closed (GOAWAY), as an idle HTTP/1 keep-alive connection is.
    idle_since: Instant,
    /// Fires at the earliest time the connection may have been idle that long; checked then.
    idle: Pin<Box<tokio::time::Sleep>>,
    last_stream: u32,
    send_window: i64,
    recv_window: i64,
    unreturned: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    reset_credit: usize,
    error_credit: usize,
    /// GOAWAY sent: streams above this id are not served.
    going_away: Option<u32>,
    /// The client said GOAWAY: it opens nothing more.
    peer_going_away: bool,
    /// A connection error was sent: nothing more is read or served.
    closing: bool,
}

impl Connection {
    pub(crate) fn new(io: TcpStream, client: Arc<Client>, limits: Limits) -> Connection {
        let mut out = Vec::with_capacity(4096);
        frame::put_settings(
            &mut out,
            &[
                (frame::SETTINGS_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, limits.max_header_list_size),
            ],
        );
        frame::put_window_update(&mut out, 0, (CONN_WINDOW - DEFAULT_WINDOW) as u32);
        let deadline = Some(Box::pin(tokio::time::sleep(limits.header_read_timeout)));
        let idle = Box::pin(tokio::time::sleep(limits.header_read_timeout));
        let core = Core {
            client,
            decoder: Decoder::new(4096),
            streams: Streams::default(),
            ready: Arc::new(Ready::default()),
            queue: Vec::new(),
            woken: Vec::new(),
            starved: Vec::new(),
            closed: std::collections::VecDeque::new(),
            table_size_update: false,
            out,
            out_at: 0,
            scratch: Vec::new(),
            settings_seen: false,
            continued: None,
            deadline,
            idle_since: Instant::now(),
            idle,
            last_stream: 0,
            send_window: DEFAULT_WINDOW,
            recv_window: CONN_WINDOW,
            unreturned: 0,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            reset_credit: limits.reset_allowance,
            error_credit: limits.error_allowance,
            limits,
            going_away: None,
            peer_going_away: false,
            closing: false,
        };
        Connection {
            io,
            input: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            preface_read: false,
            linger: None,
            core,
        }
    }

    /// Stops taking new streams (GOAWAY naming the last one taken) and ends once those are done.
    pub(crate) fn graceful_shutdown(&mut self) {
        let core = &mut self.core;
        if core.going_away.is_none() && !core.closing {
            core.going_away = Some(core.last_stream);
            frame::put_goaway(&mut core.out, core.last_stream, Reason::NoError, "");
        }
        core.ready.push(0);
    }

    /// Reads what the socket has; false when the client has gone.
    fn read(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let mut buf = ReadBuf::new(&mut self.input[self.end..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                self.end += buf.filled().len();
                Poll::Ready(true)
            }
            Poll::Ready(_) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Handles each whole frame in the input.
    fn parse(&mut self) {
        if !self.preface_read {
            if self.end - self.start < H2_PREFACE.len() {
                return;
            }
            if &self.input[self.start..self.start + H2_PREFACE.len()] != H2_PREFACE {
                return self.core.fail(Fatal(Reason::Protocol, "the connection does not open with the HTTP/2 preface"));
            }
            self.start += H2_PREFACE.len();
            self.preface_read = true;
        }
        while !self.core.closing && self.end - self.start >= frame::HEADER_LEN {
            let head =
                Head::parse(self.input[self.start..self.start + frame::HEADER_LEN].try_into().unwrap_or(&[0; 9]));
            if head.len > MAX_FRAME {
                return self.core.fail(Fatal(Reason::FrameSize, "a frame is larger than SETTINGS_MAX_FRAME_SIZE"));
            }
            let total = frame::HEADER_LEN + head.len;
            if self.end - self.start < total {
                return;
            }
            let payload = &self.input[self.start + frame::HEADER_LEN..self.start + total];
            self.start += total;
            if let Err(fatal) = self.core.on_frame(head, payload) {
                self.core.fail(fatal);
            }
        }
    }

    /// Writes what is waiting; false if the socket failed.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let core = &mut self.core;
        let mut wrote = false;
        while core.out_at < core.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &core.out[core.out_at..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(n)) => {
                    core.out_at += n;
                    wrote = true;
                }
                Poll::Pending => break,
            }
        }
        if core.out_at == core.out.len() {
            core.out.clear();
            core.out_at = 0;
        } else if core.out_at >= OUT_HIGH {
            core.out.drain(..core.out_at);
            core.out_at = 0;
        }
        if wrote && core.pending_out() < OUT_HIGH / 2 {
            core.requeue_starved();
        }
        if wrote { Poll::Ready(true) } else { Poll::Pending }
    }

    /// Drops what the client still sends until it closes, or `LINGER` has passed.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..BUDGET {
            if let Some(Poll::Ready(())) | None = self.linger.as_mut().map(|l| l.as_mut().poll(cx)) {
                return Poll::Ready(());
            }
            (self.start, self.end) = (0, 0);
            match self.read(cx) {
                Poll::Ready(true) => continue,
                Poll::Ready(false) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        // A client that keeps sending: other connections on this thread get their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.linger.is_some() {
            return this.poll_linger(cx);
        }
        this.core.ready.register(cx.waker());
        for _ in 0..BUDGET {
            let mut progress = false;
            if !this.core.closing && this.core.pending_out() < OUT_HIGH {
                match this.read(cx) {
                    Poll::Ready(true) => {
                        progress = true;
                        this.parse();
                    }
                    // The client went away: what it asked for is of no use to anyone.
                    Poll::Ready(false) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            progress |= this.core.serve_streams();
            match this.flush(cx) {
                Poll::Ready(false) => return Poll::Ready(()),
                Poll::Ready(true) => progress = true,
                Poll::Pending => {}
            }
            // Polled after the frames that may have set it, so its timer is always registered.
            if let Some(deadline) = &mut this.core.deadline
                && deadline.as_mut().poll(cx).is_ready()
            {
                this.core.deadline = None;
                this.core.fail(Fatal(Reason::Protocol, "the client's SETTINGS or header block did not arrive in time"));
                progress = true;
            }
            if this.core.pending_out() == 0 && this.core.finished() {
                let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
                return this.poll_linger(cx);
            }
            if !progress {
                // Only when nothing else happens: the timer stays off the request path.
                if this.core.idle.as_mut().poll(cx).is_ready() && this.core.idle_check() {
                    continue;
                }
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Core {
    /// The connection is gone however it ended: a handler still reading a request body (an
    /// instance's HTTP/2 stream, say) learns it will not end.
    fn drop(&mut self) {
        for stream in self.streams.values() {
            if let Some(inbox) = &stream.inbox {
                let mut inbox = super::body::lock(inbox);
                if !inbox.ended || !inbox.is_empty() {
                    inbox.fail();
                }
            }
        }
    }
}

impl Core {
    fn pending_out(&self) -> usize {
        self.out.len() - self.out_at
    }

    fn requeue_starved(&mut self) {
        for id in self.starved.drain(..) {
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.starved = false;
                self.queue.push(id);
            }
        }
    }

    /// The idle timer fired: a connection idle long enough goes (GOAWAY, then close once
    /// sent); otherwise the timer is set for when it could be. True if it goes.
    fn idle_check(&mut self) -> bool {
        let timeout = self.limits.header_read_timeout;
        let quiet = self.streams.is_empty() && self.continued.is_none();
        if quiet && self.idle_since.elapsed() >= timeout && self.going_away.is_none() && !self.closing {
            self.going_away = Some(self.last_stream);
            frame::put_goaway(&mut self.out, self.last_stream, Reason::NoError, "idle");
            return true;
        }
        let from = if quiet { self.idle_since } else { Instant::now() };
        self.idle.as_mut().reset((from + timeout).into());
        false
    }

    fn remember_closed(&mut self, id: u32) {
        if self.closed.len() == RECENTLY_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
    }

    fn recently_closed(&self, id: u32) -> bool {
        self.closed.contains(&id)
    }

    /// The scratch buffer, emptied for a header block to encode.
    fn start_block(&mut self) {
        start_block(&mut self.scratch, &mut self.table_size_update);
    }

    fn finished(&self) -> bool {
        self.closing
            || ((self.going_away.is_some() || self.peer_going_away)
                && self.streams.is_empty()
                && self.continued.is_none())
    }

    /// A connection error: GOAWAY, every stream dropped, and the connection ends once the
    /// GOAWAY is out.
    fn fail(&mut self, Fatal(reason, why): Fatal) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.deadline = None;
        // The last stream id a GOAWAY names never grows (§6.8).
        frame::put_goaway(&mut self.out, self.going_away.unwrap_or(self.last_stream), reason, why);
        for (_, stream) in self.streams.drain() {
            if let Some(inbox) = &stream.inbox {
                super::body::lock(inbox).fail();
            }
        }
    }

    fn on_frame(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if let Some(continued) = &self.continued
            && (head.kind != frame::CONTINUATION || head.stream != continued.stream)
        {
            return Err(Fatal(Reason::Protocol, "a header block is interrupted by another frame"));
        }
        if !self.settings_seen && (head.kind != frame::SETTINGS || head.flags & frame::ACK != 0) {
            return Err(Fatal(Reason::Protocol, "the client's first frame is not SETTINGS"));
        }
        match head.kind {
            frame::DATA => self.on_data(head, payload),
            frame::HEADERS => self.on_headers(head, payload),
            frame::PRIORITY => self.on_priority(head, payload),
            frame::RST_STREAM => self.on_reset(head, payload),
            frame::SETTINGS => self.on_settings(head, payload),
            frame::PUSH_PROMISE => Err(Fatal(Reason::Protocol, "a client cannot send PUSH_PROMISE")),
            frame::PING => self.on_ping(head, payload),
            frame::GOAWAY => self.on_goaway(head, payload),
            frame::WINDOW_UPDATE => self.on_window_update(head, payload),
            frame::CONTINUATION => self.on_continuation(head, payload),
            // Unknown frame types are ignored (§5.5).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream != 0 {
            return Err(Fatal(Reason::Protocol, "SETTINGS on a stream"));
        }
        if head.flags & frame::ACK != 0 {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(Fatal(Reason::FrameSize, "a SETTINGS ACK with a payload"))
            };
        }
        if !payload.len().is_multiple_of(6) {
            return Err(Fatal(Reason::FrameSize, "a SETTINGS payload is not a whole number of settings"));
        }
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(Fatal(Reason::Protocol, "SETTINGS_ENABLE_PUSH is neither 0 nor 1"));
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = value as i64;
                    if value > MAX_WINDOW {
                        return Err(Fatal(Reason::FlowControl, "SETTINGS_INITIAL_WINDOW_SIZE is above 2^31-1"));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for (&id, stream) in &mut self.streams {
                        stream.send_window += delta;
                        if stream.send_window > MAX_WINDOW {
                            return Err(Fatal(Reason::FlowControl, "a stream's window went above 2^31-1"));
                        }
                        if delta > 0 && stream.body.is_some() {
                            self.queue.push(id);
                        }
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(MAX_FRAME as u32..=0xff_ffff).contains(&value) {
                        return Err(Fatal(Reason::Protocol, "SETTINGS_MAX_FRAME_SIZE is out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                frame::SETTINGS_HEADER_TABLE_SIZE => self.table_size_update = true,
                // The others are about what the router would open or push.
                _ => {}
            }
        }
        frame::put_head(&mut self.out, 0, frame::SETTINGS, frame::ACK, 0);
        if !self.settings_seen {
            self.settings_seen = true;
            self.deadline = None;
        }
        Ok(())
    }

    fn on_ping(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream != 0 {
            return Err(Fatal(Reason::Protocol, "PING on a stream"));
        }
        if payload.len() != 8 {
            return Err(Fatal(Reason::FrameSize, "a PING payload is not 8 bytes"));
        }
        if head.flags & frame::ACK == 0 {
            frame::put_head(&mut self.out, 8, frame::PING, frame::ACK, 0);
            self.out.extend_from_slice(payload);
        }
        Ok(())
    }

    fn on_goaway(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream != 0 {
            return Err(Fatal(Reason::Protocol, "GOAWAY on a stream"));
        }
        if payload.len() < 8 {
            return Err(Fatal(Reason::FrameSize, "a GOAWAY payload is shorter than 8 bytes"));
        }
        self.peer_going_away = true;
        Ok(())
    }

    fn on_priority(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream == 0 {
            return Err(Fatal(Reason::Protocol, "PRIORITY on stream 0"));
        }
        if payload.len() != 5 {
            self.reset(head.stream, Reason::FrameSize)?;
        } else if u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff == head.stream {
            self.reset(head.stream, Reason::Protocol)?;
        }
        // Priorities are advisory; the router serves streams as they become ready.
        Ok(())
    }

    fn on_reset(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream == 0 {
            return Err(Fatal(Reason::Protocol, "RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return Err(Fatal(Reason::FrameSize, "a RST_STREAM payload is not 4 bytes"));
        }
        if head.stream > self.last_stream {
            return Err(Fatal(Reason::Protocol, "RST_STREAM on a stream never opened"));
        }
        let Some(stream) = self.streams.remove(&head.stream) else { return Ok(()) };
        self.drop_stream(head.stream, &stream);
        if stream.handling.is_some() {
            // Opened and reset before its answer: the rapid-reset attack (CVE-2023-44487)
            // is made of these; answered streams earn the allowance back.
            if self.reset_credit == 0 {
                return Err(Fatal(Reason::EnhanceYourCalm, "too many streams reset before their answer"));
            }
            self.reset_credit -= 1;
        }
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if payload.len() != 4 {
            return Err(Fatal(Reason::FrameSize, "a WINDOW_UPDATE payload is not 4 bytes"));
        }
        let increment = (u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff) as i64;
        if head.stream == 0 {
            if increment == 0 {
                return Err(Fatal(Reason::Protocol, "a WINDOW_UPDATE of 0 for the connection"));
            }
            self.send_window += increment;
            if self.send_window > MAX_WINDOW {
                return Err(Fatal(Reason::FlowControl, "the connection's window went above 2^31-1"));
            }
            self.requeue_starved();
            return Ok(());
        }
        if head.stream > self.last_stream {
            return Err(Fatal(Reason::Protocol, "WINDOW_UPDATE on a stream never opened"));
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else { return Ok(()) };
        if increment == 0 {
            return self.reset(head.stream, Reason::Protocol);
        }
        stream.send_window += increment;
        if stream.send_window > MAX_WINDOW {
            return self.reset(head.stream, Reason::FlowControl);
        }
        if stream.body.is_some() {
            self.queue.push(head.stream);
        }
        Ok(())
    }

    fn on_data(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream == 0 {
            return Err(Fatal(Reason::Protocol, "DATA on stream 0"));
        }
        let len = payload.len() as i64;
        if len > self.recv_window {
            return Err(Fatal(Reason::FlowControl, "DATA beyond the connection's window"));
        }
        self.recv_window -= len;
        let data = frame::unpad(head.flags, payload).ok_or(Fatal(Reason::Protocol, "DATA padding is too long"))?;
        let padding = len - data.len() as i64;
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(Fatal(Reason::Protocol, "DATA on a stream never opened"));
            }
            self.unreturned += len;
            // A stream the router closed or reset lately: the client had not learned yet.
            if self.recently_closed(head.stream) {
                return Ok(());
            }
            return self.refuse(head.stream, Reason::StreamClosed);
        };
        if !stream.remote_open {
            self.unreturned += len;
            return self.reset(head.stream, Reason::StreamClosed);
        }
        if len > stream.recv_window {
            return Err(Fatal(Reason::FlowControl, "DATA beyond the stream's window"));
        }
        stream.recv_window -= len;
        stream.unreturned += padding;
        self.unreturned += padding;
        stream.received += data.len() as u64;
        let end = head.flags & frame::END_STREAM != 0;
        let overrun = stream.content_length.is_some_and(|n| stream.received > n);
        let short = end && stream.content_length.is_some_and(|n| stream.received != n);
        if overrun || short {
            self.unreturned += data.len() as i64;
            return self.reset(head.stream, Reason::Protocol);
        }
        if let Some(inbox) = &stream.inbox {
            let mut inbox = super::body::lock(inbox);
            if !data.is_empty() {
                inbox.push(Bytes::copy_from_slice(data));
            }
            if end {
                inbox.end(None);
            }
        }
        if end {
            stream.remote_open = false;
        }
        self.queue.push(head.stream);
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream == 0 || head.stream.is_multiple_of(2) {
            return Err(Fatal(Reason::Protocol, "HEADERS on stream 0 or on a server's (even) stream"));
        }
        let mut block =
            frame::unpad(head.flags, payload).ok_or(Fatal(Reason::Protocol, "HEADERS padding is too long"))?;
        let mut malformed = None;
        if head.flags & frame::PRIORITY_FLAG != 0 {
            if block.len() < 5 {
                return Err(Fatal(Reason::Protocol, "HEADERS padding leaves no room for its priority"));
            }
            if u32::from_be_bytes([block[0], block[1], block[2], block[3]]) & 0x7fff_ffff == head.stream {
                malformed = Some("a stream depends on itself");
            }
            block = &block[5..];
        }
        let end_stream = head.flags & frame::END_STREAM != 0;
        if head.flags & frame::END_HEADERS != 0 {
            return self.on_header_block(head.stream, block, end_stream, malformed);
        }
        self.continued = Some(Continued { stream: head.stream, block: block.to_vec(), end_stream, malformed });
        self.deadline = Some(Box::pin(tokio::time::sleep(self.limits.header_read_timeout)));
        Ok(())
    }

    fn on_continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        let Some(mut continued) = self.continued.take() else {
            return Err(Fatal(Reason::Protocol, "CONTINUATION without a header block to continue"));
        };
        if continued.block.len() + payload.len() > MAX_BLOCK {
            return Err(Fatal(Reason::EnhanceYourCalm, "a header block is over 256 KiB"));
        }
        continued.block.extend_from_slice(payload);
        if head.flags & frame::END_HEADERS == 0 {
            self.continued = Some(continued);
            return Ok(());
        }
        self.deadline = None;
        self.on_header_block(continued.stream, &continued.block, continued.end_stream, continued.malformed)
    }

    /// A whole header block: a new request, or trailers.
    fn on_header_block(
        &mut self,
        id: u32,
        block: &[u8],
        end_stream: bool,
        malformed: Option<&'static str>,
    ) -> Result<(), Fatal> {
        if self.streams.contains_key(&id) {
            return self.on_trailers(id, block, end_stream);
        }
        let new = id > self.last_stream;
        let mut fields = Fields::request(self.limits.max_header_list_size as usize);
        self.decoder
            .decode(block, |name, value| fields.field(name, value))
            .map_err(|_| Fatal(Reason::Compression, "a header block does not decode (HPACK)"))?;
        if !new {
            // Only the trailers of a stream the router has lately answered or reset may still
            // come; anything else reuses or goes back to a stream id (§5.1.1).
            return match (self.recently_closed(id), end_stream) {
                (true, true) => Ok(()),
                (true, false) => Err(Fatal(Reason::StreamClosed, "HEADERS on a closed stream")),
                (false, _) => Err(Fatal(Reason::Protocol, "HEADERS on a stream id at or below one already used")),
            };
        }
        self.last_stream = id;
        if self.going_away.is_some() || self.closing {
            return Ok(());
        }
        if self.streams.len() >= self.limits.max_concurrent_streams as usize {
            // Not held against the client: it may open more before it sees the SETTINGS.
            frame::put_rst(&mut self.out, id, Reason::RefusedStream);
            self.remember_closed(id);
            return Ok(());
        }
        if fields.over_limit() {
            return self.answer_431(id, end_stream);
        }
        let head = match (malformed, fields.into_request()) {
            (None, Ok(head)) if !(end_stream && head.content_length.is_some_and(|n| n > 0)) => head,
            _ => return self.refuse(id, Reason::Protocol),
        };
        let waker = Waker::from(Arc::new(StreamWaker { id, ready: self.ready.clone() }));
        let inbox = (!end_stream).then(|| Arc::new(Mutex::new(Inbox::default())));
        let body = match &inbox {
            None => ClientBody::Empty,
            Some(inbox) => ClientBody::H2(RecvBody {
                inbox: inbox.clone(),
                ready: self.ready.clone(),
                id,
                content_length: head.content_length,
            }),
        };
        let mut request = Request::new(body);
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = head.headers;
        let handling = crate::http::respond(&self.client, request);
        self.streams.insert(
            id,
            Stream {
                waker,
                handling: Some(handling),
                body: None,
                unsent: Bytes::new(),
                send_window: self.peer_initial_window,
                recv_window: STREAM_WINDOW,
                unreturned: 0,
                inbox,
                remote_open: !end_stream,
                content_length: head.content_length,
                received: 0,
                done: false,
                starved: false,
            },
        );
        self.queue.push(id);
        Ok(())
    }

    fn on_trailers(&mut self, id: u32, block: &[u8], end_stream: bool) -> Result<(), Fatal> {
        let mut fields = Fields::trailers(self.limits.max_header_list_size as usize);
        self.decoder
            .decode(block, |name, value| fields.field(name, value))
            .map_err(|_| Fatal(Reason::Compression, "a header block does not decode (HPACK)"))?;
        let Some(stream) = self.streams.get_mut(&id) else { return Ok(()) };
        if !stream.remote_open {
            return self.reset(id, Reason::StreamClosed);
        }
        let short = stream.content_length.is_some_and(|n| stream.received != n);
        let over = fields.over_limit();
        let trailers = match fields.into_trailers() {
            Ok(trailers) if end_stream && !short && !over => trailers,
            _ => return self.reset(id, Reason::Protocol),
        };
        stream.remote_open = false;
        if let Some(inbox) = &stream.inbox {
            super::body::lock(inbox).end(Some(trailers));
        }
        self.queue.push(id);
        Ok(())
    }

    /// A stream refused or ended for the client's error: RST_STREAM, within the allowance.
    fn reset(&mut self, id: u32, reason: Reason) -> Result<(), Fatal> {
        if let Some(stream) = self.streams.remove(&id) {
            self.drop_stream(id, &stream);
        }
        self.refuse(id, reason)
    }

    fn refuse(&mut self, id: u32, reason: Reason) -> Result<(), Fatal> {
        frame::put_rst(&mut self.out, id, reason);
        self.remember_closed(id);
        if self.error_credit == 0 {
            return Err(Fatal(Reason::EnhanceYourCalm, "too many streams reset for the client's errors"));
        }
        self.error_credit -= 1;
        Ok(())
    }

    /// A request whose headers are over SETTINGS_MAX_HEADER_LIST_SIZE.
    fn answer_431(&mut self, id: u32, end_stream: bool) -> Result<(), Fatal> {
        self.start_block();
        hpack::encode_status(&mut self.scratch, 431);
        frame::put_headers(&mut self.out, id, &self.scratch, true, self.peer_max_frame);
        if !end_stream {
            frame::put_rst(&mut self.out, id, Reason::NoError);
        }
        self.remember_closed(id);
        Ok(())
    }

    /// A stream leaves: its body's reader learns it failed if it had not ended, and what it
    /// buffered goes back to the connection's window.
    fn drop_stream(&mut self, id: u32, stream: &Stream) {
        self.remember_closed(id);
        if self.streams.is_empty() {
            self.idle_since = Instant::now();
        }
        if let Some(inbox) = &stream.inbox {
            let mut inbox = super::body::lock(inbox);
            self.unreturned += inbox.buffered as i64 + inbox.taken as i64;
            // A body not read to its end must not look whole to whoever still reads it.
            if !inbox.ended || !inbox.is_empty() {
                inbox.fail();
            }
            inbox.buffered = 0;
            inbox.taken = 0;
        }
    }

    /// Polls each stream that was woken or has news; true if any output was made.
    fn serve_streams(&mut self) -> bool {
        let before = self.out.len();
        self.ready.take(&mut self.woken);
        let mut ids = std::mem::take(&mut self.woken);
        ids.append(&mut self.queue);
        for &id in &ids {
            if self.closing {
                break;
            }
            self.serve(id);
        }
        ids.clear();
        self.woken = ids;
        if self.unreturned >= CONN_WINDOW / 4 {
            frame::put_window_update(&mut self.out, 0, self.unreturned as u32);
            self.recv_window += self.unreturned;
            self.unreturned = 0;
        }
        self.out.len() != before
    }

    fn serve(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        let waker = stream.waker.clone();
        let mut cx = Context::from_waker(&waker);
        let polled = stream.handling.as_mut().map(|handling| {
            // A handler that panics ends its stream, not the connection's other streams (as a
            // task a stream would).
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handling.as_mut().poll(&mut cx)))
        });
        if let Some(Err(_)) = polled {
            if let Some(stream) = self.streams.remove(&id) {
                self.drop_stream(id, &stream);
            }
            frame::put_rst(&mut self.out, id, Reason::Internal);
            return;
        }
        if let Some(Ok(Poll::Ready(response))) = polled {
            let Some(stream) = self.streams.get_mut(&id) else { return };
            stream.handling = None;
            self.reset_credit = (self.reset_credit + 1).min(self.limits.reset_allowance);
            self.error_credit = (self.error_credit + 1).min(self.limits.error_allowance);
            let (parts, body) = response.into_parts();
            let end = body.is_end_stream();
            self.start_block();
            hpack::encode_status(&mut self.scratch, parts.status.as_u16());
            encode_fields(&mut self.scratch, &parts.headers);
            frame::put_headers(&mut self.out, id, &self.scratch, end, self.peer_max_frame);
            let Some(stream) = self.streams.get_mut(&id) else { return };
            if end {
                stream.done = true;
            } else {
                stream.body = Some(body);
            }
        }
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if stream.body.is_some() {
            self.pump(id, &mut cx);
        }
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if let Some(inbox) = &stream.inbox {
            let taken = std::mem::take(&mut super::body::lock(inbox).taken) as i64;
            stream.unreturned += taken;
            self.unreturned += taken;
        }
        if stream.remote_open && stream.unreturned >= STREAM_WINDOW / 4 {
            frame::put_window_update(&mut self.out, id, stream.unreturned as u32);
            stream.recv_window += stream.unreturned;
            stream.unreturned = 0;
        }
        if stream.done {
            let remote_open = stream.remote_open;
            if let Some(stream) = self.streams.remove(&id) {
                self.drop_stream(id, &stream);
            }
            if remote_open {
                // Answered before the request ended: the rest is not needed (§8.1).
                frame::put_rst(&mut self.out, id, Reason::NoError);
            }
        }
    }

    /// Sends what the response body has, as far as the windows and the output buffer allow.
    fn pump(&mut self, id: u32, cx: &mut Context<'_>) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        let Some(body) = stream.body.as_mut() else { return };
        loop {
            if self.out.len() - self.out_at >= OUT_HIGH {
                if !stream.starved {
                    stream.starved = true;
                    self.starved.push(id);
                }
                return;
            }
            if stream.unsent.is_empty() {
                let polled =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(&mut *body).poll_frame(cx)));
                // A body that panics is one that broke off.
                match polled.unwrap_or_else(|_| Poll::Ready(Some(Err("the response body panicked".into())))) {
                    Poll::Pending => return,
                    Poll::Ready(None) => {
                        frame::put_data(&mut self.out, id, &[], true);
                        stream.done = true;
                        return;
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // The instance broke off its answer: the client must not take a
                        // truncated body for a whole one.
                        frame::put_rst(&mut self.out, id, Reason::Internal);
                        // Closed both ways now: no second reset when it is removed.
                        stream.remote_open = false;
                        stream.done = true;
                        return;
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            stream.unsent = data;
                            if stream.unsent.is_empty() {
                                continue;
                            }
                        }
                        Err(frame) => {
                            let trailers = frame.into_trailers().unwrap_or_default();
                            start_block(&mut self.scratch, &mut self.table_size_update);
                            encode_fields(&mut self.scratch, &trailers);
                            frame::put_headers(&mut self.out, id, &self.scratch, true, self.peer_max_frame);
                            stream.done = true;
                            return;
                        }
                    },
                }
            }
            let room = stream.send_window.min(self.send_window).min(self.peer_max_frame as i64);
            if room <= 0 {
                if self.send_window <= 0 && !stream.starved {
                    stream.starved = true;
                    self.starved.push(id);
                }
                return;
            }
            let chunk = stream.unsent.split_to(stream.unsent.len().min(room as usize));
            let end = stream.unsent.is_empty() && body.is_end_stream();
            frame::put_data(&mut self.out, id, &chunk, end);
            stream.send_window -= chunk.len() as i64;
            self.send_window -= chunk.len() as i64;
            if end {
                stream.done = true;
                return;
            }
        }
    }
}

/// Empties `scratch` for a header block; the first after the client changed its table size
/// starts with a size update to 0 (RFC 7541 §4.2), the table the router's encoder uses.
fn start_block(scratch: &mut Vec<u8>, table_size_update: &mut bool) {
    scratch.clear();
    if std::mem::take(table_size_update) {
        scratch.push(0x20);
    }
}

/// Response headers or trailers, without those HTTP/2 forbids (§8.2.2).
fn encode_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        let name = name.as_str();
        if name == "te" || CONNECTION_SPECIFIC.contains(&name) {
            continue;
        }
        hpack::encode_field(out, name.as_bytes(), value.as_bytes());
    }
}
