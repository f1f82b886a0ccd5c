//! CONNECT handling (§3.1): validation in the spec's order, authentication, the client's ACL,
//! registration with the Registry, the connect record in the database, then CONNACK.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use log::{error, info};

use super::{Client, Phase, Session, SessionError};
use crate::acl::{Acl, AclRule};
use crate::clock::unix_millis;
use crate::config::AclDefault;
use crate::messages::{Authenticate, ConnectionInfo, LoadAcl, RecordConnect, Register, Registered};
use crate::mqtt::{
    Ack, ConnAck, Connect, Packet, Properties, PropertyValues, ProtocolVersion, topic,
};
use crate::persist::StoredWill;
use crate::stats::Counters;

/// What CONNACK has to tell the client beyond success.
struct Accepted {
    assigned_client_id: bool,
    server_keep_alive: Option<u16>,
    /// The Session Expiry Interval granted, when it is not the one asked for (§3.2.2.3.2).
    session_expiry_granted: Option<u32>,
    request_response_information: bool,
}

impl Session {
    pub(super) fn on_connect(
        &mut self,
        mut connect: Connect,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        if self.phase != Phase::AwaitingConnect {
            return Err(SessionError::SecondConnect);
        }
        // A verified client certificate is the identity (Mosquitto's use_identity_as_username):
        // it replaces the CONNECT username and stands in for the password.
        let cert_authenticated = self.cert_username.is_some();
        if let Some(name) = &self.cert_username {
            connect.username = Some(name.clone());
        }
        let version = connect.protocol;
        self.open_writer(version, ctx);
        self.phase = Phase::Connecting(version);
        // The connect timeout is met; keep-alive starts with CONNACK.
        self.silence_limit.set(None);
        let max = self.shared.config.limits.max_user_properties;
        let count = super::connect_user_properties(&connect);
        if count > max {
            return Err(SessionError::TooManyUserProperties(count, max));
        }

        let (client_id, assigned_client_id) = self.client_id(&connect)?;
        check_will(&connect)?;
        if let Some(will) = &connect.will
            && self.shared.config.topic_over_limits(&will.topic)
        {
            return Err(SessionError::TopicNameInvalid(will.topic.clone()));
        }
        if let Some(method) = &connect.properties.authentication_method {
            return Err(SessionError::BadAuthenticationMethod(method.clone()));
        }
        let (keep_alive, server_keep_alive) = self.keep_alive(&connect)?;
        if connect.username.is_none() && !self.shared.anonymous_allowed {
            return Err(SessionError::AnonymousNotAllowed);
        }
        // Checked before any password is hashed, so a brute force costs the broker little.
        if self.shared.sources.is_banned(self.peer.ip()) {
            Counters::add(&self.shared.counters.logins_banned);
            return Err(SessionError::Banned);
        }
        // A certificate identity checks no password, so only password logins are banned.
        let password_login = connect.username.clone().filter(|_| !cert_authenticated);
        if password_login
            .as_deref()
            .is_some_and(|name| self.shared.user_failures.is_banned(name))
        {
            Counters::add(&self.shared.counters.logins_banned);
            return Err(SessionError::UserBanned);
        }
        if self.shared.flapping.is_banned(&client_id) {
            return Err(SessionError::Flapping);
        }
        // Server-assigned ids are new each time: they cannot flap.
        let count_connect = !connect.client_id.is_empty();

        let client_id: Arc<str> = client_id.into();
        let p = &connect.properties;
        let max_expiry = self.shared.config.limits.max_session_expiry;
        // 3.1.1 has no Session Expiry: Clean Session 0 keeps the session as long as allowed.
        let asked = match version {
            ProtocolVersion::V5 => p.session_expiry_interval.unwrap_or(0),
            _ if connect.clean_start => 0,
            _ => u32::MAX,
        };
        let session_expiry = asked.min(max_expiry);
        let accepted = Accepted {
            assigned_client_id,
            server_keep_alive,
            session_expiry_granted: (session_expiry != asked).then_some(session_expiry),
            request_response_information: p.request_response_information == Some(1),
        };
        self.client = Some(Client {
            client_id: client_id.clone(),
            username: connect.username.clone(),
            protocol: version,
            keep_alive,
            session_expiry,
            accepted: false,
            recorded: false,
            acl: Acl::allow_all(),
            will: connect.will.map(Box::new),
            awaiting_rel: Default::default(),
            inflight: Default::default(),
            next_packet_id: 1,
            lent: 0,
            receive_maximum: p
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(self.shared.config.limits.max_inflight_messages),
            maximum_packet_size: p.maximum_packet_size,
            topic_alias_maximum: if version.is_v5() {
                p.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            aliases: None,
        });

        // A stored session may come back with subscriptions; a clean one has none yet.
        let deliveries = if connect.clean_start {
            None
        } else {
            self.open_queue()
        };
        let db = self.shared.db.clone();
        let registry = self.shared.registry.clone();
        let will = self
            .client
            .as_ref()
            .and_then(|c| c.will.as_ref())
            .filter(|_| session_expiry > 0)
            .map(|w| StoredWill::new(w, &client_id));
        let record = RecordConnect {
            client_id: client_id.to_string(),
            connection_id: self.conn_id as i64,
            username: connect.username.clone(),
            address: self.peer.to_string(),
            protocol_version: version as i32,
            at_ms: unix_millis(),
        };
        let mut register = Register {
            client_id: client_id.clone(),
            conn_id: self.conn_id,
            session: ctx.address(),
            deliveries,
            abort: self.abort.clone(),
            clean_start: connect.clean_start,
            expiry_interval: session_expiry,
            will,
            info: ConnectionInfo {
                username: connect.username.clone(),
                address: self.peer,
                protocol_version: version as u8,
                keep_alive,
                connected_at_ms: unix_millis(),
                inflight: self.inflight_gauge.clone(),
            },
            record,
        };
        let acl_default = self.shared.config.acl_default == AclDefault::Allow;
        let acl_username = connect.username.clone();
        let acl_client = client_id.clone();
        let flapping_id = client_id.clone();
        let username = connect.username;
        let password = connect.password;
        let unavailable =
            |e: &dyn std::fmt::Display| SessionError::ServerUnavailable(e.to_string());
        // `wait` holds back every other packet and message until this resolves: nothing
        // pipelined after CONNECT is handled before the client is accepted [MQTT-3.1.4-2].
        async move {
            if let Some(username) = username.filter(|_| !cert_authenticated) {
                match db.send(Authenticate { username, password }).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return Err(SessionError::BadCredentials),
                    Ok(Err(e)) => return Err(unavailable(&e)),
                    Err(e) => return Err(unavailable(&e)),
                }
            }
            let loaded = |rules: Result<Result<_, _>, MailboxError>| match rules {
                Ok(Ok(rules)) => Ok(rules),
                Ok(Err(e)) => Err(unavailable(&e)),
                Err(e) => Err(unavailable(&e)),
            };
            if register.will.is_some() {
                let load_acl = LoadAcl {
                    username: acl_username.clone(),
                    client_id: acl_client.to_string(),
                };
                let rules: Vec<AclRule> = loaded(db.send(load_acl).await)?;
                // A Will stored for after a crash must be one the client may publish.
                let acl = Acl::new(rules, acl_username.as_deref(), &acl_client, acl_default);
                register.will = register
                    .will
                    .filter(|w| super::may_publish(&acl, &w.message.topic));
            }
            let mut registered = registry.send(register).await.map_err(|e| unavailable(&e))?;
            if registered.bound_to_another_user {
                return Err(SessionError::ClientIdBound);
            }
            // Session Present and the session's state are promised only once committed.
            if registered.storage_failed {
                return Err(SessionError::StorageFailed);
            }
            let Some(recorded) = registered.recorded.take() else {
                return Err(unavailable(&"the broker is shutting down"));
            };
            // The rules come with the committed record: one database round trip. A failure
            // ends the connection; `stopped` unregisters it.
            let rules = loaded(recorded)?;
            Ok((rules, registered))
        }
        .into_actor(self)
        .map(move |result, act, ctx| match result {
            Ok((rules, registered)) => {
                let limits = &act.shared.config.limits;
                if count_connect {
                    // Only accepted connections count: nobody can get an id banned for
                    // flapping without being allowed to connect with it.
                    let ban = std::time::Duration::from_secs(limits.flapping_ban);
                    let max = limits.max_connects_per_client_id_per_minute;
                    act.shared.flapping.strike(&flapping_id, max, ban);
                }
                act.accept(rules, registered, accepted, ctx)
            }
            Err(err) => {
                match &err {
                    SessionError::ServerUnavailable(why) => {
                        error!("{}: cannot accept the connection: {why}", act.peer);
                    }
                    SessionError::BadCredentials => {
                        Counters::add(&act.shared.counters.auth_failures);
                        let limits = &act.shared.config.limits;
                        let ban = std::time::Duration::from_secs(limits.auth_ban);
                        let max = limits.max_auth_failures_per_ip;
                        act.shared.sources.auth_failed(act.peer.ip(), max, ban);
                        if let Some(name) = &password_login {
                            let max = limits.max_auth_failures_per_user;
                            act.shared.user_failures.strike(name, max, ban);
                        }
                    }
                    _ => {}
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

    /// Everything checked and recorded: send CONNACK, start the keep-alive and deliveries.
    fn accept(
        &mut self,
        rules: Vec<AclRule>,
        registered: Registered,
        accepted: Accepted,
        ctx: &mut Context<Self>,
    ) {
        let config = &self.shared.config;
        let Some(client) = self.client.as_mut() else {
            return;
        };
        client.accepted = true;
        client.recorded = true;
        // [MQTT-3.1.2-22]: 1.5 x the keep-alive in force, counted from the last packet.
        let silence_limit = (client.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(client.keep_alive) * 1500));
        client.acl = Acl::new(
            rules,
            client.username.as_deref(),
            &client.client_id,
            config.acl_default == AclDefault::Allow,
        );
        if let Some(bypass) = &self.bypass {
            bypass.set_allowed(client.acl.allows_everything());
        }
        let limits = &config.limits;
        let properties = if client.protocol.is_v5() {
            Properties::from(PropertyValues {
                receive_maximum: Some(limits.receive_maximum),
                maximum_packet_size: Some(limits.max_packet_size),
                topic_alias_maximum: Some(limits.topic_alias_maximum),
                assigned_client_identifier: accepted
                    .assigned_client_id
                    .then(|| client.client_id.to_string()),
                server_keep_alive: accepted.server_keep_alive,
                session_expiry_interval: accepted.session_expiry_granted,
                response_information: config
                    .response_information
                    .clone()
                    .filter(|_| accepted.request_response_information),
                ..PropertyValues::default()
            })
        } else {
            Properties::default()
        };
        info!(
            "client {:?} connected from {} ({:?}, keep alive {}s)",
            client.client_id, self.peer, client.protocol, client.keep_alive
        );
        self.phase = Phase::Connected;
        // Only a refusal logs it.
        self.connect_id = None;
        // [MQTT-3.2.2-2] [MQTT-3.2.2-3]: Session Present only when a stored session resumed.
        self.send(Packet::ConnAck(ConnAck {
            session_present: registered.session_present,
            properties,
            ..Default::default()
        }));
        self.resume(registered);
        self.silence_limit.set(silence_limit);
        self.release(ctx);
    }
}

impl Session {
    /// Takes up a resumed session where its last connection left it: PUBREL for what the
    /// client had PUBREC'd, then every unacknowledged PUBLISH again with its original packet
    /// id, before anything new [MQTT-4.4.0-1] [MQTT-4.3.3-6].
    fn resume(&mut self, registered: Registered) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        client.awaiting_rel.extend(registered.inbound_qos2);
        for &id in &registered.release {
            client.inflight.insert(id, super::Outbound::Released);
        }
        for packet_id in registered.release {
            self.send(Packet::PubRel(Ack {
                packet_id,
                ..Ack::default()
            }));
        }
        self.pending.extend(registered.resend);
    }
}

/// The Will must be publishable: a valid topic name (§3.1.3.3) and, if set, a valid Response
/// Topic [MQTT-3.3.2-14].
fn check_will(connect: &Connect) -> Result<(), SessionError> {
    let Some(will) = &connect.will else {
        return Ok(());
    };
    if topic::validate_topic_name(&will.topic).is_err() {
        return Err(SessionError::TopicNameInvalid(will.topic.clone()));
    }
    if let Some(response) = &will.properties.response_topic
        && topic::validate_topic_name(response).is_err()
    {
        return Err(SessionError::InvalidResponseTopic(response.clone()));
    }
    Ok(())
}
