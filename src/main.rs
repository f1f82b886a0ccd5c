//! The `mqttd` command: runs the broker, or manages users in its database.
//! All logic lives in the library; this file only parses flags and waits for signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use log::{error, info};
use mqttd::Config;
use mqttd::acl::{AclAction, AclPermission, AclSubject};
use mqttd::db::{acl, users};

#[derive(Parser)]
#[command(name = "mqttd", version, about = "An MQTT 5.0 / 3.1.1 broker")]
struct Cli {
    /// TOML configuration file (see docs/mqttd.example.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// SQLite database file; overrides `db_path` [default: mqttd.db].
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Listen on ADDR:PORT; repeatable; replaces the configured listeners
    /// [default: 127.0.0.1:1883].
    #[arg(long, value_name = "ADDR:PORT")]
    bind: Vec<SocketAddr>,
    /// Check the configuration file (keys, values, TLS certificate files) and exit: status 0
    /// if it is usable, 1 with the reason if not.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the users that may connect (stored in the database).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Manage the authorization rules (stored in the database).
    Acl {
        #[command(subcommand)]
        action: AclCommand,
    },
    /// Load-test an MQTT broker
    Bench(mqttd::bench::BenchArgs),
}

#[derive(Subcommand)]
enum AclCommand {
    /// Add a rule: `mqttd acl add --user alice allow publish 'sensors/%u/#'`.
    Add {
        #[command(flatten)]
        subject: SubjectArgs,
        /// allow or deny.
        permission: AclPermission,
        /// publish, subscribe or receive.
        action: AclAction,
        /// Topic filter; a level `%u` or `%c` stands for the username or client id.
        topic: String,
    },
    /// Remove the rule with this id (see `mqttd acl list`).
    Remove { id: i64 },
    /// List every rule: id, subject, permission, action, topic.
    List,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct SubjectArgs {
    /// The rule applies to clients logged in with this username.
    #[arg(long)]
    user: Option<String>,
    /// The rule applies to the client with this client identifier.
    #[arg(long)]
    client: Option<String>,
    /// The rule applies to every client.
    #[arg(long)]
    all: bool,
}

impl SubjectArgs {
    fn subject(self) -> AclSubject {
        match (self.user, self.client) {
            (Some(user), _) => AclSubject::User(user),
            (None, Some(client)) => AclSubject::Client(client),
            (None, None) => AclSubject::All,
        }
    }
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user; the password comes from --password or is asked for.
    Add {
        username: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Change a user's password.
    Passwd {
        username: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Remove a user.
    Remove { username: String },
    /// List the users.
    List,
}

fn main() -> ExitCode {
    // actix_server (under the `[http]` endpoint) logs its worker start-up at info.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,actix_server=warn"),
    )
    .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = &cli.check_config {
        let config = Config::from_file(path)?;
        for listener in config.effective_listeners() {
            if let Some(files) = listener.tls {
                mqttd::tls::TlsAcceptor::new(files)
                    .map_err(|e| format!("listener {}: {e}", listener.bind))?;
            }
        }
        println!("{}: OK", path.display());
        return Ok(());
    }
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(db) = cli.db {
        config.db_path = db;
    }
    if !cli.bind.is_empty() {
        config.listeners = cli
            .bind
            .into_iter()
            .map(mqttd::config::ListenerConfig::tcp)
            .collect();
    }
    let db_path = config.db_path.to_string_lossy().into_owned();
    match cli.command {
        None => serve(config),
        Some(Command::User { action }) => match action {
            UserAction::Add { username, password } => {
                let password = password_or_prompt(password)?;
                users::add_user(&db_path, &username, &password)?;
                println!("added user {username:?}");
                Ok(())
            }
            UserAction::Passwd { username, password } => {
                let password = password_or_prompt(password)?;
                users::set_password(&db_path, &username, &password)?;
                println!("changed the password of {username:?}");
                Ok(())
            }
            UserAction::Remove { username } => {
                users::remove_user(&db_path, &username)?;
                println!("removed user {username:?}");
                Ok(())
            }
            UserAction::List => {
                for user in users::list_users(&db_path)? {
                    println!("{}", user.username);
                }
                Ok(())
            }
        },
        Some(Command::Bench(args)) => Ok(mqttd::bench::run(args)?),
        Some(Command::Acl { action }) => match action {
            AclCommand::Add {
                subject,
                permission,
                action,
                topic,
            } => {
                let id = acl::add_rule(&db_path, &subject.subject(), permission, action, &topic)?;
                println!("added rule {id}");
                Ok(())
            }
            AclCommand::Remove { id } => {
                acl::remove_rule(&db_path, id)?;
                println!("removed rule {id}");
                Ok(())
            }
            AclCommand::List => {
                for rule in acl::list_rules(&db_path)? {
                    println!("{rule}");
                }
                Ok(())
            }
        },
    }
}

/// Runs the broker until SIGINT or SIGTERM, then shuts it down cleanly. SIGHUP reloads the TLS
/// certificates and the connected clients' ACL rules.
fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    ignore_file_size_signal();
    let system = actix::System::new();
    system.block_on(async move {
        let broker = mqttd::start(config).await?;
        wait_for_signal(&broker).await?;
        info!("shutting down");
        broker.shutdown().await;
        Ok(())
    })
}

/// A write over the file-size limit (`ulimit -f`) raises SIGXFSZ, which kills the process by
/// default. Ignored, the write fails with EFBIG instead, SQLite reports it like a full disk,
/// and the broker refuses to acknowledge what it could not store, then recovers when the
/// limit is lifted (see the README's durability section).
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code and is
    // done before any other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

async fn wait_for_signal(broker: &mqttd::Broker) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Streams made once, so a signal arriving during a reload is not missed.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => {
                info!("SIGHUP: reloading TLS certificates and ACL rules");
                // Failures are logged per listener, which keeps its previous certificates.
                let _ = broker.reload_tls();
                // Logs how many sessions reloaded; a failed one keeps its previous rules.
                broker.reload_acl().await;
            }
        }
    }
}

fn password_or_prompt(password: Option<String>) -> std::io::Result<String> {
    if let Some(password) = password {
        return Ok(password);
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Repeat password: ")?;
    if first != second {
        return Err(std::io::Error::other("the passwords do not match"));
    }
    Ok(first)
}
