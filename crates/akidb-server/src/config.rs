//! What the server needs to know about its limits and identity: plain data, filled in by
//! `settings` from flags, environment and the config file.

use std::time::Duration;

/// Server limits and identity. Defaults are what a single-machine deployment wants.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Another name clients may send as `model` (besides the repo id and its short name).
    pub served_model_name: Option<String>,
    /// More names for served models (`--model-alias ALIAS=MODEL`): clients that keep their
    /// default model names (`nomic-embed-text`, `rerank-english-v3.0`) reach a model by them.
    pub aliases: Vec<ModelAlias>,
    /// What OpenAI's route does with token-id inputs (LangChain's `OpenAIEmbeddings` sends them).
    pub openai_token_ids: TokenIds,
    pub api_key: Option<String>,
    pub payload_limit: usize,
    pub max_inputs: usize,
    pub max_concurrent_requests: usize,
    pub max_batch_requests: usize,
    /// Tokens admitted but not yet embedded, across all requests; beyond it new requests get 429.
    pub max_queued_tokens: usize,
    /// Past this a request is answered with an error and its remaining texts are dropped.
    pub request_timeout: Option<Duration>,
    /// After SIGTERM, in-flight requests get this long before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// From accept (or the next request's first byte) to its complete headers.
    pub header_read_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keep_alive_timeout: Duration,
    /// Time allowed to receive a request's body once its headers are in.
    pub body_read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            served_model_name: None,
            aliases: Vec::new(),
            openai_token_ids: TokenIds::Tiktoken,
            api_key: None,
            payload_limit: 2_000_000,
            max_inputs: 512,
            max_concurrent_requests: 512,
            max_batch_requests: 64,
            // ~20 s of work for MiniLM on two cores (~11k tokens/s): bounded, yet room for bulk jobs.
            max_queued_tokens: 262_144,
            request_timeout: Some(Duration::from_secs(60)),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 2048,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Token ids in OpenAI's `input` (arrays of integers): tiktoken ids, as OpenAI's own clients send
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenIds {
    /// Decoded with the request model's tiktoken encoding (`cl100k_base` for names tiktoken does
    /// not know, as LangChain chooses it), and the text embedded.
    #[default]
    Tiktoken,
    /// Refused with a 422 that says how to send text.
    Reject,
}

impl std::str::FromStr for TokenIds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiktoken" => Ok(Self::Tiktoken),
            "reject" => Ok(Self::Reject),
            other => Err(format!("'{other}' is not tiktoken or reject")),
        }
    }
}

/// `ALIAS=MODEL`: `ALIAS` selects the served model that `MODEL` selects (its id, its short name or
/// its served name).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelAlias {
    pub alias: String,
    pub model: String,
}

impl std::str::FromStr for ModelAlias {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((alias, model)) if !alias.trim().is_empty() && !model.trim().is_empty() => {
                Ok(Self { alias: alias.trim().to_string(), model: model.trim().to_string() })
            }
            _ => {
                Err(format!("'{s}' is not ALIAS=MODEL (e.g. nomic-embed-text=sentence-transformers/all-MiniLM-L6-v2)"))
            }
        }
    }
}

impl TryFrom<String> for ModelAlias {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ModelAlias> for String {
    fn from(a: ModelAlias) -> Self {
        format!("{}={}", a.alias, a.model)
    }
}

/// Whether `requested` names the model `id` served as `served`: the id, its last path part
/// (`all-MiniLM-L6-v2`) or the served name, with or without the `:latest` tag Ollama clients add.
pub fn selects(id: &str, served: &str, requested: &str) -> bool {
    let requested = requested.strip_suffix(":latest").unwrap_or(requested);
    let short = id.trim_end_matches('/').rsplit('/').next().unwrap_or(id);
    requested == id || requested == short || requested == served
}

impl ServerConfig {
    /// The served name of model `i` of `ids`: `--served-model-name` for the first, else its id.
    pub fn served_name(&self, i: usize, id: &str) -> String {
        match (&self.served_model_name, i) {
            (Some(name), 0) => name.clone(),
            _ => id.to_string(),
        }
    }

    /// For each model of `ids` (in serving order), the aliases that name it. An alias whose
    /// model is not served, that selects two models, or that is taken twice is an error naming it.
    pub fn aliases_of(&self, ids: &[&str]) -> Result<Vec<Vec<String>>, String> {
        let mut owned = vec![Vec::new(); ids.len()];
        for (n, a) in self.aliases.iter().enumerate() {
            let owners: Vec<usize> =
                (0..ids.len()).filter(|&i| selects(ids[i], &self.served_name(i, ids[i]), &a.model)).collect();
            match owners.as_slice() {
                [i] => owned[*i].push(a.alias.clone()),
                [] => return Err(format!("--model-alias {}={}: no served model is {}", a.alias, a.model, a.model)),
                _ => {
                    return Err(format!(
                        "--model-alias {}={}: {} names several served models",
                        a.alias, a.model, a.model
                    ))
                }
            }
            if self.aliases[..n].iter().any(|b| b.alias == a.alias) {
                return Err(format!("--model-alias {} is given twice", a.alias));
            }
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(s: &str) -> ModelAlias {
        s.parse().unwrap()
    }

    #[test]
    fn aliases_name_exactly_one_served_model() {
        let ids = ["sentence-transformers/all-MiniLM-L6-v2", "cross-encoder/ms-marco-MiniLM-L6-v2"];
        let config = ServerConfig {
            served_model_name: Some("embedder".into()),
            aliases: vec![
                alias("nomic-embed-text=all-MiniLM-L6-v2"),
                alias("rerank-english-v3.0 = ms-marco-MiniLM-L6-v2"),
                alias("e5=embedder"),
            ],
            ..Default::default()
        };
        let owned = config.aliases_of(&ids).unwrap();
        assert_eq!(
            owned,
            vec![vec!["nomic-embed-text".to_string(), "e5".into()], vec!["rerank-english-v3.0".to_string()]]
        );

        let bad = |aliases: &[&str]| {
            let config = ServerConfig { aliases: aliases.iter().map(|a| alias(a)).collect(), ..Default::default() };
            config.aliases_of(&ids).unwrap_err()
        };
        assert!(bad(&["x=bge-small"]).contains("no served model is bge-small"));
        assert!(bad(&["x=all-MiniLM-L6-v2", "x=ms-marco-MiniLM-L6-v2"]).contains("x is given twice"));
        let same_short = ["a/m", "b/m"];
        let config = ServerConfig { aliases: vec![alias("x=m")], ..Default::default() };
        assert!(config.aliases_of(&same_short).unwrap_err().contains("names several served models"));
        for wrong in ["no-equals", "=model", "alias="] {
            assert!(wrong.parse::<ModelAlias>().is_err(), "{wrong}");
        }
    }
}
