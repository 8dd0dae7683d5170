//! The `hubbub` command: parses the command line and runs a role, a client command or a
//! benchmark from the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hubbub::config::Config;
use std::path::PathBuf;

/// mimalloc, not glibc's malloc: a server allocates and frees many small short-lived buffers
/// (frames, events, futures) across threads, where glibc spent a fifth of the CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tokio's blocking threads (SQLite reads, file I/O). tokio's default, 512, let a burst of a
/// thousand connects run a hundred hellos' store reads at once, each on a thread of its own
/// with its own stack and allocator heap, on two cores; this many is already more than the
/// store's read connections are kept for.
const MAX_BLOCKING_THREADS: usize = 32;

/// hubbub: a self-hostable real-time backend for chat and social apps.
#[derive(Debug, Parser)]
#[command(name = "hubbub", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// A TOML config file (see hubbub.example.toml).
    #[arg(long, env = "HUBBUB_CONFIG")]
    config: Option<PathBuf>,
    /// The listen address (setting `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// The data directory (setting `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Options of the roles that run apart.
#[derive(Debug, clap::Args)]
struct RoleArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Redis URL (setting `cluster.redis_url`).
    #[arg(long)]
    redis_url: Option<String>,
    /// PostgreSQL URL (setting `cluster.postgres_url`).
    #[arg(long)]
    postgres_url: Option<String>,
    /// An edge's internal listener (setting `cluster.internal_listen`).
    #[arg(long)]
    internal_listen: Option<String>,
}

impl RoleArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut extra = Vec::new();
        if let Some(u) = &self.redis_url {
            extra.push(("cluster.redis_url", u.clone()));
        }
        if let Some(u) = &self.postgres_url {
            extra.push(("cluster.postgres_url", u.clone()));
        }
        if let Some(a) = &self.internal_listen {
            extra.push(("cluster.internal_listen", a.clone()));
        }
        self.server.load_with(extra)
    }
}

impl ServerArgs {
    fn load(&self) -> anyhow::Result<Config> {
        self.load_with(Vec::new())
    }

    fn load_with(&self, extra: Vec<(&'static str, String)>) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(p) => Some(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            ),
            None => None,
        };
        let env: Vec<(String, String)> = std::env::vars().collect();
        let mut flags = Vec::new();
        if let Some(l) = &self.listen {
            flags.push(("listen", l.clone()));
        }
        if let Some(d) = &self.data_dir {
            flags.push(("data_dir", d.display().to_string()));
        }
        flags.extend(extra);
        Ok(Config::load(file.as_deref(), &env, &flags)?)
    }
}

#[derive(Debug, clap::Subcommand)]
enum ApiKeyCommand {
    /// Create an API key and print it (it is shown once): `{"id","key"}`.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: server, admin.
        #[arg(long, default_value = "server")]
        scopes: String,
        /// An API key with the admin scope (the bootstrap key, `api.bootstrap_key`, at first).
        #[arg(long, env = "HUBBUB_API_KEY", hide_env_values = true)]
        key: String,
        /// The server's base URL (its admin listener when `admin_listen` is set).
        #[arg(long, env = "HUBBUB_SERVER", default_value = "http://127.0.0.1:7700")]
        server: String,
    },
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// The server's base URL.
    #[arg(long, env = "HUBBUB_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// The profile file (tokens, last seq).
    #[arg(long, env = "HUBBUB_PROFILE")]
    profile: Option<PathBuf>,
}

impl ClientArgs {
    fn profile(&self) -> PathBuf {
        self.profile
            .clone()
            .unwrap_or_else(hubbub::cli::default_profile)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in this process on the embedded backends.
    Serve(ServerArgs),
    /// Run the edge role apart (client connections) on Redis and PostgreSQL.
    Edge(RoleArgs),
    /// Run the router role apart (`main` to the service queues).
    Router(RoleArgs),
    /// Run services apart: --services chat,feed,timeline,notify.
    Worker {
        /// Comma-separated services: chat, feed, timeline, engagement, notify.
        #[arg(long, default_value = "chat,feed,timeline,engagement")]
        services: String,
        #[command(flatten)]
        args: RoleArgs,
    },
    /// Run the scheduler role apart (periodic jobs).
    Scheduler(RoleArgs),
    /// Print the effective configuration (defaults, file, environment, flags).
    Config(ServerArgs),
    /// Add a new token signing key and make it current (restart the server to use it).
    RotateKeys {
        /// The data directory.
        #[arg(long, default_value = "hubbub-data")]
        data_dir: PathBuf,
    },
    /// Create an account and save its tokens in the profile.
    Signup {
        /// The handle (3-32 characters of a-z, 0-9, _).
        handle: String,
        /// The password (or set HUBBUB_PASSWORD).
        #[arg(long, env = "HUBBUB_PASSWORD", hide_env_values = true)]
        password: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Log in and save the tokens in the profile.
    Login {
        /// The handle.
        handle: String,
        /// The password (or set HUBBUB_PASSWORD).
        #[arg(long, env = "HUBBUB_PASSWORD", hide_env_values = true)]
        password: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a message to a conversation id, or to @handle (a direct conversation).
    Send {
        /// A conversation id, or @handle.
        target: String,
        /// The text.
        text: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reply to a message (in a conversation id, or @handle's direct conversation).
    Reply {
        /// A conversation id, or @handle.
        target: String,
        /// The id of the message replied to.
        message: String,
        /// The text.
        text: String,
        /// Also put the reply in the message's thread.
        #[arg(long)]
        thread: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Edit one of your messages.
    Edit {
        /// A conversation id, or @handle.
        target: String,
        /// The message's id.
        message: String,
        /// The new text.
        text: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// React to a message with an emoji (or take the reaction back with --remove).
    React {
        /// A conversation id, or @handle.
        target: String,
        /// The message's id.
        message: String,
        /// The emoji.
        emoji: String,
        /// Take the reaction back.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print events as JSON lines, resuming from the last seq seen.
    Listen {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// API keys (through the admin API of a running server).
    Apikey {
        #[command(subcommand)]
        which: ApiKeyCommand,
    },
    /// Add a new current key to the contact note keys (`<data_dir>/note-keys`) and re-seal
    /// every note (and every sealed inbox event) under it; older keys stay in the file. Run it with the server stopped (and,
    /// with `--postgres-url`, every node stopped; copy the new file to each before starting
    /// them).
    RotateNoteKeys(RoleArgs),
    /// Write the JSON Schema of the client protocol into a directory.
    Schema {
        /// Where to write the schema files.
        #[arg(long, default_value = "docs/schema")]
        out: PathBuf,
    },
    /// Write the OpenAPI 3.1 document of the server API (also served at
    /// `/v1/server/openapi.json`).
    Openapi {
        /// Where to write it.
        #[arg(long, default_value = "docs/openapi.json")]
        out: PathBuf,
    },
    /// Fuzz every parser of outside input with generated and mutated inputs; fails on any
    /// panic.
    Fuzz(hubbub::fuzz::FuzzArgs),
    /// Run a benchmark and print its figures.
    Bench {
        #[command(subcommand)]
        which: hubbub::bench::Bench,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUBBUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
                // Per-session debug logging (runtime config `debug` entries) is written
                // whatever the global level: only sessions under an entry write to it.
                .add_directive(
                    format!("{}=debug", hubbub_edge::DEBUG_TARGET)
                        .parse()
                        .map_err(|e| anyhow::anyhow!("log filter: {e}"))?,
                ),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            rt.block_on(async move {
                let running = hubbub::serve::start(config).await?;
                println!("hubbub listening on http://{}", running.addr);
                let cancel = running.cancel.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("shutting down");
                    cancel.cancel();
                });
                running.wait().await;
                anyhow::Ok(())
            })
        }
        Command::Edge(args) => run_role(&rt, "edge", Vec::new(), args.load()?),
        Command::Router(args) => run_role(&rt, "router", Vec::new(), args.load()?),
        Command::Scheduler(args) => run_role(&rt, "scheduler", Vec::new(), args.load()?),
        Command::Worker { services, args } => {
            let services = services
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            run_role(&rt, "worker", services, args.load()?)
        }
        Command::Config(args) => {
            print!("{}", args.load()?.to_toml());
            Ok(())
        }
        Command::RotateKeys { data_dir } => {
            let kid = hubbub_edge::auth::rotate_keys(&data_dir.join("keys.json"))?;
            println!("new signing key {kid}; older keys still verify tokens until they expire");
            Ok(())
        }
        Command::Apikey {
            which:
                ApiKeyCommand::Create {
                    name,
                    scopes,
                    key,
                    server,
                },
        } => rt.block_on(async {
            let scopes: Vec<String> = scopes
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            let created = hubbub::client::Client::new(&server)
                .create_api_key(&key, &name, &scopes)
                .await?;
            println!("{}", serde_json::to_string(&created)?);
            Ok(())
        }),
        Command::Signup {
            handle,
            password,
            client,
        } => rt.block_on(hubbub::cli::authenticate(
            &client.server,
            &client.profile(),
            &handle,
            &password,
            true,
        )),
        Command::Login {
            handle,
            password,
            client,
        } => rt.block_on(hubbub::cli::authenticate(
            &client.server,
            &client.profile(),
            &handle,
            &password,
            false,
        )),
        Command::Send {
            target,
            text,
            client,
        } => rt.block_on(hubbub::cli::send(&client.profile(), &target, &text)),
        Command::Reply {
            target,
            message,
            text,
            thread,
            client,
        } => rt.block_on(hubbub::cli::reply(
            &client.profile(),
            &target,
            &message,
            &text,
            thread,
        )),
        Command::Edit {
            target,
            message,
            text,
            client,
        } => rt.block_on(hubbub::cli::edit(
            &client.profile(),
            &target,
            &message,
            &text,
        )),
        Command::React {
            target,
            message,
            emoji,
            remove,
            client,
        } => rt.block_on(hubbub::cli::react(
            &client.profile(),
            &target,
            &message,
            &emoji,
            remove,
        )),
        Command::Listen { count, client } => {
            rt.block_on(hubbub::cli::listen(&client.profile(), count))
        }
        Command::RotateNoteKeys(args) => {
            let config = args.load()?;
            let (current, resealed) = rt.block_on(rotate_keys(&config))?;
            println!("note key {current} is current; {resealed} notes re-sealed under it");
            Ok(())
        }
        Command::Schema { out } => {
            let docs = hubbub_protocol::schema::documents();
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for (name, text) in &docs {
                std::fs::write(out.join(name), text)
                    .with_context(|| format!("writing {}", out.join(name).display()))?;
            }
            println!("wrote {} schema files to {}", docs.len(), out.display());
            Ok(())
        }
        Command::Openapi { out } => {
            std::fs::write(&out, hubbub_edge::server::openapi_json_text())
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Bench { which } => rt.block_on(hubbub::bench::run(which)),
        Command::Fuzz(args) => hubbub::fuzz::run(&args),
    }
}

/// `hubbub rotate-note-keys`: on PostgreSQL when `cluster.postgres_url` is set, else on the data
/// directory's SQLite store.
async fn rotate_keys(config: &Config) -> anyhow::Result<(String, u64)> {
    #[cfg(feature = "cluster")]
    if let Some(url) = &config.cluster.postgres_url {
        return hubbub::roles::rotate_keys(config, url).await;
    }
    #[cfg(not(feature = "cluster"))]
    if config.cluster.postgres_url.is_some() {
        anyhow::bail!("this build has no PostgreSQL backend (build with `--features cluster`)");
    }
    hubbub::serve::rotate_keys(config).await
}

/// Run one role until Ctrl-C or SIGTERM.
#[cfg(feature = "cluster")]
fn run_role(
    rt: &tokio::runtime::Runtime,
    name: &str,
    services: Vec<String>,
    config: Config,
) -> anyhow::Result<()> {
    use hubbub::roles::Role;
    let role = match name {
        "edge" => Role::Edge,
        "router" => Role::Router,
        "scheduler" => Role::Scheduler,
        _ => Role::Worker(services),
    };
    rt.block_on(async move {
        let running = hubbub::roles::start(role.clone(), config).await?;
        match running.internal_addr {
            Some(internal) => println!(
                "hubbub {role:?} listening on http://{} (internal http://{internal})",
                running.addr
            ),
            None => println!("hubbub {role:?} health on http://{}", running.addr),
        }
        let cancel = running.cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            cancel.cancel();
        });
        running.wait().await;
        anyhow::Ok(())
    })
}

/// Without the `cluster` feature there are no roles apart: say how to get them.
#[cfg(not(feature = "cluster"))]
fn run_role(
    _rt: &tokio::runtime::Runtime,
    name: &str,
    _services: Vec<String>,
    _config: Config,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "`hubbub {name}` runs a role apart on Redis and PostgreSQL, which this build leaves \
         out: build with `--features cluster` (or run everything in one process with `hubbub serve`)"
    )
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
