//! The ConnectionLog actor: group commit of the `clients` table (when each connection started
//! and ended).
//!
//! Every CONNECT waits for its row to be committed before CONNACK. One autocommit statement per
//! record appended pages to the write-ahead log for every connection, and was about a third of
//! the broker's CPU time in a burst of connections. Here the records that arrive while a batch
//! is being committed wait for the next one, which commits them all in one transaction.
//!
//! Records are applied in the order they arrive, and each sender is answered only once its
//! record is committed. On take-over the old connection's end is awaited (through `Close`)
//! before the new connection registers, so it is always committed before the new start.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::queries::Applied;
use super::{DbActor, DbError};
use crate::acl::AclRule;
use crate::messages::{
    CloseOpenConnections, ConnectionEvent, RecordConnect, RecordConnections, RecordDisconnect,
};

/// Most records in one transaction, so that one batch does not hold the write lock for long.
const MAX_BATCH: usize = 1024;

type Done = oneshot::Sender<Result<Applied, Arc<DbError>>>;

pub struct ConnectionLog {
    db: Addr<DbActor>,
    /// Records waiting for the next batch, each with whoever waits for its commit.
    queued: Vec<(ConnectionEvent, Done)>,
    /// A batch is being committed.
    committing: bool,
}

impl ConnectionLog {
    pub fn new(db: Addr<DbActor>) -> ConnectionLog {
        ConnectionLog {
            db,
            queued: Vec::new(),
            committing: false,
        }
    }

    /// Queues `event` and resolves to what it did once it is committed.
    fn record(
        &mut self,
        event: ConnectionEvent,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<Applied, DbError>> + 'static {
        let (done, committed) = oneshot::channel();
        self.queued.push((event, done));
        self.commit(ctx);
        async move {
            match committed.await {
                Ok(result) => result.map_err(DbError::Batch),
                Err(_) => Err(DbError::Unavailable("the connection log stopped".into())),
            }
        }
    }

    /// Sends the queued records as one batch, unless one is being committed: its completion
    /// sends the next.
    fn commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.queued.is_empty() {
            return;
        }
        self.committing = true;
        let count = self.queued.len().min(MAX_BATCH);
        let (events, waiting): (Vec<_>, Vec<_>) = self.queued.drain(..count).unzip();
        self.db
            .send(RecordConnections { events })
            .into_actor(self)
            .map(|result, act, ctx| {
                act.committing = false;
                let result = match result {
                    Ok(result) => result.map_err(Arc::new),
                    Err(e) => Err(Arc::new(DbError::Unavailable(e.to_string()))),
                };
                match result {
                    Ok(applied) => {
                        for (done, applied) in waiting.into_iter().zip(applied) {
                            // A sender that went away no longer needs the answer.
                            let _ = done.send(Ok(applied));
                        }
                    }
                    Err(e) => {
                        for done in waiting {
                            let _ = done.send(Err(e.clone()));
                        }
                    }
                }
                act.commit(ctx);
            })
            .spawn(ctx);
    }
}

impl Actor for ConnectionLog {
    type Context = Context<Self>;
}

impl Handler<RecordConnect> for ConnectionLog {
    type Result = ResponseFuture<Result<Vec<AclRule>, DbError>>;

    fn handle(&mut self, msg: RecordConnect, ctx: &mut Context<Self>) -> Self::Result {
        let committed = self.record(ConnectionEvent::Connect(msg), ctx);
        Box::pin(async move { committed.await.map(|applied| applied.rules) })
    }
}

impl Handler<RecordDisconnect> for ConnectionLog {
    type Result = ResponseFuture<Result<(), DbError>>;

    fn handle(&mut self, msg: RecordDisconnect, ctx: &mut Context<Self>) -> Self::Result {
        let committed = self.record(ConnectionEvent::Disconnect(msg), ctx);
        Box::pin(async move { committed.await.map(drop) })
    }
}

impl Handler<CloseOpenConnections> for ConnectionLog {
    type Result = ResponseFuture<Result<usize, DbError>>;

    fn handle(&mut self, msg: CloseOpenConnections, ctx: &mut Context<Self>) -> Self::Result {
        let committed = self.record(ConnectionEvent::CloseOpen(msg), ctx);
        Box::pin(async move { committed.await.map(|applied| applied.rows) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::AclAction::Publish;
    use crate::acl::AclPermission::Allow;
    use crate::acl::AclSubject;
    use crate::db::{Durability, open_connection, queries, start};
    use diesel::connection::SimpleConnection;
    use futures_util::FutureExt;

    fn connect(client_id: &str, connection_id: i64) -> RecordConnect {
        RecordConnect {
            client_id: client_id.into(),
            connection_id,
            username: None,
            address: "127.0.0.1:1".into(),
            protocol_version: 5,
            at_ms: connection_id,
        }
    }

    fn disconnect(client_id: &str, connection_id: i64) -> RecordDisconnect {
        RecordDisconnect {
            client_id: client_id.into(),
            connection_id,
            at_ms: connection_id + 1,
            reason: "client disconnect".into(),
        }
    }

    #[actix::test]
    async fn records_sent_together_are_committed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db").display().to_string();
        let log = ConnectionLog::new(start(&path, 2, Durability::default()).unwrap()).start();
        // Sent without waiting, so most of them share a batch.
        let mut pending = Vec::new();
        for i in 0..100 {
            let id = format!("c{i}");
            pending.push(
                log.send(connect(&id, 1))
                    .map(|r| r.unwrap().map(drop))
                    .boxed_local(),
            );
            pending.push(
                log.send(disconnect(&id, 1))
                    .map(|r| r.unwrap())
                    .boxed_local(),
            );
            pending.push(
                log.send(connect(&id, 2))
                    .map(|r| r.unwrap().map(drop))
                    .boxed_local(),
            );
        }
        for done in futures_util::future::join_all(pending).await {
            done.unwrap();
        }
        let conn = &mut open_connection(&path, Durability::default()).unwrap();
        for i in 0..100 {
            let row = queries::get_client(conn, &format!("c{i}"))
                .unwrap()
                .unwrap();
            assert_eq!((row.connection_id, row.disconnected_at_ms), (2, None));
        }
    }

    #[actix::test]
    async fn a_connect_record_answers_with_the_rules_of_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db").display().to_string();
        let log = ConnectionLog::new(start(&path, 1, Durability::default()).unwrap()).start();
        let conn = &mut open_connection(&path, Durability::default()).unwrap();
        let mut rule = |subject: AclSubject, topic: &str| {
            queries::add_rule(conn, &subject, Publish, Allow, topic, 1).unwrap();
        };
        rule(AclSubject::Client("a".into()), "for/a");
        rule(AclSubject::Client("b".into()), "for/b");
        rule(AclSubject::All, "for/all");
        let rules = log.send(connect("a", 1)).await.unwrap().unwrap();
        let topics: Vec<&str> = rules.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(topics, ["for/a", "for/all"]);
    }

    #[actix::test]
    async fn a_failed_batch_fails_every_record_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db").display().to_string();
        let log = ConnectionLog::new(start(&path, 1, Durability::default()).unwrap()).start();
        open_connection(&path, Durability::default())
            .unwrap()
            .batch_execute("DROP TABLE clients")
            .unwrap();
        let results =
            futures_util::future::join(log.send(connect("a", 1)), log.send(disconnect("b", 1)))
                .await;
        let errors = [
            results.0.unwrap().unwrap_err(),
            results.1.unwrap().unwrap_err(),
        ];
        for err in errors {
            assert!(err.to_string().contains("no such table: clients"), "{err}");
        }
    }
}
