//! The migration tool: a thin CLI over `interview_store::migrate`.
//!
//! `cargo run --release --example migrate -- <command> …`; see `--help` and
//! docs/cutover.md. Exit status: 0 done, 1 the two sides differ (verify,
//! compare), 2 invalid data or usage, or refused (wrong phase, `--truncate`
//! without `--yes`), 3 a database or file failed, or another migration command
//! is running on the same PostgreSQL database.
//!
//! The commands, their flags and `--help` are in `support/cli.rs`; each
//! command's work, rules and report (with its `Display`) are in the library.
//! This file parses, dispatches, prints and picks the exit status.

use std::fmt::Display;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{self, CopyOptions, Progress, Selection, SyncOptions, Table};
use interview_store::Error;

#[path = "support/checklist.rs"]
mod checklist;
#[path = "support/cli.rs"]
mod cli;

use cli::{Cli, Command};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            if let Error::InvalidSource { rejects, .. } = &e {
                for r in rejects {
                    eprintln!("{r}");
                }
            }
            match e.category() {
                interview_store::Category::Input => ExitCode::from(2),
                _ => ExitCode::from(3),
            }
        }
    }
}

/// How a report prints as JSON: one pretty object, or one line (a stream of them).
#[derive(Clone, Copy)]
enum Json {
    Pretty,
    Line,
}

/// Prints a report: its `Display`, or JSON when asked.
fn print<R: Display + serde::Serialize>(report: &R, as_json: bool, style: Json) {
    if !as_json {
        println!("{report}");
        return;
    }
    let shown = match style {
        Json::Pretty => serde_json::to_string_pretty(report),
        Json::Line => serde_json::to_string(report),
    };
    println!("{}", shown.expect("reports serialise"));
}

/// Exit 0 when `ok`, else `code`.
fn exit(ok: bool, code: u8) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    }
}

fn run(command: Command) -> interview_store::Result<ExitCode> {
    match command {
        Command::Check { sqlite, json } => {
            let report = migrate::check(&sqlite.path)?;
            if json {
                print(&report, true, Json::Pretty);
            } else {
                println!("{}", report.of(&sqlite.path));
            }
            Ok(exit(report.is_clean(), 2))
        }
        Command::Setup { postgres, sqlite } => {
            println!("{}", migrate::setup(&postgres.url(), sqlite.as_deref())?);
            Ok(ExitCode::SUCCESS)
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
                progress: Some(progress_reporter()),
                rebuild_connections: rebuild_connections
                    .map_or(defaults.rebuild_connections, usize::from),
                rebuild_memory_mb,
                ..defaults
            };
            println!("{}", migrate::copy(&sqlite.path, &postgres.url(), &opts)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            sqlite,
            postgres,
            reject_file,
        } => {
            let opts = SyncOptions { reject_file };
            println!("{}", migrate::sync(&sqlite.path, &postgres.url(), &opts)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Follow {
            sqlite,
            postgres,
            reverse,
            json,
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
            json,
            metrics_addr,
        ),
        Command::Verify {
            sqlite,
            postgres,
            json,
            live,
        } => {
            let report = migrate::verify(&sqlite.path, &postgres.url())?;
            print(&report, json, Json::Pretty);
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
            println!("{report}");
            Ok(exit(report.is_equal(), 1))
        }
        Command::Backup { sqlite, out } => {
            println!("{}", migrate::backup(&sqlite.path, &out)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Switch {
            sqlite,
            postgres,
            to,
        } => {
            println!(
                "{}",
                migrate::switch(&sqlite.path, &postgres.url(), to.backend())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::RollbackSync { postgres, sqlite } => {
            println!("{}", migrate::rollback_sync(&sqlite.path, &postgres.url())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { database } => {
            println!("{}", migrate::pause(&database.url()?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { database } => {
            println!("{}", migrate::resume(&database.url()?)?);
            Ok(ExitCode::SUCCESS)
        }
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
            println!("{report}");
            Ok(exit(report.failed() == 0, 1))
        }
        Command::Status {
            postgres,
            sqlite,
            json,
        } => {
            let status = migrate::status_of(&postgres.url(), sqlite.as_deref())?;
            print(&status, json, Json::Pretty);
            Ok(ExitCode::SUCCESS)
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
    as_json: bool,
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
        print(s, as_json, Json::Line);
    })?;
    let ended = migrate::FollowEnded::new(end, opts.reverse, sqlite, postgres);
    print(&ended, as_json, Json::Line);
    Ok(ExitCode::SUCCESS)
}

/// Bars per table on a terminal; a log line per batch otherwise.
fn progress_reporter() -> Arc<dyn Fn(&Progress) + Send + Sync> {
    if !std::io::stderr().is_terminal() {
        return Arc::new(|p: &Progress| log::info!("{}: {}/{} rows", p.table, p.done, p.total));
    }
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>9} {bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .expect("valid template");
    let bars: Mutex<Vec<(Table, ProgressBar)>> = Mutex::new(Vec::new());
    Arc::new(move |p: &Progress| {
        let mut bars = bars.lock().expect("progress lock");
        if !bars.iter().any(|(t, _)| *t == p.table) {
            let bar = multi.add(ProgressBar::new(p.total).with_style(style.clone()));
            bar.set_prefix(p.table.as_str());
            bar.enable_steady_tick(Duration::from_millis(200));
            bars.push((p.table, bar));
        }
        for (t, bar) in bars.iter() {
            if *t == p.table {
                bar.set_position(p.done);
                if p.done >= p.total {
                    bar.finish();
                }
            }
        }
    })
}
