//! Corpus writers. JSON Lines appends row by row and resumes from its last complete line; Parquet
//! writes numbered part files (each complete and renamed into place) and merges them into the
//! final file at the end; `.npy` needs its row count in the header, so it is written under a
//! temporary name and renamed when complete. A crash never leaves a file that looks finished.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use akidb_engine::{quantize, quantize::Dtype, sparse::SparseVector};
use arrow_array::{
    builder::{Int64Builder, StringBuilder},
    ArrayRef, FixedSizeListArray, Float32Array, Int8Array, ListArray, RecordBatch, StructArray, UInt32Array,
    UInt64Array, UInt8Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter},
    basic::Compression,
    file::properties::WriterProperties,
};
use serde::Serialize;

use super::input::{id_kind, Id};

/// How embeddings are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One {"index", "id"?, "embedding"} object per line
    Jsonl,
    /// Columns index, id (with --id-field) and embedding (fixed-size list of float32, uint8 or
    /// int8; a list of {index, value} structs for a sparse model)
    Parquet,
    /// NumPy array [N, dim] (float32, or uint8/int8 [N, dim/8] packed bits), rows in input order
    Npy,
}

impl OutputFormat {
    /// The format a file name implies; stdout (`-`) is JSON Lines.
    pub fn from_path(path: &Path) -> Option<Self> {
        if path == Path::new("-") {
            return Some(Self::Jsonl);
        }
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "parquet" | "pq" => Some(Self::Parquet),
            "npy" => Some(Self::Npy),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{0} already exists; pass --resume to continue it or remove it")]
    Exists(PathBuf),
    #[error("{path} cannot be resumed: {why}")]
    Mismatch { path: PathBuf, why: String },
    #[error("id {got} does not match the earlier ids, which are {want}")]
    MixedIds { got: String, want: &'static str },
}

/// One process's share of a corpus: record `k` (0-based, counting valid records) belongs to shard
/// `k mod count`. Round-robin needs no record count up front (stdin works), is the same whatever
/// the batch sizes, and leaves shards at most one record apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// Whether record `k` of the whole corpus is this shard's.
    pub fn owns(self, k: u64) -> bool {
        k % self.count == self.index
    }

    /// The whole-corpus number of this shard's `j`-th record.
    pub fn global(self, j: u64) -> u64 {
        self.index + j * self.count
    }

    /// How many of `total` records are this shard's.
    pub fn share(self, total: u64) -> u64 {
        total.saturating_sub(self.index).div_ceil(self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a shard: expected I/N with 0 <= I < N, e.g. 0/8");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<u64>().map_err(|_| bad())?, n.trim().parse::<u64>().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// What a row's `embedding` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// A dense vector, as float32 or packed into bits.
    Dense(Dtype),
    /// A sparse model's non-zero weights, as {index, value} pairs.
    Sparse,
}

impl Values {
    /// Values per row of a `dimension`-wide vector; `None` when rows differ (sparse).
    pub fn width(self, dimension: usize) -> Option<usize> {
        match self {
            Values::Dense(dtype) => Some(dtype.width(dimension)),
            Values::Sparse => None,
        }
    }

    fn describe(self, dimension: usize) -> String {
        match self {
            Values::Dense(Dtype::Float32) => format!("{dimension} float32 dimensions"),
            Values::Dense(dtype) => format!("{} {} bytes", dtype.width(dimension), dtype.as_str()),
            Values::Sparse => "sparse {index, value} lists".into(),
        }
    }
}

/// One window's rows, as the model made them.
#[derive(Debug, Clone, Copy)]
pub enum Vectors<'a> {
    Dense(&'a [Vec<f32>]),
    Sparse(&'a [SparseVector]),
}

impl Vectors<'_> {
    fn len(&self) -> usize {
        match self {
            Vectors::Dense(v) => v.len(),
            Vectors::Sparse(v) => v.len(),
        }
    }
}

/// One row's `embedding` in JSON: numbers, bytes, or {index, value} pairs.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonEmbedding<'a> {
    Float(&'a [f32]),
    Unsigned(Vec<u8>),
    Signed(Vec<i8>),
    Sparse(Vec<SparseEntry>),
}

#[derive(Serialize)]
struct SparseEntry {
    index: u32,
    value: f32,
}

impl<'a> JsonEmbedding<'a> {
    fn of(vectors: Vectors<'a>, i: usize, values: Values) -> Self {
        match (vectors, values) {
            (Vectors::Sparse(v), _) => {
                JsonEmbedding::Sparse(v[i].entries().map(|(index, value)| SparseEntry { index, value }).collect())
            }
            (Vectors::Dense(v), Values::Dense(Dtype::Ubinary)) => JsonEmbedding::Unsigned(quantize::ubinary(&v[i])),
            (Vectors::Dense(v), Values::Dense(Dtype::Binary)) => JsonEmbedding::Signed(quantize::binary(&v[i])),
            (Vectors::Dense(v), _) => JsonEmbedding::Float(&v[i]),
        }
    }
}

/// Where and how to write, and what each row carries.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub format: OutputFormat,
    /// The model's dimension (its vocabulary for a sparse model).
    pub dimension: usize,
    pub values: Values,
    pub with_ids: bool,
    pub resume: bool,
    /// Rows are this shard's records, numbered as in the whole corpus.
    pub shard: Shard,
}

impl OutputSpec {
    pub fn is_stdout(&self) -> bool {
        self.path == Path::new("-")
    }
}

/// A destination for embedded rows, written in input order.
pub trait Sink {
    /// Rows already complete in the output (non-zero when resuming).
    fn done(&self) -> u64;
    /// Appends rows; what has filled up (a JSON Lines window, a Parquet part) reaches the disk.
    fn write(&mut self, ids: &[Option<Id>], vectors: Vectors<'_>) -> Result<(), OutputError>;
    /// Makes every row written so far durable and resumable, before stopping on an error.
    fn checkpoint(&mut self) -> Result<(), OutputError>;
    /// Completes the output under its final name.
    fn finish(self: Box<Self>) -> Result<(), OutputError>;
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io { path: path.to_path_buf(), source }
}

/// Opens the output for writing, or for continuing with `--resume`.
pub fn open(spec: &OutputSpec) -> Result<Box<dyn Sink>, OutputError> {
    Ok(match spec.format {
        OutputFormat::Jsonl => Box::new(JsonlSink::open(spec)?),
        OutputFormat::Parquet => Box::new(ParquetSink::open(spec)?),
        OutputFormat::Npy => Box::new(NpySink::open(spec)?),
    })
}

#[derive(Serialize)]
struct JsonlRow<'a> {
    index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Id>,
    embedding: JsonEmbedding<'a>,
}

struct JsonlSink {
    out: BufWriter<Box<dyn Write>>,
    path: PathBuf,
    values: Values,
    shard: Shard,
    done: u64,
    next: u64,
}

impl JsonlSink {
    fn open(spec: &OutputSpec) -> Result<Self, OutputError> {
        let path = spec.path.clone();
        if spec.is_stdout() {
            let out: Box<dyn Write> = Box::new(std::io::stdout());
            return Ok(Self {
                out: BufWriter::with_capacity(1 << 16, out),
                path,
                values: spec.values,
                shard: spec.shard,
                done: 0,
                next: 0,
            });
        }
        let err = io_err(&spec.path);
        let done = if path.exists() {
            if !spec.resume {
                return Err(OutputError::Exists(path));
            }
            truncate_to_complete_lines(&path, spec)?
        } else {
            0
        };
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(&err)?;
        let out: Box<dyn Write> = Box::new(file);
        Ok(Self {
            out: BufWriter::with_capacity(1 << 16, out),
            path,
            values: spec.values,
            shard: spec.shard,
            done,
            next: done,
        })
    }
}

/// Keeps the complete rows of an interrupted JSON Lines output: a torn last line (no newline, or
/// not JSON) is cut off. Returns how many rows remain.
fn truncate_to_complete_lines(path: &Path, spec: &OutputSpec) -> Result<u64, OutputError> {
    let err = io_err(path);
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(&err)?);
    let (mut rows, mut good_end, mut offset) = (0u64, 0u64, 0u64);
    let (mut line, mut last) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(&err)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        offset += n as u64;
        std::mem::swap(&mut line, &mut last);
        rows += 1;
        good_end = offset;
    }
    // Only the last complete line can be torn by a crash; earlier ones were followed by more writes.
    let last_complete = (rows > 0).then_some(last);
    if let Some(last) = &last_complete {
        match serde_json::from_slice::<serde_json::Value>(last) {
            Ok(v) => {
                let embedding = v["embedding"].as_array();
                let (len, sparse) = (
                    embedding.map_or(0, Vec::len),
                    embedding.and_then(|e| e.first()).is_some_and(serde_json::Value::is_object),
                );
                let fits = match spec.values.width(spec.dimension) {
                    Some(width) => len == width && !sparse,
                    None => embedding.is_some() && (sparse || len == 0),
                };
                if !fits {
                    return Err(OutputError::Mismatch {
                        path: path.to_path_buf(),
                        why: format!(
                            "its rows hold {}, this run writes {}",
                            if sparse { "sparse {index, value} lists".to_string() } else { format!("{len} values") },
                            spec.values.describe(spec.dimension)
                        ),
                    });
                }
                if v.get("id").is_some() != spec.with_ids {
                    return Err(OutputError::Mismatch {
                        path: path.to_path_buf(),
                        why: "it was started with a different --id-field".into(),
                    });
                }
                let want = spec.shard.global(rows - 1);
                if v["index"].as_u64() != Some(want) {
                    return Err(OutputError::Mismatch {
                        path: path.to_path_buf(),
                        why: format!(
                            "its last row has index {}, expected {want} (was it started with another --shard?)",
                            v["index"]
                        ),
                    });
                }
            }
            Err(_) => {
                rows -= 1;
                good_end -= last.len() as u64;
            }
        }
    }
    let file = OpenOptions::new().write(true).open(path).map_err(&err)?;
    file.set_len(good_end).map_err(&err)?;
    Ok(rows)
}

impl Sink for JsonlSink {
    fn done(&self) -> u64 {
        self.done
    }

    fn write(&mut self, ids: &[Option<Id>], vectors: Vectors<'_>) -> Result<(), OutputError> {
        let err = io_err(&self.path);
        for (i, id) in ids.iter().enumerate().take(vectors.len()) {
            let embedding = JsonEmbedding::of(vectors, i, self.values);
            let row = JsonlRow { index: self.shard.global(self.next), id: id.as_ref(), embedding };
            serde_json::to_writer(&mut self.out, &row).map_err(|e| err(e.into()))?;
            self.out.write_all(b"\n").map_err(&err)?;
            self.next += 1;
        }
        // Rows reach the file as each window completes, so readers (and --resume) see them.
        self.out.flush().map_err(&err)
    }

    fn checkpoint(&mut self) -> Result<(), OutputError> {
        self.out.flush().map_err(io_err(&self.path))
    }

    fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
        self.out.flush().map_err(io_err(&self.path))?;
        if let Ok(out) = self.out.into_inner() {
            drop(out);
        }
        if !self.path.as_os_str().eq("-") {
            File::open(&self.path).and_then(|f| f.sync_all()).map_err(io_err(&self.path))?;
        }
        Ok(())
    }
}

/// Rows per Parquet part file and per row group: a part is the unit of resume, and one row group
/// of MiniLM vectors is 6 MiB, so memory stays flat.
pub const PARQUET_ROWS_PER_PART: usize = 4096;

/// The directory of part files next to a Parquet output.
pub fn parts_dir(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    path.with_file_name(name)
}

fn part_name(n: usize) -> String {
    format!("part-{n:06}.parquet")
}

/// The id column type, fixed by the first id (or by the parts already written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdType {
    Int,
    Str,
}

/// A Parquet part's embeddings, waiting to be written, in the column's own type.
enum Column {
    Float(Vec<f32>),
    Bytes(Vec<u8>),
    Sparse(Vec<SparseVector>),
}

struct ParquetSink {
    path: PathBuf,
    parts: PathBuf,
    dimension: usize,
    values: Values,
    with_ids: bool,
    shard: Shard,
    id_type: Option<IdType>,
    done: u64,
    next_part: usize,
    /// Rows waiting for the next part file.
    ids: Vec<Option<Id>>,
    column: Column,
    rows: usize,
}

impl ParquetSink {
    fn open(spec: &OutputSpec) -> Result<Self, OutputError> {
        let path = spec.path.clone();
        let parts = parts_dir(&path);
        let mut sink = Self {
            path: path.clone(),
            parts: parts.clone(),
            dimension: spec.dimension,
            values: spec.values,
            with_ids: spec.with_ids,
            shard: spec.shard,
            id_type: None,
            done: 0,
            next_part: 0,
            ids: Vec::new(),
            column: Column::empty(spec.values),
            rows: 0,
        };
        if path.exists() {
            return Err(if spec.resume {
                OutputError::Mismatch { path, why: "it is already complete; remove it to embed again".into() }
            } else {
                OutputError::Exists(path)
            });
        }
        if parts.exists() {
            if !spec.resume {
                return Err(OutputError::Exists(parts));
            }
            sink.load_parts()?;
        } else {
            fs::create_dir_all(&parts).map_err(io_err(&parts))?;
        }
        Ok(sink)
    }

    /// Counts the rows of the complete parts 0, 1, … and removes anything after the first gap or
    /// unreadable part (a part is renamed into place only once complete, so this is only debris).
    fn load_parts(&mut self) -> Result<(), OutputError> {
        let err = io_err(&self.parts);
        let mut n = 0;
        loop {
            let file = self.parts.join(part_name(n));
            let Ok(f) = File::open(&file) else { break };
            let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(f) else { break };
            let schema = builder.schema();
            if schema.fields() != self.schema(self.id_type_of(schema)).fields() {
                return Err(OutputError::Mismatch {
                    path: self.path.clone(),
                    why: format!(
                        "{} has columns ({}), expected {}{}",
                        file.display(),
                        schema
                            .fields()
                            .iter()
                            .map(|f| format!("{} {}", f.name(), f.data_type()))
                            .collect::<Vec<_>>()
                            .join(", "),
                        self.values.describe(self.dimension),
                        if self.with_ids { " and an id column" } else { " and no id column" }
                    ),
                });
            }
            self.id_type = self.id_type_of(schema);
            let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
            if n == 0 {
                self.check_first_index(builder, &file)?;
            }
            self.done += rows;
            n += 1;
        }
        self.next_part = n;
        for entry in fs::read_dir(&self.parts).map_err(&err)? {
            let entry = entry.map_err(&err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = name
                .strip_prefix("part-")
                .and_then(|s| s.strip_suffix(".parquet"))
                .and_then(|s| s.parse::<usize>().ok());
            if !matches!(keep, Some(k) if k < n) {
                fs::remove_file(entry.path()).map_err(&err)?;
            }
        }
        Ok(())
    }

    /// A part written by another shard (or without one) starts at another index: refuse to mix them.
    fn check_first_index(
        &self,
        builder: ParquetRecordBatchReaderBuilder<File>,
        file: &Path,
    ) -> Result<(), OutputError> {
        let first = builder
            .with_batch_size(1)
            .build()
            .ok()
            .and_then(|mut r| r.next())
            .and_then(Result::ok)
            .and_then(|b| b.column(0).as_any().downcast_ref::<UInt64Array>().map(|a| a.value(0)));
        let want = self.shard.global(0);
        match first {
            Some(got) if got != want => Err(OutputError::Mismatch {
                path: self.path.clone(),
                why: format!(
                    "{} starts at index {got}, expected {want} (was it started with another --shard?)",
                    file.display()
                ),
            }),
            _ => Ok(()),
        }
    }

    fn id_type_of(&self, schema: &Schema) -> Option<IdType> {
        match schema.field_with_name("id").map(|f| f.data_type().clone()) {
            Ok(DataType::Int64) => Some(IdType::Int),
            Ok(_) => Some(IdType::Str),
            Err(_) => None,
        }
    }

    fn schema(&self, id_type: Option<IdType>) -> SchemaRef {
        let mut fields = vec![Field::new("index", DataType::UInt64, false)];
        if self.with_ids {
            let ty = if id_type == Some(IdType::Int) { DataType::Int64 } else { DataType::Utf8 };
            fields.push(Field::new("id", ty, false));
        }
        fields.push(Field::new("embedding", embedding_type(self.values, self.dimension), false));
        Arc::new(Schema::new(fields))
    }

    /// Writes the buffered rows as the next part: to a temporary name, synced, then renamed.
    fn write_part(&mut self) -> Result<(), OutputError> {
        if self.rows == 0 {
            return Ok(());
        }
        let schema = self.schema(self.id_type);
        let start = self.done;
        let shard = self.shard;
        let index: ArrayRef =
            Arc::new(UInt64Array::from_iter_values((start..start + self.rows as u64).map(|j| shard.global(j))));
        let mut columns = vec![index];
        if self.with_ids {
            columns.push(id_column(&self.ids, self.id_type));
        }
        let column = std::mem::replace(&mut self.column, Column::empty(self.values));
        columns.push(embedding_column(column, self.values, self.dimension));
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| self.parquet_err(e.to_string()))?;
        let name = part_name(self.next_part);
        let tmp = self.parts.join(format!("{name}.tmp"));
        let err = io_err(&tmp);
        let file = File::create(&tmp).map_err(&err)?;
        let mut writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))
            .map_err(|e| self.parquet_err(e.to_string()))?;
        writer.write(&batch).map_err(|e| self.parquet_err(e.to_string()))?;
        let file = writer.into_inner().map_err(|e| self.parquet_err(e.to_string()))?;
        file.sync_all().map_err(&err)?;
        fs::rename(&tmp, self.parts.join(&name)).map_err(&err)?;
        self.done += self.rows as u64;
        self.next_part += 1;
        self.ids.clear();
        self.rows = 0;
        Ok(())
    }

    fn parquet_err(&self, message: String) -> OutputError {
        OutputError::Parquet { path: self.path.clone(), message }
    }
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_size(PARQUET_ROWS_PER_PART)
        .build()
}

impl Column {
    fn empty(values: Values) -> Self {
        match values {
            Values::Dense(Dtype::Float32) => Column::Float(Vec::new()),
            Values::Dense(_) => Column::Bytes(Vec::new()),
            Values::Sparse => Column::Sparse(Vec::new()),
        }
    }

    /// Row `i` of `vectors`, in this column's type; `false` (nothing pushed) for rows of the
    /// other kind, which `run` never makes: it derives the rows and the output from one `Values`.
    fn push(&mut self, vectors: Vectors<'_>, i: usize) -> bool {
        match (self, vectors) {
            (Column::Float(out), Vectors::Dense(v)) => out.extend_from_slice(&v[i]),
            (Column::Bytes(out), Vectors::Dense(v)) => out.extend(quantize::ubinary(&v[i])),
            (Column::Sparse(out), Vectors::Sparse(v)) => out.push(v[i].clone()),
            (_, _) => return false,
        }
        true
    }
}

/// The `{index: uint32, value: float32}` struct of a sparse row's entries.
fn sparse_fields() -> Fields {
    Fields::from(vec![Field::new("index", DataType::UInt32, false), Field::new("value", DataType::Float32, false)])
}

fn embedding_type(values: Values, dimension: usize) -> DataType {
    let fixed =
        |ty: DataType, width: usize| DataType::FixedSizeList(Arc::new(Field::new_list_field(ty, false)), width as i32);
    match values {
        Values::Dense(Dtype::Float32) => fixed(DataType::Float32, dimension),
        Values::Dense(Dtype::Ubinary) => fixed(DataType::UInt8, Dtype::Ubinary.width(dimension)),
        Values::Dense(Dtype::Binary) => fixed(DataType::Int8, Dtype::Binary.width(dimension)),
        Values::Sparse => DataType::List(Arc::new(Field::new_list_field(DataType::Struct(sparse_fields()), false))),
    }
}

fn embedding_column(column: Column, values: Values, dimension: usize) -> ArrayRef {
    let fixed = |ty: DataType, width: usize, array: ArrayRef| -> ArrayRef {
        Arc::new(FixedSizeListArray::new(Arc::new(Field::new_list_field(ty, false)), width as i32, array, None))
    };
    let width = values.width(dimension).unwrap_or(0);
    match (column, values) {
        (Column::Float(v), _) => fixed(DataType::Float32, width, Arc::new(Float32Array::from(v))),
        (Column::Bytes(b), Values::Dense(Dtype::Binary)) => {
            // The same bits offset by -128, as sentence-transformers' int8 `binary`.
            let signed: Vec<i8> = b.into_iter().map(|x| (i16::from(x) - 128) as i8).collect();
            fixed(DataType::Int8, width, Arc::new(Int8Array::from(signed)))
        }
        (Column::Bytes(b), _) => fixed(DataType::UInt8, width, Arc::new(UInt8Array::from(b))),
        (Column::Sparse(rows), _) => {
            let indices = UInt32Array::from_iter_values(rows.iter().flat_map(|r| r.indices.iter().copied()));
            let weights = Float32Array::from_iter_values(rows.iter().flat_map(|r| r.values.iter().copied()));
            let entries = StructArray::new(sparse_fields(), vec![Arc::new(indices), Arc::new(weights)], None);
            let offsets = OffsetBuffer::from_lengths(rows.iter().map(SparseVector::len));
            let field = Arc::new(Field::new_list_field(DataType::Struct(sparse_fields()), false));
            Arc::new(ListArray::new(field, offsets, Arc::new(entries), None))
        }
    }
}

fn id_column(ids: &[Option<Id>], id_type: Option<IdType>) -> ArrayRef {
    if id_type == Some(IdType::Int) {
        let mut b = Int64Builder::with_capacity(ids.len());
        for id in ids {
            b.append_option(match id {
                Some(Id::Int(v)) => Some(*v),
                _ => None,
            });
        }
        Arc::new(b.finish())
    } else {
        let mut b = StringBuilder::new();
        for id in ids {
            b.append_option(match id {
                Some(Id::Str(s)) => Some(s.as_str()),
                _ => None,
            });
        }
        Arc::new(b.finish())
    }
}

impl Sink for ParquetSink {
    fn done(&self) -> u64 {
        self.done
    }

    fn write(&mut self, ids: &[Option<Id>], vectors: Vectors<'_>) -> Result<(), OutputError> {
        for (i, id) in ids.iter().enumerate().take(vectors.len()) {
            if self.with_ids {
                let ty = match id {
                    Some(Id::Int(_)) => IdType::Int,
                    _ => IdType::Str,
                };
                match self.id_type {
                    None => self.id_type = Some(ty),
                    Some(want) if want != ty => {
                        let got = id.as_ref().map_or_else(|| "null".to_string(), |i| format!("{i:?}"));
                        let want = id_kind(&if want == IdType::Int { Id::Int(0) } else { Id::Str(String::new()) });
                        return Err(OutputError::MixedIds { got, want });
                    }
                    Some(_) => {}
                }
            }
            if !self.column.push(vectors, i) {
                return Err(OutputError::Mismatch {
                    path: self.path.clone(),
                    why: format!("rows of another kind than its {}", self.values.describe(self.dimension)),
                });
            }
            self.ids.push(id.clone());
            self.rows += 1;
            if self.rows == PARQUET_ROWS_PER_PART {
                self.write_part()?;
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), OutputError> {
        self.write_part()
    }

    /// Copies the parts, one row group each, into the final file (temporary name, then renamed)
    /// and removes them.
    fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
        self.write_part()?;
        let tmp = tmp_path(&self.path);
        let err = io_err(&tmp);
        let schema = self.schema(self.id_type);
        let file = File::create(&tmp).map_err(&err)?;
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties()))
            .map_err(|e| self.parquet_err(e.to_string()))?;
        for n in 0..self.next_part {
            let part = self.parts.join(part_name(n));
            let f = File::open(&part).map_err(io_err(&part))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(f)
                .and_then(|b| b.with_batch_size(PARQUET_ROWS_PER_PART).build())
                .map_err(|e| self.parquet_err(format!("{}: {e}", part.display())))?;
            for batch in reader {
                let batch = batch.map_err(|e| self.parquet_err(format!("{}: {e}", part.display())))?;
                // The same columns under the writer's schema (the read-back one carries extra metadata).
                let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
                    .map_err(|e| self.parquet_err(format!("{}: {e}", part.display())))?;
                writer.write(&batch).map_err(|e| self.parquet_err(e.to_string()))?;
            }
            writer.flush().map_err(|e| self.parquet_err(e.to_string()))?;
        }
        let file = writer.into_inner().map_err(|e| self.parquet_err(e.to_string()))?;
        file.sync_all().map_err(&err)?;
        fs::rename(&tmp, &self.path).map_err(&err)?;
        fs::remove_dir_all(&self.parts).map_err(io_err(&self.parts))?;
        Ok(())
    }
}

/// `<name>.tmp` beside `path`: where outputs are built before they are renamed into place.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// NumPy `.npy` v1.0: a fixed-size header (rewritten with the row count at the end), then rows.
const NPY_HEADER_LEN: usize = 128;

struct NpySink {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    dtype: Dtype,
    dimension: usize,
    rows: u64,
}

impl NpySink {
    fn open(spec: &OutputSpec) -> Result<Self, OutputError> {
        if spec.path.exists() {
            return Err(OutputError::Exists(spec.path.clone()));
        }
        let tmp = tmp_path(&spec.path);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        // `plan` sends sparse rows elsewhere: an array has one width.
        let dtype = match spec.values {
            Values::Dense(dtype) => dtype,
            Values::Sparse => Dtype::Float32,
        };
        out.write_all(&npy_header(0, dtype, spec.dimension)).map_err(io_err(&tmp))?;
        Ok(Self { path: spec.path.clone(), tmp, out, dtype, dimension: spec.dimension, rows: 0 })
    }
}

fn npy_header(rows: u64, dtype: Dtype, dimension: usize) -> Vec<u8> {
    let descr = match dtype {
        Dtype::Float32 => "<f4",
        Dtype::Ubinary => "|u1",
        Dtype::Binary => "|i1",
    };
    let width = dtype.width(dimension);
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {width}), }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend_from_slice(&((NPY_HEADER_LEN - 10) as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(NPY_HEADER_LEN - 1, b' ');
    header.push(b'\n');
    header
}

impl Sink for NpySink {
    fn done(&self) -> u64 {
        0
    }

    fn write(&mut self, _ids: &[Option<Id>], vectors: Vectors<'_>) -> Result<(), OutputError> {
        let Vectors::Dense(vectors) = vectors else {
            return Err(OutputError::Mismatch {
                path: self.path.clone(),
                why: "an .npy array holds dense vectors only".into(),
            });
        };
        let err = io_err(&self.tmp);
        for v in vectors {
            match self.dtype {
                Dtype::Float32 => {
                    for x in v {
                        self.out.write_all(&x.to_le_bytes()).map_err(&err)?;
                    }
                }
                // int8 is the same bytes offset by -128: one byte each either way.
                Dtype::Ubinary => self.out.write_all(&quantize::ubinary(v)).map_err(&err)?,
                Dtype::Binary => {
                    let bytes: Vec<u8> = quantize::binary(v).into_iter().map(|b| b as u8).collect();
                    self.out.write_all(&bytes).map_err(&err)?
                }
            }
            self.rows += 1;
        }
        Ok(())
    }

    /// An `.npy` cannot be resumed; what was written stays under the temporary name.
    fn checkpoint(&mut self) -> Result<(), OutputError> {
        self.out.flush().map_err(io_err(&self.tmp))
    }

    fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
        let err = io_err(&self.tmp);
        self.out.seek(SeekFrom::Start(0)).map_err(&err)?;
        self.out.write_all(&npy_header(self.rows, self.dtype, self.dimension)).map_err(&err)?;
        let file = self.out.into_inner().map_err(|e| err(e.into_error()))?;
        file.sync_all().map_err(&err)?;
        fs::rename(&self.tmp, &self.path).map_err(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_names_the_shape() {
        let h = npy_header(1_000_000_000, Dtype::Float32, 4096);
        assert_eq!(h.len(), NPY_HEADER_LEN);
        assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, NPY_HEADER_LEN - 10);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(text.contains("'shape': (1000000000, 4096)"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn formats_follow_extensions() {
        assert_eq!(OutputFormat::from_path(Path::new("a/b.PARQUET")), Some(OutputFormat::Parquet));
        assert_eq!(OutputFormat::from_path(Path::new("-")), Some(OutputFormat::Jsonl));
        assert_eq!(OutputFormat::from_path(Path::new("x.npy")), Some(OutputFormat::Npy));
        assert_eq!(OutputFormat::from_path(Path::new("x.csv")), None);
        assert_eq!(parts_dir(Path::new("d/e.parquet")), PathBuf::from("d/e.parquet.parts"));
    }

    #[test]
    fn shards_parse_and_split_round_robin() {
        let s: Shard = "2/3".parse().unwrap();
        assert_eq!(s, Shard { index: 2, count: 3 });
        assert!(s.owns(5) && !s.owns(6));
        assert_eq!(s.global(4), 14);
        assert_eq!((s.share(10), "0/3".parse::<Shard>().unwrap().share(10)), (3, 4));
        for bad in ["3/3", "1/0", "1", "a/2", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
