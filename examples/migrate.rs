//! The migration tool: a thin CLI over `interview_store::migrate`.
//!
//! `cargo run --release --example migrate -- <command> …`; see `--help` and
//! docs/cutover.md. Exit status: 0 done, 1 the two sides differ (verify,
//! compare), 2 invalid data or usage, 3 a database or file failed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{self, CopyOptions, Progress, Selection, SyncOptions, Table};
use interview_store::{Backend, Error, Store, StoreConfig};

#[path = "support/checklist.rs"]
mod checklist;

#[derive(Parser)]
#[command(
    about = "Move an interview-store database from SQLite to PostgreSQL, and back",
    after_help = "Exit status: 0 done, 1 the sides differ, 2 invalid data or usage, 3 a database or file failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Sqlite {
    /// The SQLite database file.
    #[arg(long = "sqlite", env = "INTERVIEW_SQLITE_PATH")]
    path: PathBuf,
}

#[derive(Args)]
struct Postgres {
    /// The PostgreSQL URL or keyword/value string (`sslmode=require` and friends work).
    #[arg(
        long = "postgres",
        env = "INTERVIEW_POSTGRES_URL",
        hide_env_values = true,
        value_parser = PostgresArg
    )]
    url: DatabaseUrl,
}

/// Accepts PostgreSQL only, and never echoes the value (it may hold a password).
#[derive(Clone)]
struct PostgresArg;

impl clap::builder::TypedValueParser for PostgresArg {
    type Value = DatabaseUrl;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("--postgres: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("is not valid UTF-8".into()))?;
        DatabaseUrl::postgres(text).map_err(|e| refuse(e.to_string()))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Preflight: list every invalid row of the source (exit 2 if any).
    Check {
        #[command(flatten)]
        sqlite: Sqlite,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade the PostgreSQL schema (idempotent).
    Setup {
        #[command(flatten)]
        postgres: Postgres,
    },
    /// Bulk copy one snapshot of the source into PostgreSQL (resumable).
    Copy {
        #[command(flatten)]
        sqlite: Sqlite,
        #[command(flatten)]
        postgres: Postgres,
        /// Rows per COPY transaction.
        #[arg(long, default_value_t = 5000)]
        batch_size: i64,
        /// Load valid rows and write invalid ones here as JSON lines (otherwise: strict).
        #[arg(long)]
        reject_file: Option<PathBuf>,
        /// Empty the PostgreSQL tables first.
        #[arg(long)]
        truncate: bool,
    },
    /// Copy what changed in the source since the last copy or sync.
    Sync {
        #[command(flatten)]
        sqlite: Sqlite,
        #[command(flatten)]
        postgres: Postgres,
        /// Load valid rows and append invalid ones here as JSON lines (otherwise: strict).
        #[arg(long)]
        reject_file: Option<PathBuf>,
    },
    /// Check that both sides hold the same data (exit 1 if not).
    Verify {
        #[command(flatten)]
        sqlite: Sqlite,
        #[command(flatten)]
        postgres: Postgres,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Dual read: the same sessions through the repository on both backends (exit 1 if they differ).
    Compare {
        #[command(flatten)]
        sqlite: Sqlite,
        #[command(flatten)]
        postgres: Postgres,
        /// How many random sessions.
        #[arg(long, default_value_t = 100, conflicts_with = "session")]
        sample: i64,
        /// These sessions instead of a sample.
        #[arg(long, num_args = 1..)]
        session: Vec<uuid::Uuid>,
    },
    /// A consistent snapshot of a live SQLite database, integrity-checked.
    Backup {
        #[command(flatten)]
        sqlite: Sqlite,
        /// Where to write it; must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// After a cutover: copy into SQLite what was written to PostgreSQL since.
    RollbackSync {
        #[command(flatten)]
        postgres: Postgres,
        #[command(flatten)]
        sqlite: Sqlite,
    },
    /// The validation checklist against the running service (exit 1 if any step fails).
    ///
    /// Health names the expected backend; start, chat, session read, draft and
    /// latest draft pass through one probe session. With --sqlite and --postgres
    /// it also checks that the live side holds at least the other side's rows.
    Checklist {
        /// The service's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        server: String,
        /// The backend /health must name: sqlite or postgres.
        #[arg(long)]
        backend: Backend,
        /// The SQLite file, for the row-count step.
        #[arg(long, requires = "postgres")]
        sqlite: Option<PathBuf>,
        /// The PostgreSQL URL, for the row-count step.
        #[arg(long, requires = "sqlite", hide_env_values = true, value_parser = PostgresArg)]
        postgres: Option<DatabaseUrl>,
        /// Longest wait for each request, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// What has been copied, when, the high-water marks and the rejects.
    Status {
        #[command(flatten)]
        postgres: Postgres,
        /// Print as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

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

fn json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialise")
    );
}

fn open(url: &DatabaseUrl) -> interview_store::Result<Store> {
    log::info!("opening {}", url.masked());
    Store::open(url.clone(), StoreConfig::default())
}

fn run(command: Command) -> interview_store::Result<ExitCode> {
    match command {
        Command::Check {
            sqlite,
            json: as_json,
        } => {
            let report = migrate::check(&sqlite.path)?;
            if as_json {
                json(&report);
            } else {
                for r in &report.rejects {
                    println!("{r}");
                }
                println!(
                    "{}: {} sessions, {} messages, {} drafts; {} invalid; {} NULL summaries load as ''",
                    sqlite.path.display(),
                    report.rows[0],
                    report.rows[1],
                    report.rows[2],
                    report.rejects.len(),
                    report.null_summaries
                );
            }
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Setup { postgres } => {
            let store = open(&postgres.url)?;
            let applied = store.migrate()?;
            println!(
                "{}: schema up to date ({} migration(s) applied)",
                postgres.url.masked(),
                applied.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Copy {
            sqlite,
            postgres,
            batch_size,
            reject_file,
            truncate,
        } => {
            log::info!(
                "copying {} into {}",
                sqlite.path.display(),
                postgres.url.masked()
            );
            let opts = CopyOptions {
                batch_size,
                reject_file,
                truncate,
                progress: Some(progress_reporter()),
                ..Default::default()
            };
            let report = migrate::copy(&sqlite.path, &postgres.url, &opts)?;
            for (t, c) in Table::ALL.iter().zip(report.tables) {
                println!("{t}: {} copied, {} rejected", c.copied, c.rejected);
            }
            println!(
                "{} NULL summaries loaded as ''; {} in {:.1?}",
                report.null_summaries,
                if report.already_copied {
                    "already copied"
                } else {
                    "done"
                },
                report.elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            sqlite,
            postgres,
            reject_file,
        } => {
            let report = migrate::sync(&sqlite.path, &postgres.url, &SyncOptions { reject_file })?;
            println!(
                "sessions: {} new, {} changed; messages: {}; drafts: {}; rejected: {:?}; in {:.1?}",
                report.sessions_inserted,
                report.sessions_updated,
                report.messages,
                report.drafts,
                report.rejected,
                report.elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            sqlite,
            postgres,
            json: as_json,
        } => {
            let report = migrate::verify(&sqlite.path, &postgres.url)?;
            if as_json {
                json(&report);
            } else {
                for (t, v) in [
                    ("sessions", &report.sessions),
                    ("messages", &report.messages),
                    ("drafts", &report.drafts),
                ] {
                    println!(
                        "{t}: sqlite {} / postgres {} rows, {} rejected, {} differences, checksums {} / {}",
                        v.sqlite_rows, v.postgres_rows, v.rejected, v.differences, v.sqlite_checksum, v.postgres_checksum
                    );
                }
                println!(
                    "sessions whose messages differ: {}",
                    report.sessions_with_message_differences
                );
                for d in &report.differences {
                    println!("  {d}");
                }
                println!(
                    "{} in {} ms",
                    if report.is_equal() {
                        "EQUAL"
                    } else {
                        "DIFFERENT"
                    },
                    report.elapsed_ms
                );
            }
            Ok(if report.is_equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Compare {
            sqlite,
            postgres,
            sample,
            session,
        } => {
            let right = open(&postgres.url)?;
            let selection = if session.is_empty() {
                Selection::Sample(sample)
            } else {
                Selection::Sessions(session)
            };
            let report = migrate::compare_file(&sqlite.path, &right, &selection)?;
            for d in &report.differences {
                println!("{} {}", d.session, d.what);
            }
            println!(
                "{} sessions and {} messages compared: {}",
                report.sessions,
                report.messages,
                if report.is_equal() {
                    "EQUAL"
                } else {
                    "DIFFERENT"
                }
            );
            Ok(if report.is_equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Backup { sqlite, out } => {
            let report = migrate::backup(&sqlite.path, &out)?;
            println!(
                "{}: {} bytes, integrity ok, {} sessions, {} messages, {} drafts",
                report.path.display(),
                report.bytes,
                report.counts.sessions,
                report.counts.messages,
                report.counts.drafts
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::RollbackSync { postgres, sqlite } => {
            let lite = open(&DatabaseUrl::existing_sqlite(&sqlite.path)?)?;
            let pg = open(&postgres.url)?;
            lite.migrate()?;
            let report = migrate::rollback_sync(&pg, &lite)?;
            println!(
                "sessions: {} new, {} changed; messages: {}; drafts: {}",
                report.sessions_inserted, report.sessions_updated, report.messages, report.drafts
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Checklist {
            server,
            backend,
            sqlite,
            postgres,
            timeout_secs,
        } => {
            let mut steps =
                checklist::run(&server, backend.as_str(), Duration::from_secs(timeout_secs));
            if let (Some(path), Some(url)) = (sqlite, postgres) {
                steps.push(row_counts(&path, &url, backend));
            }
            for s in &steps {
                println!(
                    "{} {:<13} {} ({} ms)",
                    if s.passed { "PASS" } else { "FAIL" },
                    s.name,
                    s.detail,
                    s.elapsed.as_millis()
                );
            }
            let failed = steps.iter().filter(|s| !s.passed).count();
            println!("{} of {} steps passed", steps.len() - failed, steps.len());
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Status {
            postgres,
            json: as_json,
        } => {
            let status = migrate::status(&postgres.url)?;
            if as_json {
                json(&status);
                return Ok(ExitCode::SUCCESS);
            }
            match &status.state {
                None => println!("{}: nothing copied yet", postgres.url.masked()),
                Some(s) => println!(
                    "source {} — {} (started {}, copied {}, last sync {})\nmarks: session rowid {}, message id {}, draft id {}, sessions updated_at {}",
                    s.source,
                    s.phase,
                    s.started_at,
                    s.copied_at.map_or("-".into(), |t| t.to_string()),
                    s.synced_at.map_or("-".into(), |t| t.to_string()),
                    s.mark_session_rowid,
                    s.mark_message_id,
                    s.mark_draft_id,
                    s.mark_sessions_updated_at.as_deref().unwrap_or("-")
                ),
            }
            for p in &status.tables {
                println!(
                    "{}: {}/{} handled, {} copied, {} rejected (last rowid {}, {})",
                    p.table_name,
                    p.rows_copied + p.rows_rejected,
                    p.rows_total,
                    p.rows_copied,
                    p.rows_rejected,
                    p.last_source_rowid,
                    p.updated_at
                );
            }
            for r in &status.rejects {
                println!("  rejected: {r}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The checklist's row-count step: the live side holds at least every row of the retired one.
fn row_counts(sqlite: &std::path::Path, postgres: &DatabaseUrl, live: Backend) -> checklist::Step {
    let started = std::time::Instant::now();
    let outcome = (|| -> interview_store::Result<Result<String, String>> {
        let lite = open(&DatabaseUrl::existing_sqlite(sqlite)?)?.counts()?;
        let pg = open(postgres)?.counts()?;
        let (live_counts, other) = match live {
            Backend::Postgres => (pg, lite),
            Backend::Sqlite => (lite, pg),
        };
        let shown = format!(
            "{live}: {} sessions, {} messages, {} drafts; other side: {}, {}, {}",
            live_counts.sessions,
            live_counts.messages,
            live_counts.drafts,
            other.sessions,
            other.messages,
            other.drafts
        );
        let holds_all = live_counts.sessions >= other.sessions
            && live_counts.messages >= other.messages
            && live_counts.drafts >= other.drafts;
        Ok(if holds_all {
            Ok(shown)
        } else {
            Err(format!("rows missing on the live side: {shown}"))
        })
    })();
    let outcome = outcome.unwrap_or_else(|e| Err(e.to_string()));
    checklist::Step {
        name: "row counts",
        passed: outcome.is_ok(),
        detail: outcome.unwrap_or_else(|e| e),
        elapsed: started.elapsed(),
    }
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
