//! The type mapping: one SQL type per column kind that differs between the backends.
//!
//! | Rust                | PostgreSQL    | SQLite                                      |
//! |---------------------|---------------|---------------------------------------------|
//! | `uuid::Uuid`        | `UUID`        | `TEXT`, lowercase hyphenated                |
//! | `DateTime<Utc>`     | `TIMESTAMPTZ` | `TEXT`, `2025-03-01T12:34:56.123456Z`       |
//!
//! Diesel cannot implement `AsExpression` for foreign types against our SQL
//! types, so queries bind the local newtypes [`DbUuid`] and [`DbTimestamp`];
//! the public domain structs carry plain `Uuid` and `DateTime<Utc>`.

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::Pg;
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
        let text = sqlite_text(&mut value)?;
        uuid::Uuid::parse_str(text)
            .map(DbUuid)
            .map_err(|e| format!("invalid UUID {:?}: {e}", timestamp::shorten(text, 40)).into())
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
