//! The work a server runs beside its routes: the pipeline thread, notification deliveries, the
//! campaigns' control log, the node's lease and, on a shared log, the results exchanged with the
//! other nodes. All of it stops on one signal, and [`Background::finish`] waits for it in the
//! order that leaves a checkpoint committed and its results published.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_ingest::routes::IngestContext;
use tally_pipeline::campaigns::CampaignRegistry;
use tally_pipeline::clock::Clock;
use tally_pipeline::cluster::ResultsPublisher;
use tally_pipeline::cluster::results::ResultsCache;
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{PartitionRunSummary, Pipeline, PipelineError, RunMode};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::AppState;
use super::node::Node;
use super::supervisor::{StateSnapshots, Supervisor};

/// The pipeline and what feeds the other nodes' results in, before they start.
#[derive(Debug)]
pub struct Processing {
    pub pipeline: Pipeline,
    /// On a shared log: publishes this node's partitions' results.
    pub publisher: Option<Arc<ResultsPublisher>>,
    pub results_cache: ResultsCache,
    /// Where following the results topic goes on from.
    pub results_from: u64,
}

/// The running background work.
#[derive(Debug)]
pub struct Background {
    /// Fixed partitions: their pipeline thread. With automatic assignment the supervisor runs
    /// the pipeline and the deliveries.
    pipeline_thread:
        Option<std::thread::JoinHandle<Result<Vec<PartitionRunSummary>, PipelineError>>>,
    supervisor: Option<JoinHandle<()>>,
    deliveries: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    publisher: Option<Arc<ResultsPublisher>>,
}

impl Background {
    /// Starts the background work; it runs until `stop` says `true`.
    pub fn spawn(
        state: &AppState,
        processing: Processing,
        snapshot_interval: Duration,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let Processing {
            pipeline,
            publisher,
            results_cache,
            results_from,
        } = processing;
        let mut pipeline_thread = None;
        let mut tasks_first = Vec::new();
        let mut supervisor = None;
        let mut deliveries = Vec::new();
        match (state.node.automatic(), &publisher) {
            (Some(membership), Some(publisher)) => {
                let link = state.node.cluster.as_ref().expect("a shared log");
                let snapshots = Arc::new(StateSnapshots {
                    node: Arc::clone(&state.node),
                    membership: Arc::clone(membership),
                    store: Arc::clone(&state.store),
                    topic: Arc::clone(&link.state),
                    scratch_dir: state.data_dir.clone(),
                    interval: snapshot_interval,
                    published: Default::default(),
                    sequence: Default::default(),
                });
                let supervising = Supervisor {
                    node: Arc::clone(&state.node),
                    membership: Arc::clone(membership),
                    pipeline,
                    publisher: Arc::clone(publisher),
                    notifications: Arc::clone(&state.notifications),
                    snapshots: Arc::clone(&snapshots),
                    ingest: Arc::clone(&state.ingest),
                };
                supervisor = Some(tokio::spawn(supervising.supervise(stop.clone())));
                tasks_first.push(tokio::spawn(snapshots.run(stop.clone())));
            }
            _ => {
                let mode = RunMode::Follow {
                    shutdown: stop.clone(),
                };
                let owned = state.node.owned();
                pipeline_thread = Some(
                    std::thread::Builder::new()
                        .name("tally-pipeline".into())
                        .spawn(move || pipeline.run_partitions(mode, &owned))?,
                );
                deliveries = state.notifications.spawn_delivery(stop.clone());
            }
        }
        let mut tasks = tasks_first;
        tasks.extend([
            tokio::spawn({
                let campaigns = Arc::clone(&state.campaigns);
                let stop = stop.clone();
                async move { campaigns.follow(stop).await }
            }),
            tokio::spawn(stop_intake_when_asked(
                Arc::clone(&state.campaigns),
                Arc::clone(&state.ingest),
                state.node.node_id.clone(),
                stop.clone(),
            )),
            tokio::spawn(Arc::clone(&state.node).keep_lease(stop.clone())),
        ]);
        if let Some(publisher) = &publisher {
            let publisher = Arc::clone(publisher);
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { publisher.run(stop).await }));
        }
        if let Some(link) = &state.node.cluster {
            tasks.push(tokio::spawn(tally_pipeline::cluster::follow_results(
                Arc::clone(&link.results),
                Arc::clone(&state.read_model),
                // With automatic assignment every partition is folded: what this node runs
                // now, it may not run later (and an update older than the local view is
                // ignored anyway).
                if state.node.automatic().is_some() {
                    Vec::new()
                } else {
                    state.node.owned()
                },
                results_from,
                Some(results_cache),
                stop,
            )));
        }
        Ok(Self {
            pipeline_thread,
            supervisor,
            deliveries,
            tasks,
            publisher,
        })
    }

    /// Waits, once `stop` said `true`, for the deliveries and the pipeline's last checkpoints,
    /// publishes their results, and waits for the rest.
    pub async fn finish(self) -> anyhow::Result<()> {
        for delivery in self.deliveries {
            let _ = delivery.await;
        }
        if let Some(supervisor) = self.supervisor {
            // It stops the run, publishes its last results and releases the partitions.
            supervisor.await?;
        }
        if let Some(pipeline_thread) = self.pipeline_thread {
            let summaries = tokio::task::spawn_blocking(move || pipeline_thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
            let offsets: Vec<u64> = summaries.iter().map(|s| s.next_offset).collect();
            tracing::info!(?offsets, "pipeline stopped at a checkpoint");
        }
        if let Some(publisher) = self.publisher {
            // Publish the last checkpoints' results before giving the partitions up.
            let (_, stopped) = watch::channel(true);
            publisher.run(stopped).await;
        }
        for task in self.tasks {
            let _ = task.await;
        }
        Ok(())
    }
}

/// Reads the results the other nodes published so far, before serving — from where the saved
/// cache left off, if it fits the topic, or from the latest snapshots if they are later.
/// Returns where to go on.
pub async fn catch_up_results(
    node: &Node,
    read_model: &ReadModel,
    cache: &ResultsCache,
    clock: &dyn Clock,
) -> anyhow::Result<u64> {
    let Some(link) = &node.cluster else {
        return Ok(0);
    };
    let started = std::time::Instant::now();
    let from = tally_pipeline::cluster::results::results_start(
        link.results.as_ref(),
        read_model,
        &node.owned(),
        cache,
        clock.now_ms(),
    )
    .await
    .context("cannot read the results topic")?;
    let next = tally_pipeline::cluster::catch_up_results(
        link.results.as_ref(),
        read_model,
        &node.owned(),
        from,
    )
    .await
    .context("cannot read the results topic")?;
    tracing::info!(
        from,
        folded = next - from,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "read the other nodes' results"
    );
    Ok(next)
}

/// Stops taking donations for every campaign whose close was requested, and says so on the
/// control log, until `shutdown`.
async fn stop_intake_when_asked(
    campaigns: Arc<CampaignRegistry>,
    ingest: Arc<IngestContext>,
    node_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = campaigns.subscribe();
    while !*shutdown.borrow() {
        for campaign_id in campaigns.intake_to_stop(&node_id) {
            // The campaign already shows as closing, so no new donation for it is admitted;
            // taking the intake lock exclusively waits out the ones being appended.
            drop(ingest.intake.write().await);
            if let Err(error) = campaigns
                .confirm_intake_stopped(&campaign_id, &node_id)
                .await
            {
                tracing::warn!(%error, campaign_id, "cannot confirm that intake stopped; retrying");
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
