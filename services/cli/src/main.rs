//! `ml`, the fetchml command-line client. Data goes to stdout (tables, or the
//! api's answer shapes with `--json`), diagnostics to stderr; every failure is
//! one line with a documented exit code (see [`error::code`]).

mod cli;
mod client;
mod commands;
mod config;
mod error;
mod output;
mod tls;

use clap::{CommandFactory as _, Parser as _};
use cli::{Cli, Command};
use commands::Ctx;
use error::{CliError, code};
use output::{Out, RED};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out::new(cli.global.json, cli.global.color);
    // Generated from the definitions; no api needed.
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "ml", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    report(&out, "", &CliError::local("man page", e));
                    ExitCode::from(code::ERROR)
                }
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            report(&out, "", &CliError::local("starting", e));
            return ExitCode::from(code::ERROR);
        }
    };
    match runtime.block_on(run(cli, out)) {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            report(&out, "", &e);
            e.exit()
        }
    }
}

/// Prints an error as one line (and a hint on a second), on stderr.
pub fn report(out: &Out, context: &str, e: &CliError) {
    let prefix = if context.is_empty() { String::new() } else { format!("{context}: ") };
    eprintln!("{} {prefix}{e}", out.err_paint("ml:", RED));
    if let Some(h) = e.hint() {
        eprintln!("    {h}");
    }
}

async fn run(cli: Cli, out: Out) -> Result<u8, CliError> {
    let g = &cli.global;
    let overrides = config::Overrides {
        api: g.api.clone().filter(|a| !a.is_empty()),
        profile: g.profile.clone().filter(|p| !p.is_empty()),
        ca_file: g.ca_file.clone().filter(|p| !p.as_os_str().is_empty()),
        api_key: std::env::var("FETCHML_API_KEY").ok().filter(|k| !k.is_empty()),
    };
    let target = config::Target::resolve(&overrides)?;
    let api = client::Api::new(&target)?;
    let ctx = Ctx { out, target, api };
    let ok = |r: Result<(), CliError>| r.map(|()| code::OK);
    match &cli.command {
        Command::Login(a) => ok(commands::auth::login(&ctx, a).await),
        Command::Logout => ok(commands::auth::logout(&ctx).await),
        Command::Whoami => ok(commands::auth::whoami(&ctx).await),
        Command::Queue(a) => commands::queue::run(&ctx, a).await,
        Command::Watch(a) => commands::watch::run(&ctx, &a.jobs, commands::watch::Mode::Live, a.lines).await,
        Command::Wait(a) => commands::watch::run(&ctx, &a.jobs, commands::watch::Mode::Quiet, 0).await,
        Command::List(a) => ok(commands::jobs::list(&ctx, a).await),
        Command::Status(a) => ok(commands::jobs::status(&ctx, a).await),
        Command::History(a) => ok(commands::jobs::history(&ctx, a).await),
        Command::Logs(a) => ok(commands::jobs::logs(&ctx, a).await),
        Command::Cancel(a) => commands::jobs::cancel(&ctx, a).await,
        Command::Retry(a) => commands::jobs::retry(&ctx, a).await,
        Command::Experiments => ok(commands::experiments::list(&ctx).await),
        Command::Experiment(a) => ok(commands::experiments::show(&ctx, a).await),
        Command::Compare(a) => ok(commands::experiments::compare(&ctx, a).await),
        Command::Workers(a) => ok(commands::fleet::workers(&ctx, a).await),
        Command::Pools(a) => ok(commands::fleet::pools(&ctx, a).await),
        Command::Usage(a) => ok(commands::usage::show(&ctx, a).await),
        Command::Audit(cli::AuditCommand::List(a)) => ok(commands::audit::list(&ctx, a).await),
        Command::Audit(cli::AuditCommand::Keys) => ok(commands::audit::keys(&ctx).await),
        Command::Audit(cli::AuditCommand::Export(a)) => ok(commands::audit::export(&ctx, a).await),
        Command::Audit(cli::AuditCommand::Verify(a)) => commands::audit::verify(&ctx, a).await,
        Command::Completions { .. } | Command::Man => Ok(code::OK),
    }
}
