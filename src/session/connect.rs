//! CONNECT handling (§3.1): validation in the spec's order, authentication, registration with
//! the Registry, the connect record in the database, then CONNACK.

use actix::prelude::*;
use log::{error, info};

use super::{Client, Phase, Session, SessionError};
use crate::clock::unix_millis;
use crate::messages::{Authenticate, RecordConnect, Register};
use crate::mqtt::{ConnAck, Connect, Packet, Properties, ProtocolVersion, topic};

/// What CONNACK has to tell the client beyond success.
struct Accepted {
    assigned_client_id: bool,
    server_keep_alive: Option<u16>,
}

impl Session {
    pub(super) fn on_connect(
        &mut self,
        connect: Connect,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        if self.phase != Phase::AwaitingConnect {
            return Err(SessionError::SecondConnect);
        }
        let version = connect.protocol;
        self.open_writer(version, connect.properties.maximum_packet_size, ctx);
        self.phase = Phase::Connecting(version);

        let (client_id, assigned_client_id) = self.client_id(&connect)?;
        self.check_will(&connect)?;
        if let Some(method) = &connect.properties.authentication_method {
            return Err(SessionError::BadAuthenticationMethod(method.clone()));
        }
        let (keep_alive, server_keep_alive) = self.keep_alive(&connect)?;
        if connect.username.is_none() && !self.shared.anonymous_allowed {
            return Err(SessionError::AnonymousNotAllowed);
        }

        let client = Client {
            client_id: client_id.clone(),
            protocol: version,
            keep_alive,
            session_expiry: connect.properties.session_expiry_interval.unwrap_or(0),
            recorded: false,
            awaiting_rel: Default::default(),
        };
        self.client = Some(client);

        let db = self.shared.db.clone();
        let registry = self.shared.registry.clone();
        let me = ctx.address().recipient();
        let record = RecordConnect {
            client_id: client_id.clone(),
            connection_id: self.conn_id as i64,
            username: connect.username.clone(),
            address: self.peer.to_string(),
            protocol_version: version as i32,
            at_ms: unix_millis(),
        };
        let conn_id = self.conn_id;
        let username = connect.username;
        let password = connect.password;
        let accepted = Accepted {
            assigned_client_id,
            server_keep_alive,
        };
        // `wait` holds back every other packet and message until this resolves: nothing
        // pipelined after CONNECT is handled before the client is accepted [MQTT-3.1.4-2].
        async move {
            if let Some(username) = username {
                match db.send(Authenticate { username, password }).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return Err(SessionError::BadCredentials),
                    Ok(Err(e)) => return Err(SessionError::ServerUnavailable(e.to_string())),
                    Err(e) => return Err(SessionError::ServerUnavailable(e.to_string())),
                }
            }
            registry
                .send(Register {
                    client_id,
                    conn_id,
                    session: me,
                })
                .await
                .map_err(|e| SessionError::ServerUnavailable(e.to_string()))?;
            match db.send(record).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SessionError::ServerUnavailable(e.to_string())),
                Err(e) => Err(SessionError::ServerUnavailable(e.to_string())),
            }
        }
        .into_actor(self)
        .map(move |result, act, ctx| match result {
            Ok(()) => act.accept(accepted, ctx),
            Err(err) => {
                if let SessionError::ServerUnavailable(why) = &err {
                    error!("{}: cannot accept the connection: {why}", act.peer);
                }
                act.fail(err, ctx)
            }
        })
        .wait(ctx);
        Ok(())
    }

    /// The client identifier to use, and whether the server assigned it (§3.1.3.1).
    fn client_id(&self, connect: &Connect) -> Result<(String, bool), SessionError> {
        let id = &connect.client_id;
        if id.is_empty() {
            return match connect.protocol {
                // [MQTT-3.1.3-6] [MQTT-3.1.3-7]: assign one, and say so in CONNACK.
                ProtocolVersion::V5 => Ok((self.assigned_client_id(), true)),
                // [MQTT-3.1.3-8] (3.1.1): only with Clean Session 1, and the client is not told.
                ProtocolVersion::V311 if connect.clean_start => {
                    Ok((self.assigned_client_id(), false))
                }
                _ => Err(SessionError::ClientIdNotValid),
            };
        }
        let too_long = match connect.protocol {
            // MQTT 3.1 limits identifiers to 23 characters.
            ProtocolVersion::V31 => id.chars().count() > 23,
            _ => id.len() > self.shared.config.limits.max_client_id_len,
        };
        // Control characters are allowed by the spec but only ever cause trouble in logs and
        // tools (§5.4.9), so they are refused, like an over-long identifier.
        if too_long || id.chars().any(char::is_control) {
            return Err(SessionError::ClientIdNotValid);
        }
        Ok((id.clone(), false))
    }

    fn assigned_client_id(&self) -> String {
        // Connection ids are unique across restarts (see broker::start).
        format!("mqttd-{:x}", self.conn_id)
    }

    /// The Will must be publishable as announced in CONNACK (§3.1.2.5).
    fn check_will(&self, connect: &Connect) -> Result<(), SessionError> {
        let Some(will) = &connect.will else {
            return Ok(());
        };
        if topic::validate_topic_name(&will.topic).is_err() {
            return Err(SessionError::TopicNameInvalid(will.topic.clone()));
        }
        if will.retain {
            return Err(SessionError::RetainNotSupported);
        }
        Ok(())
    }

    /// The keep-alive in force and the Server Keep Alive to announce, if any [MQTT-3.2.2-21].
    fn keep_alive(&self, connect: &Connect) -> Result<(u16, Option<u16>), SessionError> {
        let max = self.shared.config.limits.max_keep_alive;
        let asked = connect.keep_alive;
        if max == u16::MAX || (asked != 0 && asked <= max) {
            return Ok((asked, None));
        }
        if connect.protocol.is_v5() {
            Ok((max, Some(max)))
        } else {
            // 3.1.1 has no Server Keep Alive; Mosquitto refuses such clients the same way.
            Err(SessionError::KeepAliveTooLong(asked))
        }
    }

    /// Everything checked and recorded: send CONNACK and start the keep-alive.
    fn accept(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        client.recorded = true;
        let limits = &self.shared.config.limits;
        let properties = if client.protocol.is_v5() {
            Properties {
                receive_maximum: Some(limits.receive_maximum),
                maximum_packet_size: Some(limits.max_packet_size),
                // Capabilities that are not built yet are announced as unavailable.
                retain_available: Some(0),
                wildcard_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                assigned_client_identifier: accepted
                    .assigned_client_id
                    .then(|| client.client_id.clone()),
                server_keep_alive: accepted.server_keep_alive,
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        info!(
            "client {:?} connected from {} ({:?}, keep alive {}s)",
            client.client_id, self.peer, client.protocol, client.keep_alive
        );
        self.phase = Phase::Connected;
        self.send(Packet::ConnAck(ConnAck {
            session_present: false,
            properties,
            ..Default::default()
        }));
        self.arm_keep_alive(ctx);
    }
}
