//! Compact forms of a vector, as sentence-transformers' `quantize_embeddings` and Cohere's
//! `embedding_types` define them: sign bits packed 8 per byte (`ubinary`, `numpy.packbits(x > 0)`),
//! and the same bytes offset by 128 into int8 (`binary`). 32× smaller than float32, compared by
//! Hamming distance.

use serde::{Deserialize, Serialize};

/// How a vector is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Dtype {
    /// float32, as computed.
    #[default]
    Float32,
    /// Sign bits, 8 per byte, first dimension in the highest bit (`numpy.packbits`).
    Ubinary,
    /// The `ubinary` bytes minus 128, as int8.
    Binary,
}

impl Dtype {
    pub const NAMES: &'static str = "float32, ubinary, binary";

    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Ubinary => "ubinary",
            Dtype::Binary => "binary",
        }
    }

    /// Values per row of a `dimension`-wide vector: a dimension that is not a multiple of 8
    /// leaves the last byte's low bits zero, per row.
    pub fn width(self, dimension: usize) -> usize {
        match self {
            Dtype::Float32 => dimension,
            Dtype::Ubinary | Dtype::Binary => dimension.div_ceil(8),
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "float32" | "float" => Ok(Dtype::Float32),
            "ubinary" => Ok(Dtype::Ubinary),
            "binary" => Ok(Dtype::Binary),
            other => Err(format!("'{other}' is not an output dtype; akidb writes {}", Dtype::NAMES)),
        }
    }
}

/// `numpy.packbits(v > 0)`: bit 7 of byte 0 is dimension 0.
pub fn ubinary(v: &[f32]) -> Vec<u8> {
    v.chunks(8)
        .map(|chunk| chunk.iter().enumerate().fold(0u8, |byte, (i, &x)| byte | (u8::from(x > 0.0) << (7 - i))))
        .collect()
}

/// [`ubinary`] offset by −128 into int8, as sentence-transformers' `binary` precision.
pub fn binary(v: &[f32]) -> Vec<i8> {
    ubinary(v).into_iter().map(|b| (i16::from(b) - 128) as i8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_packed_as_numpy_packbits_and_offset_as_sentence_transformers() {
        let v = [0.1, -0.2, 0.0, 0.3, -1.0, 2.0, 0.5, -0.5, 0.7];
        // x > 0: 1 0 0 1 0 1 1 0 | 1 → 0b1001_0110, 0b1000_0000
        assert_eq!(ubinary(&v), vec![0b1001_0110, 0b1000_0000]);
        assert_eq!(binary(&v), vec![22, 0], "0b1001_0110 is 150, 0b1000_0000 is 128: minus 128 each");
        assert_eq!(binary(&[-1.0; 8]), vec![-128]);
        assert_eq!(binary(&[1.0; 8]), vec![127]);
        assert_eq!((Dtype::Ubinary.width(384), Dtype::Binary.width(9), Dtype::Float32.width(9)), (48, 2, 9));
        assert_eq!("binary".parse::<Dtype>(), Ok(Dtype::Binary));
        assert!("int4".parse::<Dtype>().unwrap_err().contains("float32, ubinary, binary"));
    }
}
