//! `tally serve`: one process that takes payment callbacks, runs the pipeline, serves totals and
//! statistics, and notifies donors.
//!
//! ```text
//! HTTP ─► ingest routes ─► log (durable) ─► pipeline threads ─► read model ─► query routes ─► HTTP
//!                                                   └──────────► notifications ─► webhook
//! ```
//! [`run`] takes the listener, the [`ServerConfig`], the clock and the shutdown signal from its
//! caller, so tests drive the same code as `main`. It starts in steps: open the logs
//! ([`logs`]), join the other nodes ([`node`]), open the state and the pipeline, build the
//! routes' state, start the [`background`] work, serve, and shut down. [`connections`] serves
//! the listener: the connection cap and the header-read and idle deadlines; request bodies are
//! read in bounded slots within a timeout (`tally_ingest::body`) before any work is admitted.

mod admin;
mod background;
mod config;
mod connection_watch;
mod connections;
mod ledger;
mod lingering_close;
mod logs;
mod metrics;
mod node;
mod notifications;
mod open_files;
mod ops;
mod remote;
mod request_target;
mod secrets;
mod supervisor;

pub use config::{ConfigError, PARTITIONS_MAX, ServerConfig};
pub use connections::bind;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use tally_api::signature::SigningSecret;
use tally_ingest::body::{BATCH_BODY_READS_MAX, BodyReadLimits, BodyReads};
use tally_ingest::rate_limit::RateLimiter;
use tally_ingest::routes::{IngestContext, IngestLimits};
use tally_pipeline::campaigns::CampaignRegistry;
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::Clock;
use tally_pipeline::cluster::ResultsPublisher;
use tally_pipeline::cluster::results::ResultsCache;
use tally_pipeline::log::Log;
use tally_pipeline::outbox::NotificationOutbox;
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{DonationIndexes, Pipeline, PipelineConfig};
use tally_query::routes::QueryContext;
use tokio::net::TcpListener;
use tokio::sync::watch;

use background::{Background, Processing};
use connection_watch::WatchLimits;
use connections::{CONNECTIONS_MAX_DEFAULT, ConnectionLimits, ConnectionMetrics, REFUSALS_MAX};
use node::Node;
use notifications::{Notifications, Webhook};

/// Requests admitted to work at once: donations once their body is read and signature checked,
/// and queries; more wait for a permit. Bounds the parsed requests and log work in flight under
/// overload; a body being read never holds one.
const ADMITTED_REQUESTS_MAX: usize = 4096;

/// What the admin, metrics and cluster routes reach; ingest and queries have their own context.
#[derive(Debug)]
pub struct AppState {
    pub log: Arc<dyn Log>,
    pub store: Arc<CheckpointStore>,
    pub campaigns: Arc<CampaignRegistry>,
    pub read_model: Arc<ReadModel>,
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

/// Runs the server on `listener` until `shutdown` resolves; then stops taking requests, lets the
/// in-flight ones finish, stops the pipeline and commits its checkpoints.
///
/// `clock` is the time that signatures, rate limits, `paid_at` checks, checkpoints and leases
/// are measured by: `SystemClock` in production, a `ManualClock` where a test controls time.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.check()?;
    let open_file_limit = open_files::raise_limit();
    let logs = logs::open_logs(&config).await?;
    let partition_count = logs.donations.partition_count();
    let address = listener.local_addr()?;
    let node = node::join(
        &config,
        address,
        partition_count,
        logs.shared.as_ref(),
        &clock,
    )
    .await?;
    let (opened, processing) = open_state(&config, logs, Arc::new(node), &clock).await?;
    let serving = build_state(&config, &opened, &processing, clock, open_file_limit)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = Background::spawn(
        &serving.state,
        processing,
        config.state_snapshot_interval,
        stop_rx,
    )?;
    serve(listener, &serving, shutdown).await?;
    tracing::info!("stopped taking requests; committing checkpoints");
    let _ = stop_tx.send(true);
    background.finish().await?;
    opened.node.withdraw().await;
    Ok(())
}

/// The logs, the node and the state over them, opened.
struct Opened {
    log: Arc<dyn Log>,
    campaigns: Arc<CampaignRegistry>,
    node: Arc<Node>,
    store: Arc<CheckpointStore>,
    read_model: Arc<ReadModel>,
}

/// Opens the checkpointed state and the pipeline over it, after reading the results the other
/// nodes published so far.
async fn open_state(
    config: &ServerConfig,
    logs: logs::Logs,
    node: Arc<Node>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<(Opened, Processing)> {
    let log = logs.donations;
    let partition_count = log.partition_count();
    let store = Arc::new(crate::data_dir::open_store(
        &config.data_dir,
        partition_count,
        config.compaction_floor_bytes,
    )?);
    let campaigns = Arc::new(logs.campaigns);
    let read_model = Arc::new(ReadModel::new(partition_count));
    let results_cache = ResultsCache::new(config.data_dir.join("results-cache"));
    let results_from =
        background::catch_up_results(&node, &read_model, &results_cache, clock.as_ref()).await?;
    let pipeline_config = PipelineConfig {
        checkpoint_interval: config.checkpoint_interval,
        checkpoint_records_max: config.checkpoint_records_max.max(1),
        window_horizons: config.window_horizons,
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::new(
        Arc::clone(&log),
        Arc::clone(&store),
        Arc::clone(&read_model),
        Arc::clone(clock),
        pipeline_config,
    )?;
    let publisher = node.cluster.as_ref().map(|link| {
        let mut publisher =
            ResultsPublisher::new(Arc::clone(&link.results), Arc::clone(&read_model));
        if link.membership.is_auto() {
            publisher = publisher.with_fence(Arc::clone(&link.membership) as _);
        }
        Arc::new(publisher)
    });
    if let Some(publisher) = &publisher {
        pipeline = pipeline.with_sink(Arc::clone(publisher) as _);
    }
    let opened = Opened {
        log,
        campaigns,
        node,
        store,
        read_model,
    };
    let processing = Processing {
        pipeline,
        publisher,
        results_cache,
        results_from,
    };
    Ok((opened, processing))
}

/// The routes' state and the listener's limits.
struct Serving {
    state: Arc<AppState>,
    connection_limits: ConnectionLimits,
}

/// Builds what the routes reach: the secrets, ingest, notifications and the admin state.
fn build_state(
    config: &ServerConfig,
    opened: &Opened,
    processing: &Processing,
    clock: Arc<dyn Clock>,
    open_file_limit: u64,
) -> anyhow::Result<Serving> {
    let donation_indexes = Arc::clone(processing.pipeline.donation_indexes());
    let (signing_secret, admin_token) = load_secrets(config)?;
    let ingest = Arc::new(ingest_context(
        config,
        opened,
        Arc::clone(&donation_indexes),
        signing_secret.clone(),
        Arc::clone(&clock),
    )?);
    let webhook = config.notify_webhook.clone().map(|url| Webhook {
        url,
        secret: signing_secret,
        client: reqwest::Client::new(),
    });
    let connection_limits = connection_limits(config, open_file_limit)?;
    let outbox = NotificationOutbox::open(
        Arc::clone(&opened.store),
        Arc::clone(&opened.log),
        donation_indexes,
        Arc::clone(&opened.read_model),
        opened.node.owned(),
    )?;
    let mut notifications = Notifications::new(
        outbox,
        Arc::clone(&opened.read_model),
        Arc::clone(&clock),
        webhook,
    );
    if let Some(membership) = opened.node.automatic() {
        notifications = notifications.with_fence(Arc::clone(membership) as _);
    }
    let notifications = Arc::new(notifications);
    let state = Arc::new(AppState {
        log: Arc::clone(&opened.log),
        store: Arc::clone(&opened.store),
        campaigns: Arc::clone(&opened.campaigns),
        read_model: Arc::clone(&opened.read_model),
        ingest,
        notifications,
        requests: Default::default(),
        connections: Default::default(),
        connections_max: connection_limits.connections_max,
        admin_token,
        clock,
        close_lock: tokio::sync::Mutex::new(()),
        pipeline: processing.pipeline.clone(),
        node: Arc::clone(&opened.node),
        data_dir: config.data_dir.clone(),
    });
    Ok(Serving {
        state,
        connection_limits,
    })
}

/// The signing secret and the admin token, given or read from (or generated into) the data
/// directory; says where those files are.
fn load_secrets(config: &ServerConfig) -> anyhow::Result<(SigningSecret, String)> {
    let data_dir = &config.data_dir;
    let signing_secret = secrets::signing_secret(data_dir, config.signing_secret.as_deref())?;
    let admin_token = secrets::admin_token(data_dir, config.admin_token.as_deref())?;
    if let Some(path) = &signing_secret.path {
        println!("signing secret: {}", path.display());
    }
    if let Some(path) = &admin_token.path {
        println!("admin token: {}", path.display());
    }
    Ok((signing_secret.value, admin_token.value))
}

/// What the ingest routes reach; on a shared log, with a way to the other nodes.
fn ingest_context(
    config: &ServerConfig,
    opened: &Opened,
    donation_indexes: Arc<DonationIndexes>,
    signing_secret: SigningSecret,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<IngestContext> {
    let remote: Option<Arc<dyn tally_api::remote::RemoteDonations>> =
        opened.node.cluster.as_ref().map(|_| {
            Arc::new(remote::ForwardToOwner {
                node: Arc::clone(&opened.node),
                client: reqwest::Client::new(),
            }) as _
        });
    let mut limits = IngestLimits::default();
    limits.donation.amount_cents_max = config.amount_cents_max;
    Ok(IngestContext {
        log: Arc::clone(&opened.log),
        campaigns: Arc::clone(&opened.campaigns),
        intake: Arc::new(tokio::sync::RwLock::new(())),
        donation_indexes,
        remote,
        signing_secret,
        limits,
        bodies: Arc::new(BodyReads::new(body_read_limits(config))),
        admitted: Arc::new(tokio::sync::Semaphore::new(ADMITTED_REQUESTS_MAX)),
        rate_limiter: RateLimiter::new(config.rate_limit, Arc::clone(&clock))
            .context("invalid rate limit")?,
        clock,
        metrics: Default::default(),
    })
}

fn body_read_limits(config: &ServerConfig) -> BodyReadLimits {
    BodyReadLimits {
        callback_reads_max: config.body_reads_max,
        batch_reads_max: BATCH_BODY_READS_MAX,
        read_timeout: config.body_read_timeout,
    }
}

/// The listener's limits, with the connection cap fitted under the open-file limit beside the
/// files open now.
fn connection_limits(
    config: &ServerConfig,
    open_file_limit: u64,
) -> anyhow::Result<ConnectionLimits> {
    let files = open_files::OpenFiles::now(open_file_limit);
    let budget = files.budget(
        config.connections_max,
        CONNECTIONS_MAX_DEFAULT,
        REFUSALS_MAX,
    )?;
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
        watch: WatchLimits {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        },
    })
}

/// Serves the routes on `listener` until `shutdown` resolves and the in-flight requests are
/// answered.
async fn serve(
    listener: TcpListener,
    serving: &Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = router(Arc::clone(&serving.state));
    let address = listener.local_addr()?;
    println!("listening on {address}");
    tracing::info!(%address, "tally serve ready");
    connections::serve(
        listener,
        router,
        serving.connection_limits,
        Arc::clone(&serving.state.connections),
        shutdown,
    )
    .await;
    Ok(())
}

/// The queries' context: the read model beside the handles ingest holds too.
fn query_context(state: &AppState) -> QueryContext {
    QueryContext {
        read_model: Arc::clone(&state.read_model),
        campaigns: Arc::clone(&state.ingest.campaigns),
        log: Arc::clone(&state.ingest.log),
        donation_indexes: Arc::clone(&state.ingest.donation_indexes),
        remote: state.ingest.remote.clone(),
        clock: Arc::clone(&state.ingest.clock),
        last_log_ends: Default::default(),
        query_slots: tally_query::slots::QuerySlots::new(
            tally_query::slots::QueryLimits::for_this_machine(),
        ),
    }
}

/// Every route, behind the request counter and the request-target limit.
fn router(state: Arc<AppState>) -> Router {
    let query = Arc::new(query_context(&state));
    let requests = Arc::clone(&state.requests);
    // Queries read no body: the whole request is admitted work. Ingest takes its permit itself,
    // once the body is read and signed; admin routes check the token first and are few.
    let admitted_queries = tally_query::routes::routes(Arc::clone(&query)).layer(
        tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(Arc::clone(
            &state.ingest.admitted,
        )),
    );
    let pages = tally_web::pages::routes(tally_web::pages::PagesContext {
        query,
        ops: Arc::new(ops::NodeOps(Arc::clone(&state))),
    });
    Router::new()
        .merge(tally_ingest::routes::routes(Arc::clone(&state.ingest)))
        .merge(tally_ingest::refunds::routes(Arc::clone(&state.ingest)))
        .merge(admitted_queries)
        .merge(pages)
        .merge(admin::routes(Arc::clone(&state)))
        .route("/healthz", get(metrics::healthz))
        .route(
            "/v1/cluster",
            get(node::cluster_view).with_state(Arc::clone(&state)),
        )
        .route("/v1/ops", get(ops::ops).with_state(Arc::clone(&state)))
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
