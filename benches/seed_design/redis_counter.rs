//! The seed design's Redis: a processed-ids set and per-campaign counters, check then act.

use super::*;
use redis::aio::MultiplexedConnection;

const PROCESSED_KEY: &str = "processed";

fn total_key(campaign_id: &str) -> String {
    format!("total:{campaign_id}")
}

fn count_key(campaign_id: &str) -> String {
    format!("count:{campaign_id}")
}

async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    // The driver's default 500 ms response timeout is shorter than a synced write can take
    // under this load; the bench applies its own per-callback limit.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting to Redis (TALLY_SEED_REDIS)")
}

/// One worker's connection.
pub struct CounterCallbacks {
    client: redis::Client,
    connection: MultiplexedConnection,
}

impl Callbacks for CounterCallbacks {
    /// `SISMEMBER`, then if absent `INCRBY`, `INCR`, `SADD`: the seed's sequence, not atomic —
    /// two workers taking the same payment at once can both find it absent and both add it.
    /// The three writes go out as one pipeline (no MULTI): one round trip instead of three,
    /// and exactly as racy.
    async fn take(&mut self, event: &stream::Event) -> anyhow::Result<()> {
        let processed: bool = redis::cmd("SISMEMBER")
            .arg(PROCESSED_KEY)
            .arg(&event.payment_ref)
            .query_async(&mut self.connection)
            .await?;
        if processed {
            return Ok(());
        }
        redis::pipe()
            .cmd("INCRBY")
            .arg(total_key(&event.campaign_id))
            .arg(event.amount_cents)
            .ignore()
            .cmd("INCR")
            .arg(count_key(&event.campaign_id))
            .ignore()
            .cmd("SADD")
            .arg(PROCESSED_KEY)
            .arg(&event.payment_ref)
            .ignore()
            .query_async::<()>(&mut self.connection)
            .await?;
        Ok(())
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.connection = connect(&self.client).await?;
        Ok(())
    }
}

/// Deletes the keys the bench uses, and opens one connection per worker.
pub async fn prepare(
    url: &str,
    campaigns: &[String],
    workers: usize,
) -> anyhow::Result<Vec<CounterCallbacks>> {
    let client = redis::Client::open(url).context("TALLY_SEED_REDIS is not a Redis URL")?;
    let mut connection = connect(&client).await?;
    let mut delete = redis::cmd("DEL");
    delete.arg(PROCESSED_KEY);
    for campaign in campaigns {
        delete.arg(total_key(campaign)).arg(count_key(campaign));
    }
    delete
        .query_async::<()>(&mut connection)
        .await
        .context("deleting the bench's keys")?;
    let mut connections = Vec::with_capacity(workers);
    for _ in 0..workers {
        connections.push(CounterCallbacks {
            client: client.clone(),
            connection: connect(&client).await?,
        });
    }
    Ok(connections)
}

pub async fn totals(url: &str, campaigns: &[String]) -> anyhow::Result<Totals> {
    let client = redis::Client::open(url)?;
    let mut connection = connect(&client).await?;
    let mut totals = Totals::new();
    for campaign in campaigns {
        let (total_cents, donations): (Option<u64>, Option<u64>) = redis::pipe()
            .cmd("GET")
            .arg(total_key(campaign))
            .cmd("GET")
            .arg(count_key(campaign))
            .query_async(&mut connection)
            .await
            .with_context(|| format!("reading campaign {campaign}'s counters"))?;
        if let (Some(total_cents), Some(donations)) = (total_cents, donations) {
            let total = ExpectedTotal {
                total_cents,
                donations,
            };
            totals.insert(campaign.clone(), total);
        }
    }
    Ok(totals)
}
