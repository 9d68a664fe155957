//! Table `people`: the directory's people.
use super::{Result, Store, Timestamp, WriteTx, map_unique, written};
use serde::Serialize;
use sqlx::{Any, Executor};

stored_enum!(PersonState, "people.state", {
    Active => "active", Suspended => "suspended", Offboarded => "offboarded",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PersonRow {
    #[serde(skip)]
    pub id: i64,
    pub external_id: String,
    pub display_name: String,
    pub upn: String,
    pub email: String,
    pub windows_sid: Option<String>,
    pub attributes_json: String,
    pub state: PersonState,
    pub sync_generation: i64,
    #[serde(skip)]
    pub created_at: Timestamp,
    #[serde(skip)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewPerson {
    pub external_id: String,
    pub display_name: String,
    pub upn: String,
    pub email: String,
    pub windows_sid: Option<String>,
    pub attributes_json: String,
    pub state: PersonState,
    pub sync_generation: i64,
}

#[derive(Debug, Clone, Default)]
pub struct PeopleQuery {
    /// Rows with a greater id (paging).
    pub after_id: i64,
    pub limit: i64,
    pub state: Option<PersonState>,
}

const PERSON_COLUMNS: &str = "id, external_id, display_name, upn, email, windows_sid, attributes_json, state, \
     sync_generation, created_at, updated_at";

/// How a person is looked up.
enum PersonKey<'a> {
    ExternalId(&'a str),
    Id(i64),
}

async fn person_where<'e, E: Executor<'e, Database = Any>>(
    e: E,
    key: PersonKey<'_>,
) -> Result<Option<PersonRow>> {
    let column = match key {
        PersonKey::ExternalId(_) => "external_id",
        PersonKey::Id(_) => "id",
    };
    let query = sqlx::query_as(sql!(
        "SELECT {PERSON_COLUMNS} FROM people WHERE {column} = $1"
    ));
    let query = match key {
        PersonKey::ExternalId(id) => query.bind(id.to_string()),
        PersonKey::Id(id) => query.bind(id),
    };
    Ok(query.fetch_optional(e).await?)
}

impl Store {
    pub async fn person_by_external_id(&self, external_id: &str) -> Result<Option<PersonRow>> {
        person_where(&self.pool, PersonKey::ExternalId(external_id)).await
    }

    pub async fn list_people(&self, q: &PeopleQuery) -> Result<Vec<PersonRow>> {
        let rows = match q.state {
            Some(state) => sqlx::query_as(sql!(
                "SELECT {PERSON_COLUMNS} FROM people WHERE id > $1 AND state = $2 ORDER BY id LIMIT $3"
            ))
            .bind(q.after_id)
            .bind(state.as_str())
            .bind(q.limit)
            .fetch_all(&self.pool)
            .await?,
            None => {
                sqlx::query_as(sql!(
                    "SELECT {PERSON_COLUMNS} FROM people WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .bind(q.after_id)
                .bind(q.limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// People (in any state) whose display name, email, UPN or external id equals one of
    /// `names` ignoring the case of ASCII letters (letters outside ASCII compare exactly, on
    /// both databases), at most `limit`, by id. Migration 0011 indexes the folded columns.
    pub async fn people_named(&self, names: &[String], limit: i64) -> Result<Vec<PersonRow>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // SQLite's lower() folds ASCII only; PostgreSQL's does the same under the "C" collation.
        let fold = |column: &str| match self.backend {
            super::Backend::Sqlite => format!("lower({column})"),
            super::Backend::Postgres => format!("lower({column} COLLATE \"C\")"),
        };
        let list = (1..=names.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let condition = ["display_name", "email", "upn", "external_id"]
            .iter()
            .map(|c| format!("{} IN ({list})", fold(c)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let limit_at = names.len() + 1;
        let mut query = sqlx::query_as(sql!(
            "SELECT {PERSON_COLUMNS} FROM people WHERE {condition} ORDER BY id LIMIT ${limit_at}"
        ));
        for name in names {
            query = query.bind(name.to_ascii_lowercase());
        }
        Ok(query.bind(limit).fetch_all(&self.pool).await?)
    }

    pub async fn person_by_id(&self, id: i64) -> Result<Option<PersonRow>> {
        person_where(&self.pool, PersonKey::Id(id)).await
    }

    /// The external id of a person, by row id (for answers).
    pub async fn person_external_id(&self, person_id: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT external_id FROM people WHERE id = $1")
                .bind(person_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

impl WriteTx {
    pub async fn person_by_external_id(&mut self, external_id: &str) -> Result<Option<PersonRow>> {
        person_where(&mut *self.tx, PersonKey::ExternalId(external_id)).await
    }

    pub async fn person_by_id(&mut self, id: i64) -> Result<Option<PersonRow>> {
        person_where(&mut *self.tx, PersonKey::Id(id)).await
    }

    pub async fn insert_person(&mut self, p: &NewPerson) -> Result<PersonRow> {
        let now = self.now();
        let result = sqlx::query(
            "INSERT INTO people (external_id, display_name, upn, email, windows_sid, attributes_json, \
             state, sync_generation, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&p.external_id)
        .bind(&p.display_name)
        .bind(&p.upn)
        .bind(&p.email)
        .bind(p.windows_sid.clone())
        .bind(&p.attributes_json)
        .bind(p.state.as_str())
        .bind(p.sync_generation)
        .bind(now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "person", &p.external_id)?;
        written(self.person_by_external_id(&p.external_id).await?)
    }

    /// Writes every field of `p` (found by its id) and stamps `updated_at`.
    pub async fn update_person(&mut self, p: &PersonRow) -> Result<PersonRow> {
        let now = self.now();
        sqlx::query(
            "UPDATE people SET display_name = $1, upn = $2, email = $3, windows_sid = $4, attributes_json = $5, \
             state = $6, sync_generation = $7, updated_at = $8 WHERE id = $9",
        )
        .bind(&p.display_name)
        .bind(&p.upn)
        .bind(&p.email)
        .bind(p.windows_sid.clone())
        .bind(&p.attributes_json)
        .bind(p.state.as_str())
        .bind(p.sync_generation)
        .bind(now)
        .bind(p.id)
        .execute(&mut *self.tx)
        .await?;
        written(self.person_by_external_id(&p.external_id).await?)
    }

    /// People not offboarded whose sync generation differs from `generation`.
    pub async fn people_missing_from_sync(&mut self, generation: i64) -> Result<Vec<PersonRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {PERSON_COLUMNS} FROM people WHERE state <> $1 AND sync_generation <> $2 ORDER BY id"
        ))
        .bind(PersonState::Offboarded.as_str())
        .bind(generation)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// The people whose external id is one of `external_ids` (any state), in no order.
    pub async fn people_by_external_ids(
        &mut self,
        external_ids: &[String],
    ) -> Result<Vec<PersonRow>> {
        let mut out = Vec::with_capacity(external_ids.len());
        for chunk in external_ids.chunks(super::BULK_ROWS) {
            let list = super::placeholders(1, chunk.len());
            let mut query = sqlx::query_as(sql!(
                "SELECT {PERSON_COLUMNS} FROM people WHERE external_id IN ({list})"
            ));
            for id in chunk {
                query = query.bind(id);
            }
            out.extend(query.fetch_all(&mut *self.tx).await?);
        }
        Ok(out)
    }

    /// Inserts many people with multi-row statements (their ids are not read back). An
    /// external id already used is refused as [`super::StoreError::Duplicate`] naming the first
    /// of its statement's rows.
    pub async fn insert_people(&mut self, people: &[NewPerson]) -> Result<()> {
        let now = self.now();
        for chunk in people.chunks(super::BULK_ROWS) {
            let sql = super::multi_row_insert(
                "people",
                "external_id, display_name, upn, email, windows_sid, attributes_json, state, \
                 sync_generation, created_at, updated_at",
                10,
                chunk.len(),
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                query = query
                    .bind(&p.external_id)
                    .bind(&p.display_name)
                    .bind(&p.upn)
                    .bind(&p.email)
                    .bind(p.windows_sid.clone())
                    .bind(&p.attributes_json)
                    .bind(p.state.as_str())
                    .bind(p.sync_generation)
                    .bind(now)
                    .bind(now);
            }
            let first = chunk.first().map(|p| p.external_id.as_str()).unwrap_or("");
            map_unique(query.execute(&mut *self.tx).await, "person", first)?;
        }
        Ok(())
    }

    /// Sets the sync generation (and `updated_at`) of the people with these ids.
    pub async fn set_sync_generation(&mut self, ids: &[i64], generation: i64) -> Result<()> {
        let now = self.now();
        for chunk in ids.chunks(super::BULK_ROWS) {
            let list = super::placeholders(3, chunk.len());
            let mut query = sqlx::query(sql!(
                "UPDATE people SET sync_generation = $1, updated_at = $2 WHERE id IN ({list})"
            ))
            .bind(generation)
            .bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Sets the state (and `updated_at`) of the people with these ids.
    pub async fn set_people_state(&mut self, ids: &[i64], state: PersonState) -> Result<()> {
        let now = self.now();
        for chunk in ids.chunks(super::BULK_ROWS) {
            let list = super::placeholders(3, chunk.len());
            let mut query = sqlx::query(sql!(
                "UPDATE people SET state = $1, updated_at = $2 WHERE id IN ({list})"
            ))
            .bind(state.as_str())
            .bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}
