//! The SQL text of one table's statements, and running a batch through them.
//!
//! A batch is cut into multi-row statements whose row counts are powers of two (at most
//! `rows_max` rows, chosen so no statement binds more than SQLite's variable limit): full
//! statements first, then the remainder as a sum of powers of two. So each table needs at most
//! eleven texts per kind, all built once and kept in rusqlite's prepared-statement cache,
//! instead of one text (and one compilation) per remainder size. All statements of a batch run
//! inside the caller's savepoint: they commit together or not at all.

use crate::error::classify;
use crate::values::Bind;
use rusqlite::Connection;
use sluice_sink::{BackendError, Op, Row, Schema};
use std::sync::OnceLock;

/// Rows per statement at most, whatever the variable limit allows: beyond ~1,000 rows a
/// statement is no faster and takes longer to compile.
pub const ROWS_PER_STATEMENT_MAX: usize = 1024;

/// Power-of-two sizes kept per kind: 1, 2, 4, ..., 1024.
const SIZES: usize = ROWS_PER_STATEMENT_MAX.trailing_zeros() as usize + 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Insert,
    Upsert,
    Delete,
}

/// Statement texts for one table and schema.
#[derive(Debug)]
pub(crate) struct Statements {
    table: String,
    column_list: String,
    key_list: String,
    /// `DO UPDATE SET ...` or `DO NOTHING`.
    conflict_action: String,
    /// Columns per row (insert, upsert) and key columns per row (delete).
    columns: usize,
    key_columns: usize,
    /// The largest power-of-two rows per statement, per kind.
    insert_rows_max: usize,
    delete_rows_max: usize,
    texts: [[OnceLock<String>; SIZES]; 3],
}

impl Statements {
    /// Texts for `schema`'s table, binding at most `variable_limit` parameters per statement.
    pub(crate) fn new(schema: &Schema, variable_limit: usize) -> Statements {
        let quoted: Vec<String> = schema.columns().iter().map(|c| c.name.quoted()).collect();
        let key: Vec<String> = schema.key_columns().map(|c| c.name.quoted()).collect();
        let updates: Vec<String> = schema
            .columns()
            .iter()
            .enumerate()
            .filter(|(index, _)| !schema.is_key(*index))
            .map(|(_, column)| format!("{0} = excluded.{0}", column.name.quoted()))
            .collect();
        let conflict_action = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let rows_max = |per_row: usize| {
            let fit = (variable_limit / per_row.max(1)).clamp(1, ROWS_PER_STATEMENT_MAX);
            1usize << fit.ilog2()
        };
        Statements {
            table: schema.table().quoted(),
            column_list: quoted.join(", "),
            key_list: key.join(", "),
            conflict_action,
            columns: quoted.len(),
            key_columns: key.len(),
            insert_rows_max: rows_max(quoted.len()),
            delete_rows_max: rows_max(key.len()),
            texts: Default::default(),
        }
    }

    /// The largest rows per statement for `kind`.
    pub(crate) fn rows_max(&self, kind: Kind) -> usize {
        match kind {
            Kind::Insert | Kind::Upsert => self.insert_rows_max,
            Kind::Delete => self.delete_rows_max,
        }
    }

    /// The text for `rows` rows (a power of two up to `rows_max(kind)`).
    pub(crate) fn text(&self, kind: Kind, rows: usize) -> &str {
        assert!(
            rows.is_power_of_two() && rows <= self.rows_max(kind),
            "statement size {rows}"
        );
        let slot = &self.texts[kind as usize][rows.trailing_zeros() as usize];
        slot.get_or_init(|| self.build(kind, rows))
    }

    fn build(&self, kind: Kind, rows: usize) -> String {
        let tuple = |width: usize| format!("({})", vec!["?"; width].join(", "));
        match kind {
            Kind::Insert | Kind::Upsert => {
                let values = vec![tuple(self.columns); rows].join(", ");
                let mut text = format!(
                    "INSERT INTO {} ({}) VALUES {values}",
                    self.table, self.column_list
                );
                if kind == Kind::Upsert {
                    text.push_str(&format!(
                        " ON CONFLICT ({}) {}",
                        self.key_list, self.conflict_action
                    ));
                }
                text
            }
            Kind::Delete if self.key_columns == 1 => format!(
                "DELETE FROM {} WHERE {} IN ({})",
                self.table,
                self.key_list,
                vec!["?"; rows].join(", ")
            ),
            Kind::Delete => format!(
                "DELETE FROM {} WHERE ({}) IN (VALUES {})",
                self.table,
                self.key_list,
                vec![tuple(self.key_columns); rows].join(", ")
            ),
        }
    }
}

/// Statement sizes covering `total` rows: full statements, then the remainder's binary digits.
pub(crate) fn chunk_sizes(total: usize, rows_max: usize) -> impl Iterator<Item = usize> {
    debug_assert!(rows_max.is_power_of_two());
    let full = total / rows_max;
    let remainder = total % rows_max;
    std::iter::repeat_n(rows_max, full).chain(
        (0..usize::BITS)
            .rev()
            .map(|bit| 1usize << bit)
            .filter(move |size| remainder & size != 0),
    )
}

/// Writes `rows` (all inserts, or upserts and deletes of distinct keys) with multi-row
/// statements. Runs inside the group-commit savepoint: an error rolls back all of it.
pub(crate) fn write_rows(
    connection: &Connection,
    statements: &Statements,
    schema: &Schema,
    rows: &[Row],
) -> Result<(), BackendError> {
    let mut inserts = Vec::new();
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for row in rows {
        match row.op {
            Op::Insert => inserts.push(row),
            Op::Upsert => upserts.push(row),
            Op::Delete => deletes.push(row),
        }
    }
    // Keys within a keyed batch are distinct, so deletes and upserts commute.
    run(connection, statements, schema, Kind::Delete, &deletes)?;
    run(connection, statements, schema, Kind::Upsert, &upserts)?;
    run(connection, statements, schema, Kind::Insert, &inserts)?;
    Ok(())
}

fn run(
    connection: &Connection,
    statements: &Statements,
    schema: &Schema,
    kind: Kind,
    rows: &[&Row],
) -> Result<(), BackendError> {
    let mut rest = rows;
    for size in chunk_sizes(rows.len(), statements.rows_max(kind)) {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut statement = connection
            .prepare_cached(statements.text(kind, size))
            .map_err(classify)?;
        let mut parameter = 1;
        for row in chunk {
            if kind == Kind::Delete {
                for &index in schema.key() {
                    statement
                        .raw_bind_parameter(parameter, Bind(&row.values[index]))
                        .map_err(classify)?;
                    parameter += 1;
                }
            } else {
                for value in &row.values {
                    statement
                        .raw_bind_parameter(parameter, Bind(value))
                        .map_err(classify)?;
                    parameter += 1;
                }
            }
        }
        statement.raw_execute().map_err(classify)?;
    }
    debug_assert!(rest.is_empty(), "every row went into a statement");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sink::{Column, ColumnType};

    #[test]
    fn chunks_cover_every_row_with_few_sizes() {
        for total in 0..3000 {
            let sizes: Vec<usize> = chunk_sizes(total, 1024).collect();
            assert_eq!(sizes.iter().sum::<usize>(), total);
            assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= 1024));
        }
        assert_eq!(
            chunk_sizes(2085, 1024).collect::<Vec<_>>(),
            [1024, 1024, 32, 4, 1]
        );
    }

    #[test]
    fn statements_respect_the_variable_limit_and_quote_names() {
        let columns: Vec<Column> = (0..40)
            .map(|i| {
                Column::new(&format!("c{i}"), ColumnType::I64)
                    .unwrap()
                    .not_null()
            })
            .collect();
        let schema = Schema::new("order", columns, &["c0", "c1"]).unwrap();
        let statements = Statements::new(&schema, 32_766);
        // 32,766 / 40 = 819 rows fit; the power of two below is 512.
        assert_eq!(statements.rows_max(Kind::Upsert), 512);
        assert_eq!(statements.rows_max(Kind::Delete), 1024);
        let upsert = statements.text(Kind::Upsert, 2);
        assert!(
            upsert.starts_with("INSERT INTO \"order\" (\"c0\", \"c1\", "),
            "{upsert}"
        );
        assert!(
            upsert.contains("ON CONFLICT (\"c0\", \"c1\") DO UPDATE SET \"c2\" = excluded.\"c2\"")
        );
        assert_eq!(upsert.matches('?').count(), 80);
        assert_eq!(
            statements.text(Kind::Delete, 2),
            "DELETE FROM \"order\" WHERE (\"c0\", \"c1\") IN (VALUES (?, ?), (?, ?))"
        );
    }
}
