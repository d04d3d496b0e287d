//! The seed design's Postgres: one durable `INSERT … ON CONFLICT DO NOTHING` per callback.

use super::*;

/// `payment_ref` is the primary key: the one unique index the design needs, and no more.
const CREATE_TABLE: &str = "CREATE TABLE donations (
    payment_ref text PRIMARY KEY,
    order_id text NOT NULL,
    user_id text NOT NULL,
    campaign_id text NOT NULL,
    amount_cents bigint NOT NULL,
    paid_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now())";
const INSERT: &str = "INSERT INTO donations
    (payment_ref, order_id, user_id, campaign_id, amount_cents, paid_at)
    VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz)
    ON CONFLICT (payment_ref) DO NOTHING";
const TOTALS: &str = "SELECT campaign_id, sum(amount_cents)::bigint, count(*)
    FROM donations GROUP BY campaign_id";

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to Postgres (TALLY_SEED_POSTGRES)")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("a Postgres connection ended: {error}");
        }
    });
    Ok(client)
}

/// One worker's connection, in autocommit: every INSERT is its own committed transaction,
/// durable before it returns (`synchronous_commit = on`).
pub struct InsertCallbacks {
    url: String,
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
}

impl InsertCallbacks {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let client = connect(url).await?;
        let insert = client.prepare(INSERT).await.context("preparing INSERT")?;
        Ok(Self {
            url: url.to_owned(),
            client,
            insert,
        })
    }
}

impl Callbacks for InsertCallbacks {
    async fn take(&mut self, event: &stream::Event) -> anyhow::Result<()> {
        let amount_cents = i64::try_from(event.amount_cents)?;
        self.client
            .execute(
                &self.insert,
                &[
                    &event.payment_ref,
                    &event.order_id,
                    &event.user_id,
                    &event.campaign_id,
                    &amount_cents,
                    &event.paid_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        if self.client.is_closed() {
            *self = Self::open(&self.url).await?;
        }
        Ok(())
    }
}

/// A fresh, empty `donations` table, and one connection per worker.
pub async fn prepare(url: &str, workers: usize) -> anyhow::Result<Vec<InsertCallbacks>> {
    let client = connect(url).await?;
    client
        .batch_execute("DROP TABLE IF EXISTS donations")
        .await
        .context("dropping the donations table")?;
    client
        .batch_execute(CREATE_TABLE)
        .await
        .context("creating the donations table")?;
    let mut connections = Vec::with_capacity(workers);
    for _ in 0..workers {
        connections.push(InsertCallbacks::open(url).await?);
    }
    Ok(connections)
}

pub async fn totals(url: &str) -> anyhow::Result<Totals> {
    let client = connect(url).await?;
    let rows = client
        .query(TOTALS, &[])
        .await
        .context("summing donations")?;
    let mut totals = Totals::new();
    for row in rows {
        let total = ExpectedTotal {
            total_cents: u64::try_from(row.try_get::<_, i64>(1)?)?,
            donations: u64::try_from(row.try_get::<_, i64>(2)?)?,
        };
        totals.insert(row.try_get(0)?, total);
    }
    Ok(totals)
}
