//! OpenAI's `input` as token ids: LangChain's `OpenAIEmbeddings`, with its default settings,
//! tokenizes texts with tiktoken and sends the ids. They are decoded here, offline (the encodings
//! ship in the `tiktoken-rs` crate), to the exact text, so such clients work unchanged; or refused
//! (`--openai-token-ids reject`).

use serde_json::Value;
use tiktoken_rs::{tokenizer::Tokenizer, CoreBPE};

use crate::{
    api::{kind, texts, TOKEN_IDS_HINT},
    config::TokenIds,
    error::ApiError,
};

/// OpenAI's `input`: a string, strings, one text as token ids (`[int]`), or texts as token ids
/// (`[[int]]`). `model` is the request's: it picks the tiktoken encoding, as LangChain does.
pub(crate) fn openai_texts(value: Value, model: Option<&str>, mode: TokenIds) -> Result<Vec<String>, ApiError> {
    let ids = match value {
        Value::Array(items) if items.first().is_some_and(Value::is_number) => vec![Value::Array(items)],
        Value::Array(items) if items.first().is_some_and(Value::is_array) => items,
        other => return texts(other, "input"),
    };
    if mode == TokenIds::Reject {
        return Err(ApiError::unprocessable(format!(
            "input holds token ids, which this server does not accept (--openai-token-ids reject): send text{TOKEN_IDS_HINT}"
        ))
        .param("input"));
    }
    let bpe = encoding(model);
    ids.into_iter().enumerate().map(|(i, text)| decode(bpe, text, i)).collect()
}

/// The request model's tiktoken encoding; `cl100k_base` for a name tiktoken does not know (every
/// open model's), which is what LangChain falls back to when it tokenizes.
fn encoding(model: Option<&str>) -> &'static CoreBPE {
    let tokenizer = model.and_then(tiktoken_rs::tokenizer::get_tokenizer).unwrap_or(Tokenizer::Cl100kBase);
    tiktoken_rs::bpe_for_tokenizer(tokenizer).unwrap_or_else(|_| tiktoken_rs::cl100k_base_singleton())
}

/// Text `i` from its ids. A chunk may end inside a character (LangChain cuts long texts into
/// chunks of tokens): such bytes become U+FFFD rather than an error.
fn decode(bpe: &CoreBPE, text: Value, i: usize) -> Result<String, ApiError> {
    let bad = |what: String| ApiError::unprocessable(format!("input[{i}]{what}")).param("input");
    let Value::Array(items) = text else {
        return Err(bad(format!(" must be an array of token ids, not {}", kind(&text))));
    };
    let ids = items
        .iter()
        .enumerate()
        .map(|(j, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| bad(format!("[{j}] must be a token id (an integer from 0), not {v}")))
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let bytes = bpe.decode_bytes(&ids).map_err(|e| bad(format!(": {e}, which the tiktoken encoding does not have")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn token_ids_decode_to_the_text_they_encode() {
        let text = "Hello, wörld — naïve café 🙂";
        let bpe = tiktoken_rs::cl100k_base_singleton();
        let ids: Vec<u32> = bpe.encode_with_special_tokens(text);
        let got =
            openai_texts(json!([ids.clone(), ids.clone()]), Some("all-MiniLM-L6-v2"), TokenIds::Tiktoken).unwrap();
        assert_eq!(got, vec![text, text]);
        assert_eq!(openai_texts(json!(ids), None, TokenIds::Tiktoken).unwrap(), vec![text], "one text as [int]");
        // A model tiktoken knows picks its own encoding.
        let o200k = tiktoken_rs::o200k_base_singleton().encode_with_special_tokens(text);
        assert_eq!(openai_texts(json!([o200k]), Some("gpt-4o"), TokenIds::Tiktoken).unwrap(), vec![text]);
        assert_eq!(openai_texts(json!(["a", "b"]), None, TokenIds::Tiktoken).unwrap(), vec!["a", "b"]);

        let refused = openai_texts(json!([[1, 2]]), None, TokenIds::Reject).unwrap_err();
        assert!(refused.message.contains("--openai-token-ids reject"), "{}", refused.message);
        let bad = openai_texts(json!([[1, -2]]), None, TokenIds::Tiktoken).unwrap_err();
        assert!(bad.message.contains("input[0][1] must be a token id"), "{}", bad.message);
        let bad = openai_texts(json!([[1], "x"]), None, TokenIds::Tiktoken).unwrap_err();
        assert!(bad.message.contains("input[1] must be an array of token ids"), "{}", bad.message);
        let bad = openai_texts(json!([[4_000_000]]), None, TokenIds::Tiktoken).unwrap_err();
        assert!(bad.message.contains("input[0]"), "{}", bad.message);
    }
}
