//! `akidb embed --worker`: a long-lived embedding process for pipelines that keep one open per
//! worker (a Ray actor, Spark's `mapInPandas`, any language with a pipe). The model loads once;
//! then each line on stdin is one batch and gets one line on stdout, flushed at once:
//!
//! - request: `{"texts": ["first text", "second text"]}`
//! - answer: `{"embeddings": [[…], […]], "tokens": 12}` in request order, or `{"error": "…"}` for a
//!   request that cannot be embedded (the worker carries on with the next line).
//!
//! End of input ends the worker (exit status 0). JSON numbers are printed as the shortest text
//! that reads back as the same `f32`, so vectors match the corpus outputs bit for bit.

use std::io::{BufRead, Write};

use akidb_engine::{EncodeOptions, Model};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    texts: Vec<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Answer {
    Embeddings { embeddings: Vec<Vec<f32>>, tokens: usize },
    Error { error: String },
}

/// Reads requests from `input` until it ends, answering each on `output`; returns how many
/// requests were answered. Only I/O on the pipes stops it: a bad request gets an error line.
pub fn run_worker(
    model: &Model,
    normalize: bool,
    encode: &EncodeOptions,
    input: impl BufRead,
    mut output: impl Write,
) -> std::io::Result<u64> {
    let mut answered = 0;
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Err(e) => Answer::Error { error: format!("bad request (expected {{\"texts\": [...]}}): {e}") },
            Ok(req) => match model.embed_with(&req.texts, normalize, encode) {
                Ok(rows) => Answer::Embeddings { embeddings: rows.vectors, tokens: rows.total_tokens },
                Err(e) => Answer::Error { error: e.to_string() },
            },
        };
        if let Answer::Error { error } = &answer {
            tracing::warn!("request {}: {error}", answered + 1);
        }
        serde_json::to_writer(&mut output, &answer)?;
        output.write_all(b"\n")?;
        output.flush()?;
        answered += 1;
    }
    Ok(answered)
}
