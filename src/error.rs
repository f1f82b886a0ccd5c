//! Errors that stop the broker from starting.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: crate::tls::TlsError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database actor unavailable: {0}")]
    Mailbox(#[from] actix::MailboxError),
    #[error("cannot start a session thread: {0}")]
    Arbiter(std::io::Error),
}
