//! How a vector is written into a response: numbers, base64 of its little-endian float32 bytes
//! (OpenAI's and Cohere's `base64`), or its sign bits packed 8 per byte (`ubinary`, and `binary`
//! as int8) — the compact forms of [`akidb_engine::quantize`]. One list of names for every route.

use base64::Engine as _;
use serde::Serialize;
use utoipa::ToSchema;

use axum::http::StatusCode;

use crate::error::ApiError;
use akidb_engine::{pooling, quantize};

/// One way to write a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Encoding {
    Float,
    Base64,
    Ubinary,
    Binary,
}

impl Encoding {
    /// What akidb writes, as the 422 names them.
    pub const SUPPORTED: &'static str = "float, base64, ubinary, binary";

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Float => "float",
            Encoding::Base64 => "base64",
            Encoding::Ubinary => "ubinary",
            Encoding::Binary => "binary",
        }
    }

    /// `name` read from the request's `field`; anything else is the client's 422 naming what is
    /// supported (Cohere's int8/uint8 scales need calibration data a model does not ship).
    pub fn parse(name: &str, field: &'static str) -> Result<Self, ApiError> {
        match name {
            "float" => Ok(Encoding::Float),
            "base64" => Ok(Encoding::Base64),
            "ubinary" => Ok(Encoding::Ubinary),
            "binary" => Ok(Encoding::Binary),
            "int8" | "uint8" => Err(ApiError::unprocessable(format!(
                "{field} '{name}' is not supported: its scale needs calibration data the model does not have; akidb writes {}",
                Self::SUPPORTED
            ))
            .param(field)),
            other => Err(ApiError::unprocessable(format!(
                "{field} '{other}' is unknown; akidb writes {}",
                Self::SUPPORTED
            ))
            .param(field)),
        }
    }

    pub fn encode(self, v: Vec<f32>) -> Encoded {
        match self {
            Encoding::Float => Encoded::Float(v),
            Encoding::Base64 => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Encoded::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Encoding::Ubinary => Encoded::Unsigned(quantize::ubinary(&v)),
            Encoding::Binary => Encoded::Signed(quantize::binary(&v)),
        }
    }
}

/// A requested `field` (`dimensions`, Cohere's `output_dimension`) within the model's
/// `dimension`: Matryoshka models are trained so that a vector's first dimensions make a good
/// vector by themselves. Out of range is `status` (422, or 400 where the API says so: OpenAI's).
pub(crate) fn dimensions(
    requested: Option<i64>,
    dimension: usize,
    status: StatusCode,
    field: &'static str,
) -> Result<Option<usize>, ApiError> {
    match requested {
        None => Ok(None),
        Some(d) if d >= 1 && (d as usize) <= dimension => Ok(Some(d as usize)),
        Some(d) => {
            Err(ApiError::new(status, format!("{field} must be between 1 and the model's {dimension}, not {d}"))
                .param(field))
        }
    }
}

/// Cuts each vector to `d` dimensions, normalizing after the cut (a cut unit vector is shorter).
pub(crate) fn shorten(vectors: &mut [Vec<f32>], d: Option<usize>, normalize: bool) {
    if let Some(d) = d {
        for v in vectors {
            v.truncate(d);
            if normalize {
                pooling::normalize(v);
            }
        }
    }
}

/// A vector as written: numbers, a base64 string, or packed bits (uint8 or int8 numbers).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Encoded {
    Float(Vec<f32>),
    Base64(String),
    Unsigned(Vec<u8>),
    Signed(Vec<i8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_calibrated_types_are_refused_naming_the_supported_ones() {
        assert_eq!(Encoding::parse("ubinary", "embedding_types").unwrap(), Encoding::Ubinary);
        for name in ["int8", "float16", "uint8"] {
            let e = Encoding::parse(name, "embedding_types").expect_err(name);
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(e.message.contains(Encoding::SUPPORTED) && e.message.contains(name), "{}", e.message);
        }
        let Encoded::Base64(b) = Encoding::Base64.encode(vec![1.0]) else { panic!("base64") };
        assert_eq!(b, "AACAPw==", "little-endian float32 1.0");
        let Encoded::Signed(s) = Encoding::Binary.encode(vec![1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]) else {
            panic!("binary")
        };
        assert_eq!(s, vec![1], "0b1000_0001 is 129, minus 128");
    }
}
