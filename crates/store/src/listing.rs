//! The SQL of a listing, shared by the SQL stores (each gives its placeholder style and table).
//!
//! The query walks one index range per status, in the listing's order, and merges them (SQLite
//! and PostgreSQL both merge ordered `UNION ALL` arms without sorting the whole): a status
//! filter is the common case, and an index led by the status serves it, while a query without
//! one asks for every status. Two filters have better ranges of their own and get one
//! statement instead: a parent (its children, few, by `instances_parent`) and a name without a
//! status in creation order (`instances_name_created`). The other filters are conditions on
//! the rows walked. Each arm stops at the page size plus one, the extra row telling whether
//! another page follows.

use crate::query::{InstanceQuery, PageCursor};
use sluice_history::InstanceStatus;

/// The columns a listing selects, in this order.
pub const COLUMNS: &str = "instance_id, name, status, execution_id, failure, custom_status, \
                           parent_id, created_at_ms, started_at_ms, updated_at_ms, finished_at_ms";

/// Every status, for a listing without a status filter.
pub const ALL_STATUSES: [InstanceStatus; 8] = [
    InstanceStatus::Pending,
    InstanceStatus::Running,
    InstanceStatus::Completed,
    InstanceStatus::Failed,
    InstanceStatus::Cancelled,
    InstanceStatus::Quarantined,
    InstanceStatus::Suspended,
    InstanceStatus::Terminated,
];

/// A bound value of a listing's SQL.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// A text value.
    Text(String),
    /// An integer.
    Int(i64),
}

/// A listing's SQL and its parameters (numbered from 1 in the order given).
#[derive(Clone, Debug, PartialEq)]
pub struct ListingSql {
    /// The statement.
    pub sql: String,
    /// Its parameters.
    pub params: Vec<Param>,
}

/// How a database spells what a listing needs.
pub struct Dialect<'a> {
    /// The n-th parameter (`?n` for SQLite, `$n` for PostgreSQL).
    pub placeholder: &'a dyn Fn(usize) -> String,
    /// `starts_with(column, placeholder)`: the column starts with the bound text.
    pub starts_with: &'a dyn Fn(&str, &str) -> String,
    /// The id column as an expression that compares by code point and that an index orders
    /// (SQLite's primary key, `BINARY`; on PostgreSQL `(instance_id COLLATE "C")`): an id
    /// prefix is then also a range of that index, given to the planner as well, and a
    /// listing by prefix is planned by a probe of that range ([`prefix_probe_sql`]). `None`
    /// when there is no such index.
    pub code_point_id: Option<&'a str>,
}

/// Instances an id prefix may select for its listing to read them all from the id range and
/// sort them; past this the listing walks an index in its order instead.
pub const PREFIX_SORTED_ROWS_MAX: i64 = 5_000;

/// How a listing with an id prefix reads its page, chosen by [`prefix_probe_sql`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixPlan {
    /// Walk the status indexes in the listing's order, testing the prefix on each row (the
    /// plan of every listing without a probe).
    Walk,
    /// At most [`PREFIX_SORTED_ROWS_MAX`] instances: read the prefix's id range and sort it,
    /// however old they are.
    Sort,
    /// More: walk, starting from this creation time, the newest (oldest, for a listing in
    /// ascending order) of the prefix, so that a prefix whose instances are all old does not
    /// walk every newer instance first.
    WalkFrom(i64),
}

impl PrefixPlan {
    /// The plan for what the probe answered: the capped count and the bound.
    pub fn from_probe(count: i64, bound: Option<i64>) -> Self {
        match bound {
            _ if count <= PREFIX_SORTED_ROWS_MAX => PrefixPlan::Sort,
            Some(bound) => PrefixPlan::WalkFrom(bound),
            None => PrefixPlan::Walk,
        }
    }
}

/// The id range of a prefix, in the dialect's code point expression, binding its values.
fn id_range(prefix: &str, id: &str, builder: &mut Builder<'_>) -> Vec<String> {
    let mut range = vec![format!(
        "{id} >= {}",
        builder.bind(Param::Text(prefix.to_string()))
    )];
    if let Some(upper) = prefix_upper_bound(prefix) {
        range.push(format!("{id} < {}", builder.bind(Param::Text(upper))));
    }
    range
}

/// The probe that plans a listing by id prefix, or `None` when it needs none (no prefix, a
/// parent's children, or a store without an id range). It answers one row: how many instances
/// the prefix's id range holds, counted up to one past [`PREFIX_SORTED_ROWS_MAX`], and the
/// creation time a walk may start from (the range's newest for a newest-first listing by
/// creation, its oldest for an ascending one; `NULL` for newest-first by last update, which
/// creation times do not bound). [`PrefixPlan::from_probe`] turns the row into the plan.
pub fn prefix_probe_sql(
    query: &InstanceQuery,
    table: &str,
    dialect: &Dialect<'_>,
) -> Option<ListingSql> {
    let filter = &query.filter;
    let (Some(prefix), Some(id), None) = (&filter.id_prefix, dialect.code_point_id, &filter.parent)
    else {
        return None;
    };
    let mut builder = Builder {
        params: Vec::new(),
        placeholder: dialect.placeholder,
    };
    let range = id_range(prefix, id, &mut builder).join(" AND ");
    let max = builder.bind(Param::Int(PREFIX_SORTED_ROWS_MAX + 1));
    // A last update is never before the creation, so the oldest creation bounds an ascending
    // walk by update as well.
    let bound = match (query.order.by_update(), query.order.descending()) {
        (_, false) => format!("(SELECT min(created_at_ms) FROM {table} WHERE {range})"),
        (false, true) => format!("(SELECT max(created_at_ms) FROM {table} WHERE {range})"),
        (true, true) => "CAST(NULL AS BIGINT)".to_string(),
    };
    Some(ListingSql {
        sql: format!(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {range} LIMIT {max}) AS p), {bound}"
        ),
        params: builder.params,
    })
}

/// The least text above every text that starts with `prefix`, in code point order (`None`
/// when there is none: the prefix is all `char::MAX`).
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

struct Builder<'a> {
    params: Vec<Param>,
    placeholder: &'a dyn Fn(usize) -> String,
}

impl Builder<'_> {
    fn bind(&mut self, param: Param) -> String {
        self.params.push(param);
        (self.placeholder)(self.params.len())
    }
}

/// The conditions of `filter` other than its statuses, binding their values.
///
/// With `with_id_range`, an id prefix also bounds the dialect's code point id to the prefix's
/// range, for a statement that reads the range. A walk leaves it out: PostgreSQL multiplies the
/// selectivities of the range and of `starts_with` (the same condition twice), takes a range of
/// 100,000 rows for one of 1,600, and reads and sorts the whole range in every arm instead of
/// walking.
fn conditions(
    filter: &crate::query::InstanceFilter,
    builder: &mut Builder<'_>,
    dialect: &Dialect<'_>,
    with_id_range: bool,
) -> Vec<String> {
    let mut common = Vec::new();
    if let Some(name) = &filter.name {
        common.push(format!(
            "name = {}",
            builder.bind(Param::Text(name.clone()))
        ));
    }
    if let Some(from) = filter.created.from_ms {
        common.push(format!(
            "created_at_ms >= {}",
            builder.bind(Param::Int(from))
        ));
    }
    if let Some(to) = filter.created.to_ms {
        common.push(format!("created_at_ms < {}", builder.bind(Param::Int(to))));
    }
    if !filter.finished.is_open() {
        common.push("finished_at_ms IS NOT NULL".to_string());
    }
    // A finished instance's last update is its finish (nothing changes it afterwards), so a
    // finish range is also a range of `updated_at_ms`, which the status indexes order.
    if let Some(from) = filter.finished.from_ms {
        let at = builder.bind(Param::Int(from));
        common.push(format!("finished_at_ms >= {at} AND updated_at_ms >= {at}"));
    }
    if let Some(to) = filter.finished.to_ms {
        let at = builder.bind(Param::Int(to));
        common.push(format!("finished_at_ms < {at} AND updated_at_ms < {at}"));
    }
    if let Some(prefix) = &filter.id_prefix {
        let at = builder.bind(Param::Text(prefix.clone()));
        common.push((dialect.starts_with)("instance_id", &at));
        if let (true, Some(id)) = (with_id_range, dialect.code_point_id) {
            common.extend(id_range(prefix, id, builder));
        }
    }
    if let Some(parent) = &filter.parent {
        common.push(format!(
            "parent_id = {}",
            builder.bind(Param::Text(parent.clone()))
        ));
    }
    common
}

/// `WHERE` with `conditions` and the filter's statuses (`IN`), or nothing when there are none.
fn where_clause(
    mut conditions: Vec<String>,
    filter: &crate::query::InstanceFilter,
    builder: &mut Builder<'_>,
) -> String {
    if !filter.statuses.is_empty() {
        let statuses: Vec<String> = filter
            .distinct_statuses()
            .iter()
            .map(|status| builder.bind(Param::Text(status.as_str().to_string())))
            .collect();
        conditions.push(format!("status IN ({})", statuses.join(", ")));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

/// How many instances over `table` `filter` selects (the statement answers one integer).
pub fn count_sql(
    filter: &crate::query::InstanceFilter,
    table: &str,
    dialect: &Dialect<'_>,
) -> ListingSql {
    let mut builder = Builder {
        params: Vec::new(),
        placeholder: dialect.placeholder,
    };
    let common = conditions(filter, &mut builder, dialect, true);
    let conditions = where_clause(common, filter, &mut builder);
    ListingSql {
        sql: format!("SELECT count(*) FROM {table} {conditions}"),
        params: builder.params,
    }
}

/// The listing of `query` over `table` (already quoted), in `dialect`, walking the indexes in
/// its order ([`PrefixPlan::Walk`]).
pub fn listing_sql(query: &InstanceQuery, table: &str, dialect: &Dialect<'_>) -> ListingSql {
    planned_listing_sql(query, table, dialect, PrefixPlan::Walk)
}

/// The listing of `query` by `plan` (from [`prefix_probe_sql`] for a listing by id prefix).
pub fn planned_listing_sql(
    query: &InstanceQuery,
    table: &str,
    dialect: &Dialect<'_>,
    plan: PrefixPlan,
) -> ListingSql {
    let mut builder = Builder {
        params: Vec::new(),
        placeholder: dialect.placeholder,
    };
    let filter = &query.filter;
    let key = if query.order.by_update() {
        "updated_at_ms"
    } else {
        "created_at_ms"
    };
    let direction = if query.order.descending() {
        "DESC"
    } else {
        "ASC"
    };
    let limit = i64::try_from(query.limit() + 1).unwrap_or(i64::MAX);
    let mut common = conditions(filter, &mut builder, dialect, false);
    if let Some(PageCursor {
        key_ms,
        instance_id,
    }) = &query.after
    {
        let comparison = if query.order.descending() { "<" } else { ">" };
        let key_at = builder.bind(Param::Int(*key_ms));
        let id_at = builder.bind(Param::Text(instance_id.clone()));
        common.push(format!(
            "({key}, instance_id) {comparison} ({key_at}, {id_at})"
        ));
    }
    match plan {
        PrefixPlan::WalkFrom(bound) => {
            let comparison = if query.order.descending() { "<=" } else { ">=" };
            let bound_at = builder.bind(Param::Int(bound));
            // The walk starts at the bound. By update only an ascending walk gets one, the
            // oldest creation, and no instance was updated before it was created.
            common.push(format!("{key} {comparison} {bound_at}"));
        }
        PrefixPlan::Sort | PrefixPlan::Walk => {}
    }
    let limit_at = builder.bind(Param::Int(limit));
    let order = format!("ORDER BY {key} {direction}, instance_id {direction}");
    if let (PrefixPlan::Sort, Some(prefix), Some(id)) =
        (plan, &filter.id_prefix, dialect.code_point_id)
    {
        // The prefix's id range, a few thousand rows at most, read once and sorted.
        let range = id_range(prefix, id, &mut builder).join(" AND ");
        let conditions = where_clause(common, filter, &mut builder);
        return ListingSql {
            sql: format!(
                "WITH p AS MATERIALIZED (SELECT {COLUMNS} FROM {table} WHERE {range})
                 SELECT {COLUMNS} FROM p {conditions} {order} LIMIT {limit_at}"
            ),
            params: builder.params,
        };
    }
    // A parent's children are few (`instances_parent`), and a name without a status is walked
    // in creation order by `instances_name_created`: one range, no arms.
    let single = filter.parent.is_some()
        || (filter.statuses.is_empty() && filter.name.is_some() && !query.order.by_update());
    if single {
        let conditions = where_clause(common, filter, &mut builder);
        return ListingSql {
            sql: format!("SELECT {COLUMNS} FROM {table} {conditions} {order} LIMIT {limit_at}"),
            params: builder.params,
        };
    }
    let statuses = if filter.statuses.is_empty() {
        ALL_STATUSES.to_vec()
    } else {
        filter.distinct_statuses()
    };
    let arms: Vec<String> = statuses
        .iter()
        .map(|status| {
            let mut conditions = vec![format!(
                "status = {}",
                builder.bind(Param::Text(status.as_str().to_string()))
            )];
            conditions.extend(common.iter().cloned());
            format!(
                "SELECT {COLUMNS} FROM {table} WHERE {} {order} LIMIT {limit_at}",
                conditions.join(" AND ")
            )
        })
        .collect();
    let sql = if let [arm] = arms.as_slice() {
        arm.clone()
    } else {
        let merged: Vec<String> = arms
            .iter()
            .enumerate()
            .map(|(index, arm)| format!("SELECT * FROM ({arm}) AS arm{index}"))
            .collect();
        format!("{} {order} LIMIT {limit_at}", merged.join(" UNION ALL "))
    };
    ListingSql {
        sql,
        params: builder.params,
    }
}

/// Splits the rows a listing's SQL returned (page size plus one at most) into the page and its
/// cursor.
pub fn into_page(
    query: &InstanceQuery,
    mut instances: Vec<crate::InstanceSummary>,
) -> crate::InstancePage {
    let limit = query.limit();
    let next = if instances.len() > limit {
        instances.truncate(limit);
        instances.last().map(|last| PageCursor {
            key_ms: query.order.key_of(last),
            instance_id: last.instance_id.clone(),
        })
    } else {
        None
    };
    crate::InstancePage { instances, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{InstanceFilter, InstanceOrder};

    fn sqlite(n: usize) -> String {
        format!("?{n}")
    }

    fn like(column: &str, at: &str) -> String {
        format!("substr({column}, 1, length({at})) = {at}")
    }

    const DIALECT: Dialect<'static> = Dialect {
        placeholder: &sqlite,
        starts_with: &like,
        code_point_id: Some("instance_id"),
    };

    #[test]
    fn prefix_bounds_are_exact_in_code_point_order() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(
            prefix_upper_bound("a\u{d7ff}").as_deref(),
            Some("a\u{e000}")
        );
        assert_eq!(
            prefix_upper_bound("a\u{10ffff}").as_deref(),
            Some("b"),
            "the last char cannot grow: the one before it does"
        );
        assert_eq!(prefix_upper_bound("\u{10ffff}"), None);
        assert_eq!(prefix_upper_bound(""), None);
        let upper = prefix_upper_bound("ab").unwrap();
        for id in ["ab", "ab\u{10ffff}\u{10ffff}", "abz"] {
            assert!(id < upper.as_str(), "{id}");
        }
    }

    #[test]
    fn one_status_is_one_range_and_several_are_merged() {
        let one = InstanceQuery {
            filter: InstanceFilter {
                statuses: vec![InstanceStatus::Failed, InstanceStatus::Failed],
                ..InstanceFilter::default()
            },
            page_size: 10,
            ..InstanceQuery::default()
        };
        let sql = listing_sql(&one, "instances", &DIALECT);
        assert!(!sql.sql.contains("UNION"), "{}", sql.sql);
        assert_eq!(
            sql.params,
            [Param::Int(11), Param::Text("failed".into())],
            "{}",
            sql.sql
        );
        let all = InstanceQuery {
            order: InstanceOrder::UpdatedAsc,
            after: Some(PageCursor {
                key_ms: 5,
                instance_id: "x".into(),
            }),
            page_size: 10,
            ..InstanceQuery::default()
        };
        let sql = listing_sql(&all, "instances", &DIALECT);
        assert_eq!(sql.sql.matches("UNION ALL").count(), ALL_STATUSES.len() - 1);
        assert!(sql.sql.contains("(updated_at_ms, instance_id) > (?1, ?2)"));
        assert!(
            sql.sql
                .ends_with("ORDER BY updated_at_ms ASC, instance_id ASC LIMIT ?3")
        );
    }
}
