//! The shard's sockets: each one an entry in a slab, with a multishot readiness poll armed on the shard's ring
//! for its whole life. A read or write is a plain non-blocking system call made when the entry says the socket
//! is ready; the poll's completions only set that flag and wake whoever waits. An idle socket holds no buffer
//! and no task: a parked client's session lives in its socket's entry.

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use super::sys::{self, Completion, Uring};
use crate::session::Parked;
use crate::warn;

/// Completions read in one go: enough to amortize the call, few enough to keep the batch in cache.
const BATCH: usize = 256;

/// What a completion is for, in the top byte of its user data; the slot and generation are below.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Readable = 1,
    Writable = 2,
    Accept = 3,
    Cancel = 4,
}

fn user_data(kind: Kind, slot: usize, gen: u32) -> u64 {
    (kind as u64) << 56 | u64::from(gen & 0x00ff_ffff) << 32 | slot as u64 & 0xffff_ffff
}

fn decode(user_data: u64) -> (Option<Kind>, usize, u32) {
    let kind = match user_data >> 56 {
        1 => Some(Kind::Readable),
        2 => Some(Kind::Writable),
        3 => Some(Kind::Accept),
        4 => Some(Kind::Cancel),
        _ => None,
    };
    let gen = (user_data >> 32) as u32 & 0x00ff_ffff;
    (kind, (user_data & 0xffff_ffff) as usize, gen)
}

/// Readiness seen since the last read that found the socket empty (also a hang-up or an error: the next read
/// reports it).
const READABLE: u8 = 1;
/// The readiness poll is armed.
const WATCHED: u8 = 2;
/// A one-shot poll for room to send is armed.
const WANTS_ROOM: u8 = 4;
/// The poll reported a hang-up: no point arming it again.
const HUNG_UP: u8 = 8;

/// What a parked client's entry costs in the slab (the entry and the slab's tag).
pub const SLOT_SIZE: usize = size_of::<Entry>() + size_of::<usize>();

struct Entry {
    fd: OwnedFd,
    /// Tells a completion for an earlier socket in this slot from one for this socket.
    gen: u32,
    flags: u8,
    waiting: Waiting,
}

enum Waiting {
    /// A task that found the socket not ready, if one did.
    Task(Option<Waker>),
    /// A client between transactions: what it keeps, until its socket stirs.
    Parked(Parked),
}

/// What a batch of completions brought besides readiness.
pub enum Arrival {
    /// A parked client's socket stirred.
    Resume(Socket, Parked),
    /// A new connection on a listener.
    Accepted(Socket),
}

pub struct Sockets {
    uring: RefCell<Uring>,
    entries: RefCell<Slab<Entry>>,
    next_gen: Cell<u32>,
    /// Inside an iteration of the shard's loop: submissions wait for its end, and so do closes, whose
    /// cancellations must reach the kernel first.
    batching: Cell<bool>,
    closing: RefCell<Vec<OwnedFd>>,
    listeners: RefCell<Vec<Listener>>,
}

struct Listener {
    fd: OwnedFd,
    /// Taking connections (the multishot accept is armed or will be at the next tick).
    armed: bool,
}

thread_local! {
    static SOCKETS: std::cell::OnceCell<Rc<Sockets>> = const { std::cell::OnceCell::new() };
}

/// The current shard's sockets. Sockets belong to the thread of the shard that made them.
fn with<R>(f: impl FnOnce(&Sockets) -> R) -> R {
    SOCKETS.with(|s| f(s.get().expect("sockets are used only on a shard's thread")))
}

impl Sockets {
    /// Installs the shard's sockets on its thread, driven by `uring`.
    pub fn install(uring: Uring) -> Rc<Sockets> {
        let sockets = Rc::new(Sockets {
            uring: RefCell::new(uring),
            entries: RefCell::new(Slab::new()),
            next_gen: Cell::new(0),
            batching: Cell::new(false),
            closing: RefCell::new(Vec::new()),
            listeners: RefCell::new(Vec::new()),
        });
        SOCKETS.with(|s| {
            let _ = s.set(sockets.clone());
        });
        sockets
    }

    /// From here until [`Sockets::end_batch`], what is armed or closed goes to the kernel at once, in one
    /// system call.
    pub fn begin_batch(&self) {
        self.batching.set(true);
    }

    pub fn end_batch(&self) {
        self.batching.set(false);
        self.submit_now();
        self.closing.borrow_mut().clear();
    }

    fn submit_unless_batching(&self) {
        if !self.batching.get() {
            let mut uring = self.uring.borrow_mut();
            if let Err(e) = uring.submit() {
                warn!("io_uring submit failed: {e}");
            }
        }
    }

    /// `fresh`: a connection just accepted, whose first bytes are likely there already. Otherwise the poll,
    /// which reports readiness present when it is armed, says when there is something to read; until then
    /// the socket counts as quiet (an idle server that came from another shard).
    fn register(&self, fd: OwnedFd, fresh: bool) -> Socket {
        let gen = self.next_gen.get().wrapping_add(1) & 0x00ff_ffff;
        self.next_gen.set(gen);
        let raw = fd.as_raw_fd();
        let slot = self.entries.borrow_mut().insert(Entry {
            fd,
            gen,
            flags: if fresh { READABLE | WATCHED } else { WATCHED },
            waiting: Waiting::Task(None),
        });
        self.uring
            .borrow_mut()
            .watch_readable(raw, user_data(Kind::Readable, slot, gen));
        self.submit_unless_batching();
        Socket {
            slot: slot as u32,
            gen,
        }
    }

    /// Starts taking connections on `listeners`.
    pub fn listen(&self, listeners: Vec<OwnedFd>) {
        *self.listeners.borrow_mut() = listeners
            .into_iter()
            .map(|fd| Listener { fd, armed: false })
            .collect();
        self.arm_listeners();
    }

    /// Arms the accept of every listener that is not armed: at start, and at each tick after one stopped.
    pub fn arm_listeners(&self) {
        let mut uring = self.uring.borrow_mut();
        for (i, listener) in self.listeners.borrow_mut().iter_mut().enumerate() {
            if !listener.armed {
                listener.armed = true;
                uring.accept(listener.fd.as_raw_fd(), user_data(Kind::Accept, i, 0));
            }
        }
        drop(uring);
        self.submit_unless_batching();
    }

    /// Stops taking connections and closes the listeners.
    pub fn stop_listening(&self) {
        let mut uring = self.uring.borrow_mut();
        for listener in self.listeners.borrow().iter() {
            uring.cancel_all(listener.fd.as_raw_fd(), user_data(Kind::Cancel, 0, 0));
        }
        drop(uring);
        self.submit_now();
        self.listeners.borrow_mut().clear();
    }

    fn submit_now(&self) {
        let mut uring = self.uring.borrow_mut();
        while uring.has_queued() {
            if let Err(e) = uring.submit() {
                warn!("io_uring submit failed: {e}");
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EAGAIN) {
                    return;
                }
            }
        }
    }

    /// Reads what the ring completed: marks sockets ready, wakes the tasks that wait on them, and returns the
    /// parked clients that stirred and the new connections.
    pub fn drain(&self) -> Vec<Arrival> {
        let mut arrivals = Vec::new();
        let mut wakers = Vec::new();
        let mut done = Vec::with_capacity(BATCH);
        loop {
            let more = self.uring.borrow_mut().completions(&mut done, BATCH);
            for completion in done.drain(..) {
                self.complete(completion, &mut wakers, &mut arrivals);
            }
            if !more {
                break;
            }
            // Completions the kernel held back come in when the ring is entered.
            let _ = self.uring.borrow_mut().submit();
        }
        for waker in wakers {
            waker.wake();
        }
        arrivals
    }

    fn complete(&self, done: Completion, wakers: &mut Vec<Waker>, arrivals: &mut Vec<Arrival>) {
        let (kind, slot, gen) = decode(done.user_data);
        if kind == Some(Kind::Accept) {
            return self.accepted(slot, done, arrivals);
        }
        let mut entries = self.entries.borrow_mut();
        let Some(entry) = entries.get_mut(slot).filter(|e| e.gen == gen) else {
            // For a socket closed since, or a cancellation.
            return;
        };
        match kind {
            Some(Kind::Readable) => {
                entry.flags |= READABLE;
                let hangup = (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP) as i32;
                if done.result < 0 || done.result & hangup != 0 {
                    entry.flags |= HUNG_UP;
                }
                if !done.more {
                    entry.flags &= !WATCHED;
                    // The kernel ends a multishot poll when its completion queue overflows: arm it again,
                    // unless the socket is done for.
                    if entry.flags & HUNG_UP == 0 {
                        entry.flags |= WATCHED;
                        let raw = entry.fd.as_raw_fd();
                        self.uring.borrow_mut().watch_readable(raw, done.user_data);
                    }
                }
            }
            Some(Kind::Writable) => entry.flags &= !WANTS_ROOM,
            _ => return,
        }
        match &mut entry.waiting {
            Waiting::Task(waker) => wakers.extend(waker.take()),
            Waiting::Parked(_) => {
                let Waiting::Parked(parked) =
                    std::mem::replace(&mut entry.waiting, Waiting::Task(None))
                else {
                    unreachable!("matched above")
                };
                let socket = Socket {
                    slot: slot as u32,
                    gen,
                };
                arrivals.push(Arrival::Resume(socket, parked));
            }
        }
    }

    fn accepted(&self, index: usize, done: Completion, arrivals: &mut Vec<Arrival>) {
        if !done.more {
            if let Some(listener) = self.listeners.borrow_mut().get_mut(index) {
                listener.armed = false;
            }
        }
        if done.result >= 0 {
            arrivals.push(Arrival::Accepted(
                self.register(sys::own(done.result), true),
            ));
            if !done.more {
                self.arm_listeners();
            }
            return;
        }
        let e = io::Error::from_raw_os_error(-done.result);
        match -done.result {
            // The connection was reset before it was taken, or the listener was closed at shutdown.
            libc::ECONNABORTED | libc::EPROTO | libc::EINTR | libc::ECANCELED => {
                if !done.more && done.result != -libc::ECANCELED {
                    self.arm_listeners();
                }
            }
            // Out of descriptors or memory: the next tick arms it again, meanwhile clients can leave.
            _ => warn!("accept failed: {e}; pausing accepts until the next tick"),
        }
    }

    /// Keeps a client's session in its socket's entry until the socket stirs; gives both back if it already
    /// has.
    pub fn park(&self, socket: Socket, parked: Parked) -> Result<(), (Socket, Parked)> {
        let mut entries = self.entries.borrow_mut();
        let entry = socket.entry(&mut entries);
        if entry.flags & READABLE != 0 {
            return Err((socket, parked));
        }
        entry.waiting = Waiting::Parked(parked);
        // The entry owns the socket from here; `drain` makes a handle again.
        let _ = ManuallyDrop::new(socket);
        Ok(())
    }
}

/// A connected socket of this shard. Dropping it cancels its polls and closes it.
pub struct Socket {
    slot: u32,
    gen: u32,
}

impl Socket {
    /// Makes `fd` (a connected socket) one of this shard's.
    pub fn adopt(fd: OwnedFd) -> Socket {
        with(|s| s.register(fd, false))
    }

    /// A new connection to `addr`, once established.
    pub async fn connect(addr: SocketAddr) -> io::Result<Socket> {
        let socket = Socket::adopt(sys::start_connect(addr)?);
        let mut armed = false;
        std::future::poll_fn(|cx| socket.poll_room(cx, &mut armed)).await;
        match socket2::SockRef::from(&socket).take_error()? {
            Some(e) => Err(e),
            None => Ok(socket),
        }
    }

    fn entry<'a>(&self, entries: &'a mut Slab<Entry>) -> &'a mut Entry {
        entries
            .get_mut(self.slot as usize)
            .filter(|e| e.gen == self.gen)
            .expect("a socket's entry lives as long as the socket")
    }

    fn with_entry<R>(&self, f: impl FnOnce(&mut Entry, &Sockets) -> R) -> R {
        with(|s| f(self.entry(&mut s.entries.borrow_mut()), s))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.with_entry(|e, _| e.fd.as_raw_fd())
    }

    /// True unless the socket has sent something or hung up since it was last read empty: for an idle server,
    /// any byte means it is going away. Makes no system call.
    pub fn is_quiet(&self) -> bool {
        self.with_entry(|e, _| e.flags & (READABLE | HUNG_UP) == 0)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(self)
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Makes the next read see the end of the stream (shutdown wakes idle clients this way).
    pub fn shut_reading(&self) {
        sys::shut_reading(self.raw_fd());
    }

    /// Stops watching the socket and hands its descriptor over (to another shard).
    pub fn into_fd(self) -> OwnedFd {
        let socket = ManuallyDrop::new(self);
        with(|s| s.release(&socket, true).0)
    }

    /// Ready once the socket can take bytes (or has failed), after a poll this call armed (`armed`).
    fn poll_room(&self, cx: &mut Context<'_>, armed: &mut bool) -> Poll<()> {
        self.with_entry(|e, s| {
            if !*armed {
                *armed = true;
                s.want_room(e, self.slot as usize);
            } else if e.flags & WANTS_ROOM == 0 {
                return Poll::Ready(());
            }
            wait(e, cx);
            Poll::Pending
        })
    }

    /// Reads into `buf` if the socket has bytes, the end of the stream or an error to report.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.with_entry(|e, _| {
            if e.flags & READABLE == 0 {
                wait(e, cx);
                return Poll::Pending;
            }
            match sys::recv(e.fd.as_raw_fd(), buf) {
                // A short read emptied the socket: the poll says when more comes.
                Ok(n) if n > 0 && n < buf.len() && e.flags & HUNG_UP == 0 => {
                    e.flags &= !READABLE;
                    Poll::Ready(Ok(n))
                }
                Ok(n) => Poll::Ready(Ok(n)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    e.flags &= !READABLE;
                    wait(e, cx);
                    Poll::Pending
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Err(err) => Poll::Ready(Err(err)),
            }
        })
    }

    /// Sends what of `buf` the socket takes now.
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with_entry(|e, s| {
            if e.flags & WANTS_ROOM != 0 {
                wait(e, cx);
                return Poll::Pending;
            }
            match sys::send(e.fd.as_raw_fd(), buf) {
                Ok(n) => Poll::Ready(Ok(n)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    s.want_room(e, self.slot as usize);
                    wait(e, cx);
                    Poll::Pending
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Err(err) => Poll::Ready(Err(err)),
            }
        })
    }
}

/// Remembers the task that found the socket not ready (one per socket: a socket is served by one task).
fn wait(entry: &mut Entry, cx: &mut Context<'_>) {
    match &mut entry.waiting {
        Waiting::Task(Some(waker)) if waker.will_wake(cx.waker()) => {}
        Waiting::Task(waker) => *waker = Some(cx.waker().clone()),
        Waiting::Parked(_) => unreachable!("a parked socket has no handle to be read through"),
    }
}

impl Sockets {
    fn want_room(&self, entry: &mut Entry, slot: usize) {
        entry.flags |= WANTS_ROOM;
        let ud = user_data(Kind::Writable, slot, entry.gen);
        self.uring
            .borrow_mut()
            .watch_writable(entry.fd.as_raw_fd(), ud);
        self.submit_unless_batching();
    }

    /// Cancels the socket's polls and takes its entry out; the descriptor is the caller's once `submitted`
    /// (see `Uring::cancel_all`).
    fn release(&self, socket: &Socket, submitted: bool) -> (OwnedFd, bool) {
        let entry = self.entries.borrow_mut().remove(socket.slot as usize);
        debug_assert_eq!(entry.gen, socket.gen);
        if entry.flags & (WATCHED | WANTS_ROOM) == 0 {
            return (entry.fd, true);
        }
        self.uring
            .borrow_mut()
            .cancel_all(entry.fd.as_raw_fd(), user_data(Kind::Cancel, 0, 0));
        if submitted || !self.batching.get() {
            self.submit_now();
            return (entry.fd, true);
        }
        (entry.fd, false)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Closing is dropping the descriptor.
        SOCKETS.with(|s| {
            if let Some(s) = s.get() {
                if let (fd, false) = s.release(self, false) {
                    s.closing.borrow_mut().push(fd);
                }
            }
        });
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.raw_fd()
    }
}

impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the entry keeps the descriptor open for as long as the socket (and so the borrow) lives.
        unsafe { BorrowedFd::borrow_raw(self.raw_fd()) }
    }
}

impl futures_lite::AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Socket::poll_read(&self, cx, buf)
    }
}

impl futures_lite::AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Socket::poll_write(&self, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
