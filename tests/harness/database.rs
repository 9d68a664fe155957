//! Databases for tests: a SQLite file in a temp dir, or a fresh PostgreSQL database
//! `tessera_test_<random>` on 127.0.0.1:5432 (trust auth, user `postgres` or `root`), dropped
//! when the handle is dropped.
use sqlx::Connection;

pub enum TestDatabase {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

impl TestDatabase {
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("tessera.db").display());
        TestDatabase::Sqlite { _dir: dir, url }
    }

    pub async fn postgres() -> TestDatabase {
        let mut last_error = String::new();
        for user in ["postgres", "root"] {
            let admin_url = format!("postgres://{user}@127.0.0.1:5432/postgres");
            match sqlx::postgres::PgConnection::connect(&admin_url).await {
                Ok(mut conn) => {
                    let name = format!("tessera_test_{:016x}", rand::random::<u64>());
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                        .execute(&mut conn)
                        .await
                        .expect("CREATE DATABASE");
                    let _ = conn.close().await;
                    let url = format!("postgres://{user}@127.0.0.1:5432/{name}");
                    return TestDatabase::Postgres {
                        admin_url,
                        name,
                        url,
                    };
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        panic!(
            "PostgreSQL is needed on 127.0.0.1:5432 with trust auth for user postgres or root \
             ({last_error}); install it with scripts/install-deps.sh and start it"
        );
    }

    pub fn url(&self) -> &str {
        match self {
            TestDatabase::Sqlite { url, .. } | TestDatabase::Postgres { url, .. } => url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres {
            admin_url, name, ..
        } = self
        {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // A runtime of its own: Drop may run inside or outside the test's runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::postgres::PgConnection::connect(&admin_url).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                })
            })
            .join();
        }
    }
}

/// Defines `<name>_sqlite` and `<name>_postgres` tests, each calling `async fn <name>(url: &str)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::harness::database::TestDatabase::sqlite();
                    super::$name(db.url()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::harness::database::TestDatabase::postgres().await;
                    super::$name(db.url()).await;
                }
            )+
        }
    };
}

/// A pool on `url` whose database the migrations older than `before` (a migration's
/// number, e.g. "0013") have made, as a release before that migration left it: for tests that
/// fill such a database and check what `Store::open` carries over.
pub async fn migrated_before(url: &str, before: &str) -> sqlx::AnyPool {
    let dialect = if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let old_migrations = tempfile::tempdir().expect("temp dir");
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    for entry in std::fs::read_dir(&all).expect("migrations directory") {
        let path = entry.expect("migration file").path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() < before {
            std::fs::copy(&path, old_migrations.path().join(name)).expect("copy migration");
        }
    }
    sqlx::any::install_default_drivers();
    let connect_url = match url.strip_prefix("sqlite:") {
        Some(path) => format!("sqlite://{path}?mode=rwc"),
        None => url.to_string(),
    };
    let pool = sqlx::AnyPool::connect(&connect_url)
        .await
        .expect("connect to the test database");
    sqlx::migrate::Migrator::new(old_migrations.path())
        .await
        .expect("read the older migrations")
        .run(&pool)
        .await
        .expect("run the older migrations");
    pool
}
