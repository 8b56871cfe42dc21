//! Dataset: finding images and their labels on disk. A dataset is a folder of category
//! subfolders, optionally under `train/`, `valid/` and `test/` split folders. Also builds
//! the two bundled sets (Tux Paint stamps from its manifest, Fashion-MNIST from IDX files).

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// File endings taken as images when scanning folders (content is still sniffed on decode).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];
/// Split folder names recognised at the top of a dataset.
pub const SPLITS: &[&str] = &["train", "valid", "test"];

/// One image file with the labels its place in the tree gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledFile {
    pub path: PathBuf,
    /// `train`, `valid`, `test`, or empty for a folder without splits.
    pub split: String,
    /// The first folder below the split (or the root); empty for loose files.
    pub category: String,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Lists the images under `root` with their split and category, sorted by path.
pub fn scan(root: &Path) -> Result<Vec<LabeledFile>> {
    if !root.is_dir() {
        bail!("{} is not a folder", root.display());
    }
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;
    let has_splits = SPLITS.iter().any(|s| root.join(s).is_dir());
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(&root)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        if !entry.file_type().is_file() || !is_image(entry.path()) {
            continue;
        }
        let rel: Vec<String> = entry
            .path()
            .strip_prefix(&root)
            .expect("walkdir stays under its root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let dirs = &rel[..rel.len() - 1];
        let (split, category) = if has_splits {
            match dirs.first() {
                Some(s) if SPLITS.contains(&s.as_str()) => {
                    (s.clone(), dirs.get(1).cloned().unwrap_or_default())
                }
                _ => continue, // files beside the split folders belong to no split
            }
        } else {
            (String::new(), dirs.first().cloned().unwrap_or_default())
        };
        out.push(LabeledFile {
            path: entry.into_path(),
            split,
            category,
        });
    }
    Ok(out)
}

/// The Tux Paint 8-category manifest (275 stamps; a header line, then `category<TAB>path`).
pub const TUXPAINT_MANIFEST: &str = include_str!("../assets/tuxpaint_8cat_manifest.tsv");

/// Builds the Tux Paint 8-category set: copies each manifest row (`category<TAB>relative path`)
/// from `stamps` into `out/<last part of category>/<path below the category>`. Returns the
/// number of images.
pub fn build_tuxpaint(text: &str, stamps: &Path, out: &Path) -> Result<usize> {
    let mut n = 0;
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let (category, rel) = line
            .split_once('\t')
            .with_context(|| format!("bad manifest line {line:?}"))?;
        let src = stamps.join(rel);
        // Keep the sub-folders below the category: stamp file names repeat across them.
        let below = rel
            .strip_prefix(category)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(rel);
        let category = category.rsplit('/').next().unwrap_or(category);
        let dst = out.join(category).join(below);
        std::fs::create_dir_all(dst.parent().context("manifest path without a file name")?)?;
        std::fs::copy(&src, &dst).with_context(|| {
            format!(
                "copying {} (install the stamps: apt-get install tuxpaint-stamps-default)",
                src.display()
            )
        })?;
        n += 1;
    }
    Ok(n)
}

/// The ten Fashion-MNIST class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];

fn read_idx_gz(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| {
        format!(
            "opening {} (install it: apt-get install dataset-fashion-mnist)",
            path.display()
        )
    })?;
    let mut buf = Vec::new();
    flate2::read::GzDecoder::new(f).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Writes the first `per_class` images of each class from a Fashion-MNIST IDX pair
/// (`<prefix>-images-idx3-ubyte.gz`, `<prefix>-labels-idx1-ubyte.gz`) as PNGs into
/// `out/<class>/`. Returns the number written.
pub fn build_fashion_mnist(
    src_dir: &Path,
    prefix: &str,
    per_class: usize,
    out: &Path,
) -> Result<usize> {
    let images = read_idx_gz(&src_dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
    let labels = read_idx_gz(&src_dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
    anyhow::ensure!(images.len() > 16 && labels.len() > 8, "truncated IDX files");
    let be = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let (n, rows, cols) = (be(&images, 4), be(&images, 8), be(&images, 12));
    anyhow::ensure!(
        labels.len() >= 8 + n && images.len() >= 16 + n * rows * cols,
        "truncated IDX files"
    );
    let mut taken = [0usize; 10];
    let mut written = 0;
    for i in 0..n {
        let label = labels[8 + i] as usize;
        if label >= 10 || taken[label] >= per_class {
            continue;
        }
        let dir = out.join(FASHION_MNIST_CLASSES[label]);
        std::fs::create_dir_all(&dir)?;
        let px = images[16 + i * rows * cols..16 + (i + 1) * rows * cols].to_vec();
        let img = image::GrayImage::from_raw(cols as u32, rows as u32, px)
            .context("bad IDX image size")?;
        img.save(dir.join(format!("{prefix}_{i:05}.png")))?;
        taken[label] += 1;
        written += 1;
        if taken.iter().all(|&t| t >= per_class) {
            break;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn categories_and_splits_come_from_folders() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("cats/a.png"));
        touch(&r.join("cats/deep/b.JPG"));
        touch(&r.join("dogs/c.webp"));
        touch(&r.join("dogs/notes.txt"));
        touch(&r.join("loose.png"));
        let files = scan(r).unwrap();
        let labels: Vec<(&str, &str)> = files
            .iter()
            .map(|f| (f.split.as_str(), f.category.as_str()))
            .collect();
        assert_eq!(
            labels,
            vec![("", "cats"), ("", "cats"), ("", "dogs"), ("", "")]
        );

        let d2 = tempfile::tempdir().unwrap();
        let r2 = d2.path();
        touch(&r2.join("train/cats/a.png"));
        touch(&r2.join("valid/dogs/b.png"));
        touch(&r2.join("test/c.png"));
        touch(&r2.join("README.png"));
        let files = scan(r2).unwrap();
        let labels: Vec<(&str, &str)> = files
            .iter()
            .map(|f| (f.split.as_str(), f.category.as_str()))
            .collect();
        assert_eq!(
            labels,
            vec![("test", ""), ("train", "cats"), ("valid", "dogs")]
        );
        assert!(scan(&r2.join("nope")).is_err());
    }
}
