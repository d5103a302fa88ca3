//! `akidb embed --input/--output` end to end: the real binary and models, files in every format,
//! streaming, resume after SIGKILL, flat memory, the progress bar on a pseudo-terminal, bad input.

use crate::common;

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use arrow_array::{Array, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use common::{akidb, cosine, hf_home, reference, MINILM, TINY};
use parquet::arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter};
use serde_json::Value;

fn embed(model: &str, args: &[&str]) -> Output {
    akidb().args(["embed", "--model", model]).args(args).output().expect("run akidb")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "akidb failed: {stderr}");
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One output row: index, id (as JSON) and the vector.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    index: u64,
    id: Option<Value>,
    embedding: Vec<f32>,
}

fn read_jsonl(path: &Path) -> Vec<Row> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            Row {
                index: v["index"].as_u64().expect("index"),
                id: v.get("id").cloned(),
                embedding: v["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect(),
            }
        })
        .collect()
}

/// Reads a Parquet output with the Rust arrow reader and checks its schema.
fn read_parquet(path: &Path, dim: usize) -> Vec<Row> {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        let emb_field = schema.field_with_name("embedding").unwrap();
        match emb_field.data_type() {
            DataType::FixedSizeList(item, n) => {
                assert_eq!(*n as usize, dim);
                assert_eq!(item.data_type(), &DataType::Float32);
            }
            other => panic!("embedding is {other}"),
        }
        let index = batch.column_by_name("index").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap().clone();
        let emb =
            batch.column_by_name("embedding").unwrap().as_any().downcast_ref::<FixedSizeListArray>().unwrap().clone();
        let ids = batch.column_by_name("id").cloned();
        for i in 0..batch.num_rows() {
            let values = emb.value(i);
            let values = values.as_any().downcast_ref::<Float32Array>().unwrap();
            let id = ids.as_ref().map(|col| {
                if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
                    Value::from(a.value(i))
                } else {
                    Value::from(col.as_any().downcast_ref::<StringArray>().expect("string ids").value(i))
                }
            });
            rows.push(Row { index: index.value(i), id, embedding: values.values().to_vec() });
        }
    }
    rows
}

/// Reads a `.npy` written by akidb: little-endian float32, C order, `[N, dim]`.
fn read_npy(path: &Path) -> Vec<Vec<f32>> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let dims: Vec<usize> = shape.split(',').map(|d| d.trim().parse().unwrap()).collect();
    let data = &bytes[10 + header_len..];
    assert_eq!(data.len(), dims[0] * dims[1] * 4, "data length matches the header shape");
    data.chunks_exact(dims[1] * 4)
        .map(|row| row.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        .collect()
}

/// Writes a Parquet input with a `text` column and an integer `doc_id` column.
fn write_parquet_input(path: &Path, texts: &[String], ids: &[i64]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(StringArray::from(texts.to_vec()))],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn write_jsonl_input(path: &Path, texts: &[String]) {
    let mut f = fs::File::create(path).unwrap();
    for (i, t) in texts.iter().enumerate() {
        writeln!(f, "{}", serde_json::json!({"text": t, "doc": format!("doc-{i}"), "extra": [1, 2]})).unwrap();
    }
}

/// What pyarrow/numpy read from an output: row count, columns and the vectors.
fn python_read(python: &Path, path: &Path) -> Value {
    let script = r#"
import json, sys
path = sys.argv[1]
if path.endswith(".npy"):
    import numpy as np
    a = np.load(path)
    print(json.dumps({"dtype": str(a.dtype), "shape": list(a.shape), "vectors": a.tolist()}))
else:
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    emb = t.column("embedding")
    print(json.dumps({"columns": t.column_names, "type": str(t.schema.field("embedding").type),
                      "vectors": emb.to_pylist(), "index": t.column("index").to_pylist(),
                      "id": t.column("id").to_pylist() if "id" in t.column_names else None}))
"#;
    let out = Command::new(python).args(["-c", script, s(path)]).output().expect("run python");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

fn assert_matches_reference(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let c = cosine(g, w);
        assert!(c >= 0.9999, "{what}: row {i} cosine {c}");
    }
}

type Case<'a> = (&'a Path, Option<&'a str>, Vec<Vec<f32>>);

#[test]
fn every_input_and_output_format_matches_the_reference_vectors() {
    formats_match_the_reference(None);
}

/// The same, each Parquet and .npy output also read by pyarrow and numpy.
#[test]
#[ignore = "needs Python with pyarrow and numpy (tool_ tests: scripts/test.sh)"]
fn tool_python_reads_every_output_as_akidb_wrote_it() {
    formats_match_the_reference(Some(&common::tool_python("pyarrow, numpy")));
}

fn formats_match_the_reference(python: Option<&Path>) {
    let rows = reference(MINILM);
    let dir = tempfile::tempdir().unwrap();
    // Plain text holds one text per line, so it gets the references without line breaks.
    let line_rows: Vec<_> = rows.iter().filter(|(t, _)| !t.contains(['\n', '\r']) && !t.is_empty()).collect();
    let txt = dir.path().join("corpus.txt");
    fs::write(&txt, line_rows.iter().map(|(t, _)| format!("{t}\n")).collect::<String>()).unwrap();
    let all_texts: Vec<String> = rows.iter().map(|(t, _)| t.clone()).collect();
    let jsonl = dir.path().join("corpus.jsonl");
    write_jsonl_input(&jsonl, &all_texts);
    let parquet = dir.path().join("corpus.parquet");
    let int_ids: Vec<i64> = (0..rows.len() as i64).map(|i| 1000 + i).collect();
    write_parquet_input(&parquet, &all_texts, &int_ids);
    // (input, id field, expected vectors)
    let inputs: [Case; 3] = [
        (txt.as_path(), None, line_rows.iter().map(|(_, e)| e.clone()).collect()),
        (jsonl.as_path(), Some("doc"), rows.iter().map(|(_, e)| e.clone()).collect()),
        (parquet.as_path(), Some("doc_id"), rows.iter().map(|(_, e)| e.clone()).collect()),
    ];
    let want_id = |input: &Path, i: usize| -> Option<Value> {
        match input.extension().unwrap().to_str().unwrap() {
            "jsonl" => Some(Value::from(format!("doc-{i}"))),
            "parquet" => Some(Value::from(1000 + i as i64)),
            _ => None,
        }
    };
    for (input, id_field, want) in &inputs {
        for ext in ["jsonl", "parquet", "npy"] {
            let stem = input.extension().unwrap().to_str().unwrap();
            let out = dir.path().join(format!("{stem}-out.{ext}"));
            let mut args = vec!["--input", s(input), "--output", s(&out)];
            let carry_ids = id_field.is_some() && ext != "npy";
            if carry_ids {
                args.extend(["--id-field", id_field.unwrap()]);
            }
            let stderr = ok(&embed(MINILM, &args));
            assert!(stderr.contains(&format!("embedded {} texts", want.len())), "summary: {stderr}");
            let what = format!("{stem} → {ext}");
            let (vectors, ids): (Vec<Vec<f32>>, Vec<Option<Value>>) = match ext {
                "jsonl" => read_jsonl(&out).into_iter().map(|r| (r.embedding, r.id)).unzip(),
                "parquet" => read_parquet(&out, 384).into_iter().map(|r| (r.embedding, r.id)).unzip(),
                _ => (read_npy(&out), vec![None; want.len()]),
            };
            assert_matches_reference(&vectors, want, &what);
            for (i, id) in ids.iter().enumerate() {
                let expected = if carry_ids { want_id(input, i) } else { None };
                assert_eq!(id, &expected, "{what}: id of row {i}");
            }
            if ext == "parquet" {
                assert!(!output_parts(&out).exists(), "{what}: part files are removed when complete");
            }
            if let (Some(py), "parquet" | "npy") = (python, ext) {
                let v = python_read(py, &out);
                let py_vectors: Vec<Vec<f32>> = serde_json::from_value(v["vectors"].clone()).unwrap();
                assert_eq!(py_vectors, vectors, "{what}: Python reads the same vectors");
                if ext == "npy" {
                    assert_eq!(v["dtype"], "float32");
                    assert_eq!(v["shape"], serde_json::json!([want.len(), 384]));
                } else {
                    assert_eq!(v["type"], "fixed_size_list<item: float not null>[384]", "{what}");
                    let index: Vec<u64> = serde_json::from_value(v["index"].clone()).unwrap();
                    assert_eq!(index, (0..want.len() as u64).collect::<Vec<_>>());
                    let py_ids: Vec<Option<Value>> = serde_json::from_value::<Option<Vec<Value>>>(v["id"].clone())
                        .unwrap()
                        .map_or_else(|| vec![None; want.len()], |ids| ids.into_iter().map(Some).collect());
                    assert_eq!(py_ids, ids, "{what}: Python reads the same ids");
                }
            }
        }
    }
}

fn output_parts(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap().to_os_string();
    name.push(".parts");
    out.with_file_name(name)
}

/// Distinct short texts of varied length.
fn synthetic_lines(n: usize) -> String {
    const WORDS: [&str; 12] =
        ["vector", "search", "river", "stone", "quiet", "engine", "paper", "light", "cloud", "ember", "north", "tide"];
    let mut out = String::with_capacity(n * 40);
    for i in 0..n {
        let len = 3 + i % 9;
        let words: Vec<&str> = (0..len).map(|k| WORDS[(i * 7 + k * 5 + i / 13) % WORDS.len()]).collect();
        out.push_str(&format!("{i} {}\n", words.join(" ")));
    }
    out
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_lines(path: &Path) -> usize {
    fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

#[test]
fn rows_are_written_while_stdin_is_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stream.jsonl");
    let mut child = akidb()
        .args(["embed", "--model", TINY, "--input", "-", "--output", s(&out)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first text\nsecond text\nthird text\n").unwrap();
    stdin.flush().unwrap();
    wait_until(Duration::from_secs(60), "the first rows before stdin closes", || count_lines(&out) == 3);
    assert!(child.try_wait().unwrap().is_none(), "akidb is still waiting for input");
    stdin.write_all(b"fourth text\n").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    ok(&output);
    let rows = read_jsonl(&out);
    assert_eq!(rows.iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(rows[0].embedding.len(), 32);
}

/// Starts a corpus run and SIGKILLs it once `ready` says enough is on disk (and it is still running).
fn kill_when(mut child: Child, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(child.try_wait().unwrap().is_none(), "akidb finished before it could be killed");
        assert!(Instant::now() < deadline, "no progress on disk");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "akidb was killed mid-run");
}

fn assert_same_rows(got: &[Row], want: &[Row]) {
    assert_eq!(got.len(), want.len(), "row count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.index, &g.id), (w.index, &w.id));
        // Rows embedded in a different batch get different padding: equal to float rounding.
        let diff = g.embedding.iter().zip(&w.embedding).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "row {} differs by {diff}", g.index);
    }
}

fn kept_rows(stderr: &str) -> u64 {
    let at = stderr.find(" kept from the earlier run").unwrap_or_else(|| panic!("no resume in: {stderr}"));
    stderr[..at].rsplit(", ").next().unwrap().parse().unwrap()
}

fn embedded_texts(stderr: &str) -> u64 {
    stderr.split("embedded ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn resume_after_sigkill_equals_an_uninterrupted_run() {
    const N: usize = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.jsonl");
    let lines = synthetic_lines(N);
    let mut f = fs::File::create(&input).unwrap();
    for (i, line) in lines.lines().enumerate() {
        writeln!(f, "{}", serde_json::json!({"text": line, "id": i})).unwrap();
    }
    drop(f);
    let common = ["embed", "--model", TINY, "--max-batch-size", "8", "--id-field", "id", "--input", s(&input)];

    for ext in ["jsonl", "parquet"] {
        let full = dir.path().join(format!("full.{ext}"));
        ok(&akidb().args(common).args(["--output", s(&full)]).output().unwrap());
        let cut = dir.path().join(format!("cut.{ext}"));
        let child = akidb().args(common).args(["--output", s(&cut)]).stderr(Stdio::null()).spawn().unwrap();
        let parts = output_parts(&cut);
        if ext == "jsonl" {
            kill_when(child, || count_lines(&cut) >= 8192);
            // A torn last row, as a power cut would leave it.
            fs::OpenOptions::new().append(true).open(&cut).unwrap().write_all(b"{\"index\": 99999, \"embe").unwrap();
        } else {
            kill_when(child, || fs::read_dir(&parts).map_or(0, |d| d.count()) >= 3);
            assert!(!cut.exists(), "no final file until the run completes");
            fs::write(parts.join("part-999999.parquet.tmp"), b"torn").unwrap();
        }
        let again = akidb().args(common).args(["--output", s(&cut)]).output().unwrap();
        assert!(
            !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"),
            "an unfinished output is not overwritten without --resume"
        );
        let resumed = akidb().args(common).args(["--output", s(&cut), "--resume"]).output().unwrap();
        let stderr = ok(&resumed);
        let kept = kept_rows(&stderr);
        assert!(kept >= 4096, "{ext}: complete rows were kept ({kept})");
        assert_eq!(embedded_texts(&stderr), N as u64 - kept, "{ext}: finished rows are not recomputed");
        let (got, want) = match ext {
            "jsonl" => (read_jsonl(&cut), read_jsonl(&full)),
            _ => (read_parquet(&cut, 32), read_parquet(&full, 32)),
        };
        assert_eq!(want.len(), N);
        assert_same_rows(&got, &want);
        assert!(!parts.exists(), "parts are merged and removed");
    }
}

/// Peak RSS in KiB of `akidb embed` over `n` short lines. Read from the child's own VmHWM (a
/// high-water mark, so the last reading before exit is the peak): getrusage of a spawned child
/// would include the test process's own peak, which the child inherits until it execs.
fn peak_rss_kib(dir: &Path, n: usize) -> u64 {
    let input = dir.join(format!("lines-{n}.txt"));
    fs::write(&input, synthetic_lines(n)).unwrap();
    let out = dir.join(format!("out-{n}.jsonl"));
    let mut child = akidb()
        .args(["embed", "--model", TINY, "--quiet", "--input", s(&input), "--output", s(&out)])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let exit = loop {
        if let Some(hwm) = fs::read_to_string(&status).ok().and_then(|st| {
            let line = st.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        }) {
            peak = peak.max(hwm);
        }
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "akidb failed over {n} lines");
    assert_eq!(count_lines(&out), n);
    peak
}

#[test]
fn memory_stays_flat_as_the_corpus_grows() {
    let dir = tempfile::tempdir().unwrap();
    let small = peak_rss_kib(dir.path(), 20_000);
    let large = peak_rss_kib(dir.path(), 200_000);
    eprintln!("peak RSS: 20k lines {} KiB, 200k lines {} KiB", small, large);
    assert!(large.saturating_sub(small) < 8 * 1024, "peak RSS grew from {small} KiB to {large} KiB");
}

#[test]
fn progress_is_a_bar_on_a_terminal_a_summary_otherwise_and_nothing_when_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p.txt");
    fs::write(&input, synthetic_lines(3000)).unwrap();
    let bin = env!("CARGO_BIN_EXE_akidb");
    let out = dir.path().join("tty.jsonl");
    let cmd = format!("{bin} embed --model {TINY} --input {} --output {}", s(&input), s(&out));
    // script(1) runs the command on a pseudo-terminal and copies what it draws to stdout.
    let tty = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .env("TERM", "xterm")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    assert!(tty.status.success(), "{}", String::from_utf8_lossy(&tty.stderr));
    let drawn = String::from_utf8_lossy(&tty.stdout);
    assert!(drawn.contains("3000/3000 texts"), "bar with done/total: {drawn}");
    assert!(drawn.contains("texts/s") && drawn.contains("ETA"), "bar with rate and ETA: {drawn}");
    assert!(drawn.contains("embedded 3000 texts"), "summary: {drawn}");
    assert_eq!(count_lines(&out), 3000);

    let plain = dir.path().join("plain.jsonl");
    let stderr = ok(&embed(TINY, &["--input", s(&input), "--output", s(&plain)]));
    assert!(!stderr.contains("ETA") && !stderr.contains('\r'), "no bar off a terminal: {stderr}");
    assert!(stderr.contains("embedded 3000 texts") && stderr.contains("tokens") && stderr.contains("texts/s"));

    let quiet = dir.path().join("quiet.jsonl");
    let stderr = ok(&embed(TINY, &["--quiet", "--input", s(&input), "--output", s(&quiet)]));
    assert!(stderr.is_empty(), "--quiet prints nothing: {stderr}");
}

#[test]
fn bad_input_names_file_and_line_after_flushing_the_rows_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = |i: usize| format!("{{\"text\": \"good text {i}\"}}");
    // (name, bad line 4, message on stderr)
    let cases: [(&str, &[u8], &str); 5] = [
        ("malformed.jsonl", b"{\"text\": \"unterminated", "not valid JSON"),
        ("missing.jsonl", b"{\"title\": \"no text\"}", "missing field \"text\""),
        ("number.jsonl", b"{\"text\": 42}", "field \"text\" is not a string"),
        ("bytes.jsonl", b"{\"text\": \"caf\xe9\"}", "not valid UTF-8"),
        ("bytes.txt", b"caf\xe9 au lait", "not valid UTF-8"),
    ];
    for (name, bad, message) in cases {
        let input = dir.path().join(name);
        let line = |i: usize| if name.ends_with(".txt") { format!("good text {i}") } else { good(i) };
        let mut bytes = Vec::new();
        for i in 1..=3 {
            bytes.extend_from_slice(line(i).as_bytes());
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(bad);
        bytes.push(b'\n');
        for i in 5..=6 {
            bytes.extend_from_slice(line(i).as_bytes());
            bytes.push(b'\n');
        }
        fs::write(&input, &bytes).unwrap();

        let out = dir.path().join(format!("{name}.out.jsonl"));
        let run = embed(TINY, &["--input", s(&input), "--output", s(&out)]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{name}: exit non-zero");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(last.starts_with("error: ") && last.contains(&format!("{}:4: ", s(&input))), "{name}: {stderr}");
        assert!(last.contains(message), "{name}: {message:?} not in {stderr}");
        assert_eq!(read_jsonl(&out).len(), 3, "{name}: the rows before the bad line are written");

        let skipped = dir.path().join(format!("{name}.skip.jsonl"));
        let stderr = ok(&embed(TINY, &["--skip-invalid", "--input", s(&input), "--output", s(&skipped)]));
        assert!(stderr.contains(&format!("skipping {}:4: ", s(&input))), "{name}: {stderr}");
        assert!(stderr.contains("1 invalid skipped"), "{name}: {stderr}");
        assert_eq!(read_jsonl(&skipped).iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);

        // Fix the line and resume: the result is what a clean run gives.
        let fixed: Vec<u8> = bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .flat_map(|(i, l)| {
                let mut l = if i == 3 { line(4).into_bytes() } else { l.to_vec() };
                l.push(b'\n');
                l
            })
            .collect();
        fs::write(&input, &fixed).unwrap();
        let stderr = ok(&embed(TINY, &["--resume", "--input", s(&input), "--output", s(&out)]));
        assert_eq!(kept_rows(&stderr), 3, "{name}: {stderr}");
        let clean = dir.path().join(format!("{name}.clean.jsonl"));
        ok(&embed(TINY, &["--input", s(&input), "--output", s(&clean)]));
        assert_same_rows(&read_jsonl(&out), &read_jsonl(&clean));
    }
}

#[test]
fn flag_mistakes_are_one_line_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    fs::write(&input, "a\n").unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--input", s(&input), "--output", "x.csv"], "pass --output-format"),
        (&["--input", "in.docx", "--output", "x.jsonl"], "pass --input-format"),
        (&["--input", s(&input), "--output", "x.npy", "--resume"], "--resume needs"),
        (
            &["--input", s(&input), "--output", "x.parquet", "--id-field", "id"],
            "--id-field needs a .jsonl or .parquet input",
        ),
        (&["--input", s(&input)], ""),
    ];
    for (args, message) in &cases[..4] {
        let out = akidb().args(["embed", "--model", "no/such-model"]).args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("no/such-model"), "checked before loading: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    // With no --output the rows go to stdout as JSON Lines.
    let out = embed(TINY, cases[4].0);
    ok(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["index"], 0);
    assert_eq!(v["embedding"].as_array().unwrap().len(), 32);
}

#[test]
fn a_null_parquet_text_names_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("nulls.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
    let texts = StringArray::from(vec![Some("first"), None, Some("third")]);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(texts)]).unwrap();
    let mut w = ArrowWriter::try_new(fs::File::create(&input).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let out = dir.path().join("nulls.jsonl");
    let run = embed(TINY, &["--input", s(&input), "--output", s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("error: {}:2: field \"text\" is null", s(&input))), "{stderr}");
    assert_eq!(read_jsonl(&out).len(), 1, "the row before it is written");

    let skipped = dir.path().join("skipped.jsonl");
    ok(&embed(TINY, &["--skip-invalid", "--input", s(&input), "--output", s(&skipped)]));
    assert_eq!(read_jsonl(&skipped).len(), 2);
}

#[test]
fn three_shards_one_killed_and_resumed_equal_one_whole_run() {
    const N: usize = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.jsonl");
    let mut f = fs::File::create(&input).unwrap();
    for (i, line) in synthetic_lines(N).lines().enumerate() {
        writeln!(f, "{}", serde_json::json!({"text": line, "id": format!("doc-{i}")})).unwrap();
    }
    drop(f);
    let common = ["embed", "--model", TINY, "--id-field", "id", "--input", s(&input)];
    let full = dir.path().join("full.parquet");
    ok(&akidb().args(common).args(["--max-batch-size", "16", "--output", s(&full)]).output().unwrap());

    let part = |i: usize| dir.path().join(format!("part-{i}.parquet"));
    // Shard 1 is SIGKILLed once a Parquet part of it is on disk, then resumed (as a Job retry would).
    let child = akidb()
        .args(common)
        .args(["--max-batch-size", "8", "--shard", "1/3", "--output", s(&part(1))])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let parts = output_parts(&part(1));
    kill_when(child, || parts.join("part-000000.parquet").exists());
    let wrong = akidb().args(common).args(["--shard", "2/3", "--resume", "--output", s(&part(1))]).output().unwrap();
    let wrong_err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && wrong_err.contains("--shard"), "another shard cannot resume it: {wrong_err}");
    // The batch size differs between shards and runs: the split does not depend on it.
    for (i, batch) in [(0, "32"), (1, "4"), (2, "8")] {
        let (out, shard) = (part(i), format!("{i}/3"));
        let mut args = vec!["--max-batch-size", batch, "--output", s(&out)];
        args.extend(["--shard", &shard]);
        if i == 1 {
            args.push("--resume");
        }
        let stderr = ok(&akidb().args(common).args(&args).output().unwrap());
        if i == 1 {
            assert!(kept_rows(&stderr) >= 4096, "the killed shard keeps its complete rows: {stderr}");
        }
    }

    let mut union = Vec::new();
    for i in 0..3 {
        let rows = read_parquet(&part(i), 32);
        let share = rows.len() as f64 / (N as f64 / 3.0);
        assert!((0.9..=1.1).contains(&share), "shard {i} has {} rows of {N}", rows.len());
        assert!(rows.iter().all(|r| r.index % 3 == i as u64), "shard {i} keeps whole-corpus indexes");
        union.extend(rows);
    }
    union.sort_by_key(|r| r.index);
    let want = read_parquet(&full, 32);
    assert_eq!(want.len(), N);
    assert_same_rows(&union, &want);
    assert_eq!(union[N - 1].id, Some(Value::from(format!("doc-{}", N - 1))));
}
