//! Sparse vectors, compact outputs and Cohere's embed API (issue #26, parts 1–3), over real HTTP
//! and through the real binary: a SPLADE model's sparse vectors against sentence-transformers'
//! `SparseEncoder`, `ubinary`/`binary` against the float vectors' own bits, Cohere's routes
//! against the native one, and the 422s a client gets for what a model does not serve.

use crate::common;

use std::{sync::OnceLock, time::Duration};

use akidb_server::ServerConfig;
use common::{akidb, cosine, server::TestServer, shared_dir, TINY};
use serde_json::{json, Value};

const SPLADE: &str = "akidb-test/tiny-splade";
/// e5-style prompts `query: ` and `passage: `, for Cohere's `input_type`.
const XLMR: &str = "akidb-test/tiny-xlm-roberta";

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::start_models(&[TINY, SPLADE, XLMR], ServerConfig::default(), Duration::ZERO))
}

async fn post(path: &str, body: Value) -> (u16, Value) {
    common::post_json(server(), path, &body).await
}

async fn ok(path: &str, body: Value) -> Value {
    let (status, v) = post(path, body.clone()).await;
    assert_eq!(status, 200, "{path} {body}: {v}");
    v
}

async fn refused(path: &str, body: Value, says: &[&str]) {
    let (status, v) = post(path, body.clone()).await;
    assert_eq!(status, 422, "{path} {body}: {v}");
    let message = v["error"].as_str().or_else(|| v["error"]["message"].as_str()).unwrap_or_default();
    for s in says {
        assert!(message.contains(s), "{path} {body}: expected '{s}' in {v}");
    }
}

/// `(text, [(index, value)])` rows of the SPLADE references.
fn sparse_reference() -> Vec<(String, Vec<(u32, f32)>)> {
    let path = shared_dir().join("reference/tiny-splade.dev.jsonl");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["text"].as_str().unwrap().to_string(), entries(&v["sparse"]))
        })
        .collect()
}

/// `[{"index", "value"}]` as pairs.
fn entries(v: &Value) -> Vec<(u32, f32)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a sparse list: {v}"))
        .iter()
        .map(|e| (e["index"].as_u64().expect("index") as u32, e["value"].as_f64().expect("value") as f32))
        .collect()
}

/// The issue's rule: values to 1e-4 absolute, and the same indices apart from values within 1e-4
/// of zero (which either side may have dropped).
fn assert_sparse_matches(what: &str, got: &[Vec<(u32, f32)>], want: &[(String, Vec<(u32, f32)>)]) {
    assert_eq!(got.len(), want.len(), "{what}: one vector per text");
    for (i, (g, (text, w))) in got.iter().zip(want).enumerate() {
        assert!(g.windows(2).all(|p| p[0].0 < p[1].0), "{what}: row {i} is sorted by index");
        assert!(g.iter().all(|&(_, v)| v > 0.0), "{what}: row {i} holds no zeros");
        let lookup = |row: &[(u32, f32)], index: u32| row.iter().find(|e| e.0 == index).map_or(0.0, |e| e.1);
        for &(index, _) in g.iter().chain(w) {
            let (a, b) = (lookup(g, index), lookup(w, index));
            assert!((a - b).abs() <= 1e-4, "{what}: row {i} ({text:?}) index {index}: {a} vs {b}");
        }
        let significant = |row: &[(u32, f32)]| row.iter().filter(|e| e.1 > 1e-4).map(|e| e.0).collect::<Vec<_>>();
        assert_eq!(significant(g), significant(w), "{what}: row {i} ({text:?}) indices");
        assert!(!w.is_empty() && g.len() >= 20, "{what}: row {i} has {} entries", g.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_sparse_matches_sentence_transformers() {
    let want = sparse_reference();
    let texts: Vec<&str> = want.iter().map(|(t, _)| t.as_str()).collect();
    let got = ok("/embed_sparse", json!({"inputs": texts})).await;
    let rows: Vec<Vec<(u32, f32)>> = got.as_array().unwrap().iter().map(entries).collect();
    assert_sparse_matches("/embed_sparse", &rows, &want);
    // One at a time (no padding) gives the same rows as the padded batch.
    for (i, (text, _)) in want.iter().enumerate().step_by(7) {
        let one = ok("/embed_sparse", json!({"inputs": text})).await;
        assert_eq!(entries(&one[0]), rows[i], "row {i} alone");
    }
    // TEI's bare address serves a sparse model's vectors too.
    assert_eq!(ok("/", json!({"model": SPLADE, "inputs": texts[0]})).await[0], got[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_top_k_keeps_the_largest_weights() {
    let text = sparse_reference().remove(3).0;
    let all = entries(&ok("/embed_sparse", json!({"inputs": text})).await[0]);
    let top = entries(&ok("/embed_sparse", json!({"inputs": text, "top_k": 5})).await[0]);
    let mut largest = all.clone();
    largest.sort_by(|a, b| b.1.total_cmp(&a.1));
    largest.truncate(5);
    largest.sort_by_key(|e| e.0);
    assert_eq!(top, largest, "the 5 largest of {} entries, by index", all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_names_what_the_model_it_cannot_use_serves() {
    refused("/embed_sparse", json!({"model": TINY, "inputs": "x"}), &["sparse embedding model", "/embed,"]).await;
    refused("/embed", json!({"model": SPLADE, "inputs": "x"}), &["an embedding model", "/embed_sparse"]).await;
    refused("/v1/embeddings", json!({"model": SPLADE, "input": "x"}), &["/embed_sparse"]).await;
    refused("/v2/embed", json!({"model": SPLADE, "texts": ["x"], "input_type": "search_query"}), &["/embed_sparse"])
        .await;
    // Without a model named, each route takes the first model of its kind.
    assert!(ok("/embed_sparse", json!({"inputs": "x"})).await[0].is_array());
    assert!(ok("/embed", json!({"inputs": "x"})).await[0].is_array());
}

/// `numpy.packbits(v > 0)`, written out here so the test does not share the server's code.
fn packbits(v: &[f32]) -> Vec<i64> {
    let mut out = vec![0i64; v.len().div_ceil(8)];
    for (i, &x) in v.iter().enumerate() {
        if x > 0.0 {
            out[i / 8] |= 1 << (7 - i % 8);
        }
    }
    out
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|x| x.as_i64().expect("integer")).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_encodings_are_the_float_vectors_bits() {
    let texts = ["binary vectors cut storage", "a second text", "x"];
    let float = ok("/api/v1/embed", json!({"inputs": texts})).await;
    let ubinary = ok("/api/v1/embed", json!({"inputs": texts, "encoding_format": "ubinary"})).await;
    let binary = ok("/api/v1/embed", json!({"inputs": texts, "encoding_format": "binary"})).await;
    let base64 = ok("/api/v1/embed", json!({"inputs": texts, "encoding_format": "base64"})).await;
    for i in 0..texts.len() {
        let v = floats(&float["embeddings"][i]);
        let bits = packbits(&v);
        assert_eq!(bits.len(), 4, "32 dimensions in 4 bytes");
        assert_eq!(ints(&ubinary["embeddings"][i]), bits, "text {i}: ubinary");
        assert_eq!(ints(&binary["embeddings"][i]), bits.iter().map(|b| b - 128).collect::<Vec<_>>(), "text {i}");
        let bytes = base64_decode(base64["embeddings"][i].as_str().expect("a string"));
        let decoded: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(decoded, v, "text {i}: base64 of the little-endian floats");
    }
    refused("/api/v1/embed", json!({"inputs": "x", "encoding_format": "int4"}), &["float, base64, ubinary, binary"])
        .await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).expect("base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_embed_answers_as_the_native_route_with_the_models_prompts() {
    let texts = ["what is vector search", "akidb embeds text"];
    let native = |prompt: Option<&str>| json!({"model": XLMR, "inputs": texts, "prompt_name": prompt});
    let query = ok("/api/v1/embed", native(Some("query"))).await["embeddings"].clone();
    let passage = ok("/api/v1/embed", native(Some("passage"))).await["embeddings"].clone();
    let plain = ok("/api/v1/embed", native(None)).await["embeddings"].clone();

    // v1 without embedding_types: Cohere's `embeddings_floats`.
    let v1 = ok("/v1/embed", json!({"model": XLMR, "texts": texts, "input_type": "search_query"})).await;
    assert_eq!(v1["response_type"], "embeddings_floats", "{v1}");
    assert_eq!(v1["embeddings"], query, "search_query is the model's `query` prompt");
    assert_eq!(v1["texts"], json!(texts));
    assert_eq!(v1["meta"]["api_version"]["version"], "1");
    assert!(v1["meta"]["billed_units"]["input_tokens"].as_u64().unwrap() > 4, "{v1}");
    let v1 = ok("/v1/embed", json!({"model": XLMR, "texts": texts, "input_type": "search_document"})).await;
    assert_eq!(v1["embeddings"], passage, "search_document is the model's `passage` prompt");
    let v1 = ok("/v1/embed", json!({"model": XLMR, "texts": texts, "input_type": "clustering"})).await;
    assert_eq!(v1["embeddings"], plain, "no clustering prompt: none");

    // By type, in v1 and v2 alike.
    for path in ["/v1/embed", "/v2/embed"] {
        let body = json!({"model": XLMR, "texts": texts, "input_type": "search_query",
            "embedding_types": ["float", "ubinary", "binary", "base64"]});
        let by_type = ok(path, body).await;
        assert_eq!(by_type["response_type"], "embeddings_by_type", "{path}");
        assert_eq!(by_type["embeddings"]["float"], query, "{path}");
        for i in 0..texts.len() {
            let bits = packbits(&floats(&query[i]));
            assert_eq!(ints(&by_type["embeddings"]["ubinary"][i]), bits, "{path}");
            assert_eq!(ints(&by_type["embeddings"]["binary"][i]), bits.iter().map(|b| b - 128).collect::<Vec<_>>());
            assert_eq!(base64_decode(by_type["embeddings"]["base64"][i].as_str().unwrap()).len(), 4 * 48);
        }
    }
    // v2: float by default; output_dimension cuts and re-normalizes; inputs of one text each.
    let v2 = ok("/v2/embed", json!({"model": XLMR, "texts": texts, "input_type": "search_query"})).await;
    assert_eq!(v2["embeddings"]["float"], query);
    assert_eq!(v2["meta"]["api_version"]["version"], "2");
    let short =
        ok("/v2/embed", json!({"model": XLMR, "texts": texts, "input_type": "search_query", "output_dimension": 16}))
            .await;
    let cut = floats(&short["embeddings"]["float"][0]);
    assert_eq!(cut.len(), 16);
    assert!((common::norm(&cut) - 1.0).abs() < 1e-5);
    assert!(cosine(&cut, &floats(&query[0])[..16]) > 0.99999);
    let inputs: Vec<Value> = texts.iter().map(|t| json!({"content": [{"type": "text", "text": t}]})).collect();
    let v2 = ok("/v2/embed", json!({"model": XLMR, "inputs": inputs, "input_type": "search_query"})).await;
    assert_eq!(v2["embeddings"]["float"], query);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_truncate_max_tokens_and_what_is_refused() {
    let long: String = (0..200).map(|i| format!("w{i} ")).collect();
    let native = |side: &str| json!({"model": XLMR, "inputs": [long], "truncation_direction": side});
    let end = ok("/api/v1/embed", native("Right")).await["embeddings"].clone();
    let start = ok("/api/v1/embed", native("Left")).await["embeddings"].clone();
    assert_ne!(end, start);
    let cohere = |truncate: &str| json!({"model": XLMR, "texts": [long], "truncate": truncate});
    assert_eq!(ok("/v1/embed", cohere("END")).await["embeddings"], end);
    assert_eq!(ok("/v1/embed", cohere("START")).await["embeddings"], start);
    refused("/v1/embed", cohere("NONE"), &["longer than the model's maximum"]).await;
    refused("/v1/embed", cohere("MIDDLE"), &["NONE, START or END"]).await;

    // max_tokens cuts each text after that many tokens: the same as sending the cut text.
    let text = "one two three four five six";
    let tokens = ok("/tokenize", json!({"model": XLMR, "inputs": text, "add_special_tokens": false})).await;
    assert!(tokens[0].as_array().unwrap().len() > 3, "the text is longer than 3 tokens: {tokens}");
    let stop = tokens[0][2]["stop"].as_u64().expect("stop") as usize;
    let prefix: String = text.chars().take(stop).collect();
    let cut = ok("/v2/embed", json!({"model": XLMR, "texts": [text], "max_tokens": 3})).await;
    let want = ok("/v2/embed", json!({"model": XLMR, "texts": [prefix]})).await;
    assert_eq!(cut["embeddings"], want["embeddings"], "cut after {prefix:?}");
    assert_eq!(cut["texts"], json!([text]), "the texts are echoed as sent");

    for (path, body, says) in [
        ("/v2/embed", json!({"model": XLMR, "texts": ["x"], "embedding_types": ["int8"]}), "calibration"),
        (
            "/v2/embed",
            json!({"model": XLMR, "texts": ["x"], "embedding_types": ["float16"]}),
            "float, base64, ubinary, binary",
        ),
        ("/v2/embed", json!({"model": XLMR, "texts": ["x"], "input_type": "search"}), "search_query, search_document"),
        ("/v2/embed", json!({"model": XLMR, "texts": ["x"], "output_dimension": 4096}), "between 1 and the model's 48"),
        (
            "/v2/embed",
            json!({"model": XLMR, "texts": ["x"], "images": ["data:image/png;base64,AA=="]}),
            "akidb embeds text",
        ),
        ("/v2/embed", json!({"model": XLMR, "texts": ["x"], "priority": 5}), "priority"),
        ("/v2/embed", json!({"model": XLMR, "texts": ["x"], "dimensions": 8}), "dimensions"),
        ("/v1/embed", json!({"model": XLMR, "texts": ["x"], "output_dimension": 8}), "/v2/embed"),
        ("/v1/embed", json!({"model": XLMR, "texts": []}), "must not be empty"),
    ] {
        refused(path, body, &[says]).await;
    }
}

fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run akidb");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn jsonl_rows(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `akidb embed` with a sparse model: one-shot and over a corpus, in small batches of mixed lengths
/// (padding must be masked out), against the references; `--sparse-top-k` prunes; flags that do
/// not fit the model are refused before anything is written.
#[test]
fn the_cli_writes_sparse_vectors_and_packed_bits() {
    let want = sparse_reference();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    let lines: String = want.iter().map(|(t, _)| format!("{}\n", json!({"text": t}))).collect();
    std::fs::write(&input, lines).unwrap();
    let small = ["--max-batch-tokens", "40", "--max-batch-size", "4", "-q"];

    let out = dir.path().join("sparse.jsonl");
    run_ok(akidb().args(["embed", "--model", SPLADE, "-i"]).arg(&input).arg("-o").arg(&out).args(small));
    let rows: Vec<Vec<(u32, f32)>> = jsonl_rows(&out).iter().map(|r| entries(&r["embedding"])).collect();
    assert_sparse_matches("corpus JSON Lines", &rows, &want);

    let texts: Vec<&str> = want.iter().map(|(t, _)| t.as_str()).take(5).collect();
    let one_shot: Value =
        serde_json::from_str(&run_ok(akidb().args(["embed", "--model", SPLADE]).args(texts.clone()))).unwrap();
    let one_shot: Vec<Vec<(u32, f32)>> = one_shot["embeddings"].as_array().unwrap().iter().map(entries).collect();
    assert_eq!(one_shot, rows[..5], "one-shot and corpus agree");

    let top: Value =
        serde_json::from_str(&run_ok(akidb().args(["embed", "--model", SPLADE, "--sparse-top-k", "4"]).args(texts)))
            .unwrap();
    for (i, row) in top["embeddings"].as_array().unwrap().iter().enumerate() {
        let mut largest = rows[i].clone();
        largest.sort_by(|a, b| b.1.total_cmp(&a.1));
        largest.truncate(4);
        largest.sort_by_key(|e| e.0);
        assert_eq!(entries(row), largest, "text {i}: the 4 largest");
    }

    // Dense vectors packed into bits: the float run's signs, 8 per byte.
    let float = dir.path().join("float.jsonl");
    run_ok(akidb().args(["embed", "--model", TINY, "-i"]).arg(&input).arg("-o").arg(&float).arg("-q"));
    for (dtype, offset) in [("ubinary", 0), ("binary", 128)] {
        let packed = dir.path().join(format!("{dtype}.jsonl"));
        run_ok(
            akidb()
                .args(["embed", "--model", TINY, "--output-dtype", dtype, "-i"])
                .arg(&input)
                .arg("-o")
                .arg(&packed)
                .arg("-q"),
        );
        for (f, p) in jsonl_rows(&float).iter().zip(jsonl_rows(&packed)) {
            let bits: Vec<i64> = packbits(&floats(&f["embedding"])).into_iter().map(|b| b - offset).collect();
            assert_eq!(ints(&p["embedding"]), bits, "{dtype} row {}", f["index"]);
        }
    }

    for (args, says) in [
        (vec!["--model", SPLADE, "-o", "x.npy"], "not .npy"),
        (vec!["--model", SPLADE, "--output-dtype", "ubinary", "-o", "x.jsonl"], "sparse model writes"),
        (vec!["--model", TINY, "--sparse-top-k", "3", "-o", "x.jsonl"], "needs a sparse (SPLADE) model"),
        (vec!["--model", TINY, "--output-dtype", "int8", "-o", "x.jsonl"], "int8"),
    ] {
        let out = akidb().current_dir(dir.path()).arg("embed").arg("-i").arg(&input).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
        assert!(!dir.path().join("x.jsonl").exists() && !dir.path().join("x.npy").exists(), "{args:?} wrote nothing");
    }
}

/// The Parquet and `.npy` outputs read back by pyarrow and numpy: `ubinary` is exactly
/// `numpy.packbits(float > 0, axis=-1)` and `binary` that minus 128 as int8; a sparse model's
/// Parquet column is a list of `{index, value}` structs, and an interrupted sparse run resumes.
#[test]
#[ignore = "needs Python with pyarrow and numpy (tool_ tests: scripts/test.sh)"]
fn tool_numpy_and_pyarrow_read_packed_and_sparse_outputs() {
    let python = common::tool_python("pyarrow, numpy");
    let want = sparse_reference();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    let lines: String = want.iter().map(|(t, _)| format!("{}\n", json!({"text": t}))).collect();
    std::fs::write(&input, lines).unwrap();
    let out = |name: &str| dir.path().join(name);
    run_ok(akidb().args(["embed", "--model", TINY, "-i"]).arg(&input).arg("-o").arg(out("float.npy")).arg("-q"));
    for (dtype, ext) in [("ubinary", "npy"), ("binary", "npy"), ("ubinary", "parquet"), ("binary", "parquet")] {
        let name = format!("{dtype}.{ext}");
        run_ok(
            akidb()
                .args(["embed", "--model", TINY, "--output-dtype", dtype, "-i"])
                .arg(&input)
                .arg("-o")
                .arg(out(&name))
                .arg("-q"),
        );
    }
    run_ok(akidb().args(["embed", "--model", SPLADE, "-i"]).arg(&input).arg("-o").arg(out("sparse.parquet")).arg("-q"));
    let script = r#"
import json, sys
import numpy as np, pyarrow.parquet as pq
d = sys.argv[1]
f = np.load(f"{d}/float.npy")
bits = np.packbits(f > 0, axis=-1)
u, b = np.load(f"{d}/ubinary.npy"), np.load(f"{d}/binary.npy")
assert u.dtype == np.uint8 and b.dtype == np.int8 and u.shape == (f.shape[0], 4), (u.dtype, b.dtype, u.shape)
assert (u == bits).all() and (b == (bits.astype(np.int16) - 128).astype(np.int8)).all()
for name, want in [("ubinary", bits), ("binary", (bits.astype(np.int16) - 128).astype(np.int8))]:
    t = pq.read_table(f"{d}/{name}.parquet")
    col = np.array(t.column("embedding").to_pylist(), dtype=want.dtype)
    assert (col == want).all(), name
    print(name, t.schema.field("embedding").type, file=sys.stderr)
t = pq.read_table(f"{d}/sparse.parquet")
print(json.dumps({"type": str(t.schema.field("embedding").type),
                  "rows": [[[e["index"], e["value"]] for e in r] for r in t.column("embedding").to_pylist()]}))
"#;
    let run = std::process::Command::new(python).args(["-c", script]).arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("ubinary fixed_size_list<item: uint8 not null>[4]"), "{stderr}");
    assert!(stderr.contains("binary fixed_size_list<item: int8 not null>[4]"), "{stderr}");
    let got: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(got["type"], "list<item: struct<index: uint32 not null, value: float not null> not null>");
    let rows: Vec<Vec<(u32, f32)>> = got["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32))
                .collect()
        })
        .collect();
    assert_sparse_matches("sparse Parquet", &rows, &want);
}

/// The official `cohere` client (`Client` for v1, `ClientV2`) and the `ollama` client against a
/// real server: Cohere's `input_type` reaches the model's prompts and its `embedding_types` come
/// back as the client's types; Ollama's `embed` (with `dimensions`), `embeddings` and `show`
/// answer; an unsupported embedding type is the client's error naming the supported ones.
#[test]
#[ignore = "needs the cohere and ollama Python clients (tool_ tests: scripts/test.sh)"]
fn tool_cohere_and_ollama_python_clients() {
    let python = common::tool_python("cohere, ollama");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let texts = ["what is vector search", "akidb embeds text"];
    let native = |prompt: Option<&str>| json!({"model": XLMR, "inputs": texts, "prompt_name": prompt});
    let query = runtime.block_on(ok("/api/v1/embed", native(Some("query"))))["embeddings"].clone();
    let passage = runtime.block_on(ok("/api/v1/embed", native(Some("passage"))))["embeddings"].clone();
    let script = r#"
import json, sys
import cohere, ollama
base, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
v1 = cohere.Client(api_key="unused", base_url=base)
r = v1.embed(texts=texts, model=model, input_type="search_query")
out["v1_type"], out["v1"] = type(r).__name__, r.embeddings
r = v1.embed(texts=texts, model=model, input_type="search_document", embedding_types=["float", "ubinary"])
out["v1_by_type"] = {"float": r.embeddings.float_, "ubinary": r.embeddings.ubinary}
v2 = cohere.ClientV2(api_key="unused", base_url=base)
r = v2.embed(texts=texts, model=model, input_type="search_query", embedding_types=["float", "binary"], output_dimension=16)
out["v2"] = {"float": r.embeddings.float_, "binary": r.embeddings.binary, "tokens": r.meta.billed_units.input_tokens}
try:
    v2.embed(texts=texts, model=model, input_type="search_query", embedding_types=["int8"])
    out["int8"] = "accepted"
except cohere.errors.UnprocessableEntityError as e:
    out["int8"] = e.body["error"]["message"]
o = ollama.Client(host=base)
out["ollama"] = o.embed(model=model, input=texts, dimensions=8).embeddings
out["ollama_legacy"] = o.embeddings(model=model, prompt=texts[0]).embedding
out["ollama_show"] = o.show(model).modelinfo
print(json.dumps(out))
"#;
    let s = server();
    runtime.block_on(s.wait_healthy());
    let run = std::process::Command::new(python)
        .args(["-c", script])
        .arg(s.url(""))
        .arg(XLMR)
        .arg(serde_json::to_string(&texts).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let got: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let close = |a: &Value, b: &Value| cosine(&floats(a), &floats(b)) > 0.99999;
    assert_eq!(got["v1_type"], "EmbeddingsFloatsEmbedResponse");
    for i in 0..texts.len() {
        assert!(close(&got["v1"][i], &query[i]), "v1 search_query is the query prompt");
        assert!(close(&got["v1_by_type"]["float"][i], &passage[i]), "search_document is the passage prompt");
        assert_eq!(ints(&got["v1_by_type"]["ubinary"][i]), packbits(&floats(&passage[i])));
        let cut = floats(&got["v2"]["float"][i]);
        assert_eq!(cut.len(), 16);
        assert!(cosine(&cut, &floats(&query[i])[..16]) > 0.99999, "v2 output_dimension");
        let bits: Vec<i64> = packbits(&cut).into_iter().map(|b| b - 128).collect();
        assert_eq!(ints(&got["v2"]["binary"][i]), bits);
        let short = floats(&got["ollama"][i]);
        assert_eq!(short.len(), 8, "ollama dimensions");
    }
    assert!(got["v2"]["tokens"].as_f64().unwrap() > 4.0);
    let int8 = got["int8"].as_str().unwrap();
    assert!(int8.contains("float, base64, ubinary, binary"), "{int8}");
    assert_eq!(got["ollama_legacy"].as_array().unwrap().len(), 48);
    assert_eq!(got["ollama_show"]["xlm-roberta.embedding_length"], 48, "{}", got["ollama_show"]);
}

/// The tiny SPLADE model's files copied into `dir` (a local-directory model a test may change).
fn copy_splade_to(dir: &std::path::Path) {
    let files = [
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "1_SpladePooling/config.json",
        "onnx/model.onnx",
    ];
    common::copy_model_to(SPLADE, &files, dir);
}

/// A SPLADE model akidb cannot run exactly is refused at load, naming what it lacks; its own
/// `max_active_dims` prunes by default.
#[test]
fn splade_models_akidb_cannot_run_exactly_are_refused_by_name() {
    let embed =
        |dir: &std::path::Path| akidb().args(["embed", "--model", dir.to_str().unwrap(), "a text"]).output().unwrap();
    let refused = |dir: &std::path::Path, says: &str| {
        let out = embed(dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "expected '{says}': {stderr}");
    };
    let dir = tempfile::tempdir().unwrap();
    copy_splade_to(dir.path());
    let pooling = dir.path().join("1_SpladePooling/config.json");
    std::fs::write(&pooling, r#"{"pooling_strategy": "mean", "activation_function": "relu"}"#).unwrap();
    refused(dir.path(), "unsupported SpladePooling pooling_strategy 'mean'; akidb supports max and sum");
    std::fs::write(&pooling, r#"{"pooling_strategy": "max", "activation_function": "softplus"}"#).unwrap();
    refused(dir.path(), "activation_function 'softplus'");
    std::fs::write(&pooling, r#"{"pooling_strategy": "max", "activation_function": "relu"}"#).unwrap();

    // Its own pruning applies when the request names none.
    let st = dir.path().join("config_sentence_transformers.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&st).unwrap()).unwrap();
    config["max_active_dims"] = json!(3);
    std::fs::write(&st, config.to_string()).unwrap();
    let out = embed(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["embeddings"][0].as_array().unwrap().len(), 3, "max_active_dims 3: {v}");

    // The transformer without its MLM head: hidden states, not vocabulary logits.
    common::copy_model_to(TINY, &["onnx/model.onnx"], dir.path());
    refused(dir.path(), "masked-LM head's logits [batch, tokens, 2000]");

    // A SpladePooling without the MLM transformer it pools.
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": "sentence_transformers.sparse_encoder.models.SpladePooling"}]"#,
    )
    .unwrap();
    refused(dir.path(), "needs both an MLMTransformer and a SpladePooling module");
}
