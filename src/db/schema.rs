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
    users (username) {
        username -> Text,
        password_hash -> Text,
        created_at_ms -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(acl_rules, clients, retained, users,);
