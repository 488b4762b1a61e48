//! Every unsafe call of the shard's I/O: the ring's submissions, and the socket system calls made on
//! descriptors the ring's registry owns. Nothing here decides anything; `sockets` says what to arm and when.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::task::{RawWaker, RawWakerVTable, Waker};

use glommio::io::BufferedFile;

use io_uring::types::{CancelBuilder, Fd};
use io_uring::{cqueue, opcode, squeue, IoUring};

/// Submissions wait here between system calls; more than this in one loop iteration submits early.
const SUBMISSION_DEPTH: u32 = 1024;
/// Completions the kernel can post before they are read. Beyond it they wait in the kernel's overflow list
/// (no completion is lost), and multishot requests may end, which `sockets` re-arms.
const COMPLETION_DEPTH: u32 = 16384;

/// A completion as the registry reads it.
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    /// The request stays armed and will complete again.
    pub more: bool,
}

pub struct Uring {
    ring: IoUring,
}

impl Uring {
    /// A ring that signals `eventfd` whenever it posts a completion.
    pub fn new(eventfd: RawFd) -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_cqsize(COMPLETION_DEPTH)
            .build(SUBMISSION_DEPTH)?;
        ring.submitter().register_eventfd(eventfd)?;
        Ok(Uring { ring })
    }

    fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: every request built here names only a descriptor (no user memory); the registry keeps
            // each descriptor open until its requests are cancelled (see `cancel_all`).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel and try again.
            if self.submit().is_err() {
                return;
            }
        }
    }

    /// Waits for readability (and hang-up) of `fd` for as long as it stays armed: one completion per
    /// wake-up of the socket, no re-arming per read.
    pub fn watch_readable(&mut self, fd: RawFd, user_data: u64) {
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        self.push(
            &opcode::PollAdd::new(Fd(fd), events)
                .multi(true)
                .build()
                .user_data(user_data),
        );
    }

    /// Waits once for `fd` to take more bytes: armed only after a send found its socket full.
    pub fn watch_writable(&mut self, fd: RawFd, user_data: u64) {
        self.push(
            &opcode::PollAdd::new(Fd(fd), libc::POLLOUT as u32)
                .build()
                .user_data(user_data),
        );
    }

    /// Takes every connection `listener` receives, one completion each, for as long as it stays armed.
    pub fn accept(&mut self, listener: RawFd, user_data: u64) {
        self.push(
            &opcode::AcceptMulti::new(Fd(listener))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user_data),
        );
    }

    /// Cancels every request on `fd`. Must be submitted before the descriptor is closed or given away: an
    /// armed request holds the socket open, and would wake for a descriptor of the same number later.
    pub fn cancel_all(&mut self, fd: RawFd, user_data: u64) {
        self.push(
            &opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                .build()
                .user_data(user_data),
        );
    }

    pub fn has_queued(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    pub fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Moves up to `limit` completions into `into`; true if more are waiting, in the queue or in the kernel.
    pub fn completions(&mut self, into: &mut Vec<Completion>, limit: usize) -> bool {
        let mut queue = self.ring.completion();
        for cqe in queue.by_ref().take(limit) {
            into.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                more: cqueue::more(cqe.flags()),
            });
        }
        let left = !queue.is_empty();
        drop(queue);
        left || self.ring.submission().cq_overflow()
    }
}

/// `recv(2)` without waiting; `Ok(0)` is the end of the stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `send(2)` without waiting, and without SIGPIPE when the peer has gone.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `shutdown(2)` of the receiving side: a reader of the socket sees the end of the stream.
pub fn shut_reading(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor the caller's registry entry keeps open.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// A non-blocking TCP socket whose connection to `addr` is under way (or done).
pub fn start_connect(addr: SocketAddr) -> io::Result<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// An eventfd, blocking on purpose: glommio's read of it then waits in the kernel instead of failing with
/// EAGAIN.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) with valid flags; the result is checked before it is owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adopts a descriptor the kernel just returned (an accepted connection).
pub fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` came from a completed accept and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// An eventfd handed to glommio, for a task to wait on with `read_at(0, 8)`.
pub fn glommio_reader(fd: OwnedFd) -> BufferedFile {
    // SAFETY: the eventfd is ours; glommio owns it from here.
    unsafe { BufferedFile::from_raw_fd(fd.into_raw_fd()) }
}

/// A waker that carries a number and, woken, hands it to the shard's loop (`event_loop::wake`): making,
/// cloning and dropping one allocates nothing.
pub fn waker_of(data: usize) -> Waker {
    // SAFETY: the data is a number, not a pointer; the vtable's functions never dereference it.
    unsafe { Waker::from_raw(RawWaker::new(data as *const (), &VTABLE)) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(
    |data| RawWaker::new(data, &VTABLE),
    |data| super::event_loop::wake(data as usize),
    |data| super::event_loop::wake(data as usize),
    |_| {},
);
