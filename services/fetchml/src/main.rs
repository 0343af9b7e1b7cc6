//! `fetchml`: the server-side binary. Each subcommand is a thin shell around a
//! library (`fetchml-api`, `fetchml-worker`, `fetchml-dispatcher`).

mod nats_auth;

use clap::{Parser, Subcommand};
use fetchml_events::hash::ChainVerifier;
use fetchml_events::subject::Subjects;
use fetchml_eventstore::{EventStore, StartAt};
use fetchml_runtime::Settings;
use futures::StreamExt;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

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
    /// Run the HTTP api (and, by default, the dispatcher).
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
    /// Run a standalone dispatcher (EVENTS → DISPATCH).
    Dispatcher,
    /// Run a standalone projector (event log → Postgres read models).
    Projector,
    /// Manage the read models.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Replay the whole event log and check every hash link; names the first
    /// broken one.
    Verify,
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
    let runtime = match tokio::runtime::Runtime::new() {
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

/// How this process is named in exported traces.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Api { .. } => "fetchml-api",
        Command::Worker { .. } => "fetchml-worker",
        Command::Dispatcher => "fetchml-dispatcher",
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
        Command::Dispatcher => {
            let store = open_store(&settings).await?;
            fetchml_dispatcher::run(store, stop_on_signal()).await?;
            tracing::info!("dispatcher stopped");
        }
        Command::Projector => {
            let store = open_store(&settings).await?;
            let pool = fetchml_projections::pool(&settings.postgres.url)?;
            fetchml_projections::Projector::new(pool, store, fetchml_projections::Batching::default())
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
        Command::Verify => return verify(&settings).await,
        Command::Supervise { .. }
        | Command::Keygen { .. }
        | Command::CheckUsers { .. }
        | Command::Openapi
        | Command::NatsAuth { .. } => {
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
        fetchml_eventstore::connect_with(&settings.nats.url, "fetchml-cli", settings.nats.nkey_file.as_deref()).await?;
    Ok(EventStore::open(client, Subjects::new(settings.namespace()), &settings.stream_settings()).await?)
}

async fn verify(settings: &Settings) -> anyhow::Result<ExitCode> {
    let client =
        fetchml_eventstore::connect_with(&settings.nats.url, "fetchml-verify", settings.nats.nkey_file.as_deref())
            .await?;
    let store = EventStore::open_existing(client, Subjects::new(settings.namespace())).await?;
    let last = store.last_sequence().await?;
    let mut verifier = ChainVerifier::new();
    if last > 0 {
        let mut events = store.read(&store.subjects().all_events(), StartAt::Beginning).await?;
        while let Some(ev) = events.next().await {
            let ev = ev?;
            let json = ev.json()?;
            if let Err(broken) = verifier.check(ev.seq, &json) {
                println!("BROKEN: {broken}");
                return Ok(ExitCode::from(2));
            }
            if ev.seq >= last {
                break;
            }
        }
    }
    println!("ok: {} events verified up to sequence {last}", verifier.checked());
    Ok(ExitCode::SUCCESS)
}
