//! The operations endpoint (`[http]` in the configuration): a small actix-web server with
//!
//! - `GET /metrics`: the broker's counters and gauges in the Prometheus text exposition format,
//!   version 0.0.4 (encoded by `prometheus-client`).
//! - `GET /healthz`: `200 ok` when the Registry and the database both answer within
//!   [`HEALTH_TIMEOUT`], else `503` with one line per problem.
//! - `GET /`: a small HTML status page with the same numbers as `/metrics`; its script
//!   (`GET /status.js`, served from this binary, no library) polls `GET /api/v1/stats` every
//!   second, updates the numbers in place and charts the message rates of the last minute.
//! - `GET /api/v1/stats`: that snapshot as JSON. Like `/` and `/metrics` it needs no token:
//!   it holds counts only, nothing `/metrics` does not show.
//! - The admin API, JSON under `/api/v1/` (in the manner of EMQX's): `GET clients`,
//!   `GET sessions` and `GET retained` (pages of at most [`MAX_LIMIT`], `?offset=&limit=`),
//!   `GET clients/{id}`, and `DELETE clients/{id}`, which closes that client's connection with
//!   DISCONNECT 0x98 (Administrative action). It needs `Authorization: Bearer <admin_token>`
//!   when a token is configured, and without one it answers only on a loopback address (see
//!   [`Admin`]).
//!
//! It runs on one actix-web worker thread (an Arbiter of the broker's System), apart from the
//! session Arbiters. The counters and histograms are atomics read in place; what only the
//! Registry knows (clients, subscriptions, retained messages, persistent sessions and their
//! queued messages) comes from one `Gauges` message per scrape, which the Registry answers at once from its own state: it never waits
//! for HTTP, and a scrape waits for it at most [`REGISTRY_TIMEOUT`]. The admin API asks it
//! the same way; a listing costs the Registry O(clients), never a sort of them all.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::MailboxError;
use actix::dev::ToEnvelope;
use actix::prelude::{Handler, Message};
use actix_web::dev::ServerHandle;
use actix_web::http::{StatusCode, header};
use actix_web::{App, HttpRequest, HttpResponse, web};
use log::{debug, info, warn};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry as MetricRegistry, Unit};
use tokio::net::TcpListener;

use crate::broker::Shared;
use crate::db::DbError;
use crate::error::BrokerError;
use crate::messages::{
    ActiveClients, Gauges, GetClient, Kick, Kicked, ListClients, ListRetained, ListSessions, Page,
    Ping, RegistryGauges,
};
use crate::registry::Registry;
use crate::stats::{Counters, HistogramSnapshot};

/// How long `/healthz` waits for the Registry and the database (concurrently). A probe's own
/// timeout should be longer (Kubernetes: `timeoutSeconds: 3` or more).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `/metrics` waits for the Registry's gauges; without them it serves the rest.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);

/// Simultaneous HTTP connections: a few scrapers and probes, not a public service.
const MAX_CONNECTIONS: usize = 64;

/// Items per admin API page when `limit` is not given, and the most one page may ask for.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;

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
    admin: Admin,
}

/// Who may use the admin API, which can disconnect clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// Requests must carry `Authorization: Bearer <token>`.
    Token(String),
    /// No token, on a loopback address: whoever can reach it is trusted (as for `/metrics`).
    Open,
    /// No token, on an address other machines may reach: refused (403), so that turning on
    /// `[http]` for Prometheus does not open the API to the network.
    Closed,
}

impl Admin {
    pub fn new(bind: SocketAddr, token: Option<&str>) -> Admin {
        match token {
            Some(token) => Admin::Token(token.to_owned()),
            None if bind.ip().is_loopback() => Admin::Open,
            None => Admin::Closed,
        }
    }

    /// `Err`: why the request is refused.
    fn check(&self, req: &HttpRequest) -> Result<(), Refusal> {
        match self {
            Admin::Open => Ok(()),
            Admin::Closed => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "the admin API needs [http] admin_token when the endpoint is not bound to a \
                 loopback address",
            )),
            Admin::Token(token) => {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, credentials)| credentials.trim());
                if given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
                    Ok(())
                } else {
                    Err(Refusal::new(
                        StatusCode::UNAUTHORIZED,
                        "a valid bearer token is required",
                    ))
                }
            }
        }
    }
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
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
    let token = shared
        .config
        .http
        .as_ref()
        .and_then(|h| h.admin_token.as_deref());
    let admin = Admin::new(local_addr, token);
    if admin == Admin::Closed {
        warn!(
            "http on {local_addr}: the admin API is off (403): set [http] admin_token, or bind \
             to a loopback address"
        );
    }
    let state = web::Data::new(State {
        shared,
        started,
        admin,
    });
    let server = actix_web::HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            // A resource answers other methods with 405; `App::route` would give 404.
            .service(web::resource("/").route(web::get().to(status_page)))
            .service(web::resource("/metrics").route(web::get().to(metrics)))
            .service(web::resource("/healthz").route(web::get().to(healthz)))
            .service(web::resource("/status.js").route(web::get().to(status_script)))
            .service(
                web::scope("/api/v1")
                    // Not behind `Admin`: the status page reads it (see `stats`).
                    .service(web::resource("/stats").route(web::get().to(stats)))
                    .service(web::resource("/clients").route(web::get().to(list_clients)))
                    .service(web::resource("/sessions").route(web::get().to(list_sessions)))
                    .service(web::resource("/retained").route(web::get().to(list_retained)))
                    // `.+`: a client identifier may contain `/`.
                    .service(
                        web::resource("/clients/{id:.+}")
                            .route(web::get().to(get_client))
                            .route(web::delete().to(kick_client)),
                    ),
            )
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

/// What `/metrics`, `/` and `/api/v1/stats` report. `path` names the page in a warning.
async fn snapshot(state: &State, path: &str) -> Snapshot {
    let shared = &state.shared;
    let registry = match tokio::time::timeout(REGISTRY_TIMEOUT, shared.registry.send(Gauges)).await
    {
        Ok(Ok(gauges)) => Some(gauges),
        Ok(Err(e)) => {
            warn!("{path}: registry unavailable: {e}");
            None
        }
        Err(_) => {
            warn!("{path}: registry did not answer within {REGISTRY_TIMEOUT:?}");
            None
        }
    };
    let counters = &shared.counters;
    Snapshot {
        counters: counters.all(),
        by_qos: counters.by_qos(),
        commit_duration: counters.commit_duration.snapshot(),
        commit_batch_ops: counters.commit_batch_ops.snapshot(),
        connections: shared.connections.load(Ordering::Relaxed),
        registry,
        uptime: state.started.elapsed(),
    }
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    let snapshot = snapshot(&state, "/metrics").await;
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

// ---- status page -----------------------------------------------------------------------------

async fn status_page(state: web::Data<State>) -> HttpResponse {
    let snapshot = snapshot(&state, "/").await;
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(render_status(&snapshot))
}

/// The status page's script: plain JavaScript, served by mqttd itself so that the page works
/// without access to the Internet (no CDN) and loads nothing from another origin.
const STATUS_SCRIPT: &str = include_str!("status.js");

async fn status_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(STATUS_SCRIPT)
}

/// `GET /api/v1/stats`: the snapshot of `/metrics` as JSON, for the status page. It needs no
/// admin token: it holds only counts that `/metrics` already shows to anyone.
async fn stats(state: web::Data<State>) -> HttpResponse {
    let snapshot = snapshot(&state, "/api/v1/stats").await;
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(stats_json(&snapshot))
}

/// `{"version", "uptime_seconds", "connections", <the Registry's gauges, null when it did not
/// answer>, <each counter>, "messages_received"/"messages_sent": {"total", "qos0".."qos2"},
/// "commit_duration_seconds"/"commit_batch_ops": {"count", "sum"}}`. The keys are the
/// `data-key`s of the status page's cells.
fn stats_json(s: &Snapshot) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut out = Map::new();
    out.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    out.insert("uptime_seconds".into(), json!(s.uptime.as_secs()));
    out.insert("connections".into(), json!(s.connections));
    let g = s.registry;
    for (key, value) in [
        ("clients_connected", g.map(|g| g.clients)),
        ("subscriptions", g.map(|g| g.subscriptions)),
        ("retained_messages", g.map(|g| g.retained_messages)),
        ("persistent_sessions", g.map(|g| g.persistent_sessions)),
        ("queued_messages", g.map(|g| g.queued_messages)),
    ] {
        out.insert(key.into(), json!(value));
    }
    for (name, _, [qos0, qos1, qos2]) in s.by_qos {
        let total = qos0 + qos1 + qos2;
        out.insert(
            name.into(),
            json!({ "total": total, "qos0": qos0, "qos1": qos1, "qos2": qos2 }),
        );
    }
    for (name, _, value) in s.counters {
        out.insert(name.into(), json!(value));
    }
    for (key, h) in [
        ("commit_duration_seconds", &s.commit_duration),
        ("commit_batch_ops", &s.commit_batch_ops),
    ] {
        out.insert(key.into(), json!({ "count": h.count, "sum": h.sum }));
    }
    Value::Object(out)
}

/// `1d 2h 3m 4s`, leading zero units left out.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (value, unit) in [(days, "d"), (hours, "h"), (minutes, "m")] {
        if value > 0 || !out.is_empty() {
            out.push_str(&format!("{value}{unit} "));
        }
    }
    out + &format!("{seconds}s")
}

/// Text for HTML; the page shows only numbers and fixed text, but help texts are not checked.
fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The status page: a plain HTML table, filled in on the server so that it reads without
/// script, and `/status.js`, which polls `/api/v1/stats` and updates each `data-key` cell (the
/// JSON's keys) in place, and draws the message rates on the canvas. Nothing from elsewhere.
fn render_status(s: &Snapshot) -> String {
    // (data-key, name, value, help as HTML)
    let mut rows: Vec<(String, String, String, String)> = vec![
        (
            "uptime_seconds".into(),
            "uptime".into(),
            format!("{} ({} s)", human_duration(s.uptime), s.uptime.as_secs()),
            "Time since the broker started".into(),
        ),
        (
            "connections".into(),
            "connections".into(),
            s.connections.to_string(),
            "Open network connections over all listeners, CONNECT done or not".into(),
        ),
    ];
    let registry = |value: fn(&RegistryGauges) -> usize| {
        s.registry
            .as_ref()
            .map_or_else(|| "unavailable".to_string(), |g| value(g).to_string())
    };
    for (key, name, value, help) in [
        (
            "clients_connected",
            "clients connected",
            registry(|g| g.clients),
            "Clients connected and registered",
        ),
        (
            "subscriptions",
            "subscriptions",
            registry(|g| g.subscriptions),
            "Subscriptions of all clients, offline persistent sessions included",
        ),
        (
            "retained_messages",
            "retained messages",
            registry(|g| g.retained_messages),
            "Topics with a retained message",
        ),
        (
            "persistent_sessions",
            "persistent sessions",
            registry(|g| g.persistent_sessions),
            "Persistent sessions, connected or not",
        ),
        (
            "queued_messages",
            "queued messages",
            registry(|g| g.queued_messages),
            "QoS 1/2 messages stored for persistent sessions, not yet acknowledged",
        ),
    ] {
        rows.push((key.into(), name.into(), value, escape_html(help)));
    }
    for (name, help, [qos0, qos1, qos2]) in s.by_qos {
        rows.push((
            name.into(),
            name.replace('_', " "),
            (qos0 + qos1 + qos2).to_string(),
            format!(
                "{} (<span data-qos=\"{name}\">QoS 0: {qos0}, 1: {qos1}, 2: {qos2}</span>)",
                escape_html(help)
            ),
        ));
    }
    for (name, help, value) in s.counters {
        rows.push((
            name.into(),
            name.replace('_', " "),
            value.to_string(),
            escape_html(help),
        ));
    }
    let mean = |h: &HistogramSnapshot, scale: f64, unit: &str| match h.count {
        0 => "none".to_string(),
        n => format!("{:.2}{unit}", h.sum * scale / n as f64),
    };
    rows.push((
        "commit_duration_seconds".into(),
        "commit duration".into(),
        mean(&s.commit_duration, 1000.0, " ms"),
        "Mean time of a group commit, from sending it to the database to its answer".into(),
    ));
    rows.push((
        "commit_batch_ops".into(),
        "commit batch ops".into(),
        mean(&s.commit_batch_ops, 1.0, ""),
        "Mean journal operations per group commit".into(),
    ));
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>mqttd {version}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; }}\n\
         td, th {{ padding: 0.2em 1em; text-align: left; }}\n\
         td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         #chart {{ border: 1px solid #ccc; }}\n\
         .received {{ color: #1f77b4; }} .sent {{ color: #d62728; }}\n\
         </style>\n<script src=\"/status.js\" defer></script>\n</head>\n<body>\n\
         <h1>mqttd {version}</h1>\n\
         <p>Messages per second over the last minute: <span class=\"received\">received \
         <b id=\"rate-received\">-</b></span>, <span class=\"sent\">sent \
         <b id=\"rate-sent\">-</b></span>. <span id=\"poll-status\"></span></p>\n\
         <canvas id=\"chart\" width=\"600\" height=\"160\"></canvas>\n<table>\n",
        version = escape_html(env!("CARGO_PKG_VERSION")),
    );
    for (key, name, value, help) in rows {
        html.push_str(&format!(
            "<tr><th>{}</th><td class=\"n\" data-key=\"{}\">{}</td><td>{}</td></tr>\n",
            escape_html(&name),
            escape_html(&key),
            escape_html(&value),
            help
        ));
    }
    html.push_str(
        "</table>\n<p>Also: <a href=\"/metrics\">/metrics</a> (Prometheus), \
         <a href=\"/healthz\">/healthz</a>, <a href=\"/api/v1/stats\">/api/v1/stats</a> \
         (JSON).</p>\n</body>\n</html>\n",
    );
    html
}

// ---- admin API -------------------------------------------------------------------------------

/// `?offset=&limit=` of a listing.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

/// The page asked for: (offset, limit), or the 400 refusing it.
fn page_bounds(req: &HttpRequest) -> Result<(usize, usize), Refusal> {
    let query = web::Query::<PageQuery>::from_query(req.query_string())
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad query: {e}")))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    Ok((query.offset.unwrap_or(0), limit))
}

/// An admin API request that gets an error: answered `{"error": message}` with `status`.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(serde_json::json!({ "error": self.message }))
    }
}

/// A listing: `{"data": [...], "meta": {"offset", "limit", "count"}}`, `count` being the
/// number of items over all pages.
fn listing<T: serde::Serialize>(page: Page<T>, offset: usize, limit: usize) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "data": page.items,
        "meta": { "offset": offset, "limit": limit, "count": page.total },
    }))
}

/// Asks the Registry, at most [`REGISTRY_TIMEOUT`]; `Err`: the 503 to answer.
async fn ask<M>(state: &State, msg: M) -> Result<M::Result, Refusal>
where
    M: Message + Send + 'static,
    M::Result: Send,
    Registry: Handler<M>,
    <Registry as actix::Actor>::Context: ToEnvelope<Registry, M>,
{
    match tokio::time::timeout(REGISTRY_TIMEOUT, state.shared.registry.send(msg)).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => {
            warn!("admin API: registry unavailable: {e}");
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry unavailable",
            ))
        }
        Err(_) => {
            warn!("admin API: registry did not answer within {REGISTRY_TIMEOUT:?}");
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry did not answer",
            ))
        }
    }
}

/// Folds the `Result`s of a handler into one response.
fn respond(result: Result<HttpResponse, Refusal>) -> HttpResponse {
    result.unwrap_or_else(|refusal| refusal.response())
}

/// One page of a Registry listing, `?offset=&limit=` checked first.
async fn list<M, T>(
    req: &HttpRequest,
    state: &State,
    query: impl FnOnce(usize, usize) -> M,
) -> HttpResponse
where
    M: Message<Result = Page<T>> + Send + 'static,
    T: serde::Serialize + Send,
    Registry: Handler<M>,
    <Registry as actix::Actor>::Context: ToEnvelope<Registry, M>,
{
    respond(
        async {
            state.admin.check(req)?;
            let (offset, limit) = page_bounds(req)?;
            let page = ask(state, query(offset, limit)).await?;
            Ok(listing(page, offset, limit))
        }
        .await,
    )
}

async fn list_clients(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list(&req, &state, |offset, limit| ListClients { offset, limit }).await
}

async fn list_sessions(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list(&req, &state, |offset, limit| ListSessions { offset, limit }).await
}

async fn list_retained(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list(&req, &state, |offset, limit| ListRetained { offset, limit }).await
}

/// `id`: the `{id}` of the path, fully percent-decoded by `web::Path` (`%2F` included, which
/// `match_info` leaves encoded).
async fn get_client(
    req: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
) -> HttpResponse {
    respond(
        async {
            state.admin.check(&req)?;
            let client_id = id.into_inner();
            match ask(&state, GetClient { client_id }).await? {
                Some(client) => Ok(HttpResponse::Ok().json(client)),
                None => Err(Refusal::new(StatusCode::NOT_FOUND, "client not connected")),
            }
        }
        .await,
    )
}

/// Disconnects a client (DISCONNECT 0x98, for MQTT 5): `204` once its connection is closing,
/// `202` if it does not answer within a second (it is stalled; it closes when it takes the
/// message, or at its send timeout), `404` if it is not connected. A persistent session stays.
async fn kick_client(
    req: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
) -> HttpResponse {
    respond(
        async {
            state.admin.check(&req)?;
            let client_id = id.into_inner();
            debug!("admin API: kick {client_id:?}");
            match ask(&state, Kick { client_id }).await? {
                Kicked::Closed => Ok(HttpResponse::NoContent().finish()),
                Kicked::Pending => Ok(HttpResponse::Accepted().finish()),
                Kicked::NotConnected => {
                    Err(Refusal::new(StatusCode::NOT_FOUND, "client not connected"))
                }
            }
        }
        .await,
    )
}

/// Everything one scrape reports.
struct Snapshot {
    counters: [(&'static str, &'static str, u64); Counters::LEN],
    by_qos: [(&'static str, &'static str, [u64; 3]); 4],
    commit_duration: HistogramSnapshot,
    commit_batch_ops: HistogramSnapshot,
    connections: usize,
    /// `None`: the Registry did not answer; its gauges are left out.
    registry: Option<RegistryGauges>,
    uptime: Duration,
}

/// A counter family labelled `qos="0"`, `"1"`, `"2"`, from values read once.
#[derive(Debug)]
struct QosCounters([u64; 3]);

impl EncodeMetric for QosCounters {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (qos, value) in ["0", "1", "2"].into_iter().zip(self.0) {
            encoder
                .encode_family(&[("qos", qos)])?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A histogram from values read once (see `stats::Histogram`), like `ConstCounter`.
#[derive(Debug)]
struct ConstHistogram(HistogramSnapshot);

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
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
        metrics.register(
            "queued_messages",
            "QoS 1/2 messages stored for persistent sessions, not yet acknowledged",
            ConstGauge::new(g.queued_messages),
        );
    }
    for (name, help, value) in s.counters {
        metrics.register(name, help, ConstCounter::new(value));
    }
    for (name, help, values) in s.by_qos {
        metrics.register(name, help, QosCounters(values));
    }
    metrics.register_with_unit(
        "commit_duration",
        "Time from sending a group commit to the database to its answer",
        Unit::Seconds,
        ConstHistogram(s.commit_duration.clone()),
    );
    metrics.register(
        "commit_batch_ops",
        "Journal operations per group commit (0: only records that the broker is alive)",
        ConstHistogram(s.commit_batch_ops.clone()),
    );
    let mut out = String::new();
    prometheus_text::encode(&mut out, &metrics)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::QoS;
    use crate::stats::{BatchOps, Buckets, CommitMicros};

    fn snapshot(registry: Option<RegistryGauges>) -> Snapshot {
        let counters = Counters::default();
        counters.messages_received.add(QoS::AtMostOnce);
        counters.messages_received.add(QoS::AtLeastOnce);
        counters.bytes_received.add_n(QoS::AtLeastOnce, 12);
        counters.commit_batch_ops.observe(3);
        counters.commit_duration.observe(1_500);
        counters.commit_duration.observe(20_000);
        Snapshot {
            counters: counters.all(),
            by_qos: counters.by_qos(),
            commit_duration: counters.commit_duration.snapshot(),
            commit_batch_ops: counters.commit_batch_ops.snapshot(),
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
            queued_messages: 4,
        };
        let text = render(&snapshot(Some(gauges))).unwrap();
        for block in [
            "# HELP mqttd_messages_received_total PUBLISH packets received from clients.\n\
             # TYPE mqttd_messages_received_total counter\n\
             mqttd_messages_received_total{qos=\"0\"} 1\n\
             mqttd_messages_received_total{qos=\"1\"} 1\n\
             mqttd_messages_received_total{qos=\"2\"} 0\n",
            "# TYPE mqttd_messages_sent_total counter\nmqttd_messages_sent_total{qos=\"0\"} 0\n",
            "# TYPE mqttd_bytes_received_total counter\n\
             mqttd_bytes_received_total{qos=\"0\"} 0\n\
             mqttd_bytes_received_total{qos=\"1\"} 12\n",
            "# TYPE mqttd_auth_failures_total counter\nmqttd_auth_failures_total 0\n",
            "# TYPE mqttd_queued_messages gauge\nmqttd_queued_messages 4\n",
            "# TYPE mqttd_commit_duration_seconds histogram\n\
             mqttd_commit_duration_seconds_bucket{le=\"0.0001\"} 0\n",
            "mqttd_commit_duration_seconds_bucket{le=\"0.0025\"} 1\n",
            "mqttd_commit_duration_seconds_bucket{le=\"0.025\"} 2\n",
            "mqttd_commit_duration_seconds_bucket{le=\"+Inf\"} 2\n\
             mqttd_commit_duration_seconds_sum 0.0215\n\
             mqttd_commit_duration_seconds_count 2\n",
            "# TYPE mqttd_commit_batch_ops histogram\n\
             mqttd_commit_batch_ops_bucket{le=\"0\"} 0\n",
            "mqttd_commit_batch_ops_bucket{le=\"5\"} 1\n",
            "mqttd_commit_batch_ops_sum 3.0\nmqttd_commit_batch_ops_count 1\n",
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
        // One sample per family: the counters, 7 gauges, build info; 3 per QoS family; the
        // buckets, +Inf, sum and count of each histogram.
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let histograms = CommitMicros::BOUNDS.len() + BatchOps::BOUNDS.len() + 2 * 3;
        assert_eq!(
            samples,
            Counters::default().all().len() + 7 + 1 + 4 * 3 + histograms,
            "{text}"
        );
    }

    #[test]
    fn without_the_registry_its_gauges_are_left_out() {
        let text = render(&snapshot(None)).unwrap();
        assert!(text.contains("mqttd_connections 3\n"));
        assert!(text.contains("mqttd_messages_received_total{qos=\"1\"} 1\n"));
        assert!(text.contains("mqttd_commit_duration_seconds_count 2\n"));
        assert!(!text.contains("mqttd_queued_messages"));
        assert!(!text.contains("mqttd_clients_connected"));
        assert!(!text.contains("mqttd_persistent_sessions"));
    }

    #[test]
    fn the_status_page_shows_every_number() {
        let gauges = RegistryGauges {
            clients: 2,
            subscriptions: 5,
            retained_messages: 7,
            persistent_sessions: 1,
            queued_messages: 4,
        };
        let html = render_status(&snapshot(Some(gauges)));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains(concat!("<h1>mqttd ", env!("CARGO_PKG_VERSION"), "</h1>")));
        for row in [
            "<tr><th>uptime</th><td class=\"n\" data-key=\"uptime_seconds\">1m 1s (61 s)</td>",
            "<tr><th>connections</th><td class=\"n\" data-key=\"connections\">3</td>",
            "<tr><th>clients connected</th><td class=\"n\" data-key=\"clients_connected\">2</td>",
            "<tr><th>subscriptions</th><td class=\"n\" data-key=\"subscriptions\">5</td>",
            "<tr><th>retained messages</th><td class=\"n\" data-key=\"retained_messages\">7</td>",
            "<tr><th>persistent sessions</th><td class=\"n\" data-key=\"persistent_sessions\">1</td>",
            "<tr><th>queued messages</th><td class=\"n\" data-key=\"queued_messages\">4</td>",
            "<tr><th>messages received</th><td class=\"n\" data-key=\"messages_received\">2</td>",
            "(<span data-qos=\"messages_received\">QoS 0: 1, 1: 1, 2: 0</span>)",
            "<tr><th>bytes received</th><td class=\"n\" data-key=\"bytes_received\">12</td>",
            "<tr><th>commit duration</th><td class=\"n\" data-key=\"commit_duration_seconds\">10.75 ms</td>",
            "<tr><th>commit batch ops</th><td class=\"n\" data-key=\"commit_batch_ops\">3.00</td>",
            "<tr><th>dropped qos0</th><td class=\"n\" data-key=\"dropped_qos0\">0</td>",
            "the subscriber's queue was full",
            "<script src=\"/status.js\" defer></script>",
            "<canvas id=\"chart\"",
        ] {
            assert!(html.contains(row), "{row:?} not in\n{html}");
        }
        // Nothing from another origin: the one script is mqttd's own.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("http://") && !html.contains("https://"));
        let html = render_status(&snapshot(None));
        assert!(html.contains(
            "<tr><th>clients connected</th><td class=\"n\" data-key=\"clients_connected\">unavailable</td>"
        ));
    }

    #[test]
    fn stats_json_has_the_status_page_keys() {
        let gauges = RegistryGauges {
            clients: 2,
            subscriptions: 5,
            retained_messages: 7,
            persistent_sessions: 1,
            queued_messages: 4,
        };
        let s = snapshot(Some(gauges));
        let json = stats_json(&s);
        assert_eq!(json["uptime_seconds"], 61);
        assert_eq!(json["connections"], 3);
        assert_eq!(json["clients_connected"], 2);
        assert_eq!(json["queued_messages"], 4);
        assert_eq!(
            json["messages_received"],
            serde_json::json!({ "total": 2, "qos0": 1, "qos1": 1, "qos2": 0 })
        );
        assert_eq!(json["bytes_received"]["qos1"], 12);
        assert_eq!(json["commit_duration_seconds"]["count"], 2);
        assert_eq!(json["commit_batch_ops"]["sum"], 3.0);
        // Every value cell of the page has its key, and every key its cell.
        let html = render_status(&s);
        let keys: Vec<&str> = html
            .split("data-key=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        let object = json.as_object().unwrap();
        assert_eq!(keys.len() + 1, object.len(), "{keys:?}"); // + "version"
        for key in keys {
            assert!(object.contains_key(key), "{key}");
        }
        let json = stats_json(&snapshot(None));
        assert!(json["clients_connected"].is_null());
        assert_eq!(json["connections"], 3);
    }

    #[test]
    fn durations_read_like_uptime() {
        let d = Duration::from_secs;
        assert_eq!(human_duration(d(0)), "0s");
        assert_eq!(human_duration(d(61)), "1m 1s");
        assert_eq!(human_duration(d(3600)), "1h 0m 0s");
        assert_eq!(human_duration(d(2 * 86_400 + 5)), "2d 0h 0m 5s");
    }

    fn request(authorization: Option<&str>) -> HttpRequest {
        let mut req = actix_web::test::TestRequest::get().uri("/api/v1/clients");
        if let Some(value) = authorization {
            req = req.insert_header((header::AUTHORIZATION, value));
        }
        req.to_http_request()
    }

    #[test]
    fn the_admin_api_needs_the_token_or_a_loopback_address() {
        let loopback: SocketAddr = "127.0.0.1:9883".parse().unwrap();
        let anywhere: SocketAddr = "0.0.0.0:9883".parse().unwrap();
        assert_eq!(Admin::new(loopback, None), Admin::Open);
        assert_eq!(Admin::new("[::1]:9883".parse().unwrap(), None), Admin::Open);
        assert_eq!(Admin::new(anywhere, None), Admin::Closed);
        assert!(Admin::Open.check(&request(None)).is_ok());
        let refused = Admin::Closed.check(&request(Some("Bearer x"))).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);

        let admin = Admin::new(loopback, Some("s3cret"));
        assert_eq!(admin, Admin::Token("s3cret".into()));
        assert!(admin.check(&request(Some("Bearer s3cret"))).is_ok());
        assert!(admin.check(&request(Some("bearer  s3cret"))).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            let refused = admin.check(&request(wrong)).unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
            let response = refused.response();
            assert_eq!(
                response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
                "Bearer"
            );
        }
    }

    #[test]
    fn page_bounds_default_and_cap_the_limit() {
        let bounds = |query: &str| {
            let req = actix_web::test::TestRequest::get()
                .uri(&format!("/api/v1/clients{query}"))
                .to_http_request();
            page_bounds(&req).map_err(|r| r.status)
        };
        assert_eq!(bounds(""), Ok((0, DEFAULT_LIMIT)));
        assert_eq!(bounds("?offset=20&limit=5"), Ok((20, 5)));
        assert_eq!(bounds("?limit=10000"), Ok((0, 10_000)));
        for bad in [
            "?limit=0",
            "?limit=10001",
            "?limit=-1",
            "?offset=x",
            "?page=2",
        ] {
            assert_eq!(bounds(bad), Err(StatusCode::BAD_REQUEST), "{bad}");
        }
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
