//! Corpus readers: plain text lines, JSON Lines and Parquet, each an iterator of records that
//! stops at the first problem it cannot read past. Invalid records carry their file and line
//! (row, for Parquet) so the caller can stop there or skip them.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
};
use arrow_schema::DataType;
use parquet::arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ProjectionMask};
use serde::Serialize;

/// How a corpus file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// One text per line; empty lines are skipped
    Text,
    /// One JSON object per line, the text in `--text-field`
    Jsonl,
    /// A Parquet file, the text in the `--text-field` column
    Parquet,
}

impl InputFormat {
    /// The format a file name implies; stdin (`-`) is text.
    pub fn from_path(path: &Path) -> Option<Self> {
        if path == Path::new("-") {
            return Some(Self::Text);
        }
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "txt" | "text" => Some(Self::Text),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// An id carried from the input to the output, as the input typed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Id {
    Int(i64),
    Str(String),
}

/// One text to embed and where it came from.
#[derive(Debug)]
pub struct Record {
    /// 1-based line (text, JSON Lines) or row (Parquet) in the input.
    pub line: u64,
    pub text: String,
    pub id: Option<Id>,
}

/// Why one record cannot be embedded; `--skip-invalid` skips these.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("not valid UTF-8")]
    Utf8,
    #[error("not valid JSON ({0})")]
    Json(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("missing field {0:?}")]
    Missing(String),
    #[error("field {0:?} is not a string")]
    NotString(String),
    #[error("field {0:?} is null")]
    Null(String),
    #[error("id field {0:?} is not a string or an integer")]
    BadId(String),
    #[error("id field {field:?} is {got} but earlier ids are {want}")]
    MixedIds { field: String, got: &'static str, want: &'static str },
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{file}:{line}: {reason}")]
    Invalid { file: String, line: u64, reason: Invalid },
    #[error("reading {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parquet { file: String, message: String },
}

impl InputError {
    /// Whether the reader can continue after this error (one bad record, not a broken input).
    pub fn is_invalid_record(&self) -> bool {
        matches!(self, Self::Invalid { .. })
    }
}

/// Where to read and which fields matter.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub path: PathBuf,
    pub format: InputFormat,
    pub text_field: String,
    pub id_field: Option<String>,
}

impl InputSpec {
    pub fn is_stdin(&self) -> bool {
        self.path == Path::new("-")
    }

    /// The name used in messages.
    pub fn name(&self) -> String {
        if self.is_stdin() {
            "<stdin>".to_string()
        } else {
            self.path.display().to_string()
        }
    }
}

pub type Records = Box<dyn Iterator<Item = Result<Record, InputError>> + Send>;

/// Opens the input; also returns the number of records when it is cheap to know up front.
pub fn open(spec: &InputSpec) -> Result<(Records, Option<u64>), InputError> {
    let name = spec.name();
    let io = |source| InputError::Io { file: name.clone(), source };
    if spec.format == InputFormat::Parquet {
        if spec.is_stdin() {
            return Err(InputError::Parquet {
                file: name,
                message: "Parquet input must be a file (its index is at the end)".into(),
            });
        }
        return open_parquet(spec);
    }
    let (reader, total): (Box<dyn BufRead + Send>, Option<u64>) = if spec.is_stdin() {
        (Box::new(BufReader::with_capacity(1 << 16, std::io::stdin())), None)
    } else {
        let total = count_nonblank_lines(&spec.path).map_err(io)?;
        (Box::new(BufReader::with_capacity(1 << 16, File::open(&spec.path).map_err(io)?)), Some(total))
    };
    let lines = Lines { reader, file: name, line: 0, buf: Vec::new(), done: false };
    let records: Records = match spec.format {
        InputFormat::Text => Box::new(
            lines
                .filter_map(|item| match item {
                    Ok((line, bytes)) => match String::from_utf8(bytes) {
                        Ok(text) if text.is_empty() => None,
                        Ok(text) => Some(Ok(Record { line, text, id: None })),
                        Err(_) => Some(Err(LineError::Invalid(line, Invalid::Utf8))),
                    },
                    Err(e) => Some(Err(e)),
                })
                .map(with_file(spec.name())),
        ),
        InputFormat::Jsonl => {
            let mut parser = JsonlParser::new(spec);
            Box::new(
                lines
                    .filter(|item| !matches!(item, Ok((_, bytes)) if bytes.iter().all(u8::is_ascii_whitespace)))
                    .map(move |item| {
                        let (line, bytes) = item?;
                        parser
                            .parse(&bytes)
                            .map(|(text, id)| Record { line, text, id })
                            .map_err(|r| LineError::Invalid(line, r))
                    })
                    .map(with_file(spec.name())),
            )
        }
        InputFormat::Parquet => unreachable!("handled above"),
    };
    Ok((records, total))
}

/// Lines as bytes without `\n` / `\r\n`; an I/O error ends the iteration.
struct Lines {
    reader: Box<dyn BufRead + Send>,
    file: String,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

/// What the line iterators yield before the file name is attached.
enum LineError {
    Invalid(u64, Invalid),
    Fatal(InputError),
}

fn with_file(file: String) -> impl FnMut(Result<Record, LineError>) -> Result<Record, InputError> {
    move |item| {
        item.map_err(|e| match e {
            LineError::Invalid(line, reason) => InputError::Invalid { file: file.clone(), line, reason },
            LineError::Fatal(e) => e,
        })
    }
}

impl Iterator for Lines {
    type Item = Result<(u64, Vec<u8>), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.buf.clear();
        match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                self.line += 1;
                let mut bytes = std::mem::take(&mut self.buf);
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                Some(Ok((self.line, bytes)))
            }
            Err(source) => {
                self.done = true;
                Some(Err(LineError::Fatal(InputError::Io { file: self.file.clone(), source })))
            }
        }
    }
}

/// Counts the lines that will become records, for the progress total. One fast pass over the file.
fn count_nonblank_lines(path: &Path) -> std::io::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    let (mut count, mut blank) = (0u64, true);
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        for &b in buf {
            if b == b'\n' {
                count += u64::from(!blank);
                blank = true;
            } else if !b.is_ascii_whitespace() {
                blank = false;
            }
        }
        let n = buf.len();
        reader.consume(n);
    }
    Ok(count + u64::from(!blank))
}

/// Parses JSON Lines records; the first id fixes the id type so every output row has the same one.
struct JsonlParser {
    text_field: String,
    id_field: Option<String>,
    id_kind: Option<&'static str>,
}

impl JsonlParser {
    fn new(spec: &InputSpec) -> Self {
        Self { text_field: spec.text_field.clone(), id_field: spec.id_field.clone(), id_kind: None }
    }

    fn parse(&mut self, bytes: &[u8]) -> Result<(String, Option<Id>), Invalid> {
        let line = std::str::from_utf8(bytes).map_err(|_| Invalid::Utf8)?;
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| Invalid::Json(e.to_string()))?;
        let mut object = match value {
            serde_json::Value::Object(o) => o,
            _ => return Err(Invalid::NotObject),
        };
        let text = match object.remove(&self.text_field) {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(Invalid::NotString(self.text_field.clone())),
            None => return Err(Invalid::Missing(self.text_field.clone())),
        };
        let Some(field) = &self.id_field else { return Ok((text, None)) };
        let id = match object.remove(field) {
            Some(serde_json::Value::String(s)) => Id::Str(s),
            Some(serde_json::Value::Number(n)) if n.is_i64() => Id::Int(n.as_i64().unwrap_or_default()),
            Some(_) => return Err(Invalid::BadId(field.clone())),
            None => return Err(Invalid::Missing(field.clone())),
        };
        let kind = id_kind(&id);
        match self.id_kind {
            None => self.id_kind = Some(kind),
            Some(want) if want != kind => return Err(Invalid::MixedIds { field: field.clone(), got: kind, want }),
            Some(_) => {}
        }
        Ok((text, Some(id)))
    }
}

pub fn id_kind(id: &Id) -> &'static str {
    match id {
        Id::Int(_) => "integers",
        Id::Str(_) => "strings",
    }
}

const PARQUET_BATCH_ROWS: usize = 1024;

fn open_parquet(spec: &InputSpec) -> Result<(Records, Option<u64>), InputError> {
    let name = spec.name();
    let fail = |message: String| InputError::Parquet { file: name.clone(), message };
    let file = File::open(&spec.path).map_err(|source| InputError::Io { file: name.clone(), source })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| fail(e.to_string()))?;
    let total = u64::try_from(builder.metadata().file_metadata().num_rows()).ok();
    let schema = builder.schema().clone();
    let column = |field: &str, what: &str| {
        schema.index_of(field).map_err(|_| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            fail(format!("no {what} column {field:?} (columns: {})", names.join(", ")))
        })
    };
    let text_at = column(&spec.text_field, "text")?;
    if !matches!(schema.field(text_at).data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(fail(format!(
            "column {:?} is {}, not a string",
            spec.text_field,
            schema.field(text_at).data_type()
        )));
    }
    let id_at = spec.id_field.as_deref().map(|f| column(f, "id")).transpose()?;
    if let Some(at) = id_at {
        let ty = schema.field(at).data_type();
        if !matches!(ty, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Int64 | DataType::Int32)
        {
            return Err(fail(format!("id column {:?} is {ty}, not a string or an integer", schema.field(at).name())));
        }
    }
    let mut roots = vec![text_at];
    roots.extend(id_at);
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let reader =
        builder.with_projection(mask).with_batch_size(PARQUET_BATCH_ROWS).build().map_err(|e| fail(e.to_string()))?;
    // After projection the columns keep their relative order.
    let (text_col, id_col) = match id_at {
        Some(at) if at < text_at => (1, Some(0)),
        Some(_) => (0, Some(1)),
        None => (0, None),
    };
    let fields = (spec.text_field.clone(), spec.id_field.clone().unwrap_or_default());
    let mut row = 0u64;
    let records = reader.flat_map(move |batch| -> Vec<Result<Record, InputError>> {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return vec![Err(InputError::Parquet { file: name.clone(), message: e.to_string() })],
        };
        let start = row;
        row += batch.num_rows() as u64;
        batch_records(&batch, text_col, id_col, start, &fields)
            .into_iter()
            .map(|r| r.map_err(|(line, reason)| InputError::Invalid { file: name.clone(), line, reason }))
            .collect()
    });
    Ok((Box::new(records), total))
}

fn batch_records(
    batch: &RecordBatch,
    text_col: usize,
    id_col: Option<usize>,
    start: u64,
    (text_field, id_field): &(String, String),
) -> Vec<Result<Record, (u64, Invalid)>> {
    let texts = batch.column(text_col);
    let ids = id_col.map(|c| batch.column(c));
    (0..batch.num_rows())
        .map(|i| {
            let line = start + i as u64 + 1;
            let text = string_at(texts, i).ok_or_else(|| (line, Invalid::Null(text_field.clone())))?;
            let id = match ids {
                Some(col) => Some(id_at(col, i).ok_or_else(|| (line, Invalid::Null(id_field.clone())))?),
                None => None,
            };
            Ok(Record { line, text, id })
        })
        .collect()
}

/// The string at `i`, or `None` when it is null.
fn string_at(col: &ArrayRef, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        Some(a.value(i).to_string())
    } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        Some(a.value(i).to_string())
    } else {
        any.downcast_ref::<StringViewArray>().map(|a| a.value(i).to_string())
    }
}

fn id_at(col: &ArrayRef, i: usize) -> Option<Id> {
    if col.is_null(i) {
        return None;
    }
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        Some(Id::Int(a.value(i)))
    } else if let Some(a) = any.downcast_ref::<Int32Array>() {
        Some(Id::Int(i64::from(a.value(i))))
    } else {
        string_at(col, i).map(Id::Str)
    }
}
