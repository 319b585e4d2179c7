//! The migration tool: a thin CLI over `interview_store::migrate`.
//!
//! `cargo run --release --example migrate -- <command> …`; see `--help` and
//! docs/cutover.md. Exit status: 0 done, 1 the two sides differ (verify,
//! compare), 2 invalid data or usage, or refused (wrong phase, `--truncate`
//! without `--yes`), 3 a database or file failed, or another migration command
//! is running on the same PostgreSQL database.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{self, CopyOptions, Progress, Selection, SyncOptions, Table};
use interview_store::{maintenance, Backend, Error, Store, StoreConfig};

#[path = "support/checklist.rs"]
mod checklist;

#[derive(Parser)]
#[command(
    about = "Move an interview-store database from SQLite to PostgreSQL, and back",
    after_help = "Exit status: 0 done, 1 the sides differ, 2 invalid data, usage, or refused (wrong phase, --truncate without --yes), 3 a database or file failed, or another migration command is running."
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
    /// The PostgreSQL URL or keyword/value string (`sslmode=verify-full&sslrootcert=…` and friends work).
    #[arg(
        long = "postgres",
        env = "INTERVIEW_POSTGRES_URL",
        hide_env_values = true,
        value_parser = PostgresArg
    )]
    given_url: DatabaseUrl,
    /// Cache prepared statements on PostgreSQL: `off` behind a transaction pooler (PgBouncer, Supavisor).
    #[arg(
        long = "pg-statement-cache",
        env = "INTERVIEW_PG_STATEMENT_CACHE",
        default_value = "on",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    statement_cache: bool,
}

impl Postgres {
    /// The URL with the statement cache setting applied.
    fn url(&self) -> DatabaseUrl {
        self.given_url
            .clone()
            .with_statement_cache(self.statement_cache)
    }
}

/// Exactly one database, named on the command line only (never from the environment,
/// where both are usually set).
#[derive(Args)]
#[group(required = true, multiple = false)]
struct OneDatabase {
    /// An SQLite database file (never created).
    #[arg(long = "sqlite")]
    sqlite: Option<PathBuf>,
    /// A PostgreSQL URL.
    #[arg(long = "postgres", value_parser = PostgresArg)]
    postgres: Option<DatabaseUrl>,
}

impl OneDatabase {
    fn url(self) -> interview_store::Result<DatabaseUrl> {
        match (self.sqlite, self.postgres) {
            (Some(path), None) => Ok(DatabaseUrl::sqlite(path.display().to_string())),
            (None, Some(url)) => Ok(url),
            _ => Err(Error::invalid(
                "database",
                "give exactly one of --sqlite and --postgres",
            )),
        }
    }
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
    /// Create or upgrade the PostgreSQL schema; on the SQLite file install the change log and
    /// index messages and drafts by session (idempotent; the first index build holds the file's
    /// write lock while it reads both tables).
    Setup {
        #[command(flatten)]
        postgres: Postgres,
        /// The SQLite file whose writes sync will follow (its change log is installed, and the
        /// indexes compare reads a session's messages through).
        #[arg(long = "sqlite", env = "INTERVIEW_SQLITE_PATH")]
        sqlite: Option<PathBuf>,
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
        /// Empty the PostgreSQL tables first (after every check; needs --yes).
        #[arg(long)]
        truncate: bool,
        /// Confirm --truncate; without it the copy only prints what it would delete (exit 2).
        #[arg(long, requires = "truncate")]
        yes: bool,
        /// Connections that build the indexes and validate the foreign keys after the load,
        /// one table each (default: the number of CPUs, at most 3).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        rebuild_connections: Option<u16>,
        /// Memory per rebuild connection for its sort or hash, in MiB (the server's
        /// maintenance_work_mem and work_mem when higher).
        #[arg(long, default_value_t = 256)]
        rebuild_memory_mb: u64,
    },
    /// Apply what changed in the source since the copy or the last sync (its change log).
    Sync {
        #[command(flatten)]
        sqlite: Sqlite,
        #[command(flatten)]
        postgres: Postgres,
        /// Load valid rows and append invalid ones here as JSON lines (otherwise: strict).
        #[arg(long)]
        reject_file: Option<PathBuf>,
    },
    /// Apply the change log continuously (SQLite to PostgreSQL; with --reverse, after the switch, back).
    ///
    /// Runs until SIGINT/SIGTERM or until the switch ends its direction, printing
    /// the lag every few seconds; survives either database restarting.
    Follow {
        #[command(flatten)]
        sqlite: Sqlite,
        #[command(flatten)]
        postgres: Postgres,
        /// Follow PostgreSQL's change log into SQLite (after `switch`), for a rollback as quick as the cutover.
        #[arg(long)]
        reverse: bool,
        /// Print each lag report as one JSON line.
        #[arg(long)]
        json: bool,
        /// Seconds between lag reports.
        #[arg(long, default_value_t = 2)]
        report_secs: u64,
        /// Forward: load valid rows and append invalid ones here (otherwise an invalid row stops it).
        #[arg(long, conflicts_with = "reverse")]
        reject_file: Option<PathBuf>,
    },
    /// Check that both sides hold the same data (exit 1 if not).
    ///
    /// Records the change-log position it found equal, so that a switch under
    /// traffic only compares the rows written since.
    Verify {
        #[command(flatten)]
        sqlite: Sqlite,
        #[command(flatten)]
        postgres: Postgres,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// The service is writing (a follower runs): exit 0 when the only
        /// differences are rows written since the last applied change-log entry.
        #[arg(long)]
        live: bool,
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
    /// Make PostgreSQL (default) or SQLite the live side; the other is retired.
    Switch {
        #[command(flatten)]
        sqlite: Sqlite,
        #[command(flatten)]
        postgres: Postgres,
        /// The side to make live.
        #[arg(long, value_enum, default_value_t = Side::Postgres)]
        to: Side,
    },
    /// After a switch: apply to SQLite what PostgreSQL's committed transactions wrote since (no pause needed).
    RollbackSync {
        #[command(flatten)]
        postgres: Postgres,
        #[command(flatten)]
        sqlite: Sqlite,
    },
    /// Pause writes in the database itself: every writer refused, reads go on; survives restarts.
    Pause {
        #[command(flatten)]
        database: OneDatabase,
    },
    /// Lift the pause (refused on a retired database: only switching back to it makes it live).
    Resume {
        #[command(flatten)]
        database: OneDatabase,
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
    /// What has been copied, when, the high-water marks, the rejects and the pause.
    Status {
        #[command(flatten)]
        postgres: Postgres,
        /// Also report this SQLite file's pause.
        #[arg(long = "sqlite")]
        sqlite: Option<PathBuf>,
        /// Print as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Side {
    Postgres,
    Sqlite,
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

/// A store for one command: it opens connections only when asked for one
/// (no idle ones kept, so no pool thread opens one in the background), and
/// the command closes it ([`Store::close`]) before the process exits.
fn open(url: &DatabaseUrl) -> interview_store::Result<Store> {
    log::info!("opening {}", url.masked());
    let config = StoreConfig {
        pool: interview_store::PoolConfig {
            max_size: 2,
            min_idle: Some(0),
            ..Default::default()
        },
        ..Default::default()
    };
    Store::open(url.clone(), config)
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
        Command::Setup { postgres, sqlite } => {
            let store = open(&postgres.url())?;
            let applied = store.migrate();
            store.close();
            let applied = applied?;
            println!(
                "{}: schema up to date ({} migration(s) applied)",
                postgres.url().masked(),
                applied.len()
            );
            if let Some(path) = sqlite {
                migrate::install_change_log(&path)?;
                println!("{}: change log installed", path.display());
                let t = std::time::Instant::now();
                if migrate::index_source(&path)? {
                    println!(
                        "{}: indexes on messages(session_id) and drafts(session_id) made in {:.1?}",
                        path.display(),
                        t.elapsed()
                    );
                }
            }
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
            log::info!(
                "copying {} into {}",
                sqlite.path.display(),
                postgres.url().masked()
            );
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
            let report = migrate::copy(&sqlite.path, &postgres.url(), &opts)?;
            for (t, c) in Table::ALL.iter().zip(report.tables) {
                println!("{t}: {} copied, {} rejected", c.copied, c.rejected);
            }
            println!("idempotency keys: {} copied", report.idempotency_keys);
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
            let report =
                migrate::sync(&sqlite.path, &postgres.url(), &SyncOptions { reject_file })?;
            println!(
                "{} change log entries up to {}: sessions {} new, {} changed, {} deleted; \
                 messages {} written, {} deleted; drafts {} written, {} deleted; idempotency keys {} written, \
                 {} deleted; rejected: {:?}; in {:.1?}",
                report.entries,
                report.change_seq,
                report.sessions_inserted,
                report.sessions_updated,
                report.sessions_deleted,
                report.messages,
                report.messages_deleted,
                report.drafts,
                report.drafts_deleted,
                report.keys.written,
                report.keys.deleted,
                report.rejected,
                report.elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Follow {
            sqlite,
            postgres,
            reverse,
            json: as_json,
            report_secs,
            reject_file,
        } => follow(
            &sqlite.path,
            &postgres.url(),
            &migrate::FollowOptions {
                reverse,
                report_every: Duration::from_secs(report_secs.max(1)),
                reject_file,
                ..Default::default()
            },
            as_json,
        ),
        Command::Verify {
            sqlite,
            postgres,
            json: as_json,
            live,
        } => {
            let report = migrate::verify(&sqlite.path, &postgres.url())?;
            if as_json {
                json(&report);
            } else {
                for (t, v) in [
                    ("sessions", &report.sessions),
                    ("messages", &report.messages),
                    ("drafts", &report.drafts),
                ] {
                    println!(
                        "{t}: count(*) sqlite {} / postgres {}; compared sqlite {} / postgres {} rows, {} rejected, {} differences, checksums {} / {}",
                        v.sqlite_count, v.postgres_count, v.sqlite_rows, v.postgres_rows, v.rejected, v.differences, v.sqlite_checksum, v.postgres_checksum
                    );
                }
                println!(
                    "sessions whose messages differ: {}",
                    report.sessions_with_message_differences
                );
                for d in &report.differences {
                    println!("  {d}");
                }
                let k = &report.idempotency_keys;
                println!(
                    "idempotency keys (finished): sqlite {} / postgres {}, {} differences",
                    k.sqlite_keys, k.postgres_keys, k.differences
                );
                for d in &k.listed {
                    println!("  {d}");
                }
                if let Some(n) = k.in_flight.filter(|n| *n > 0) {
                    println!(
                        "{n} of the key differences are in keys answered since the last applied \
                         change-log entry (in flight)"
                    );
                }
                if let Some(n) = report.in_flight.filter(|n| *n > 0) {
                    println!(
                        "{n} of the differences are in rows written since the last applied \
                         change-log entry (in flight: a follower or sync applies them)"
                    );
                }
                if let Some(upto) = report.verified_upto {
                    println!(
                        "equal up to change-log position {upto} (recorded: a switch under traffic \
                         compares only the rows written since)"
                    );
                }
                println!(
                    "{} in {} ms",
                    if report.is_equal() {
                        "EQUAL"
                    } else if report.is_equal_but_in_flight() {
                        "EQUAL BUT IN FLIGHT"
                    } else {
                        "DIFFERENT"
                    },
                    report.elapsed_ms
                );
            }
            Ok(
                if report.is_equal() || (live && report.is_equal_but_in_flight()) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                },
            )
        }
        Command::Compare {
            sqlite,
            postgres,
            sample,
            session,
        } => {
            // The file first: a missing one is named before PostgreSQL is tried.
            interview_store::connection::require_sqlite_file(&sqlite.path)?;
            let right = open(&postgres.url())?;
            let selection = if session.is_empty() {
                Selection::Sample(sample)
            } else {
                Selection::Sessions(session)
            };
            let report = migrate::compare_file(&sqlite.path, &right, &selection);
            right.close();
            let report = report?;
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
        Command::Switch {
            sqlite,
            postgres,
            to,
        } => {
            let to = match to {
                Side::Postgres => Backend::Postgres,
                Side::Sqlite => Backend::Sqlite,
            };
            let report = migrate::switch(&sqlite.path, &postgres.url(), to)?;
            let checked = match (report.held_ms, report.verified_rows) {
                (Some(held), Some(rows)) => format!(
                    "{rows} rows changed since the last full verify EQUAL; writes held {held} ms"
                ),
                _ => "verify EQUAL".to_string(),
            };
            println!(
                "{} is live{}; {checked}",
                match report.live {
                    Backend::Postgres => postgres.url().masked(),
                    Backend::Sqlite => sqlite.path.display().to_string(),
                },
                if report.already_switched {
                    " (already switched)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::RollbackSync { postgres, sqlite } => {
            let report = migrate::rollback_sync(&sqlite.path, &postgres.url())?;
            println!(
                "{} change log entries up to {}: sessions {} new, {} changed, {} deleted; \
                 messages {} written, {} deleted; drafts {} written, {} deleted; idempotency keys {} \
                 written, {} deleted",
                report.entries,
                report.change_seq,
                report.sessions_inserted,
                report.sessions_updated,
                report.sessions_deleted,
                report.messages,
                report.messages_deleted,
                report.drafts,
                report.drafts_deleted,
                report.keys.written,
                report.keys.deleted
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { database } => set_pause(database.url()?, true),
        Command::Resume { database } => set_pause(database.url()?, false),
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
            sqlite,
            json: as_json,
        } => {
            let status = migrate::status(&postgres.url())?;
            let sqlite = match sqlite {
                Some(path) => {
                    let url = DatabaseUrl::sqlite(path.display().to_string());
                    Some(maintenance::read(&mut maintenance::connect(&url)?)?)
                }
                None => None,
            };
            if as_json {
                let mut v = serde_json::to_value(&status).expect("reports serialise");
                if let Some(m) = &sqlite {
                    v["sqlite_maintenance"] = serde_json::to_value(m).expect("reports serialise");
                }
                json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}: {}", postgres.url().masked(), status.maintenance);
            if let Some(m) = &sqlite {
                println!("sqlite: {m}");
            }
            match &status.state {
                None => println!("{}: nothing copied yet", postgres.url().masked()),
                Some(s) => println!(
                    "source {} — {} (started {}, copied {}, last sync {}, switched {}, rolled back {})\n\
                     copy snapshot: session rowid {}, message id {}, draft id {}\n\
                     change log applied: SQLite's up to {}, PostgreSQL's (way back) up to {} \
                     (transaction horizon {})\n\
                     last full verify equal up to {} ({})",
                    s.source,
                    s.phase,
                    s.started_at,
                    s.copied_at.map_or("-".into(), |t| t.to_string()),
                    s.synced_at.map_or("-".into(), |t| t.to_string()),
                    s.switched_at.map_or("-".into(), |t| t.to_string()),
                    s.rolled_back_at.map_or("-".into(), |t| t.to_string()),
                    s.mark_session_rowid,
                    s.mark_message_id,
                    s.mark_draft_id,
                    s.mark_change_seq.map_or("-".into(), |n| n.to_string()),
                    s.rollback_change_seq,
                    s.rollback_xid_horizon,
                    s.verified_change_seq.map_or("-".into(), |n| n.to_string()),
                    s.verified_at.map_or("never".into(), |t| t.to_string())
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
                    p.last_source_rowid.map_or("-".into(), |n| n.to_string()),
                    p.updated_at
                );
            }
            println!(
                "idempotency keys (finished) in postgres: {}",
                status.idempotency_keys
            );
            for r in &status.rejects {
                println!("  rejected: {r}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `follow`: runs the follower until a signal or the switch, printing its lag.
fn follow(
    sqlite: &std::path::Path,
    postgres: &DatabaseUrl,
    opts: &migrate::FollowOptions,
    as_json: bool,
) -> interview_store::Result<ExitCode> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| Error::Io {
            path: "signal handler".into(),
            source: e,
        })?;
    }
    let end = migrate::follow(sqlite, postgres, opts, &stop, |s| {
        if as_json {
            println!("{}", serde_json::to_string(s).expect("reports serialise"));
        } else {
            println!(
                "follow {}: {} entries behind, lag {} ms; {} applied in {} batches{}{}",
                s.direction,
                s.pending_entries,
                s.lag_ms,
                s.applied_entries,
                s.passes,
                if s.connected {
                    ""
                } else {
                    "; DISCONNECTED, retrying"
                },
                s.last_error
                    .as_ref()
                    .filter(|_| !s.connected)
                    .map_or(String::new(), |e| format!(": {e}"))
            );
        }
    })?;
    let said = match (end, opts.reverse) {
        (migrate::FollowEnd::Stopped, _) => "stopped".to_string(),
        (migrate::FollowEnd::Switched, false) => format!(
            "{} is live now (switched): run `migrate follow --reverse` to keep SQLite current",
            postgres.masked()
        ),
        (migrate::FollowEnd::Switched, true) => {
            format!("{} is live again (switched back)", sqlite.display())
        }
    };
    if as_json {
        println!("{}", serde_json::json!({ "ended": end, "detail": said }));
    } else {
        println!("follow ended: {said}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `pause` and `resume`: sets the flag in the database and prints the state it holds now.
fn set_pause(url: DatabaseUrl, on: bool) -> interview_store::Result<ExitCode> {
    // One migration command at a time on PostgreSQL (a pause must not land in
    // the middle of a switch); on SQLite the flag is written under its write lock.
    let _lock = match url.backend() {
        // A follower holds the lock for one batch at a time: take turns with it.
        Backend::Postgres => Some(migrate::MigrationLock::acquire_waiting(
            &url,
            Duration::from_secs(10),
        )?),
        Backend::Sqlite => None,
    };
    let mut conn = maintenance::connect(&url)?;
    if on {
        maintenance::pause(&mut conn)?;
    } else {
        maintenance::resume(&mut conn)?;
    }
    println!("{}: {}", url.masked(), maintenance::read(&mut conn)?);
    Ok(ExitCode::SUCCESS)
}

/// The checklist's row-count step: the live side holds at least every row of the retired one.
fn row_counts(sqlite: &std::path::Path, postgres: &DatabaseUrl, live: Backend) -> checklist::Step {
    let started = std::time::Instant::now();
    let outcome = (|| -> interview_store::Result<Result<String, String>> {
        let counts = |store: Store| {
            let counts = store.counts();
            store.close();
            counts
        };
        let lite = counts(open(&DatabaseUrl::existing_sqlite(sqlite)?)?)?;
        let pg = counts(open(postgres)?)?;
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
