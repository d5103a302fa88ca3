//! `akidb embed --input … --output …`: a corpus from a file or stdin into JSON Lines, Parquet or
//! `.npy`, streaming in bounded memory. A reader thread parses records; the main thread takes them
//! in windows, embeds each window with the same length-sorted token-budget planner the server
//! uses ([`Model::embed`] → [`akidb_engine::batching::plan_batches`]), and writes rows in input order.

pub mod input;
pub mod output;
pub mod progress;
pub mod worker;

use std::{
    path::PathBuf,
    sync::mpsc::{sync_channel, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

pub use input::{Id, InputError, InputFormat, InputSpec, Record};
pub use output::{OutputError, OutputFormat, OutputSpec, Shard, Values, Vectors};
pub use progress::Summary;

use akidb_engine::{model_config::Kind, quantize::Dtype, EncodeOptions, EngineError, Model};

/// Texts embedded together: enough for length-sorted batches with little padding, small enough
/// that memory does not depend on the corpus.
pub const WINDOW: usize = 4096;

/// How long a partial window waits for more input before it is embedded, so rows keep flowing
/// when texts arrive slowly (a pipe from another program).
const IDLE: Duration = Duration::from_millis(100);

/// Corpus options of `akidb embed`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CorpusArgs {
    /// Corpus to embed: a .txt (one text per line), .jsonl or .parquet file, or - for stdin lines
    #[arg(long, short = 'i', value_name = "PATH|-")]
    pub input: Option<PathBuf>,
    /// Where to write: .jsonl, .parquet or .npy (- or none: JSON Lines on stdout)
    #[arg(long, short = 'o', value_name = "PATH|-")]
    pub output: Option<PathBuf>,
    /// Input format when the extension does not say [default: from the extension; stdin is text]
    #[arg(long, value_enum)]
    pub input_format: Option<InputFormat>,
    /// Output format when the extension does not say [default: from the extension]
    #[arg(long, value_enum)]
    pub output_format: Option<OutputFormat>,
    /// JSON field or Parquet column holding the text
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// JSON field or Parquet column whose values (strings or integers) are carried to the output as "id"
    #[arg(long)]
    pub id_field: Option<String>,
    /// Continue an interrupted .jsonl or .parquet output, keeping its complete rows
    #[arg(long)]
    pub resume: bool,
    /// Embed only shard I of N (0-based): the valid records whose number k has k mod N = I. Rows
    /// keep the whole corpus's `index`, so N shards' outputs together are one whole run.
    #[arg(long, value_name = "I/N", env = "AKIDB_SHARD")]
    pub shard: Option<Shard>,
    /// How dense vectors are stored: float32, or sign bits packed 8 per byte as uint8 (ubinary,
    /// numpy.packbits(x > 0)) or int8 (binary, the same minus 128), 32x smaller
    #[arg(long, value_enum, value_name = "DTYPE", env = "AKIDB_OUTPUT_DTYPE")]
    pub output_dtype: Option<Dtype>,
    /// A sparse (SPLADE) model: keep only the largest K weights of each vector [default: the
    /// model's max_active_dims, else all]
    #[arg(long, value_name = "K", env = "AKIDB_SPARSE_TOP_K")]
    pub sparse_top_k: Option<usize>,
    /// Log and skip invalid records instead of stopping at the first one
    #[arg(long)]
    pub skip_invalid: bool,
    /// Stay running as a worker: one {"texts": [...]} request per stdin line, one
    /// {"embeddings": [...]} answer per stdout line, flushed (for Ray actors and other pipelines)
    #[arg(long, conflicts_with_all = ["input", "output", "resume", "shard", "id_field", "skip_invalid"])]
    pub worker: bool,
    /// No progress bar, progress lines or summary
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl CorpusArgs {
    /// Whether the corpus path was asked for (otherwise `embed` keeps its argument/stdin form).
    pub fn requested(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Embed(#[from] EngineError),
    #[error("{0}")]
    Usage(String),
}

/// Checks the flags and works out formats before the model is loaded.
pub fn plan(args: &CorpusArgs) -> Result<(InputSpec, OutputFormat), CorpusError> {
    let usage = |m: String| Err(CorpusError::Usage(m));
    let input = args.input.clone().unwrap_or_else(|| PathBuf::from("-"));
    let Some(input_format) = args.input_format.or_else(|| InputFormat::from_path(&input)) else {
        return usage(format!(
            "cannot tell the format of {} from its extension; pass --input-format text|jsonl|parquet",
            input.display()
        ));
    };
    let output = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    let Some(output_format) = args.output_format.or_else(|| OutputFormat::from_path(&output)) else {
        return usage(format!(
            "cannot tell the format of {} from its extension; pass --output-format jsonl|parquet|npy",
            output.display()
        ));
    };
    let stdout = output == std::path::Path::new("-");
    if stdout && output_format != OutputFormat::Jsonl {
        return usage(format!("{output_format:?} output needs a file; pass --output PATH"));
    }
    if args.resume && (stdout || output_format == OutputFormat::Npy) {
        return usage("--resume needs a .jsonl or .parquet output file (.npy is written whole or not at all)".into());
    }
    if args.id_field.is_some() && output_format == OutputFormat::Npy {
        return usage("--id-field needs a .jsonl or .parquet output (.npy holds only vectors)".into());
    }
    if args.id_field.is_some() && input_format == InputFormat::Text {
        return usage("--id-field needs a .jsonl or .parquet input".into());
    }
    let spec = InputSpec {
        path: input,
        format: input_format,
        text_field: args.text_field.clone(),
        id_field: args.id_field.clone(),
    };
    Ok((spec, output_format))
}

/// Embeds the corpus described by `args`. On a bad record (without `--skip-invalid`) or any
/// failure, every row before it is already written and resumable.
pub fn run(
    embedder: &Model,
    args: &CorpusArgs,
    normalize: bool,
    encode: &EncodeOptions,
) -> Result<Summary, CorpusError> {
    let (input, output_format) = plan(args)?;
    let values = values(args, embedder.info().kind, output_format)?;
    let output = OutputSpec {
        path: args.output.clone().unwrap_or_else(|| PathBuf::from("-")),
        format: output_format,
        dimension: embedder.info().dimension,
        values,
        with_ids: args.id_field.is_some(),
        resume: args.resume,
        shard: args.shard.unwrap_or_default(),
    };
    let shard = output.shard;
    let mut sink = output::open(&output)?;
    let resumed = sink.done();
    let (records, total) = input::open(&input)?;
    if resumed > 0 {
        tracing::info!("{} already has {resumed} rows; continuing after them", output.path.display());
    }

    let (tx, rx) = sync_channel(WINDOW);
    let reader = std::thread::Builder::new()
        .name("corpus-reader".into())
        .spawn(move || {
            for item in records {
                if tx.send(item).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| InputError::Io { file: input.name(), source })?;

    let mut progress = progress::Progress::new(total.map(|t| shard.share(t)), resumed, args.quiet);
    let mut summary = Summary { resumed, ..Summary::default() };
    let started = Instant::now();
    let mut window =
        Window { seen: 0, skip: shard.global(resumed), shard, skip_invalid: args.skip_invalid, records: Vec::new() };
    let result = loop {
        let stop = window.fill(&rx, &mut summary.skipped);
        if !window.records.is_empty() {
            let texts: Vec<&str> = window.records.iter().map(|r| r.text.as_str()).collect();
            // The bar moves as each batch completes; rows reach the output per window.
            let mut advance = |n: usize| progress.advance(n as u64);
            let (dense, sparse, tokens) = match values {
                // Each batch is pruned as it completes: a window never holds vocabulary-wide rows.
                Values::Sparse => {
                    match embedder.embed_sparse_reporting(&texts, encode, args.sparse_top_k, &mut advance) {
                        Ok(e) => (Vec::new(), e.vectors, e.total_tokens),
                        Err(e) => break Err(e.into()),
                    }
                }
                Values::Dense(_) => match embedder.embed_reporting(&texts, normalize, encode, &mut advance) {
                    Ok(e) => (e.vectors, Vec::new(), e.total_tokens),
                    Err(e) => break Err(e.into()),
                },
            };
            let vectors = if values == Values::Sparse { Vectors::Sparse(&sparse) } else { Vectors::Dense(&dense) };
            let ids: Vec<Option<Id>> = window.records.drain(..).map(|r| r.id).collect();
            if let Err(e) = sink.write(&ids, vectors) {
                break Err(e.into());
            }
            summary.texts += ids.len() as u64;
            summary.tokens += tokens as u64;
        }
        match stop {
            Stop::Full | Stop::Idle => {}
            Stop::End => break Ok(()),
            Stop::Bad(e) => break Err(e.into()),
        }
    };
    drop(rx);
    let _ = reader.join();
    summary.elapsed = started.elapsed();
    match result {
        Ok(()) => {
            sink.finish()?;
            progress.finish(&summary, &output.path.display().to_string());
            Ok(summary)
        }
        Err(e) => {
            progress.abandon();
            // Keep what is done so `--resume` continues from here; the first error is the one to report.
            if let Err(flush) = sink.checkpoint() {
                tracing::error!("could not save the rows written so far: {flush}");
            }
            Err(e)
        }
    }
}

/// What the rows hold: a sparse model's {index, value} lists, else dense vectors in `--output-dtype`.
/// Flags that do not fit the model are refused before any output is opened.
pub fn values(args: &CorpusArgs, kind: Kind, format: OutputFormat) -> Result<Values, CorpusError> {
    let usage = |m: String| Err(CorpusError::Usage(m));
    match kind {
        Kind::SparseEmbedder => {
            if args.output_dtype.is_some_and(|d| d != Dtype::Float32) {
                return usage("--output-dtype packs dense vectors; a sparse model writes {index, value} lists".into());
            }
            if format == OutputFormat::Npy {
                return usage("a sparse model's rows differ in length; write .jsonl or .parquet, not .npy".into());
            }
            Ok(Values::Sparse)
        }
        _ if args.sparse_top_k.is_some() => {
            usage(format!("--sparse-top-k needs a sparse (SPLADE) model; this one is {}", kind.described()))
        }
        _ => Ok(Values::Dense(args.output_dtype.unwrap_or_default())),
    }
}

/// Why [`Window::fill`] returned.
enum Stop {
    Full,
    /// Input is arriving slowly: embed what is here rather than wait.
    Idle,
    End,
    Bad(InputError),
}

struct Window {
    /// Valid records received so far (including skipped resumed ones and other shards' ones).
    seen: u64,
    /// The whole-corpus number of the first record not yet in the output from an earlier run.
    skip: u64,
    shard: Shard,
    skip_invalid: bool,
    records: Vec<Record>,
}

impl Window {
    fn fill(&mut self, rx: &Receiver<Result<Record, InputError>>, skipped: &mut u64) -> Stop {
        loop {
            let item = if self.records.is_empty() {
                match rx.recv() {
                    Ok(item) => item,
                    Err(_) => return Stop::End,
                }
            } else {
                match rx.recv_timeout(IDLE) {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => return Stop::Idle,
                    Err(RecvTimeoutError::Disconnected) => return Stop::End,
                }
            };
            match item {
                Ok(record) => {
                    let k = self.seen;
                    self.seen += 1;
                    if k < self.skip || !self.shard.owns(k) {
                        continue;
                    }
                    self.records.push(record);
                    if self.records.len() >= WINDOW {
                        return Stop::Full;
                    }
                }
                // Before the resume point: the earlier run already dealt with it.
                Err(e) if e.is_invalid_record() && self.seen < self.skip => {}
                Err(e) if self.skip_invalid && e.is_invalid_record() => {
                    tracing::warn!("skipping {e}");
                    *skipped += 1;
                }
                Err(e) => return Stop::Bad(e),
            }
        }
    }
}
