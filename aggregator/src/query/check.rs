//! The first line of defence: parse the SQL and let through only one read-only query.
//!
//! This runs before DataFusion plans anything. The second line is
//! [`SQLOptions`](datafusion::execution::context::SQLOptions) with DDL, DML and
//! statements disallowed, applied to the logical plan in [`super::run_query`].

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    ObjectName, ObjectNamePart, Query, SetExpr, Statement, Visit, Visitor,
};

use super::QueryError;

/// Accepts exactly one statement that is a query (`SELECT`, `WITH`, `VALUES`, set
/// operations) or an `EXPLAIN` of one; refuses everything else with a message naming what
/// was refused.
///
/// Also refused: statements nested inside a query (`WITH x AS (INSERT ...)`),
/// `SELECT ... INTO`, and table names that look like files or URLs (`FROM '/etc/passwd'`,
/// `FROM "s3://b/x.parquet"`), which DataFusion reads directly when a context has URL
/// tables enabled.
///
/// A syntax error is [`QueryError::Invalid`] carrying DataFusion's parser message.
pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    let mut statements = DFParserBuilder::new(sql)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(QueryError::from_datafusion)?;
    let statement = match statements.len() {
        0 => return Err(QueryError::BadRequest("no SQL statement given".to_owned())),
        1 => statements.pop_front().expect("length checked"),
        n => {
            return Err(QueryError::Refused(format!(
                "exactly one statement is allowed; got {n}"
            )));
        }
    };
    check_statement(&statement)
}

fn check_statement(statement: &DfStatement) -> Result<(), QueryError> {
    match statement {
        DfStatement::Statement(inner) => check_sql_statement(inner),
        DfStatement::Explain(explain) => {
            check_statement(&explain.statement).map_err(|err| match err {
                QueryError::Refused(msg) => QueryError::Refused(format!("EXPLAIN: {msg}")),
                other => other,
            })
        }
        DfStatement::CreateExternalTable(_) => Err(refused("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(refused("COPY")),
        DfStatement::Reset(_) => Err(refused("RESET")),
    }
}

fn check_sql_statement(statement: &Statement) -> Result<(), QueryError> {
    match statement {
        Statement::Query(_) => {}
        Statement::Explain { statement, .. } => {
            return check_sql_statement(statement).map_err(|err| match err {
                QueryError::Refused(msg) => QueryError::Refused(format!("EXPLAIN: {msg}")),
                other => other,
            });
        }
        other => return Err(refused(&statement_kind(other))),
    }
    match statement.visit(&mut ReadOnlyVisitor) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(err) => Err(err),
    }
}

/// Top-level `SELECT ... INTO t` creates a table; refuse it here with a clear message
/// (the planner would turn it into DDL, which the second line refuses less clearly).
fn check_query_body(body: &SetExpr) -> Result<(), QueryError> {
    match body {
        SetExpr::Select(select) if select.into.is_some() => Err(refused("SELECT INTO")),
        SetExpr::SetOperation { left, right, .. } => {
            check_query_body(left)?;
            check_query_body(right)
        }
        SetExpr::Query(query) => check_query_body(&query.body),
        _ => Ok(()),
    }
}

/// Walks the whole statement: every nested statement must be a query, and no table name
/// may point at a file or URL.
struct ReadOnlyVisitor;

impl Visitor for ReadOnlyVisitor {
    type Break = QueryError;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<QueryError> {
        match statement {
            Statement::Query(_) => ControlFlow::Continue(()),
            other => ControlFlow::Break(refused(&statement_kind(other))),
        }
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<QueryError> {
        match check_query_body(&query.body) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => ControlFlow::Break(err),
        }
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<QueryError> {
        for part in &relation.0 {
            let ObjectNamePart::Identifier(ident) = part else {
                continue;
            };
            // A quoted name containing a separator is never one of our tables: our tables
            // are plain identifiers, and dotted names are already split into parts.
            let path_like =
                ident.quote_style == Some('\'') || ident.value.contains(['/', '\\', ':', '.']);
            if path_like {
                return ControlFlow::Break(QueryError::Refused(format!(
                    "file and URL access is not allowed; got table name {:?}",
                    ident.value
                )));
            }
        }
        ControlFlow::Continue(())
    }
}

fn refused(kind: &str) -> QueryError {
    QueryError::Refused(format!("only queries are allowed; got {kind}"))
}

/// A short name for a statement, such as `CREATE TABLE` or `DROP VIEW`.
fn statement_kind(statement: &Statement) -> String {
    let kind = match statement {
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Merge(_) => "MERGE",
        Statement::Truncate(_) => "TRUNCATE",
        Statement::Copy { .. } | Statement::CopyIntoSnowflake { .. } => "COPY",
        Statement::Set(_) => "SET",
        Statement::Reset(_) => "RESET",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateView(_) => "CREATE VIEW",
        Statement::CreateIndex(_) => "CREATE INDEX",
        Statement::CreateSchema { .. } => "CREATE SCHEMA",
        Statement::CreateDatabase { .. } => "CREATE DATABASE",
        Statement::CreateFunction(_) => "CREATE FUNCTION",
        Statement::AlterTable(_) => "ALTER TABLE",
        Statement::Drop { object_type, .. } => return format!("DROP {object_type}"),
        Statement::ExplainTable { .. } => "DESCRIBE",
        Statement::StartTransaction { .. } => "START TRANSACTION",
        Statement::Commit { .. } => "COMMIT",
        Statement::Rollback { .. } => "ROLLBACK",
        Statement::Prepare { .. } => "PREPARE",
        Statement::Execute { .. } => "EXECUTE",
        Statement::Deallocate { .. } => "DEALLOCATE",
        other => return leading_keywords(&other.to_string()),
    };
    kind.to_owned()
}

/// The first one or two all-uppercase words of the statement's canonical text, such as
/// `SHOW TABLES` or `CREATE ROLE`. sqlparser prints keywords in uppercase.
fn leading_keywords(text: &str) -> String {
    let words: Vec<&str> = text
        .split_whitespace()
        .take(2)
        .take_while(|word| word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .collect();
    if words.is_empty() {
        "a statement that is not a query".to_owned()
    } else {
        words.join(" ")
    }
}
