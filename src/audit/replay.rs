//! Replays the audit log against the state tables: each event about a person, token or
//! certificate (subject `person:…`, `token:…`, `certificate:…`) carries the row as it left the
//! change (`after`), so the log says what every row must hold now. [`replay`] compares the
//! fields the rules change — people's names, attributes and state; tokens' state and holder;
//! certificates' profile, status, revocation reason and DER hash — with the tables and names
//! every row the log does not explain: a field that differs, a row no event records, a row
//! the log records that is gone. A revoked certificate set back to good in `certificates` is
//! found here even though the chain itself verifies.
use super::AuditError;
use crate::store::{CertificatesQuery, PeopleQuery, Store, TokensQuery};
use serde_json::Value;
use std::collections::BTreeMap;

/// A state table the log explains.
struct Table {
    name: &'static str,
    /// The audit subject's prefix, e.g. `certificate:`.
    subject: &'static str,
    /// The column that names a row in the subject and in reports.
    key: &'static str,
    /// The fields compared (the row's JSON names, as in the events).
    fields: &'static [&'static str],
}

const PEOPLE: Table = Table {
    name: "people",
    subject: "person:",
    key: "external_id",
    fields: &[
        "display_name",
        "upn",
        "email",
        "windows_sid",
        "attributes_json",
        "state",
    ],
};
const TOKENS: Table = Table {
    name: "tokens",
    subject: "token:",
    key: "serial",
    fields: &["state", "person_external_id"],
};
const CERTIFICATES: Table = Table {
    name: "certificates",
    subject: "certificate:",
    key: "serial",
    fields: &["profile", "status", "sha256", "revocation_reason"],
};
const TABLES: [&Table; 3] = [&PEOPLE, &TOKENS, &CERTIFICATES];

/// What is wrong with a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowProblem {
    /// The field holds `found`; the last event about the row left `expected`.
    Field {
        field: &'static str,
        expected: Value,
        found: Value,
    },
    /// No event records the row (inserted behind the log's back).
    NotInLog,
    /// Events record the row but the table does not have it (deleted).
    Missing,
}

/// A row of a state table the audit log does not explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnexplainedRow {
    pub table: &'static str,
    /// The key column, e.g. `serial`.
    pub key_column: &'static str,
    pub key: String,
    pub problem: RowProblem,
}

impl std::fmt::Display for UnexplainedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}={}: ", self.table, self.key_column, self.key)?;
        match &self.problem {
            RowProblem::Field {
                field,
                expected,
                found,
            } => write!(f, "{field} is {found}, the audit log says {expected}"),
            RowProblem::NotInLog => write!(f, "no audit event records this row"),
            RowProblem::Missing => write!(
                f,
                "the audit log records this row but the table does not have it (row deleted)"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayReport {
    /// Rows compared per table: people, tokens, certificates.
    pub people: i64,
    pub tokens: i64,
    pub certificates: i64,
    /// In table order (people, tokens, certificates), then by key.
    pub unexplained: Vec<UnexplainedRow>,
}

/// Per table, per key: the fields the log says the row holds now.
type Expected = BTreeMap<&'static str, BTreeMap<String, BTreeMap<&'static str, Value>>>;

const PAGE: i64 = 1000;

/// Reads the whole log, then every row of people, tokens and certificates, and compares.
/// Meaningful on a chain that verifies (run [`super::verify`] first): the log is taken as the
/// truth.
pub async fn replay(store: &Store) -> Result<ReplayReport, AuditError> {
    let mut expected: Expected = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store.audit_events(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        for e in &page {
            let Some((table, key)) = TABLES
                .iter()
                .find_map(|t| e.subject.strip_prefix(t.subject).map(|k| (*t, k)))
            else {
                continue;
            };
            if e.after_json.is_empty() {
                continue;
            }
            let row: Value =
                serde_json::from_str(&e.after_json).map_err(|err| AuditError::EventJson {
                    what: format!("event {}", e.sequence),
                    reason: err.to_string(),
                })?;
            let mut set: Vec<(&'static str, Value)> = table
                .fields
                .iter()
                .filter_map(|field| row.get(field).map(|v| (*field, v.clone())))
                .collect();
            // The reservation makes the row; its event describes the request, not the row.
            if e.action == "certificate.reserve" {
                set.push(("status", Value::from("reserved")));
            }
            // Events that set none of the fields (refusals naming a token, say) say nothing
            // about the row, not even that it exists.
            if set.is_empty() {
                continue;
            }
            expected
                .entry(table.name)
                .or_default()
                .entry(key.to_string())
                .or_default()
                .extend(set);
        }
    }

    let mut report = ReplayReport::default();
    let mut seen: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut compare = |table: &Table, row: Value, report: &mut ReplayReport| {
        let key = row
            .get(table.key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        seen.entry(table.name).or_default().push(key.clone());
        let unexplained = |problem| UnexplainedRow {
            table: table.name,
            key_column: table.key,
            key: key.clone(),
            problem,
        };
        let Some(fields) = expected.get(table.name).and_then(|t| t.get(&key)) else {
            report.unexplained.push(unexplained(RowProblem::NotInLog));
            return;
        };
        for field in table.fields {
            let found = row.get(field).cloned().unwrap_or(Value::Null);
            if let Some(want) = fields.get(field)
                && *want != found
            {
                report.unexplained.push(unexplained(RowProblem::Field {
                    field,
                    expected: want.clone(),
                    found,
                }));
            }
        }
    };
    let json = |v: Result<Value, serde_json::Error>| v.unwrap_or_default();

    let mut q = PeopleQuery {
        limit: PAGE,
        ..Default::default()
    };
    loop {
        let rows = store.list_people(&q).await?;
        let Some(last) = rows.last() else { break };
        q.after_id = last.id;
        for r in &rows {
            report.people += 1;
            compare(&PEOPLE, json(serde_json::to_value(r)), &mut report);
        }
    }
    let mut q = TokensQuery {
        limit: PAGE,
        ..Default::default()
    };
    loop {
        let rows = store.list_tokens(&q).await?;
        let Some(last) = rows.last() else { break };
        q.after_id = last.id;
        for r in &rows {
            report.tokens += 1;
            compare(&TOKENS, json(serde_json::to_value(r)), &mut report);
        }
    }
    let mut q = CertificatesQuery {
        limit: PAGE,
        ..Default::default()
    };
    loop {
        let rows = store.list_certificates(&q).await?;
        let Some(last) = rows.last() else { break };
        q.after_serial = last.serial.clone();
        for r in &rows {
            report.certificates += 1;
            compare(&CERTIFICATES, json(serde_json::to_value(r)), &mut report);
        }
    }

    for table in TABLES {
        let present: std::collections::BTreeSet<&String> =
            seen.get(table.name).into_iter().flatten().collect();
        for key in expected.get(table.name).into_iter().flat_map(|t| t.keys()) {
            if !present.contains(key) {
                report.unexplained.push(UnexplainedRow {
                    table: table.name,
                    key_column: table.key,
                    key: key.clone(),
                    problem: RowProblem::Missing,
                });
            }
        }
    }
    let order = |name: &str| TABLES.iter().position(|t| t.name == name);
    report
        .unexplained
        .sort_by(|a, b| (order(a.table), &a.key).cmp(&(order(b.table), &b.key)));
    Ok(report)
}
