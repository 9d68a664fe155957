//! `tessera report expiring`: the good certificates whose notAfter falls within a window, read
//! from the server's database directly (like `tessera audit verify`), as a table, JSON or CSV.
use crate::lifecycle::ExpiryWindow;
use crate::server::ServerConfig;
use crate::store::{ExpiringQuery, Store, Timestamp};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub command: ReportCommand,
}

#[derive(clap::Subcommand)]
pub enum ReportCommand {
    /// Good certificates (not on hold, not revoked) that expire between now and now + --within,
    /// soonest first.
    Expiring {
        /// The server configuration file; its database is read.
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
        /// The window in whole days: 1d to 400d.
        #[arg(long, default_value = "30d")]
        within: String,
        /// Only this profile's certificates.
        #[arg(long)]
        profile: Option<String>,
        /// Only this person's certificates (external id).
        #[arg(long)]
        person: Option<String>,
        /// One JSON object: the window and the certificates.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV with a header line.
        #[arg(long)]
        csv: bool,
    },
}

/// One line of the report. Field names are a stable interface (docs/operations.md).
#[derive(Debug, serde::Serialize)]
pub struct ExpiringLine {
    pub serial: String,
    pub not_after: Timestamp,
    /// Whole days from now to notAfter, rounded down.
    pub days_left: i64,
    pub profile: String,
    pub person_external_id: String,
    pub token_serial: String,
}

#[derive(Debug, serde::Serialize)]
struct ExpiringReport<'a> {
    now: Timestamp,
    window_end: Timestamp,
    within_days: i64,
    certificates: &'a [ExpiringLine],
}

const PAGE: i64 = 1000;

async fn expiring_lines(
    store: &Store,
    window: ExpiryWindow,
    profile: Option<String>,
    person: Option<String>,
) -> anyhow::Result<(Timestamp, Timestamp, Vec<ExpiringLine>)> {
    let person_id = match person {
        None => None,
        Some(external_id) => Some(
            store
                .person_by_external_id(&external_id)
                .await?
                .with_context(|| format!("no person with external id {external_id:?}"))?
                .id,
        ),
    };
    let now = store.now();
    let (from, until) = window.range(now);
    let mut query = ExpiringQuery {
        from,
        until,
        after: None,
        limit: PAGE,
        profile,
        person_id,
    };
    let mut lines = Vec::new();
    loop {
        let rows = store.expiring_certificates(&query).await?;
        let full = rows.len() as i64 == PAGE;
        for row in rows {
            let person_external_id = match row.person_id {
                Some(id) => store.person_external_id(id).await?.unwrap_or_default(),
                None => String::new(),
            };
            let token_serial = match row.token_id {
                Some(id) => store.token_serial(id).await?.unwrap_or_default(),
                None => String::new(),
            };
            query.after = Some((row.not_after, row.serial.clone()));
            lines.push(ExpiringLine {
                days_left: (row.not_after.unix_seconds() - now.unix_seconds()) / 86_400,
                serial: row.serial,
                not_after: row.not_after,
                profile: row.profile,
                person_external_id,
                token_serial,
            });
        }
        if !full {
            return Ok((now, until, lines));
        }
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ReportCommand::Expiring {
            config,
            within,
            profile,
            person,
            json,
            csv,
        } => {
            let window = ExpiryWindow::parse_days(&within).map_err(|e| anyhow::anyhow!("{e}"))?;
            let config = ServerConfig::load(&config)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let (now, until, lines) = runtime.block_on(async {
                let store = Store::open(&config.database.url).await?;
                let found = expiring_lines(&store, window, profile, person).await;
                store.close().await;
                found
            })?;
            if json {
                let report = ExpiringReport {
                    now,
                    window_end: until,
                    within_days: window.days(),
                    certificates: &lines,
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if csv {
                println!("serial,not_after,days_left,profile,person_external_id,token_serial");
                for l in &lines {
                    println!(
                        "{},{},{},{},{},{}",
                        csv_field(&l.serial),
                        l.not_after,
                        l.days_left,
                        csv_field(&l.profile),
                        csv_field(&l.person_external_id),
                        csv_field(&l.token_serial)
                    );
                }
            } else {
                println!(
                    "{} good certificate(s) expire between {now} and {until} ({} days)",
                    lines.len(),
                    window.days()
                );
                for l in &lines {
                    println!(
                        "{}  {:>3}d  {}  {}  person={}  token={}",
                        l.not_after,
                        l.days_left,
                        l.serial,
                        l.profile,
                        if l.person_external_id.is_empty() {
                            "-"
                        } else {
                            &l.person_external_id
                        },
                        if l.token_serial.is_empty() {
                            "-"
                        } else {
                            &l.token_serial
                        },
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("piv-login"), "piv-login");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
