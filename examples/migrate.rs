//! The migration tool: a thin CLI over `interview_store::migrate`.
//!
//! `cargo run --release --example migrate -- <command> …`; see `--help` and
//! docs/cutover.md. Exit status: 0 done, 1 the two sides differ (verify,
//! compare), 2 invalid data or usage (`--truncate` without `--yes` too), 3 a
//! database or file failed, or another migration command is running on the
//! same PostgreSQL database; 4 to 9 a refusal, by its kind
//! (`interview_store::error::Refusal::exit_code`).
//!
//! The commands, their flags and `--help` are in `support/cli.rs`; each
//! command's work, rules and report (with its `Display`) are in the library.
//! This file parses, dispatches, prints and picks the exit status.

use std::fmt::Display;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{self, CopyOptions, Selection, SyncOptions};
use interview_store::Error;

#[path = "support/checklist.rs"]
mod checklist;
#[path = "support/cli.rs"]
mod cli;
#[path = "support/progress.rs"]
mod progress;

use cli::{Cli, Command};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli.command, Out { json: cli.json }) {
        Ok(code) => code,
        Err(e) => {
            match e.refusal() {
                Some(why) => log::error!("refused ({why}): {e}"),
                None => log::error!("{e}"),
            }
            if let Error::InvalidSource { rejects, .. } = &e {
                for r in rejects {
                    eprintln!("{r}");
                }
            }
            ExitCode::from(failure_code(&e))
        }
    }
}

/// The exit status of a failed command: a refusal's kind decides its own
/// (`Refusal::exit_code`); other invalid input is 2, anything else 3.
fn failure_code(e: &Error) -> u8 {
    match (e.refusal(), e.category()) {
        (Some(why), _) => why.exit_code(),
        (None, interview_store::Category::Input) => 2,
        (None, _) => 3,
    }
}

/// Where reports go: their `Display` on stdout, or JSON with `--json`.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    /// Prints a command's report (one pretty JSON object).
    fn report<R: Display + serde::Serialize>(self, report: &R) {
        self.print(report, serde_json::to_string_pretty)
    }

    /// Prints one report of a stream (one JSON line).
    fn line<R: Display + serde::Serialize>(self, report: &R) {
        self.print(report, serde_json::to_string)
    }

    fn print<R: Display + serde::Serialize>(
        self,
        report: &R,
        to_json: fn(&R) -> serde_json::Result<String>,
    ) {
        if self.json {
            println!("{}", to_json(report).expect("reports serialise"));
        } else {
            println!("{report}");
        }
    }

    /// Prints the report of a command that succeeded.
    fn done<R: Display + serde::Serialize>(self, report: &R) -> interview_store::Result<ExitCode> {
        self.report(report);
        Ok(ExitCode::SUCCESS)
    }
}

/// Exit 0 when `ok`, else `code`.
fn exit(ok: bool, code: u8) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    }
}

fn run(command: Command, out: Out) -> interview_store::Result<ExitCode> {
    match command {
        Command::Check { sqlite } => {
            let report = migrate::check(&sqlite.path)?;
            if out.json {
                out.report(&report);
            } else {
                println!("{}", report.of(&sqlite.path));
            }
            Ok(exit(report.is_clean(), 2))
        }
        Command::Setup { postgres, sqlite } => {
            out.done(&migrate::setup(&postgres.url(), sqlite.as_deref())?)
        }
        Command::Copy {
            sqlite,
            postgres,
            batch_size,
            reject_file,
            truncate,
            yes,
            rebuild_connections,
            rebuild_memory_mb,
        } => {
            let defaults = CopyOptions::default();
            let opts = CopyOptions {
                batch_size,
                reject_file,
                truncate,
                confirmed: yes,
                progress: Some(progress::reporter()),
                rebuild_connections: rebuild_connections
                    .map_or(defaults.rebuild_connections, usize::from),
                rebuild_memory_mb,
                ..defaults
            };
            out.done(&migrate::copy(&sqlite.path, &postgres.url(), &opts)?)
        }
        Command::Sync {
            sqlite,
            postgres,
            reject_file,
        } => {
            let opts = SyncOptions { reject_file };
            out.done(&migrate::sync(&sqlite.path, &postgres.url(), &opts)?)
        }
        Command::Follow {
            sqlite,
            postgres,
            reverse,
            report_secs,
            reject_file,
            metrics_addr,
        } => follow(
            &sqlite.path,
            &postgres.url(),
            &migrate::FollowOptions {
                reverse,
                report_every: Duration::from_secs(report_secs.max(1)),
                reject_file,
                ..Default::default()
            },
            out,
            metrics_addr,
        ),
        Command::Verify {
            sqlite,
            postgres,
            live,
            record,
        } => {
            let verify = if record {
                migrate::verify_and_record
            } else {
                migrate::verify
            };
            let report = verify(&sqlite.path, &postgres.url())?;
            out.report(&report);
            let ok = report.is_equal() || (live && report.is_equal_but_in_flight());
            Ok(exit(ok, 1))
        }
        Command::Compare {
            sqlite,
            postgres,
            sample,
            session,
        } => {
            let selection = if session.is_empty() {
                Selection::Sample(sample)
            } else {
                Selection::Sessions(session)
            };
            let report = migrate::compare_databases(&sqlite.path, &postgres.url(), &selection)?;
            out.report(&report);
            Ok(exit(report.is_equal(), 1))
        }
        Command::Backup { sqlite, out: file } => out.done(&migrate::backup(&sqlite.path, &file)?),
        Command::Switch {
            sqlite,
            postgres,
            to,
        } => out.done(&migrate::switch(
            &sqlite.path,
            &postgres.url(),
            to.backend(),
        )?),
        Command::RollbackSync { postgres, sqlite } => {
            out.done(&migrate::rollback_sync(&sqlite.path, &postgres.url())?)
        }
        Command::Pause { database } => out.done(&migrate::pause(&database.url()?)?),
        Command::Resume { database } => out.done(&migrate::resume(&database.url()?)?),
        Command::Checklist {
            server,
            backend,
            sqlite,
            postgres,
            timeout_secs,
        } => {
            let timeout = Duration::from_secs(timeout_secs);
            let mut steps = checklist::run(&server, backend.as_str(), timeout);
            if let (Some(path), Some(url)) = (sqlite, postgres) {
                steps.push(checklist::row_counts(&path, &url, backend));
            }
            let report = checklist::Checklist { steps };
            out.report(&report);
            Ok(exit(report.failed() == 0, 1))
        }
        Command::Status { postgres, sqlite } => {
            out.done(&migrate::status_of(&postgres.url(), sqlite.as_deref())?)
        }
    }
}

/// `follow --metrics-addr`: serves the follower's reports on `/metrics`; the
/// returned function records one report.
#[cfg(feature = "server")]
fn follow_metrics(
    addr: Option<std::net::SocketAddr>,
) -> interview_store::Result<fn(&migrate::FollowStatus)> {
    let Some(addr) = addr else {
        return Ok(|_| {});
    };
    let io = |e| Error::Io {
        path: format!("--metrics-addr {addr}"),
        source: e,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(io)?;
    let bound = listener.local_addr().map_err(io)?;
    interview_store::server::metrics::serve_in_background(listener).map_err(io)?;
    eprintln!("follow: metrics on http://{bound}/metrics");
    Ok(interview_store::server::metrics::follower)
}

#[cfg(not(feature = "server"))]
fn follow_metrics(
    addr: Option<std::net::SocketAddr>,
) -> interview_store::Result<fn(&migrate::FollowStatus)> {
    match addr {
        None => Ok(|_| {}),
        Some(_) => Err(Error::invalid(
            "--metrics-addr",
            "this build has no metrics exporter: build with `--features server`",
        )),
    }
}

/// `follow`: runs the follower until a signal or the switch, printing its lag.
fn follow(
    sqlite: &std::path::Path,
    postgres: &DatabaseUrl,
    opts: &migrate::FollowOptions,
    out: Out,
    metrics_addr: Option<std::net::SocketAddr>,
) -> interview_store::Result<ExitCode> {
    let export = follow_metrics(metrics_addr)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| Error::Io {
            path: "signal handler".into(),
            source: e,
        })?;
    }
    let end = migrate::follow(sqlite, postgres, opts, &stop, |s| {
        export(s);
        out.line(s);
    })?;
    let ended = migrate::FollowEnded::new(end, opts.reverse, sqlite, postgres);
    out.line(&ended);
    Ok(ExitCode::SUCCESS)
}
