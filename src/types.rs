//! The type mapping: one SQL type per column kind that differs between the backends.
//!
//! | Rust                | PostgreSQL    | SQLite                                      |
//! |---------------------|---------------|---------------------------------------------|
//! | `uuid::Uuid`        | `UUID`        | `TEXT`, lowercase hyphenated (read: see below) |
//! | `DateTime<Utc>`     | `TIMESTAMPTZ` | `TEXT`, `2025-03-01T12:34:56.123456Z`       |
//!
//! Diesel cannot implement `AsExpression` for foreign types against our SQL
//! types, so queries bind the local newtypes [`DbUuid`] and [`DbTimestamp`];
//! the public domain structs carry plain `Uuid` and `DateTime<Utc>`.
//!
//! ## Legacy ids
//!
//! A SQLite file written by the legacy service, or by an ORM, may spell a UUID
//! id in any of the forms [`read_legacy_uuid`] accepts (canonical, upper case,
//! 32 hex digits, braced). That function is the one reader of stored ids: the
//! store's row decoding, the migration's normalisation and its change-log keys
//! all go through it. Lookups by id go through [`uuid_key`] and [`DbUuidKey`],
//! which on SQLite compare a normalised form of the stored text (kept in an
//! expression index, see `migrations_sqlite/2025-07-10-000000_legacy_uuid_lookup`)
//! and on PostgreSQL are the plain column. Rows are never rewritten: a child row
//! written under a legacy session carries the session's own spelling
//! ([`StoredUuid`]), new sessions are written canonical. See `docs/legacy-ids.md`.

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::{
    AppearsOnTable, AsExpression, Expression, SelectableExpression, ValidGrouping,
};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::HasSqlType;
use diesel::sqlite::Sqlite;

use crate::connection::MultiBackend;
use crate::timestamp;

/// The SQL types of the schema.
pub mod sql {
    /// A UUID: PostgreSQL `UUID`, SQLite `TEXT`.
    #[derive(
        Debug, Clone, Copy, Default, diesel::sql_types::SqlType, diesel::query_builder::QueryId,
    )]
    #[diesel(postgres_type(oid = 2950, array_oid = 2951))]
    #[diesel(sqlite_type(name = "Text"))]
    pub struct MultiUuid;

    /// A UTC instant: PostgreSQL `TIMESTAMPTZ`, SQLite `TEXT`.
    #[derive(
        Debug, Clone, Copy, Default, diesel::sql_types::SqlType, diesel::query_builder::QueryId,
    )]
    #[diesel(postgres_type(oid = 1184, array_oid = 1185))]
    #[diesel(sqlite_type(name = "Text"))]
    pub struct MultiTimestamp;
}

/// A `uuid::Uuid` as bound to and read from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql::MultiUuid)]
pub struct DbUuid(pub uuid::Uuid);

/// A `DateTime<Utc>` as bound to and read from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql::MultiTimestamp)]
pub struct DbTimestamp(pub DateTime<Utc>);

impl From<uuid::Uuid> for DbUuid {
    fn from(u: uuid::Uuid) -> Self {
        DbUuid(u)
    }
}

impl From<DateTime<Utc>> for DbTimestamp {
    fn from(t: DateTime<Utc>) -> Self {
        DbTimestamp(t)
    }
}

// PostgreSQL: hand over to diesel's own UUID and TIMESTAMPTZ codecs.

impl FromSql<sql::MultiUuid, Pg> for DbUuid {
    fn from_sql(
        bytes: <Pg as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        <uuid::Uuid as FromSql<diesel::sql_types::Uuid, Pg>>::from_sql(bytes).map(DbUuid)
    }
}

impl ToSql<sql::MultiUuid, Pg> for DbUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <uuid::Uuid as ToSql<diesel::sql_types::Uuid, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<sql::MultiTimestamp, Pg> for DbTimestamp {
    fn from_sql(
        bytes: <Pg as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<diesel::sql_types::Timestamptz, Pg>>::from_sql(bytes)
            .map(DbTimestamp)
    }
}

impl ToSql<sql::MultiTimestamp, Pg> for DbTimestamp {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <DateTime<Utc> as ToSql<diesel::sql_types::Timestamptz, Pg>>::to_sql(&self.0, out)
    }
}

// SQLite: text, parsed leniently and written canonically.

/// The stored bytes of a SQLite value as UTF-8, read from the live value.
///
/// Strict on purpose: an id or timestamp holding invalid UTF-8 is corrupt,
/// never a lossy decoding that might happen to parse. Reading the value as a
/// blob hands out its bytes unconverted (numbers as their text form).
fn sqlite_text<'v>(
    value: &'v mut diesel::sqlite::SqliteValue<'_, '_, '_>,
) -> deserialize::Result<&'v str> {
    let bytes = value.read_blob();
    std::str::from_utf8(bytes).map_err(|_| {
        format!(
            "invalid UTF-8 in stored text {}",
            timestamp::escape_bytes(bytes, 60)
        )
        .into()
    })
}

impl FromSql<sql::MultiUuid, Sqlite> for DbUuid {
    fn from_sql(
        mut value: <Sqlite as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        read_stored_uuid(&mut value).map(|(id, _)| DbUuid(id))
    }
}

/// Decodes a stored SQLite id through [`read_legacy_uuid`]; also returns the stored text.
fn read_stored_uuid<'v>(
    value: &'v mut diesel::sqlite::SqliteValue<'_, '_, '_>,
) -> deserialize::Result<(uuid::Uuid, &'v str)> {
    let bytes = value.read_blob();
    match read_legacy_uuid(bytes) {
        // Every accepted spelling is ASCII.
        Ok(id) => Ok((id, std::str::from_utf8(bytes)?)),
        Err(e) => Err(match std::str::from_utf8(bytes) {
            Ok(text) => format!("invalid UUID {:?}: {e}", timestamp::shorten(text, 40)),
            // A UUID in binary says so; other bytes are reported as sqlite_text does.
            Err(_) if bytes.len() == 16 => {
                format!("invalid UUID {}: {e}", timestamp::escape_bytes(bytes, 60))
            }
            Err(_) => format!(
                "invalid UTF-8 in stored text {}",
                timestamp::escape_bytes(bytes, 60)
            ),
        }
        .into()),
    }
}

impl ToSql<sql::MultiUuid, Sqlite> for DbUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.hyphenated().to_string());
        Ok(IsNull::No)
    }
}

impl FromSql<sql::MultiTimestamp, Sqlite> for DbTimestamp {
    fn from_sql(
        mut value: <Sqlite as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        timestamp::parse(sqlite_text(&mut value)?)
            .map(DbTimestamp)
            .map_err(Into::into)
    }
}

impl ToSql<sql::MultiTimestamp, Sqlite> for DbTimestamp {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(timestamp::format(self.0));
        Ok(IsNull::No)
    }
}

// MultiBackend: dispatch to whichever backend the connection is.

impl HasSqlType<sql::MultiUuid> for MultiBackend {
    fn metadata(lookup: &mut Self::MetadataLookup) -> Self::TypeMetadata {
        MultiBackend::lookup_sql_type::<sql::MultiUuid>(lookup)
    }
}

impl HasSqlType<sql::MultiTimestamp> for MultiBackend {
    fn metadata(lookup: &mut Self::MetadataLookup) -> Self::TypeMetadata {
        MultiBackend::lookup_sql_type::<sql::MultiTimestamp>(lookup)
    }
}

impl FromSql<sql::MultiUuid, MultiBackend> for DbUuid {
    fn from_sql(
        bytes: <MultiBackend as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        bytes.from_sql::<DbUuid, sql::MultiUuid>()
    }
}

impl ToSql<sql::MultiUuid, MultiBackend> for DbUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, MultiBackend>) -> serialize::Result {
        out.set_value((sql::MultiUuid, self));
        Ok(IsNull::No)
    }
}

impl FromSql<sql::MultiTimestamp, MultiBackend> for DbTimestamp {
    fn from_sql(
        bytes: <MultiBackend as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        bytes.from_sql::<DbTimestamp, sql::MultiTimestamp>()
    }
}

impl ToSql<sql::MultiTimestamp, MultiBackend> for DbTimestamp {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, MultiBackend>) -> serialize::Result {
        out.set_value((sql::MultiTimestamp, self));
        Ok(IsNull::No)
    }
}

// Legacy ids: the one reader, and lookups by UUID whatever the spelling.

/// Why a stored id is not read as a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NotAUuid {
    /// What is wrong with it, for reports.
    pub reason: &'static str,
}

/// Reads a UUID id as a legacy SQLite file stores it: the one reader of stored ids.
///
/// Accepted, in either case of the hex digits:
/// - canonical hyphenated, `67e55044-10b1-426f-9247-bb680e5fe0c8` (what this crate writes);
/// - 32 hex digits without hyphens, `67E5504410B1426F9247BB680E5FE0C8`
///   (SQLAlchemy 2's `Uuid` type and Django's `UUIDField` on SQLite);
/// - braced, `{67e55044-10b1-426f-9247-bb680e5fe0c8}` (.NET's `Guid.ToString("B")`);
/// - `urn:uuid:` followed by the hyphenated form.
///
/// Refused: everything else, including a 16-byte BLOB. Such a blob is a UUID
/// in binary, but in RFC 4122 byte order (Python's `uuid.bytes`, sqlx) or in
/// Microsoft's mixed-endian GUID order (`Guid.ToByteArray`) with nothing in
/// the file to tell which; a wrong guess would serve every session under an
/// id its clients never saw, so such rows are reported instead (by `check`).
///
/// The SQL side of the same rule is [`uuid_key`]: every spelling accepted
/// here has the same key there, so what this reads, the store finds.
pub fn read_legacy_uuid(stored: &[u8]) -> Result<uuid::Uuid, NotAUuid> {
    uuid::Uuid::try_parse_ascii(stored).map_err(|_| NotAUuid {
        reason: if stored.len() == 16 {
            "is 16 bytes, not a UUID's text: a UUID stored as a BLOB is not read, since its \
             byte order (RFC 4122 or Microsoft GUID) cannot be told"
        } else {
            "is not a UUID (32 hex digits, optionally hyphenated 8-4-4-4-12, braced or urn:uuid:)"
        },
    })
}

/// The SQLite expression around a column that gives its UUID key: the stored
/// text in lower case without `urn:uuid:`, hyphens and braces, i.e. the 32 hex
/// digits [`DbUuidKey`] binds. The indexes of migration
/// `2025-07-10-000000_legacy_uuid_lookup` are on exactly this text (SQLite uses
/// an expression index only for the same expression), and a test compares them.
///
/// Only built-in deterministic functions: the legacy service's own SQLite must
/// keep writing the file, and an index on a function it lacks would fail its writes.
pub const SQLITE_UUID_KEY: (&str, &str) = (
    "replace(replace(replace(replace(lower(",
    "), 'urn:uuid:', ''), '-', ''), '{', ''), '}', '')",
);

/// A UUID column compared by UUID, not by spelling: see [`uuid_key`].
#[derive(Debug, Clone, Copy, QueryId)]
pub struct UuidKey<E>(E);

/// `column` as its UUID key, to compare with a [`DbUuidKey`] or another key.
///
/// On SQLite it renders [`SQLITE_UUID_KEY`] around the column, so a row is found
/// by its UUID however it was spelled, through the expression index; on
/// PostgreSQL the column is a `UUID` and renders as itself. One query body
/// serves both backends. (A shadow column kept by triggers was the other way:
/// it would add a column to the legacy service's own tables, which breaks its
/// `INSERT ... VALUES` without column names and `SELECT *` readers.)
///
/// ```
/// use diesel::prelude::*;
/// use interview_store::schema::sessions;
/// use interview_store::types::{uuid_key, DbUuidKey};
/// let id = uuid::Uuid::now_v7();
/// let _by_uuid = sessions::table.filter(uuid_key(sessions::id).eq(DbUuidKey(id)));
/// ```
pub fn uuid_key<E>(column: E) -> UuidKey<E>
where
    E: Expression<SqlType = sql::MultiUuid>,
{
    UuidKey(column)
}

impl<E> Expression for UuidKey<E>
where
    E: Expression<SqlType = sql::MultiUuid>,
{
    type SqlType = sql::MultiUuid;
}

impl<E, QS> AppearsOnTable<QS> for UuidKey<E> where
    E: AppearsOnTable<QS> + Expression<SqlType = sql::MultiUuid>
{
}

impl<E, QS> SelectableExpression<QS> for UuidKey<E> where
    E: SelectableExpression<QS> + Expression<SqlType = sql::MultiUuid>
{
}

impl<E, GB> ValidGrouping<GB> for UuidKey<E>
where
    E: ValidGrouping<GB>,
{
    type IsAggregate = E::IsAggregate;
}

impl<E: QueryFragment<Sqlite>> QueryFragment<Sqlite> for UuidKey<E> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> diesel::QueryResult<()> {
        out.push_sql(SQLITE_UUID_KEY.0);
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(SQLITE_UUID_KEY.1);
        Ok(())
    }
}

impl<E: QueryFragment<Pg>> QueryFragment<Pg> for UuidKey<E> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        self.0.walk_ast(out)
    }
}

impl<E> QueryFragment<MultiBackend> for UuidKey<E>
where
    E: QueryFragment<Sqlite> + QueryFragment<Pg>,
{
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, MultiBackend>) -> diesel::QueryResult<()> {
        MultiBackend::walk_variant_ast(self, out)
    }
}

/// A UUID bound as the key [`uuid_key`] compares with: on SQLite its 32 lower-case
/// hex digits, on PostgreSQL the `UUID` itself. Compare it only with a [`uuid_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression)]
#[diesel(sql_type = sql::MultiUuid)]
pub struct DbUuidKey(pub uuid::Uuid);

impl ToSql<sql::MultiUuid, Pg> for DbUuidKey {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <uuid::Uuid as ToSql<diesel::sql_types::Uuid, Pg>>::to_sql(&self.0, out)
    }
}

impl ToSql<sql::MultiUuid, Sqlite> for DbUuidKey {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.simple().to_string());
        Ok(IsNull::No)
    }
}

impl ToSql<sql::MultiUuid, MultiBackend> for DbUuidKey {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, MultiBackend>) -> serialize::Result {
        out.set_value((sql::MultiUuid, self));
        Ok(IsNull::No)
    }
}

/// A UUID id as a row stores it: on SQLite the stored text (read through
/// [`read_legacy_uuid`]) and written back unchanged, on PostgreSQL the `UUID`.
///
/// A message or draft added under a legacy session carries this, so it names its
/// session the way the session's row does: SQLite's foreign key compares the
/// text, and so does the legacy service when it reads the session's children.
#[derive(Debug, Clone, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql::MultiUuid)]
pub struct StoredUuid {
    /// The UUID.
    pub uuid: uuid::Uuid,
    /// The stored text on SQLite; `None` on PostgreSQL.
    spelled: Option<String>,
}

impl FromSql<sql::MultiUuid, Pg> for StoredUuid {
    fn from_sql(
        bytes: <Pg as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        Ok(StoredUuid {
            uuid: <uuid::Uuid as FromSql<diesel::sql_types::Uuid, Pg>>::from_sql(bytes)?,
            spelled: None,
        })
    }
}

impl ToSql<sql::MultiUuid, Pg> for StoredUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <uuid::Uuid as ToSql<diesel::sql_types::Uuid, Pg>>::to_sql(&self.uuid, out)
    }
}

impl FromSql<sql::MultiUuid, Sqlite> for StoredUuid {
    fn from_sql(
        mut value: <Sqlite as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        let (uuid, text) = read_stored_uuid(&mut value)?;
        Ok(StoredUuid {
            uuid,
            spelled: Some(text.to_string()),
        })
    }
}

impl ToSql<sql::MultiUuid, Sqlite> for StoredUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        match &self.spelled {
            Some(text) => out.set_value(text.as_str()),
            None => out.set_value(self.uuid.hyphenated().to_string()),
        }
        Ok(IsNull::No)
    }
}

impl FromSql<sql::MultiUuid, MultiBackend> for StoredUuid {
    fn from_sql(
        bytes: <MultiBackend as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        bytes.from_sql::<StoredUuid, sql::MultiUuid>()
    }
}

impl ToSql<sql::MultiUuid, MultiBackend> for StoredUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, MultiBackend>) -> serialize::Result {
        out.set_value((sql::MultiUuid, self));
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_legacy_spelling_reads_as_the_same_uuid() {
        let id: uuid::Uuid = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        for spelled in [
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "67E5504410B1426F9247BB680E5FE0C8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "{67E55044-10B1-426F-9247-BB680E5FE0C8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            assert_eq!(read_legacy_uuid(spelled.as_bytes()), Ok(id), "{spelled}");
        }
    }

    #[test]
    fn other_values_are_refused_with_a_reason() {
        for bad in [
            &b""[..],
            b"67e55044-10b1-426f-9247-bb680e5fe0c",
            b" 67e55044-10b1-426f-9247-bb680e5fe0c8",
            b"67e55044-10b1-426f-9247-bb680e5fe0cg",
            b"{67e5504410b1426f9247bb680e5fe0c8}",
        ] {
            assert!(read_legacy_uuid(bad).is_err(), "{bad:?}");
        }
        let blob = uuid::Uuid::now_v7().into_bytes();
        let e = read_legacy_uuid(&blob).unwrap_err();
        assert!(e.reason.contains("BLOB"), "{e}");
    }
}
