//! `tessera bench --scale`: the CRL, directory sync and offboarding at fleet size, against the
//! real server (`BoundServer`, started in this process with `[http]` and `[ca]`) and the
//! database given.
//!
//! - `--crl N`: N revoked certificates are loaded in bulk — reserved rows with a placeholder
//!   to-be-signed value (`BENCH_PLACEHOLDER`, profile `bench-placeholder`), no DER, status set
//!   by one statement; no HSM signature per certificate — then the first `GET /crl` is timed
//!   (it builds and signs the CRL of N entries) and the second (served as stored). The peak
//!   resident memory of this process while the first `/crl` is made is read from
//!   `/proc/self/status` (`VmHWM`, reset through `/proc/self/clear_refs` just before; the
//!   client only counts the bytes it reads).
//! - `--sync-people N`: one `SyncPeople` of N new people over gRPC (mTLS, admin), then the same
//!   N again (all unchanged, a nightly run with nothing to do).
//! - `--offboard M` (with `--sync-people N`, M ≤ N): M of the synced people get three
//!   certificates each (loaded in bulk as above, status good), then one `SyncPeople` of the
//!   other N − M people with `offboard_missing` offboards the M (3 M certificates revoked, each
//!   audited), and the next `/crl` is timed: it lists them.
use super::grpc::{RunDir, channel, make_pki, record_client, toml_string};
use crate::ca::SerialNumber;
use crate::protocol::pb::{self, directory_service_client::DirectoryServiceClient};
use crate::server::{BoundServer, ServerConfig};
use crate::store::{NewCertificate, PeopleQuery, Store};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;

/// What a bench-loaded certificate's stored to-be-signed value is (nothing was signed).
pub const BENCH_PLACEHOLDER: &[u8] = b"tessera bench placeholder: never signed";
/// Profile of the certificates the bench loads.
pub const BENCH_PROFILE: &str = "bench-placeholder";
/// Most revoked entries, people or offboarded people the bench loads.
pub const MAX_SCALE: u32 = 5_000_000;

/// What to measure.
pub struct ScaleBench {
    pub hsm_config: PathBuf,
    pub data_dir: PathBuf,
    /// A throwaway database (`sqlite:PATH` or `postgres://…`).
    pub database_url: String,
    pub crl: Option<u32>,
    pub sync_people: Option<u32>,
    pub offboard: Option<u32>,
}

/// Resident set now and its high-water mark (kB), from `/proc/self/status`.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets `VmHWM` to the current resident set (Linux `clear_refs` value 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `GET path` over plain HTTP/1.1; returns (status line, body bytes), reading the body in
/// pieces without keeping it.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(String, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut buf = vec![0u8; 64 << 10];
    let mut head = Vec::new();
    let mut body = 0u64;
    let mut in_body = false;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if in_body {
            body += n as u64;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            body += (head.len() - end - 4) as u64;
            head.truncate(end);
            in_body = true;
        }
    }
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// Loads `count` certificates of `owners` (round robin; none: no owner) as reserved rows with
/// the placeholder TBS, in transactions of 10,000; returns their serials' prefix (the run tag).
async fn load_certificates(
    store: &Store,
    tag: &str,
    count: u64,
    owners: &[i64],
) -> anyhow::Result<()> {
    let now = store.now();
    let mut next = 0u64;
    while next < count {
        let end = (next + 10_000).min(count);
        let rows: Vec<NewCertificate> = (next..end)
            .map(|i| NewCertificate {
                serial: format!("7e{tag}{i:022x}"),
                person_id: (!owners.is_empty()).then(|| owners[(i as usize) % owners.len()]),
                token_id: None,
                profile: BENCH_PROFILE.into(),
                tbs: BENCH_PLACEHOLDER.to_vec(),
                not_before: now,
                not_after: now + time::Duration::days(365),
            })
            .collect();
        let mut tx = store.begin_write().await?;
        tx.reserve_certificates(&rows).await?;
        tx.commit().await?;
        next = end;
    }
    Ok(())
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`: on a busy machine
/// the wall time says how long an operation waited for a core too, this says how much work it
/// was (the database server's work is not in it).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime, fields 14 and 15 of proc_pid_stat(5): 11 and 12 after the command.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// When an operation started: wall clock and this process's CPU time.
struct Started(Instant, f64);

fn started() -> Started {
    Started(Instant::now(), cpu_seconds())
}

fn line(what: &str, count: u64, since: &Started, extra: &str) {
    println!(
        "{:<52} {:>9} {:>9.3} {:>9.2} {extra}",
        what,
        count,
        since.0.elapsed().as_secs_f64(),
        cpu_seconds() - since.1
    );
}

pub fn run(args: &ScaleBench) -> anyhow::Result<()> {
    if let (Some(m), n) = (args.offboard, args.sync_people.unwrap_or(0))
        && m > n
    {
        anyhow::bail!("--offboard {m} needs --sync-people of at least {m}");
    }
    let tag = SerialNumber::random()?.to_hex()[..8].to_lowercase();
    let dir = RunDir(std::env::temp_dir().join(format!("tessera-bench-scale-{tag}")));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir.0)
            .with_context(|| format!("cannot create {}", dir.0.display()))?;
    }
    let pki = make_pki(&dir.0)?;
    let hsm_config = std::path::absolute(&args.hsm_config)?;
    let data_dir = std::path::absolute(&args.data_dir)?;
    let config_path = dir.0.join("tessera.toml");
    std::fs::write(
        &config_path,
        format!(
            "[grpc]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[tls]\n\
             certificate = \"server.pem\"\nprivate_key = \"server.key\"\nclient_ca = \"client-ca.pem\"\n\
             [database]\nurl = {}\n[ca]\nhsm_config = {}\ndata_dir = {}\n",
            toml_string(&args.database_url),
            toml_string(&hsm_config.to_string_lossy()),
            toml_string(&data_dir.to_string_lossy()),
        ),
    )?;
    let config = ServerConfig::load(&config_path)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let server = runtime.block_on(BoundServer::bind(&config))?;
    let addr = server.local_addr();
    let http = server.http_addr().context("no [http] listener")?;
    let store = server.store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(server.run(async {
        let _ = stopped.await;
    }));
    println!(
        "tessera bench --scale: database {}, run tag {tag}",
        match store.backend() {
            crate::store::Backend::Sqlite => "SQLite",
            crate::store::Backend::Postgres => "PostgreSQL",
        }
    );
    println!(
        "{:<52} {:>9} {:>9} {:>9}",
        "operation", "count", "seconds", "cpu s"
    );
    let result = runtime.block_on(measure_all(args, &store, http, addr, &pki, &tag));
    let _ = stop.send(());
    runtime
        .block_on(serving)
        .context("the server task panicked")?
        .context("the server failed")?;
    result
}

async fn timed_crl(http: std::net::SocketAddr, what: &str, entries: u64) -> anyhow::Result<()> {
    let (rss_before, _) = memory_kb();
    reset_peak();
    let start = started();
    let (status, bytes) = http_get(http, "/crl").await?;
    let (_, peak) = memory_kb();
    anyhow::ensure!(status.contains(" 200 "), "GET /crl answered {status:?}");
    line(
        what,
        entries,
        &start,
        &format!(
            "{bytes} bytes; process RSS before {} MiB, peak {} MiB",
            rss_before / 1024,
            peak / 1024
        ),
    );
    Ok(())
}

async fn measure_all(
    args: &ScaleBench,
    store: &Store,
    http: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    pki: &super::grpc::RunPki,
    tag: &str,
) -> anyhow::Result<()> {
    let revoked_already = store
        .state_counts()
        .await?
        .into_iter()
        .filter(|(t, s, _)| *t == "certificates" && (s == "revoked" || s == "on_hold"))
        .map(|(_, _, n)| n as u64)
        .sum::<u64>();
    if let Some(n) = args.crl {
        let start = started();
        load_certificates(store, tag, u64::from(n), &[]).await?;
        let revoked_at = store.now();
        store
            .execute_raw(&format!(
                "UPDATE certificates SET status = 'revoked', revocation_reason = 1, \
                 revoked_at = '{revoked_at}' WHERE profile = '{BENCH_PROFILE}' AND status = 'reserved'"
            ))
            .await?;
        // One status change so the stored CRL (if any) is stale.
        store
            .execute_raw("UPDATE crl_state SET status_changes = status_changes + 1 WHERE id = 1")
            .await?;
        line(
            "load revoked certificates (bulk, no HSM)",
            u64::from(n),
            &start,
            "",
        );
        let entries = revoked_already + u64::from(n);
        timed_crl(http, "first GET /crl (build, sign, publish)", entries).await?;
        timed_crl(http, "second GET /crl (stored)", entries).await?;
    }
    let Some(n) = args.sync_people else {
        return Ok(());
    };
    record_client(store, pki).await?;
    let directory = DirectoryServiceClient::new(channel(grpc, pki).await?)
        .max_decoding_message_size(crate::api::DIRECTORY_MESSAGE_BYTES)
        .max_encoding_message_size(crate::api::DIRECTORY_MESSAGE_BYTES);
    let person = |i: u32| pb::PersonRecord {
        external_id: format!("bench-{tag}-{i:07}"),
        display_name: format!("Bench Person {i}"),
        upn: format!("bench{i}.{tag}@corp.test"),
        email: format!("bench{i}.{tag}@corp.test"),
        windows_sid: format!("S-1-5-21-1-2-3-{}", 10_000 + i),
        attributes: [("department".to_string(), format!("d{}", i % 50))].into(),
    };
    let generation = chrono_generation();
    let everyone: Vec<pb::PersonRecord> = (0..n).map(person).collect();
    let sync = |request_id: String, generation: i64, people: Vec<pb::PersonRecord>, offboard| {
        let request = pb::SyncPeopleRequest {
            request_id,
            generation,
            people,
            offboard_missing: offboard,
        };
        let mut client = directory.clone();
        async move {
            let start = started();
            let answer = client
                .sync_people(request)
                .await
                .map_err(|s| anyhow::anyhow!("SyncPeople failed: {:?} {}", s.code(), s.message()))?
                .into_inner();
            anyhow::Ok((start, answer))
        }
    };
    let (elapsed, answer) = sync(
        format!("bench-{tag}-sync-1"),
        generation,
        everyone.clone(),
        false,
    )
    .await?;
    line(
        "SyncPeople, all new (gRPC)",
        u64::from(n),
        &elapsed,
        &format!("created {}", answer.created.len()),
    );
    let (elapsed, answer) = sync(
        format!("bench-{tag}-sync-2"),
        generation + 1,
        everyone.clone(),
        false,
    )
    .await?;
    line(
        "SyncPeople, all unchanged (gRPC)",
        u64::from(n),
        &elapsed,
        &format!("unchanged {}", answer.unchanged.len()),
    );
    let Some(m) = args.offboard else {
        return Ok(());
    };
    // The people just synced, by id: the first M get three certificates each.
    let mut ids = Vec::new();
    let mut after_id = 0;
    let prefix = format!("bench-{tag}-");
    loop {
        let page = store
            .list_people(&PeopleQuery {
                after_id,
                limit: 1000,
                state: None,
            })
            .await?;
        let Some(last) = page.last() else { break };
        after_id = last.id;
        ids.extend(
            page.iter()
                .filter(|p| p.external_id.starts_with(&prefix))
                .map(|p| (p.external_id.clone(), p.id)),
        );
    }
    ids.sort();
    let owners: Vec<i64> = ids.iter().take(m as usize).map(|(_, id)| *id).collect();
    let start = started();
    let cert_tag = SerialNumber::random()?.to_hex()[..8].to_lowercase();
    load_certificates(store, &cert_tag, u64::from(m) * 3, &owners).await?;
    store
        .execute_raw(&format!(
            "UPDATE certificates SET status = 'good' WHERE profile = '{BENCH_PROFILE}' AND status = 'reserved'"
        ))
        .await?;
    line(
        "load good certificates of M people (bulk, no HSM)",
        u64::from(m) * 3,
        &start,
        "",
    );
    // Warm the CRL so the one after the wave is built because of it.
    let _ = http_get(http, "/crl").await?;
    let staying: Vec<pb::PersonRecord> = everyone.into_iter().skip(m as usize).collect();
    let (elapsed, answer) =
        sync(format!("bench-{tag}-sync-3"), generation + 2, staying, true).await?;
    line(
        "SyncPeople offboarding M people, 3 certificates each",
        u64::from(m),
        &elapsed,
        &format!("offboarded {}", answer.offboarded.len()),
    );
    let entries = revoked_already + u64::from(args.crl.unwrap_or(0)) + u64::from(m) * 3;
    timed_crl(http, "GET /crl right after the offboarding", entries).await?;
    Ok(())
}

/// A sync generation above any an earlier run used: the current Unix time in milliseconds.
fn chrono_generation() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(1)
}
