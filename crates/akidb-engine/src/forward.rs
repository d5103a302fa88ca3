//! One padded batch through the session to one row per input — a pooled vector, a head's logits
//! or every real token's hidden state. The pipeline ([`crate::model`]) and the device measurement
//! ([`crate::load`]) run the same step, so what is timed is what serves.

use std::sync::Arc;

use ndarray::{ArrayView2, ArrayView3};

use crate::{
    dense::{self, Dense, Layers},
    error::EngineError,
    model_config::{Kind, ModelConfig, Pooling, Splade},
    pooling,
    session::runtime::{Inputs, OutputInfo, RuntimeError, Session},
    sparse,
    tokenize::Batch,
};

/// The graph output that holds sentence-transformers' whole pipeline (pooling, Dense layers,
/// normalization), as EmbeddingGemma's and other full-pipeline exports name it.
pub const SENTENCE_OUTPUT: &str = "sentence_embedding";

/// What one inference call reads out per row.
#[derive(Debug, Clone)]
pub(crate) enum Readout {
    /// The token vectors pooled by akidb, then the model's Dense layers (if any).
    Pooled {
        pooling: Pooling,
        dense: Arc<[Dense]>,
    },
    /// The graph's own sentence vector ([`SENTENCE_OUTPUT`]): pooling and Dense inside it.
    Sentence,
    Logits,
    /// A SPLADE model's vocabulary logits pooled into one weight per entry (zeros included).
    Sparse(Splade),
    /// The real tokens' hidden states, flattened.
    Tokens,
}

impl Readout {
    /// Rows of the model's kind, read from what the graph outputs: a head's logits; the graph's
    /// `sentence_embedding` where it has one; else its token vectors, pooled here. A 2-D output
    /// under another name is refused: nothing says how it was pooled.
    pub(crate) fn rows(config: &ModelConfig, outputs: &[OutputInfo], dense: &Layers) -> Result<Self, EngineError> {
        if config.head.is_some() {
            return Ok(Readout::Logits);
        }
        let names = || outputs.iter().map(|o| format!("{} ({}-D)", o.name, o.rank)).collect::<Vec<_>>().join(", ");
        if let Some(splade) = config.splade {
            // The masked-LM head's logits, one per vocabulary entry; a base model's hidden states
            // (the export without its head) cannot be pooled into those.
            if outputs.iter().any(|o| o.rank == 3 && o.width.is_none_or(|w| w == config.dimension)) {
                return Ok(Readout::Sparse(splade));
            }
            return Err(EngineError::UnusableOutput {
                why: format!(
                    "a sparse model's weights come from its masked-LM head's logits [batch, tokens, {}] (one per vocabulary entry); export the model with its MLM head (AutoModelForMaskedLM)",
                    config.dimension
                ),
                outputs: names(),
            });
        }
        if let Some(sentence) = outputs.iter().find(|o| o.name == SENTENCE_OUTPUT && o.rank == 2) {
            if let Some(width) = sentence.width.filter(|&w| w != config.dimension) {
                return Err(EngineError::UnusableOutput {
                    why: format!(
                        "{SENTENCE_OUTPUT} has {width} values per text, but the model's modules give {}",
                        config.dimension
                    ),
                    outputs: names(),
                });
            }
            return Ok(Readout::Sentence);
        }
        if outputs.iter().any(|o| o.rank == 3) {
            let dense = dense.as_ref().map_err(|e| EngineError::Dense(e.clone()))?;
            return Ok(Readout::Pooled { pooling: config.pooling, dense: dense.clone() });
        }
        Err(EngineError::UnusableOutput {
            why: format!(
                "no token vectors ([batch, tokens, hidden], e.g. last_hidden_state) to pool and no {SENTENCE_OUTPUT}; a {} model's 2-D output says nothing of how it was pooled",
                Kind::Embedder
            ),
            outputs: names(),
        })
    }

    /// How rows are made, for `inspect` and `/info`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Readout::Pooled { pooling, dense } if dense.is_empty() => format!("{} pooling (akidb)", pooling.as_str()),
            Readout::Pooled { pooling, dense } => {
                format!("{} pooling, then {} Dense layer(s) (akidb)", pooling.as_str(), dense.len())
            }
            Readout::Sentence => format!("the graph's {SENTENCE_OUTPUT} (pooling and Dense inside the graph)"),
            Readout::Logits => "the head's logits".into(),
            Readout::Sparse(splade) => format!("{} over the vocabulary logits (akidb), zeros dropped", splade.as_str()),
            Readout::Tokens => "token vectors".into(),
        }
    }
}

/// The session's view of a tokenized batch.
pub(crate) fn inputs(batch: &Batch) -> Inputs<'_> {
    Inputs {
        input_ids: batch.input_ids.view(),
        attention_mask: batch.attention_mask.view(),
        token_type_ids: batch.token_type_ids.view(),
    }
}

/// Runs one batch: one row per member, in the batch's order (vectors unnormalized).
pub(crate) fn forward(session: &Session, batch: &Batch, readout: &Readout) -> Result<Vec<Vec<f32>>, RuntimeError> {
    let mask = batch.attention_mask.view();
    let rows = |out: ArrayView2<'_, f32>| out.outer_iter().map(|row| row.to_vec()).collect::<Vec<_>>();
    match readout {
        Readout::Pooled { pooling, dense } => {
            let pooled = batch.pool_mask.as_ref().map_or(mask, |m| m.view());
            let vectors = session.run(inputs(batch), |hidden| pooling::pool(hidden, pooled, *pooling))?;
            Ok(if dense.is_empty() {
                vectors
            } else {
                vectors.into_iter().map(|v| dense::apply_all(dense, v)).collect()
            })
        }
        Readout::Sentence => session.run_output(inputs(batch), SENTENCE_OUTPUT, rows),
        Readout::Logits => session.run(inputs(batch), rows),
        Readout::Sparse(splade) => session.run(inputs(batch), |logits| sparse::pool(logits, mask, *splade)),
        Readout::Tokens => session.run(inputs(batch), |hidden: ArrayView3<'_, f32>| {
            hidden
                .outer_iter()
                .zip(mask.outer_iter())
                .map(|(tokens, mask)| {
                    // The real tokens, wherever the padding is.
                    tokens
                        .outer_iter()
                        .zip(mask.iter())
                        .filter(|(_, &m)| m != 0)
                        .flat_map(|(t, _)| t.to_vec())
                        .collect()
                })
                .collect()
        }),
    }
}
