//! Starting and stopping a broker: the database, the Registry, the session Arbiters and one
//! Listener per bound address; reloading the TLS listeners' certificates and the connected
//! clients' ACL rules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info, warn};
use tokio::net::TcpListener;

use crate::admission::{Sources, Strikes};
use crate::clock::unix_millis;
use crate::config::Config;
use crate::db::{self, ConnectionLog, DbActor};
use crate::error::BrokerError;
use crate::listener::Listener;
use crate::messages::{
    AclReload, Checkpoint, CloseOpenConnections, Flush, LoadRetained, LoadState, ReloadAcl,
    Shutdown, StopAccepting,
};
use crate::registry::router::Router;
use crate::registry::{Registry, Settings};
use crate::sched;
use crate::session::thread_parks;
use crate::stats::Counters;
use crate::tls::{TlsAcceptor, TlsError};
use crate::websocket::WebSocketAcceptor;

/// How long shutdown waits for sessions to send DISCONNECT 0x8B and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every session needs: configuration and the addresses of the shared actors.
pub struct Shared {
    pub config: Config,
    pub anonymous_allowed: bool,
    pub registry: Addr<Registry>,
    /// The Registry's subscriptions and delivery queues, through which sessions route.
    pub router: Arc<Router>,
    pub db: Addr<DbActor>,
    /// Writes the `clients` table (connects and disconnects), batched.
    pub connection_log: Addr<ConnectionLog>,
    /// Open connections over all listeners (see `admission::ConnectionSlot`).
    pub connections: AtomicUsize,
    /// Per-source-address connection counts, rates and authentication bans.
    pub sources: Sources,
    /// Failed logins per username (`max_auth_failures_per_user`) and their bans.
    pub user_failures: Strikes,
    /// Accepted connections per client id (`max_connects_per_client_id_per_minute`) and
    /// flapping bans.
    pub flapping: Strikes,
    pub counters: Arc<Counters>,
}

/// A running broker. Dropping it does not stop it; call `shutdown`.
pub struct Broker {
    /// The bound address of each listener, in configuration order (port 0 resolved).
    pub local_addrs: Vec<SocketAddr>,
    /// The bound address of the `[http]` server, if one is configured (port 0 resolved).
    pub http_addr: Option<SocketAddr>,
    pub registry: Addr<Registry>,
    pub db: Addr<DbActor>,
    pub counters: Arc<Counters>,
    connection_log: Addr<ConnectionLog>,
    listeners: Vec<Addr<Listener>>,
    http: Option<crate::http::HttpServer>,
    arbiters: Vec<Arbiter>,
    /// The TLS listeners' acceptors, by bound address, for `reload_tls`.
    tls: Vec<(SocketAddr, Arc<TlsAcceptor>)>,
}

/// Starts a broker inside the current actix `System`: migrates the database, starts the
/// DbActor, the Registry and `config.worker_count()` session Arbiters, and binds every listener.
pub async fn start(config: Config) -> Result<Broker, BrokerError> {
    let started = std::time::Instant::now();
    let db_path = config.db_path.to_string_lossy().into_owned();
    let db = db::start(&db_path, config.db_threads, config.durability)?;
    let connection_log = ConnectionLog::new(db.clone()).start();
    // Rows still open were left by a crash or kill: their end time is unknown, so they are
    // closed at the time the broker came back.
    let stale = connection_log
        .send(CloseOpenConnections {
            at_ms: unix_millis(),
            reason: "broker restart".into(),
        })
        .await??;
    if stale > 0 {
        info!("marked {stale} connection(s) left open by the previous run as disconnected");
    }
    let retained = db.send(LoadRetained).await??;
    info!("{} retained message(s) loaded", retained.len());
    let stored = db
        .send(LoadState {
            now_ms: unix_millis(),
        })
        .await??;
    let counters = Arc::new(Counters::default());
    let settings = Settings {
        backlog_limit: config.limits.max_queued_messages,
        max_queued_bytes: config.limits.max_queued_bytes,
        max_retained_messages: config.limits.max_retained_messages,
        sys_interval: (config.sys_interval > 0).then(|| Duration::from_secs(config.sys_interval)),
        client_id_binding: config.client_id_binding,
    };
    let writer = db::start_writer(&db_path, config.durability);
    let registry = Registry::new(
        retained,
        stored,
        counters.clone(),
        writer,
        connection_log.clone(),
        settings,
    );
    let router = registry.router();
    let registry = registry.start();
    let shared = Arc::new(Shared {
        anonymous_allowed: config.anonymous_allowed(),
        registry: registry.clone(),
        router,
        db: db.clone(),
        connection_log: connection_log.clone(),
        connections: AtomicUsize::new(0),
        sources: Sources::default(),
        user_failures: Strikes::default(),
        flapping: Strikes::default(),
        counters: counters.clone(),
        config,
    });
    let slice = shared.config.worker_slice();
    let arbiters = (0..shared.config.worker_count())
        .map(|_| Arbiter::try_with_tokio_rt(move || session_runtime(slice)))
        .collect::<Result<Vec<Arbiter>, _>>()
        .map_err(BrokerError::Arbiter)?;
    let handles: Arc<[ArbiterHandle]> = arbiters.iter().map(Arbiter::handle).collect();
    // Connection ids start at the start-up time in microseconds, so they stay unique across
    // restarts too (the database uses them to match a disconnect to its connect).
    let conn_ids = Arc::new(AtomicU64::new(unix_millis() as u64 * 1000));
    actix::spawn(release_memory_after_bursts(shared.clone()));
    let mut listeners = Vec::new();
    let mut local_addrs = Vec::new();
    let mut tls_acceptors = Vec::new();
    for config in shared.config.effective_listeners() {
        let addr = config.bind;
        let websocket = config.websocket_path().map(|path| {
            Arc::new(WebSocketAcceptor::new(
                path,
                shared.config.limits.max_packet_size,
            ))
        });
        // Certificate problems are found before anything is bound.
        let tls = match config.tls {
            Some(files) => Some(Arc::new(
                TlsAcceptor::new(files).map_err(|source| BrokerError::Tls { addr, source })?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| BrokerError::Bind { addr, source })?;
        info!("listening on {local}");
        local_addrs.push(local);
        if let Some(tls) = &tls {
            info!("{local}: TLS");
            tls_acceptors.push((local, tls.clone()));
        }
        if let Some(websocket) = &websocket {
            info!("{local}: MQTT over WebSocket on {}", websocket.path());
        }
        listeners.push(Listener::start(
            listener,
            shared.clone(),
            handles.clone(),
            conn_ids.clone(),
            tls,
            websocket,
        ));
    }
    let http = match shared.config.http.as_ref().map(|h| h.bind) {
        Some(bind) => Some(crate::http::start(bind, shared.clone(), started).await?),
        None => None,
    };
    Ok(Broker {
        local_addrs,
        http_addr: http.as_ref().map(|h| h.local_addr),
        http,
        registry,
        db,
        counters,
        connection_log,
        listeners,
        arbiters,
        tls: tls_acceptors,
    })
}

impl Broker {
    /// Reads every TLS listener's certificate, key, CA and CRL files again (SIGHUP). New
    /// handshakes use the new files; open connections are not touched. A listener whose files
    /// fail to load keeps its old configuration; the last such error is returned.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let mut result = Ok(());
        for (addr, acceptor) in &self.tls {
            match acceptor.reload() {
                Ok(()) => info!("{addr}: TLS certificates reloaded"),
                Err(e) => {
                    warn!("{addr}: TLS reload failed, keeping the previous certificates: {e}");
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Makes every connected client check against the ACL rules as they are in the database
    /// now (SIGHUP): each session loads its rules again and swaps them in (new connections
    /// always read the current rules). A session whose reload fails keeps its previous rules
    /// (bad-inputs.md H112). Logs one line with the counts, and returns them once every session
    /// has answered (or after 5 s, see `AclReload::pending`).
    pub async fn reload_acl(&self) -> AclReload {
        let reload = match self.registry.send(ReloadAcl).await {
            Ok(reload) => reload,
            Err(e) => {
                warn!("ACL reload: the registry is unavailable: {e}");
                return AclReload::default();
            }
        };
        let pending = if reload.pending > 0 {
            format!(", {} pending (not answering yet)", reload.pending)
        } else {
            String::new()
        };
        match &reload.error {
            None => info!(
                "ACL rules reloaded for {} connected session(s){pending}",
                reload.reloaded
            ),
            Some(e) => warn!(
                "ACL rules reloaded for {} connected session(s){pending}; {} kept their \
                 previous rules, the reload failed: {e}",
                reload.reloaded, reload.failed
            ),
        }
        reload
    }

    /// Clean shutdown: stop accepting, send DISCONNECT 0x8B to every client [MQTT-3.14.0-1 is
    /// respected: only clients past CONNACK get one], record the disconnect times, checkpoint
    /// the WAL and stop the session Arbiters.
    pub async fn shutdown(self) {
        for listener in &self.listeners {
            let _ = listener.send(StopAccepting).await;
        }
        if let Some(http) = &self.http {
            http.stop().await;
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.registry.send(Shutdown))
            .await
            .is_err()
        {
            warn!("shutdown: some sessions did not close within {SHUTDOWN_GRACE:?}");
        }
        // The sessions' ends (persistent ones start to expire) are committed before the WAL is
        // checkpointed.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.registry.send(Flush))
            .await
            .is_err()
        {
            warn!("shutdown: persistent session state not committed within {SHUTDOWN_GRACE:?}");
        }
        let closed = CloseOpenConnections {
            at_ms: unix_millis(),
            reason: "server shutdown".into(),
        };
        // Through the log, so the disconnects queued before it are committed first.
        match self.connection_log.send(closed).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("shutdown: recording disconnect times failed: {e}"),
            Err(e) => warn!("shutdown: database actor unavailable: {e}"),
        }
        match self.db.send(Checkpoint).await {
            Ok(Ok(())) => info!("database checkpointed"),
            Ok(Err(e)) => warn!("shutdown: WAL checkpoint failed: {e}"),
            Err(e) => warn!("shutdown: database actor unavailable: {e}"),
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// A session Arbiter's runtime: actix's own (one thread, I/O and timers), plus the hooks that
/// tell bypasses whether the thread sleeps (see `session::bypass`). Built on the Arbiter's
/// thread, which asks for `slice` first.
fn session_runtime(slice: Option<Duration>) -> std::io::Result<tokio::runtime::Runtime> {
    if let Some(slice) = slice {
        match sched::request_slice(slice) {
            Ok(true) => debug!("session thread: time slice {slice:?}"),
            Ok(false) => debug!("session thread: the kernel keeps its own time slice"),
            Err(e) => warn!("worker_slice_us: the scheduler refused a {slice:?} slice: {e}"),
        }
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(|| thread_parks(true))
        .on_thread_unpark(|| thread_parks(false))
        .build()
}

/// How often the connection count is checked for a burst that has ended.
const TRIM_CHECK: Duration = Duration::from_secs(5);
/// Connections that must have closed since the peak before memory is given back.
const TRIM_AFTER_CLOSED: usize = 1000;

/// glibc's malloc keeps the memory of a burst of connections (10,000 connections: ~60 MB)
/// after they close, because it is fragmented; `malloc_trim` returns the free pages to the OS
/// (measured: 66.9 MB -> 13.6 MB, docs/abuse-load.md). Run off the actor threads, since it walks
/// the whole heap, and only after many connections have closed.
async fn release_memory_after_bursts(shared: Arc<Shared>) {
    let mut peak = 0;
    let mut ticks = tokio::time::interval(TRIM_CHECK);
    loop {
        ticks.tick().await;
        let now = shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed);
        peak = peak.max(now);
        if peak - now >= TRIM_AFTER_CLOSED && now <= peak / 2 {
            peak = now;
            let released = actix_rt::task::spawn_blocking(trim_heap).await;
            debug!("returned free heap memory to the OS after a burst: {released:?}");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() -> bool {
    // SAFETY: malloc_trim only releases free memory inside glibc's allocator; it takes no
    // pointers and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}
