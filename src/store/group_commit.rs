//! Group commit: many [`WriteTx`](super::WriteTx)s share one durable commit.
//!
//! Writers are serialised (the audit hash chain has exactly one writer at a time, and the
//! `write_lock` row serialises replicas sharing one PostgreSQL), but they no longer wait for
//! each other's flush to disk. Every write of this store runs on one *group transaction*: the
//! first writer begins it (and takes the `write_lock` row), each later writer joins it inside a
//! savepoint, and a writer's `commit` releases its savepoint and waits until the group
//! transaction is committed — by itself when no other writer is waiting for its turn, otherwise
//! by the last writer of the group (at most [`MAX_GROUP`] writers, or [`MAX_GROUP_AGE`] after
//! the group began, whichever comes first). A writer that is dropped without committing is
//! rolled back to its savepoint (or the whole group transaction when it was the only one in
//! it); the others are untouched. `commit` returns only after the group is durable, so the
//! rule "what the caller was told is committed survives kill -9" holds as before; if the group's
//! commit fails, every writer of the group gets the error and none of their changes is stored.
//!
//! The audit chain stays gap-free and in commit order: events are appended one writer at a time
//! on the one connection, each reading the chain head the previous writer left, and a group
//! commits all or nothing.
//!
//! With one writer at a time nothing changes: begin, statements, commit — the savepoint is only
//! used by a writer that joins a group already holding others' uncommitted work.
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Any, AnyConnection, AnyPool};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

use super::{Result, StoreError};

/// A group commits once it holds this many writers, even if more are waiting.
pub const MAX_GROUP: usize = 64;
/// A group commits once it is this old, even if more writers are waiting: a writer's commit is
/// held up by others' work for about this long at most.
pub const MAX_GROUP_AGE: Duration = Duration::from_millis(20);

const SAVEPOINT: &str = "SAVEPOINT tessera_writer";
const RELEASE: &str = "RELEASE SAVEPOINT tessera_writer";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT tessera_writer";

type CommitResult = std::result::Result<(), GroupFailure>;

/// Why a group's commit failed, as each of its writers is told.
#[derive(Debug, Clone)]
pub struct GroupFailure {
    pub unavailable: bool,
    pub message: String,
}

impl GroupFailure {
    fn of(e: &StoreError) -> GroupFailure {
        GroupFailure {
            unavailable: e.is_unavailable(),
            message: e.to_string(),
        }
    }
}

/// What a writer left behind when it was dropped without committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    None,
    /// Roll back to the writer's savepoint (others' work in the group stays).
    ToSavepoint,
    /// Roll back the whole group transaction (the writer was alone in it).
    Group,
}

/// The one group transaction and who waits for it.
struct Group {
    tx: Option<sqlx::Transaction<'static, Any>>,
    stats: Arc<Counters>,
    began: Instant,
    /// Writers that committed their part and wait for the group's commit.
    waiting: Vec<oneshot::Sender<CommitResult>>,
    undo: Undo,
}

#[derive(Debug, Default)]
struct Counters {
    groups: AtomicU64,
    writers: AtomicU64,
    deferred: AtomicU64,
    rescued: AtomicU64,
}

/// What this process's writers did since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Durable commits of group transactions.
    pub groups: u64,
    /// Write transactions those commits carried (`writers / groups` is the mean group size).
    pub writers: u64,
    /// Writers that left their group's commit to a writer queued behind them.
    pub deferred: u64,
    /// Groups committed by a waiting writer because those queued behind it went away.
    pub rescued: u64,
}

pub(super) struct GroupCommitter {
    pool: AnyPool,
    stats: Arc<Counters>,
    max_age: Duration,
    group: Arc<Mutex<Group>>,
    /// Writers waiting for their turn (between asking for the group and getting it).
    queued: Arc<AtomicUsize>,
}

/// Counts a writer as queued until it gets its turn or gives up waiting.
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GroupCommitter {
    pub(super) fn new(pool: AnyPool, max_age: Duration) -> Arc<GroupCommitter> {
        let stats = Arc::new(Counters::default());
        Arc::new(GroupCommitter {
            pool,
            max_age,
            stats: stats.clone(),
            group: Arc::new(Mutex::new(Group {
                tx: None,
                stats,
                began: Instant::now(),
                waiting: Vec::new(),
                undo: Undo::None,
            })),
            queued: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Waits for this writer's turn and opens its part of the group transaction.
    pub(super) async fn join(self: &Arc<Self>) -> Result<Writer> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let queued = Queued(self.queued.clone());
        let mut group = self.group.clone().lock_owned().await;
        drop(queued);
        if let Err(e) = settle(&mut group).await {
            fail_group(&mut group, &e);
            return Err(e);
        }
        let savepoint = if group.tx.is_some() {
            // Others' uncommitted work is in the group: keep it apart from ours.
            if let Err(e) = sqlx::query(SAVEPOINT)
                .execute(&mut **group.tx.as_mut().expect("group open"))
                .await
            {
                let e = StoreError::from(e);
                fail_group(&mut group, &e);
                return Err(e);
            }
            true
        } else {
            group.tx = Some(begin_group(&self.pool).await?);
            group.began = Instant::now();
            false
        };
        Ok(Writer {
            group: Some(group),
            savepoint,
            committer: self.clone(),
        })
    }

    /// How many writers wait for their turn now.
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub(super) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            groups: self.stats.groups.load(Ordering::SeqCst),
            writers: self.stats.writers.load(Ordering::SeqCst),
            deferred: self.stats.deferred.load(Ordering::SeqCst),
            rescued: self.stats.rescued.load(Ordering::SeqCst),
        }
    }

    /// Whether the group should commit now rather than wait for the writers queued behind it.
    fn commit_now(&self, group: &Group) -> bool {
        self.queued.load(Ordering::SeqCst) == 0
            || group.waiting.len() >= MAX_GROUP
            || group.began.elapsed() >= self.max_age
    }
}

/// A new group transaction: its first statement takes the `write_lock` row, which serialises
/// the groups of every replica sharing the database.
async fn begin_group(pool: &AnyPool) -> Result<sqlx::Transaction<'static, Any>> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE write_lock SET counter = counter + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Undoes what a dropped writer left, before anyone else uses the connection.
async fn settle(group: &mut Group) -> Result<()> {
    match std::mem::replace(&mut group.undo, Undo::None) {
        Undo::None => Ok(()),
        Undo::Group => {
            if let Some(tx) = group.tx.take() {
                tx.rollback().await?;
            }
            Ok(())
        }
        Undo::ToSavepoint => {
            // A group that failed meanwhile has nothing left to undo.
            let Some(tx) = group.tx.as_mut() else {
                return Ok(());
            };
            let conn = &mut **tx;
            sqlx::query(ROLLBACK_TO).execute(&mut *conn).await?;
            sqlx::query(RELEASE).execute(&mut *conn).await?;
            Ok(())
        }
    }
}

/// Commits the group transaction and tells every waiting writer how it went.
async fn commit_group(group: &mut Group) -> CommitResult {
    let result = match group.tx.take() {
        Some(tx) => tx.commit().await.map_err(StoreError::from),
        None => Ok(()),
    };
    if result.is_ok() && !group.waiting.is_empty() {
        group.stats.groups.fetch_add(1, Ordering::SeqCst);
        group
            .stats
            .writers
            .fetch_add(group.waiting.len() as u64, Ordering::SeqCst);
    }
    let told = result.as_ref().map(|_| ()).map_err(GroupFailure::of);
    for waiter in group.waiting.drain(..) {
        let _ = waiter.send(told.clone());
    }
    told
}

fn group_failed(failure: GroupFailure) -> StoreError {
    StoreError::GroupCommitFailed {
        unavailable: failure.unavailable,
        message: failure.message,
    }
}

/// Drops the group transaction (rolled back) and tells every waiting writer it failed.
fn fail_group(group: &mut Group, e: &StoreError) {
    group.tx = None;
    group.undo = Undo::None;
    let failure = GroupFailure::of(e);
    for waiter in group.waiting.drain(..) {
        let _ = waiter.send(Err(failure.clone()));
    }
}

/// One writer's turn on the group transaction: the connection, until it commits or is dropped.
pub(super) struct Writer {
    group: Option<OwnedMutexGuard<Group>>,
    savepoint: bool,
    committer: Arc<GroupCommitter>,
}

impl Writer {
    /// Makes this writer's changes part of the group and waits until the group is durable.
    pub(super) async fn commit(mut self) -> Result<()> {
        let mut group = self.group.take().expect("a writer commits once");
        if self.savepoint
            && let Err(e) = sqlx::query(RELEASE)
                .execute(&mut **group.tx.as_mut().expect("group open"))
                .await
        {
            let e = StoreError::from(e);
            fail_group(&mut group, &e);
            return Err(e);
        }
        let (told, outcome) = oneshot::channel();
        group.waiting.push(told);
        if self.committer.commit_now(&group) {
            let _ = commit_group(&mut group).await;
        } else {
            self.committer.stats.deferred.fetch_add(1, Ordering::SeqCst);
        }
        drop(group);
        let mut outcome = outcome;
        let told = loop {
            match tokio::time::timeout(self.committer.max_age, &mut outcome).await {
                Ok(told) => break told,
                // The writers queued behind this one went away without taking their turn:
                // commit the group (no writer holds it while we do).
                Err(_) => {
                    let mut group = self.committer.group.clone().lock_owned().await;
                    if let Err(e) = settle(&mut group).await {
                        fail_group(&mut group, &e);
                    } else if !group.waiting.is_empty() {
                        self.committer.stats.rescued.fetch_add(1, Ordering::SeqCst);
                        let _ = commit_group(&mut group).await;
                    }
                }
            }
        };
        match told {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(group_failed(failure)),
            Err(_) => Err(StoreError::GroupCommitFailed {
                unavailable: false,
                message: "the group transaction was abandoned".into(),
            }),
        }
    }
}

impl Writer {
    /// Makes durable what the writers before this one in its group wrote (and what this one
    /// wrote so far), then goes on as the first writer of a new group. For a writer about to
    /// answer from what others wrote (a repeated request's stored answer): nobody is told
    /// anything that could still be lost.
    pub(super) async fn make_earlier_writes_durable(&mut self) -> Result<()> {
        if !self.savepoint {
            // The group began with this writer: everything else it reads is committed.
            return Ok(());
        }
        let group = self
            .group
            .as_mut()
            .expect("a writer has the group until it commits");
        if let Err(e) = sqlx::query(RELEASE)
            .execute(&mut **group.tx.as_mut().expect("group open"))
            .await
        {
            let e = StoreError::from(e);
            fail_group(group, &e);
            return Err(e);
        }
        commit_group(group).await.map_err(group_failed)?;
        group.tx = Some(begin_group(&self.committer.pool).await?);
        group.began = Instant::now();
        self.savepoint = false;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let Some(mut group) = self.group.take() else {
            return;
        };
        group.undo = if self.savepoint {
            Undo::ToSavepoint
        } else {
            Undo::Group
        };
        if !group.waiting.is_empty() || group.tx.is_some() {
            // Nobody may come for the connection soon: undo and commit what others committed
            // now, on the runtime this writer ran on.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let committer = self.committer.clone();
                drop(group);
                runtime.spawn(async move {
                    let mut group = committer.group.clone().lock_owned().await;
                    if let Err(e) = settle(&mut group).await {
                        fail_group(&mut group, &e);
                        return;
                    }
                    if committer.commit_now(&group) {
                        let _ = commit_group(&mut group).await;
                    }
                });
            }
        }
    }
}

impl Deref for Writer {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        self.group
            .as_ref()
            .and_then(|g| g.tx.as_deref())
            .expect("a writer has the group transaction until it commits")
    }
}

impl DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.group
            .as_mut()
            .and_then(|g| g.tx.as_deref_mut())
            .expect("a writer has the group transaction until it commits")
    }
}
