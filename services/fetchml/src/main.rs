//! `fetchml`: the server-side binary. Each subcommand is a thin shell around a
//! library (`fetchml-api`, `fetchml-worker`, `fetchml-scheduler`, ...).

mod nats_auth;

use clap::{Parser, Subcommand};
use fetchml_events::subject::Subjects;
use fetchml_eventstore::EventStore;
use fetchml_runtime::Settings;
use futures::StreamExt;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "fetchml", version, about = "fetchml: event-sourced ML jobs over NATS JetStream")]
struct Cli {
    /// YAML settings file; `FETCHML_<SECTION>__<KEY>` variables override it.
    #[arg(long, short, global = true, env = "FETCHML_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP api (and, by default, a scheduler and the projector).
    Api {
        /// Listen address, overriding api.listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run a worker.
    Worker {
        #[arg(long)]
        pool: Option<String>,
        /// A label this worker offers (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Run a standalone scheduler (assigns waiting jobs to workers; several
    /// may run, one leads).
    Scheduler,
    /// Run a standalone projector (event log → Postgres read models).
    Projector,
    /// Manage the read models.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Replay the whole event log and check every link (the same as `fetchml
    /// audit verify` without options).
    Verify,
    /// The audit trail: signing keys, verification, offline export.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Print a new random API key (once) and the lines for users.yaml.
    Keygen {
        /// The user the key is for (only used to print the YAML snippet).
        #[arg(long, default_value = "USER")]
        user: String,
        /// The user's role in the printed snippet (a user entry needs one).
        #[arg(long, default_value = "researcher")]
        role: String,
    },
    /// Print the api's OpenAPI 3.1 description (as in docs/openapi.json).
    Openapi,
    /// Generate NATS credentials (NKey seeds for the api, workers and readers,
    /// kept if present) and the nats-server authorization for a namespace.
    NatsAuth {
        /// Where the seeds (`api.nk`, `worker.nk`, `reader.nk`) and
        /// `authorization.conf` go.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "fetchml")]
        namespace: String,
    },
    /// Check a users file and report the first mistake precisely.
    CheckUsers {
        #[arg(default_value = "configs/users.yaml")]
        file: PathBuf,
    },
    /// (internal) Run a job's argv as the leader of its process group, stopping
    /// the group if the worker dies. Started by the worker.
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        parent: u32,
        #[arg(long, default_value_t = 10)]
        grace: u64,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Write a new Ed25519 signing key for the checkpoints to OUT (which must
    /// not exist; readable by its owner only) and print its id, its public key
    /// and the settings lines.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// The key's id (default: derived from its public key).
        #[arg(long, default_value = "")]
        id: String,
    },
    /// Verify the trail: the live log (the server's settings name the trusted
    /// keys), or with --file an export, offline. Exit status 0: intact; 2:
    /// broken (the first break is named).
    Verify {
        /// An export (from `fetchml audit export` or GET /v1/audit/export).
        #[arg(long)]
        file: Option<PathBuf>,
        /// A trusted public key: `ID=HEX` or `HEX` (repeatable).
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// Trusted keys as JSON: the answer of GET /v1/audit/keys.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Online: start from the latest signed checkpoint, not sequence 1.
        #[arg(long)]
        from_checkpoint: bool,
        /// Print the verdict as JSON (the shape of GET /v1/audit/verify).
        #[arg(long)]
        json: bool,
    },
    /// Write the events FROM..=TO with their chain entries and checkpoints as
    /// JSON Lines (see the README, "Audit").
    Export {
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Default: the last sequence at the start of the export.
        #[arg(long)]
        to: Option<u64>,
        /// Default: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ProjectionsAction {
    /// Rebuild NAME from sequence 1 into fresh tables and swap them in.
    Rebuild {
        /// The projection (`jobs` feeds every read model).
        name: String,
    },
    /// Print the checksum of every projected table.
    Checksums,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The supervisor sits between the worker and a job: no logging, no config.
    if let Command::Supervise { parent, grace, argv } = &cli.command {
        return fetchml_worker::supervise::supervise(*parent, std::time::Duration::from_secs(*grace), argv);
    }
    match &cli.command {
        Command::Keygen { user, role } => {
            fetchml_runtime::telemetry::init();
            return keygen(user, role);
        }
        Command::Audit { action: AuditAction::Keygen { out, id } } => {
            return audit_keygen(out, id);
        }
        Command::Audit { action: AuditAction::Verify { file: Some(file), public_keys, keys, json, .. } } => {
            return match trusted_keys(fetchml_audit::Keyring::default(), public_keys, keys.as_deref()) {
                Ok(ring) => verify_file(file, ring, *json),
                Err(e) => {
                    eprintln!("fetchml: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Openapi => {
            print!("{}", fetchml_api::openapi_json());
            return ExitCode::SUCCESS;
        }
        Command::NatsAuth { dir, namespace } => {
            return match nats_auth::generate(dir, namespace) {
                Ok(conf) => {
                    println!("{}", conf.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fetchml: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::CheckUsers { file } => {
            fetchml_runtime::telemetry::init();
            return match fetchml_identity::Directory::load(file) {
                Ok(d) => {
                    println!("ok: {} users", d.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fetchml: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fetchml: loading settings: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before the async runtime: the OTLP exporter's blocking HTTP client must
    // not be built, nor its last spans flushed, on a runtime thread.
    let telemetry = match fetchml_runtime::telemetry::init_with(&settings.telemetry, service_name(&cli.command)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fetchml: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match settings.runtime.build(default_threads(&cli.command)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fetchml: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli, settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fetchml: {e:#}");
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    telemetry.shutdown();
    code
}

/// Runtime threads when `runtime.threads` is unset (see `RuntimeSettings`):
/// a worker runs on one, the others on one per core.
fn default_threads(command: &Command) -> usize {
    match command {
        Command::Worker { .. } => 1,
        _ => 0,
    }
}

/// How this process is named in exported traces.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Api { .. } => "fetchml-api",
        Command::Worker { .. } => "fetchml-worker",
        Command::Scheduler => "fetchml-scheduler",
        Command::Projector => "fetchml-projector",
        _ => "fetchml",
    }
}

/// The first signal starts a graceful stop; a second one exits at once.
fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        fetchml_runtime::shutdown_signal().await;
        token.cancel();
        fetchml_runtime::shutdown_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    stop
}

async fn run(cli: Cli, mut settings: Settings) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Api { listen } => {
            if let Some(l) = listen {
                settings.api.listen = l;
            }
            settings.validate()?;
            let app = fetchml_api::Application::build(settings).await?;
            let stop = stop_on_signal();
            app.run_until_stopped(async move { stop.cancelled().await }).await?;
            tracing::info!("api stopped");
        }
        Command::Worker { pool, labels, concurrency } => {
            if let Some(p) = pool {
                settings.worker.pool = p;
            }
            if !labels.is_empty() {
                settings.worker.labels = labels;
            }
            if let Some(c) = concurrency {
                settings.worker.concurrency = c;
            }
            settings.validate()?;
            let worker = fetchml_worker::Worker::build(&settings).await?;
            worker.run(stop_on_signal()).await?;
            tracing::info!("worker stopped");
        }
        Command::Scheduler => {
            let store = open_store(&settings).await?;
            let source = fetchml_eventstore::LogSource::Direct(Box::new(store.clone()));
            fetchml_scheduler::Scheduler::new(store, settings.scheduling.clone(), settings.worker_ttl())
                .run(source, stop_on_signal())
                .await?;
            tracing::info!("scheduler stopped");
        }
        Command::Projector => {
            let store = open_store(&settings).await?;
            let pool = fetchml_projections::pool(&settings.postgres.url)?;
            fetchml_projections::Projector::new(
                pool,
                store,
                fetchml_projections::Batching::from(settings.projector_batching()),
            )
            .run(stop_on_signal())
            .await;
            tracing::info!("projector stopped");
        }
        Command::Projections { action } => {
            let pool = fetchml_projections::pool(&settings.postgres.url)?;
            match action {
                ProjectionsAction::Rebuild { name } => {
                    if name != fetchml_projections::JOBS {
                        anyhow::bail!(
                            "unknown projection {name:?}; the projections are: {}",
                            fetchml_projections::JOBS
                        );
                    }
                    let store = open_store(&settings).await?;
                    let started = std::time::Instant::now();
                    let stats = fetchml_projections::rebuild_with_stats(&pool, &store).await?;
                    println!(
                        "rebuilt {name} up to sequence {} in {:.1} s (read and fold {:.1} s, load and index {:.1} s of which indexing {:.1} s, swap {:.1} s)",
                        stats.seq,
                        started.elapsed().as_secs_f64(),
                        stats.read.as_secs_f64(),
                        stats.write.as_secs_f64(),
                        stats.index.as_secs_f64(),
                        stats.swap.as_secs_f64()
                    );
                }
                ProjectionsAction::Checksums => {
                    for (table, sum) in fetchml_projections::checksums(&pool).await? {
                        println!("{table} {sum}");
                    }
                }
            }
        }
        Command::Verify => return verify_online(&settings, &[], None, false, false).await,
        Command::Audit { action: AuditAction::Verify { file: None, public_keys, keys, from_checkpoint, json } } => {
            return verify_online(&settings, &public_keys, keys.as_deref(), from_checkpoint, json).await;
        }
        Command::Audit { action: AuditAction::Export { from, to, out } } => {
            export(&settings, from, to, out.as_deref()).await?;
        }
        Command::Supervise { .. }
        | Command::Keygen { .. }
        | Command::CheckUsers { .. }
        | Command::Openapi
        | Command::NatsAuth { .. }
        | Command::Audit { action: AuditAction::Keygen { .. } | AuditAction::Verify { file: Some(_), .. } } => {
            unreachable!("handled before the runtime starts")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn keygen(user: &str, role: &str) -> ExitCode {
    match fetchml_identity::generate_key() {
        Ok(k) => {
            println!("API key (shown once; give it to {user} and keep no copy):\n\n  {}\n", k.key);
            println!("Add under `users:` in users.yaml (a new user), or add the key under the user's `keys:`:\n");
            println!(
                "  - name: {user}\n    role: {role}\n    keys:\n      - id: {}\n        hash: \"{}\"",
                k.key_id, k.hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fetchml: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<EventStore> {
    let client =
        fetchml_eventstore::connect_secure(&settings.nats.url, "fetchml-cli", &settings.nats_security()).await?;
    Ok(EventStore::open(client, Subjects::new(settings.namespace()), &settings.stream_settings()).await?)
}

/// Adds the keys named on the command line to `ring`.
fn trusted_keys(
    mut ring: fetchml_audit::Keyring,
    public_keys: &[String],
    keys_file: Option<&std::path::Path>,
) -> anyhow::Result<fetchml_audit::Keyring> {
    for k in public_keys {
        ring.add(fetchml_audit::PublicKey::parse_arg(k)?);
    }
    if let Some(path) = keys_file {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let answer: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
        let listed = answer.get("keys").and_then(|k| k.as_array()).ok_or_else(|| {
            anyhow::anyhow!("{} has no \"keys\" list (the answer of GET /v1/audit/keys)", path.display())
        })?;
        for k in listed {
            let field = |name: &str| k.get(name).and_then(|v| v.as_str()).unwrap_or_default();
            ring.add(fetchml_audit::PublicKey::new(field("id"), field("public_key"))?);
        }
    }
    Ok(ring)
}

/// Prints the verdict; 0 when intact, 2 when broken.
fn report(verdict: &fetchml_audit::Verdict, json: bool) -> ExitCode {
    if json {
        let mut v = serde_json::to_value(verdict).unwrap_or_default();
        v["summary"] = serde_json::Value::String(verdict.to_string());
        println!("{v}");
    } else {
        println!("{verdict}");
    }
    if verdict.intact { ExitCode::SUCCESS } else { ExitCode::from(2) }
}

fn verify_file(file: &std::path::Path, keys: fetchml_audit::Keyring, json: bool) -> ExitCode {
    if keys.keys().is_empty() {
        eprintln!(
            "fetchml: name the trusted keys with --public-key or --keys (the keys an export lists are not trusted by themselves)"
        );
        return ExitCode::FAILURE;
    }
    let opened = std::fs::File::open(file).map(std::io::BufReader::new);
    let result =
        opened.map_err(fetchml_audit::AuditError::from).and_then(|r| fetchml_audit::export::verify_export(r, keys));
    match result {
        Ok(verdict) => report(&verdict, json),
        Err(e) => {
            eprintln!("fetchml: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

async fn verify_online(
    settings: &Settings,
    public_keys: &[String],
    keys_file: Option<&std::path::Path>,
    from_checkpoint: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (_, ring) = fetchml_api::audit_keys(&settings.audit)?;
    let ring = trusted_keys(ring, public_keys, keys_file)?;
    let client =
        fetchml_eventstore::connect_secure(&settings.nats.url, "fetchml-verify", &settings.nats_security()).await?;
    let store = EventStore::open_existing(client, Subjects::new(settings.namespace())).await?;
    let from = if from_checkpoint {
        fetchml_audit::online::From::LatestCheckpoint
    } else {
        fetchml_audit::online::From::Start
    };
    let verdict = fetchml_audit::online::verify_store(&store, ring, from).await?;
    Ok(report(&verdict, json))
}

async fn export(settings: &Settings, from: u64, to: Option<u64>, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Write;
    let (_, ring) = fetchml_api::audit_keys(&settings.audit)?;
    let client =
        fetchml_eventstore::connect_secure(&settings.nats.url, "fetchml-export", &settings.nats_security()).await?;
    let store = EventStore::open_existing(client, Subjects::new(settings.namespace())).await?;
    let mut lines = fetchml_audit::online::export(&store, ring.keys().to_vec(), from, to).await?;
    // A command-line tool with one task: blocking writes are fine here.
    let mut sink: Box<dyn Write + Send> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    while let Some(chunk) = lines.next().await {
        sink.write_all(&chunk?)?;
    }
    sink.flush()?;
    Ok(())
}

fn audit_keygen(out: &std::path::Path, id: &str) -> ExitCode {
    match fetchml_audit::checkpoint::generate_key_file(out, id) {
        Ok(key) => {
            println!("signing key written to {} (keep it secret; back it up)", out.display());
            println!("key id:     {}\npublic key: {}\n", key.id(), key.public_hex());
            println!("settings (server.yaml):\n\n  audit:\n    signing_key_file: {}", out.display());
            println!(
                "\nafter a rotation, keep the old key verifiable:\n\n  audit:\n    trusted_keys:\n      - id: {}\n        public_key: \"{}\"",
                key.id(),
                key.public_hex()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fetchml: {e}");
            ExitCode::FAILURE
        }
    }
}
