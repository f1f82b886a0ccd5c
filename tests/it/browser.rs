//! A real browser on a WebSocket listener: headless Chromium loads tests/browser/index.html,
//! whose MQTT.js client (the npm package `mqtt`, its browser bundle) subscribes, publishes and
//! hears back from a TCP client. The page and the bundle come from a tiny HTTP server in this
//! file, and the page reports its outcome to it with one GET /result, which the test awaits.
//!
//! Also the status page of mqttd's `[http]` endpoint, whose own script reports to the same
//! server.
//!
//! Needs `chromium` on the PATH and the bundle at $MQTTJS_BUNDLE or at `default_bundle()`;
//! .ci/run installs both. Skipped with a notice without them, unless MQTTD_REQUIRE_INTEROP is
//! set.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttd::config::{HttpConfig, ListenerConfig};
use mqttd::mqtt::{
    Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::*;

/// The version .ci/run fetches; the default bundle path names it.
const MQTTJS_VERSION: &str = "5.16.0";

const PAGE: &str = include_str!("../browser/index.html");

/// From launching Chromium to the page's report: a cold start on a loaded 2-core machine takes
/// a few seconds, and the page gives up by itself 5 s after it runs.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where .ci/run leaves the bundle when MQTTJS_BUNDLE is not set.
fn default_bundle() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join(format!("mqttd/mqtt-{MQTTJS_VERSION}.min.js"))
}

/// The bundle's contents, if Chromium and the bundle are both there. As for the other interop
/// tools, a missing one fails under MQTTD_REQUIRE_INTEROP (CI) and skips elsewhere.
fn browser_and_bundle() -> Option<Bytes> {
    let bundle_path = std::env::var_os("MQTTJS_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(default_bundle);
    let missing = match (has_chromium(), std::fs::read(&bundle_path)) {
        (true, Ok(bundle)) => return Some(bundle.into()),
        (false, _) => CHROMIUM.to_owned(),
        (true, Err(e)) => format!(
            "MQTT.js's bundle at {} ({e}; .ci/run fetches it, or set MQTTJS_BUNDLE)",
            bundle_path.display()
        ),
    };
    skip(&missing);
    None
}

const CHROMIUM: &str = "chromium (apt-get install chromium)";

fn has_chromium() -> bool {
    Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails under MQTTD_REQUIRE_INTEROP (CI), else notes that the test is skipped.
fn skip(missing: &str) {
    assert!(
        std::env::var_os("MQTTD_REQUIRE_INTEROP").is_none(),
        "{missing} is required here"
    );
    eprintln!("{missing} not found: skipped");
}

/// What the page reported: `ok` and its detail (the messages received, or why it failed),
/// and `rate` (the status page's messages received per second; empty from the MQTT.js page).
#[derive(Debug)]
struct Report {
    ok: bool,
    detail: String,
    rate: String,
}

/// The test's HTTP server on 127.0.0.1:0: `/` is the page, `/mqtt.min.js` the bundle,
/// `/result?ok=..&detail=..&rate=..` goes to the returned channel; anything else is 404. One request
/// per connection (`Connection: close`), which is all a test needs. Ends with the runtime.
async fn serve_page(bundle: Bytes) -> (SocketAddr, mpsc::UnboundedReceiver<Report>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reports, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, bundle.clone(), reports.clone()));
        }
    });
    (addr, rx)
}

async fn answer(mut stream: TcpStream, bundle: Bytes, reports: mpsc::UnboundedSender<Report>) {
    // The request head; a GET has no body. Chromium may open a spare connection and send
    // nothing on it: that task just waits until the runtime ends.
    let mut head = Vec::new();
    let mut buf = [0; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", Bytes::from(PAGE)),
        "/mqtt.min.js" => ("200 OK", "text/javascript", bundle),
        "/result" => {
            let field = |name: &str| {
                query
                    .split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| percent_decode(value))
                    .unwrap_or_default()
            };
            let _ = reports.send(Report {
                ok: field("ok") == "1",
                detail: field("detail"),
                rate: field("rate"),
            });
            ("204 No Content", "text/plain", Bytes::new())
        }
        _ => (
            "404 Not Found",
            "text/plain",
            Bytes::from_static(b"not found"),
        ),
    };
    let response_head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(response_head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// A query-string value as `encodeURIComponent` wrote it (`+` is a space, as in forms).
fn percent_decode(value: &str) -> String {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        let hex = |c: u8| (c as char).to_digit(16);
        match (b, rest) {
            (b'%', [h, l, tail @ ..]) if hex(*h).is_some() && hex(*l).is_some() => {
                bytes.push((hex(*h).unwrap() * 16 + hex(*l).unwrap()) as u8);
                rest = tail;
            }
            (b'+', _) => bytes.push(b' '),
            _ => bytes.push(b),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Headless Chromium on `url`, in its own process group with a throwaway profile. Dropping it
/// kills the whole group (the browser's zygote, renderer and utility processes too) and reaps
/// the launcher.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    fn launch(url: &str) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let log = File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new("chromium")
            // --no-sandbox: the tests run as root in a container, where the sandbox cannot start.
            .args(["--headless=new", "--no-sandbox", "--disable-gpu"])
            .args(["--no-first-run", "--no-default-browser-check"])
            .args(["--disable-extensions", "--disable-dev-shm-usage"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("run chromium");
        Browser { child, profile }
    }

    /// The end of Chromium's own log, for a failure message, without the D-Bus complaints a
    /// container always causes.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains(":dbus/")).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group id is the launcher's pid (process_group(0)); the group holds only what this
        // test started.
        let group = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One browser run: MQTT.js speaks `browser_version` (5 or 4) over WebSocket, the raw TCP
/// client `tcp_version`.
async fn browser_exchanges_messages_with_a_tcp_client(
    broker: &TestBroker,
    http: SocketAddr,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    browser_version: u8,
    tcp_version: ProtocolVersion,
) {
    let (ws, tcp_addr) = (broker.addrs[0], broker.addrs[1]);
    let mut tcp = Client::connected(
        tcp_addr,
        tcp_version,
        &format!("tcp-watcher-{browser_version}"),
    )
    .await;
    tcp.send(subscribe_packet(1, "browser/#")).await;
    tcp.expect(Packet::SubAck(SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reasons: vec![ReasonCode::GrantedQoS1],
    }))
    .await;

    let started = Instant::now();
    let browser = Browser::launch(&format!(
        "http://{http}/?port={}&v={browser_version}",
        ws.port()
    ));
    macro_rules! fail {
        ($($why:tt)*) => {
            panic!(
                "MQTT {browser_version} in the browser: {}\nChromium's log ends with:\n{}",
                format!($($why)*),
                browser.log_tail()
            )
        };
    }

    // The browser's message reaches the TCP client, unless the page gives up first.
    let from_browser = tokio::select! {
        packet = tokio::time::timeout(BROWSER_TIMEOUT, tcp.recv()) => match packet {
            Ok(Some(Ok(Packet::Publish(p)))) => p,
            Ok(other) => fail!("the TCP client expected PUBLISH, got {other:?}"),
            Err(_) => fail!("no message from the browser in time"),
        },
        report = reports.recv() => fail!("the page reported first: {report:?}"),
    };
    assert_eq!(
        (
            &*from_browser.topic,
            &from_browser.payload[..],
            from_browser.qos
        ),
        (
            "browser/echo",
            format!("hello from chromium over MQTT {browser_version}").as_bytes(),
            QoS::AtLeastOnce
        )
    );
    tcp.send(puback_packet(from_browser.packet_id.unwrap()))
        .await;

    // And the TCP client's answer reaches the browser.
    let answer = format!("hello from tcp over MQTT {}", tcp_version as u8);
    tcp.send(Packet::Publish(Box::new(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "browser/from-tcp".into(),
        packet_id: Some(2),
        properties: Properties::default(),
        payload: Bytes::from(answer.clone()),
    })))
    .await;
    let report = match tokio::time::timeout(BROWSER_TIMEOUT, reports.recv()).await {
        Ok(Some(report)) => report,
        Ok(None) => fail!("the HTTP server stopped"),
        Err(_) => fail!("no report from the page in time"),
    };
    if !report.ok {
        fail!("the page failed: {}", report.detail);
    }
    assert_eq!(
        report.detail,
        format!(
            "browser/echo qos=1 hello from chromium over MQTT {browser_version}\n\
             browser/from-tcp qos=1 {answer}"
        )
    );
    eprintln!(
        "MQTT {browser_version} in Chromium: {:?} from launch to report",
        started.elapsed()
    );
    drop(browser);
}

#[tokio::test]
async fn chromium_with_mqtt_js_exchanges_messages_with_a_tcp_client_over_websocket() {
    let Some(bundle) = browser_and_bundle() else {
        return;
    };
    let broker = start_broker_with(|c| {
        c.listeners = vec![
            ListenerConfig {
                websocket: true,
                ..ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())
            },
            ListenerConfig::tcp("127.0.0.1:0".parse().unwrap()),
        ];
    });
    let (http, mut reports) = serve_page(bundle).await;
    // Each browser version against the other version on TCP.
    for (browser_version, tcp_version) in [(5, ProtocolVersion::V311), (4, ProtocolVersion::V5)] {
        browser_exchanges_messages_with_a_tcp_client(
            &broker,
            http,
            &mut reports,
            browser_version,
            tcp_version,
        )
        .await;
    }
}

/// A raw TCP client that publishes a QoS 0 and a QoS 1 message every 100 ms until aborted,
/// and a subscriber that takes them at QoS 0, so both rates of the status page move.
async fn publish_steadily(broker: &TestBroker) -> (tokio::task::JoinHandle<()>, Client) {
    let mut subscriber = Client::connected(broker.addr, ProtocolVersion::V5, "load-sub").await;
    subscriber
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![("load/#".to_owned(), SubscriptionOptions::default())],
        }))
        .await;
    subscriber
        .expect(Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![ReasonCode::Success],
        }))
        .await;
    let mut publisher = Client::connected(broker.addr, ProtocolVersion::V5, "load-pub").await;
    let task = tokio::spawn(async move {
        for packet_id in (1..=u16::MAX).cycle() {
            for (qos, id) in [(QoS::AtMostOnce, None), (QoS::AtLeastOnce, Some(packet_id))] {
                publisher
                    .send(Packet::Publish(Box::new(Publish {
                        dup: false,
                        qos,
                        retain: false,
                        topic: "load/status-page".into(),
                        packet_id: id,
                        properties: Properties::default(),
                        payload: Bytes::from_static(b"tick"),
                    })))
                    .await;
            }
            match publisher.recv().await {
                Some(Ok(Packet::PubAck(ack))) if ack.packet_id == packet_id => {}
                other => panic!("the publisher expected PUBACK {packet_id}, got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (task, subscriber)
}

/// The status page at `/` of mqttd's own HTTP endpoint, in Chromium: its script (served by
/// mqttd, no CDN) polls `/api/v1/stats` and, given `?report=`, tells this test the message rate
/// it saw once messages flow.
#[tokio::test]
async fn the_status_page_polls_the_stats_api_and_sees_messages_flow_in_chromium() {
    if !has_chromium() {
        skip(CHROMIUM);
        return;
    }
    let broker = start_broker_with(|c| {
        c.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap()));
    });
    let http = broker
        .http_addr
        .expect("the broker reports its HTTP address");
    // Only its /result is used here.
    let (test_server, mut reports) = serve_page(Bytes::new()).await;
    let (publisher, _subscriber) = publish_steadily(&broker).await;

    let started = Instant::now();
    let browser = Browser::launch(&format!(
        "http://{http}/?report=http://{test_server}/result"
    ));
    let report = tokio::time::timeout(BROWSER_TIMEOUT, reports.recv()).await;
    publisher.abort();
    let fail = |why: String| -> ! {
        panic!(
            "the status page in Chromium: {why}\nChromium's log ends with:\n{}",
            browser.log_tail()
        )
    };
    let report = match report {
        Ok(Some(report)) => report,
        Ok(None) => fail("the test's HTTP server stopped".into()),
        Err(_) => fail("no report from the page in time".into()),
    };
    if !report.ok {
        fail(format!("the page failed: {}", report.detail));
    }
    let rate: f64 = report
        .rate
        .parse()
        .unwrap_or_else(|_| fail(format!("a bad rate in {report:?}")));
    // Two messages per ~100 ms: about 20/s; > 0 is what matters, the bound catches nonsense.
    assert!(rate > 0.0 && rate < 1000.0, "{report:?}");
    eprintln!(
        "status page in Chromium: {rate} messages/s after {:?}",
        started.elapsed()
    );
    drop(browser);
}
