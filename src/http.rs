//! The operations endpoint (`[http]` in the configuration): a small actix-web server with
//!
//! - `GET /metrics`: the broker's counters and gauges in the Prometheus text exposition format,
//!   version 0.0.4 (encoded by `prometheus-client`).
//! - `GET /healthz`: `200 ok` when the Registry and the database both answer within
//!   [`HEALTH_TIMEOUT`], else `503` with one line per problem.
//!
//! It runs on one actix-web worker thread (an Arbiter of the broker's System), apart from the
//! session Arbiters. The counters are atomics read in place; what only the Registry knows
//! (clients, subscriptions, retained messages, persistent sessions) comes from one `Gauges`
//! message per scrape, which the Registry answers at once from its own state: it never waits
//! for HTTP, and a scrape waits for it at most [`REGISTRY_TIMEOUT`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::MailboxError;
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, web};
use log::{info, warn};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry as MetricRegistry, Unit};
use tokio::net::TcpListener;

use crate::broker::Shared;
use crate::db::DbError;
use crate::error::BrokerError;
use crate::messages::{ActiveClients, Gauges, Ping, RegistryGauges};
use crate::stats::Counters;

/// How long `/healthz` waits for the Registry and the database (concurrently). A probe's own
/// timeout should be longer (Kubernetes: `timeoutSeconds: 3` or more).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `/metrics` waits for the Registry's gauges; without them it serves the rest.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);

/// Simultaneous HTTP connections: a few scrapers and probes, not a public service.
const MAX_CONNECTIONS: usize = 64;

/// A running HTTP server.
pub struct HttpServer {
    /// The bound address (port 0 resolved).
    pub local_addr: SocketAddr,
    handle: ServerHandle,
}

impl HttpServer {
    /// Stops accepting and closes open connections (a scrape in progress is cut off).
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// What the handlers read.
struct State {
    shared: Arc<Shared>,
    started: Instant,
}

/// Binds `bind` (a failure is a start error, as for the MQTT listeners) and starts the server
/// inside the current actix System. `started` is the broker's start, for the uptime gauge.
pub async fn start(
    bind: SocketAddr,
    shared: Arc<Shared>,
    started: Instant,
) -> Result<HttpServer, BrokerError> {
    let bind_error = |source| BrokerError::Bind { addr: bind, source };
    let listener = TcpListener::bind(bind).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let listener = listener.into_std().map_err(bind_error)?;
    let state = web::Data::new(State { shared, started });
    let server = actix_web::HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            // A resource answers other methods with 405; `App::route` would give 404.
            .service(web::resource("/metrics").route(web::get().to(metrics)))
            .service(web::resource("/healthz").route(web::get().to(healthz)))
    })
    .workers(1)
    .max_connections(MAX_CONNECTIONS)
    // The broker's own signal handling (src/main.rs) stops it; actix-web's would stop the
    // whole System on SIGINT/SIGTERM, before the clean shutdown.
    .disable_signals()
    .listen(listener)
    .map_err(bind_error)?
    .run();
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            warn!("http server on {local_addr} stopped: {e}");
        }
    });
    info!("http listening on {local_addr}");
    Ok(HttpServer { local_addr, handle })
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    let shared = &state.shared;
    let registry = match tokio::time::timeout(REGISTRY_TIMEOUT, shared.registry.send(Gauges)).await
    {
        Ok(Ok(gauges)) => Some(gauges),
        Ok(Err(e)) => {
            warn!("/metrics: registry unavailable: {e}");
            None
        }
        Err(_) => {
            warn!("/metrics: registry did not answer within {REGISTRY_TIMEOUT:?}");
            None
        }
    };
    let snapshot = Snapshot {
        counters: shared.counters.all(),
        connections: shared.connections.load(Ordering::Relaxed),
        registry,
        uptime: state.started.elapsed(),
    };
    match render(&snapshot) {
        Ok(body) => HttpResponse::Ok()
            .content_type(prometheus_text::CONTENT_TYPE)
            .body(body),
        Err(_) => HttpResponse::InternalServerError().body("cannot encode the metrics\n"),
    }
}

async fn healthz(state: web::Data<State>) -> HttpResponse {
    let shared = &state.shared;
    let report = check_health(
        shared.registry.send(ActiveClients),
        shared.db.send(Ping),
        HEALTH_TIMEOUT,
    )
    .await;
    match report {
        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ok\n"),
        Err(problems) => {
            warn!("/healthz: {}", problems.replace('\n', "; "));
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body(problems + "\n")
        }
    }
}

/// Waits for both answers (at most `timeout`, concurrently). `Err`: one line per problem.
async fn check_health(
    registry: impl Future<Output = Result<usize, MailboxError>>,
    db: impl Future<Output = Result<Result<(), DbError>, MailboxError>>,
    timeout: Duration,
) -> Result<(), String> {
    let (registry, db) = futures_util::future::join(
        tokio::time::timeout(timeout, registry),
        tokio::time::timeout(timeout, db),
    )
    .await;
    let mut problems = Vec::new();
    match registry {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push(format!("registry: {e}")),
        Err(_) => problems.push(format!("registry: no answer within {timeout:?}")),
    }
    match db {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => problems.push(format!("database: {e}")),
        Ok(Err(e)) => problems.push(format!("database: {e}")),
        Err(_) => problems.push(format!("database: no answer within {timeout:?}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Everything one scrape reports.
struct Snapshot {
    counters: [(&'static str, &'static str, u64); Counters::LEN],
    connections: usize,
    /// `None`: the Registry did not answer; its gauges are left out.
    registry: Option<RegistryGauges>,
    uptime: Duration,
}

/// The scrape in the Prometheus text format 0.0.4. Counters are named `mqttd_<name>_total`.
fn render(s: &Snapshot) -> Result<String, std::fmt::Error> {
    // Built per scrape from plain values: our counters are atomics the broker already owns,
    // and const metrics read them without a second set of counters to keep in step.
    let mut metrics = MetricRegistry::with_prefix("mqttd");
    metrics.register(
        "build",
        "The running version",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    metrics.register_with_unit(
        "uptime",
        "Time since the broker started",
        Unit::Seconds,
        ConstGauge::new(s.uptime.as_secs()),
    );
    metrics.register(
        "connections",
        "Open network connections over all listeners, CONNECT done or not",
        ConstGauge::new(s.connections),
    );
    if let Some(g) = s.registry {
        metrics.register(
            "clients_connected",
            "Clients connected and registered",
            ConstGauge::new(g.clients),
        );
        metrics.register(
            "subscriptions",
            "Subscriptions of all clients, offline persistent sessions included",
            ConstGauge::new(g.subscriptions),
        );
        metrics.register(
            "retained_messages",
            "Topics with a retained message",
            ConstGauge::new(g.retained_messages),
        );
        metrics.register(
            "persistent_sessions",
            "Persistent sessions, connected or not",
            ConstGauge::new(g.persistent_sessions),
        );
    }
    for (name, help, value) in s.counters {
        metrics.register(name, help, ConstCounter::new(value));
    }
    let mut out = String::new();
    prometheus_text::encode(&mut out, &metrics)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(registry: Option<RegistryGauges>) -> Snapshot {
        let counters = Counters::default();
        Counters::add(&counters.messages_received);
        Counters::add(&counters.messages_received);
        Snapshot {
            counters: counters.all(),
            connections: 3,
            registry,
            uptime: Duration::from_millis(61_900),
        }
    }

    #[test]
    fn renders_the_text_format() {
        let gauges = RegistryGauges {
            clients: 2,
            subscriptions: 5,
            retained_messages: 7,
            persistent_sessions: 1,
        };
        let text = render(&snapshot(Some(gauges))).unwrap();
        for block in [
            "# HELP mqttd_messages_received_total PUBLISH packets received from clients.\n\
             # TYPE mqttd_messages_received_total counter\n\
             mqttd_messages_received_total 2\n",
            "# TYPE mqttd_messages_sent_total counter\nmqttd_messages_sent_total 0\n",
            "# TYPE mqttd_connections gauge\nmqttd_connections 3\n",
            "# TYPE mqttd_clients_connected gauge\nmqttd_clients_connected 2\n",
            "# TYPE mqttd_subscriptions gauge\nmqttd_subscriptions 5\n",
            "# TYPE mqttd_retained_messages gauge\nmqttd_retained_messages 7\n",
            "# TYPE mqttd_persistent_sessions gauge\nmqttd_persistent_sessions 1\n",
            "# TYPE mqttd_uptime_seconds gauge\nmqttd_uptime_seconds 61\n",
            concat!(
                "# TYPE mqttd_build_info gauge\nmqttd_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1\n"
            ),
        ] {
            assert!(text.contains(block), "{block:?} not in\n{text}");
        }
        // Every counter, each with HELP and TYPE, and nothing of OpenMetrics.
        for (name, _, _) in Counters::default().all() {
            let name = format!("mqttd_{name}_total");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} counter\n")), "{name}");
        }
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
        // One sample per family: the counters, 6 gauges, build info.
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, Counters::default().all().len() + 6 + 1, "{text}");
    }

    #[test]
    fn without_the_registry_its_gauges_are_left_out() {
        let text = render(&snapshot(None)).unwrap();
        assert!(text.contains("mqttd_connections 3\n"));
        assert!(text.contains("mqttd_messages_received_total 2\n"));
        assert!(!text.contains("mqttd_clients_connected"));
        assert!(!text.contains("mqttd_persistent_sessions"));
    }

    #[tokio::test(start_paused = true)]
    async fn health_names_each_problem() {
        let ok = || async { Ok::<_, MailboxError>(0usize) };
        let db_ok = || async { Ok::<_, MailboxError>(Ok::<_, DbError>(())) };
        let t = Duration::from_secs(2);
        assert_eq!(check_health(ok(), db_ok(), t).await, Ok(()));

        let hung = std::future::pending::<Result<usize, MailboxError>>();
        let problems = check_health(hung, db_ok(), t).await.unwrap_err();
        assert_eq!(problems, "registry: no answer within 2s");

        let db_error = async { Ok::<_, MailboxError>(Err(DbError::InvalidInput("disk on fire"))) };
        let problems = check_health(ok(), db_error, t).await.unwrap_err();
        assert_eq!(problems, "database: invalid input: disk on fire");

        let closed = async { Err::<usize, _>(MailboxError::Closed) };
        let db_hung = std::future::pending();
        let problems = check_health(closed, db_hung, t).await.unwrap_err();
        assert!(problems.starts_with("registry: "), "{problems}");
        assert!(
            problems.ends_with("\ndatabase: no answer within 2s"),
            "{problems}"
        );
    }
}
