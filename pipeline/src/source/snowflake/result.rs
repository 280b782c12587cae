//! A query's result: the inline first rows, then the chunks downloaded in
//! parallel (`prefetch_threads` at a time) and handed out in order, with
//! what is downloaded but not yet consumed bounded in bytes. A chunk that
//! fails is downloaded again with backoff; dropping the stream stops the
//! downloads.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use base64::Engine;
use futures::stream::{self, BoxStream, StreamExt};
use schemas::snowflake_arrow::{decode_batch, decoded_schema, RowType};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::transport::{backoff, http_err, transient};
use super::{parameter, SnowflakeError, SnowflakeSession};
use crate::budget::{ByteBudget, Reserved};
use crate::task::AbortOnDrop;

/// Attempts per chunk before the query fails.
const CHUNK_ATTEMPTS: u32 = 6;

/// One downloadable chunk of a result.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRef {
    pub url: String,
    pub row_count: usize,
    pub uncompressed_size: usize,
}

/// A query's result, before its chunks are downloaded.
pub struct QueryResult {
    pub query_id: String,
    pub rowtype: Vec<RowType>,
    /// The schema every batch of the stream has.
    pub schema: SchemaRef,
    /// Rows in the whole result, as Snowflake counts them. The inline rows
    /// and the chunk list must add up to it, and the stream must deliver it.
    pub total: u64,
    first: Vec<RecordBatch>,
    chunks: Vec<ChunkRef>,
    headers: reqwest::header::HeaderMap,
}

impl QueryResult {
    /// Reads a query's answer: its columns, inline rows and chunk list.
    pub(super) fn from_answer(
        data: &Value,
        session_time_zone: &str,
    ) -> Result<QueryResult, SnowflakeError> {
        let field = |name: &str| -> Result<Value, SnowflakeError> {
            data.get(name)
                .cloned()
                .ok_or_else(|| SnowflakeError::Decode(format!("query answer has no `{name}`")))
        };
        if data["queryResultFormat"].as_str() != Some("arrow") {
            return Err(SnowflakeError::Decode(
                "the result is not in Arrow format".into(),
            ));
        }
        let time_zone = parameter(&data["parameters"], "TIMEZONE")
            .unwrap_or_else(|| session_time_zone.to_string());
        let rowtype: Vec<RowType> = serde_json::from_value(field("rowtype")?)
            .map_err(|e| SnowflakeError::Decode(format!("rowtype: {e}")))?;
        let schema = decoded_schema(&rowtype, &time_zone)
            .map_err(|e| SnowflakeError::Decode(e.to_string()))?;
        let chunks: Vec<ChunkRef> =
            serde_json::from_value(data.get("chunks").cloned().unwrap_or(json!([])))
                .map_err(|e| SnowflakeError::Decode(format!("chunks: {e}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(h) = data["chunkHeaders"].as_object() {
            for (k, v) in h {
                if let (Ok(name), Some(Ok(value))) = (
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                    v.as_str().map(reqwest::header::HeaderValue::from_str),
                ) {
                    headers.insert(name, value);
                }
            }
        } else if let Some(qrmk) = data["qrmk"].as_str() {
            headers.insert(
                "x-amz-server-side-encryption-customer-algorithm",
                reqwest::header::HeaderValue::from_static("AES256"),
            );
            if let Ok(v) = reqwest::header::HeaderValue::from_str(qrmk) {
                headers.insert("x-amz-server-side-encryption-customer-key", v);
            }
        }
        let inline = base64::engine::general_purpose::STANDARD
            .decode(
                data["rowsetBase64"]
                    .as_str()
                    .or(data["rowsetbase64"].as_str())
                    .unwrap_or(""),
            )
            .map_err(|e| SnowflakeError::Decode(format!("rowsetBase64: {e}")))?;
        let first = if inline.is_empty() {
            Vec::new()
        } else {
            decode_ipc(&inline, &rowtype, &schema)?
        };
        let query_id = data["queryId"].as_str().unwrap_or("").to_string();
        let total = data["total"]
            .as_u64()
            .ok_or_else(|| SnowflakeError::Decode("query answer has no `total`".into()))?;
        // A chunk missing from the list would otherwise go unnoticed: every
        // later check compares staging with what floe read.
        let listed = first.iter().map(|b| b.num_rows() as u64).sum::<u64>()
            + chunks.iter().map(|c| c.row_count as u64).sum::<u64>();
        if listed != total {
            return Err(SnowflakeError::Incomplete {
                query_id,
                total,
                found: format!(
                    "but its first rows and {} chunks hold {listed}",
                    chunks.len()
                ),
            });
        }
        Ok(QueryResult {
            query_id,
            total,
            rowtype,
            schema,
            first,
            chunks,
            headers,
        })
    }
}

impl SnowflakeSession {
    /// The result's batches in order: inline first, then downloaded chunks.
    pub fn stream(
        &self,
        result: QueryResult,
    ) -> BoxStream<'static, Result<RecordBatch, SnowflakeError>> {
        let QueryResult {
            query_id,
            total,
            rowtype,
            schema,
            first,
            chunks,
            headers,
        } = result;
        let (tx, rx) =
            mpsc::channel::<Result<(Vec<RecordBatch>, Reserved), SnowflakeError>>(self.prefetch);
        let budget = ByteBudget::new(self.budget);
        let (http, prefetch) = (self.http.clone(), self.prefetch);
        let rowtype = Arc::new(rowtype);
        let downloader = AbortOnDrop::spawn(async move {
            // Budget is reserved strictly in chunk order (so a later chunk can
            // never hold what an earlier one needs); each download then runs as
            // its own task, so inflating and decoding use every core.
            let mut downloads = stream::iter(chunks.into_iter().enumerate())
                .then(move |(i, chunk)| {
                    let (http, headers, rowtype, schema, budget) = (
                        http.clone(),
                        headers.clone(),
                        Arc::clone(&rowtype),
                        Arc::clone(&schema),
                        budget.clone(),
                    );
                    async move {
                        // Reserve the chunk's decoded size before fetching it.
                        let permit = budget.reserve(chunk.uncompressed_size).await;
                        AbortOnDrop::spawn(async move {
                            let permit = permit
                                .map_err(|_| SnowflakeError::Http("download cancelled".into()))?;
                            let batches =
                                download_chunk(&http, &headers, &chunk, i, &rowtype, &schema)
                                    .await?;
                            Ok((batches, permit))
                        })
                    }
                })
                .map(|task| async move {
                    task.join().await.unwrap_or_else(|e| {
                        Err(SnowflakeError::Http(format!(
                            "chunk download task failed: {e}"
                        )))
                    })
                })
                .buffered(prefetch)
                .boxed();
            while let Some(item) = downloads.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        let rest = stream::unfold((rx, downloader), |(mut rx, downloader)| async move {
            let item = rx.recv().await?;
            // The permit is released as the chunk is handed over.
            let item = item.map(|(batches, _permit)| stream::iter(batches.into_iter().map(Ok)));
            Some((item, (rx, downloader)))
        })
        .flat_map(|item| match item {
            Ok(batches) => batches.boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        });
        let all = stream::iter(first.into_iter().map(Ok)).chain(rest).boxed();
        crate::source::complete::held_to(all, total, move |read| SnowflakeError::Incomplete {
            query_id,
            total,
            found: format!("but floe read {read}"),
        })
    }
}

fn decode_ipc(
    bytes: &[u8],
    rowtype: &[RowType],
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, SnowflakeError> {
    let reader = StreamReader::try_new(bytes, None)
        .map_err(|e| SnowflakeError::Decode(format!("Arrow IPC: {e}")))?;
    reader
        .map(|b| {
            let chunk = b.map_err(|e| SnowflakeError::Decode(format!("Arrow IPC: {e}")))?;
            decode_batch(&chunk, rowtype, schema).map_err(|e| SnowflakeError::Decode(e.to_string()))
        })
        .collect()
}

/// Downloads, inflates (sniffing the gzip magic), decodes and checks one chunk, with retries.
async fn download_chunk(
    http: &reqwest::Client,
    headers: &reqwest::header::HeaderMap,
    chunk: &ChunkRef,
    index: usize,
    rowtype: &[RowType],
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, SnowflakeError> {
    let mut last = String::new();
    for attempt in 0..CHUNK_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let response = match http.get(&chunk.url).headers(headers.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                last = http_err(e).to_string();
                continue;
            }
        };
        let status = response.status();
        if transient(status) {
            last = format!("HTTP {status}");
            continue;
        }
        if !status.is_success() {
            return Err(SnowflakeError::Http(format!(
                "chunk {index}: HTTP {status}"
            )));
        }
        // Nothing a chunk sends may exceed what it announced (plus slack):
        // neither its body nor what the body inflates to.
        let limit = chunk_limit(chunk.uncompressed_size);
        let body = match read_body(response, limit).await {
            Ok(b) => {
                crate::counters::downloaded(b.len());
                b
            }
            Err(e) => {
                last = e;
                continue;
            }
        };
        let decoded = inflate(body, chunk.uncompressed_size, limit)
            .and_then(|ipc| decode_ipc(&ipc, rowtype, schema));
        match decoded {
            Ok(batches) => {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                if rows == chunk.row_count {
                    return Ok(batches);
                }
                last = format!("{rows} rows where {} were announced", chunk.row_count);
            }
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(
            chunk = index,
            attempt,
            "chunk download failed, retrying: {last}"
        );
    }
    Err(SnowflakeError::Http(format!(
        "chunk {index} failed after {CHUNK_ATTEMPTS} attempts: {last}"
    )))
}

/// The most bytes a chunk announced as `uncompressed` bytes may send or
/// inflate to: its announced size, an eighth more, and 64 KiB.
fn chunk_limit(uncompressed: usize) -> usize {
    uncompressed + uncompressed / 8 + (64 << 10)
}

/// Reads a chunk's body, at most `limit` bytes: a longer body is a failed
/// download, not an allocation as large as the server likes.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if let Some(length) = response.content_length() {
        if length > limit as u64 {
            return Err(format!(
                "a body of {length} bytes, more than its announced size allows ({limit})"
            ));
        }
    }
    let length = response.content_length().unwrap_or(0) as usize;
    let mut body = Vec::with_capacity(length.min(limit));
    while let Some(part) = response
        .chunk()
        .await
        .map_err(|e| http_err(e).to_string())?
    {
        if body.len() + part.len() > limit {
            return Err(format!(
                "a body longer than its announced size allows ({limit} bytes)"
            ));
        }
        body.extend_from_slice(&part);
    }
    Ok(body)
}

/// Inflates a gzip body (sniffing its magic), to at most `limit` bytes: a
/// chunk inflating past its announced size is refused, however small its body.
///
/// A chunk is one gzip member, whole in memory, of a size announced
/// beforehand: libdeflate's whole-buffer inflate is made for exactly that and
/// is faster than a streaming zlib (no window copies, no resumable state).
/// The buffer is sized as announced; if the member is larger (within the
/// limit) it is inflated again into one twice the size, or the size its
/// trailer gives. libdeflate checks the member's CRC and length, and reads
/// only the first member, as `GzDecoder` does.
fn inflate(body: Vec<u8>, announced: usize, limit: usize) -> Result<Vec<u8>, SnowflakeError> {
    if !body.starts_with(&[0x1f, 0x8b]) {
        return Ok(body);
    }
    // The trailer's ISIZE: the inflated length mod 2^32, a hint only.
    let trailer = body
        .len()
        .checked_sub(4)
        .and_then(|at| body.get(at..))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| u32::from_le_bytes(b) as usize);
    let mut z = libdeflater::Decompressor::new();
    let mut size = announced.clamp(1, limit.max(1));
    loop {
        let mut out = vec![0u8; size];
        match z.gzip_decompress(&body, &mut out) {
            Ok(n) if n <= limit => {
                out.truncate(n);
                return Ok(out);
            }
            Ok(_) => {}
            Err(libdeflater::DecompressionError::InsufficientSpace) if size <= limit => {
                // Larger than announced: room up to one past the limit.
                let hint = if trailer > size { trailer } else { 2 * size };
                size = hint.min(limit + 1);
                continue;
            }
            Err(libdeflater::DecompressionError::InsufficientSpace) => {}
            Err(libdeflater::DecompressionError::BadData) => {
                return Err(SnowflakeError::Decode(
                    "gzip: the body is not a whole gzip member (cut short, damaged, or its CRC or length does not match)".into(),
                ));
            }
        }
        return Err(SnowflakeError::Decode(format!(
            "the chunk inflates past its announced size ({limit} bytes at most)"
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Bytes that compress but not to nothing.
    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 9) as u8)
            .collect()
    }

    #[test]
    fn a_chunk_inflates_to_its_bytes_whatever_size_it_announced_within_the_limit() {
        let raw = data(1 << 20);
        let body = gzip(&raw);
        for announced in [raw.len(), raw.len() - 1000, 1, 0] {
            let limit = if announced < 1000 {
                raw.len()
            } else {
                chunk_limit(announced)
            };
            let out = inflate(body.clone(), announced, limit).unwrap();
            assert_eq!(out, raw, "announced {announced}");
        }
        // Not gzip: the body as it came.
        assert_eq!(inflate(raw.clone(), raw.len(), raw.len()).unwrap(), raw);
    }

    #[test]
    fn a_chunk_past_its_limit_cut_short_or_damaged_is_refused() {
        let raw = data(1 << 20);
        let body = gzip(&raw);
        let past = inflate(body.clone(), 1000, raw.len() - 1).unwrap_err();
        assert!(
            past.to_string().contains("past its announced size"),
            "{past}"
        );
        let cut = inflate(body[..body.len() / 2].to_vec(), raw.len(), raw.len()).unwrap_err();
        assert!(cut.to_string().contains("gzip"), "{cut}");
        // The trailer's CRC no longer matches.
        let mut bad = body.clone();
        let at = bad.len() - 6;
        bad[at] ^= 0xFF;
        let crc = inflate(bad, raw.len(), raw.len()).unwrap_err();
        assert!(crc.to_string().contains("gzip"), "{crc}");
    }
}
