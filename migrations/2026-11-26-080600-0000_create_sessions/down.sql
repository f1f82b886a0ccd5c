DROP TABLE broker_state;
DROP TABLE inbound_qos2;
DROP TABLE session_messages;
DROP TABLE messages;
DROP TABLE session_subscriptions;
DROP TABLE sessions;
