//! The migration tool's command line: every command, flag and its `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use interview_store::connection::DatabaseUrl;
use interview_store::{Backend, Error};

#[derive(Parser)]
#[command(
    about = "Move an interview-store database from SQLite to PostgreSQL, and back",
    after_help = "Exit status: 0 done, 1 the sides differ, 2 invalid data, usage, or refused (wrong phase, --truncate without --yes), 3 a database or file failed, or another migration command is running."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print the report as one JSON object (`follow`: one JSON line per report).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args)]
pub struct Sqlite {
    /// The SQLite database file.
    #[arg(long = "sqlite", env = "INTERVIEW_SQLITE_PATH")]
    pub path: PathBuf,
}

#[derive(Args)]
pub struct Postgres {
    /// The PostgreSQL URL or keyword/value string (`sslmode=verify-full&sslrootcert=…` and friends work).
    #[arg(
        long = "postgres",
        env = "INTERVIEW_POSTGRES_URL",
        hide_env_values = true,
        value_parser = PostgresArg
    )]
    pub given_url: DatabaseUrl,
    /// Cache prepared statements on PostgreSQL: `off` behind a transaction pooler (PgBouncer, Supavisor).
    #[arg(
        long = "pg-statement-cache",
        env = "INTERVIEW_PG_STATEMENT_CACHE",
        default_value = "on",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub statement_cache: bool,
}

impl Postgres {
    /// The URL with the statement cache setting applied.
    pub fn url(&self) -> DatabaseUrl {
        self.given_url
            .clone()
            .with_statement_cache(self.statement_cache)
    }
}

/// Exactly one database, named on the command line only (never from the environment,
/// where both are usually set).
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct OneDatabase {
    /// An SQLite database file (never created).
    #[arg(long = "sqlite")]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL URL.
    #[arg(long = "postgres", value_parser = PostgresArg)]
    pub postgres: Option<DatabaseUrl>,
}

impl OneDatabase {
    pub fn url(self) -> interview_store::Result<DatabaseUrl> {
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
pub struct PostgresArg;

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
pub enum Command {
    /// Preflight: list every invalid row of the source (exit 2 if any).
    Check {
        #[command(flatten)]
        sqlite: Sqlite,
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
        /// Seconds between lag reports.
        #[arg(long, default_value_t = 2)]
        report_secs: u64,
        /// Forward: load valid rows and append invalid ones here (otherwise an invalid row stops it).
        #[arg(long, conflicts_with = "reverse")]
        reject_file: Option<PathBuf>,
        /// Serve each report as Prometheus metrics on http://HOST:PORT/metrics
        /// (`interview_follow_*`; build with `--features server`).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<std::net::SocketAddr>,
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
        /// The service is writing (a follower runs): exit 0 when the only
        /// differences are rows written since the last applied change-log entry.
        #[arg(long)]
        live: bool,
        /// Record the position found equal for the switch under traffic (a
        /// cutover step; without it verify changes nothing on either side).
        #[arg(long)]
        record: bool,
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
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Side {
    Postgres,
    Sqlite,
}

impl Side {
    /// The backend this side names.
    pub fn backend(self) -> Backend {
        match self {
            Side::Postgres => Backend::Postgres,
            Side::Sqlite => Backend::Sqlite,
        }
    }
}
