//! Start-up and shutdown: listeners bound up front (so a bad address fails before anything runs), one pinned
//! executor per shard, the channel mesh, each shard's accept loops and its maintenance tick.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use super::exchange::{self, Msg, CHANNEL_SLOTS};
use super::{Shard, Shared, TICK};
use crate::config::Config;
use crate::net::buffer::BufferPool;
use crate::net::listener;
use crate::ring::{self, Sockets, Uring};
use crate::session::cancel::{shard_of, Registry};
use crate::{error, info, warn};

/// glommio registers this much memory per executor for file I/O; a network-only pooler needs the minimum.
const IO_MEMORY: usize = 64 << 10;
/// Submission queue depth: bursts of thousands of readiness completions must not overflow the ring.
const RING_DEPTH: usize = 4096;

/// Runs the pooler until SIGTERM or SIGINT has been handled.
pub fn start(config: Config) -> std::io::Result<()> {
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let shards = match config.workers {
        0 => cpus.len().max(1),
        n => n,
    };
    // Every shard gets its own SO_REUSEPORT socket on every address.
    let mut listeners: Vec<Vec<OwnedFd>> = (0..shards).map(|_| Vec::new()).collect();
    for addr in &config.listen {
        for shard in listeners.iter_mut() {
            let socket = listener::bind(*addr, config.listen_backlog).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            shard.push(socket);
        }
    }
    info!(
        "pgherd {} starting: {shards} shard(s), listen {:?}, max_client_conn {}, {} database(s), {} user(s)",
        env!("CARGO_PKG_VERSION"),
        config.listen,
        config.max_client_conn,
        config.databases.len(),
        config.users.len()
    );
    info!(
        "timeouts: client_login {:?}, query_wait {:?}, server_connect {:?}, server_idle {:?}, server_lifetime {:?}, \
         shutdown {:?}",
        config.client_login_timeout,
        config.query_wait_timeout,
        config.server_connect_timeout,
        config.server_idle_timeout,
        config.server_lifetime,
        config.shutdown_timeout
    );
    for db in &config.databases {
        info!(
            "database {}: {}:{}/{} pool_size {} min_pool_size {} pool_mode {:?}",
            db.name, db.host, db.port, db.dbname, db.pool_size, db.min_pool_size, db.pool_mode
        );
    }
    for problem in crate::host::problems(&config, shards, crate::host::read()) {
        warn!("{problem}");
    }
    let shared = Arc::new(Shared::new(config));
    let signals = block_signals();
    let mesh = (shards > 1).then(|| MeshBuilder::<Msg, _>::full(shards, CHANNEL_SLOTS));
    let mut handles = Vec::new();
    let mut stops = Vec::new();
    for (id, fds) in listeners.into_iter().enumerate() {
        let signal = ring::eventfd()?;
        let ring = Uring::new(signal.as_raw_fd())
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot set up io_uring: {e}")))?;
        let (stop, stop_here) = stop_signal()?;
        stops.push(stop);
        let placement = match cpus.get(id % cpus.len().max(1)) {
            Some(core) => Placement::Fixed(core.id),
            None => Placement::Unbound,
        };
        let (shared, mesh) = (shared.clone(), mesh.clone());
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(IO_MEMORY)
            .ring_depth(RING_DEPTH)
            .spawn(move || run_shard(id, shards, shared, fds, (ring, signal), stop_here, mesh))
            .map_err(|e| std::io::Error::other(format!("cannot start shard {id}: {e}")))?;
        handles.push(handle);
    }
    let waiter = shared.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let signal = loop {
                match wait_for(signals) {
                    Signal::Hangup => warn!(
                        "received SIGHUP: ignored, configuration reload is not supported yet; restart to apply changes"
                    ),
                    Signal::Stop(name) => break name,
                }
            };
            info!("received {signal}: no new clients; waiting for running transactions to finish");
            waiter.shutdown.store(true, Ordering::Relaxed);
            for stop in stops {
                // SAFETY: an 8-byte write from a local to an eventfd we own.
                unsafe { libc::write(stop.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
            }
        })?;
    for handle in handles {
        if handle.join().is_err() {
            error!("a shard ended abnormally");
        }
    }
    info!("pgherd stopped");
    Ok(())
}

async fn run_shard(
    id: usize,
    shards: usize,
    shared: Arc<Shared>,
    listeners: Vec<OwnedFd>,
    (ring, signal): (Uring, OwnedFd),
    stop: OwnedFd,
    mesh: Option<MeshBuilder<Msg, glommio::channels::channel_mesh::Full>>,
) {
    let (peers, receivers) = match mesh {
        Some(mesh) => {
            let (senders, mut receivers) = mesh.join().await.expect("every shard joins the mesh");
            (Some(Rc::new(senders)), receivers.streams())
        }
        None => (None, Vec::new()),
    };
    let sockets = Sockets::install(ring);
    let shard = Rc::new(Shard {
        id,
        shards,
        shared,
        buffers: BufferPool::default(),
        clients: Registry::default(),
        sockets: sockets.clone(),
        parking: Default::default(),
        tasks: Default::default(),
        logins: Default::default(),
        lookups: Default::default(),
        settings: Default::default(),
        statements: Default::default(),
        pools: RefCell::new(HashMap::new()),
        peers,
    });
    glommio::spawn_local(ring::event_loop::run(
        shard.clone(),
        sockets.clone(),
        signal,
    ))
    .detach();
    for (from, rx) in receivers {
        glommio::spawn_local(exchange::receive(shard.clone(), from, rx)).detach();
    }
    sockets.listen(listeners);

    shard.create_warm_pools();
    let stop = ring::glommio_reader(stop);
    let mut stopped = Box::pin(stop.read_at(0, 8));
    let mut next_stats = Instant::now() + shard.config().stats_period;
    while !shard.shutting_down() {
        let tick = async {
            glommio::timer::sleep(TICK).await;
        };
        let stop = async {
            let _ = (&mut stopped).await;
        };
        futures_lite::future::or(tick, stop).await;
        shard.parking.tick();
        shard.sockets.arm_listeners();
        shard.look_after_pools();
        shard.tasks.trim_after_burst();
        // The counters are global: one shard reports them.
        if shard.id == 0 && Instant::now() >= next_stats {
            info!("{}", shard.shared.stats());
            next_stats += shard.config().stats_period;
        }
    }
    shard.sockets.stop_listening();
    let deadline = Instant::now() + shard.config().shutdown_timeout;
    while !shard.clients.is_empty() && Instant::now() < deadline {
        shard.clients.wake_idle_for_shutdown();
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if !shard.clients.is_empty() {
        warn!(
            "shutdown_timeout reached with {} client(s) still connected; closing them",
            shard.clients.len()
        );
    }
    shard.close_idle_servers();
}

impl Shard {
    /// Sends a CancelRequest to the shard that owns the client it names.
    pub fn route_cancel(&self, pid: u32, secret: u32) {
        match shard_of(pid) {
            owner if owner == self.id => self.cancel_client(pid, secret),
            owner if owner < self.shards => self.send_to_peer(owner, Msg::Cancel { pid, secret }),
            _ => {}
        }
    }

    pub(super) fn cancel_client(&self, pid: u32, secret: u32) {
        if let Some(key) = self.clients.target(pid, secret) {
            crate::isolation::spawn(
                "a cancel request",
                crate::server::cancel(key, self.config().server_connect_timeout),
            );
        }
    }
}

/// An eventfd the signal thread writes at shutdown, and a duplicate for the shard to read: a shard with nothing
/// to do sleeps until its tick instead of polling the shutdown flag.
fn stop_signal() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let stop = ring::eventfd()?;
    let here = stop.try_clone()?;
    Ok((stop, here))
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread started after, so only `wait_for` sees
/// them. SIGHUP is what `systemctl reload` and operators' habits send: it must never end the process.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

enum Signal {
    Hangup,
    /// SIGINT or SIGTERM, by name.
    Stop(&'static str),
}

fn wait_for(set: libc::sigset_t) -> Signal {
    let mut signal = 0;
    // SAFETY: `set` holds blocked signals; sigwait writes the one received.
    unsafe { libc::sigwait(&set, &mut signal) };
    match signal {
        libc::SIGHUP => Signal::Hangup,
        libc::SIGINT => Signal::Stop("SIGINT"),
        _ => Signal::Stop("SIGTERM"),
    }
}

/// Checks a configuration without starting anything.
pub fn check(config: &Config) {
    info!(
        "configuration is valid: {} database(s), {} user(s), listen {:?}",
        config.databases.len(),
        config.users.len(),
        config.listen
    );
}
