//! Publish/subscribe through the broker: routing, QoS flows, flow control and MQTT 5 delivery
//! features (§3.3-§3.11, §4.3-§4.8).
