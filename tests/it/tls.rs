//! TLS listeners: certificates made here with rcgen (a CA, a server certificate for
//! 127.0.0.1/localhost, client certificates), clients over tokio-rustls and Mosquitto's
//! command-line clients, mTLS with identity as username, CRLs, the handshake timeout and
//! certificate reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mqttd::Config;
use mqttd::config::{CertIdentity, ListenerConfig, TlsConfig};
use mqttd::mqtt::{MqttCodec, Packet, ProtocolVersion, ReasonCode};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_util::codec::Framed;

use crate::common::*;
use crate::interop::mosquitto_pub_available;

/// A CA and the PEM files of the certificates it issues, in a temp dir.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    pub(crate) ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key.
pub(crate) struct Leaf {
    cert: CertificateDer<'static>,
    pem: String,
    key: KeyPair,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mqttd test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: ca.der().clone(),
            issuer: Issuer::new(params, key),
        };
        std::fs::write(pki.path("ca.pem"), ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self, mut params: CertificateParams, serial: u64) -> Leaf {
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.der().clone(),
            pem: cert.pem(),
            key,
        }
    }

    fn server(&self, serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, serial)
    }

    pub(crate) fn client(&self, cn: &str, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, serial)
    }

    /// Writes `name.pem` and `name.key`.
    fn write(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&cert, &leaf.pem).unwrap();
        std::fs::write(&key, leaf.key.serialize_pem()).unwrap();
        (cert, key)
    }

    /// A server certificate (serial 1) written as `server.pem`/`server.key`, no client
    /// certificates asked for.
    pub(crate) fn server_tls(&self) -> TlsConfig {
        let (cert, key) = self.write("server", &self.server(1));
        TlsConfig {
            cert,
            key,
            client_ca: None,
            crl: None,
            identity_as_username: None,
        }
    }

    /// As `server_tls`, and clients must present a certificate from this CA.
    pub(crate) fn mtls(&self, identity_as_username: Option<CertIdentity>) -> TlsConfig {
        TlsConfig {
            client_ca: Some(self.path("ca.pem")),
            identity_as_username,
            ..self.server_tls()
        }
    }
}

fn tls_listener(tls: TlsConfig) -> impl FnOnce(&mut Config) {
    move |c| {
        c.listeners = vec![ListenerConfig {
            tls: Some(tls),
            ..ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())
        }]
    }
}

/// A client configuration trusting `ca`, presenting `identity` if given.
pub(crate) fn client_config(
    ca: &CertificateDer<'static>,
    identity: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.cert.clone()],
                PrivateKeyDer::try_from(leaf.key.serialize_der()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

type TlsClient = Framed<TlsStream<TcpStream>, MqttCodec>;

/// TLS handshake, CONNECT, CONNACK; any failure on the way is returned as text.
async fn mqtt_over_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    connect: Packet,
) -> Result<TlsClient, String> {
    let Packet::Connect(c) = &connect else {
        unreachable!()
    };
    let version = c.protocol;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio::time::timeout(TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake timed out")
        .map_err(|e| format!("handshake: {e}"))?;
    let mut framed = Framed::new(tls, MqttCodec::new(version, 268_435_460));
    framed
        .send(connect)
        .await
        .map_err(|e| format!("send: {e}"))?;
    // With TLS 1.3 the server checks the client certificate after the client has finished its
    // side of the handshake: a refusal shows up as an alert on the first read.
    match tokio::time::timeout(TIMEOUT, framed.next())
        .await
        .expect("no answer to CONNECT")
    {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => Ok(framed),
        other => Err(format!("{other:?}")),
    }
}

async fn ping(client: &mut TlsClient) {
    client.send(Packet::PingReq).await.unwrap();
    let pong = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
    assert!(matches!(pong, Some(Ok(Packet::PingResp))), "{pong:?}");
}

fn peer_certificate(client: &TlsClient) -> CertificateDer<'static> {
    client.get_ref().get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn a_tls_client_connects_and_pings_in_v5_and_v311() {
    let pki = Pki::new();
    let broker = start_broker_with(tls_listener(pki.server_tls()));
    for (version, id) in [
        (ProtocolVersion::V5, "tls5"),
        (ProtocolVersion::V311, "tls3"),
    ] {
        let config = client_config(&pki.ca, None);
        let mut client = mqtt_over_tls(broker.addr, config, connect(version, id))
            .await
            .unwrap();
        ping(&mut client).await;
    }
}

#[tokio::test]
async fn a_plain_mqtt_client_on_a_tls_listener_gets_nothing() {
    let pki = Pki::new();
    let broker = start_broker_with(tls_listener(pki.server_tls()));
    let answer = exchange_raw(broker.addr, &[0xC0, 0x00]).await;
    // At most a TLS alert record (content type 21), never an MQTT packet.
    assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");
}

#[test]
fn mosquitto_clients_over_tls_v5_and_v311() {
    if !mosquitto_pub_available() {
        return;
    }
    let pki = Pki::new();
    let broker = start_broker_with(tls_listener(pki.server_tls()));
    let port = broker.addr.port().to_string();
    let cafile = pki.path("ca.pem");
    let cafile = cafile.to_str().unwrap();
    for version in ["mqttv5", "mqttv311"] {
        let topic = format!("tls/{version}");
        let publish = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "--cafile",
                cafile,
            ])
            .args(["-t", &topic, "-m", "over tls", "-r", "-q", "1"])
            .output()
            .unwrap();
        assert!(
            publish.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&publish.stderr)
        );
        let subscribe = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "--cafile",
                cafile,
            ])
            .args(["-t", &topic, "-C", "1", "-W", "5"])
            .output()
            .unwrap();
        assert!(
            subscribe.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&subscribe.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&subscribe.stdout).trim(),
            "over tls"
        );
    }
}

#[test]
fn mosquitto_pub_with_a_client_certificate_is_known_by_its_cn() {
    if !mosquitto_pub_available() {
        return;
    }
    let pki = Pki::new();
    let tls = pki.mtls(Some(CertIdentity::Cn));
    let (cert, key) = pki.write("alice", &pki.client("alice", 10));
    let broker = start_broker_with(|c| {
        tls_listener(tls)(c);
        c.allow_anonymous = Some(false);
    });
    let port = broker.addr.port().to_string();
    let cafile = pki.path("ca.pem");
    let run = |with_cert: bool| {
        let mut command = Command::new("mosquitto_pub");
        command
            .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311", "-q", "1"])
            .args(["-t", "t", "-m", "hi", "-i", "mosq-mtls"])
            .arg("--cafile")
            .arg(&cafile);
        if with_cert {
            command.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        command.output().unwrap()
    };
    let refused = run(false);
    assert!(!refused.status.success(), "no certificate must be refused");
    let accepted = run(true);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let record = mqttd::db::queries::get_client(&mut broker.db(), "mosq-mtls")
        .unwrap()
        .unwrap();
    assert_eq!(record.username.as_deref(), Some("alice"));
}

#[tokio::test]
async fn mtls_refuses_no_certificate_and_an_untrusted_one() {
    let pki = Pki::new();
    let broker = start_broker_with(tls_listener(pki.mtls(None)));
    let connect = || connect(ProtocolVersion::V5, "m");

    let none = mqtt_over_tls(broker.addr, client_config(&pki.ca, None), connect()).await;
    let err = none.expect_err("no client certificate must be refused");
    assert!(err.contains("CertificateRequired"), "{err}");

    let other_ca = Pki::new();
    let stranger = other_ca.client("alice", 10);
    let untrusted = mqtt_over_tls(
        broker.addr,
        client_config(&pki.ca, Some(&stranger)),
        connect(),
    )
    .await;
    let err = untrusted.expect_err("an untrusted certificate must be refused");
    // Same issuer name as the trusted CA: the signature check is what fails.
    assert!(err.contains("AlertReceived"), "{err}");

    // Without identity_as_username the certificate proves nothing about the username:
    // CONNECT is handled as usual (anonymous allowed here).
    let alice = pki.client("alice", 11);
    let mut client = mqtt_over_tls(broker.addr, client_config(&pki.ca, Some(&alice)), connect())
        .await
        .unwrap();
    ping(&mut client).await;
}

#[tokio::test]
async fn with_identity_as_username_the_cn_replaces_the_connect_username_and_password() {
    let pki = Pki::new();
    let broker = start_broker_with(|c| {
        tls_listener(pki.mtls(Some(CertIdentity::Cn)))(c);
        c.allow_anonymous = Some(false);
    });
    let alice = pki.client("alice", 10);
    // No such user and no password that could pass: the certificate alone authenticates.
    let login = connect_with_credentials(ProtocolVersion::V5, "cert-client", "mallory", "x");
    let mut client = mqtt_over_tls(broker.addr, client_config(&pki.ca, Some(&alice)), login)
        .await
        .unwrap();
    ping(&mut client).await;
    let record = mqttd::db::queries::get_client(&mut broker.db(), "cert-client")
        .unwrap()
        .unwrap();
    assert_eq!(record.username.as_deref(), Some("alice"));

    // Anonymous is off, yet a CONNECT without username is accepted: the certificate names it.
    let bare = connect(ProtocolVersion::V311, "cert-bare");
    mqtt_over_tls(broker.addr, client_config(&pki.ca, Some(&alice)), bare)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused() {
    let pki = Pki::new();
    let crl = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(66u64),
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&pki.issuer)
    .unwrap();
    std::fs::write(pki.path("crl.pem"), crl.pem().unwrap()).unwrap();
    let tls = TlsConfig {
        crl: Some(pki.path("crl.pem")),
        ..pki.mtls(None)
    };
    let broker = start_broker_with(tls_listener(tls));
    let connect = || connect(ProtocolVersion::V5, "crl");

    let revoked = pki.client("mallory", 66);
    let refused = mqtt_over_tls(
        broker.addr,
        client_config(&pki.ca, Some(&revoked)),
        connect(),
    )
    .await
    .expect_err("a revoked certificate must be refused");
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    let good = pki.client("alice", 67);
    mqtt_over_tls(broker.addr, client_config(&pki.ca, Some(&good)), connect())
        .await
        .unwrap();
}

/// A ClientHello as an old client sends it: no supported_versions extension, so `version` is
/// the highest it speaks. Suites and extensions are ones the server would accept in TLS 1.2.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x06, 0xC0, 0x2B, 0xC0, 0x2F, 0xC0, 0x13]); // ECDHE with AES
    body.extend([0x01, 0x00]); // null compression
    let extensions = [
        &[0x00, 0x0A, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1D][..], // supported_groups: x25519
        &[0x00, 0x0B, 0x00, 0x02, 0x01, 0x00],                 // ec_point_formats
        &[0x00, 0x0D, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03],     // ecdsa_secp256r1_sha256
    ]
    .concat();
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut hello = vec![0x01];
    hello.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hello.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hello.len() as u16).to_be_bytes());
    record.extend(hello);
    record
}

#[tokio::test]
async fn tls_1_1_is_refused_where_the_same_hello_as_tls_1_2_is_answered() {
    let pki = Pki::new();
    let broker = start_broker_with(tls_listener(pki.server_tls()));

    let mut tcp = TcpStream::connect(broker.addr).await.unwrap();
    tcp.write_all(&client_hello([0x03, 0x02])).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .ok();
    // One alert record: fatal (2) protocol_version (70), and no ServerHello.
    assert_eq!(answer, [21, 3, 3, 0, 2, 2, 70]);

    let mut tcp = TcpStream::connect(broker.addr).await.unwrap();
    tcp.write_all(&client_hello([0x03, 0x03])).await.unwrap();
    let mut first = [0u8; 6];
    tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    // A handshake record (22) whose first message is ServerHello (2).
    assert_eq!((first[0], first[5]), (22, 2), "{first:?}");
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_after_connect_timeout_and_frees_its_slot() {
    let pki = Pki::new();
    let broker = start_broker_with(|c| {
        tls_listener(pki.server_tls())(c);
        c.limits.connect_timeout = 1;
        c.limits.max_connections = 1;
    });
    let started = Instant::now();
    let mut stalled = TcpStream::connect(broker.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("a stalled handshake must be closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The only slot is free again (released just after the socket is closed, hence the retry).
    let config = client_config(&pki.ca, None);
    let mut attempts = 0;
    while let Err(e) = mqtt_over_tls(
        broker.addr,
        config.clone(),
        connect(ProtocolVersion::V5, "after"),
    )
    .await
    {
        attempts += 1;
        assert!(attempts < 20, "{e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reload request and where its outcome goes.
type ReloadRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

/// A broker whose `reload_tls` the test can call: the harness in `common` does not hand out
/// the `Broker`.
struct ReloadableBroker {
    addr: SocketAddr,
    reload: tokio::sync::mpsc::UnboundedSender<ReloadRequest>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl ReloadableBroker {
    fn start(tls: TlsConfig) -> ReloadableBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            db_path: dir.path().join("broker.db"),
            allow_anonymous: Some(true),
            workers: 1,
            ..Config::default()
        };
        tls_listener(tls)(&mut config);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (reload, mut requests) = tokio::sync::mpsc::unbounded_channel::<ReloadRequest>();
        let thread = std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let broker = mqttd::start(config).await.unwrap();
                addr_tx.send(broker.local_addrs[0]).unwrap();
                while let Some(reply) = requests.recv().await {
                    let _ = reply.send(broker.reload_tls().map_err(|e| e.to_string()));
                }
                broker.shutdown().await;
            });
        });
        ReloadableBroker {
            addr: addr_rx.recv().unwrap(),
            reload,
            thread: Some(thread),
            _dir: dir,
        }
    }

    async fn reload(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reload.send(tx).unwrap();
        rx.await.unwrap()
    }
}

impl Drop for ReloadableBroker {
    fn drop(&mut self) {
        // Closing the request channel ends the broker's loop.
        let (closed, _) = tokio::sync::mpsc::unbounded_channel();
        self.reload = closed;
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

#[tokio::test]
async fn reload_serves_new_certificates_to_new_connections_and_keeps_old_ones_open() {
    let pki = Pki::new();
    let tls = pki.server_tls();
    let first = CertificateDer::from_pem_file(&tls.cert).unwrap();
    let broker = ReloadableBroker::start(tls.clone());
    let config = client_config(&pki.ca, None);
    let connect = |id| connect(ProtocolVersion::V5, id);

    let mut old = mqtt_over_tls(broker.addr, config.clone(), connect("old"))
        .await
        .unwrap();
    assert_eq!(peer_certificate(&old), first);

    let renewed = pki.server(2);
    pki.write("server", &renewed);
    broker.reload().await.unwrap();
    let new = mqtt_over_tls(broker.addr, config.clone(), connect("new"))
        .await
        .unwrap();
    assert_eq!(peer_certificate(&new), renewed.cert);
    ping(&mut old).await;

    // A broken file: the reload fails, names the file, and the renewed certificate stays.
    std::fs::write(&tls.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let err = broker.reload().await.unwrap_err();
    assert!(err.contains("server.pem"), "{err}");
    // A key that does not belong to the certificate is refused too.
    pki.write("server", &pki.server(3));
    std::fs::write(&tls.key, pki.client("x", 4).key.serialize_pem()).unwrap();
    assert!(broker.reload().await.is_err());
    let after = mqtt_over_tls(broker.addr, config, connect("after"))
        .await
        .unwrap();
    assert_eq!(peer_certificate(&after), renewed.cert);
    ping(&mut old).await;
}

#[test]
fn missing_files_are_reported_with_their_path() {
    let pki = Pki::new();
    let tls = TlsConfig {
        key: pki.path("absent.key"),
        ..pki.server_tls()
    };
    let err = mqttd::tls::TlsAcceptor::new(tls).err().unwrap().to_string();
    assert!(err.contains("absent.key"), "{err}");
    let tls = TlsConfig {
        client_ca: Some(pki.path("server.key")),
        ..pki.server_tls()
    };
    let err = mqttd::tls::TlsAcceptor::new(tls).err().unwrap().to_string();
    assert!(
        err.contains("server.key") && err.contains("no certificate"),
        "{err}"
    );
}

#[test]
fn the_certificate_identity_is_the_cn_or_the_first_dns_san_and_must_be_clean_utf8() {
    use mqttd::tls::certificate_identity;
    let pki = Pki::new();
    let with_subject = |cn: Option<DnValue>, extra_cn: bool, sans: Vec<String>| {
        let mut params = CertificateParams::new(sans).unwrap();
        // rcgen puts a CN in by default.
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        if extra_cn {
            // A second CN attribute, under its OID so the map keeps both.
            let cn_oid = DnType::CustomDnType(vec![2, 5, 4, 3]);
            params.distinguished_name.push(cn_oid, "root");
        }
        pki.issue(params, 5).cert
    };
    let cn = |s: &str| Some(DnValue::Utf8String(s.into()));
    let sans = vec![
        "10.0.0.1".to_string(),
        "bob.example".into(),
        "c.example".into(),
    ];

    let cert = with_subject(cn("zoë"), false, sans.clone());
    assert_eq!(
        certificate_identity(&cert, CertIdentity::Cn).unwrap(),
        "zoë"
    );
    // The IP address SAN is skipped: the first DNS name counts.
    assert_eq!(
        certificate_identity(&cert, CertIdentity::San).unwrap(),
        "bob.example"
    );

    let cert = with_subject(None, false, Vec::new());
    assert!(certificate_identity(&cert, CertIdentity::Cn).is_err());
    assert!(certificate_identity(&cert, CertIdentity::San).is_err());
    let cert = with_subject(cn("alice"), true, Vec::new());
    assert!(certificate_identity(&cert, CertIdentity::Cn).is_err());
    let cert = with_subject(cn("a\u{7}b"), false, Vec::new());
    assert!(certificate_identity(&cert, CertIdentity::Cn).is_err());
    let bmp = DnValue::BmpString("alice".try_into().unwrap());
    let cert = with_subject(Some(bmp), false, Vec::new());
    assert!(certificate_identity(&cert, CertIdentity::Cn).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reloads_its_certificate_on_sighup() {
    let pki = Pki::new();
    let tls = pki.server_tls();
    let config = pki.path("mqttd.toml");
    std::fs::write(
        &config,
        format!(
            "db_path = {:?}\nallow_anonymous = true\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
             tls = {{ cert = {:?}, key = {:?} }}\n",
            pki.path("daemon.db"),
            tls.cert,
            tls.key
        ),
    )
    .unwrap();
    let (mut child, addr) = crate::cli::spawn_daemon_with(
        Command::new(env!("CARGO_BIN_EXE_mqttd"))
            .arg("--config")
            .arg(&config),
    );
    let client_config = client_config(&pki.ca, None);
    let connect = |id| connect(ProtocolVersion::V5, id);
    let mut old = mqtt_over_tls(addr, client_config.clone(), connect("old"))
        .await
        .unwrap();

    let renewed = pki.server(2);
    pki.write("server", &renewed);
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-HUP");
    // The signal is handled asynchronously: wait until new connections get the new certificate.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let new = mqtt_over_tls(addr, client_config.clone(), connect("new"))
            .await
            .unwrap();
        if peer_certificate(&new) == renewed.cert {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the certificate was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ping(&mut old).await;

    signal("-TERM");
    let exit = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(exit.success(), "{exit:?}");
}
