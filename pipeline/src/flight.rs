//! Arrow Flight both ways: `floe serve-flight` serves snapshots as Flight
//! streams, and a table source `flight://host:port/<ticket>` reads any
//! Flight server's `DoGet`.
//!
//! Tickets are `table@run-id` (or `table@latest`); a flight's descriptor is
//! the path `[ticket]`. Only complete snapshots that match their manifest
//! are listed or served.

use std::net::SocketAddr;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightClient, FlightData, FlightDescriptor,
    FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, PollInfo, PutResult,
    SchemaAsIpc, SchemaResult, Ticket,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::snapshot::{self, Chain, Location, SnapshotError};

/// A Flight source or server failure, naming the URL or ticket.
#[derive(Debug, thiserror::Error)]
pub enum FlightSourceError {
    #[error("{url}: {message}")]
    Url { url: String, message: String },
    #[error("{url}: {message}")]
    Flight { url: String, message: String },
}

/// `flight://host:port/<ticket>` → (`http://host:port`, ticket).
pub fn parse_url(url: &str) -> Result<(String, String), FlightSourceError> {
    let bad = |message: &str| FlightSourceError::Url {
        url: url.to_string(),
        message: message.to_string(),
    };
    let rest = url
        .strip_prefix("flight://")
        .ok_or_else(|| bad("a Flight source is flight://host:port/<ticket>"))?;
    let (authority, ticket) = rest
        .split_once('/')
        .ok_or_else(|| bad("no ticket after host:port (flight://host:port/<ticket>)"))?;
    if authority.is_empty() || ticket.is_empty() {
        return Err(bad("a Flight source is flight://host:port/<ticket>"));
    }
    Ok((format!("http://{authority}"), ticket.to_string()))
}

/// `DoGet` of the URL's ticket: the stream's schema (it arrives first) and
/// its batches. A server silent for `read_timeout` (connecting, answering,
/// or between two messages) fails the read: a stalled server would
/// otherwise hold the table's lock, and so every later run, forever.
pub async fn read(
    url: &str,
    read_timeout: Duration,
) -> Result<
    (
        SchemaRef,
        BoxStream<'static, Result<RecordBatch, FlightSourceError>>,
    ),
    FlightSourceError,
> {
    let (endpoint, ticket) = parse_url(url)?;
    let failed = |message: String| FlightSourceError::Flight {
        url: url.to_string(),
        message,
    };
    let silent = |what: &str| {
        failed(format!(
            "{what}: the server sent nothing for {read_timeout:?} ([flight] read_timeout)"
        ))
    };
    let endpoint = tonic::transport::Channel::from_shared(endpoint)
        .map_err(|e| failed(format!("bad address: {e}")))?
        .connect_timeout(read_timeout);
    // A server that is starting (or restarting) refuses connections for a
    // moment: retry a few times with the shared backoff.
    let mut attempt = 0;
    let channel = loop {
        attempt += 1;
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if attempt < 4 => {
                tracing::debug!(url, attempt, "Flight connect failed: {e}");
                tokio::time::sleep(crate::retry::backoff(
                    attempt,
                    std::time::Duration::from_millis(200),
                    std::time::Duration::from_secs(2),
                ))
                .await;
            }
            Err(e) => return Err(failed(format!("cannot connect: {e}"))),
        }
    };
    let mut client = FlightClient::new(channel);
    // The rows the server says the stream has, when it says (a server
    // without GetFlightInfo, or with total_records -1, is taken as it comes).
    let info = client.get_flight_info(FlightDescriptor::new_path(vec![ticket.clone()]));
    let announced = match tokio::time::timeout(read_timeout, info)
        .await
        .map_err(|_| silent("GetFlightInfo"))?
    {
        Ok(info) => u64::try_from(info.total_records).ok(),
        Err(e) => {
            tracing::debug!(
                url,
                "no FlightInfo, so no row count to hold the stream to: {e}"
            );
            None
        }
    };
    let mut stream = tokio::time::timeout(read_timeout, client.do_get(Ticket::new(ticket)))
        .await
        .map_err(|_| silent("DoGet"))?
        .map_err(|e| failed(flight_message(e)))?;
    // The schema comes before the first batch (or the end).
    let first = tokio::time::timeout(read_timeout, stream.next())
        .await
        .map_err(|_| silent("waiting for the schema and the first batch"))?
        .transpose()
        .map_err(|e| failed(flight_message(e)))?;
    let schema = stream
        .schema()
        .cloned()
        .ok_or_else(|| failed("the stream ended without a schema".into()))?;
    let owned = url.to_string();
    let rest = stream.map_err(move |e| FlightSourceError::Flight {
        url: owned.clone(),
        message: flight_message(e),
    });
    let rest = failing_when_silent(rest.boxed(), read_timeout, url.to_string());
    let batches = futures::stream::iter(first.map(Ok)).chain(rest).boxed();
    let batches = match announced {
        Some(total) => {
            let owned = url.to_string();
            crate::source::complete::held_to(batches, total, move |read| {
                FlightSourceError::Flight {
                    url: owned,
                    message: format!(
                        "the stream ended after {read} rows, but its FlightInfo announces {total}"
                    ),
                }
            })
        }
        None => batches,
    };
    Ok((schema, batches))
}

/// `stream`, failing (and ending) when the next message takes longer than
/// `limit`. The clock runs only while the consumer waits, so a slow sink
/// (backpressure) never counts against the server.
fn failing_when_silent(
    stream: BoxStream<'static, Result<RecordBatch, FlightSourceError>>,
    limit: Duration,
    url: String,
) -> BoxStream<'static, Result<RecordBatch, FlightSourceError>> {
    futures::stream::unfold(Some((stream, url)), move |state| async move {
        let (mut stream, url) = state?;
        match tokio::time::timeout(limit, stream.next()).await {
            Ok(Some(item)) => Some((item, Some((stream, url)))),
            Ok(None) => None,
            Err(_) => {
                let e = FlightSourceError::Flight {
                    message: format!(
                        "the stream stalled: the server sent nothing for {limit:?} ([flight] read_timeout)"
                    ),
                    url,
                };
                Some((Err(e), None))
            }
        }
    })
    .boxed()
}

fn flight_message(e: FlightError) -> String {
    match e {
        FlightError::Tonic(status) => format!("{}: {}", status.code(), status.message()),
        e => e.to_string(),
    }
}

/// Binds first, so a caller learns the port (and a taken port fails at once).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// As [`serve`], on a listener already bound.
pub async fn serve_on(
    location: Location,
    listener: tokio::net::TcpListener,
    batch_size: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let service = SnapshotFlights {
        location,
        batch_size,
    };
    let incoming = tokio_stream_listener(listener);
    tonic::transport::Server::builder()
        .add_service(FlightServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("Flight server: {e}"))
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

struct SnapshotFlights {
    location: Location,
    batch_size: usize,
}

impl SnapshotFlights {
    /// `table@run-id` or `table@latest`, verified against its manifest; a
    /// change set is served as the state its run left (its chain rebuilt).
    async fn open(&self, ticket: &str) -> Result<Chain, Status> {
        let (table, run) = ticket.split_once('@').ok_or_else(|| {
            Status::invalid_argument(format!(
                "ticket {ticket:?}: expected table@run-id or table@latest"
            ))
        })?;
        let snapshot = self.location.resolve(table, run).await.map_err(status)?;
        let verified = snapshot::verify(&snapshot).await.map_err(status)?;
        Chain::ending_at(&self.location, verified)
            .await
            .map_err(status)
    }

    fn info(
        ticket: &str,
        schema: &arrow::datatypes::Schema,
        (rows, bytes): (u64, u64),
    ) -> Result<FlightInfo, Status> {
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))
            .map(|info| {
                info.with_descriptor(FlightDescriptor::new_path(vec![ticket.to_string()]))
                    .with_endpoint(
                        FlightEndpoint::new().with_ticket(Ticket::new(ticket.to_string())),
                    )
                    .with_total_records(rows as i64)
                    .with_total_bytes(bytes as i64)
            })
    }

    fn ticket_of(descriptor: &FlightDescriptor) -> Result<String, Status> {
        match descriptor.r#type() {
            DescriptorType::Path => descriptor
                .path
                .first()
                .cloned()
                .ok_or_else(|| Status::invalid_argument("empty descriptor path")),
            _ => String::from_utf8(descriptor.cmd.to_vec())
                .map_err(|_| Status::invalid_argument("the command is not a table@run-id ticket")),
        }
    }
}

fn status(e: SnapshotError) -> Status {
    match e {
        SnapshotError::NotFound { .. } | SnapshotError::Incomplete { .. } => {
            Status::not_found(e.to_string())
        }
        SnapshotError::Integrity { .. } | SnapshotError::Chain { .. } => {
            Status::data_loss(e.to_string())
        }
        e => Status::internal(e.to_string()),
    }
}

type Boxed<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for SnapshotFlights {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "no authentication: serve on a trusted network",
        ))
    }

    /// Every complete snapshot; `criteria.expression`, if given, keeps
    /// those whose ticket starts with it (e.g. `topology@`).
    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let prefix = String::from_utf8_lossy(&request.get_ref().expression).to_string();
        let mut infos = Vec::new();
        for s in self.location.list().await.map_err(status)? {
            let ticket = format!("{}@{}", s.table, s.run_id);
            if !s.is_complete() || !ticket.starts_with(&prefix) {
                continue;
            }
            // Listing reads manifests and the first part's footer (for the
            // exact schema, metadata included), not data: a damaged part
            // shows up on DoGet.
            if let Some(m) = &s.manifest {
                let schema = snapshot::first_part_schema(&s.snapshot, m)
                    .await
                    .map_err(status)?;
                infos.push(Ok(Self::info(&ticket, &schema, (m.rows, m.bytes))?));
            }
        }
        Ok(Response::new(futures::stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = Self::ticket_of(request.get_ref())?;
        let chain = self.open(&ticket).await?;
        Ok(Response::new(Self::info(
            &ticket,
            chain.schema(),
            (chain.rows(), chain.bytes()),
        )?))
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let ticket = Self::ticket_of(request.get_ref())?;
        let chain = self.open(&ticket).await?;
        let info = Self::info(&ticket, chain.schema(), (chain.rows(), chain.bytes()))?;
        Ok(Response::new(PollInfo::new().with_info(info)))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let ticket = Self::ticket_of(request.get_ref())?;
        let chain = self.open(&ticket).await?;
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        let result: SchemaResult = SchemaAsIpc::new(chain.schema(), &options)
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = String::from_utf8(request.get_ref().ticket.to_vec())
            .map_err(|_| Status::invalid_argument("the ticket is not UTF-8"))?;
        let chain = self.open(&ticket).await?;
        let batches = chain
            .read(self.batch_size)
            .map_err(|e| FlightError::ExternalError(Box::new(e)));
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(chain.schema().clone())
            .build(batches)
            .map_err(|e| match e {
                FlightError::Tonic(s) => *s,
                e => Status::internal(e.to_string()),
            })
            .boxed();
        tracing::info!(
            ticket,
            rows = chain.rows(),
            change_sets = chain.changes.len(),
            "serving a snapshot"
        );
        Ok(Response::new(stream))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("snapshots are read-only"))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("snapshots are read-only"))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("no actions"))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(futures::stream::empty().boxed()))
    }
}
