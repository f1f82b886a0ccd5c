//! One integration-test binary (faster to link than one per file). Every test starts a real
//! broker on an ephemeral port with its own SQLite file and talks MQTT to it over TCP.

mod abuse;
mod acl;
mod bench;
mod browser;
mod cli;
mod common;
mod connect;
mod direct;
mod durability;
mod http;
mod interop;
mod lifecycle;
mod limits;
mod load;
mod malformed;
mod policies;
mod pubsub;
mod retained;
mod sessions;
mod tls;
mod websocket;
mod will;
