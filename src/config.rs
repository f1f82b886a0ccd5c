//! Broker configuration: a TOML file (see `docs/mqttd.example.toml`), overridden by command-line flags.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The address the broker listens on when no listener is configured.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883);

/// Everything the broker reads at start-up. Every field has a default, so an empty file is a
/// valid configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[[listener]]` tables. Empty means the default loopback listener on 127.0.0.1:1883.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// SQLite database file; created (mode 0600) and migrated at start-up.
    pub db_path: PathBuf,
    /// Whether clients may connect without a username. Unset follows Mosquitto 2.0: allowed
    /// only while no listener is configured beyond the default loopback one.
    pub allow_anonymous: Option<bool>,
    /// What an unmatched request gets for a client that has no ACL rule of its own (by
    /// username or client id). A client with such a rule is always denied what no rule allows.
    pub acl_default: AclDefault,
    /// Sent as Response Information in CONNACK to clients that ask for it (§3.1.2.11.6).
    pub response_information: Option<String>,
    /// Binds a client identifier to the user that holds it (§5.4.2): while a connection or a
    /// stored persistent session authenticated as one user holds an id, a connection as
    /// another user (or anonymous) gets CONNACK 0x87 instead of taking it over. Ids held by
    /// anonymous clients are not bound.
    pub client_id_binding: bool,
    /// A retained message is sent to a new subscriber only if its publisher may still publish
    /// to its topic under the current rules (Mosquitto's `check_retain_source`,
    /// CVE-2018-12546); the publisher is known by client id and the username it last
    /// connected with.
    pub retained_recheck_publisher: bool,
    /// Seconds between `$SYS/broker/...` updates (retained, Mosquitto's names); 0 = none.
    pub sys_interval: u64,
    /// Threads (actix Arbiters) that run client sessions; 0 = one per available core.
    pub workers: usize,
    /// Time slice the session threads ask the Linux scheduler for (see `sched`), in
    /// microseconds; 0 = the kernel's default.
    pub worker_slice_us: u64,
    /// Threads of the DbActor's SyncArbiter (SQLite connections).
    pub db_threads: usize,
    /// What an acknowledgement promises about persistent sessions: "process" (the default:
    /// committed with synchronous=NORMAL, survives kill -9) or "power" (synchronous=FULL,
    /// also survives power loss). See the README's durability section.
    pub durability: crate::persist::Durability,
    pub limits: Limits,
    /// The `[http]` table: the operations endpoint (`/metrics`, `/healthz`). Unset = none.
    pub http: Option<HttpConfig>,
}

/// `acl_default = "allow" | "deny"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclDefault {
    Allow,
    Deny,
}

/// One `[[listener]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ADDR:PORT`; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Makes this a TLS listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// MQTT over WebSocket (wss with `tls`): an HTTP upgrade on `websocket_path` first.
    #[serde(default)]
    pub websocket: bool,
    /// The HTTP path upgraded to MQTT (needs `websocket`); unset: `/mqtt`.
    #[serde(default)]
    pub websocket_path: Option<String>,
}

impl ListenerConfig {
    /// A plain TCP listener.
    pub fn tcp(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            tls: None,
            websocket: false,
            websocket_path: None,
        }
    }

    /// The path a WebSocket listener upgrades; `None` on an MQTT-over-TCP listener.
    pub fn websocket_path(&self) -> Option<&str> {
        self.websocket.then(|| {
            self.websocket_path
                .as_deref()
                .unwrap_or(crate::websocket::DEFAULT_PATH)
        })
    }
}

/// A listener's `tls = { ... }` table. The files are read at start and again on reload (SIGHUP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate in `cert`.
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate they issued (mTLS).
    pub client_ca: Option<PathBuf>,
    /// PEM certificate revocation lists for the client certificates (needs `client_ca`).
    pub crl: Option<PathBuf>,
    /// Takes the username from the verified client certificate (needs `client_ca`); the
    /// CONNECT username is replaced and no password is checked.
    pub identity_as_username: Option<CertIdentity>,
}

/// `identity_as_username = "cn" | "san"`: which part of the client certificate is the username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertIdentity {
    /// The subject's Common Name.
    Cn,
    /// The first DNS name of the Subject Alternative Name extension.
    San,
}

/// The `[http]` table: a plain-HTTP server for operations: `GET /metrics` (Prometheus),
/// `GET /healthz`, a status page on `/`, and the admin API under `/api/v1/`. Plain HTTP: bind
/// it to loopback or a management network.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `ADDR:PORT`; port 0 picks a free port.
    pub bind: SocketAddr,
    /// The bearer token the admin API (`/api/v1/...`) requires (`Authorization: Bearer ...`).
    /// Unset: the API answers without one only when `bind` is a loopback address, and is
    /// refused (403) otherwise. `/metrics`, `/healthz` and `/` never need it.
    #[serde(default)]
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for HttpConfig {
    // Never log the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("bind", &self.bind)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl HttpConfig {
    /// No admin token.
    pub fn new(bind: SocketAddr) -> HttpConfig {
        HttpConfig {
            bind,
            admin_token: None,
        }
    }
}

/// The `[limits]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Simultaneous connections over all listeners; 0 = unlimited. A connection over the limit
    /// is closed right after accept, before any byte is read (as Mosquitto does).
    pub max_connections: usize,
    /// Largest packet accepted from a client, in bytes, fixed header included; announced as
    /// Maximum Packet Size in CONNACK. The spec's ceiling is 268,435,460.
    pub max_packet_size: u32,
    /// Largest Keep Alive granted, in seconds. A v5 client asking for more (or for 0) is told
    /// this value in Server Keep Alive; a v3.1.1 client is refused, as Mosquitto does. 65535
    /// means no cap.
    pub max_keep_alive: u16,
    /// Seconds a new connection may take to complete CONNECT before it is closed.
    pub connect_timeout: u64,
    /// Receive Maximum announced in CONNACK: unacknowledged QoS 1/2 messages a client may have.
    pub receive_maximum: u16,
    /// Longest client identifier accepted, in bytes (1-23 alphanumerics are always accepted).
    pub max_client_id_len: usize,
    /// Messages waiting for one subscriber (its delivery queue). When it is full, new messages
    /// for that subscriber are dropped and counted (drop-new, as Mosquitto and HiveMQ do).
    pub max_queued_messages: usize,
    /// Topic Alias Maximum announced in CONNACK: aliases a client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Seconds a write to a client may wait for it to read before the connection is closed.
    pub send_timeout: u64,
    /// Subscriptions one client may hold; further filters get SUBACK 0x97 (Quota exceeded).
    pub max_subscriptions_per_client: usize,
    /// Longest topic name or filter accepted, in bytes.
    pub max_topic_length: usize,
    /// Most levels (`/`-separated parts) in a topic name or filter.
    pub max_topic_levels: usize,
    /// Most User Properties in one packet; more ends the connection with 0x95.
    pub max_user_properties: usize,
    /// Unacknowledged QoS 1/2 messages the broker sends one client, below the client's own
    /// Receive Maximum.
    pub max_inflight_messages: u16,
    /// Topics with a retained message; 0 = unlimited. A retained message for a new topic over
    /// the limit is delivered live but not retained.
    pub max_retained_messages: usize,
    /// Simultaneous connections from one source address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// New connections per second from one source address; 0 = unlimited.
    pub max_connection_rate_per_ip: u32,
    /// Failed logins from one address within a minute that get it banned; 0 = never.
    pub max_auth_failures_per_ip: u32,
    /// Seconds a banned address is refused (CONNACK 0x8A before any password is checked).
    pub auth_ban: u64,
    /// Failed logins for one username (from any address) within a minute that get it banned
    /// for `auth_ban` seconds: its logins then get CONNACK 0x8A before the password is
    /// checked; 0 = never.
    pub max_auth_failures_per_user: u32,
    /// Accepted connections of one client identifier within a minute after which further
    /// CONNECTs with it get CONNACK 0x8A for `flapping_ban` seconds (flapping detection);
    /// 0 = never. The connection that holds the id is not touched.
    pub max_connects_per_client_id_per_minute: u32,
    /// Seconds a flapping client identifier is refused.
    pub flapping_ban: u64,
    /// Longest Session Expiry Interval granted, in seconds; a client asking for more is told
    /// this value in CONNACK. A 3.1.1 client with Clean Session 0 gets exactly this. 4294967295
    /// means sessions may never expire.
    pub max_session_expiry: u32,
    /// Payload bytes of one offline persistent session: once it holds this much (or
    /// `max_queued_messages`), new messages for it are dropped (drop-new) and counted.
    pub max_queued_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Vec::new(),
            db_path: PathBuf::from("mqttd.db"),
            allow_anonymous: None,
            acl_default: AclDefault::Allow,
            response_information: None,
            client_id_binding: true,
            retained_recheck_publisher: true,
            sys_interval: 10,
            workers: 0,
            worker_slice_us: 100,
            db_threads: 2,
            durability: crate::persist::Durability::default(),
            limits: Limits::default(),
            http: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 0,
            max_packet_size: 1024 * 1024,
            max_keep_alive: u16::MAX,
            connect_timeout: 10,
            receive_maximum: 100,
            max_client_id_len: 65_535,
            max_queued_messages: 1000,
            topic_alias_maximum: 10,
            send_timeout: 30,
            max_subscriptions_per_client: 10_000,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            max_user_properties: 128,
            max_inflight_messages: 100,
            max_retained_messages: 0,
            max_connections_per_ip: 0,
            max_connection_rate_per_ip: 0,
            max_auth_failures_per_ip: 10,
            auth_ban: 300,
            max_auth_failures_per_user: 10,
            max_connects_per_client_id_per_minute: 15,
            flapping_ban: 300,
            max_session_expiry: 86_400,
            max_queued_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value for `{key}`: {why}")]
    Invalid {
        key: &'static str,
        why: &'static str,
    },
}

impl Config {
    /// Reads and validates a TOML file. Unknown keys are errors, so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, why| Err(ConfigError::Invalid { key, why });
        let l = &self.limits;
        if l.max_packet_size < 16 || l.max_packet_size > 268_435_460 {
            return invalid("limits.max_packet_size", "must be between 16 and 268435460");
        }
        if l.receive_maximum == 0 {
            return invalid("limits.receive_maximum", "must be at least 1");
        }
        if l.max_keep_alive == 0 {
            return invalid("limits.max_keep_alive", "must be at least 1");
        }
        if l.connect_timeout == 0 {
            return invalid("limits.connect_timeout", "must be at least 1 second");
        }
        if l.max_client_id_len < 23 {
            return invalid(
                "limits.max_client_id_len",
                "must be at least 23 [MQTT-3.1.3-5]",
            );
        }
        if l.send_timeout == 0 {
            return invalid("limits.send_timeout", "must be at least 1 second");
        }
        if l.max_inflight_messages == 0 {
            return invalid("limits.max_inflight_messages", "must be at least 1");
        }
        if l.max_topic_levels == 0 {
            return invalid("limits.max_topic_levels", "must be at least 1");
        }
        if l.max_queued_messages == 0 {
            return invalid("limits.max_queued_messages", "must be at least 1");
        }
        // A persistent session's stored messages each hold a packet id (of 65,535).
        if l.max_queued_messages > 32_768 {
            return invalid("limits.max_queued_messages", "must be at most 32768");
        }
        if self.db_threads == 0 {
            return invalid("db_threads", "must be at least 1");
        }
        if self
            .worker_slice()
            .is_some_and(|slice| !crate::sched::SLICES.contains(&slice))
        {
            return invalid(
                "worker_slice_us",
                "must be 0 (the kernel's default) or between 100 and 100000, the slices Linux accepts",
            );
        }
        if let Some(http) = &self.http
            && http.bind.port() != 0
            && self
                .effective_listeners()
                .iter()
                .any(|l| l.bind == http.bind)
        {
            return invalid("http.bind", "is also an MQTT listener's address");
        }
        if let Some(token) = self.http.as_ref().and_then(|h| h.admin_token.as_deref())
            && token.trim().is_empty()
        {
            return invalid("http.admin_token", "is empty");
        }
        for tls in self.listeners.iter().filter_map(|l| l.tls.as_ref()) {
            if tls.client_ca.is_none() {
                if tls.crl.is_some() {
                    return invalid("listener.tls.crl", "needs listener.tls.client_ca");
                }
                if tls.identity_as_username.is_some() {
                    return invalid(
                        "listener.tls.identity_as_username",
                        "needs listener.tls.client_ca",
                    );
                }
            }
        }
        for listener in &self.listeners {
            if let Some(path) = &listener.websocket_path {
                if !listener.websocket {
                    return invalid("listener.websocket_path", "needs listener.websocket = true");
                }
                // Compared with the request's path as sent (percent-encoded, no query).
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path
                        .bytes()
                        .any(|b| !b.is_ascii_graphic() || b == b'?' || b == b'#')
                {
                    return invalid(
                        "listener.websocket_path",
                        "must start with / and be printable ASCII without spaces, ? or #",
                    );
                }
            }
        }
        Ok(())
    }

    /// The listeners to open: the configured ones, or the default plain loopback listener.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if self.listeners.is_empty() {
            vec![ListenerConfig::tcp(DEFAULT_BIND)]
        } else {
            self.listeners.clone()
        }
    }

    /// Mosquitto 2.0's rule: anonymous clients are allowed by default only on the default
    /// loopback-only listener; once a listener is configured, `allow_anonymous = true` is needed.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.listeners.is_empty())
    }

    /// Session Arbiters to start.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The time slice the session threads ask for, if any.
    pub fn worker_slice(&self) -> Option<Duration> {
        (self.worker_slice_us != 0).then(|| Duration::from_micros(self.worker_slice_us))
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.connect_timeout)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.send_timeout)
    }

    /// Whether a topic name or filter is longer, or has more levels, than the limits allow.
    /// Counting is linear and needs no recursion, whatever the input.
    pub fn topic_over_limits(&self, topic: &str) -> bool {
        topic.len() > self.limits.max_topic_length
            || topic.bytes().filter(|&b| b == b'/').count() >= self.limits.max_topic_levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_and_anonymous_on_loopback() {
        let c: Config = toml::from_str("").unwrap();
        let listeners = c.effective_listeners();
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].bind, DEFAULT_BIND);
        assert!(listeners[0].tls.is_none());
        assert!(c.anonymous_allowed());
        assert_eq!(c.limits.max_packet_size, 1024 * 1024);
        // The robustness policies are on by default (README, "Choices where the spec leaves
        // room"), with EMQX's flapping numbers.
        assert!(c.client_id_binding);
        assert!(c.retained_recheck_publisher);
        assert_eq!(c.limits.max_auth_failures_per_user, 10);
        assert_eq!(c.limits.max_connects_per_client_id_per_minute, 15);
        assert_eq!(c.limits.flapping_ban, 300);
        c.validate().unwrap();
    }

    #[test]
    fn a_configured_listener_turns_anonymous_off_unless_allowed() {
        let c: Config = toml::from_str("[[listener]]\nbind = \"0.0.0.0:1883\"\n").unwrap();
        assert!(!c.anonymous_allowed());
        let c: Config =
            toml::from_str("allow_anonymous = true\n[[listener]]\nbind = \"0.0.0.0:1883\"\n")
                .unwrap();
        assert!(c.anonymous_allowed());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(toml::from_str::<Config>("max_conections = 3").is_err());
        let c: Config = toml::from_str("[limits]\nreceive_maximum = 0\n").unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "limits.receive_maximum",
                ..
            })
        ));
    }

    #[test]
    fn worker_slice_is_off_or_within_what_linux_accepts() {
        let slice = |toml: &str| toml::from_str::<Config>(toml).unwrap();
        assert_eq!(
            Config::default().worker_slice(),
            Some(Duration::from_micros(100))
        );
        assert_eq!(slice("worker_slice_us = 0").worker_slice(), None);
        for ok in [
            "worker_slice_us = 0",
            "worker_slice_us = 100",
            "worker_slice_us = 100000",
        ] {
            slice(ok).validate().unwrap();
        }
        for bad in ["worker_slice_us = 99", "worker_slice_us = 100001"] {
            assert!(matches!(
                slice(bad).validate(),
                Err(ConfigError::Invalid {
                    key: "worker_slice_us",
                    ..
                })
            ));
        }
    }

    #[test]
    fn websocket_listener_keys() {
        let c: Config = toml::from_str(
            "[[listener]]\nbind = \"0.0.0.0:8080\"\nwebsocket = true\n\
             [[listener]]\nbind = \"0.0.0.0:8081\"\nwebsocket = true\nwebsocket_path = \"/ws\"\n\
             [[listener]]\nbind = \"0.0.0.0:8443\"\nwebsocket = true\n\
             tls = { cert = \"c.pem\", key = \"k.pem\" }\n\
             [[listener]]\nbind = \"0.0.0.0:1883\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let paths: Vec<_> = c.listeners.iter().map(|l| l.websocket_path()).collect();
        assert_eq!(paths, [Some("/mqtt"), Some("/ws"), Some("/mqtt"), None]);
        assert!(c.listeners[2].tls.is_some());

        for (toml, key) in [
            ("websocket_path = \"/ws\"\n", "listener.websocket_path"),
            (
                "websocket = true\nwebsocket_path = \"ws\"\n",
                "listener.websocket_path",
            ),
            (
                "websocket = true\nwebsocket_path = \"/a b\"\n",
                "listener.websocket_path",
            ),
            (
                "websocket = true\nwebsocket_path = \"/a?b\"\n",
                "listener.websocket_path",
            ),
        ] {
            let c: Config =
                toml::from_str(&format!("[[listener]]\nbind = \"0.0.0.0:8080\"\n{toml}")).unwrap();
            assert!(
                matches!(c.validate(), Err(ConfigError::Invalid { key: k, .. }) if k == key),
                "{toml}"
            );
        }
        assert!(
            toml::from_str::<Config>("[[listener]]\nbind = \"0.0.0.0:8080\"\nwebsocket = 1\n")
                .is_err()
        );
    }

    #[test]
    fn tls_listener_keys() {
        let c: Config = toml::from_str(
            "[[listener]]\nbind = \"0.0.0.0:8883\"\n\
             tls = { cert = \"c.pem\", key = \"k.pem\", client_ca = \"ca.pem\", \
             identity_as_username = \"cn\" }\n",
        )
        .unwrap();
        c.validate().unwrap();
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.identity_as_username, Some(CertIdentity::Cn));
        // A client-certificate listener is a configured listener: anonymous stays off.
        assert!(!c.anonymous_allowed());

        let missing = toml::from_str::<Config>(
            "[[listener]]\nbind = \"0.0.0.0:8883\"\ntls = { key = \"k.pem\" }\n",
        )
        .unwrap_err();
        assert!(missing.to_string().contains("`cert`"), "{missing}");
        let missing = toml::from_str::<Config>("[[listener]]\nbind = \"0.0.0.0:8883\"\ntls = {}\n")
            .unwrap_err();
        assert!(missing.to_string().contains("missing field"), "{missing}");

        let c: Config = toml::from_str(
            "[[listener]]\nbind = \"0.0.0.0:8883\"\n\
             tls = { cert = \"c.pem\", key = \"k.pem\", identity_as_username = \"san\" }\n",
        )
        .unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "listener.tls.identity_as_username",
                ..
            })
        ));
    }

    #[test]
    fn http_table() {
        let c: Config = toml::from_str("").unwrap();
        assert!(c.http.is_none());
        let c: Config = toml::from_str("[http]\nbind = \"127.0.0.1:9883\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.http.unwrap().bind, "127.0.0.1:9883".parse().unwrap());
        assert!(toml::from_str::<Config>("[http]\n").is_err());
        assert!(toml::from_str::<Config>("[http]\nbind = \"127.0.0.1:9883\"\nport = 1\n").is_err());
        // The default MQTT listener's address.
        let c: Config = toml::from_str("[http]\nbind = \"127.0.0.1:1883\"\n").unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "http.bind",
                ..
            })
        ));
        let c: Config =
            toml::from_str("[http]\nbind = \"0.0.0.0:9883\"\nadmin_token = \"s3cret\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.http.unwrap().admin_token.as_deref(), Some("s3cret"));
        let c: Config =
            toml::from_str("[http]\nbind = \"0.0.0.0:9883\"\nadmin_token = \" \"\n").unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "http.admin_token",
                ..
            })
        ));
    }

    #[test]
    fn the_example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/mqttd.example.toml");
        Config::from_file(&path).unwrap();
    }
}
