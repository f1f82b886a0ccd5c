//! The `mqttd` binary as a user runs it: `mqttd user ...`, then the daemon on the same
//! database, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use mqttd::db::queries;
use mqttd::mqtt::{ConnAck, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode};

use crate::common::*;

fn mqttd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mqttd"))
        .args(args)
        .output()
        .expect("run mqttd")
}

#[test]
fn user_add_passwd_list_remove() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let db = db.to_str().unwrap();
    let ok = |args: &[&str]| {
        let out = mqttd(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(&["user", "add", "carol", "--password", "one", "--db", db]);
    ok(&["user", "add", "alice", "--password", "two", "--db", db]);
    assert_eq!(ok(&["user", "list", "--db", db]), "alice\ncarol\n");
    assert!(
        !mqttd(&["user", "add", "alice", "--password", "x", "--db", db])
            .status
            .success()
    );
    ok(&["user", "passwd", "alice", "--password", "three", "--db", db]);
    ok(&["user", "remove", "carol", "--db", db]);
    assert_eq!(ok(&["user", "list", "--db", db]), "alice\n");
    assert!(
        !mqttd(&["user", "remove", "carol", "--db", db])
            .status
            .success()
    );
    let mut conn = mqttd::db::open_connection(db, mqttd::persist::Durability::default()).unwrap();
    let hash = queries::find_password_hash(&mut conn, "alice")
        .unwrap()
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$"),
        "passwords are stored as Argon2id hashes"
    );
}

/// Starts the daemon and returns it with the address it logged.
fn spawn_daemon(args: &[&str]) -> (Child, SocketAddr) {
    spawn_daemon_with(Command::new(env!("CARGO_BIN_EXE_mqttd")).args(args))
}

pub(crate) fn spawn_daemon_with(command: &mut Command) -> (Child, SocketAddr) {
    let mut child = command
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mqttd");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("mqttd: {line}");
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(TIMEOUT).expect("mqttd logged its address");
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_a_user_and_shuts_down_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("daemon.db");
    let db = db.to_str().unwrap().to_owned();
    assert!(
        mqttd(&["user", "add", "dave", "--password", "secret", "--db", &db])
            .status
            .success()
    );
    let (mut child, addr) = spawn_daemon(&["--bind", "127.0.0.1:0", "--db", &db]);

    // --bind configures a listener, so anonymous clients are refused (Mosquitto 2.0 rule).
    let mut anonymous = Client::open(addr, ProtocolVersion::V5).await;
    anonymous.send(connect(ProtocolVersion::V5, "anon")).await;
    anonymous
        .expect(Packet::ConnAck(ConnAck {
            reason: ReasonCode::NotAuthorized,
            ..Default::default()
        }))
        .await;

    let mut client = Client::open(addr, ProtocolVersion::V5).await;
    client
        .send(connect_with_credentials(
            ProtocolVersion::V5,
            "dave-1",
            "dave",
            "secret",
        ))
        .await;
    assert!(
        matches!(client.recv().await, Some(Ok(Packet::ConnAck(a))) if a.reason == ReasonCode::Success)
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    client
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::ServerShuttingDown,
            properties: Properties::default(),
        }))
        .await;
    client.expect_closed().await;
    let exit = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(exit.success(), "mqttd exits 0 after SIGTERM: {exit:?}");

    let mut conn = mqttd::db::open_connection(&db, mqttd::persist::Durability::default()).unwrap();
    let record = queries::get_client(&mut conn, "dave-1").unwrap().unwrap();
    assert_eq!(record.username.as_deref(), Some("dave"));
    assert!(record.disconnected_at_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_accepting_after_running_out_of_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mqttd.toml");
    let db = dir.path().join("fd.db");
    std::fs::write(
        &config,
        format!(
            "db_path = {:?}\nallow_anonymous = true\n[[listener]]\nbind = \"127.0.0.1:0\"\n",
            db.to_str().unwrap()
        ),
    )
    .unwrap();
    // 64 descriptors: the broker's own files and sockets take about 20, so 80 clients exhaust
    // them and accept() fails with EMFILE.
    let script = format!(
        "ulimit -n 64 && exec {} --config {}",
        env!("CARGO_BIN_EXE_mqttd"),
        config.display()
    );
    let (mut child, addr) = spawn_daemon_with(Command::new("sh").args(["-c", &script]));
    let mut clients = Vec::new();
    for _ in 0..80 {
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    drop(clients);
    // Once the descriptors are free again, the broker serves new clients.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let mut client = Client::open(addr, ProtocolVersion::V5).await;
        client
            .send(connect(ProtocolVersion::V5, "after-emfile"))
            .await;
        if let Some(Ok(Packet::ConnAck(ack))) = client.recv().await {
            assert_eq!(ack.reason, ReasonCode::Success);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker stopped accepting"
        );
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        tokio::task::block_in_place(|| child.wait())
            .unwrap()
            .success()
    );
}

#[test]
fn check_config_accepts_the_example_and_names_what_is_wrong() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/mqttd.example.toml");
    let ok = mqttd(&["--check-config", example]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    for (text, named) in [
        ("max_conections = 3\n", "max_conections"),
        ("[limits]\nreceive_maximum = 0\n", "limits.receive_maximum"),
        (
            "[[listener]]\nbind = \"127.0.0.1:8883\"\ntls = { cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }\n",
            "/nonexistent.pem",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = mqttd(&["--check-config", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{named} not in {stderr}");
    }
}

/// bad-inputs A3 (CVE-2023-0809): 14 connections whose first packet is a non-CONNECT header
/// declaring ~243 MB, followed by 100 MB of garbage in all, are closed at the first byte and
/// cost the broker process less than 25 MB of memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_huge_declared_lengths_on_14_connections_cost_little_memory() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a3.db");
    let (mut child, addr) = spawn_daemon(&["--bind", "127.0.0.1:0", "--db", db.to_str().unwrap()]);
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = rss(child.id());
    let garbage = vec![0xABu8; 100 * 1024 * 1024 / 14];
    let mut tasks = Vec::new();
    for _ in 0..14 {
        let garbage = garbage.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            // A PUBLISH declaring 0x74 * 2^21 bytes (~243 MB); the broker closes at once, so
            // the garbage after it mostly fails to send.
            let _ = stream.write_all(&[0x30, 0x80, 0x80, 0x80, 0x74]).await;
            let _ = stream.write_all(&garbage).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let after = rss(child.id());
    let grown = after.saturating_sub(before);
    assert!(grown < 25 * 1024 * 1024, "the broker grew by {grown} bytes");
    // Still serving: a fresh client gets its CONNACK (refused: --bind disables anonymous).
    let mut fresh = Client::open(addr, ProtocolVersion::V5).await;
    fresh.send(connect(ProtocolVersion::V5, "fresh")).await;
    fresh
        .expect(Packet::ConnAck(ConnAck {
            reason: ReasonCode::NotAuthorized,
            ..Default::default()
        }))
        .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        tokio::task::block_in_place(|| child.wait())
            .unwrap()
            .success()
    );
}

/// I132: a damaged database file stops the broker at start with a clear error (exit 1),
/// before anything writes to it, instead of a crash at some later query.
#[test]
fn a_damaged_database_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("damaged.db");
    let db = db.to_str().unwrap();
    let added = mqttd(&["user", "add", "eve", "--password", "secret", "--db", db]);
    assert!(added.status.success());
    // Overwrite the second page (a table's B-tree root) with garbage.
    let mut bytes = std::fs::read(db).unwrap();
    bytes[4096..4896].fill(0xFF);
    std::fs::write(db, bytes).unwrap();

    let out = mqttd(&["--db", db, "--bind", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
}
