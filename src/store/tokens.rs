//! Table `tokens`: the hardware tokens and who holds them.
use super::{Result, Store, Timestamp, WriteTx, map_unique, written};
use serde::Serialize;
use sqlx::{Any, Executor};

stored_enum!(TokenState, "tokens.state", {
    Enrolling => "enrolling", Active => "active", Suspended => "suspended",
    Lost => "lost", Damaged => "damaged", Retired => "retired",
    Forgotten => "forgotten",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TokenRow {
    #[serde(skip)]
    pub id: i64,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub form_factor: String,
    pub state: TokenState,
    #[serde(skip)]
    pub person_id: Option<i64>,
    /// Read from `people` by `person_id`; ignored on write.
    pub person_external_id: Option<String>,
    #[serde(skip)]
    pub created_at: Timestamp,
    #[serde(skip)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub form_factor: String,
    pub state: TokenState,
    pub person_id: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct TokensQuery {
    pub after_id: i64,
    pub limit: i64,
    pub person_id: Option<i64>,
    pub state: Option<TokenState>,
}

const TOKEN_COLUMNS: &str = "id, serial, model, firmware, form_factor, state, person_id, \
     (SELECT external_id FROM people WHERE people.id = tokens.person_id) AS person_external_id, \
     created_at, updated_at";

/// How a token is looked up.
enum TokenKey<'a> {
    Serial(&'a str),
    Id(i64),
}

async fn token_where<'e, E: Executor<'e, Database = Any>>(
    e: E,
    key: TokenKey<'_>,
) -> Result<Option<TokenRow>> {
    let column = match key {
        TokenKey::Serial(_) => "serial",
        TokenKey::Id(_) => "id",
    };
    let query = sqlx::query_as(sql!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE {column} = $1"
    ));
    let query = match key {
        TokenKey::Serial(serial) => query.bind(serial.to_string()),
        TokenKey::Id(id) => query.bind(id),
    };
    Ok(query.fetch_optional(e).await?)
}

impl Store {
    pub async fn token_by_serial(&self, serial: &str) -> Result<Option<TokenRow>> {
        token_where(&self.pool, TokenKey::Serial(serial)).await
    }

    pub async fn list_tokens(&self, q: &TokensQuery) -> Result<Vec<TokenRow>> {
        // Absent filters are bound as values that match everything, so one statement serves all.
        Ok(sqlx::query_as(sql!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id > $1 \
             AND ($2 = 0 OR person_id = $2) AND ($3 = '' OR state = $3) ORDER BY id LIMIT $4"
        ))
        .bind(q.after_id)
        .bind(q.person_id.unwrap_or(0))
        .bind(q.state.map(|s| s.as_str()).unwrap_or(""))
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn token_by_id(&self, id: i64) -> Result<Option<TokenRow>> {
        token_where(&self.pool, TokenKey::Id(id)).await
    }

    /// The serial of a token, by row id (for answers).
    pub async fn token_serial(&self, token_id: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT serial FROM tokens WHERE id = $1")
                .bind(token_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

impl WriteTx {
    pub async fn token_by_serial(&mut self, serial: &str) -> Result<Option<TokenRow>> {
        token_where(&mut *self.tx, TokenKey::Serial(serial)).await
    }

    pub async fn token_by_id(&mut self, id: i64) -> Result<Option<TokenRow>> {
        token_where(&mut *self.tx, TokenKey::Id(id)).await
    }

    pub async fn insert_token(&mut self, t: &NewToken) -> Result<TokenRow> {
        let now = self.now();
        let result = sqlx::query(
            "INSERT INTO tokens (serial, model, firmware, form_factor, state, person_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&t.serial)
        .bind(&t.model)
        .bind(&t.firmware)
        .bind(&t.form_factor)
        .bind(t.state.as_str())
        .bind(t.person_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "token", &t.serial)?;
        written(self.token_by_serial(&t.serial).await?)
    }

    /// Writes the state and holder of the token with `t.id`.
    pub async fn update_token(&mut self, t: &TokenRow) -> Result<TokenRow> {
        let now = self.now();
        sqlx::query("UPDATE tokens SET state = $1, person_id = $2, updated_at = $3 WHERE id = $4")
            .bind(t.state.as_str())
            .bind(t.person_id)
            .bind(now)
            .bind(t.id)
            .execute(&mut *self.tx)
            .await?;
        written(self.token_by_serial(&t.serial).await?)
    }

    /// Writes a token's model, firmware and form factor.
    pub async fn update_token_hardware(
        &mut self,
        token_id: i64,
        model: &str,
        firmware: &str,
        form_factor: &str,
    ) -> Result<()> {
        let now = self.now();
        sqlx::query(
            "UPDATE tokens SET model = $1, firmware = $2, form_factor = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(model)
        .bind(firmware)
        .bind(form_factor)
        .bind(now)
        .bind(token_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Unassigns every token of a person; returns their serials.
    pub async fn release_tokens_of_person(&mut self, person_id: i64) -> Result<Vec<String>> {
        let serials =
            sqlx::query_scalar("SELECT serial FROM tokens WHERE person_id = $1 ORDER BY serial")
                .bind(person_id)
                .fetch_all(&mut *self.tx)
                .await?;
        let now = self.now();
        sqlx::query("UPDATE tokens SET person_id = NULL, updated_at = $1 WHERE person_id = $2")
            .bind(now)
            .bind(person_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(serials)
    }

    /// Takes every token of the people with these ids back (`person_id` cleared); returns the
    /// tokens as they were before, by person id then serial.
    pub async fn release_tokens_of_people(&mut self, person_ids: &[i64]) -> Result<Vec<TokenRow>> {
        let now = self.now();
        let mut out = Vec::new();
        for chunk in person_ids.chunks(super::BULK_ROWS) {
            let list = super::placeholders(1, chunk.len());
            let mut query = sqlx::query_as(sql!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE person_id IN ({list}) ORDER BY person_id, serial"
            ));
            for id in chunk {
                query = query.bind(*id);
            }
            let held: Vec<TokenRow> = query.fetch_all(&mut *self.tx).await?;
            if held.is_empty() {
                continue;
            }
            let list = super::placeholders(2, chunk.len());
            let mut update = sqlx::query(sql!(
                "UPDATE tokens SET person_id = NULL, updated_at = $1 WHERE person_id IN ({list})"
            ))
            .bind(now);
            for id in chunk {
                update = update.bind(*id);
            }
            update.execute(&mut *self.tx).await?;
            out.extend(held);
        }
        Ok(out)
    }
}
