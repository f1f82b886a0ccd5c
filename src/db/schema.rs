// @generated automatically by Diesel CLI.

diesel::table! {
    acl_rules (id) {
        id -> BigInt,
        subject_kind -> Text,
        subject -> Nullable<Text>,
        action -> Text,
        permission -> Text,
        topic -> Text,
        created_at_ms -> BigInt,
    }
}

diesel::table! {
    broker_state (id) {
        id -> BigInt,
        last_alive_ms -> BigInt,
    }
}

diesel::table! {
    clients (client_id) {
        client_id -> Text,
        connection_id -> BigInt,
        username -> Nullable<Text>,
        address -> Text,
        protocol_version -> Integer,
        connected_at_ms -> BigInt,
        disconnected_at_ms -> Nullable<BigInt>,
        disconnect_reason -> Nullable<Text>,
    }
}

diesel::table! {
    inbound_qos2 (client_id, packet_id) {
        client_id -> Text,
        packet_id -> Integer,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        topic -> Text,
        payload -> Binary,
        qos -> Integer,
        retain -> Bool,
        properties -> Binary,
        expires_at_ms -> Nullable<BigInt>,
        publisher -> Text,
    }
}

diesel::table! {
    retained (topic) {
        topic -> Text,
        payload -> Binary,
        qos -> Integer,
        properties -> Binary,
        expires_at_ms -> Nullable<BigInt>,
        publisher -> Text,
        stored_at_ms -> BigInt,
    }
}

diesel::table! {
    session_messages (client_id, packet_id) {
        client_id -> Text,
        packet_id -> Integer,
        seq -> BigInt,
        message_id -> BigInt,
        qos -> Integer,
        retain -> Bool,
        subscription_ids -> Text,
        released -> Bool,
    }
}

diesel::table! {
    session_subscriptions (client_id, filter) {
        client_id -> Text,
        filter -> Text,
        qos -> Integer,
        no_local -> Bool,
        retain_as_published -> Bool,
        retain_handling -> Integer,
        identifier -> Nullable<BigInt>,
    }
}

diesel::table! {
    sessions (client_id) {
        client_id -> Text,
        expiry_interval -> BigInt,
        expires_at_ms -> Nullable<BigInt>,
        will_topic -> Nullable<Text>,
        will_payload -> Nullable<Binary>,
        will_qos -> Nullable<Integer>,
        will_retain -> Nullable<Bool>,
        will_properties -> Nullable<Binary>,
        will_expiry_interval -> Nullable<BigInt>,
        will_delay -> BigInt,
        will_at_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    users (username) {
        username -> Text,
        password_hash -> Text,
        created_at_ms -> BigInt,
    }
}

diesel::joinable!(inbound_qos2 -> sessions (client_id));
diesel::joinable!(session_messages -> messages (message_id));
diesel::joinable!(session_messages -> sessions (client_id));
diesel::joinable!(session_subscriptions -> sessions (client_id));

diesel::allow_tables_to_appear_in_same_query!(
    acl_rules,
    broker_state,
    clients,
    inbound_qos2,
    messages,
    retained,
    session_messages,
    session_subscriptions,
    sessions,
    users,
);
