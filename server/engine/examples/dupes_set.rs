//! The duplicate test set of `bench/dupes.sh`, and its score.
//!
//!   dupes_set make SRC OUT [EVERY]   copies SRC (category folders) to OUT and plants, beside
//!                                    every EVERY-th image (default 3), five copies of it:
//!                                    untouched (exact), resized to 50 % (onto white),
//!                                    recompressed as JPEG q60 (onto white), centre-cropped to 90 % of each side, flipped left to
//!                                    right; OUT/truth.tsv lists them
//!   dupes_set score OUT REPORT T...  precision and recall per kind of copy of a `kadr dupes
//!                                    --json` report (its last line), at each threshold T
//!
//! A found pair is right when both images come from one original (the original and a copy, or
//! two copies of it); recall counts the planted (original, copy) pairs found.

use anyhow::{bail, Context, Result};
use image::{imageops, DynamicImage, ImageFormat, Rgb, RgbImage};
use kadr_engine::dupes::{DupeKind, DupesReport};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const KINDS: [&str; 5] = ["exact", "resize50", "jpeg60", "crop90", "flip"];

fn onto_white(img: &DynamicImage) -> RgbImage {
    let rgba = img.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as f32 / 255.0;
        *o = Rgb([0, 1, 2].map(|c| (p[c] as f32 * a + 255.0 * (1.0 - a)).round() as u8));
    }
    out
}

fn make(src: &Path, out: &Path, every: usize) -> Result<()> {
    let mut files: Vec<_> = walk(src)?;
    files.sort();
    let mut truth = String::from("original\tcopy\tkind\n");
    for (i, rel) in files.iter().enumerate() {
        let from = src.join(rel);
        let to = out.join(rel);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(&from, &to)?;
        if i % every != 0 {
            continue;
        }
        let img = image::open(&from).with_context(|| format!("{}", from.display()))?;
        let stem = rel.with_extension("");
        let stem = stem.to_string_lossy();
        for kind in KINDS {
            let ext = if kind == "jpeg60" { "jpg" } else { "png" };
            let copy = format!("{stem}.dup-{kind}.{ext}");
            let path = out.join(&copy);
            match kind {
                "exact" => {
                    std::fs::copy(&from, &path)?;
                }
                // Flattened first: the image crate resizes RGBA without premultiplying, so
                // transparent black bleeds into the edges as a dark fringe no editor makes.
                "resize50" => imageops::resize(
                    &onto_white(&img),
                    (img.width() / 2).max(1),
                    (img.height() / 2).max(1),
                    imageops::FilterType::Triangle,
                )
                .save_with_format(&path, ImageFormat::Png)?,
                "jpeg60" => {
                    let f = std::fs::File::create(&path)?;
                    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(f, 60);
                    enc.encode_image(&onto_white(&img))?;
                }
                "crop90" => {
                    let (w, h) = (img.width(), img.height());
                    let (cw, ch) = ((w * 9 / 10).max(1), (h * 9 / 10).max(1));
                    img.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch)
                        .save_with_format(&path, ImageFormat::Png)?
                }
                "flip" => img.fliph().save_with_format(&path, ImageFormat::Png)?,
                _ => unreachable!(),
            }
            truth.push_str(&format!("{}\t{copy}\t{kind}\n", rel.display()));
        }
    }
    std::fs::write(out.join("truth.tsv"), truth)?;
    println!(
        "{} images copied to {}, {} planted copies ({} originals × {})",
        files.len(),
        out.display(),
        files.len().div_ceil(every) * KINDS.len(),
        files.len().div_ceil(every),
        KINDS.len()
    );
    Ok(())
}

fn walk(root: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("png" | "jpg" | "jpeg" | "webp")
            ) {
                out.push(p.strip_prefix(root)?.to_path_buf());
            }
        }
    }
    Ok(out)
}

fn score(out: &Path, report: &Path, thresholds: &[f32]) -> Result<()> {
    let truth = std::fs::read_to_string(out.join("truth.tsv"))?;
    // copy → (original, kind); every image → its original.
    let mut planted: HashMap<String, (String, String)> = HashMap::new();
    for line in truth.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        planted.insert(f[1].into(), (f[0].into(), f[2].into()));
    }
    let origin = |name: &str| -> String {
        planted
            .get(name)
            .map_or_else(|| name.to_string(), |(o, _)| o.clone())
    };
    let text = std::fs::read_to_string(report)?;
    let last = text.lines().last().context("empty report")?;
    let r: DupesReport = serde_json::from_str(last).context("not a kadr dupes --json line")?;
    println!(
        "{} images, {} planted copies; report threshold {}",
        r.images,
        planted.len(),
        r.threshold
    );
    for &t in thresholds {
        if t < r.threshold {
            bail!("threshold {t} is below the report's own ({})", r.threshold);
        }
        let found: Vec<_> = r
            .pairs
            .iter()
            .filter(|p| p.kind == DupeKind::Exact || p.similarity >= t)
            .collect();
        // Per kind: planted pairs found, and found pairs with a copy of that kind (right or not).
        let mut rows: BTreeMap<&str, (usize, usize, usize, usize)> = BTreeMap::new();
        for (copy, (orig, kind)) in &planted {
            let hit = found
                .iter()
                .any(|p| (p.a == *copy && p.b == *orig) || (p.b == *copy && p.a == *orig));
            let e = rows.entry(kind.as_str()).or_default();
            e.0 += 1;
            e.1 += hit as usize;
        }
        let mut unplanted = Vec::new();
        for p in &found {
            let right = origin(&p.a) == origin(&p.b);
            for name in [&p.a, &p.b] {
                if let Some((_, kind)) = planted.get(name.as_str()) {
                    let e = rows.entry(kind.as_str()).or_default();
                    e.2 += 1;
                    e.3 += right as usize;
                }
            }
            if !right && !planted.contains_key(&p.a) && !planted.contains_key(&p.b) {
                unplanted.push(p);
            }
        }
        let right = found
            .iter()
            .filter(|p| origin(&p.a) == origin(&p.b))
            .count();
        println!(
            "threshold {t}: {} pairs found, precision {:.3}",
            found.len(),
            right as f64 / found.len().max(1) as f64
        );
        for (kind, (n, hit, with, with_right)) in &rows {
            println!(
                "  {kind:<9} recall {:.3} ({hit}/{n})  precision {:.3} ({with_right}/{with})",
                *hit as f64 / (*n).max(1) as f64,
                *with_right as f64 / (*with).max(1) as f64
            );
        }
        println!(
            "  between two originals of the set (not planted): {}",
            unplanted.len()
        );
        for p in unplanted.iter().take(5) {
            println!("    {:.4} {} {}", p.similarity, p.a, p.b);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("make") if a.len() >= 3 => make(
            a[1].as_ref(),
            a[2].as_ref(),
            a.get(3).map_or(Ok(3), |e| e.parse())?,
        ),
        Some("score") if a.len() >= 4 => {
            let t: Vec<f32> = a[3..].iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
            score(a[1].as_ref(), a[2].as_ref(), &t)
        }
        _ => bail!("usage: dupes_set make SRC OUT [EVERY] | dupes_set score OUT REPORT T..."),
    }
}
