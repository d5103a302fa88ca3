//! sentence-transformers' `Dense` modules, run after pooling when the ONNX file holds the
//! transformer only (sentence-transformers' own ONNX export of LaBSE, distiluse and many
//! fine-tunes): `activation(W·x + b)`, with `W` and `b` read from the module's safetensors file.
//! Skipping them gives vectors of the wrong width and direction, so a model that has them either
//! runs them here or has them inside its graph (`sentence_embedding`).

use std::path::PathBuf;

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::{
    hub::{HubError, ModelRepo},
    model_config::{DenseActivation, DenseSpec},
};

#[derive(Debug, thiserror::Error)]
pub enum DenseError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
}

/// A model's Dense layers as read: an error is kept until it matters (a graph that outputs
/// `sentence_embedding` holds the layers itself; see `forward::Readout::rows`).
pub type Layers = Result<std::sync::Arc<[Dense]>, std::sync::Arc<DenseError>>;

/// One loaded Dense layer.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `[out, in]`, row-major, as torch's `nn.Linear.weight`.
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    inputs: usize,
    outputs: usize,
    activation: DenseActivation,
}

impl Dense {
    /// Reads `<spec.path>/model.safetensors` (`linear.weight`, `linear.bias`).
    pub fn load(repo: &ModelRepo, spec: &DenseSpec) -> Result<Self, DenseError> {
        let name = format!("{}/model.safetensors", spec.path);
        let path = match repo.optional_file(&name)? {
            Some(path) => path,
            None => {
                let legacy = format!("{}/pytorch_model.bin", spec.path);
                let message = if repo.optional_file(&legacy)?.is_some() {
                    format!("{name} is missing and akidb does not read pickled {legacy}; convert it to safetensors")
                } else {
                    format!("{name} is missing")
                };
                return Err(DenseError::Weights { path: PathBuf::from(&spec.path), message });
            }
        };
        let bytes = std::fs::read(&path).map_err(|source| DenseError::Read { path: path.clone(), source })?;
        let err = |message: String| DenseError::Weights { path: path.clone(), message };
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let weight = tensors.tensor("linear.weight").map_err(|e| err(format!("linear.weight: {e}")))?;
        if weight.shape() != [spec.out_features, spec.in_features] {
            return Err(err(format!(
                "linear.weight has shape {:?}, its config says [{}, {}]",
                weight.shape(),
                spec.out_features,
                spec.in_features
            )));
        }
        let weight = floats(&weight).map_err(&err)?;
        let bias = if spec.bias {
            let b = tensors.tensor("linear.bias").map_err(|e| err(format!("linear.bias: {e}")))?;
            if b.shape() != [spec.out_features] {
                return Err(err(format!("linear.bias has shape {:?}, expected [{}]", b.shape(), spec.out_features)));
            }
            Some(floats(&b).map_err(&err)?)
        } else {
            None
        };
        Ok(Self { weight, bias, inputs: spec.in_features, outputs: spec.out_features, activation: spec.activation })
    }

    /// One pooled vector through the layer.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.inputs);
        (0..self.outputs)
            .map(|o| {
                let row = &self.weight[o * self.inputs..(o + 1) * self.inputs];
                let dot: f32 = row.iter().zip(x).map(|(w, v)| w * v).sum();
                let y = dot + self.bias.as_ref().map_or(0.0, |b| b[o]);
                match self.activation {
                    DenseActivation::Identity => y,
                    DenseActivation::Tanh => y.tanh(),
                    DenseActivation::Relu => y.max(0.0),
                    DenseActivation::Sigmoid => 1.0 / (1.0 + (-y).exp()),
                    // torch's default GELU, the exact (erf) form.
                    DenseActivation::Gelu => 0.5 * y * (1.0 + erf(f64::from(y) / std::f64::consts::SQRT_2) as f32),
                }
            })
            .collect()
    }
}

/// Every layer in order over one vector.
pub fn apply_all(layers: &[Dense], mut v: Vec<f32>) -> Vec<f32> {
    for layer in layers {
        v = layer.apply(&v);
    }
    v
}

/// A tensor's values as f32, whatever float type it was saved in.
fn floats(t: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let data = t.data();
    let words = |n: usize| data.chunks_exact(n);
    Ok(match t.dtype() {
        Dtype::F32 => words(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => words(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => words(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => {
            words(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect()
        }
        other => return Err(format!("weights of type {other:?}; akidb reads F32, F16, BF16 and F64")),
    })
}

/// The error function (Abramowitz–Stegun 7.1.26 is too coarse here; this is the series/continued
/// fraction pair, accurate to ~1e-15), for the exact GELU.
fn erf(x: f64) -> f64 {
    let t = x.abs();
    let value = if t < 2.5 {
        // Maclaurin series: converges quickly below 2.5.
        let (mut term, mut sum, x2) = (t, t, t * t);
        for n in 1..60 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz), for the tail.
        let mut f = t;
        let (mut c, mut d) = (t, 0.0f64);
        for n in 1..200 {
            let a = n as f64 / 2.0;
            d = 1.0 / (t + a * d);
            c = t + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-t * t).exp() / (f * std::f64::consts::PI.sqrt())
    };
    value.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (-1.0, -0.8427007929497149),
        ] {
            assert!((erf(x) - want).abs() < 1e-12, "erf({x}) = {} not {want}", erf(x));
        }
    }

    #[test]
    fn a_layer_is_activation_of_affine_map() {
        let layer = Dense {
            weight: vec![1.0, 2.0, -1.0, 0.5],
            bias: Some(vec![0.5, -0.25]),
            inputs: 2,
            outputs: 2,
            activation: DenseActivation::Tanh,
        };
        let out = layer.apply(&[1.0, -1.0]);
        assert!((out[0] - (1.0f32 - 2.0 + 0.5).tanh()).abs() < 1e-7);
        assert!((out[1] - (-1.0f32 - 0.5 - 0.25).tanh()).abs() < 1e-7);
    }
}
