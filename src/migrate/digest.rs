//! What verify compares of each row, and the stable hashes it publishes: a
//! digest per row (the text columns as XXH3-128 hashes, so batches in flight
//! stay small) and an order-independent checksum per table. The layout is
//! fixed here, apart from the scan, because a checksum printed by one version
//! of the tool must equal the one printed by the next.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::Text;
use uuid::Uuid;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::{DbTimestamp, DbUuid};

/// An order-independent checksum: the wrapping sum of each row's hash.
#[derive(Default)]
pub(super) struct Checksum(u64);

impl Checksum {
    pub(super) fn add(&mut self, row_hash: u64) {
        self.0 = self.0.wrapping_add(row_hash);
    }
    pub(super) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// A row's share of a published checksum: XXH3-64 over a fixed layout of
/// the fields compared (little-endian integers, UUIDs as their 16 bytes, the
/// text columns as their XXH3-128 hashes). Stable across Rust releases,
/// processes and machines, unlike `std`'s `DefaultHasher`, so checksums
/// printed by two runs, or by two versions of the tool, can be compared.
pub(super) fn hash_of(row: &impl RowBytes) -> u64 {
    let mut buf = [0u8; 72];
    let n = row.write(&mut buf);
    xxh3_64(&buf[..n])
}

/// The fixed layout [`hash_of`] hashes.
pub(super) trait RowBytes {
    /// Writes the layout into `buf`; returns its length.
    fn write(&self, buf: &mut [u8; 72]) -> usize;
}

/// Appends fields into a fixed buffer.
struct Layout<'a> {
    buf: &'a mut [u8; 72],
    at: usize,
}

impl Layout<'_> {
    fn put(mut self, bytes: &[u8]) -> Self {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
        self
    }
}

impl RowBytes for SessionDigest {
    /// id (16) ‖ created_at µs (8) ‖ updated_at µs (8) ‖ summary XXH3-128 (16).
    fn write(&self, buf: &mut [u8; 72]) -> usize {
        Layout { buf, at: 0 }
            .put(self.id.as_bytes())
            .put(&self.created_at.to_le_bytes())
            .put(&self.updated_at.to_le_bytes())
            .put(&self.summary_hash.to_le_bytes())
            .at
    }
}

impl RowBytes for Digest {
    /// id (8) ‖ session_id (16) ‖ role XXH3-128 (16) ‖ body XXH3-128 (16) ‖ created_at µs (8).
    fn write(&self, buf: &mut [u8; 72]) -> usize {
        Layout { buf, at: 0 }
            .put(&self.id.to_le_bytes())
            .put(self.session_id.as_bytes())
            .put(&self.role_hash.to_le_bytes())
            .put(&self.body_hash.to_le_bytes())
            .put(&self.created_at.to_le_bytes())
            .at
    }
}

/// A session as compared: the summary by a 128-bit XXH3 hash, so that the
/// sessions one side holds while the other catches up stay small.
pub(super) struct SessionDigest {
    pub(super) id: Uuid,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) summary_hash: u128,
}

impl SessionDigest {
    pub(super) fn of(r: &SessionRow) -> SessionDigest {
        SessionDigest {
            id: r.id.0,
            created_at: r.created_at.0.timestamp_micros(),
            updated_at: r.updated_at.0.timestamp_micros(),
            summary_hash: xxh3_128(r.summary.as_bytes()),
        }
    }
}

/// A message or draft as compared: the text columns by 128-bit XXH3 hashes,
/// computed on the reading threads, so that batches in flight stay small.
/// (Hashing in PostgreSQL, `md5(text)`, measured four times slower than
/// shipping the text.)
pub(super) struct Digest {
    pub(super) id: i64,
    pub(super) session_id: Uuid,
    /// The hash of the message's role; of `""` for drafts.
    pub(super) role_hash: u128,
    pub(super) body_hash: u128,
    pub(super) created_at: i64,
}

impl Digest {
    pub(super) fn of_message(r: &MessageRow) -> Digest {
        Digest {
            id: r.id,
            session_id: r.session_id.0,
            role_hash: xxh3_128(r.role.as_bytes()),
            body_hash: xxh3_128(r.text.as_bytes()),
            created_at: r.created_at.0.timestamp_micros(),
        }
    }

    pub(super) fn of_draft(r: &DraftRow) -> Digest {
        Digest {
            id: r.id,
            session_id: r.session_id.0,
            role_hash: xxh3_128(b""),
            body_hash: xxh3_128(r.content.as_bytes()),
            created_at: r.created_at.0.timestamp_micros(),
        }
    }
}

/// A PostgreSQL text column read as the XXH3 hash of its bytes, straight from the
/// row: nothing is allocated or copied, and the UTF-8 is not validated again
/// (the server checked it on the way in; SQLite's side is validated by the
/// normalisation, and the bytes hashed are the same).
#[derive(FromSqlRow)]
pub(super) struct TextHash(pub(super) u128);

impl FromSql<Text, Pg> for TextHash {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(TextHash(xxh3_128(value.as_bytes())))
    }
}

/// A message or draft as PostgreSQL's side reads it: id, session, role (a
/// constant `''` for drafts), body, created_at.
pub(super) type PgDigestRow = (i64, DbUuid, TextHash, TextHash, DbTimestamp);

impl Digest {
    pub(super) fn of_pg((id, session_id, role, body, created_at): PgDigestRow) -> Digest {
        Digest {
            id,
            session_id: session_id.0,
            role_hash: role.0,
            body_hash: body.0,
            created_at: created_at.0.timestamp_micros(),
        }
    }
}
