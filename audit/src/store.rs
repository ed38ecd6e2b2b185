//! The durable log: one writer thread, group commit, signed checkpoints.
//!
//! Every append goes through one bounded queue to one writer thread, which is
//! the only place sequence numbers, chain hashes and the Merkle frontier are
//! computed — so the chain is a total order without locks. The writer takes
//! everything queued (up to `max_batch`), writes it as one sled batch, flushes
//! once, and only then resolves the tickets: one fsync pays for the whole
//! batch (group commit), and a resolved ticket means the record is on disk.
//!
//! Callers encode their record before queueing (with seq 0), so that encoding
//! runs on their threads; the writer patches the sequence number in place
//! (it sits at a fixed offset, see [`crate::codec`]).
//!
//! When a write or flush fails the writer fails every ticket of that batch,
//! marks the log unhealthy and refuses all later records: the chain state in
//! memory may be ahead of the disk, so continuing could write a broken chain.
//! Reopening the store re-checks the tail and continues from what is on disk.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{Checkpoint, SignedCheckpoint, SignerKey, SIGNED_CHECKPOINT_LEN};
use crate::codec::{self, SEQ_RANGE};
use crate::error::{AppendError, AuditError, TryAppendError};
use crate::merkle::{chain_hash, leaf_hash, Frontier, Hash, GENESIS};
use crate::reader::AuditReader;
use crate::record::{unix_ms, AuditRecord};

/// Where things live inside the sled store. Public so that tools and tests can
/// read (or, in the mutation tests, tamper with) a store directly.
///
/// One sled tree, [`layout::TREE`], holds everything so that a batch of
/// records and its checkpoint are written atomically by one `apply_batch`.
/// Records are stored in chunks of consecutive records (up to
/// [`layout::CHUNK_RECORDS`] of them and about [`layout::CHUNK_BYTES`]) under
/// the first one's seq, because sled's cost is per key: about 15 µs an insert
/// on the development machine, so one key per record caps a store near 65,000
/// records/s whatever the batching.
///
/// ```text
/// 'r' || u64 first_seq -> chunk = entry*, entry = u32 len || [32] chain hash || record
///                         (record = `len` canonical bytes; entry i holds seq first_seq + i)
/// 'c' || u64 seq       -> [153] signed checkpoint || frontier (u64 size || [32]*)
/// "m:format"           -> [1] store layout version (2)
/// ```
///
/// The frontier stored beside a checkpoint is not signed; it is a shortcut for
/// reopening and exporting, and is checked against the signed root before use.
pub mod layout {
    use crate::merkle::Hash;

    /// Name of the sled tree.
    pub const TREE: &str = "custos-audit";
    /// Key prefix of record chunks.
    pub const RECORD: u8 = b'r';
    /// Key prefix of checkpoints.
    pub const CHECKPOINT: u8 = b'c';
    /// Key of the layout version.
    pub const FORMAT_KEY: &[u8] = b"m:format";
    /// Layout version this crate writes.
    pub const FORMAT: u8 = 2;
    /// Most records in one chunk.
    pub const CHUNK_RECORDS: usize = 64;
    /// A chunk is sealed before it would pass this many bytes (unless it is
    /// empty). sled splits a leaf only past 16 keys and writes a leaf larger
    /// than a quarter of its 512 KiB segment as a separate blob file, which
    /// costs a file creation per write; 17 chunks of 7 KiB stay under that.
    pub const CHUNK_BYTES: usize = 7 * 1024;

    /// The key of the chunk whose first record is `seq`.
    pub fn record_key(seq: u64) -> [u8; 9] {
        key(RECORD, seq)
    }

    /// The key of the checkpoint covering up to `seq`.
    pub fn checkpoint_key(seq: u64) -> [u8; 9] {
        key(CHECKPOINT, seq)
    }

    fn key(prefix: u8, seq: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = prefix;
        k[1..].copy_from_slice(&seq.to_be_bytes());
        k
    }

    /// The sequence number of a chunk or checkpoint key.
    pub fn seq_of(key: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
    }

    /// Appends one entry to a chunk being built.
    pub fn push_entry(chunk: &mut Vec<u8>, hash: &Hash, record: &[u8]) {
        // Records are bounded by `max_record_bytes`, far below 4 GiB.
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        chunk.extend_from_slice(&len.to_be_bytes());
        chunk.extend_from_slice(hash);
        chunk.extend_from_slice(record);
    }

    /// The entries of a chunk as (chain hash, byte range of the record in
    /// `chunk`); stops with `Err(index)` at the first entry that does not parse.
    pub fn entries(chunk: &[u8]) -> Vec<Result<(Hash, std::ops::Range<usize>), usize>> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < chunk.len() {
            let parsed = (|| {
                let len = u32::from_be_bytes(chunk.get(pos..pos + 4)?.try_into().ok()?) as usize;
                let hash: Hash = chunk.get(pos + 4..pos + 36)?.try_into().ok()?;
                let start = pos + 36;
                let end = start
                    .checked_add(len)
                    .filter(|&e| e <= chunk.len() && len > 0)?;
                Some((hash, start..end))
            })();
            match parsed {
                Some((hash, range)) => {
                    pos = range.end;
                    out.push(Ok((hash, range)));
                }
                None => {
                    out.push(Err(out.len()));
                    break;
                }
            }
        }
        out
    }

    /// Decodes a whole chunk into owned (hash, record) pairs (tools and tests).
    pub fn decode_chunk(chunk: &[u8]) -> Option<Vec<(Hash, Vec<u8>)>> {
        entries(chunk)
            .into_iter()
            .map(|e| e.ok().map(|(h, r)| (h, chunk[r].to_vec())))
            .collect()
    }

    /// Encodes (hash, record) pairs as a chunk (tools and tests).
    pub fn encode_chunk(items: &[(Hash, Vec<u8>)]) -> Vec<u8> {
        let mut chunk = Vec::new();
        for (h, r) in items {
            push_entry(&mut chunk, h, r);
        }
        chunk
    }
}

/// How the log batches, checkpoints and bounds itself.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Write a checkpoint at least this often while records arrive.
    pub checkpoint_interval: Duration,
    /// Write a checkpoint once this many records are not yet covered by one
    /// (at the end of the batch that crosses it, so a checkpoint may cover a few more).
    pub checkpoint_every: u64,
    /// Capacity of the append queue; a full queue makes `try_append` say `Full`
    /// and `append` wait.
    pub queue_capacity: usize,
    /// Most records written per flush.
    pub max_batch: usize,
    /// Largest encoded record accepted.
    pub max_record_bytes: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_every: 10_000,
            queue_capacity: 65_536,
            max_batch: 8_192,
            max_record_bytes: 64 * 1024,
        }
    }
}

/// Proof that a record is durable: where it landed and its chain hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Sequence number assigned.
    pub seq: u64,
    /// Chain hash of the record.
    pub hash: Hash,
}

type Reply<T> = oneshot::Sender<Result<T, AppendError>>;

enum Cmd {
    Append {
        bytes: Vec<u8>,
        done: Option<Reply<Receipt>>,
    },
    Checkpoint(Reply<Option<SignedCheckpoint>>),
    Close(Reply<Option<SignedCheckpoint>>),
}

/// Resolves once a record is durable (or failed). Await it in async code, or
/// call [`Ticket::wait`] from a thread that is not running async tasks.
/// Dropping it does not cancel the append.
#[must_use = "a ticket says whether the record became durable"]
#[derive(Debug)]
pub struct Ticket {
    rx: oneshot::Receiver<Result<Receipt, AppendError>>,
}

impl Ticket {
    /// Blocks until the record is durable. Panics if called from within an
    /// async runtime (tokio forbids blocking there); use `.await` instead.
    pub fn wait(self) -> Result<Receipt, AppendError> {
        self.rx
            .blocking_recv()
            .unwrap_or(Err(AppendError::WriterGone))
    }
}

impl Future for Ticket {
    type Output = Result<Receipt, AppendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AppendError::WriterGone)))
    }
}

/// State the writer shares with handles.
#[derive(Debug, Default)]
struct Shared {
    /// False after a store failure or once the writer has stopped.
    healthy: AtomicBool,
    failure: Mutex<Option<String>>,
    latest: Mutex<Option<SignedCheckpoint>>,
    /// Number of durable records (last durable seq + 1).
    durable: AtomicU64,
    /// Number of group commits (flushes) so far.
    flushes: AtomicU64,
}

/// A snapshot of the log's state for health endpoints and metrics.
#[derive(Debug, Clone)]
pub struct Health {
    /// Whether the log takes records.
    pub healthy: bool,
    /// The store failure that stopped it, if any.
    pub failure: Option<String>,
    /// Records waiting in the queue.
    pub queued: usize,
    /// Number of durable records.
    pub durable_records: u64,
    /// Group commits (one flush each) since open; records / flushes is the mean batch.
    pub flushes: u64,
    /// The latest checkpoint written.
    pub latest_checkpoint: Option<SignedCheckpoint>,
}

/// A cheap, cloneable handle for appending to the log and reading it.
#[derive(Debug, Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    reader: AuditReader,
    max_record_bytes: usize,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Append { .. } => "Append",
            Cmd::Checkpoint(_) => "Checkpoint",
            Cmd::Close(_) => "Close",
        })
    }
}

impl AuditHandle {
    fn prepare(&self, record: &AuditRecord) -> Result<Vec<u8>, AppendError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(self.refusal());
        }
        let bytes = codec::encode(record)?;
        if bytes.len() > self.max_record_bytes {
            return Err(AppendError::TooLarge {
                size: bytes.len(),
                max: self.max_record_bytes,
            });
        }
        Ok(bytes)
    }

    fn refusal(&self) -> AppendError {
        match self.shared.failure.lock().ok().and_then(|f| f.clone()) {
            Some(msg) => AppendError::Unhealthy(msg),
            None => AppendError::Closed,
        }
    }

    /// Queues a record, waiting for queue space; the ticket resolves when it
    /// is durable. The record's `seq` is ignored: the writer assigns it.
    pub async fn append(&self, record: &AuditRecord) -> Result<Ticket, AppendError> {
        let bytes = self.prepare(record)?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append {
                bytes,
                done: Some(done),
            })
            .await
            .map_err(|_| self.refusal())?;
        Ok(Ticket { rx })
    }

    /// [`AuditHandle::append`] for threads outside an async runtime.
    pub fn append_blocking(&self, record: &AuditRecord) -> Result<Ticket, AppendError> {
        let bytes = self.prepare(record)?;
        let (done, rx) = oneshot::channel();
        self.tx
            .blocking_send(Cmd::Append {
                bytes,
                done: Some(done),
            })
            .map_err(|_| self.refusal())?;
        Ok(Ticket { rx })
    }

    /// Queues a record without waiting; `Full` if the queue has no room.
    pub fn try_append(&self, record: &AuditRecord) -> Result<Ticket, TryAppendError> {
        let bytes = self.prepare(record)?;
        let (done, rx) = oneshot::channel();
        self.try_send(Cmd::Append {
            bytes,
            done: Some(done),
        })?;
        Ok(Ticket { rx })
    }

    /// Queues a record without waiting and without a ticket (asynchronous
    /// audit: a later store failure shows only in [`AuditHandle::healthy`]).
    pub fn try_append_detached(&self, record: &AuditRecord) -> Result<(), TryAppendError> {
        let bytes = self.prepare(record)?;
        self.try_send(Cmd::Append { bytes, done: None })
    }

    fn try_send(&self, cmd: Cmd) -> Result<(), TryAppendError> {
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TryAppendError::Full,
            mpsc::error::TrySendError::Closed(_) => TryAppendError::Failed(self.refusal()),
        })
    }

    /// Writes a checkpoint now if any record is not yet covered, after every
    /// record queued before this call; returns the latest checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<SignedCheckpoint>, AppendError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Checkpoint(tx))
            .await
            .map_err(|_| self.refusal())?;
        rx.await.unwrap_or(Err(AppendError::WriterGone))
    }

    /// Makes every record queued before this call durable, writes a final
    /// checkpoint and stops the writer. Later appends fail with `Closed`.
    pub async fn close(&self) -> Result<Option<SignedCheckpoint>, AppendError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Close(tx))
            .await
            .map_err(|_| self.refusal())?;
        rx.await.unwrap_or(Err(AppendError::WriterGone))
    }

    /// [`AuditHandle::close`] for threads outside an async runtime.
    pub fn close_blocking(&self) -> Result<Option<SignedCheckpoint>, AppendError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(Cmd::Close(tx))
            .map_err(|_| self.refusal())?;
        rx.blocking_recv().unwrap_or(Err(AppendError::WriterGone))
    }

    /// Whether the log takes records (false after a store failure or close).
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// State for health endpoints and metrics.
    pub fn health(&self) -> Health {
        Health {
            healthy: self.healthy(),
            failure: self.shared.failure.lock().ok().and_then(|f| f.clone()),
            queued: self.tx.max_capacity() - self.tx.capacity(),
            durable_records: self.shared.durable.load(Ordering::Acquire),
            flushes: self.shared.flushes.load(Ordering::Acquire),
            latest_checkpoint: self.latest_checkpoint(),
        }
    }

    /// The latest checkpoint written (for publishing elsewhere as an anchor).
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.shared.latest.lock().ok().and_then(|l| *l)
    }

    /// A reader over the same store (query, verify, prove, export while running).
    pub fn reader(&self) -> AuditReader {
        self.reader.clone()
    }
}

/// The writer thread. The log stops when every handle is dropped or one calls
/// `close`; join to wait for the final checkpoint.
#[derive(Debug)]
pub struct AuditWriter {
    thread: std::thread::JoinHandle<()>,
}

impl AuditWriter {
    /// Waits for the writer thread to finish.
    pub fn join(self) -> Result<(), AppendError> {
        self.thread.join().map_err(|_| AppendError::WriterGone)
    }

    /// Whether the writer thread has finished.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Opens (or creates) an audit log.
#[derive(Debug)]
pub struct AuditLog;

impl AuditLog {
    /// Opens or creates the store in `dir`, checks its tail (from the last
    /// checkpoint on), and starts the writer thread. Fails with
    /// [`AuditError::CorruptTail`] if the end of the store does not check out,
    /// and with [`AuditError::KeyMismatch`] if its last checkpoint was signed
    /// by another key.
    pub fn open(
        dir: &Path,
        key: SignerKey,
        options: AuditOptions,
    ) -> Result<(AuditHandle, AuditWriter), AuditError> {
        Self::open_with(dir, key, options, |b| b)
    }

    pub(crate) fn open_with<B: Backend>(
        dir: &Path,
        key: SignerKey,
        options: AuditOptions,
        wrap: impl FnOnce(SledBackend) -> B,
    ) -> Result<(AuditHandle, AuditWriter), AuditError> {
        let reader = AuditReader::create(dir)?;
        let tree = reader.tree().clone();
        let state = recover(&reader, &key)?;
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            failure: Mutex::new(None),
            latest: Mutex::new(state.last_checkpoint),
            durable: AtomicU64::new(state.next_seq),
            flushes: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let writer = Writer {
            backend: wrap(SledBackend { tree }),
            key,
            max_batch: options.max_batch.max(1),
            checkpoint_interval: options.checkpoint_interval,
            checkpoint_every: options.checkpoint_every.max(1),
            shared: Arc::clone(&shared),
            next_seq: state.next_seq,
            prev: state.prev,
            frontier: state.frontier,
            covered: state
                .last_checkpoint
                .map_or(0, |c| c.checkpoint.tree_size()),
            last_checkpoint_at: Instant::now(),
            batch: sled::Batch::default(),
            pending: 0,
            chunk: Vec::new(),
            chunk_first: 0,
            chunk_len: 0,
            waiters: Vec::new(),
            failed: None,
            closed: false,
        };
        let thread = std::thread::Builder::new()
            .name("custos-audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Store(format!("cannot start the writer thread: {e}")))?;
        let handle = AuditHandle {
            tx,
            shared,
            reader,
            max_record_bytes: options.max_record_bytes,
        };
        Ok((handle, AuditWriter { thread }))
    }
}

/// Where the writer's batches go; a seam for failure-injection tests.
pub(crate) trait Backend: Send + 'static {
    /// Applies the batch atomically and makes it durable.
    fn commit(&mut self, batch: sled::Batch) -> Result<(), String>;
}

/// The real backend.
pub(crate) struct SledBackend {
    tree: sled::Tree,
}

impl Backend for SledBackend {
    fn commit(&mut self, batch: sled::Batch) -> Result<(), String> {
        self.tree.apply_batch(batch).map_err(|e| e.to_string())?;
        // One flush per batch: the group commit.
        self.tree.flush().map_err(|e| e.to_string())?;
        Ok(())
    }
}

struct Recovered {
    next_seq: u64,
    prev: Hash,
    frontier: Frontier,
    last_checkpoint: Option<SignedCheckpoint>,
}

/// Finds where the chain ends and checks everything after the last checkpoint.
fn recover(reader: &AuditReader, key: &SignerKey) -> Result<Recovered, AuditError> {
    let corrupt = |seq: u64, reason: String| AuditError::CorruptTail { seq, reason };
    let mut state = Recovered {
        next_seq: 0,
        prev: GENESIS,
        frontier: Frontier::new(),
        last_checkpoint: None,
    };
    if let Some((cp, frontier)) = reader.last_checkpoint_with_frontier()? {
        let c = cp.checkpoint;
        if c.key_id != key.key_id() {
            return Err(AuditError::KeyMismatch {
                found: c.key_id.to_string(),
                configured: key.key_id().to_string(),
            });
        }
        cp.verify(&key.public()).map_err(|e| corrupt(c.seq, e))?;
        let frontier = frontier
            .filter(|f| f.size() == c.tree_size() && f.root() == c.merkle_root)
            .ok_or_else(|| {
                corrupt(
                    c.seq,
                    "frontier stored with the last checkpoint does not match its root".into(),
                )
            })?;
        match reader.raw(c.seq)? {
            Some(r) if r.hash == c.chain_head => {}
            Some(_) => {
                return Err(corrupt(
                    c.seq,
                    "record hash differs from the last checkpoint's chain head".into(),
                ))
            }
            None => {
                let end = reader.next_seq()?;
                return Err(corrupt(
                    end,
                    format!(
                        "records end before seq {} that the last checkpoint covers",
                        c.seq
                    ),
                ));
            }
        }
        state = Recovered {
            next_seq: c.tree_size(),
            prev: c.chain_head,
            frontier,
            last_checkpoint: Some(cp),
        };
    }
    for item in reader.raw_range(state.next_seq) {
        let r = item.map_err(|e| match e {
            AuditError::Damaged { seq, reason } => corrupt(seq, reason),
            other => other,
        })?;
        if r.seq != state.next_seq {
            return Err(corrupt(
                state.next_seq,
                format!("record missing (next present is {})", r.seq),
            ));
        }
        match codec::peek_seq(r.bytes()) {
            Some((codec::FORMAT_VERSION, s)) if s == r.seq => {}
            _ => {
                return Err(corrupt(
                    r.seq,
                    "record does not carry its own sequence number".into(),
                ))
            }
        }
        let h = chain_hash(&state.prev, r.bytes());
        if h != r.hash {
            return Err(corrupt(r.seq, "chain hash mismatch".into()));
        }
        state.frontier.push(leaf_hash(r.bytes()));
        state.prev = h;
        state.next_seq += 1;
    }
    Ok(state)
}

struct Writer<B: Backend> {
    backend: B,
    key: SignerKey,
    max_batch: usize,
    checkpoint_interval: Duration,
    checkpoint_every: u64,
    shared: Arc<Shared>,
    next_seq: u64,
    prev: Hash,
    frontier: Frontier,
    /// Records covered by the last checkpoint (its seq + 1).
    covered: u64,
    last_checkpoint_at: Instant,
    batch: sled::Batch,
    /// Records in `batch` and `chunk` (detached ones have no waiter, so count separately).
    pending: usize,
    /// The chunk being built: entries for seqs `chunk_first..chunk_first + chunk_len`.
    chunk: Vec<u8>,
    chunk_first: u64,
    chunk_len: usize,
    waiters: Vec<(Reply<Receipt>, Receipt)>,
    failed: Option<String>,
    closed: bool,
}

impl<B: Backend> Drop for Writer<B> {
    fn drop(&mut self) {
        // A stopped writer (closed, failed or panicked) takes no records.
        self.shared.healthy.store(false, Ordering::Release);
        if std::thread::panicking() {
            if let Ok(mut f) = self.shared.failure.lock() {
                f.get_or_insert_with(|| "audit writer panicked".into());
            }
        }
    }
}

impl<B: Backend> Writer<B> {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                self.fail(format!("cannot start the writer's timer: {e}"));
                return;
            }
        };
        rt.block_on(async {
            let mut buf = Vec::with_capacity(self.max_batch);
            loop {
                let got = if self.next_seq > self.covered && self.failed.is_none() {
                    let due = self.last_checkpoint_at + self.checkpoint_interval;
                    let recv = rx.recv_many(&mut buf, self.max_batch);
                    match tokio::time::timeout_at(due.into(), recv).await {
                        Ok(n) => n,
                        Err(_) => {
                            // A failure reaches tickets and the health flag inside commit.
                            let _ = self.commit(true);
                            continue;
                        }
                    }
                } else {
                    rx.recv_many(&mut buf, self.max_batch).await
                };
                if got == 0 {
                    // Every handle is gone: finish as `close` would.
                    let _ = self.commit(true);
                    break;
                }
                for cmd in buf.drain(..) {
                    self.handle(cmd);
                }
                let _ = self.commit(false);
                if self.closed {
                    break;
                }
            }
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                self.refuse(cmd, AppendError::Closed);
            }
        });
    }

    fn refuse(&self, cmd: Cmd, err: AppendError) {
        // A dropped ticket is not an error: the caller chose not to wait.
        match cmd {
            Cmd::Append { done: Some(d), .. } => drop(d.send(Err(err))),
            Cmd::Append { done: None, .. } => {}
            Cmd::Checkpoint(d) | Cmd::Close(d) => drop(d.send(Err(err))),
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        if let Some(f) = &self.failed {
            let err = AppendError::Unhealthy(f.clone());
            if let Cmd::Close(_) = cmd {
                self.closed = true;
            }
            return self.refuse(cmd, err);
        }
        if self.closed {
            return self.refuse(cmd, AppendError::Closed);
        }
        match cmd {
            Cmd::Append { mut bytes, done } => {
                let seq = self.next_seq;
                bytes[SEQ_RANGE].copy_from_slice(&seq.to_be_bytes());
                let hash = chain_hash(&self.prev, &bytes);
                self.frontier.push(leaf_hash(&bytes));
                let entry_len = 4 + 32 + bytes.len();
                if self.chunk_len == layout::CHUNK_RECORDS
                    || self.chunk.len() + entry_len > layout::CHUNK_BYTES
                {
                    self.seal_chunk();
                }
                if self.chunk_len == 0 {
                    self.chunk_first = seq;
                }
                layout::push_entry(&mut self.chunk, &hash, &bytes);
                self.chunk_len += 1;
                if let Some(done) = done {
                    self.waiters.push((done, Receipt { seq, hash }));
                }
                self.prev = hash;
                self.next_seq += 1;
                self.pending += 1;
            }
            Cmd::Checkpoint(reply) => {
                let r = self.commit(true);
                drop(reply.send(r.map(|()| self.latest())));
            }
            Cmd::Close(reply) => {
                let r = self.commit(true);
                self.closed = true;
                // Before replying, so that the closer sees the log closed.
                self.shared.healthy.store(false, Ordering::Release);
                drop(reply.send(r.map(|()| self.latest())));
            }
        }
    }

    /// Moves the chunk being built into the batch.
    fn seal_chunk(&mut self) {
        if self.chunk_len > 0 {
            let chunk = std::mem::take(&mut self.chunk);
            self.batch
                .insert(&layout::record_key(self.chunk_first), chunk);
            self.chunk_len = 0;
        }
    }

    fn latest(&self) -> Option<SignedCheckpoint> {
        self.shared.latest.lock().ok().and_then(|l| *l)
    }

    /// Writes the pending batch (with a checkpoint when due or `force`d),
    /// flushes once, then resolves the tickets.
    fn commit(&mut self, force: bool) -> Result<(), AppendError> {
        if let Some(f) = &self.failed {
            return Err(AppendError::Unhealthy(f.clone()));
        }
        let uncovered = self.next_seq - self.covered;
        let due = self.last_checkpoint_at.elapsed() >= self.checkpoint_interval;
        let want_checkpoint = uncovered > 0 && (force || due || uncovered >= self.checkpoint_every);
        if self.pending == 0 && !want_checkpoint {
            return Ok(());
        }
        self.seal_chunk();
        let mut checkpoint = None;
        if want_checkpoint {
            let cp = self.key.sign(Checkpoint {
                seq: self.next_seq - 1,
                chain_head: self.prev,
                merkle_root: self.frontier.root(),
                time_ms: unix_ms(SystemTime::now()),
                key_id: self.key.key_id(),
            });
            let mut value = Vec::with_capacity(SIGNED_CHECKPOINT_LEN + 8 + 32 * 64);
            value.extend_from_slice(&cp.to_bytes());
            value.extend_from_slice(&self.frontier.to_bytes());
            self.batch
                .insert(&layout::checkpoint_key(cp.checkpoint.seq), value);
            checkpoint = Some(cp);
        }
        let batch = std::mem::take(&mut self.batch);
        self.pending = 0;
        match self.backend.commit(batch) {
            Ok(()) => {
                if let Some(cp) = checkpoint {
                    self.covered = cp.checkpoint.tree_size();
                    self.last_checkpoint_at = Instant::now();
                    if let Ok(mut l) = self.shared.latest.lock() {
                        *l = Some(cp);
                    }
                }
                self.shared.durable.store(self.next_seq, Ordering::Release);
                self.shared.flushes.fetch_add(1, Ordering::Release);
                for (done, receipt) in self.waiters.drain(..) {
                    drop(done.send(Ok(receipt)));
                }
                Ok(())
            }
            Err(e) => {
                self.fail(e.clone());
                for (done, _) in self.waiters.drain(..) {
                    drop(done.send(Err(AppendError::Store(e.clone()))));
                }
                Err(AppendError::Store(e))
            }
        }
    }

    fn fail(&mut self, msg: String) {
        if let Ok(mut f) = self.shared.failure.lock() {
            *f = Some(msg.clone());
        }
        self.shared.healthy.store(false, Ordering::Release);
        self.failed = Some(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventKind;
    use std::sync::atomic::AtomicUsize;

    /// Fails every commit once `armed` is set, as a full disk would.
    struct Flaky {
        inner: SledBackend,
        armed: Arc<AtomicBool>,
        commits: Arc<AtomicUsize>,
    }

    impl Backend for Flaky {
        fn commit(&mut self, batch: sled::Batch) -> Result<(), String> {
            self.commits.fetch_add(1, Ordering::SeqCst);
            if self.armed.load(Ordering::SeqCst) {
                return Err("No space left on device (os error 28)".into());
            }
            self.inner.commit(batch)
        }
    }

    fn rec(i: u64) -> AuditRecord {
        AuditRecord::new(EventKind::Produce, "t").at_ms(i)
    }

    #[test]
    fn a_store_failure_fails_every_waiting_ticket_and_marks_the_log_unhealthy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let armed = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicUsize::new(0));
        let (a, c) = (Arc::clone(&armed), Arc::clone(&commits));
        let key = SignerKey::from_seed(&[9u8; 32]);
        let (handle, writer) =
            AuditLog::open_with(dir.path(), key, AuditOptions::default(), |inner| Flaky {
                inner,
                armed: a,
                commits: c,
            })
            .expect("open");
        for i in 0..10 {
            handle
                .append_blocking(&rec(i))
                .expect("queue")
                .wait()
                .expect("durable");
        }
        assert!(handle.healthy());

        armed.store(true, Ordering::SeqCst);
        // Queue a burst; whichever were queued before the failure was seen
        // get it through their ticket, the rest are refused at once.
        let queued: Vec<_> = (0..50).map(|i| handle.append_blocking(&rec(i))).collect();
        let mut failed_tickets = 0;
        for q in queued {
            let outcome = q.and_then(Ticket::wait);
            match outcome {
                Err(AppendError::Store(msg)) => {
                    failed_tickets += 1;
                    assert!(msg.contains("No space left"), "{msg}")
                }
                Err(AppendError::Unhealthy(msg)) => assert!(msg.contains("No space left"), "{msg}"),
                other => panic!("expected a store failure, got {other:?}"),
            }
        }
        assert!(failed_tickets >= 1);
        assert!(!handle.healthy());
        let health = handle.health();
        assert!(health
            .failure
            .as_deref()
            .is_some_and(|m| m.contains("No space left")));
        assert_eq!(health.durable_records, 10);
        // Later appends are refused at once, without reaching the store.
        let before = commits.load(Ordering::SeqCst);
        assert!(matches!(
            handle.append_blocking(&rec(0)),
            Err(AppendError::Unhealthy(_))
        ));
        assert!(matches!(
            handle.try_append(&rec(0)),
            Err(TryAppendError::Failed(AppendError::Unhealthy(_)))
        ));
        assert_eq!(commits.load(Ordering::SeqCst), before);
        assert!(matches!(
            handle.close_blocking(),
            Err(AppendError::Unhealthy(_))
        ));
        drop(handle);
        writer.join().expect("writer");

        // What reached the disk is intact and reopens cleanly.
        armed.store(false, Ordering::SeqCst);
        let key = SignerKey::from_seed(&[9u8; 32]);
        let public = key.public();
        let (handle, writer) =
            AuditLog::open(dir.path(), key, AuditOptions::default()).expect("reopen");
        let r = handle
            .append_blocking(&rec(99))
            .expect("queue")
            .wait()
            .expect("durable");
        assert_eq!(r.seq, 10);
        handle.close_blocking().expect("close");
        let report = handle
            .reader()
            .verify(&public, &Default::default())
            .expect("verify");
        assert!(report.ok(), "{report}");
        assert_eq!(report.records, 11);
        drop(handle);
        writer.join().expect("writer");
    }
}
