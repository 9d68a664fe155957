//! Group commit (src/store/group_commit.rs) on SQLite and on PostgreSQL: writers queued behind
//! one share its durable commit, each writer is still all or nothing on its own, a repeated
//! request is answered only from durable rows, and a writer that stops waiting for its turn
//! does not hold the others up. Writers are lined up deterministically: the test waits until
//! the store reports them queued (`Store::queued_writers`) before letting the first one go.
use std::collections::BTreeMap;
use std::time::Duration;

use tessera::audit::{self, Actor};
use tessera::lifecycle::{self, PersonInput, RequestKey};
use tessera::store::{GroupCommitStats, NewCertificate, Store};

on_both_databases!(
    writers_queued_behind_one_share_its_commit,
    a_writer_dropped_in_a_group_leaves_the_others,
    a_failed_statement_rolls_back_only_its_writer,
    a_repeated_request_is_answered_only_from_durable_rows,
    a_writer_that_stops_waiting_does_not_hold_up_the_group,
);

/// A group never commits for its age in these tests: only the queue decides.
const PATIENT: Duration = Duration::from_secs(600);

fn hr() -> Actor {
    Actor {
        name: "hr-sync".into(),
        role: "hr".into(),
    }
}

fn person(id: &str) -> PersonInput {
    PersonInput {
        external_id: id.into(),
        display_name: format!("Person {id}"),
        upn: format!("{id}@corp.test"),
        email: format!("{id}@corp.test"),
        windows_sid: String::new(),
        attributes: BTreeMap::new(),
    }
}

async fn create(store: &Store, id: &str) {
    let mut tx = store.begin_write().await.unwrap();
    lifecycle::create_person(&mut tx, &hr(), &format!("create-{id}"), person(id))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Waits until `n` writers wait for their turn.
async fn until_queued(store: &Store, n: usize) {
    for _ in 0..2000 {
        if store.queued_writers() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} writers never queued (now {})", store.queued_writers());
}

/// Waits until `n` writers left their group's commit to those queued behind them.
async fn until_deferred(store: &Store, n: u64) {
    for _ in 0..2000 {
        if store.group_commit_stats().deferred == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} writers never deferred their commit");
}

async fn exists(store: &Store, id: &str) -> bool {
    store.person_by_external_id(id).await.unwrap().is_some()
}

async fn writers_queued_behind_one_share_its_commit(url: &str) {
    let store = Store::open(url)
        .await
        .unwrap()
        .with_group_commit_age(PATIENT);
    let mut first = store.begin_write().await.unwrap();
    lifecycle::create_person(&mut first, &hr(), "create-G0", person("G0"))
        .await
        .unwrap();
    let queued: Vec<_> = (1..=10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { create(&store, &format!("G{i}")).await })
        })
        .collect();
    until_queued(&store, 10).await;
    first.commit().await.unwrap();
    for task in queued {
        task.await.unwrap();
    }
    // Eleven write transactions, one flush: the first and nine more left the commit to the
    // writer behind them; the last one, with nobody queued, committed all eleven.
    assert_eq!(
        store.group_commit_stats(),
        GroupCommitStats {
            groups: 1,
            writers: 11,
            deferred: 10,
            rescued: 0
        }
    );
    for i in 0..=10 {
        assert!(
            exists(&store, &format!("G{i}")).await,
            "G{i} was not stored"
        );
    }
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!((report.events, report.first_bad), (11, None));
}

async fn a_writer_dropped_in_a_group_leaves_the_others(url: &str) {
    let store = Store::open(url)
        .await
        .unwrap()
        .with_group_commit_age(PATIENT);
    let mut first = store.begin_write().await.unwrap();
    lifecycle::create_person(&mut first, &hr(), "create-D1", person("D1"))
        .await
        .unwrap();
    let dropped = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin_write().await.unwrap();
            lifecycle::create_person(&mut tx, &hr(), "create-D2", person("D2"))
                .await
                .unwrap();
            // Dropped without commit: only its own change goes.
        })
    };
    until_queued(&store, 1).await;
    let last = {
        let store = store.clone();
        tokio::spawn(async move { create(&store, "D3").await })
    };
    until_queued(&store, 2).await;
    first.commit().await.unwrap();
    dropped.await.unwrap();
    last.await.unwrap();
    assert_eq!(
        (
            exists(&store, "D1").await,
            exists(&store, "D2").await,
            exists(&store, "D3").await
        ),
        (true, false, true)
    );
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!((report.events, report.first_bad), (2, None));
    // A writer alone in its group and dropped rolls the whole group back.
    let mut alone = store.begin_write().await.unwrap();
    lifecycle::create_person(&mut alone, &hr(), "create-D4", person("D4"))
        .await
        .unwrap();
    drop(alone);
    create(&store, "D5").await;
    assert_eq!(
        (exists(&store, "D4").await, exists(&store, "D5").await),
        (false, true)
    );
    assert_eq!(audit::verify(&store, None).await.unwrap().events, 3);
}

/// A statement the database refuses (here a duplicate serial; on PostgreSQL it aborts the
/// transaction) undoes only its writer's part: the writer before it in the group and the one
/// after it commit.
async fn a_failed_statement_rolls_back_only_its_writer(url: &str) {
    let store = Store::open(url)
        .await
        .unwrap()
        .with_group_commit_age(PATIENT);
    let certificate = NewCertificate {
        serial: "7f02".into(),
        person_id: None,
        token_id: None,
        profile: "tls-client".into(),
        tbs: b"to be signed".to_vec(),
        not_before: "2026-01-01T00:00:00Z".parse().unwrap(),
        not_after: "2027-01-01T00:00:00Z".parse().unwrap(),
    };
    let mut first = store.begin_write().await.unwrap();
    first.reserve_certificate(&certificate).await.unwrap();
    let refused = {
        let store = store.clone();
        let certificate = certificate.clone();
        tokio::spawn(async move {
            let mut tx = store.begin_write().await.unwrap();
            lifecycle::create_person(&mut tx, &hr(), "create-F1", person("F1"))
                .await
                .unwrap();
            tx.reserve_certificate(&certificate)
                .await
                .unwrap_err()
                .to_string()
        })
    };
    until_queued(&store, 1).await;
    let last = {
        let store = store.clone();
        tokio::spawn(async move { create(&store, "F2").await })
    };
    until_queued(&store, 2).await;
    first.commit().await.unwrap();
    assert_eq!(
        refused.await.unwrap(),
        "a certificate serial with key \"7f02\" already exists"
    );
    last.await.unwrap();
    assert!(store.certificate_by_serial("7f02").await.unwrap().is_some());
    assert_eq!(
        (exists(&store, "F1").await, exists(&store, "F2").await),
        (false, true)
    );
    assert_eq!(
        audit::verify(&store, None).await.unwrap().first_bad,
        None,
        "the chain holds"
    );
}

/// A repeat of a request whose first answer is still waiting for its group's commit reads that
/// answer in the same group; before it is handed back, the group is made durable.
async fn a_repeated_request_is_answered_only_from_durable_rows(url: &str) {
    let store = Store::open(url)
        .await
        .unwrap()
        .with_group_commit_age(PATIENT);
    let key = RequestKey::new("req-9", "SuspendPerson", b"request", "caller-a").unwrap();
    let mut first = store.begin_write().await.unwrap();
    lifecycle::remember(&mut first, &key, b"first answer".to_vec())
        .await
        .unwrap();
    let repeat = {
        let store = store.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut tx = store.begin_write().await.unwrap();
            let answer = lifecycle::replay(&mut tx, &key).await.unwrap();
            // Before this writer commits, the answer it got is already durable: a read outside
            // any transaction sees it.
            let durable = store.idempotency_record("req-9").await.unwrap().is_some();
            tx.commit().await.unwrap();
            (answer, durable)
        })
    };
    until_queued(&store, 1).await;
    first.commit().await.unwrap();
    assert_eq!(
        repeat.await.unwrap(),
        (Some(b"first answer".to_vec()), true)
    );
}

/// The writer behind the first is cancelled after the first left the commit to it — while still
/// queued (the first then commits its group itself once the group's age bound passed, a
/// "rescue") or just after it got its turn (its drop then settles the group): either way the
/// first writer's commit completes and its row is durable.
async fn a_writer_that_stops_waiting_does_not_hold_up_the_group(url: &str) {
    let store = Store::open(url)
        .await
        .unwrap()
        .with_group_commit_age(Duration::from_millis(300));
    let holder = store.clone();
    let mut first = store.begin_write().await.unwrap();
    lifecycle::create_person(&mut first, &hr(), "create-C1", person("C1"))
        .await
        .unwrap();
    // Holds its turn until told, so the next writer stays queued.
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let blocker = tokio::spawn(async move {
        let tx = holder.begin_write().await.unwrap();
        let _ = wait.await;
        drop(tx);
    });
    until_queued(&store, 1).await;
    let committing = tokio::spawn(async move { first.commit().await });
    until_deferred(&store, 1).await;
    blocker.abort();
    drop(go);
    committing.await.unwrap().unwrap();
    assert!(exists(&store, "C1").await);
    let stats = store.group_commit_stats();
    assert_eq!((stats.groups, stats.writers), (1, 1));
}
