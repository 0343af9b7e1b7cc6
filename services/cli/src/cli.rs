//! The command line: every command, flag and example, as clap derives it.
//! Completions (`ml completions`) and the man page (`ml man`) are generated
//! from these definitions, so they cannot drift from them.

use crate::output::ColorChoice;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const ABOUT: &str = "ml: queue, watch and compare fetchml jobs from the terminal";

const EXAMPLES: &str = "\
Examples:
  ml login --api https://fetchml.example.org
  ml queue --pool gpu --gpus 1 --experiment resnet --tag lr=0.1 -- python train.py --lr 0.1
  ml queue --grid lr=0.1,0.01 --grid bs=32,64 --experiment sweep -- python train.py --lr {lr} --bs {bs}
  ml watch 01a20adb-3701-713e-9175-763a289b5a9f
  ml list --state running --experiment resnet
  ml experiment resnet --sort=-accuracy
  ml logs -f 01a20adb-3701-713e-9175-763a289b5a9f";

/// Environment variables, in `ml --help`.
const ENVIRONMENT: &str = "\
Environment:
  FETCHML_API       the api's URL (overrides the profile's)
  FETCHML_API_KEY   an API key to use instead of the profile's session
  FETCHML_PROFILE   the profile to use (default: default)
  FETCHML_CA_FILE   a PEM file of CA certificates to trust
  FETCHML_CONFIG    the config file (default: $XDG_CONFIG_HOME/fetchml/config.yaml)
  NO_COLOR          no colour, whatever the terminal";

#[derive(Parser)]
#[command(name = "ml", version, about = ABOUT, long_about = None)]
#[command(after_help = after_help(), after_long_help = after_help())]
#[command(propagate_version = true, arg_required_else_help = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

fn after_help() -> String {
    format!("{EXAMPLES}\n\n{ENVIRONMENT}\n\n{}", crate::error::EXIT_CODES_HELP)
}

#[derive(Args)]
pub struct Global {
    /// The fetchml api, e.g. https://fetchml.example.org [default: the profile's, else http://127.0.0.1:9101]
    #[arg(long, global = true, env = "FETCHML_API", value_name = "URL")]
    pub api: Option<String>,
    /// The profile of the config file to use (one per server or identity).
    #[arg(long, global = true, env = "FETCHML_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
    /// Trust the CA certificates of this PEM file (an api behind a private CA).
    #[arg(long, global = true, env = "FETCHML_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Print data as JSON (the api's answer shapes; see the README's CLI section).
    #[arg(long, global = true)]
    pub json: bool,
    /// When to colour the output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
}

#[derive(Subcommand)]
pub enum Command {
    /// Log in: exchange an API key for a session token, stored in your config file (mode 0600).
    #[command(after_help = "The key is read without echo from the terminal, or from standard input when it is not \
                            a terminal (`--with-key-stdin`), or from FETCHML_API_KEY.\n\n\
                            Example:\n  ml login --api https://fetchml.example.org --profile prod")]
    Login(LoginArgs),
    /// Log out: revoke the stored session and remove it from the config file.
    Logout,
    /// Who you are on the api: user, role, groups, permissions.
    Whoami,
    /// Queue a job (or a batch, or a sweep): `ml queue [OPTIONS] -- CMD ARGS...`.
    #[command(visible_alias = "submit", after_help = QUEUE_HELP)]
    Queue(Box<QueueArgs>),
    /// Follow jobs live: progress, metrics, state changes, last log lines; exit with the outcome.
    #[command(after_help = "Exits with the job's own exit code (0 when it succeeded); with several jobs, the first \
                            failed job's. The stream resumes by itself after a dropped connection.\n\n\
                            Example:\n  ml watch 01a20adb-3701-713e-9175-763a289b5a9f")]
    Watch(WatchArgs),
    /// Wait until jobs end, quietly; exit with the outcome (as `watch`).
    Wait(WaitArgs),
    /// List jobs, newest first.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  ml list --state running\n  ml list --experiment resnet --tag lr=0.1 --all\n  ml list --watch"
    )]
    List(ListArgs),
    /// Show one job.
    #[command(visible_alias = "show")]
    Status(JobArg),
    /// A job's history: its events with actor, time, attempt and worker.
    #[command(visible_alias = "events")]
    History(JobArg),
    /// A job's log lines (`-f` follows until it ends).
    #[command(after_help = "Examples:\n  ml logs JOB --tail 20\n  ml logs -f JOB\n  ml logs JOB --since 10m")]
    Logs(LogsArgs),
    /// Cancel jobs.
    Cancel(CancelArgs),
    /// Queue failed, timed-out, dead-lettered or cancelled jobs again.
    Retry(RetryArgs),
    /// Experiments: jobs by state and metric ranges.
    Experiments,
    /// One experiment's runs, with their tags and metrics side by side.
    #[command(after_help = "Example:\n  ml experiment resnet --sort=-accuracy")]
    Experiment(ExperimentArgs),
    /// Compare jobs: their specs diffed, their metrics side by side.
    Compare(CompareArgs),
    /// The worker fleet: pools, labels, running/concurrency.
    Workers(WorkersArgs),
    /// Queue depth per pool and priority, the oldest wait, running jobs, workers
    /// and free slots; `pause`/`resume` a pool (admins).
    #[command(
        visible_alias = "queue-depth",
        after_help = "Examples:\n  ml pools\n  ml pools pause gpu --reason 'driver upgrade'\n  ml pools resume gpu"
    )]
    Pools(PoolsArgs),
    /// Resources held by ended attempts (slot, GPU and CPU hours), per user, group, pool and day.
    #[command(
        after_help = "Researchers see their own usage, admins everyone's, analysts per pool and day.\n\n                            Examples:\n  ml usage\n  ml usage --by user,pool --since 2026-11-01\n  \
                            ml usage --by group --json"
    )]
    Usage(UsageArgs),
    /// The audit trail (admins): list it, export it, verify it with or without a server.
    #[command(
        subcommand,
        after_help = "Examples:\n  ml audit list --refused --since 2026-11-01T00:00:00Z\n  \
                                         ml audit keys > keys.json\n  ml audit export --out trail.jsonl\n  \
                                         ml audit verify --file trail.jsonl --keys keys.json   # no server needed"
    )]
    Audit(AuditCommand),
    /// Print a shell completion script: `ml completions bash > /etc/bash_completion.d/ml`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `ml man > ml.1 && man ./ml.1`.
    Man,
}

const QUEUE_HELP: &str = "\
Everything after `--` is the command (argv; no shell unless --shell).

Examples:
  ml queue -- python train.py --lr 0.1
  ml queue --pool gpu --label a100 --gpus 1 --memory 32G --timeout 2h -- python train.py
  ml queue --from-file job.yaml --priority 8
  ml queue --dry-run --env-file .env -- ./run.sh
  ml queue --batch jobs.jsonl
  ml queue --grid lr=0.1,0.01 --grid bs=32,64 -- python train.py --lr {lr} --bs {bs}

A grid queues one job per combination of the values, in one request: `{name}` in the
command is replaced by the value, each job is tagged name=value and gets the variable
FETCHML_PARAM_<NAME>=value. A grid or batch is sent with one Idempotency-Key, derived
from its content unless --idempotency-key is given: running it again queues nothing new.";

#[derive(Args)]
pub struct LoginArgs {
    /// Read the API key from standard input (as when stdin is not a terminal).
    #[arg(long)]
    pub with_key_stdin: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Executor {
    Process,
    Podman,
    Noop,
    Sleep,
    Fail,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RetryOn {
    Infrastructure,
    Code,
    Resource,
    Unknown,
}

#[derive(Args)]
pub struct QueueArgs {
    /// A job spec (YAML or JSON, the api's job spec); flags override its fields.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// A file of job specs, one JSON object per line; flags apply to each.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["from_file", "grid"])]
    pub batch: Option<PathBuf>,
    /// NAME=V1,V2,...: one job per combination of all grids (repeatable).
    #[arg(long, value_name = "NAME=V1,V2")]
    pub grid: Vec<String>,
    /// The worker pool [default: default].
    #[arg(long, help_heading = "Placement")]
    pub pool: Option<String>,
    /// A label the worker must have, e.g. a100 (repeatable).
    #[arg(long = "label", value_name = "LABEL", help_heading = "Placement")]
    pub labels: Vec<String>,
    /// CPUs the job needs.
    #[arg(long, help_heading = "Placement")]
    pub cpus: Option<u32>,
    /// Memory, e.g. 512M, 16G (MiB without a unit).
    #[arg(long, value_name = "SIZE", help_heading = "Placement")]
    pub memory: Option<String>,
    /// GPUs the job needs.
    #[arg(long, help_heading = "Placement")]
    pub gpus: Option<u32>,
    /// 1 (lowest) to 10 (highest) [default: 5].
    #[arg(long, help_heading = "Placement")]
    pub priority: Option<u8>,
    /// Longest run of one attempt, e.g. 90s, 2h30m (seconds without a unit).
    #[arg(long, value_name = "DURATION", help_heading = "Limits")]
    pub timeout: Option<String>,
    /// Retries after the first attempt (0: never retry) [default: 2].
    #[arg(long, help_heading = "Limits")]
    pub retries: Option<u32>,
    /// Failure classes that are retried [default: infrastructure].
    #[arg(long, value_enum, value_delimiter = ',', help_heading = "Limits")]
    pub retry_on: Vec<RetryOn>,
    /// The experiment the job is a run of (`ml experiment NAME`).
    #[arg(long, help_heading = "Bookkeeping")]
    pub experiment: Option<String>,
    /// KEY=VALUE, free-form (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", help_heading = "Bookkeeping")]
    pub tags: Vec<String>,
    /// KEY=VALUE in the job's environment (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", help_heading = "Environment")]
    pub env: Vec<String>,
    /// A file of KEY=VALUE lines (# comments, blank lines, `export` allowed); --env wins.
    #[arg(long, value_name = "FILE", help_heading = "Environment")]
    pub env_file: Vec<PathBuf>,
    /// The folder to run in, relative to the worker's job root.
    #[arg(long, help_heading = "Environment")]
    pub workdir: Option<String>,
    /// How the job runs: a process (default), in a podman container, or a
    /// built-in for tests (noop, sleep MS, fail CODE).
    #[arg(long, value_enum, help_heading = "Environment")]
    pub executor: Option<Executor>,
    /// The container image (the podman executor).
    #[arg(long, help_heading = "Environment")]
    pub image: Option<String>,
    /// Run the command joined by spaces through /bin/sh -c.
    #[arg(long, help_heading = "Environment")]
    pub shell: bool,
    /// A retried queue with the same key names the same job(s) and stores nothing new.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Let the api validate the job (or each of a batch or grid) and print it; queue nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the job(s) live after queueing (see `ml watch`).
    #[arg(long, conflicts_with = "wait")]
    pub watch: bool,
    /// Wait quietly until the job(s) end and exit with the outcome.
    #[arg(long)]
    pub wait: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Job ids.
    #[arg(required = true, value_name = "JOB")]
    pub jobs: Vec<String>,
    /// How many of the last log lines to show under a live progress bar.
    #[arg(long, default_value_t = 5)]
    pub lines: usize,
}

#[derive(Args)]
pub struct WaitArgs {
    #[arg(required = true, value_name = "JOB")]
    pub jobs: Vec<String>,
}

#[derive(Args)]
pub struct JobArg {
    #[arg(value_name = "JOB")]
    pub job: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum State {
    Queued,
    Running,
    RetryScheduled,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    DeadLettered,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long, value_enum)]
    pub state: Option<State>,
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long)]
    pub pool: Option<String>,
    #[arg(long)]
    pub experiment: Option<String>,
    /// KEY=VALUE: jobs with this tag.
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Option<String>,
    /// Jobs created after this: an RFC 3339 time, or a duration ago (30m, 2d).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Jobs created before this: an RFC 3339 time, or a duration ago.
    #[arg(long, value_name = "WHEN")]
    pub before: Option<String>,
    /// Oldest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// Jobs per page (1-500).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Every page, not just the first.
    #[arg(long, conflicts_with = "cursor")]
    pub all: bool,
    /// Start at this page (a `next` from `--json`).
    #[arg(long)]
    pub cursor: Option<String>,
    /// The list as it was at this sequence of the log.
    #[arg(long, value_name = "SEQ", conflicts_with = "as_of")]
    pub as_of_seq: Option<u64>,
    /// The list as it was at this time (RFC 3339, or a duration ago).
    #[arg(long, value_name = "WHEN")]
    pub as_of: Option<String>,
    /// Keep the table up to date as jobs change (Ctrl-C to stop).
    #[arg(long, short = 'w', conflicts_with_all = ["as_of_seq", "as_of", "all"])]
    pub watch: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    #[arg(value_name = "JOB")]
    pub job: String,
    /// Keep printing new lines until the job ends.
    #[arg(long, short)]
    pub follow: bool,
    /// Only lines from then on: an RFC 3339 time, or a duration ago (10m).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only the last N lines (then new ones with -f).
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<usize>,
}

#[derive(Args)]
pub struct CancelArgs {
    #[arg(required = true, value_name = "JOB")]
    pub jobs: Vec<String>,
    /// Recorded in the job's history.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Args)]
pub struct RetryArgs {
    #[arg(required = true, value_name = "JOB")]
    pub jobs: Vec<String>,
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Args)]
pub struct ExperimentArgs {
    pub name: String,
    /// Order runs by a metric's last value, `-metric` for descending.
    #[arg(long, value_name = "METRIC", allow_hyphen_values = true)]
    pub sort: Option<String>,
}

#[derive(Args)]
pub struct CompareArgs {
    #[arg(required = true, num_args = 2.., value_name = "JOB")]
    pub jobs: Vec<String>,
    /// Every spec field, not only those that differ.
    #[arg(long)]
    pub all: bool,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Events of every family, newest first: who did what, logins and refusals included.
    List(AuditListArgs),
    /// The public keys checkpoints are verified with (the file `verify --keys` reads).
    Keys,
    /// Write the trail (events, chain and signed checkpoints) as JSON Lines.
    Export(AuditExportArgs),
    /// Verify an export offline (--file), or ask the api to verify the live log.
    Verify(AuditVerifyArgs),
}

#[derive(Args)]
pub struct AuditListArgs {
    /// `job`, `user`, `worker` or `audit`.
    #[arg(long)]
    pub family: Option<String>,
    /// A user name, worker id or system component.
    #[arg(long)]
    pub actor: Option<String>,
    /// A job id, user name or worker id.
    #[arg(long)]
    pub aggregate: Option<String>,
    /// One event type, e.g. `access_denied`.
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Only refusals and failed logins.
    #[arg(long)]
    pub refused: bool,
    /// RFC 3339, inclusive.
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339, exclusive.
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Oldest first.
    #[arg(long)]
    pub oldest: bool,
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(usize))]
    pub limit: usize,
    /// Continue from a previous listing's `next`.
    #[arg(long)]
    pub cursor: Option<u64>,
    /// Every matching event, page after page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args)]
pub struct AuditExportArgs {
    /// The first stream sequence (default 1).
    #[arg(long)]
    pub from: Option<u64>,
    /// The last stream sequence (default: the last when asked).
    #[arg(long)]
    pub to: Option<u64>,
    /// The file to write (default: standard output).
    #[arg(long, short)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct AuditVerifyArgs {
    /// An export to verify here, with no server.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// A trusted key, `ID=HEX` (repeatable).
    #[arg(long = "public-key")]
    pub public_keys: Vec<String>,
    /// A file of trusted keys: the answer of `ml audit keys`.
    #[arg(long)]
    pub keys: Option<std::path::PathBuf>,
    /// Online: replay from the latest signed checkpoint instead of sequence 1.
    #[arg(long)]
    pub from_checkpoint: bool,
}

#[derive(Args)]
pub struct UsageArgs {
    /// First day (UTC, YYYY-MM-DD), inclusive; default 29 days before --until.
    #[arg(long)]
    pub since: Option<chrono::NaiveDate>,
    /// Last day (UTC, YYYY-MM-DD), inclusive; default today.
    #[arg(long)]
    pub until: Option<chrono::NaiveDate>,
    /// Sum by these, comma-separated: user, group, pool, day ("" for one total).
    #[arg(long, default_value = "day")]
    pub by: String,
}

#[derive(Args)]
pub struct WorkersArgs {
    /// Every worker ever started, not just the live ones.
    #[arg(long)]
    pub history: bool,
    #[command(subcommand)]
    pub action: Option<WorkerAction>,
}

#[derive(Subcommand)]
pub enum WorkerAction {
    /// Let a worker finish what runs and give it nothing new (admins).
    Drain {
        /// The worker's id, as `ml workers` lists it.
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Args)]
pub struct PoolsArgs {
    #[command(subcommand)]
    pub action: Option<PoolAction>,
}

#[derive(Subcommand)]
pub enum PoolAction {
    /// Start nothing new in a pool; waiting jobs keep their place (admins).
    Pause {
        pool: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start jobs in a paused pool again (admins).
    Resume { pool: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn queue_takes_the_command_after_the_separator() {
        let cli = Cli::try_parse_from(["ml", "submit", "--label", "a", "--label", "b", "--", "python", "-c", "x"])
            .expect("parses");
        let Command::Queue(q) = cli.command else { panic!("queue") };
        assert_eq!(q.labels, ["a", "b"]);
        assert_eq!(q.command, ["python", "-c", "x"]);
    }
}
