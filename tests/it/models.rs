//! Several models in one server (issue #13): an embedder, a cross-encoder and a classifier behind
//! one `akidb serve`, over real HTTP, against the sentence-transformers / transformers references;
//! every route of TEI's API with its bad-input cases; the OpenAPI document through a validator;
//! `akidb rerank` and `akidb predict`.

use crate::common;

use std::{process::Command, sync::OnceLock, time::Duration};

use akidb_engine::{
    hub::ModelRepo,
    model_config::{Activation, Kind, ModelConfig},
    tokenize::{Input, Side, Tokenizer},
};
use akidb_server::ServerConfig;
use common::{cosine, hf_env, hf_home, one_token_words, server::TestServer, shared_dir, TINY};
use serde_json::{json, Value};

const CROSS: &str = "akidb-test/tiny-cross-encoder";
const CLASSIFIER: &str = "akidb-test/tiny-bert-classifier";
const MAX_INPUTS: usize = 32;

/// One server with the three models, embedder first.
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::start_models(
            &[TINY, CROSS, CLASSIFIER],
            ServerConfig { max_inputs: MAX_INPUTS, ..Default::default() },
            Duration::ZERO,
        )
    })
}

async fn ready() -> &'static TestServer {
    let s = server();
    s.wait_healthy().await;
    s
}

async fn post(path: &str, body: Value) -> (u16, Value) {
    let s = ready().await;
    let r = reqwest::Client::new().post(s.url(path)).json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
}

async fn get(path: &str) -> (u16, String) {
    let s = ready().await;
    let r = reqwest::Client::new().get(s.url(path)).send().await.expect("request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn jsonl(name: &str) -> Vec<Value> {
    let path = shared_dir().join("reference").join(format!("{name}.dev.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON row"))
        .collect()
}

/// The cross-encoder reference grouped by query, in file order.
fn rerank_groups() -> Vec<(String, Vec<Value>)> {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for row in jsonl("tiny-cross-encoder") {
        let query = row["query"].as_str().expect("query").to_string();
        match groups.iter_mut().find(|(q, _)| *q == query) {
            Some((_, rows)) => rows.push(row),
            None => groups.push((query, vec![row])),
        }
    }
    groups
}

fn assert_error(status: u16, body: &Value, want: u16, says: &str) {
    assert_eq!(status, want, "{body}");
    let message = body["error"].as_str().or_else(|| body["error"]["message"].as_str()).unwrap_or_default();
    assert!(message.contains(says), "expected '{says}' in: {body}");
}

#[test]
fn kinds_labels_activation_and_max_length_come_from_the_models_own_files() {
    hf_env();
    let load = |id: &str| ModelConfig::load(&ModelRepo::open(id, None).expect("cached")).expect("config");
    let embedder = load(TINY);
    assert_eq!((embedder.kind, embedder.max_seq_length), (Kind::Embedder, 64));
    assert!(embedder.head.is_none());

    // sentence-transformers 6 CrossEncoder: no max_seq_length anywhere but tokenizer_config.json.
    let cross = load(CROSS);
    assert_eq!((cross.kind, cross.max_seq_length), (Kind::CrossEncoder, 64));
    let head = cross.head.expect("a head");
    assert_eq!((head.labels, head.activation), (vec!["LABEL_0".to_string()], Activation::Sigmoid));

    // A plain transformers classifier: softmax over id2label, in id order.
    let classifier = load(CLASSIFIER);
    assert_eq!(classifier.kind, Kind::Classifier);
    let head = classifier.head.expect("a head");
    assert_eq!(head.labels, ["negative", "neutral", "positive"]);
    assert_eq!(head.activation, Activation::Softmax);
    let p = Activation::Softmax.apply(&[1.0, 2.0, 3.0]);
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6 && p[2] > p[1] && p[1] > p[0]);
}

/// The classic hub layout of older sentence-transformers CrossEncoders: only config.json, with
/// the activation under `sbert_ce_default_activation_function`; and what is refused.
#[test]
fn classic_cross_encoder_layouts_and_unknown_activations() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: Value| std::fs::write(dir.path().join(name), value.to_string()).unwrap();
    let config = |extra: Value| {
        let mut c = json!({
            "architectures": ["BertForSequenceClassification"], "hidden_size": 384,
            "num_attention_heads": 12, "max_position_embeddings": 512, "id2label": {"0": "LABEL_0"},
        });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let load = || ModelConfig::load(&ModelRepo::open(dir.path().to_str().unwrap(), None).unwrap());

    write("config.json", config(json!({"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"})));
    let c = load().unwrap();
    assert_eq!((c.kind, c.max_seq_length), (Kind::CrossEncoder, 512));
    assert_eq!(c.head.unwrap().activation, Activation::Identity);

    // Several labels without a named activation: a classifier with softmax; labels in id order.
    write("config.json", config(json!({"id2label": {"1": "b", "0": "a", "2": "c"}})));
    let head = load().unwrap().head.unwrap();
    assert_eq!((head.labels, head.activation), (vec!["a".to_string(), "b".into(), "c".into()], Activation::Softmax));

    // A sentence-transformers CrossEncoder names its activation; one akidb cannot apply is an error.
    write("config.json", config(json!({})));
    write("config_sentence_transformers.json", json!({"model_type": "CrossEncoder", "activation_fn": "my.CustomAct"}));
    let err = load().unwrap_err().to_string();
    assert!(err.contains("unsupported activation_fn 'my.CustomAct'"), "{err}");

    // No head at all: an embedder, as before.
    std::fs::remove_file(dir.path().join("config_sentence_transformers.json")).unwrap();
    write("config.json", json!({"architectures": ["BertModel"], "hidden_size": 384}));
    let c = load().unwrap();
    assert!(c.kind == Kind::Embedder && c.head.is_none());
}

#[test]
fn pairs_are_one_sequence_with_type_ids_and_longest_first_truncation() {
    hf_env();
    let repo = ModelRepo::open(CROSS, None).expect("cached");
    let tokenizer = Tokenizer::from_file(&repo.file("tokenizer.json").unwrap(), 64).unwrap();
    let long = "word ".repeat(200);
    let tokens = tokenizer
        .encode_inputs(
            &[Input::Pair("a short query".into(), long.clone()), Input::Pair(long, "tiny".into())],
            Side::Right,
        )
        .unwrap();
    for t in &tokens {
        assert_eq!(t.len(), 64, "cut to the model's maximum");
        assert!(t.truncated);
        let first_one = t.type_ids.iter().position(|&x| x == 1).expect("a second segment");
        assert!(t.type_ids[..first_one].iter().all(|&x| x == 0) && t.type_ids[first_one..].iter().all(|&x| x == 1));
    }
    // Longest first: the short side keeps all its tokens ([CLS] a short query [SEP] = 5).
    assert_eq!(tokens[0].type_ids.iter().filter(|&&x| x == 0).count(), 5);
    assert_eq!(tokens[1].type_ids.iter().filter(|&&x| x == 1).count(), 2, "tiny [SEP]");
}

/// A classification head's fused graph is checked on its logits: the correct one is kept, one
/// that lets tokens attend to padding is refused.
#[test]
fn fused_heads_are_verified_on_their_logits() {
    use akidb_engine::{
        load::Probe,
        session::{
            fusion::{self, CacheEntry},
            graph::{fuse_attention, read_model, AttentionOp},
            runtime::SessionOptions,
        },
    };
    hf_env();
    let repo = ModelRepo::open(CLASSIFIER, None).expect("cached");
    let model = repo.file("onnx/model.onnx").unwrap();
    let tokenizer = Tokenizer::from_file(&repo.file("tokenizer.json").unwrap(), 64).unwrap();
    let probe = Probe::new(&tokenizer).unwrap();
    let options = SessionOptions { attention: Some(AttentionOp::Packed), ..Default::default() };
    let fuse = || {
        fuse_attention(read_model(&model).unwrap(), 2, "attention_mask", options.attention()).unwrap().expect("fuses")
    };
    let cache = tempfile::tempdir().unwrap();
    let entry = CacheEntry::new(cache.path(), &model, 2, options.attention()).unwrap();
    assert_eq!(fusion::adopt(&model, fuse(), &options, probe.inputs(), &entry, true).unwrap().rewrite.fused(), 2);

    let mut broken = fuse();
    for node in broken.model.graph.as_mut().unwrap().node.iter_mut() {
        match node.op_type.as_str() {
            "MultiHeadAttention" => node.input[4] = String::new(),
            "Attention" => node.input[3] = String::new(),
            _ => {}
        }
    }
    let other = tempfile::tempdir().unwrap();
    let entry = CacheEntry::new(other.path(), &model, 2, options.attention()).unwrap();
    assert_eq!(fusion::adopt(&model, broken, &options, probe.inputs(), &entry, true).unwrap().rewrite.fused(), 0);
    let note = std::fs::read_to_string(entry.rejected_path()).expect("the refusal is cached");
    assert!(note.contains("logit"), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_matches_the_cross_encoder_reference() {
    for (query, rows) in rerank_groups() {
        let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
        let (s, raw) = post("/rerank", json!({"query": query, "texts": texts, "raw_scores": true})).await;
        assert_eq!(s, 200, "{raw}");
        let (s, scored) = post("/rerank", json!({"query": query, "texts": texts, "return_text": true})).await;
        assert_eq!(s, 200, "{scored}");
        for (ranks, field, tolerance) in [(&raw, "logit", 1e-3), (&scored, "score", 1e-4)] {
            let ranks = ranks.as_array().unwrap();
            assert_eq!(ranks.len(), rows.len());
            for pair in ranks.windows(2) {
                assert!(f(&pair[0]["score"]) >= f(&pair[1]["score"]), "sorted, highest first: {query}");
            }
            for r in ranks {
                let i = r["index"].as_u64().unwrap() as usize;
                let want = f(&rows[i][field]);
                assert!((f(&r["score"]) - want).abs() <= tolerance, "{query} / {i}: {} vs {field} {want}", r["score"]);
            }
        }
        // The reference's own order (ties aside) and the texts echoed.
        let mut want: Vec<usize> = (0..rows.len()).collect();
        want.sort_by(|&a, &b| f(&rows[b]["score"]).total_cmp(&f(&rows[a]["score"])));
        let got: Vec<usize> =
            scored.as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap() as usize).collect();
        assert_eq!(got[0], want[0], "{query}: best first");
        for r in scored.as_array().unwrap() {
            assert_eq!(r["text"], texts[r["index"].as_u64().unwrap() as usize]);
        }
        assert!(raw[0].get("text").is_none(), "no text unless asked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_rerank_shape_with_top_n_and_documents() {
    let (query, rows) = rerank_groups().remove(0);
    // Strings and {"text"} objects mixed, as LangChain and LlamaIndex send them.
    let documents: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| if i % 2 == 0 { r["text"].clone() } else { json!({"text": r["text"]}) })
        .collect();
    let (s, v) = post(
        "/v1/rerank",
        json!({"model": "tiny-cross-encoder", "query": query, "documents": documents, "top_n": 3, "return_documents": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], CROSS);
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let mut best: Vec<f64> = rows.iter().map(|r| f(&r["score"])).collect();
    best.sort_by(|a, b| b.total_cmp(a));
    for (k, r) in results.iter().enumerate() {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((f(&r["relevance_score"]) - f(&rows[i]["score"])).abs() <= 1e-4, "{r}");
        assert!((f(&r["relevance_score"]) - best[k]).abs() <= 1e-4, "the top 3, in order: {r}");
        assert_eq!(r["document"]["text"], rows[i]["text"]);
    }
    let (s, v) = post("/v1/rerank", json!({"query": query, "documents": ["a", "b"]})).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["results"][0].get("document").is_none() && v["results"].as_array().unwrap().len() == 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lists_for_openai_and_ollama_clients() {
    let (s, body) = get("/v1/models").await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [TINY, CROSS, CLASSIFIER], "every model, in the order served");
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "akidb-test");
        assert!(m["created"].as_u64().unwrap() > 1_700_000_000, "{m}");
    }
    // Any name that selects a model retrieves it, the Hub id with its slash too.
    for name in [CROSS, "tiny-cross-encoder", "tiny-cross-encoder:latest"] {
        let (s, body) = get(&format!("/v1/models/{name}")).await;
        assert_eq!(s, 200, "{name}: {body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], CROSS);
    }
    let (s, body) = get("/v1/models/gpt-4").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, 404, "{body}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "OpenAI's error shape: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("'gpt-4' is not served here"), "{v}");

    let (s, body) = get("/api/tags").await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, [format!("{TINY}:latest"), format!("{CROSS}:latest"), format!("{CLASSIFIER}:latest")]);
    assert_eq!(v["models"][1]["details"]["family"], "cross-encoder");
    // What Ollama clients send back selects the model.
    let (s, v) = post("/api/embed", json!({"model": names[0], "input": "hello"})).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_legacy_embeddings_route() {
    let (s, v) = post("/api/embeddings", json!({"model": "tiny-bert-cls:latest", "prompt": "green river"})).await;
    assert_eq!(s, 200, "{v}");
    let (_, raw) = post("/api/v1/embed", json!({"inputs": ["green river"], "normalize": false})).await;
    let got: Vec<f32> = v["embedding"].as_array().unwrap().iter().map(|x| f(x) as f32).collect();
    let want: Vec<f32> = raw["embeddings"][0].as_array().unwrap().iter().map(|x| f(x) as f32).collect();
    assert_eq!(got.len(), 32);
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-6), "unnormalized, as Ollama answers there");
    let (s, v) = post("/api/embeddings", json!({"prompt": ""})).await;
    assert_eq!((s, v), (200, json!({"embedding": []})), "an empty prompt: an empty vector");
    let (s, v) = post("/api/embeddings", json!({"model": CROSS, "prompt": "x"})).await;
    assert_error(s, &v, 422, "needs an embedding model");
    let (s, v) = post("/api/embeddings", json!({"input": "x"})).await;
    assert_error(s, &v, 422, "missing field `prompt`");
}

async fn rerank_score(query: &str, text: &str, extra: Value) -> f64 {
    let mut body = json!({"query": query, "texts": [text], "raw_scores": true});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (s, v) = post("/rerank", body).await;
    assert_eq!(s, 200, "{v}");
    f(&v[0]["score"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_v2_rerank_and_its_token_cap() {
    let (query, rows) = rerank_groups().remove(0);
    let documents: Vec<Value> = rows.iter().map(|r| r["text"].clone()).collect();
    let (s, v1) = post("/v1/rerank", json!({"query": query, "documents": documents, "top_n": 2})).await;
    assert_eq!(s, 200, "{v1}");
    let (s, v2) =
        post("/v2/rerank", json!({"model": "tiny-cross-encoder", "query": query, "documents": documents, "top_n": 2}))
            .await;
    assert_eq!(s, 200, "{v2}");
    assert_eq!(v2["results"], v1["results"], "the same ranking as v1");
    assert_eq!(v2["meta"]["api_version"]["version"], "2");
    let (_, again) = post("/v2/rerank", json!({"query": query, "documents": ["a"]})).await;
    assert!(v2["id"].is_string() && again["id"].is_string() && v2["id"] != again["id"], "{v2} {again}");

    // max_tokens_per_doc cuts each document after that many tokens.
    let words = one_token_words(40);
    let (_, t) =
        post("/tokenize", json!({"inputs": words.join(" "), "add_special_tokens": false, "model": CROSS})).await;
    assert_eq!(t[0].as_array().unwrap().len(), 40, "one token per word");
    let (s, capped) =
        post("/v2/rerank", json!({"query": "water", "documents": [words.join(" ")], "max_tokens_per_doc": 10})).await;
    assert_eq!(s, 200, "{capped}");
    let want = rerank_score("water", &words[..10].join(" "), json!({"raw_scores": false})).await;
    assert!((f(&capped["results"][0]["relevance_score"]) - want).abs() <= 1e-5, "{capped} vs {want}");
    let whole = rerank_score("water", &words.join(" "), json!({"raw_scores": false})).await;
    assert!((want - whole).abs() > 1e-6, "the cap changed the score");
    let (s, v) = post("/v2/rerank", json!({"query": "q", "documents": ["a"], "max_tokens_per_doc": 0})).await;
    assert_error(s, &v, 422, "max_tokens_per_doc must be at least 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_and_predict_cut_either_end() {
    // [CLS] water [SEP] + 60 words + [SEP] = the cross-encoder's 64.
    let words = one_token_words(100);
    let long = words.join(" ");
    let right = rerank_score("water", &long, json!({})).await;
    let left = rerank_score("water", &long, json!({"truncation_direction": "Left"})).await;
    assert!((right - rerank_score("water", &words[..60].join(" "), json!({})).await).abs() <= 1e-5);
    assert!((left - rerank_score("water", &words[40..].join(" "), json!({})).await).abs() <= 1e-5);
    assert!((left - right).abs() > 1e-6);

    // [CLS] + 62 words + [SEP] for the classifier.
    let logits = |v: &Value| -> Vec<f64> {
        let mut p: Vec<(String, f64)> =
            v.as_array().unwrap().iter().map(|p| (p["label"].as_str().unwrap().to_string(), f(&p["score"]))).collect();
        p.sort_by(|a, b| a.0.cmp(&b.0));
        p.into_iter().map(|(_, s)| s).collect()
    };
    let (s, cut) = post("/predict", json!({"inputs": long, "raw_scores": true, "truncation_direction": "left"})).await;
    assert_eq!(s, 200, "{cut}");
    let (_, tail) = post("/predict", json!({"inputs": words[38..].join(" "), "raw_scores": true})).await;
    let (a, b) = (logits(&cut), logits(&tail));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5), "{cut} vs {tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_matches_the_classifier_reference_in_every_input_form() {
    let rows = jsonl("tiny-bert-classifier");
    let check = |predictions: &Value, row: &Value, field: &str, tolerance: f64| {
        let predictions = predictions.as_array().expect("a list of predictions");
        assert_eq!(predictions.len(), 3);
        if field == "probabilities" {
            assert_eq!(predictions[0]["label"], row["label"], "best label first: {}", row["text"]);
        }
        for pair in predictions.windows(2) {
            assert!(f(&pair[0]["score"]) >= f(&pair[1]["score"]));
        }
        for p in predictions {
            let i = ["negative", "neutral", "positive"].iter().position(|l| p["label"] == *l).expect("a known label");
            let want = f(&row[field][i]);
            assert!((f(&p["score"]) - want).abs() <= tolerance, "{}: {p} vs {want}", row["text"]);
        }
    };
    for row in &rows {
        let (s, v) = post("/predict", json!({"inputs": row["text"]})).await;
        assert_eq!(s, 200, "{v}");
        check(&v, row, "probabilities", 1e-3);
    }
    let batch: Vec<Value> = rows.iter().map(|r| json!([r["text"]])).collect();
    let (s, v) = post("/predict", json!({"inputs": batch[..MAX_INPUTS], "raw_scores": true})).await;
    assert_eq!(s, 200, "{v}");
    for (row, predictions) in rows.iter().zip(v.as_array().expect("a list per input")) {
        check(predictions, row, "logits", 1e-3);
    }
    // A pair through the cross-encoder, chosen by name: sigmoid of the pair's logit.
    let (query, group) = rerank_groups().remove(1);
    let (s, v) = post("/predict", json!({"model": CROSS, "inputs": [query, group[0]["text"]]})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["label"], "LABEL_0");
    assert!((f(&v[0]["score"]) - f(&group[0]["score"])).abs() <= 1e-4, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_routes_pick_the_embedder_and_embed_all_and_similarity_agree_with_embed() {
    let reference = common::reference(TINY);
    let texts: Vec<&str> = reference.iter().take(3).map(|(t, _)| t.as_str()).collect();
    let (s, v) = post("/embed", json!({"inputs": texts})).await;
    assert_eq!(s, 200, "{v}");
    let vectors: Vec<Vec<f32>> =
        v.as_array().unwrap().iter().map(|e| e.as_array().unwrap().iter().map(|x| f(x) as f32).collect()).collect();
    for (got, (_, want)) in vectors.iter().zip(&reference) {
        assert!(cosine(got, want) >= 0.9999);
    }
    // tiny-bert-cls pools the [CLS] token: the first of /embed_all's token vectors.
    let (s, all) = post("/embed_all", json!({"inputs": texts})).await;
    assert_eq!(s, 200, "{all}");
    let (_, tokens) = post("/tokenize", json!({"inputs": texts, "model": TINY})).await;
    for (i, per_token) in all.as_array().unwrap().iter().enumerate() {
        let per_token = per_token.as_array().unwrap();
        assert_eq!(per_token.len(), tokens[i].as_array().unwrap().len().min(64), "one vector per token");
        assert_eq!(per_token[0].as_array().unwrap().len(), 32);
        let cls: Vec<f32> = per_token[0].as_array().unwrap().iter().map(|x| f(x) as f32).collect();
        assert!(cosine(&cls, &vectors[i]) >= 0.99999, "text {i}");
    }
    let (s, sims) =
        post("/similarity", json!({"inputs": {"source_sentence": texts[0], "sentences": [texts[1], texts[2]]}})).await;
    assert_eq!(s, 200, "{sims}");
    for (k, sim) in sims.as_array().unwrap().iter().enumerate() {
        assert!((f(sim) - cosine(&vectors[0], &vectors[k + 1])).abs() < 1e-4, "{sims}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_offsets_are_characters_of_the_input_and_decode_inverts_it() {
    hf_env();
    let repo = ModelRepo::open(CLASSIFIER, None).expect("cached");
    let mut reference = tokenizers::Tokenizer::from_file(repo.file("tokenizer.json").unwrap()).unwrap();
    // The file pads and truncates to 128; /tokenize shows the text's own tokens.
    reference.with_padding(None).with_truncation(None).unwrap();
    let texts = ["héllo wörld — naïve café", "日本語の質問 🙂 ok", &"long text ".repeat(60)];
    let (s, v) = post("/tokenize", json!({"inputs": texts, "model": CLASSIFIER})).await;
    assert_eq!(s, 200, "{v}");
    for (text, tokens) in texts.iter().zip(v.as_array().unwrap()) {
        let want = reference.encode_char_offsets(*text, true).unwrap();
        let tokens = tokens.as_array().unwrap();
        assert_eq!(tokens.len(), want.get_ids().len(), "untruncated: every token of {text:?}");
        let chars: Vec<char> = text.chars().collect();
        for (k, t) in tokens.iter().enumerate() {
            assert_eq!(t["id"], want.get_ids()[k]);
            let special = want.get_special_tokens_mask()[k] == 1;
            assert_eq!(t["special"], special);
            if special {
                assert!(t["start"].is_null() && t["stop"].is_null(), "{t}");
                continue;
            }
            let (start, stop) = want.get_offsets()[k];
            assert_eq!((t["start"].as_u64(), t["stop"].as_u64()), (Some(start as u64), Some(stop as u64)));
            let span: String = chars[start..stop].iter().collect();
            assert_eq!(t["text"], span, "character offsets, not bytes");
        }
    }
    let (s, v) = post("/tokenize", json!({"inputs": "ok", "add_special_tokens": false, "model": CLASSIFIER})).await;
    assert_eq!(s, 200);
    assert!(v[0].as_array().unwrap().iter().all(|t| t["special"] == false));

    let ids: Vec<u32> = reference.encode("naïve café, 日本", true).unwrap().get_ids().to_vec();
    let (s, v) = post("/decode", json!({"ids": ids, "model": CLASSIFIER})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!([reference.decode(&ids, true).unwrap()]));
    let (s, v) = post("/decode", json!({"ids": [ids.clone(), ids], "skip_special_tokens": false})).await;
    assert_eq!(s, 200, "{v}");
    assert!(v[1].as_str().unwrap().starts_with("[CLS]"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_lists_every_model_and_health_waits_for_all() {
    let (s, body) = get("/health").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = get("/info").await;
    assert_eq!(s, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    let models = info["models"].as_array().expect("models");
    let kinds: Vec<&str> = models.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["embedder", "cross-encoder", "classifier"]);
    assert_eq!(models[0]["dimension"], 32);
    assert_eq!(models[2]["labels"], json!(["negative", "neutral", "positive"]));
    assert_eq!(models[1]["labels"], json!(["LABEL_0"]));
    for m in models {
        assert_eq!(m["max_input_length"], 64, "{m}");
        assert_eq!(m["execution_provider"], "CPUExecutionProvider", "{m}");
    }
    assert_eq!(info["model_id"], TINY, "the first model at the top level, as before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_and_wrong_kinds_are_clear_json_errors() {
    let many: Vec<String> = (0..=MAX_INPUTS).map(|i| format!("text {i}")).collect();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/rerank", json!({"query": "q", "texts": []}), 422, "texts must not be empty"),
        ("/rerank", json!({"texts": ["a"]}), 422, "query"),
        ("/rerank", json!({"query": "q", "texts": "a"}), 422, "invalid request"),
        ("/rerank", json!({"query": "q", "texts": many}), 413, "the limit is 32"),
        (
            "/rerank",
            json!({"query": "q", "texts": ["a"], "model": TINY}),
            422,
            "needs a cross-encoder (reranker), but 'akidb-test/tiny-bert-cls' is an embedding model",
        ),
        ("/rerank", json!({"query": "q", "texts": ["a"], "model": CLASSIFIER}), 422, "is a classifier"),
        ("/rerank", json!({"query": "q", "texts": ["a"], "model": "nobody/none"}), 404, "not served here"),
        (
            "/rerank",
            json!({"query": "q", "texts": ["a"], "truncate": false, "raw_scores": false, "model": CROSS, "return_text": false}),
            200,
            "",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": ["word ".repeat(100)], "truncate": false}),
            422,
            "longer than the model's maximum of 64",
        ),
        ("/predict", json!({"inputs": []}), 422, "must not be empty"),
        ("/predict", json!({"inputs": ["a", "b", "c"]}), 422, "a pair of two"),
        ("/predict", json!({"inputs": [["a"], "b"]}), 422, "inputs[1] must be an array"),
        ("/predict", json!({"inputs": [["a"], []]}), 422, "inputs[1] has 0 strings"),
        ("/predict", json!({"inputs": [[1]]}), 422, "inputs[0][0] must be a string"),
        ("/predict", json!({"inputs": {"a": 1}}), 422, "not an object"),
        ("/predict", json!({"inputs": "a", "model": TINY}), 422, "needs a classifier or a cross-encoder"),
        ("/predict", json!({"inputs": many.iter().map(|t| json!([t])).collect::<Vec<_>>()}), 413, "the limit is 32"),
        ("/embed", json!({"inputs": "a", "model": CROSS}), 422, "needs an embedding model, but"),
        ("/embed_all", json!({"inputs": "a", "model": CLASSIFIER}), 422, "is a classifier"),
        ("/similarity", json!({"inputs": {"source_sentence": "a", "sentences": []}}), 422, "must not be empty"),
        ("/similarity", json!({"inputs": {"source_sentence": "a"}}), 422, "sentences"),
        ("/tokenize", json!({"inputs": []}), 422, "must not be empty"),
        ("/tokenize", json!({"inputs": [3]}), 422, "inputs[0] is a number"),
        ("/decode", json!({"ids": [-1]}), 422, "ids[0] must be a token id"),
        ("/decode", json!({"ids": []}), 422, "must not be empty"),
        ("/decode", json!({"ids": "abc"}), 422, "ids must be an array"),
    ];
    for (path, body, status, says) in cases {
        let (s, v) = post(path, body.clone()).await;
        if status == 200 {
            assert_eq!(s, 200, "{path} {body}: {v}");
            continue;
        }
        assert_error(s, &v, status, says);
        assert_eq!(
            v["error_type"],
            if status == 413 {
                "payload_too_large"
            } else if status == 404 {
                "not_found"
            } else {
                "validation"
            }
        );
    }
    // /v1/rerank answers in OpenAI's error shape, as the rest of /v1/.
    for (body, status, says) in [
        (json!({"query": "q", "documents": []}), 422, "documents must not be empty"),
        (json!({"query": "q", "documents": [{"title": "x"}]}), 422, "documents[0] is an object without"),
        (json!({"query": "q", "documents": ["a"], "top_n": 0}), 422, "top_n must be at least 1"),
        (json!({"query": "q", "documents": ["a"], "model": TINY}), 422, "needs a cross-encoder"),
    ] {
        let (s, v) = post("/v1/rerank", body).await;
        assert_error(s, &v, status, says);
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    // Wrong content type and broken JSON, as everywhere.
    let s = ready().await;
    let r = reqwest::Client::new()
        .post(s.url("/rerank"))
        .body("{}")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = reqwest::Client::new()
        .post(s.url("/predict"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // And the server goes on serving.
    let (status, _) = post("/predict", json!({"inputs": "still here"})).await;
    assert_eq!(status, 200);
}

/// Every route the router serves is in the document, and the document passes an OpenAPI
/// validator (openapi-spec-validator, installed by scripts/test.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python with openapi-spec-validator (tool_ tests: scripts/test.sh)"]
async fn tool_openapi_document_covers_every_route_and_validates() {
    let (s, body) = get("/openapi.json").await;
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("/api/v1/embed", "post"),
        ("/embed", "post"),
        ("/embed_all", "post"),
        ("/similarity", "post"),
        ("/v1/embeddings", "post"),
        ("/api/embed", "post"),
        ("/api/embeddings", "post"),
        ("/api/tags", "get"),
        ("/v1/models", "get"),
        ("/v1/models/{model}", "get"),
        ("/rerank", "post"),
        ("/v1/rerank", "post"),
        ("/v2/rerank", "post"),
        ("/predict", "post"),
        ("/tokenize", "post"),
        ("/decode", "post"),
        ("/health", "get"),
        ("/info", "get"),
        ("/metrics", "get"),
    ];
    for (path, method) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing from /openapi.json");
        assert!(op["responses"]["200"].is_object(), "{method} {path}: no 200 response");
        if method == "post" {
            assert!(
                op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                "{path}: no request schema"
            );
            assert!(op["responses"]["422"].is_object(), "{path}: errors undocumented");
        }
    }
    let (s, html) = get("/docs/").await;
    assert_eq!(s, 200);
    assert!(html.to_lowercase().contains("swagger"), "{html}");

    let python = common::tool_python("openapi_spec_validator");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new(python)
        .args(["-c", "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')"])
        .arg(&file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected /openapi.json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn akidb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_akidb"))
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .expect("run akidb")
}

#[test]
fn rerank_and_predict_commands_print_json() {
    let (query, rows) = rerank_groups().remove(2);
    let texts: Vec<&str> = rows.iter().take(5).map(|r| r["text"].as_str().unwrap()).collect();
    let mut args = vec!["rerank", "--model", CROSS, "--query", &query];
    args.extend(&texts);
    let out = akidb(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ranked: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ranked = ranked.as_array().unwrap();
    assert_eq!(ranked.len(), 5);
    for r in ranked {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((f(&r["score"]) - f(&rows[i]["score"])).abs() <= 1e-4, "{r}");
        assert_eq!(r["text"], texts[i]);
    }
    assert!(ranked.windows(2).all(|p| f(&p[0]["score"]) >= f(&p[1]["score"])));

    // From a file, best two.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, texts.join("\n")).unwrap();
    let out =
        akidb(&["rerank", "--model", CROSS, "--query", &query, "--input", file.to_str().unwrap(), "--top-n", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let top: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(top.as_array().unwrap().len(), 2);
    assert_eq!(top[0]["index"], ranked[0]["index"]);

    let rows = jsonl("tiny-bert-classifier");
    let out = akidb(&["predict", "--model", CLASSIFIER, rows[0]["text"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0][0]["label"], rows[0]["label"]);
    assert!(
        (f(&v[0][0]["score"]) - rows[0]["probabilities"].as_array().unwrap().iter().map(f).fold(0.0, f64::max)).abs()
            < 1e-3
    );

    // The wrong kind of model is a clear error, not a crash.
    let out = akidb(&["rerank", "--model", TINY, "--query", "q", "a"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a cross-encoder") && err.contains("embedding model"), "{err}");
    let out = akidb(&["embed", "--model", CROSS, "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`akidb embed` needs an embedding model"));
    let out = akidb(&["embed", "--model", TINY, "--model", CROSS, "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only `akidb serve` takes several"));
}

/// The real binary with `--model` repeated: the RAG setup the README shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_takes_several_models() {
    let (mut child, base) = common::server::spawn_binary(&["--model", TINY, "--model", CROSS]);
    common::server::wait_healthy(&base).await;
    let client = reqwest::Client::new();
    let embed: Value =
        client.post(format!("{base}/embed")).json(&json!({"inputs": "a"})).send().await.unwrap().json().await.unwrap();
    let rerank: Value = client
        .post(format!("{base}/rerank"))
        .json(&json!({"query": "q", "texts": ["a", "b"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(embed[0].as_array().unwrap().len(), 32, "{embed}");
    assert_eq!(rerank.as_array().unwrap().len(), 2, "{rerank}");
}
