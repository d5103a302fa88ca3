use std::{
    io::{Read, Write},
    path::PathBuf,
    time::Instant,
};

use akidb::settings::{ConfigFile, ModelArgs, ServerArgs};
use akidb_corpus::CorpusArgs;
use akidb_engine::{
    model_config::Kind,
    quantize::Dtype,
    scores,
    tokenize::{Input, Side},
    EncodeOptions, Model,
};
use akidb_server::{
    protocol::{EmbedResponse, IndexedEmbedding, Usage},
    shutdown_signal, Server,
};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

/// Text embeddings in one binary: tokenizers + ONNX Runtime, in process.
#[derive(Parser)]
#[command(name = "akidb", version, about, long_about = None)]
struct Cli {
    /// TOML config file (see config.example.toml); flags and AKIDB_* variables override it
    #[arg(long, global = true, env = "AKIDB_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts given as arguments, or one per line on stdin, and print JSON; or a corpus with --input/--output
    Embed(Box<EmbedArgs>),
    /// Serve one or more models (--model A --model B): embedding, reranking, classification and tokenizer routes
    Serve(Box<ServeArgs>),
    /// Score texts against a query with a cross-encoder and print them best first, as JSON
    Rerank(Box<RerankArgs>),
    /// Classify texts with a classifier (or score them with a cross-encoder) and print JSON
    Predict(Box<PredictArgs>),
    /// Load a model and report what akidb found: kind, family, the ONNX inputs it feeds and the output it reads, pooling, Dense layers, padding side, prompts, max length, fused or not and why
    Inspect(Box<InspectArgs>),
    /// Ask a running server's /health whether it is ready; exit 0 if so (a probe for images with no shell or curl)
    Health(HealthArgs),
}

#[derive(clap::Args)]
struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print the report as JSON (the same fields as the model's entry in the server's /info)
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct HealthArgs {
    /// The URL to ask
    #[arg(long, env = "AKIDB_HEALTH_URL", default_value = "http://127.0.0.1:8080/health")]
    url: String,
    /// Seconds to wait for the answer
    #[arg(long, default_value_t = 2)]
    timeout: u64,
}

#[derive(clap::Args)]
struct RerankArgs {
    /// The query the texts are scored against
    #[arg(long)]
    query: String,
    /// Texts to rank; with none (and no --input), one text per line is read from stdin
    texts: Vec<String>,
    /// A file with one text per line
    #[arg(long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// Only the best N
    #[arg(long)]
    top_n: Option<usize>,
    /// Logits instead of the model's activation over them
    #[arg(long)]
    raw_scores: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// Log what was loaded to stderr
    #[arg(long, short)]
    verbose: bool,
}

#[derive(clap::Args)]
struct PredictArgs {
    /// Texts to classify; with none, one text per line is read from stdin
    texts: Vec<String>,
    /// Logits instead of the model's activation over them
    #[arg(long)]
    raw_scores: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// Log what was loaded to stderr
    #[arg(long, short)]
    verbose: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
struct EmbedArgs {
    /// Texts to embed; with none, one text per line is read from stdin
    texts: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Output: one JSON document (the native API's response), or one {"index","embedding"} per line
    #[arg(long, value_enum, default_value_t = Format::Json, env = "AKIDB_FORMAT")]
    format: Format,
    /// Return raw pooled vectors instead of unit-length ones
    #[arg(long)]
    no_normalize: bool,
    /// Put one of the model's prompts (config_sentence_transformers.json) before each text, e.g.
    /// `query` [default: the model's default prompt, if any]
    #[arg(long, value_name = "NAME")]
    prompt_name: Option<String>,
    /// Which end of a text longer than the model's maximum is cut
    #[arg(long, value_enum, default_value_t = Side::Right)]
    truncation_direction: Side,
    /// Log what was loaded (model, revision, execution provider) to stderr
    #[arg(long, short)]
    verbose: bool,
    #[command(flatten)]
    corpus: CorpusArgs,
}

impl EmbedArgs {
    fn encode_options(&self) -> EncodeOptions {
        EncodeOptions { side: self.truncation_direction, prompt_name: self.prompt_name.clone() }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Jsonl,
}

fn main() {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        // A corpus run reports progress and its summary through the log.
        Command::Embed(a) if !a.verbose && a.corpus.requested() => "warn,akidb_corpus=info",
        Command::Embed(a) if !a.verbose => "warn",
        Command::Rerank(a) if !a.verbose => "warn",
        Command::Predict(a) if !a.verbose => "warn",
        Command::Inspect(_) => "warn",
        _ => "info",
    };
    init_logging(default_level);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(default: &str) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // On a terminal a first run says what it is preparing; piped, it prints only the answer.
    let preparing = if ansi { format!(",{}=info", akidb_engine::session::fusion::PREPARING) } else { String::new() };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},ort=warn{preparing}")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn run(cli: Cli) -> Result<()> {
    let file = ConfigFile::load(cli.config.as_deref())?;
    match cli.command {
        Command::Embed(args) => embed(*args, &file),
        Command::Serve(args) => serve(*args, &file),
        Command::Rerank(args) => rerank(*args, &file),
        Command::Predict(args) => predict(*args, &file),
        Command::Inspect(args) => inspect(*args, &file),
        Command::Health(args) => health(&args),
    }
}

/// `akidb inspect`: what the loader found in the model's files and graph, and what it will do.
fn inspect(args: InspectArgs, file: &ConfigFile) -> Result<()> {
    let model = load_embedder(&args.model, false, file)?;
    let info = model.info();
    let device = model.device();
    let budget = model.budget();
    if args.json {
        return print_json(&serde_json::json!({
            "model": info,
            "device": device,
            "max_batch_tokens": budget.max_tokens,
            "max_batch_size": budget.max_rows,
        }));
    }
    let p = &info.pipeline;
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<15}{value}\n"));
    line("model", format!("{} @ {} ({})", info.id, info.revision.as_deref().unwrap_or("local"), info.onnx_file));
    line("kind", info.kind.to_string());
    let arch = if p.architectures.is_empty() { String::new() } else { format!(" ({})", p.architectures.join(", ")) };
    line("family", format!("{}{arch}", p.family.as_deref().unwrap_or("unknown (no model_type in config.json)")));
    let modules = if p.modules.is_empty() { "none (no modules.json)".to_string() } else { p.modules.join(" → ") };
    line("modules", modules);
    for (i, input) in p.inputs.iter().enumerate() {
        line(if i == 0 { "inputs" } else { "" }, format!("{}: {}", input.name, input.fed));
    }
    line("output", p.output.clone());
    line("rows", p.rows.clone());
    for (i, d) in p.dense.iter().enumerate() {
        let bias = if d.bias { ", bias" } else { "" };
        line(
            if i == 0 { "dense (akidb)" } else { "" },
            format!("{}: {} → {}{bias}, {:?}", d.path, d.in_features, d.out_features, d.activation),
        );
    }
    line("dimension", info.dimension.to_string());
    if !info.labels.is_empty() {
        line("labels", format!("{} ({:?})", info.labels.join(", "), info.activation));
    }
    line("padding", p.padding_side.to_string());
    line("max length", format!("{} tokens (longer inputs are truncated, or refused where asked)", info.max_seq_length));
    if info.prompts.is_empty() {
        line("prompts", "none".into());
    }
    for (i, (name, text)) in info.prompts.iter().enumerate() {
        line(if i == 0 { "prompts" } else { "" }, format!("{name}: {text:?}"));
    }
    line("default prompt", info.default_prompt_name.clone().unwrap_or_else(|| "none".into()));
    line("attention", p.fusion.clone());
    line("precision", p.precision.clone());
    line("device", device.to_string());
    line("onnx runtime", info.onnx_runtime_version.clone());
    line("batches", format!("up to {} padded tokens, {} texts", budget.max_tokens, budget.max_rows));
    print!("{out}");
    Ok(())
}

/// Loads a model that must be one of `kinds`, for a command that needs them.
fn load_kind(model: &ModelArgs, verbose: bool, file: &ConfigFile, command: &str, kinds: &[Kind]) -> Result<Model> {
    let embedder = load_embedder(model, verbose, file)?;
    let kind = embedder.info().kind;
    if !kinds.contains(&kind) {
        let needs = kinds.iter().map(|k| k.described()).collect::<Vec<_>>().join(" or ");
        bail!("`akidb {command}` needs {needs}, but {} is {}", embedder.info().id, kind.described());
    }
    Ok(embedder)
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    serde_json::to_writer(&mut w, value)?;
    writeln!(w)?;
    w.flush()?;
    Ok(())
}

fn rerank(args: RerankArgs, file: &ConfigFile) -> Result<()> {
    let texts = match (&args.input, args.texts.is_empty()) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
        }
        (None, true) => read_stdin_lines()?,
        (None, false) => args.texts,
    };
    if texts.is_empty() {
        bail!("nothing to rank: pass texts as arguments, --input FILE, or one per line on stdin");
    }
    let embedder = load_kind(&args.model, args.verbose, file, "rerank", &[Kind::CrossEncoder])?;
    let inputs: Vec<Input> = texts.iter().map(|t| Input::Pair(args.query.clone(), t.clone())).collect();
    let tokens = embedder.tokenize_inputs(&inputs, &EncodeOptions::default())?;
    let logits = embedder.embed_tokens(&tokens, false)?;
    let activation = embedder.info().activation;
    let scores: Vec<f32> = logits.into_iter().map(|l| scores::relevance(l, activation, args.raw_scores)).collect();
    let ranked: Vec<serde_json::Value> = scores::ranked(&scores)
        .into_iter()
        .take(args.top_n.unwrap_or(usize::MAX))
        .map(|i| serde_json::json!({ "index": i, "score": scores[i], "text": texts[i] }))
        .collect();
    print_json(&serde_json::Value::Array(ranked))
}

fn predict(args: PredictArgs, file: &ConfigFile) -> Result<()> {
    let texts = if args.texts.is_empty() { read_stdin_lines()? } else { args.texts };
    if texts.is_empty() {
        bail!("nothing to classify: pass texts as arguments or one per line on stdin");
    }
    let embedder = load_kind(&args.model, args.verbose, file, "predict", &[Kind::Classifier, Kind::CrossEncoder])?;
    let tokens = embedder.tokenize(&texts)?;
    let info = embedder.info();
    let all: Vec<Vec<scores::Prediction>> = embedder
        .embed_tokens(&tokens, false)?
        .into_iter()
        .map(|logits| scores::predictions(logits, &info.labels, info.activation, args.raw_scores))
        .collect();
    print_json(&serde_json::to_value(all)?)
}

fn serve(args: ServeArgs, file: &ConfigFile) -> Result<()> {
    let all = args.model.resolve_all(file)?;
    let config = args.server.resolve(file)?;
    // Before anything loads: an alias must name exactly one of the models asked for.
    let ids: Vec<&str> = all.iter().map(|o| o.model.as_str()).collect();
    config.aliases_of(&ids).map_err(anyhow::Error::msg)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        let names = all.iter().map(|o| o.model.as_str()).collect::<Vec<_>>().join(", ");
        tracing::info!("listening on http://{addr} (loading {names})");
        let load = move || -> Result<Vec<Model>, String> {
            all.iter()
                .map(|options| Model::load(options).map_err(|e| format!("loading model {}: {e}", options.model)))
                .collect()
        };
        server.run(load, shutdown_signal()).await.with_context(|| format!("serving {names}"))
    })?;
    // The inference threads may still hold the sessions: write their profiles (--profile) now.
    akidb_engine::session::runtime::finish_profiling();
    Ok(())
}

fn read_stdin_lines() -> Result<Vec<String>> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("stdin is not valid UTF-8 (line {line}, byte {at})")
    })?;
    Ok(text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

fn load_embedder(model: &ModelArgs, verbose: bool, file: &ConfigFile) -> Result<Model> {
    let options = model.resolve(file)?;
    let embedder = Model::load(&options).with_context(|| format!("loading model {}", options.model))?;
    if verbose {
        let info = embedder.info();
        tracing::info!(
            "model {} @ {} ({}), {} dims, max {} tokens, {} pooling, execution provider {}, ONNX Runtime {}",
            info.id,
            info.revision.as_deref().unwrap_or("local"),
            info.onnx_file,
            info.dimension,
            info.max_seq_length,
            info.pooling,
            info.provider,
            info.onnx_runtime_version
        );
        tracing::info!("device: {}", embedder.device());
    }
    Ok(embedder)
}

/// `embed --input/--output`: a corpus streamed from a file or stdin into a file.
fn embed_corpus(args: EmbedArgs, file: &ConfigFile) -> Result<()> {
    if !args.texts.is_empty() {
        bail!("pass texts as arguments or --input, not both");
    }
    // Flag mistakes are reported before the model is loaded.
    akidb_corpus::plan(&args.corpus)?;
    let embedder = load_kind(&args.model, args.verbose, file, "embed", &[Kind::Embedder, Kind::SparseEmbedder])?;
    // An unknown prompt is reported before any output is opened.
    embedder.info().prompt(args.prompt_name.as_deref())?;
    akidb_corpus::run(&embedder, &args.corpus, !args.no_normalize, &args.encode_options())?;
    Ok(())
}

/// `akidb health`: 2xx from the server is healthy; anything else (or no answer) exits 1.
fn health(args: &HealthArgs) -> Result<()> {
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(args.timeout)).build();
    match agent.get(&args.url).call() {
        Ok(r) => {
            println!("{} {}", r.status(), r.into_string().unwrap_or_default().trim());
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            bail!("{} answered {code}: {}", args.url, r.into_string().unwrap_or_default().trim())
        }
        Err(e) => bail!("{e}"),
    }
}

/// `embed --worker`: the model loads once, then stdin requests are answered on stdout until EOF.
fn embed_worker(args: EmbedArgs, file: &ConfigFile) -> Result<()> {
    if !args.texts.is_empty() {
        bail!("--worker reads its texts from stdin, not arguments");
    }
    let embedder = load_kind(&args.model, args.verbose, file, "embed", &[Kind::Embedder])?;
    embedder.info().prompt(args.prompt_name.as_deref())?;
    let stdout = std::io::stdout();
    let n = akidb_corpus::worker::run_worker(
        &embedder,
        !args.no_normalize,
        &args.encode_options(),
        std::io::stdin().lock(),
        std::io::BufWriter::new(stdout.lock()),
    )?;
    tracing::info!("worker answered {n} requests");
    Ok(())
}

/// One-shot `embed` of a sparse model ({index, value} lists) or into packed bits
/// (`--output-dtype`): the shapes of the corpus outputs, as one document or one row per line.
fn embed_compact(
    embedder: &Model,
    texts: &[String],
    args: &EmbedArgs,
    values: akidb_corpus::Values,
    started: Instant,
) -> Result<()> {
    use akidb_engine::quantize;
    /// Typed rows, so floats print as the shortest text that reads back as the same f32.
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Row {
        Sparse(Vec<Entry>),
        Unsigned(Vec<u8>),
        Signed(Vec<i8>),
    }
    #[derive(serde::Serialize)]
    struct Entry {
        index: u32,
        value: f32,
    }
    #[derive(serde::Serialize)]
    struct Document<'a> {
        model: &'a str,
        embeddings: Vec<Row>,
        usage: Usage,
    }
    #[derive(serde::Serialize)]
    struct Line {
        index: usize,
        embedding: Row,
    }
    let encode = args.encode_options();
    let (embeddings, total_tokens): (Vec<Row>, usize) = match values {
        akidb_corpus::Values::Sparse => {
            let out = embedder.embed_sparse_reporting(texts, &encode, args.corpus.sparse_top_k, &mut |_| {})?;
            let rows = out
                .vectors
                .iter()
                .map(|v| Row::Sparse(v.entries().map(|(index, value)| Entry { index, value }).collect()));
            (rows.collect(), out.total_tokens)
        }
        akidb_corpus::Values::Dense(dtype) => {
            let out = embedder.embed_with(texts, !args.no_normalize, &encode)?;
            let rows = out.vectors.iter().map(|v| match dtype {
                Dtype::Binary => Row::Signed(quantize::binary(v)),
                // float32 never comes here: `embed` prints it as the native response.
                Dtype::Ubinary | Dtype::Float32 => Row::Unsigned(quantize::ubinary(v)),
            });
            (rows.collect(), out.total_tokens)
        }
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    match args.format {
        Format::Json => {
            let model = &embedder.info().id;
            serde_json::to_writer(&mut w, &Document { model, embeddings, usage: Usage { total_tokens, duration_ms } })?;
            writeln!(w)?;
        }
        Format::Jsonl => {
            for (index, embedding) in embeddings.into_iter().enumerate() {
                serde_json::to_writer(&mut w, &Line { index, embedding })?;
                writeln!(w)?;
            }
        }
    }
    w.flush()?;
    Ok(())
}

fn embed(mut args: EmbedArgs, file: &ConfigFile) -> Result<()> {
    if args.corpus.worker {
        return embed_worker(args, file);
    }
    if args.corpus.requested() {
        return embed_corpus(args, file);
    }
    let encode = args.encode_options();
    let texts = if args.texts.is_empty() { read_stdin_lines()? } else { std::mem::take(&mut args.texts) };
    if texts.is_empty() {
        bail!("nothing to embed: pass texts as arguments or one per line on stdin");
    }
    let embedder = load_kind(&args.model, args.verbose, file, "embed", &[Kind::Embedder, Kind::SparseEmbedder])?;
    let values = akidb_corpus::values(&args.corpus, embedder.info().kind, akidb_corpus::OutputFormat::Jsonl)?;
    let started = Instant::now();
    if values != akidb_corpus::Values::Dense(Dtype::Float32) {
        return embed_compact(&embedder, &texts, &args, values, started);
    }
    let out = embedder.embed_with(&texts, !args.no_normalize, &encode)?;
    let duration_ms = started.elapsed().as_millis() as u64;

    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    match args.format {
        Format::Json => {
            let response = EmbedResponse {
                model: embedder.info().id.clone(),
                embeddings: out.vectors,
                usage: Usage { total_tokens: out.total_tokens, duration_ms },
            };
            serde_json::to_writer(&mut w, &response)?;
            writeln!(w)?;
        }
        Format::Jsonl => {
            for (index, embedding) in out.vectors.into_iter().enumerate() {
                serde_json::to_writer(&mut w, &IndexedEmbedding { index, embedding })?;
                writeln!(w)?;
            }
        }
    }
    w.flush()?;
    Ok(())
}
