//! Reading an existing table's columns, for tools that build a schema from the table (for
//! example `sluice ingest` without a `[columns]` table). Read-only: one catalog query, the
//! table's name bound as a parameter.

use crate::error::classify;
use crate::values::PgType;
use sluice_sink::{BackendError, ColumnType, DescribedColumn, Ident};

/// The columns of table `table` (resolved on the search path like the sink resolves it), in
/// their order, or `None` when no table of that name exists. A view or another kind of
/// relation is `None` too: the sink does not write into them.
pub(crate) async fn describe_table(
    client: &tokio_postgres::Client,
    table: &Ident,
) -> Result<Option<Vec<DescribedColumn>>, BackendError> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull, a.atthasdef, a.attidentity::text, a.attgenerated::text \
             FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.oid = to_regclass($1::text) AND c.relkind IN ('r', 'p') \
             ORDER BY a.attnum",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| classify(&e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        // A table without columns yields one row of NULLs from the outer join.
        let Some(name) = row.get::<_, Option<String>>(0) else {
            continue;
        };
        let oid: u32 = row.get(1);
        let identity: String = row.get(5);
        let generated: String = row.get(6);
        columns.push(DescribedColumn {
            name,
            column_type: PgType::from_oid(oid).map(column_type_of),
            type_name: row.get(2),
            nullable: !row.get::<_, bool>(3),
            filled_by_table: row.get::<_, bool>(4) || !identity.is_empty() || !generated.is_empty(),
            read_only: !generated.is_empty() || identity == "a",
        });
    }
    Ok(Some(columns))
}

/// The sink's type a column of `pg` holds (the inverse of [`PgType::holds`]).
fn column_type_of(pg: PgType) -> ColumnType {
    match pg {
        PgType::Bool => ColumnType::Bool,
        PgType::Int2 | PgType::Int4 | PgType::Int8 => ColumnType::I64,
        PgType::Float8 => ColumnType::F64,
        PgType::Numeric => ColumnType::Decimal,
        PgType::Text | PgType::Varchar => ColumnType::Text,
        PgType::Bytea => ColumnType::Bytes,
        PgType::Json | PgType::Jsonb => ColumnType::Json,
        PgType::Uuid => ColumnType::Uuid,
        PgType::Date => ColumnType::Date,
        PgType::Timestamp => ColumnType::Timestamp,
        PgType::Timestamptz => ColumnType::TimestampTz,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_maps_to_one_it_holds() {
        for pg in [
            PgType::Bool,
            PgType::Int2,
            PgType::Int4,
            PgType::Int8,
            PgType::Float8,
            PgType::Numeric,
            PgType::Text,
            PgType::Varchar,
            PgType::Bytea,
            PgType::Json,
            PgType::Jsonb,
            PgType::Uuid,
            PgType::Date,
            PgType::Timestamp,
            PgType::Timestamptz,
        ] {
            assert!(pg.holds(column_type_of(pg)), "{pg:?}");
        }
    }
}
