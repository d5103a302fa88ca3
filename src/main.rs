use std::{
    io::{Read, Write},
    path::PathBuf,
    time::Instant,
};

use akidb::{
    corpus::CorpusArgs,
    protocol::{EmbedResponse, IndexedEmbedding, Usage},
    server::{shutdown_signal, Server},
    settings::{ConfigFile, ModelArgs, ServerArgs},
    Embedder,
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
    /// Serve the native API, OpenAI, TEI and Ollama embedding routes over HTTP
    Serve(Box<ServeArgs>),
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
    /// Log what was loaded (model, revision, execution provider) to stderr
    #[arg(long, short)]
    verbose: bool,
    #[command(flatten)]
    corpus: CorpusArgs,
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
        Command::Embed(a) if !a.verbose && a.corpus.requested() => "warn,akidb::corpus=info",
        Command::Embed(a) if !a.verbose => "warn",
        _ => "info",
    };
    init_logging(default_level);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},ort=warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn run(cli: Cli) -> Result<()> {
    let file = ConfigFile::load(cli.config.as_deref())?;
    match cli.command {
        Command::Embed(args) => embed(*args, &file),
        Command::Serve(args) => serve(*args, &file),
    }
}

fn serve(args: ServeArgs, file: &ConfigFile) -> Result<()> {
    let options = args.model.resolve(file)?;
    let config = args.server.resolve(file)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        tracing::info!("listening on http://{addr} (model {} loading)", options.model);
        let model = options.model.clone();
        server
            .run(move || Embedder::load(&options), shutdown_signal())
            .await
            .with_context(|| format!("serving model {model}"))
    })?;
    // The inference thread may still hold the session: write its profile (--profile) now.
    akidb::runtime::finish_profiling();
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

fn load_embedder(model: &ModelArgs, verbose: bool, file: &ConfigFile) -> Result<Embedder> {
    let options = model.resolve(file)?;
    let embedder = Embedder::load(&options).with_context(|| format!("loading model {}", options.model))?;
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
    akidb::corpus::plan(&args.corpus)?;
    let embedder = load_embedder(&args.model, args.verbose, file)?;
    akidb::corpus::run(&embedder, &args.corpus, !args.no_normalize)?;
    Ok(())
}

fn embed(args: EmbedArgs, file: &ConfigFile) -> Result<()> {
    if args.corpus.requested() {
        return embed_corpus(args, file);
    }
    let texts = if args.texts.is_empty() { read_stdin_lines()? } else { args.texts };
    if texts.is_empty() {
        bail!("nothing to embed: pass texts as arguments or one per line on stdin");
    }
    let embedder = load_embedder(&args.model, args.verbose, file)?;
    let started = Instant::now();
    let out = embedder.embed(&texts, !args.no_normalize)?;
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
