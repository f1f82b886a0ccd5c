//! The `mqttd` command: runs the broker, or manages users in its database.
//! All logic lives in the library; this file only parses flags and waits for signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use log::{error, info};
use mqttd::Config;
use mqttd::db::users;

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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
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
            .map(|bind| mqttd::config::ListenerConfig { bind })
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
    }
}

/// Runs the broker until SIGINT or SIGTERM, then shuts it down cleanly.
fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let system = actix::System::new();
    system.block_on(async move {
        let broker = mqttd::start(config).await?;
        wait_for_signal().await?;
        info!("shutting down");
        broker.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = terminate.recv() => Ok(()),
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
