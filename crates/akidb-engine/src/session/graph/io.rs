//! Reading and writing ONNX files: the protobuf (de)serialization of the `onnx-protobuf` types,
//! kept apart so the rewrite itself never touches files. Reading parses straight from disk, so the
//! weights land in their final buffers once; writing streams them out.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::Path,
};

use onnx_protobuf::{Message, ModelProto};

use super::GraphError;

/// Reads an ONNX file straight from disk into the generated types: the weights land in their
/// final buffers without an intermediate copy of the file.
pub fn read_model(path: &Path) -> Result<ModelProto, GraphError> {
    let read_err = |source| GraphError::Read { path: path.display().to_string(), source };
    let mut reader = BufReader::new(File::open(path).map_err(read_err)?);
    ModelProto::parse_from_reader(&mut reader).map_err(|e| GraphError::Malformed(e.to_string()))
}

/// Decodes an ONNX model held in memory.
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, GraphError> {
    ModelProto::parse_from_bytes(bytes).map_err(|e| GraphError::Malformed(e.to_string()))
}

/// Streams a model to `path` (large fields are written through, not buffered).
pub fn write_model(model: &ModelProto, path: &Path) -> Result<(), GraphError> {
    let write_err = |message: String| GraphError::Write { path: path.display().to_string(), message };
    let mut writer = BufWriter::new(File::create(path).map_err(|e| write_err(e.to_string()))?);
    model.write_to_writer(&mut writer).map_err(|e| write_err(e.to_string()))?;
    writer.flush().map_err(|e| write_err(e.to_string()))
}
