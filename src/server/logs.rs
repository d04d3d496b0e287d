//! The logs a server opens on its data directory: the donation log, the campaigns' control log,
//! and on a Fluvio cluster the topics shared with the other nodes.

use std::sync::Arc;

use anyhow::Context;
use tally_pipeline::campaigns::CampaignRegistry;
use tally_pipeline::cluster::results::results_topic_options;
use tally_pipeline::cluster::state_snapshots;
use tally_pipeline::cluster::{COMPANION_SUFFIX_BYTES_MAX, CompanionTopics};
use tally_pipeline::log::location::FluvioLocation;
use tally_pipeline::log::{FluvioLog, FluvioLogOptions, Log, LogLocation};

use super::ServerConfig;
use crate::data_dir::{self, log_binding};

/// The logs a node works with: donations, and the campaigns' control log; on a Fluvio
/// cluster also the nodes and results topics.
pub struct Logs {
    pub donations: Arc<dyn Log>,
    pub campaigns: CampaignRegistry,
    pub shared: Option<SharedTopics>,
}

pub struct SharedTopics {
    pub nodes: Arc<dyn Log>,
    pub results: Arc<dyn Log>,
    /// Partition state snapshots, a partition for each of the donation topic's.
    pub state: Arc<dyn Log>,
}

/// Opens the logs the data directory is bound to (binding it on first start).
pub async fn open_logs(config: &ServerConfig) -> anyhow::Result<Logs> {
    let data_dir = config.data_dir.as_path();
    let bound_partitions = log_binding::bind(data_dir, &config.log_location, config.partitions)?;
    match &config.log_location {
        LogLocation::Embedded => {
            let donations: Arc<dyn Log> =
                Arc::new(data_dir::open_log(data_dir, Some(config.partitions))?);
            let campaigns = CampaignRegistry::open_embedded(&data_dir.join("control"))
                .await
                .context("cannot open the campaign registry")?;
            Ok(Logs {
                donations,
                campaigns,
                shared: None,
            })
        }
        LogLocation::Fluvio(location) => {
            let partitions = bound_partitions.unwrap_or(config.partitions);
            let defaults = FluvioLogOptions {
                replication_factor: config.fluvio_replication,
                ..FluvioLogOptions::default()
            };
            let connect = |topic: String, partitions: u32, options: FluvioLogOptions| {
                let endpoint = location.endpoint.clone();
                async move {
                    let log = FluvioLog::connect(&endpoint, &topic, partitions, options)
                        .await
                        .with_context(|| format!("cannot use the topic {topic}"))?;
                    anyhow::Ok(Arc::new(log) as Arc<dyn Log>)
                }
            };
            let companions = companion_topics(location)?;
            let donations = connect(location.topic.clone(), partitions, defaults.clone())
                .await
                .with_context(|| format!("cannot use the log at {}", config.log_location))?;
            let campaigns =
                CampaignRegistry::open(connect(companions.campaigns, 1, defaults.clone()).await?)
                    .await
                    .context("cannot read the campaigns topic")?;
            let results_options = results_topic_options(defaults.clone());
            let state_options = state_snapshots::state_topic_options(defaults.clone());
            let shared = SharedTopics {
                nodes: connect(companions.nodes, 1, defaults).await?,
                results: connect(companions.results, 1, results_options).await?,
                state: connect(companions.state, partitions, state_options).await?,
            };
            tracing::info!(log = %config.log_location, partitions, "log on a Fluvio cluster");
            Ok(Logs {
                donations,
                campaigns,
                shared: Some(shared),
            })
        }
    }
}

fn companion_topics(location: &FluvioLocation) -> anyhow::Result<CompanionTopics> {
    const TOPIC_NAME_BYTES_MAX: usize = 63;
    anyhow::ensure!(
        location.topic.len() + COMPANION_SUFFIX_BYTES_MAX <= TOPIC_NAME_BYTES_MAX,
        "the topic name {:?} is too long: tally adds topics named after it (-campaigns, -nodes, \
         -results, -state), so it may have at most {} characters",
        location.topic,
        TOPIC_NAME_BYTES_MAX - COMPANION_SUFFIX_BYTES_MAX
    );
    Ok(CompanionTopics::of(&location.topic))
}
