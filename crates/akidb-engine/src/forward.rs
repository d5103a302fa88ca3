//! One padded batch through the session to one row per input — a pooled vector, a head's logits
//! or every real token's hidden state. The pipeline ([`crate::model`]) and the device measurement
//! ([`crate::load`]) run the same step, so what is timed is what serves.

use ndarray::{ArrayView2, ArrayView3};

use crate::{
    model_config::{ModelConfig, Pooling},
    pooling,
    session::runtime::{Inputs, RuntimeError, Session},
    tokenize::Batch,
};

/// What one inference call reads out per row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Readout {
    Pooled(Pooling),
    Logits,
    /// The real tokens' hidden states, flattened.
    Tokens,
}

impl Readout {
    /// Rows of the model's kind: pooled vectors for an embedder, logits for a head.
    pub(crate) fn rows(config: &ModelConfig) -> Self {
        if config.head.is_some() {
            Readout::Logits
        } else {
            Readout::Pooled(config.pooling)
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
pub(crate) fn forward(session: &Session, batch: &Batch, readout: Readout) -> Result<Vec<Vec<f32>>, RuntimeError> {
    let mask = batch.attention_mask.view();
    match readout {
        Readout::Pooled(pooling) => {
            let pooled = batch.pool_mask.as_ref().map_or(mask, |m| m.view());
            session.run(inputs(batch), |hidden| pooling::pool(hidden, pooled, pooling))
        }
        Readout::Logits => session
            .run(inputs(batch), |logits: ArrayView2<'_, f32>| logits.outer_iter().map(|row| row.to_vec()).collect()),
        Readout::Tokens => session.run(inputs(batch), |hidden: ArrayView3<'_, f32>| {
            hidden
                .outer_iter()
                .zip(mask.outer_iter())
                .map(|(tokens, mask)| {
                    let len = mask.iter().take_while(|&&m| m != 0).count();
                    tokens.slice(ndarray::s![..len, ..]).iter().copied().collect()
                })
                .collect()
        }),
    }
}
