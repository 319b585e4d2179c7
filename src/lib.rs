//! One Diesel repository for an interview chat service, over SQLite or PostgreSQL.
//!
//! - [`Store`] is the repository: sessions, messages and drafts, a read-only
//!   switch for a cutover's write pause, health and counts.
//! - [`maintenance`] holds that write pause in the database itself, and retires a
//!   database whose data moved.
//! - [`connection`] holds the `MultiConnection` over both backends and URL handling;
//!   [`types`] the mapping of UUIDs and timestamps onto each backend;
//!   [`schema`] the one schema; [`migrations`] the embedded schema per backend.
//! - [`migrate`] moves a live service from SQLite to PostgreSQL and back:
//!   preflight, bulk copy, sync, verify, dual-read compare, backup, rollback.
//! - `server` (feature `server`) is the interview HTTP API on top of the store.
//!
//! The same Rust types come out of both backends: `uuid::Uuid` ids and
//! `chrono::DateTime<Utc>` timestamps at microsecond precision.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod breaker;
#[allow(missing_docs)] // the MultiConnection derive generates undocumented items
pub mod connection;
mod conninfo;
pub mod error;
pub mod maintenance;
pub mod migrate;
pub mod migrations;
mod pool;
#[allow(missing_docs)] // `table!` generates a struct per column
pub mod schema;
#[cfg(feature = "server")]
pub mod server;
pub(crate) mod store;
pub mod timestamp;
pub mod types;

pub use connection::{AnyConnection, Backend, DatabaseUrl};
pub use error::{Category, Error, Refusal, Result};
pub use maintenance::Maintenance;
pub use pool::{PoolConfig, PoolState};
pub use store::{
    Claim, Draft, Fallback, Health, KeyPolicy, Message, Page, Position, Recorded, ReplicaState,
    Role, Session, SessionWithMessages, Store, StoreConfig, TableCounts, Ticket,
};

// The README's Rust examples run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
