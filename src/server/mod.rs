//! `tally serve`: one process that takes payment callbacks, runs the pipeline, serves totals and
//! statistics, and notifies donors.
//!
//! ```text
//! HTTP ─► ingest routes ─► log (durable) ─► pipeline threads ─► read model ─► query routes ─► HTTP
//!                                                   └──────────► notifications ─► webhook
//! ```
//! [`run`] takes the listener and the shutdown signal from its caller, so tests drive the same
//! code as `main`. [`connections`] serves the listener: the connection cap and the header-read
//! and idle deadlines; request bodies are read in bounded slots within a timeout
//! (`tally_ingest::body`) before any work is admitted.

mod admin;
mod connection_watch;
pub mod connections;
mod lingering_close;
mod metrics;
mod node;
pub mod notifications;
mod open_files;
mod remote;
mod request_target;
mod secrets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Args;
use tally_ingest::body::{BATCH_BODY_READS_MAX, BODY_READ_TIMEOUT_DEFAULT};
use tally_ingest::body::{BodyReadLimits, BodyReads, CALLBACK_BODY_READS_MAX_DEFAULT};
use tally_ingest::rate_limit::{RateLimitConfig, RateLimiter};
use tally_ingest::routes::{IngestContext, IngestLimits};
use tally_pipeline::campaigns::CampaignRegistry;
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::{Clock, SystemClock};
use tally_pipeline::cluster::results::{ResultsCache, results_topic_options};
use tally_pipeline::cluster::{
    COMPANION_SUFFIX_BYTES_MAX, CompanionTopics, Membership, NodeAnnouncement, PartitionSet,
    ResultsPublisher,
};
use tally_pipeline::log::location::FluvioLocation;
use tally_pipeline::log::{FluvioLog, FluvioLogOptions, Log, LogLocation};
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{DonationIndexes, Pipeline, PipelineConfig, RunMode};
use tally_query::routes::QueryContext;
use tokio::net::TcpListener;
use tokio::sync::watch;

use connection_watch::WatchLimits;
use connections::{
    CONNECTIONS_MAX_DEFAULT, ConnectionLimits, ConnectionMetrics, HEADER_READ_TIMEOUT_DEFAULT,
    IDLE_TIMEOUT_DEFAULT, REFUSALS_MAX,
};
use node::{ClusterLink, Node};
use notifications::{Notifications, Webhook};

/// Requests admitted to work at once: donations once their body is read and signature checked,
/// and queries; more wait for a permit. Bounds the parsed requests and log work in flight under
/// overload; a body being read never holds one.
const ADMITTED_REQUESTS_MAX: usize = 4096;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "TALLY_LISTEN")]
    pub listen: SocketAddr,
    /// Secret that signs callbacks (Tally-Signature); default: generated into the data directory.
    #[arg(long, env = "TALLY_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,
    /// Bearer token for admin routes; default: generated into the data directory.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Deliver donor notifications to this URL (signed JSON POSTs); without it, consumers page
    /// through GET /v1/notifications.
    #[arg(long, env = "TALLY_NOTIFY_WEBHOOK")]
    pub notify_webhook: Option<String>,
    /// Where the donation log lives: `embedded` (in the data directory) or
    /// `fluvio://HOST:PORT/TOPIC` (a topic on a Fluvio cluster, created if missing). The first
    /// start binds the data directory to it.
    #[arg(long = "log", env = "TALLY_LOG_LOCATION", default_value = "embedded")]
    pub log_location: LogLocation,
    /// Partitions of the log if this start creates it.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
    /// Replicas of each partition when tally creates the Fluvio topic: 1 suits a one-SPU test
    /// cluster; use at least 2 in production, where durability comes from replication.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub fluvio_replication: u32,
    /// Partitions whose pipeline this node runs (`all`, or e.g. `0-3`, `0,2,4-5`). On a shared
    /// Fluvio log, several nodes split the partitions; two live nodes never own the same one.
    #[arg(long, default_value = "all", env = "TALLY_OWNS")]
    pub owns: PartitionSet,
    /// This node's id among the nodes on a shared log; default: generated into the data
    /// directory, so a restart on it is the same node.
    #[arg(long, env = "TALLY_NODE_ID")]
    pub node_id: Option<String>,
    /// The base URL other nodes reach this one at (default: http:// and the listen address).
    #[arg(long, env = "TALLY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Largest accepted donation, in cents.
    #[arg(long, default_value_t = IngestLimits::default().donation.amount_cents_max)]
    pub amount_cents_max: u64,
    /// Donations a user may send in a burst before being rate limited.
    #[arg(long, default_value_t = RateLimitConfig::default().burst)]
    pub rate_limit_burst: u32,
    /// Donations per second a user's allowance refills by.
    #[arg(long, default_value_t = RateLimitConfig::default().refill_per_second)]
    pub rate_limit_per_second: f64,
    /// Commit a checkpoint at least this often while records are applied.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Duration,
    /// …or after this many records.
    #[arg(long, default_value_t = PipelineConfig::default().checkpoint_records_max)]
    pub checkpoint_records: u64,
    /// Client connections served at once; one more is answered 503 too_many_connections and
    /// closed. Default: 16384, or fewer if the open-file limit (raised to its hard limit at
    /// start) leaves less room beside the server's own files.
    #[arg(long, env = "TALLY_CONNECTIONS_MAX")]
    pub connections_max: Option<u64>,
    /// How long a request head may take to arrive whole: from accept for a connection's first
    /// request, from its first byte for the next ones. A client past it is disconnected.
    #[arg(long, env = "TALLY_HEADER_READ_TIMEOUT", default_value_t = HEADER_READ_TIMEOUT_DEFAULT.into())]
    pub header_read_timeout: humantime::Duration,
    /// How long a kept-alive connection may wait for its next request, or leave a response
    /// unread, before it is closed.
    #[arg(long, env = "TALLY_IDLE_TIMEOUT", default_value_t = IDLE_TIMEOUT_DEFAULT.into())]
    pub idle_timeout: humantime::Duration,
    /// How long a request body may take to arrive; past it the answer is 408 body_timeout and
    /// the connection is closed.
    #[arg(long, env = "TALLY_BODY_READ_TIMEOUT", default_value_t = BODY_READ_TIMEOUT_DEFAULT.into())]
    pub body_read_timeout: humantime::Duration,
    /// Callback-sized bodies (up to 16 KiB) read at once, before their signature is checked;
    /// one more is answered 503 too_many_body_reads. Memory: this × 16 KiB at most. Batches
    /// have 64 slots of their own.
    #[arg(long, env = "TALLY_BODY_READS_MAX", default_value_t = CALLBACK_BODY_READS_MAX_DEFAULT as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub body_reads_max: u32,
}

impl ServeArgs {
    fn watch_limits(&self) -> anyhow::Result<WatchLimits> {
        Ok(WatchLimits {
            header_read_timeout: positive(self.header_read_timeout, "--header-read-timeout")?,
            idle_timeout: positive(self.idle_timeout, "--idle-timeout")?,
        })
    }

    /// The listener's limits, with the connection cap fitted under the open-file limit beside
    /// the files open now.
    fn connection_limits(
        &self,
        open_file_limit: u64,
        watch: WatchLimits,
    ) -> anyhow::Result<ConnectionLimits> {
        let files = open_files::OpenFiles::now(open_file_limit);
        let budget = files.budget(self.connections_max, CONNECTIONS_MAX_DEFAULT, REFUSALS_MAX)?;
        tracing::info!(
            connections_max = budget.connections,
            refusals_max = budget.refusals,
            open_file_limit,
            files_open = files.open,
            "connection limits"
        );
        Ok(ConnectionLimits {
            connections_max: budget.connections,
            refusals_max: budget.refusals,
            watch,
        })
    }

    fn body_read_limits(&self) -> anyhow::Result<BodyReadLimits> {
        Ok(BodyReadLimits {
            callback_reads_max: self.body_reads_max as usize,
            batch_reads_max: BATCH_BODY_READS_MAX,
            read_timeout: positive(self.body_read_timeout, "--body-read-timeout")?,
        })
    }
}

fn positive(duration: humantime::Duration, flag: &str) -> anyhow::Result<Duration> {
    let duration: Duration = duration.into();
    anyhow::ensure!(!duration.is_zero(), "{flag} must be more than 0");
    Ok(duration)
}

/// What every route can reach.
#[derive(Debug)]
pub struct AppState {
    pub log: Arc<dyn Log>,
    pub remote: Option<Arc<dyn tally_api::remote::RemoteDonations>>,
    pub store: Arc<CheckpointStore>,
    pub campaigns: Arc<CampaignRegistry>,
    pub read_model: Arc<ReadModel>,
    pub donation_indexes: Arc<DonationIndexes>,
    pub ingest: Arc<IngestContext>,
    pub notifications: Arc<Notifications>,
    pub requests: Arc<metrics::RequestCounter>,
    pub connections: Arc<ConnectionMetrics>,
    pub connections_max: u64,
    pub admin_token: String,
    pub clock: Arc<dyn Clock>,
    /// For checkpoint verification against the log while serving.
    pub pipeline: Pipeline,
    /// Closes run one at a time, so that racing closes of one campaign all see it through.
    pub close_lock: tokio::sync::Mutex<()>,
    pub node: Arc<Node>,
    /// The data directory: savepoints are written into its `savepoints/`.
    pub data_dir: PathBuf,
}

/// The logs a node works with: donations, and the campaigns' control log; on a Fluvio
/// cluster also the nodes and results topics.
struct Logs {
    donations: Arc<dyn Log>,
    campaigns: CampaignRegistry,
    shared: Option<SharedTopics>,
}

struct SharedTopics {
    nodes: Arc<dyn Log>,
    results: Arc<dyn Log>,
}

/// Opens the logs the data directory is bound to (binding it on first start).
async fn open_logs(data_dir: &std::path::Path, args: &ServeArgs) -> anyhow::Result<Logs> {
    use crate::commands::log_binding;
    let bound_partitions = log_binding::bind(data_dir, &args.log_location, args.partitions)?;
    match &args.log_location {
        LogLocation::Embedded => {
            let donations: Arc<dyn Log> =
                Arc::new(crate::commands::open_log(data_dir, Some(args.partitions))?);
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
            let partitions = bound_partitions.unwrap_or(args.partitions);
            let defaults = FluvioLogOptions {
                replication_factor: args.fluvio_replication,
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
                .with_context(|| format!("cannot use the log at {}", args.log_location))?;
            let campaigns =
                CampaignRegistry::open(connect(companions.campaigns, 1, defaults.clone()).await?)
                    .await
                    .context("cannot read the campaigns topic")?;
            let results_options = results_topic_options(defaults.clone());
            let shared = SharedTopics {
                nodes: connect(companions.nodes, 1, defaults).await?,
                results: connect(companions.results, 1, results_options).await?,
            };
            tracing::info!(log = %args.log_location, partitions, "log on a Fluvio cluster");
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
         -results), so it may have at most {} characters",
        location.topic,
        TOPIC_NAME_BYTES_MAX - COMPANION_SUFFIX_BYTES_MAX
    );
    Ok(CompanionTopics::of(&location.topic))
}

/// Joins the other nodes on a shared log (refusing partitions a live node owns), or stands
/// alone on the embedded log.
async fn join(
    data_dir: &std::path::Path,
    args: &ServeArgs,
    address: SocketAddr,
    partition_count: u32,
    shared: Option<&SharedTopics>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Node> {
    let owns = args
        .owns
        .resolve(partition_count)
        .context("invalid --owns")?;
    anyhow::ensure!(!owns.is_empty(), "--owns names no partition");
    let node_id = secrets::node_id(data_dir, args.node_id.as_deref())?;
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    let Some(shared) = shared else {
        anyhow::ensure!(
            owns.len() == partition_count as usize,
            "--owns {} needs a shared log (--log fluvio://…): on the embedded log one node runs \
             every partition",
            args.owns
        );
        return Ok(Node {
            node_id,
            owns,
            advertise,
            cluster: None,
        });
    };
    let me = NodeAnnouncement {
        node_id: node_id.clone(),
        owns: owns.clone(),
        advertise: advertise.clone(),
    };
    let membership = Membership::join(Arc::clone(&shared.nodes), me, Arc::clone(clock))
        .await
        .context("cannot join the other nodes")?;
    tracing::info!(node_id, owns = %args.owns, %advertise, "joined the nodes on the shared log");
    Ok(Node {
        node_id,
        owns,
        advertise,
        cluster: Some(ClusterLink {
            membership: Arc::new(membership),
            results: Arc::clone(&shared.results),
        }),
    })
}

/// Runs the server on `listener` until `shutdown` resolves; then stops taking requests, lets the
/// in-flight ones finish, stops the pipeline and commits its checkpoints.
pub async fn run(
    listener: TcpListener,
    data_dir: PathBuf,
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let open_file_limit = open_files::raise_limit();
    let body_read_limits = args.body_read_limits()?;
    let watch_limits = args.watch_limits()?;
    let logs = open_logs(&data_dir, &args).await?;
    let log = logs.donations;
    let node = Arc::new(
        join(
            &data_dir,
            &args,
            listener.local_addr()?,
            log.partition_count(),
            logs.shared.as_ref(),
            &clock,
        )
        .await?,
    );
    let store = Arc::new(crate::commands::open_store(
        &data_dir,
        log.partition_count(),
    )?);
    let campaigns = Arc::new(logs.campaigns);
    let read_model = Arc::new(ReadModel::new(log.partition_count()));
    let results_cache = ResultsCache::new(data_dir.join("results-cache"));
    let results_from = catch_up_results(&node, &read_model, &results_cache, clock.as_ref()).await?;
    let config = crate::commands::pipeline_config(PipelineConfig {
        checkpoint_interval: args.checkpoint_interval,
        checkpoint_records_max: args.checkpoint_records.max(1),
        ..PipelineConfig::default()
    });
    let mut pipeline = Pipeline::new(
        Arc::clone(&log),
        Arc::clone(&store),
        Arc::clone(&read_model),
        Arc::clone(&clock),
        config,
    )?;
    let publisher = node.cluster.as_ref().map(|link| {
        let publisher = ResultsPublisher::new(Arc::clone(&link.results), Arc::clone(&read_model));
        Arc::new(publisher)
    });
    if let Some(publisher) = &publisher {
        pipeline = pipeline.with_sink(Arc::clone(publisher) as _);
    }
    let donation_indexes = Arc::clone(pipeline.donation_indexes());
    let remote: Option<Arc<dyn tally_api::remote::RemoteDonations>> =
        node.cluster.as_ref().map(|_| {
            Arc::new(remote::ForwardToOwner {
                node: Arc::clone(&node),
                client: reqwest::Client::new(),
            }) as _
        });

    let signing_secret = secrets::signing_secret(&data_dir, args.signing_secret.as_deref())?;
    let admin_token = secrets::admin_token(&data_dir, args.admin_token.as_deref())?;
    if let Some(path) = &signing_secret.path {
        println!("signing secret: {}", path.display());
    }
    if let Some(path) = &admin_token.path {
        println!("admin token: {}", path.display());
    }
    let rate_limit = RateLimitConfig {
        burst: args.rate_limit_burst,
        refill_per_second: args.rate_limit_per_second,
        ..RateLimitConfig::default()
    };
    let mut limits = IngestLimits::default();
    limits.donation.amount_cents_max = args.amount_cents_max;
    let ingest = Arc::new(IngestContext {
        log: Arc::clone(&log),
        campaigns: Arc::clone(&campaigns),
        intake: Arc::new(tokio::sync::RwLock::new(())),
        donation_indexes: Arc::clone(&donation_indexes),
        remote: remote.clone(),
        signing_secret: signing_secret.value.clone(),
        limits,
        bodies: Arc::new(BodyReads::new(body_read_limits)),
        admitted: Arc::new(tokio::sync::Semaphore::new(ADMITTED_REQUESTS_MAX)),
        rate_limiter: RateLimiter::new(rate_limit, Arc::clone(&clock))
            .context("invalid rate limit")?,
        clock: Arc::clone(&clock),
        metrics: Default::default(),
    });
    let webhook = args.notify_webhook.clone().map(|url| Webhook {
        url,
        secret: signing_secret.value.clone(),
        client: reqwest::Client::new(),
    });
    let connection_limits = args.connection_limits(open_file_limit, watch_limits)?;
    let notifications = Arc::new(Notifications::new(
        Arc::clone(&store),
        Arc::clone(&log),
        Arc::clone(&donation_indexes),
        Arc::clone(&read_model),
        Arc::clone(&clock),
        webhook,
        node.owns.clone(),
    )?);
    let state = Arc::new(AppState {
        log: Arc::clone(&log),
        remote: remote.clone(),
        store,
        campaigns: Arc::clone(&campaigns),
        read_model: Arc::clone(&read_model),
        donation_indexes: Arc::clone(&donation_indexes),
        ingest: Arc::clone(&ingest),
        notifications: Arc::clone(&notifications),
        requests: Default::default(),
        connections: Default::default(),
        connections_max: connection_limits.connections_max,
        admin_token: admin_token.value,
        clock: Arc::clone(&clock),
        close_lock: tokio::sync::Mutex::new(()),
        pipeline: pipeline.clone(),
        node: Arc::clone(&node),
        data_dir: data_dir.clone(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let pipeline_thread = {
        let mode = RunMode::Follow {
            shutdown: stop_rx.clone(),
        };
        let owned = node.owns.clone();
        std::thread::Builder::new()
            .name("tally-pipeline".into())
            .spawn(move || pipeline.run_partitions(mode, &owned))?
    };
    let deliveries = notifications.spawn_delivery(stop_rx.clone());
    let mut background = vec![
        tokio::spawn({
            let campaigns = Arc::clone(&campaigns);
            let stop = stop_rx.clone();
            async move { campaigns.follow(stop).await }
        }),
        tokio::spawn(stop_intake_when_asked(
            Arc::clone(&campaigns),
            Arc::clone(&ingest),
            node.node_id.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(Arc::clone(&node).keep_lease(stop_rx.clone())),
    ];
    if let Some(publisher) = &publisher {
        let publisher = Arc::clone(publisher);
        let stop = stop_rx.clone();
        background.push(tokio::spawn(async move { publisher.run(stop).await }));
    }
    if let Some(link) = &node.cluster {
        background.push(tokio::spawn(tally_pipeline::cluster::follow_results(
            Arc::clone(&link.results),
            Arc::clone(&read_model),
            node.owns.clone(),
            results_from,
            Some(results_cache),
            stop_rx.clone(),
        )));
    }
    let router = router(Arc::clone(&state));
    let address = listener.local_addr()?;
    println!("listening on {address}");
    tracing::info!(%address, "tally serve ready");
    connections::serve(
        listener,
        router,
        connection_limits,
        Arc::clone(&state.connections),
        shutdown,
    )
    .await;
    tracing::info!("stopped taking requests; committing checkpoints");
    let _ = stop_tx.send(true);
    for delivery in deliveries {
        let _ = delivery.await;
    }
    let summaries = tokio::task::spawn_blocking(move || pipeline_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
    let offsets: Vec<u64> = summaries.iter().map(|s| s.next_offset).collect();
    tracing::info!(?offsets, "pipeline stopped at a checkpoint");
    if let Some(publisher) = publisher {
        // Publish the last checkpoints' results before giving the partitions up.
        let (_, stopped) = watch::channel(true);
        publisher.run(stopped).await;
    }
    for task in background {
        let _ = task.await;
    }
    node.withdraw().await;
    Ok(())
}

/// Reads the results the other nodes published so far, before serving — from where the saved
/// cache left off, if it fits the topic, or from the latest snapshots if they are later.
/// Returns where to go on.
async fn catch_up_results(
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
        &node.owns,
        cache,
        clock.now_ms(),
    )
    .await
    .context("cannot read the results topic")?;
    let next = tally_pipeline::cluster::catch_up_results(
        link.results.as_ref(),
        read_model,
        &node.owns,
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

fn router(state: Arc<AppState>) -> Router {
    let query = Arc::new(QueryContext {
        read_model: Arc::clone(&state.read_model),
        campaigns: Arc::clone(&state.campaigns),
        log: Arc::clone(&state.log),
        donation_indexes: Arc::clone(&state.donation_indexes),
        remote: state.remote.clone(),
        clock: Arc::clone(&state.clock),
        last_log_ends: Default::default(),
        query_slots: tally_query::slots::QuerySlots::new(
            tally_query::slots::QueryLimits::for_this_machine(),
        ),
    });
    let requests = Arc::clone(&state.requests);
    // Queries read no body: the whole request is admitted work. Ingest takes its permit itself,
    // once the body is read and signed; admin routes check the token first and are few.
    let admitted_queries = tally_query::routes::routes(query).layer(
        tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(Arc::clone(
            &state.ingest.admitted,
        )),
    );
    Router::new()
        .merge(tally_ingest::routes::routes(Arc::clone(&state.ingest)))
        .merge(admitted_queries)
        .merge(admin::routes(Arc::clone(&state)))
        .route("/healthz", get(metrics::healthz))
        .route(
            "/v1/cluster",
            get(node::cluster_view).with_state(Arc::clone(&state)),
        )
        .route(
            "/metrics",
            get(metrics::metrics).with_state(Arc::clone(&state)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_target::refuse_long_uri))
        .layer(axum::middleware::from_fn_with_state(
            requests,
            metrics::count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

async fn method_not_allowed() -> tally_api::ApiError {
    tally_api::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn not_found() -> tally_api::ApiError {
    tally_api::ApiError::not_found("not_found", "no such route")
}
