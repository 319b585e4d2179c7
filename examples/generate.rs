//! Writes a realistic legacy SQLite database, as the interview service made them, for benchmarks.
//!
//! `cargo run --release --example generate -- --sessions 20000 --out bench.db`
//!
//! Each session has 40 messages (user answers of 50–400 characters, assistant
//! turns of 100–1,200) and 2 drafts (1–6 KB), a summary of up to 500
//! characters, and text with unicode, quotes, backslashes, tabs and newlines.
//! Timestamps use the several ISO-8601 spellings found in the field.

use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Duration, TimeZone, Utc};
use clap::Parser;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Write a legacy interview SQLite database of N sessions")]
struct Args {
    /// Number of sessions (each with 40 messages and 2 drafts).
    #[arg(long, default_value_t = 1000)]
    sessions: u64,
    /// The file to write; must not exist.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random content, for repeatable files.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const WORDS: &[&str] = &[
    "the",
    "interview",
    "team",
    "I",
    "worked",
    "on",
    "a",
    "project",
    "with",
    "deadline",
    "café",
    "naïve",
    "résumé",
    "日本語",
    "emoji 🎉",
    "\"quoted\"",
    "it's",
    "C:\\path\\to",
    "tab\there",
    "line\nbreak",
    "50%",
    "cost",
    "<b>html</b>",
    "Zürich",
    "Ελληνικά",
    "مرحبا",
    "x,y",
    "—",
    "ok",
    "design",
    "database",
    "migration",
    "latency",
    "customer",
    "learned",
    "because",
    "then",
];

fn text(rng: &mut StdRng, min: usize, max: usize) -> String {
    let target = rng.random_range(min..=max);
    let mut s = String::with_capacity(target * 2 + 16);
    // Counted as it grows: recounting the whole string per word made drafts quadratic.
    let mut chars = 0;
    while chars < target {
        if !s.is_empty() {
            s.push(' ');
            chars += 1;
        }
        let word = WORDS[rng.random_range(0..WORDS.len())];
        s.push_str(word);
        chars += word.chars().count();
    }
    s.chars().take(target).collect()
}

/// One of the legacy spellings, all valid.
fn legacy_time(rng: &mut StdRng, t: DateTime<Utc>) -> String {
    match rng.random_range(0..10) {
        0 => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        1 => t.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string(),
        2 => (t + Duration::hours(2))
            .format("%Y-%m-%dT%H:%M:%S%.6f+02:00")
            .to_string(),
        3 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        _ => t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.out.exists() {
        return Err(format!("{} exists; pick another --out", args.out.display()).into());
    }
    let started = Instant::now();
    let mut conn = SqliteConnection::establish(&args.out.display().to_string())?;
    conn.batch_execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")?;
    conn.batch_execute(include_str!("../tests/fixtures/legacy-schema.sql"))?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let bar = ProgressBar::new(args.sessions).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} sessions {per_sec} eta {eta}",
    )?);
    let base = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let mut message_id = 0i64;
    let mut draft_id = 0i64;
    for chunk in (0..args.sessions).collect::<Vec<_>>().chunks(500) {
        conn.transaction(|conn| {
            for _ in chunk {
                let id = uuid::Builder::from_random_bytes(rng.random())
                    .into_uuid()
                    .to_string();
                let mut t = base + Duration::seconds(rng.random_range(0..60 * 60 * 24 * 600));
                let created = legacy_time(&mut rng, t);
                let mut rows = Vec::with_capacity(40);
                for i in 0..40 {
                    t += Duration::milliseconds(rng.random_range(1_000..120_000));
                    let (role, body) = if i % 2 == 0 {
                        ("assistant", text(&mut rng, 100, 1200))
                    } else {
                        ("user", text(&mut rng, 50, 400))
                    };
                    message_id += 1;
                    rows.push((message_id, role, body, legacy_time(&mut rng, t)));
                }
                let updated = legacy_time(&mut rng, t);
                let summary = text(&mut rng, 0, 500);
                diesel::sql_query("INSERT INTO sessions (id, created_at, updated_at, summary) VALUES (?, ?, ?, ?)")
                    .bind::<Text, _>(&id)
                    .bind::<Text, _>(&created)
                    .bind::<Text, _>(&updated)
                    .bind::<Text, _>(&summary)
                    .execute(conn)?;
                for (mid, role, body, at) in &rows {
                    diesel::sql_query("INSERT INTO messages (id, session_id, role, text, created_at) VALUES (?, ?, ?, ?, ?)")
                        .bind::<BigInt, _>(mid)
                        .bind::<Text, _>(&id)
                        .bind::<Text, _>(*role)
                        .bind::<Text, _>(body)
                        .bind::<Text, _>(at)
                        .execute(conn)?;
                }
                for _ in 0..2 {
                    draft_id += 1;
                    t += Duration::seconds(rng.random_range(1..600));
                    let content = text(&mut rng, 1024, 6 * 1024);
                    let at = legacy_time(&mut rng, t);
                    diesel::sql_query("INSERT INTO drafts (id, session_id, content, created_at) VALUES (?, ?, ?, ?)")
                        .bind::<BigInt, _>(draft_id)
                        .bind::<Text, _>(&id)
                        .bind::<Text, _>(&content)
                        .bind::<Text, _>(&at)
                        .execute(conn)?;
                }
            }
            diesel::QueryResult::Ok(())
        })?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    conn.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?;
    let bytes = std::fs::metadata(&args.out)?.len();
    println!(
        "{}: {} sessions, {message_id} messages, {draft_id} drafts, {:.0} MB in {:.1?}",
        args.out.display(),
        args.sessions,
        bytes as f64 / 1e6,
        started.elapsed()
    );
    Ok(())
}
