//! `session`: a client's packet sequence, well-formed or not, through the server side of a
//! connection the way `Session` handles it, without actix, sockets or SQL.
//!
//! The input is a list of segments: packets built from fuzzer-chosen fields and encoded with a
//! client codec, corrupted packets (one byte overwritten, or cut short), and raw bytes. The byte
//! stream is cut into fuzzer-chosen reads (like TCP segments) and fed to `MqttCodec::server`.
//!
//! Oracle: up to the first segment that does not decode on its own, the server codec must
//! produce exactly the packets the client encoded, whatever the read boundaries (a non-CONNECT
//! first packet must be refused). Every packet decoded is then handled as `Session` handles it:
//! PUBLISH topic and Topic Alias checks, the QoS 2 awaiting-PUBREL set under Receive Maximum,
//! SUBSCRIBE/UNSUBSCRIBE filter validation and a `SubscriptionTree` that every accepted PUBLISH
//! is routed through; each Route must come from a subscription whose filter matches the topic.
//! After the first decode error or protocol error, nothing more is read (the session closes).
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqttd::mqtt::topic::{matches, split_shared, validate_topic_filter, validate_topic_name};
use mqttd::mqtt::{
    Ack, Connect, Disconnect, MqttCodec, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe, Will,
};
use mqttd::registry::subscriptions::{Subscription, SubscriptionTree};
use tokio_util::codec::{Decoder, Encoder};

/// The broker's defaults for the limits the session enforces.
const RECEIVE_MAXIMUM: usize = 8;
const TOPIC_ALIAS_MAXIMUM: u16 = 4;

const TOKENS: [&str; 12] = [
    "a", "b", "/", "/", "+", "#", "$", "$SYS", "$share/", "g", "", "\0",
];

#[derive(Arbitrary, Debug)]
struct Spelled(Vec<u8>);

impl Spelled {
    fn spell(&self) -> String {
        self.0
            .iter()
            .map(|&b| TOKENS[usize::from(b) % TOKENS.len()])
            .collect()
    }
}

#[derive(Arbitrary, Debug)]
enum Build {
    Connect {
        v5: bool,
        client_id: String,
        keep_alive: u16,
        will: Option<(Spelled, u8, bool, Vec<u8>)>,
        username: Option<String>,
        password: Option<Vec<u8>>,
    },
    Publish {
        topic: Spelled,
        qos: u8,
        id: u16,
        retain: bool,
        alias: Option<u16>,
        payload: Vec<u8>,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        id: u16,
        filters: Vec<(Spelled, u8, bool)>,
        identifier: Option<u32>,
    },
    Unsubscribe {
        id: u16,
        filters: Vec<Spelled>,
    },
    PingReq,
    Disconnect {
        reason: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Segment {
    Packet(Build),
    /// The packet with one byte overwritten.
    Corrupt(Build, u16, u8),
    /// The packet cut short.
    Truncated(Build, u16),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    segments: Vec<Segment>,
    /// Sizes of the reads the stream is cut into (each 1..=256), used in turn.
    reads: Vec<u8>,
    small_limit: bool,
}

fn build(b: &Build, version: ProtocolVersion) -> Packet {
    let nonzero = |id: u16| id.max(1);
    match b {
        Build::Connect {
            v5,
            client_id,
            keep_alive,
            will,
            username,
            password,
        } => Packet::Connect(Box::new(Connect {
            protocol: if *v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            },
            clean_start: true,
            keep_alive: *keep_alive,
            properties: Properties::default(),
            client_id: client_id.clone(),
            will: will.as_ref().map(|(topic, qos, retain, payload)| Will {
                qos: QoS::from_u8(qos % 3).expect("0..=2"),
                retain: *retain,
                properties: Properties::default(),
                topic: topic.spell(),
                payload: Bytes::from(payload.clone()),
            }),
            username: username.clone(),
            password: password.clone().map(Bytes::from),
        })),
        Build::Publish {
            topic,
            qos,
            id,
            retain,
            alias,
            payload,
        } => {
            let qos = QoS::from_u8(qos % 3).expect("0..=2");
            let mut properties = Properties::default();
            if version.is_v5() {
                properties.topic_alias = alias.map(nonzero);
            }
            Packet::Publish(Box::new(Publish {
                dup: false,
                qos,
                retain: *retain,
                topic: topic.spell(),
                packet_id: (qos != QoS::AtMostOnce).then_some(nonzero(*id)),
                properties,
                payload: Bytes::from(payload.clone()),
            }))
        }
        Build::PubAck(id) => Packet::PubAck(ack(*id)),
        Build::PubRec(id) => Packet::PubRec(ack(*id)),
        Build::PubRel(id) => Packet::PubRel(ack(*id)),
        Build::PubComp(id) => Packet::PubComp(ack(*id)),
        Build::Subscribe {
            id,
            filters,
            identifier,
        } => {
            let mut properties = Properties::default();
            if version.is_v5()
                && let Some(sid) = identifier
            {
                properties.subscription_identifiers = vec![sid % 268_435_455 + 1];
            }
            Packet::Subscribe(Subscribe {
                packet_id: nonzero(*id),
                properties,
                filters: filters
                    .iter()
                    .map(|(f, qos, no_local)| {
                        let options = SubscriptionOptions {
                            qos: QoS::from_u8(qos % 3).expect("0..=2"),
                            no_local: *no_local && version.is_v5(),
                            ..SubscriptionOptions::default()
                        };
                        (f.spell(), options)
                    })
                    .collect(),
            })
        }
        Build::Unsubscribe { id, filters } => Packet::Unsubscribe(Unsubscribe {
            packet_id: nonzero(*id),
            properties: Properties::default(),
            filters: filters.iter().map(Spelled::spell).collect(),
        }),
        Build::PingReq => Packet::PingReq,
        Build::Disconnect { reason } => Packet::Disconnect(Disconnect {
            reason: if version.is_v5() {
                ReasonCode::from_u8(*reason).unwrap_or_default()
            } else {
                ReasonCode::Success
            },
            properties: Properties::default(),
        }),
    }
}

fn ack(id: u16) -> Ack {
    Ack {
        packet_id: id,
        ..Ack::default()
    }
}

/// What the server-side session keeps between packets.
#[derive(Default)]
struct State {
    connected: Option<ProtocolVersion>,
    aliases_in: HashMap<u16, Arc<str>>,
    awaiting_rel: HashSet<u16>,
    /// Our own subscriptions, as the Registry would have them.
    filters: HashSet<String>,
}

const ME: &str = "me";

/// Handles one decoded packet; `Err` ends the connection.
fn handle(
    state: &mut State,
    tree: &mut SubscriptionTree,
    subscribers: &[(Arc<str>, String)],
    packet: Packet,
) -> Result<(), ()> {
    let Some(version) = state.connected else {
        // Before CONNECT the server codec yields nothing else.
        let Packet::Connect(c) = packet else {
            panic!("server codec let {packet:?} through before CONNECT")
        };
        if let Some(will) = &c.will {
            validate_topic_name(&will.topic).map_err(|_| ())?;
        }
        state.connected = Some(c.protocol);
        return Ok(());
    };
    match packet {
        Packet::Connect(_) => Err(()),
        Packet::Publish(publish) => {
            let p = &publish.properties;
            if !p.subscription_identifiers.is_empty() {
                return Err(());
            }
            let topic: Arc<str> = match (p.topic_alias, publish.topic.is_empty()) {
                (Some(alias), _) if alias > TOPIC_ALIAS_MAXIMUM => return Err(()),
                (Some(alias), true) => state.aliases_in.get(&alias).cloned().ok_or(())?,
                (alias, false) => {
                    validate_topic_name(&publish.topic).map_err(|_| ())?;
                    let topic: Arc<str> = publish.topic.as_str().into();
                    if let Some(alias) = alias {
                        state.aliases_in.insert(alias, topic.clone());
                    }
                    topic
                }
                (None, true) => return Err(()),
            };
            assert!(state.aliases_in.len() <= usize::from(TOPIC_ALIAS_MAXIMUM));
            assert!(version.is_v5() || state.aliases_in.is_empty());
            if publish.qos == QoS::ExactlyOnce {
                let id = publish.packet_id.expect("QoS 2 has a packet id");
                assert_ne!(id, 0, "decoder let packet id 0 through");
                if !state.awaiting_rel.contains(&id) {
                    if state.awaiting_rel.len() >= RECEIVE_MAXIMUM {
                        return Err(());
                    }
                    state.awaiting_rel.insert(id);
                }
            }
            let mut routes = Vec::new();
            tree.route(&topic, ME, &mut routes);
            for route in routes {
                let ok = subscribers
                    .iter()
                    .map(|(c, f)| (c.clone(), f.as_str()))
                    .chain(state.filters.iter().map(|f| (Arc::from(ME), f.as_str())))
                    .any(|(c, f)| {
                        c == route.client
                            && matches(split_shared(f).map_or(f, |(_, inner)| inner), &topic)
                    });
                assert!(ok, "route {route:?} for {topic:?} has no matching filter");
            }
            Ok(())
        }
        Packet::PubRel(ack) => {
            state.awaiting_rel.remove(&ack.packet_id);
            Ok(())
        }
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) | Packet::PingReq => Ok(()),
        Packet::Subscribe(subscribe) => {
            assert!(!subscribe.filters.is_empty(), "SUBSCRIBE without filters");
            let identifier = subscribe
                .properties
                .subscription_identifiers
                .first()
                .copied();
            for (filter, options) in subscribe.filters {
                if split_shared(&filter).is_some() && options.no_local {
                    return Err(());
                }
                if validate_topic_filter(&filter).is_ok() {
                    tree.subscribe(
                        &Arc::from(ME),
                        &filter,
                        Subscription {
                            options,
                            identifier,
                        },
                    );
                    state.filters.insert(filter);
                }
            }
            Ok(())
        }
        Packet::Unsubscribe(unsubscribe) => {
            assert!(
                !unsubscribe.filters.is_empty(),
                "UNSUBSCRIBE without filters"
            );
            for filter in unsubscribe.filters {
                let had = state.filters.remove(&filter);
                assert_eq!(tree.unsubscribe(ME, &filter), had, "{filter:?}");
            }
            Ok(())
        }
        Packet::Disconnect(_) => Err(()),
        Packet::Auth(_) => Err(()),
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => Err(()),
    }
}

fuzz_target!(|input: Input| {
    let max = if input.small_limit { 64 } else { 1 << 16 };

    // The client's side: encode every segment; work out what the server must decode.
    let mut client_version: Option<ProtocolVersion> = None;
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    // The server's codec state as the oracle follows it; `None` once it cannot predict.
    let mut oracle: Option<MqttCodec> = Some(MqttCodec::server(max));
    let mut expect_error = false;
    for segment in input.segments.iter().take(32) {
        let version = client_version.unwrap_or(ProtocolVersion::V5);
        let (b, well_formed) = match segment {
            Segment::Packet(b) | Segment::Corrupt(b, ..) | Segment::Truncated(b, _) => {
                (Some(b), matches!(segment, Segment::Packet(_)))
            }
            Segment::Raw(_) => (None, false),
        };
        let mut bytes = BytesMut::new();
        if let Some(b) = b {
            let packet = build(b, version);
            if let Packet::Connect(c) = &packet {
                client_version.get_or_insert(c.protocol);
            }
            if MqttCodec::new(version, u32::MAX)
                .encode(packet.clone(), &mut bytes)
                .is_err()
            {
                continue;
            }
            match segment {
                Segment::Corrupt(_, at, value) if !bytes.is_empty() => {
                    let i = usize::from(*at) % bytes.len();
                    bytes[i] = *value;
                }
                Segment::Truncated(_, at) => {
                    bytes.truncate(usize::from(*at) % (bytes.len() + 1));
                }
                _ => {}
            }
            // Does it decode on its own, in the state the server's codec is in?
            if well_formed && let Some(codec) = oracle.as_mut() {
                let mut alone = bytes.clone();
                match codec.decode(&mut alone) {
                    Ok(Some(decoded)) => {
                        assert_eq!(decoded, packet, "encode/decode asymmetry");
                        assert!(alone.is_empty(), "packet decoded from a prefix");
                        expected.push(packet);
                    }
                    Ok(None) => panic!("a whole packet is incomplete: {packet:?}"),
                    Err(_) => {
                        expect_error = true;
                        oracle = None;
                    }
                }
            } else {
                oracle = None;
            }
        } else if let Segment::Raw(raw) = segment {
            bytes.extend_from_slice(raw);
            if !raw.is_empty() {
                oracle = None;
            }
        }
        stream.extend_from_slice(&bytes);
    }
    let predicted_all = oracle.is_some();

    // The server's side: read the stream in chunks, decode, handle.
    let mut codec = MqttCodec::server(max);
    let mut tree = SubscriptionTree::default();
    let subscribers: Vec<(Arc<str>, String)> = ["#", "a/+", "$share/g/a/#", "+/b", "$SYS/#"]
        .iter()
        .enumerate()
        .map(|(i, f)| (Arc::from(format!("s{i}")), (*f).to_owned()))
        .collect();
    for (client, filter) in &subscribers {
        tree.subscribe(client, filter, Subscription::default());
    }
    let mut state = State::default();
    let mut decoded = Vec::new();
    let mut src = BytesMut::new();
    let mut fed = 0;
    let mut reads = input.reads.iter().cycle();
    let mut error = false;
    let mut closed = false;
    'read: while fed < stream.len() {
        let n = reads.next().map_or(stream.len(), |&r| usize::from(r) + 1);
        let end = (fed + n).min(stream.len());
        src.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match codec.decode(&mut src) {
                Ok(Some(packet)) => {
                    decoded.push(packet.clone());
                    if !closed && handle(&mut state, &mut tree, &subscribers, packet).is_err() {
                        // The session stops handling; keep decoding to check the oracle.
                        closed = true;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    error = true;
                    break 'read;
                }
            }
        }
    }

    // Each expected packet decodes on its own in the codec state that precedes it, so the
    // stream must yield all of them first, whatever the read boundaries.
    assert!(
        decoded.len() >= expected.len(),
        "{} packets decoded, {} expected",
        decoded.len(),
        expected.len()
    );
    assert_eq!(
        decoded[..expected.len()],
        expected[..],
        "stream decodes differently"
    );
    if predicted_all {
        assert_eq!(decoded, expected);
        assert!(!error, "a well-formed stream failed to decode");
        assert!(src.is_empty());
    }
    if expect_error && decoded.len() == expected.len() {
        // Everything before the bad packet came through; the bad packet itself must fail.
        assert!(
            error,
            "a packet refused on its own was accepted in the stream"
        );
    }
});
