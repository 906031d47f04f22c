//! What a connection shares with its streams' handlers: which streams want attention (woken
//! futures, bodies read from), and each request body as its frames arrive.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use hyper::body::{Bytes, Frame, SizeHint};
use hyper::header::HeaderMap;

pub(crate) use crate::table::lock;
use crate::upstream::BoxError;

/// The streams woken since the connection last looked, and the connection's task to wake.
#[derive(Default)]
pub(crate) struct Ready {
    ids: Mutex<Vec<u32>>,
    task: Mutex<Option<Waker>>,
}

impl Ready {
    pub(crate) fn push(&self, id: u32) {
        lock(&self.ids).push(id);
        if let Some(task) = lock(&self.task).as_ref() {
            task.wake_by_ref();
        }
    }

    /// Moves the woken ids into `into` (emptied first).
    pub(crate) fn take(&self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut *lock(&self.ids), into);
    }

    pub(crate) fn register(&self, waker: &Waker) {
        let mut task = lock(&self.task);
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

/// The waker of one stream's handler and response body: it queues the stream.
pub(crate) struct StreamWaker {
    pub id: u32,
    pub ready: Arc<Ready>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.ready.push(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.id);
    }
}

/// A request body's frames, between the connection (which adds them) and the handler.
#[derive(Default)]
pub(crate) struct Inbox {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client sent END_STREAM.
    pub ended: bool,
    /// The stream was reset, or the connection failed, before the end.
    pub failed: bool,
    /// Bytes taken by the handler, not yet given back to the client as window.
    pub taken: usize,
    /// Bytes received and not yet taken.
    pub buffered: usize,
    /// The handler dropped the body: what still comes is discarded.
    dropped: bool,
    reader: Option<Waker>,
}

impl Inbox {
    pub(crate) fn push(&mut self, data: Bytes) {
        if self.dropped {
            // Nobody will read it: the window goes back at once.
            self.taken += data.len();
            return;
        }
        self.buffered += data.len();
        self.data.push_back(data);
        self.wake();
    }

    pub(crate) fn end(&mut self, trailers: Option<HeaderMap>) {
        self.ended = true;
        self.trailers = trailers;
        self.wake();
    }

    /// The stream is gone: what is buffered is dropped (the caller gives its window back).
    pub(crate) fn fail(&mut self) {
        self.failed = true;
        self.data.clear();
        self.trailers = None;
        self.wake();
    }

    /// Nothing buffered: no data, no trailers.
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    fn wake(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }
}

/// A request body as the handler reads it (`http_body::Body`).
pub(crate) struct RecvBody {
    pub(crate) inbox: Arc<Mutex<Inbox>>,
    pub(crate) ready: Arc<Ready>,
    pub(crate) id: u32,
    pub(crate) content_length: Option<u64>,
}

impl Drop for RecvBody {
    /// A handler that answered without reading the whole body (or went away) must not pin the
    /// client's window: what was buffered and what still comes is given back.
    fn drop(&mut self) {
        let mut inbox = lock(&self.inbox);
        inbox.dropped = true;
        let buffered = std::mem::take(&mut inbox.buffered);
        inbox.taken += buffered;
        inbox.data.clear();
        drop(inbox);
        self.ready.push(self.id);
    }
}

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut inbox = lock(&self.inbox);
        if inbox.failed {
            return Poll::Ready(Some(Err("the client reset the request before its body ended".into())));
        }
        if let Some(data) = inbox.data.pop_front() {
            inbox.buffered -= data.len();
            inbox.taken += data.len();
            drop(inbox);
            // The connection gives the window back.
            self.ready.push(self.id);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = inbox.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if inbox.ended {
            return Poll::Ready(None);
        }
        inbox.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let inbox = lock(&self.inbox);
        inbox.ended && inbox.data.is_empty() && inbox.trailers.is_none() && !inbox.failed
    }

    fn size_hint(&self) -> SizeHint {
        match self.content_length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
