//! The WAL on a Kafka-protocol broker (`rdkafka` with its bundled
//! librdkafka): one topic, one partition per channel, an idempotent producer
//! with `acks=all`, and an append acknowledged only after the broker
//! acknowledged every message of it.
//!
//! One append becomes one *envelope* (its records, length-prefixed), cut
//! into chunks below the broker's message size limit; each chunk is one
//! Kafka message naming its append and its place in it. A reader reassembles
//! envelopes and drops any that is incomplete (a failed append), so an
//! append is all-or-nothing in the log as it is in [`LocalWal`].
//!
//! LSNs are `offset of the envelope's first message << 20 | record index`:
//! increasing per channel (not dense, unlike [`LocalWal`]), and a
//! checkpoint (`last LSN + 1`) points back into the envelope it ended, whose
//! records below it are skipped on replay.
//!
//! [`LocalWal`]: crate::LocalWal

use std::collections::{BTreeMap, HashMap, HashSet};

use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::{Lsn, Wal, WalError};

/// Bits of an LSN that number the records of one envelope.
const RECORD_BITS: u32 = 20;
/// Most records one append may hold.
const MAX_RECORDS_PER_APPEND: usize = 1 << RECORD_BITS;
/// Payload bytes per Kafka message: below the 1 MB default message size
/// limit of brokers and of librdkafka, with room for the header.
const CHUNK_BYTES: usize = 900 * 1024;
const CHUNK_MAGIC: &[u8; 4] = b"QWC1";
/// magic, append id (u64), part (u32), parts (u32).
const CHUNK_HEADER: usize = 4 + 8 + 4 + 4;

/// `[storage.wal] kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaWalConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The WAL topic; Quiver creates it with one partition per shard.
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How long an append may wait for the broker before it fails
    /// (librdkafka's `message.timeout.ms`).
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// Remove sealed records with DeleteRecords. Turn off for brokers that
    /// lack it (tansu 0.6's SQLite storage panics on it); the topic then
    /// grows until its retention removes records.
    #[serde(default = "default_true")]
    pub delete_sealed_records: bool,
    /// Extra librdkafka client properties (security.protocol, sasl.*, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_topic() -> String {
    "quiver-wal".into()
}

fn default_replication() -> i32 {
    1
}

fn default_true() -> bool {
    true
}

fn default_delivery_timeout_ms() -> u64 {
    10_000
}

impl KafkaWalConfig {
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms.max(1))
    }

    fn producer(&self) -> Result<FutureProducer, WalError> {
        self.client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Appends of a channel are serialized by its writer: waiting to
            // batch would only add latency.
            .set("linger.ms", "0")
            .set("message.timeout.ms", self.timeout().as_millis().to_string())
            .create()
            .map_err(broker("creating the Kafka producer"))
    }
}

/// The WAL of a cluster: channels are partitions of one Kafka topic.
pub struct KafkaWal {
    config: KafkaWalConfig,
    channels: u32,
    /// The producer and its generation; replaced after a failed append.
    producer: RwLock<(u64, FutureProducer)>,
    admin: AdminClient<DefaultClientContext>,
    /// Append ids: unique across processes (start from the clock) so a
    /// reader never glues chunks of two appends together.
    next_append: AtomicU64,
    /// Cleared once the broker refuses DeleteRecords (then records are kept
    /// until the topic's retention removes them).
    truncate_supported: AtomicBool,
}

impl std::fmt::Debug for KafkaWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaWal")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.topic)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

fn broker(context: impl Into<String>) -> impl FnOnce(KafkaError) -> WalError {
    let context = context.into();
    move |source| WalError::Broker { context, source }
}

fn lsn(offset: i64, index: usize) -> Lsn {
    ((offset.max(0) as u64) << RECORD_BITS) | index as u64
}

fn offset_of(lsn: Lsn) -> i64 {
    (lsn >> RECORD_BITS) as i64
}

/// An append's records as one byte string: count, then length-prefixed records.
fn encode_envelope(records: &[Bytes]) -> Vec<u8> {
    let len = 4 + records.iter().map(|r| 4 + r.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for record in records {
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

fn decode_envelope(bytes: &[u8]) -> Option<Vec<Bytes>> {
    let read_u32 = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = read_u32(0)?;
    let mut records = Vec::with_capacity(count.min(MAX_RECORDS_PER_APPEND));
    let mut pos = 4;
    for _ in 0..count {
        let len = read_u32(pos)?;
        pos += 4;
        records.push(Bytes::copy_from_slice(bytes.get(pos..pos + len)?));
        pos += len;
    }
    (pos == bytes.len()).then_some(records)
}

fn encode_chunks(append_id: u64, envelope: &[u8]) -> Vec<Vec<u8>> {
    let parts = envelope.len().div_ceil(CHUNK_BYTES).max(1);
    (0..parts)
        .map(|part| {
            let body = &envelope[(part * CHUNK_BYTES).min(envelope.len())
                ..((part + 1) * CHUNK_BYTES).min(envelope.len())];
            let mut chunk = Vec::with_capacity(CHUNK_HEADER + body.len());
            chunk.extend_from_slice(CHUNK_MAGIC);
            chunk.extend_from_slice(&append_id.to_le_bytes());
            chunk.extend_from_slice(&(part as u32).to_le_bytes());
            chunk.extend_from_slice(&(parts as u32).to_le_bytes());
            chunk.extend_from_slice(body);
            chunk
        })
        .collect()
}

struct Chunk<'a> {
    append_id: u64,
    part: u32,
    parts: u32,
    body: &'a [u8],
}

fn decode_chunk(bytes: &[u8]) -> Option<Chunk<'_>> {
    if bytes.len() < CHUNK_HEADER || &bytes[..4] != CHUNK_MAGIC {
        return None;
    }
    Some(Chunk {
        append_id: u64::from_le_bytes(bytes[4..12].try_into().ok()?),
        part: u32::from_le_bytes(bytes[12..16].try_into().ok()?),
        parts: u32::from_le_bytes(bytes[16..20].try_into().ok()?),
        body: &bytes[CHUNK_HEADER..],
    })
}

/// Rebuilds envelopes from a partition's messages; chunks of an append
/// that never completed are left behind. Assemblies are keyed by append id,
/// so a late chunk of a failed append cannot disturb another append.
#[derive(Default)]
struct Reassembler {
    pending: HashMap<u64, Assembly>,
    /// Appends already returned: a broker without idempotence may store a
    /// retried chunk twice, and an append must not be replayed twice.
    completed: HashSet<u64>,
}

struct Assembly {
    parts: u32,
    first_offset: Option<i64>,
    bodies: BTreeMap<u32, Vec<u8>>,
}

impl Reassembler {
    /// Feeds one message; returns a completed envelope and the offset of
    /// its first chunk.
    fn push(&mut self, offset: i64, payload: &[u8]) -> Option<(i64, Vec<u8>)> {
        let chunk = decode_chunk(payload)?;
        if chunk.part >= chunk.parts || self.completed.contains(&chunk.append_id) {
            return None;
        }
        let assembly = self.pending.entry(chunk.append_id).or_insert(Assembly {
            parts: chunk.parts,
            first_offset: None,
            bodies: BTreeMap::new(),
        });
        if assembly.parts != chunk.parts {
            return None;
        }
        if chunk.part == 0 {
            assembly.first_offset = Some(offset);
        }
        assembly.bodies.insert(chunk.part, chunk.body.to_vec());
        if assembly.bodies.len() < assembly.parts as usize {
            return None;
        }
        let done = self.pending.remove(&chunk.append_id)?;
        self.completed.insert(chunk.append_id);
        let first = done.first_offset?;
        Some((first, done.bodies.into_values().flatten().collect()))
    }
}

impl KafkaWal {
    /// Connects, creates the topic with one partition per channel if it
    /// does not exist (brokers may not auto-create topics) and checks that
    /// it has enough partitions.
    pub async fn open(config: KafkaWalConfig, channels: u32) -> Result<Self, WalError> {
        let timeout = config.timeout();
        let producer = config.producer()?;
        let admin: AdminClient<DefaultClientContext> = config
            .client_config()
            .create()
            .map_err(broker("creating the Kafka admin client"))?;
        let topic = NewTopic::new(
            &config.topic,
            channels as i32,
            TopicReplication::Fixed(config.replication_factor),
        )
        // The WAL must never lose records to retention before they are
        // sealed; Quiver deletes what it checkpointed.
        .set("retention.ms", "-1");
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(timeout)),
            )
            .await
            .map_err(broker(format!("creating topic {}", config.topic)))?;
        for result in results {
            match result {
                Ok(_) => {
                    tracing::info!(topic = %config.topic, partitions = channels, "created WAL topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(WalError::Broker {
                        context: format!("creating topic {name}"),
                        source: KafkaError::AdminOp(code),
                    });
                }
            }
        }
        let wal = KafkaWal {
            channels,
            producer: RwLock::new((0, producer)),
            admin,
            next_append: AtomicU64::new(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1),
            ),
            truncate_supported: AtomicBool::new(config.delete_sealed_records),
            config,
        };
        let partitions = wal.partition_count().await?;
        if partitions < channels as usize {
            return Err(WalError::InvalidOptions(format!(
                "WAL topic {} has {partitions} partitions but {channels} shards need one each",
                wal.config.topic
            )));
        }
        Ok(wal)
    }

    async fn partition_count(&self) -> Result<usize, WalError> {
        let producer = self.producer.read().1.clone();
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout();
        blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(broker(format!("reading metadata of topic {topic}")))?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().len())
                .unwrap_or(0))
        })
        .await
    }

    fn check_channel(&self, channel: u32) -> Result<i32, WalError> {
        if channel < self.channels {
            Ok(channel as i32)
        } else {
            Err(WalError::UnknownChannel(channel))
        }
    }

    async fn watermarks(&self, partition: i32) -> Result<(i64, i64), WalError> {
        let producer = self.producer.read().1.clone();
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout();
        blocking(move || {
            producer
                .client()
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(broker(format!("reading offsets of {topic}/{partition}")))
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WalError> + Send + 'static,
) -> Result<T, WalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WalError::io("waiting for a Kafka client call", std::io::Error::other(e)))?
}

#[async_trait]
impl Wal for KafkaWal {
    fn channel_count(&self) -> u32 {
        self.channels
    }

    async fn append(&self, channel: u32, records: Vec<Bytes>) -> Result<Lsn, WalError> {
        let partition = self.check_channel(channel)?;
        if records.is_empty() {
            return self.next_lsn(channel).await;
        }
        if records.len() > MAX_RECORDS_PER_APPEND {
            return Err(WalError::InvalidOptions(format!(
                "one WAL append may hold at most {MAX_RECORDS_PER_APPEND} records, not {}",
                records.len()
            )));
        }
        let append_id = self.next_append.fetch_add(1, Ordering::Relaxed);
        let chunks = encode_chunks(append_id, &encode_envelope(&records));
        let (generation, producer) = self.producer.read().clone();
        let result = self
            .send_chunks(&producer, channel, partition, &chunks)
            .await;
        if result.is_err() {
            self.replace_producer(generation, producer);
        }
        result
    }

    async fn read_from(&self, channel: u32, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, WalError> {
        let partition = self.check_channel(channel)?;
        let (low, high) = self.watermarks(partition).await?;
        let start = offset_of(from);
        // Records the checkpoint still needs are gone (retention, or the
        // topic was recreated): replaying around the hole would silently
        // drop acknowledged writes.
        if start < low || start > high {
            return Err(WalError::Corrupt {
                path: format!("{}/{partition}", self.config.topic).into(),
                offset: start as u64,
                reason: format!(
                    "replay must start at offset {start} but the partition holds offsets {low}..{high}"
                ),
            });
        }
        if start == high {
            return Ok(Vec::new());
        }
        let consumer: BaseConsumer = self
            .config
            .client_config()
            .set("group.id", "quiver-wal-replay")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "error")
            .create()
            .map_err(broker("creating a Kafka consumer"))?;
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout();
        blocking(move || {
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, partition, Offset::Offset(start))
                .map_err(broker("assigning a WAL partition"))?;
            consumer
                .assign(&assignment)
                .map_err(broker("assigning a WAL partition"))?;
            let mut out = Vec::new();
            let mut envelopes = Reassembler::default();
            let mut next = start;
            let mut idle_since = std::time::Instant::now();
            while next < high {
                let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                    if idle_since.elapsed() > timeout {
                        return Err(WalError::Broker {
                            context: format!(
                                "replaying {topic}/{partition}: no message at offset {next} \
                                 (high watermark {high})"
                            ),
                            source: KafkaError::MessageConsumption(
                                RDKafkaErrorCode::RequestTimedOut,
                            ),
                        });
                    }
                    continue;
                };
                let message = message.map_err(broker(format!("replaying {topic}/{partition}")))?;
                idle_since = std::time::Instant::now();
                next = message.offset() + 1;
                let Some((first, envelope)) =
                    envelopes.push(message.offset(), message.payload().unwrap_or_default())
                else {
                    continue;
                };
                let records = decode_envelope(&envelope).ok_or_else(|| WalError::Corrupt {
                    path: format!("{topic}/{partition}").into(),
                    offset: first.max(0) as u64,
                    reason: "malformed WAL envelope".into(),
                })?;
                for (i, record) in records.into_iter().enumerate() {
                    let at = lsn(first, i);
                    if at >= from {
                        out.push((at, record));
                    }
                }
            }
            // Appends complete in log order unless a failed one interleaved.
            out.sort_by_key(|(at, _)| *at);
            Ok(out)
        })
        .await
    }

    async fn truncate(&self, channel: u32, upto: Lsn) -> Result<(), WalError> {
        let partition = self.check_channel(channel)?;
        if !self.truncate_supported.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Whole envelopes before the one `upto` points into.
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &self.config.topic,
                partition,
                Offset::Offset(offset_of(upto)),
            )
            .map_err(broker("preparing DeleteRecords"))?;
        let options = AdminOptions::new().operation_timeout(Some(self.config.timeout()));
        let error = match self.admin.delete_records(&offsets, &options).await {
            Ok(result) => match result.elements().iter().find_map(|e| e.error().err()) {
                None => return Ok(()),
                Some(e) => e,
            },
            Err(e) => e,
        };
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::InvalidRequest)
        ) {
            self.truncate_unsupported(&error);
            return Ok(());
        }
        // Transient (broker down, leader moving): the next seal retries.
        Err(WalError::Broker {
            context: format!("removing sealed records of channel {channel}"),
            source: error,
        })
    }

    async fn next_lsn(&self, channel: u32) -> Result<Lsn, WalError> {
        let partition = self.check_channel(channel)?;
        let producer = self.producer.read().1.clone();
        let timeout = self.config.timeout();
        // Every queued append is acknowledged before the end is read.
        blocking(move || {
            producer
                .flush(timeout)
                .map_err(broker("flushing the WAL producer"))
        })
        .await?;
        let (_, high) = self.watermarks(partition).await?;
        Ok(lsn(high, 0))
    }
}

impl KafkaWal {
    /// Sends an append's chunks and waits until the broker acknowledged
    /// every one; returns the append's first LSN.
    async fn send_chunks(
        &self,
        producer: &FutureProducer,
        channel: u32,
        partition: i32,
        chunks: &[Vec<u8>],
    ) -> Result<Lsn, WalError> {
        // Enqueue every chunk before awaiting any: the idempotent producer
        // keeps them in order on the partition.
        let mut deliveries = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let record = FutureRecord::<(), [u8]>::to(&self.config.topic)
                .partition(partition)
                .payload(chunk.as_slice());
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .map_err(broker(format!(
                    "queueing a WAL append on channel {channel}"
                )))?;
            deliveries.push(delivery);
        }
        let mut first_offset = i64::MAX;
        for delivery in deliveries {
            let delivered = delivery
                .await
                .map_err(|_| WalError::Closed)?
                .map_err(|(e, _)| e)
                .map_err(broker(format!(
                    "writing to the WAL of channel {channel} (broker {})",
                    self.config.brokers
                )))?;
            if delivered.offset < 0 {
                return Err(WalError::Broker {
                    context: format!("writing to the WAL of channel {channel}: no offset returned"),
                    source: KafkaError::MessageProduction(RDKafkaErrorCode::InvalidMessage),
                });
            }
            // The lowest offset, so a replay from this LSN sees every chunk.
            first_offset = first_offset.min(delivered.offset);
        }
        Ok(lsn(first_offset, 0))
    }

    /// After a failed append the producer starts over with a new producer id:
    /// its idempotence state (sequence numbers, epoch) no longer matches a
    /// broker that restarted or lost requests, and some brokers (tansu 0.6)
    /// fail every later request from it.
    fn replace_producer(&self, failed_generation: u64, failed: FutureProducer) {
        // Dropping the last handle of a client flushes and joins its
        // threads: do it off the async workers.
        let mut current = self.producer.write();
        if current.0 != failed_generation {
            drop(current);
            tokio::task::spawn_blocking(move || drop(failed));
            return; // another append already replaced it
        }
        match self.config.producer() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut current.1, fresh);
                current.0 += 1;
                drop(current);
                tokio::task::spawn_blocking(move || drop((old, failed)));
                tracing::warn!(topic = %self.config.topic, "WAL append failed; the Kafka producer was recreated");
            }
            Err(e) => tracing::error!(error = %e, "could not recreate the Kafka producer"),
        }
    }

    fn truncate_unsupported(&self, e: &KafkaError) {
        // Records are kept; replay starts at the checkpoint regardless.
        if self.truncate_supported.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                topic = %self.config.topic,
                error = %e,
                "the broker refused DeleteRecords; sealed WAL records stay until the topic's retention removes them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_through_chunks() {
        let records: Vec<Bytes> = vec![
            Bytes::from(vec![1u8; 10]),
            Bytes::new(),
            Bytes::from(vec![7u8; 2 * CHUNK_BYTES + 5]),
        ];
        let envelope = encode_envelope(&records);
        let chunks = encode_chunks(42, &envelope);
        assert_eq!(chunks.len(), 3);
        let mut reassembler = Reassembler::default();
        assert!(reassembler.push(10, &chunks[0]).is_none());
        assert!(reassembler.push(11, &chunks[1]).is_none());
        let (first, body) = reassembler.push(12, &chunks[2]).expect("complete");
        assert_eq!(first, 10);
        assert_eq!(decode_envelope(&body).expect("decodes"), records);
    }

    #[test]
    fn an_incomplete_append_is_dropped() {
        let failed = encode_chunks(1, &vec![0u8; 2 * CHUNK_BYTES + 1]);
        let ok = encode_chunks(2, &encode_envelope(&[Bytes::from_static(b"x")]));
        let mut reassembler = Reassembler::default();
        assert!(reassembler.push(0, &failed[0]).is_none());
        // The next append starts before the failed one finished.
        let (first, body) = reassembler.push(1, &ok[0]).expect("complete");
        assert_eq!(first, 1);
        assert_eq!(decode_envelope(&body).expect("decodes").len(), 1);
        // A broker that stored a retried chunk twice: replayed once.
        assert!(reassembler.push(5, &ok[0]).is_none());
        // Its missing tail arriving late, amid another append, is harmless.
        let big = encode_chunks(3, &encode_envelope(&[Bytes::from(vec![9u8; CHUNK_BYTES])]));
        assert!(reassembler.push(2, &big[0]).is_none());
        assert!(reassembler.push(3, &failed[2]).is_none());
        let (first, body) = reassembler.push(4, &big[1]).expect("complete");
        assert_eq!(first, 2);
        assert_eq!(
            decode_envelope(&body).expect("decodes")[0].len(),
            CHUNK_BYTES
        );
    }

    #[test]
    fn lsns_order_envelopes_then_records() {
        assert!(lsn(5, 3) < lsn(6, 0));
        assert_eq!(offset_of(lsn(5, 3) + 1), 5);
        assert_eq!(offset_of(lsn(7, 0)), 7);
    }
}
