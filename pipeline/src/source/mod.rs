//! Where a table's rows come from: resolved once per run, opened once, and
//! closed exactly once however the load ends.
//!
//! [`TableSource::resolve`] picks the source (a snapshot being replayed,
//! `--parquet DIR`, or the table's configured parquet, Flight or Snowflake
//! source); [`TableSource::open`] gives its schema and rows; [`Opened::guard`]
//! ends what the source keeps open remotely (a Snowflake query and session).

pub mod complete;
pub mod parquet;
mod parquet_file;
mod prefetch;
pub mod snowflake;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionContext;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use schemas::config::{Config, SourceSpec, TableConfig};

use crate::flight::FlightSourceError;
use crate::postgres::runs::RunMode;
use crate::postgres::state::SourcePoint;
use crate::run::Cancel;
use crate::snapshot::{Chain, SnapshotSource};
use crate::PipelineError;
pub use parquet::{one_shot, ParquetOpenError};
use snowflake::{QueryTicket, SnowflakeError, SnowflakeSession};

/// Why a source could not be opened or read (shown after `source: `).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error(transparent)]
    Snowflake(#[from] SnowflakeError),
    #[error(transparent)]
    Flight(#[from] FlightSourceError),
    #[error(transparent)]
    Parquet(#[from] ParquetOpenError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error("--parquet needs the table's snowflake_table to name <DIR>/<SNOWFLAKE_TABLE>.parquet")]
    NoSnowflakeTable,
    #[error("no source configured")]
    NotConfigured,
}

/// Where one run of a table reads its rows, decided once, in this order: a
/// snapshot being replayed, `--parquet DIR`, the table's configured source.
#[derive(Debug, Clone)]
pub enum TableSource<'a> {
    /// A verified snapshot, with the change sets after it when the state
    /// replayed is an incremental run's (`floe replay`).
    Snapshot(&'a Chain),
    /// `--parquet DIR`: `<DIR>/<SNOWFLAKE_TABLE>.parquet`.
    ParquetDir {
        dir: PathBuf,
        snowflake_table: Option<String>,
    },
    Parquet {
        path: String,
    },
    Flight {
        url: String,
    },
    Snowflake {
        query: String,
        /// Whose change token the load records (see `TableConfig::changes_object`).
        changes_from: Option<String>,
    },
    NotConfigured,
}

/// What the run read, once its source is open: the one description that
/// `sync_runs`, the logs and the snapshot manifest take their words from.
#[derive(Debug, Clone, PartialEq)]
pub enum Described {
    Snapshot { url: String },
    Parquet { path: String },
    Flight { url: String },
    Snowflake(SnapshotSource),
}

/// A source's rows: DataFusion's own provider (parquet, read inside the
/// transform with projection pushed down), or a stream of batches.
pub enum SourceData {
    Provider(Arc<dyn TableProvider>),
    Stream(
        SchemaRef,
        BoxStream<'static, Result<RecordBatch, DataFusionError>>,
    ),
}

/// An opened source. Dropping `data` stops every background task reading
/// it (chunk downloads, snapshot part readers, a Flight stream).
pub struct Opened {
    pub data: SourceData,
    pub described: Described,
    /// Snowflake's time taken just before the read started, with the
    /// source's fingerprint and change token: the rows are current at least
    /// up to it, so an incremental run can continue from it. `None` for
    /// sources without Snowflake's clock.
    pub point: Option<SourcePoint>,
    /// Ends the source's remote work: call [`SourceGuard::close`] when the load ends.
    pub guard: SourceGuard,
}

/// What a source needs before it is read, made ahead: a Snowflake session
/// logged in (a login reads nothing and runs no warehouse), so its round
/// trips overlap the run's precheck. The other sources need nothing.
/// Dropped unused, the session is logged out.
pub struct Connected(Option<SnowflakeSession>);

impl Connected {
    /// Nothing made ahead: [`TableSource::open`] logs in itself.
    pub fn none() -> Connected {
        Connected(None)
    }

    /// Logs out a session that will not be used (the run stopped first).
    pub async fn close(mut self) {
        if let Some(session) = self.0.take() {
            session.logout().await;
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { session.logout().await });
            }
        }
    }
}

impl<'a> TableSource<'a> {
    pub fn resolve(
        t: &TableConfig,
        replay: Option<&'a Chain>,
        parquet_dir: Option<&std::path::Path>,
    ) -> TableSource<'a> {
        match (replay, parquet_dir, t.source()) {
            (Some(v), _, _) => TableSource::Snapshot(v),
            (None, Some(dir), _) => TableSource::ParquetDir {
                dir: dir.to_path_buf(),
                snowflake_table: t.snowflake_table.clone(),
            },
            (None, None, Some(SourceSpec::Parquet(path))) => TableSource::Parquet { path },
            (None, None, Some(SourceSpec::Flight(url))) => TableSource::Flight { url },
            (None, None, Some(SourceSpec::Snowflake { query, .. })) => TableSource::Snowflake {
                query,
                changes_from: t.changes_object().map(str::to_string),
            },
            (None, None, None) => TableSource::NotConfigured,
        }
    }

    /// The run's mode in `sync_runs`.
    pub fn mode(&self) -> RunMode {
        match self {
            TableSource::Snapshot(_) => RunMode::Replay,
            _ => RunMode::Full,
        }
    }

    /// `sync_runs.source` when the run starts, before anything is opened.
    pub fn describe(&self) -> String {
        match self {
            TableSource::Snapshot(chain) => format!("snapshot {}", chain.describe()),
            TableSource::ParquetDir { dir, .. } => format!("parquet {}", dir.display()),
            TableSource::Parquet { path } => format!("parquet {path}"),
            TableSource::Flight { url } => format!("flight {url}"),
            TableSource::Snowflake { query, .. } => format!("snowflake: {query}"),
            TableSource::NotConfigured => String::new(),
        }
    }

    /// Makes what the source needs before it is read ([`Connected`]): for
    /// Snowflake, the login; for the others, nothing.
    pub async fn connect(&self, config: &Config) -> Result<Connected, SourceError> {
        match self {
            TableSource::Snowflake { .. } => Ok(Connected(Some(
                SnowflakeSession::login(&config.snowflake).await?,
            ))),
            _ => Ok(Connected::none()),
        }
    }

    /// Opens the source (with what [`TableSource::connect`] made, or
    /// [`Connected::none`]). A Snowflake query runs here (until its first
    /// result); cancelling aborts it on the server and logs out.
    pub async fn open(
        &self,
        name: &str,
        config: &Config,
        ctx: &SessionContext,
        cancel: &Cancel,
        mut connected: Connected,
    ) -> Result<Opened, PipelineError> {
        let failed = |e: SourceError| PipelineError::Source {
            table: name.to_string(),
            source: e,
        };
        let unguarded = |data, described| Opened {
            data,
            described,
            point: None,
            guard: SourceGuard(None),
        };
        match self {
            TableSource::Snapshot(chain) => {
                let stream = chain
                    .read(config.load.batch_size)
                    .map_err(|e| DataFusionError::External(Box::new(e)))
                    .boxed();
                Ok(Opened {
                    // What the snapshots' own reads recorded: the replayed
                    // rows are current up to that point in Snowflake.
                    point: chain.point(),
                    ..unguarded(
                        SourceData::Stream(Arc::clone(chain.schema()), stream),
                        Described::Snapshot {
                            url: chain.describe(),
                        },
                    )
                })
            }
            TableSource::ParquetDir {
                dir,
                snowflake_table,
            } => {
                let sf = snowflake_table
                    .as_deref()
                    .ok_or_else(|| failed(SourceError::NoSnowflakeTable))?;
                let path = dir.join(format!("{sf}.parquet"));
                let path = path.to_string_lossy().to_string();
                let provider = parquet::parquet(ctx, &path)
                    .await
                    .map_err(|e| failed(e.into()))?;
                Ok(unguarded(
                    SourceData::Provider(provider),
                    Described::Parquet { path },
                ))
            }
            TableSource::Parquet { path } => {
                let provider = parquet::parquet(ctx, path)
                    .await
                    .map_err(|e| failed(e.into()))?;
                Ok(unguarded(
                    SourceData::Provider(provider),
                    Described::Parquet { path: path.clone() },
                ))
            }
            TableSource::Flight { url } => {
                let (schema, stream) = crate::flight::read(url, config.flight.read_timeout)
                    .await
                    .map_err(|e| failed(e.into()))?;
                let stream = stream
                    .map_err(|e| DataFusionError::External(Box::new(e)))
                    .boxed();
                Ok(unguarded(
                    SourceData::Stream(schema, stream),
                    Described::Flight { url: url.clone() },
                ))
            }
            TableSource::Snowflake {
                query,
                changes_from,
            } => {
                let session = match connected.0.take() {
                    Some(session) => session,
                    None => SnowflakeSession::login(&config.snowflake)
                        .await
                        .map_err(|e| failed(e.into()))?,
                };
                let session = Arc::new(session);
                let ticket = QueryTicket::new(query);
                // From here on the guard aborts and logs out whatever happens.
                let guard = SourceGuard(Some((Arc::clone(&session), ticket.clone())));
                // The watermark is taken before the query starts: changes
                // committed while it runs are read again by the next
                // incremental window, which is harmless.
                let read = async {
                    let clock = clock_and_token(&session, name, changes_from.as_deref()).await?;
                    let result = session.query_ticket(&ticket).await?;
                    Ok::<_, SnowflakeError>((clock, result))
                };
                let result = tokio::select! {
                    r = read => r.map_err(|e| failed(e.into())),
                    _ = cancel.cancelled() => Err(PipelineError::Cancelled { table: name.to_string() }),
                };
                let ((watermark_ns, change_token), result) = match result {
                    Ok(r) => r,
                    Err(e) => {
                        guard.close(true).await;
                        return Err(e);
                    }
                };
                tracing::info!(table = name, query_id = %result.query_id, rows = result.total, "Snowflake query done");
                let schema = Arc::clone(&result.schema);
                let point = SourcePoint {
                    watermark_ns,
                    fingerprint: crate::incremental::fingerprint(&schema),
                    change_token,
                };
                let described = Described::Snowflake(SnapshotSource::Snowflake {
                    query: query.clone(),
                    query_id: Some(result.query_id.clone()),
                    account: config.snowflake.account.clone(),
                    database: config.snowflake.database.clone(),
                    schema: config.snowflake.schema.clone(),
                    watermark_ns: Some(point.watermark_ns),
                    fingerprint: Some(point.fingerprint.clone()),
                    change_token: point.change_token.clone(),
                });
                let point = Some(point);
                let stream = session
                    .stream(result)
                    .map_err(|e| DataFusionError::External(Box::new(e)))
                    .boxed();
                Ok(Opened {
                    data: SourceData::Stream(schema, stream),
                    described,
                    point,
                    guard,
                })
            }
            TableSource::NotConfigured => Err(failed(SourceError::NotConfigured)),
        }
    }
}

/// Snowflake's clock and the change token of `changes_from`. A full
/// refresh does not fail for want of a token (a view not created yet, a
/// role without access to it): it records none, and the next incremental
/// run asks again.
async fn clock_and_token(
    session: &SnowflakeSession,
    name: &str,
    changes_from: Option<&str>,
) -> Result<(i64, Option<String>), SnowflakeError> {
    use crate::incremental::window::snowflake_clock;
    match snowflake_clock(session, changes_from).await {
        Err(SnowflakeError::Query { message, .. }) if changes_from.is_some() => {
            tracing::warn!(
                table = name,
                changes_from,
                "no change token recorded: {message}"
            );
            snowflake_clock(session, None).await
        }
        other => other,
    }
}

impl Described {
    /// `sync_runs.source` once the source is open; `None` keeps what the
    /// start recorded ([`TableSource::describe`]).
    pub fn record(&self) -> Option<String> {
        match self {
            Described::Snapshot { url } => Some(format!("snapshot {url}")),
            Described::Parquet { .. } => None,
            Described::Flight { url } => Some(format!("flight {url}")),
            Described::Snowflake(SnapshotSource::Snowflake {
                query_id: Some(id), ..
            }) => Some(format!("snowflake query {id}")),
            Described::Snowflake(_) => None,
        }
    }

    /// Where the snapshot manifest says the rows came from; `None` for a
    /// replay, which writes no snapshot of its own.
    pub fn manifest(&self) -> Option<SnapshotSource> {
        match self {
            Described::Snapshot { .. } => None,
            Described::Parquet { path } => Some(SnapshotSource::Parquet { path: path.clone() }),
            Described::Flight { url } => Some(SnapshotSource::Flight { url: url.clone() }),
            Described::Snowflake(s) => Some(s.clone()),
        }
    }
}

impl SourceData {
    /// The rows as a provider the transform reads once (a stream is
    /// wrapped; see [`one_shot`]), for table `table`'s errors.
    pub fn into_provider(self, table: &str) -> Result<Arc<dyn TableProvider>, PipelineError> {
        match self {
            SourceData::Provider(p) => Ok(p),
            SourceData::Stream(schema, stream) => {
                one_shot(schema, stream).map_err(|e| PipelineError::Source {
                    table: table.to_string(),
                    source: e.into(),
                })
            }
        }
    }

    /// The rows as one stream (a provider is executed through `ctx`).
    pub async fn into_stream(
        self,
        ctx: &SessionContext,
    ) -> Result<
        (
            SchemaRef,
            BoxStream<'static, Result<RecordBatch, DataFusionError>>,
        ),
        SourceError,
    > {
        match self {
            SourceData::Stream(schema, stream) => Ok((schema, stream)),
            SourceData::Provider(p) => {
                let schema = p.schema();
                let stream = ctx.read_table(p)?.execute_stream().await?;
                Ok((schema, stream.boxed()))
            }
        }
    }
}

/// What a source keeps open on a remote side (a Snowflake query and
/// session), ended exactly once: by [`SourceGuard::close`], or, if the
/// guard is dropped without it (a panic, a dropped future), by a task that
/// aborts the query and logs out.
pub struct SourceGuard(Option<(Arc<SnowflakeSession>, QueryTicket)>);

impl SourceGuard {
    /// A source with no remote work to end (a local file).
    pub fn none() -> SourceGuard {
        SourceGuard(None)
    }

    /// Logs out; after a failed load, first asks the server to stop the
    /// query (a failed sink or Ctrl-C).
    pub async fn close(mut self, failed: bool) {
        if let Some((session, ticket)) = self.0.take() {
            if failed {
                session.abort(&ticket).await;
            }
            session.logout().await;
        }
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Some((session, ticket)) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    session.abort(&ticket).await;
                    session.logout().await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(source: &str) -> TableConfig {
        let text = format!("[tables.t]\n{source}\ntarget = \"t_cache\"\n");
        let c = Config::parse(&text, Path::new("floe.toml")).expect("config");
        c.tables["t"].clone()
    }

    #[test]
    fn parquet_dir_wins_over_the_configured_source_and_is_recorded_as_the_directory() {
        let t = table("snowflake_table = \"TOPO\"");
        let s = TableSource::resolve(&t, None, Some(Path::new("/data")));
        assert!(matches!(
            &s,
            TableSource::ParquetDir { snowflake_table: Some(sf), .. } if sf == "TOPO"
        ));
        assert_eq!(s.describe(), "parquet /data");
        assert_eq!(s.mode(), RunMode::Full);
    }

    #[test]
    fn each_configured_source_is_described_as_sync_runs_records_it() {
        let s = table("snowflake_table = \"TOPO\"");
        assert_eq!(
            TableSource::resolve(&s, None, None).describe(),
            "snowflake: SELECT * FROM TOPO"
        );
        let p = table("parquet = \"x.parquet\"");
        assert_eq!(
            TableSource::resolve(&p, None, None).describe(),
            "parquet x.parquet"
        );
        let f = table("flight = \"flight://h:1/t@latest\"");
        assert_eq!(
            TableSource::resolve(&f, None, None).describe(),
            "flight flight://h:1/t@latest"
        );
    }

    #[test]
    fn once_open_the_record_names_the_query_and_the_manifest_keeps_the_source() {
        let sf = Described::Snowflake(SnapshotSource::Snowflake {
            query: "SELECT 1".into(),
            query_id: Some("01b2".into()),
            account: None,
            database: None,
            schema: None,
            watermark_ns: None,
            fingerprint: None,
            change_token: None,
        });
        assert_eq!(sf.record().as_deref(), Some("snowflake query 01b2"));
        assert!(matches!(
            sf.manifest(),
            Some(SnapshotSource::Snowflake { .. })
        ));
        // Parquet keeps what the start recorded (the file or the --parquet directory).
        let pq = Described::Parquet {
            path: "x.parquet".into(),
        };
        assert_eq!(pq.record(), None);
        assert_eq!(
            pq.manifest(),
            Some(SnapshotSource::Parquet {
                path: "x.parquet".into()
            })
        );
        // A replay writes no snapshot of its own.
        let snap = Described::Snapshot {
            url: "file:///s/t/r1".into(),
        };
        assert_eq!(snap.record().as_deref(), Some("snapshot file:///s/t/r1"));
        assert_eq!(snap.manifest(), None);
    }
}
