//! MQTT over WebSocket listeners (`websocket = true`; wss with `tls` too): the HTTP upgrade,
//! then the WebSocket as the byte stream a Session reads and writes (§6 of MQTT 5, RFC 6455).
//!
//! tokio-tungstenite does the handshake and the framing; tokio-util's `StreamReader` and
//! `SinkWriter` turn its message stream and sink into `AsyncRead`/`AsyncWrite`, so the
//! Session, its codec and its timers are the same as on TCP. Each write becomes one binary
//! message; reads see one continuous byte stream, so an MQTT packet may span frames and one
//! frame may carry several packets [MQTT-6.0.0-2].
//!
//! The upgrade runs on the session's Arbiter (see `listener`), after TLS on a wss listener,
//! and both together must finish within `limits.connect_timeout`.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, future};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use crate::session::{BoxedRead, BoxedWrite};

/// The HTTP path of a WebSocket listener unless `websocket_path` says otherwise (EMQX's and
/// most clients' default).
pub const DEFAULT_PATH: &str = "/mqtt";

/// The subprotocols accepted, in order of preference: "mqtt" is the spec's name for 3.1.1 and
/// 5 [MQTT-6.0.0-3] [MQTT-6.0.0-4]; "mqttv3.1" is what MQTT 3.1 clients offer (Mosquitto
/// accepts both).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Allowance over `limits.max_packet_size` for one WebSocket message or frame: a client may
/// put a small packet (a PUBACK, a PINGREQ) in the same message as a full-size one.
const MESSAGE_SLACK: usize = 4096;

/// Initial read buffer of a connection. tungstenite allocates it at once (128 KiB by default,
/// too much per idle client); it grows, up to the message limit, for larger frames.
const READ_BUFFER: usize = 4096;

/// Why a connection on a WebSocket listener ended before it became a session.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("WebSocket upgrade not completed within {0:?}")]
    TimedOut(Duration),
    #[error("WebSocket upgrade refused with HTTP {status}: {why}")]
    Refused { status: u16, why: &'static str },
    #[error("WebSocket upgrade failed: {0}")]
    Handshake(#[from] tungstenite::Error),
}

/// One WebSocket listener's settings.
#[derive(Debug)]
pub struct WebSocketAcceptor {
    path: String,
    config: WebSocketConfig,
}

impl WebSocketAcceptor {
    /// Upgrades requests for `path`. Frames and messages over `max_packet_size` plus a little
    /// end the connection before they are buffered.
    pub fn new(path: &str, max_packet_size: u32) -> WebSocketAcceptor {
        let max = usize::try_from(max_packet_size)
            .unwrap_or(usize::MAX)
            .saturating_add(MESSAGE_SLACK);
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        WebSocketAcceptor {
            path: path.to_owned(),
            config,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Reads the HTTP upgrade request within `timeout` and answers it: 101 with the chosen
    /// subprotocol, 404 for another path, 400 without an MQTT subprotocol. tungstenite refuses
    /// a request head over 64 KiB or with more than 124 headers. Returns the two halves of
    /// the MQTT byte stream.
    pub async fn accept<S>(
        &self,
        stream: S,
        timeout: Duration,
    ) -> Result<(BoxedRead, BoxedWrite), UpgradeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let mut refused = "";
        // The refusal type is tungstenite's callback signature, not ours to box.
        #[allow(clippy::result_large_err)]
        let check = |request: &Request, response: Response| {
            self.check(request, response).map_err(|(status, why)| {
                refused = why;
                let body = format!("{why}\n");
                let mut refusal = ErrorResponse::new(None);
                *refusal.status_mut() = status;
                let headers = refusal.headers_mut();
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                *refusal.body_mut() = Some(body);
                refusal
            })
        };
        let upgrade =
            tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(self.config));
        let ws = match tokio::time::timeout(timeout, upgrade).await {
            Err(_) => return Err(UpgradeError::TimedOut(timeout)),
            Ok(Err(tungstenite::Error::Http(response))) => {
                return Err(UpgradeError::Refused {
                    status: response.status().as_u16(),
                    why: refused,
                });
            }
            Ok(result) => result?,
        };
        let (sink, stream) = ws.split();
        // Binary messages are the byte stream; any other data frame ends it [MQTT-6.0.0-1].
        // Pings are answered by tungstenite itself; a Close ends the stream (EOF) after
        // tungstenite has answered it.
        let reader = StreamReader::new(stream.filter_map(|message| {
            future::ready(match message {
                Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
                Ok(Message::Text(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text frame on an MQTT WebSocket [MQTT-6.0.0-1]",
                ))),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                    None
                }
                Err(e) => Some(Err(io_error(e))),
            })
        }));
        // Each write of the session is sent as one binary message. Closing the writer sends
        // a Close frame.
        let writer = SinkWriter::new(CopyToBytes::new(
            sink.with(|bytes: Bytes| future::ready(Ok(Message::Binary(bytes))))
                .sink_map_err(io_error),
        ));
        Ok((Box::new(reader), Box::new(writer)))
    }

    /// Accepts an upgrade for this listener's path that offers an MQTT subprotocol, and names
    /// it in the response; otherwise the status and reason of the refusal.
    fn check(
        &self,
        request: &Request,
        mut response: Response,
    ) -> Result<Response, (StatusCode, &'static str)> {
        if request.uri().path() != self.path {
            return Err((StatusCode::NOT_FOUND, "not the MQTT path"));
        }
        let protocol = subprotocol(request).ok_or((
            StatusCode::BAD_REQUEST,
            "no MQTT WebSocket subprotocol offered",
        ))?;
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
        Ok(response)
    }
}

/// The subprotocol to answer with: "mqtt" if the client offers it, else "mqttv3.1" if it
/// offers that. Names are compared exactly (RFC 6455 tokens), over all the header's lines.
fn subprotocol(request: &Request) -> Option<&'static str> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    SUBPROTOCOLS.into_iter().find(|name| offered.contains(name))
}

/// Keeps an I/O error as it is (a reset, the send timeout's kinds); wraps protocol errors
/// (a bad frame, a message over the limit, UTF-8 in a close reason...).
fn io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: &[&str]) -> Request {
        let mut builder = Request::builder().uri(path);
        for p in protocols {
            builder = builder.header(header::SEC_WEBSOCKET_PROTOCOL, *p);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn mqtt_is_preferred_and_mqttv3_1_accepted() {
        assert_eq!(subprotocol(&request("/mqtt", &["mqtt"])), Some("mqtt"));
        assert_eq!(
            subprotocol(&request("/mqtt", &["mqttv3.1, mqtt"])),
            Some("mqtt")
        );
        assert_eq!(
            subprotocol(&request("/mqtt", &["chat", "mqttv3.1"])),
            Some("mqttv3.1")
        );
        assert_eq!(subprotocol(&request("/mqtt", &[])), None);
        assert_eq!(subprotocol(&request("/mqtt", &["MQTT", "mqtt5"])), None);
    }

    #[test]
    fn only_the_configured_path_is_upgraded() {
        let acceptor = WebSocketAcceptor::new("/mqtt", 1024);
        let ok = acceptor
            .check(&request("/mqtt?x=1", &["mqtt"]), Response::default())
            .unwrap();
        assert_eq!(ok.headers()[header::SEC_WEBSOCKET_PROTOCOL], "mqtt");
        let (status, _) = acceptor
            .check(&request("/other", &["mqtt"]), Response::default())
            .unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = acceptor
            .check(&request("/mqtt", &[]), Response::default())
            .unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn frames_and_messages_are_bounded_by_the_packet_size() {
        let acceptor = WebSocketAcceptor::new("/mqtt", 1000);
        assert_eq!(acceptor.config.max_frame_size, Some(1000 + MESSAGE_SLACK));
        assert_eq!(acceptor.config.max_message_size, Some(1000 + MESSAGE_SLACK));
        assert_eq!(acceptor.config.read_buffer_size, READ_BUFFER);
    }
}
