//! Multimodal rotary position ids: HF's `get_rope_index` for text and image tokens.

use super::config::*;
use candle_core::Result;

/// Position ids `[3][len]` (temporal, height, width) for one unpadded sequence, and the
/// `rope_delta` such that a token appended at padded sequence index `p` has position
/// `p + delta` on all three axes. `padded_len` is the row length after left padding, as HF
/// subtracts the padded length.
///
/// Text tokens advance all three axes together; the `t*h*w/merge^2` tokens of an image get
/// `(t, row, col)` offsets from the position after the preceding text, and the text after an
/// image restarts at the image's largest position + 1.
pub fn rope_index(
    input_ids: &[u32],
    grids: &[[usize; 3]],
    cfg: &Config,
    padded_len: usize,
) -> Result<([Vec<i64>; 3], i64)> {
    let m = cfg.vision_config.spatial_merge_size;
    let image = cfg.image_token_id;
    // HF counts images as vision_start tokens followed by an image token.
    let n_images = input_ids
        .windows(2)
        .filter(|w| w[0] == cfg.vision_start_token_id && w[1] == image)
        .count();
    if n_images != grids.len() {
        candle_core::bail!(
            "prompt has {n_images} <|vision_start|><|image_pad|> groups but {} images were given",
            grids.len()
        );
    }
    let mut pos: [Vec<i64>; 3] = Default::default();
    let mut next = 0i64; // max position so far + 1
    let mut st = 0usize;
    for &[t, h, w] in grids {
        let ed = input_ids[st..]
            .iter()
            .position(|&id| id == image)
            .map(|p| p + st)
            .ok_or_else(|| candle_core::Error::Msg("missing image token".into()))?;
        for i in 0..(ed - st) as i64 {
            for axis in &mut pos {
                axis.push(next + i);
            }
        }
        let base = next + (ed - st) as i64;
        let (lh, lw) = (h / m, w / m);
        let mut max = base;
        for ti in 0..t {
            for hi in 0..lh {
                for wi in 0..lw {
                    let p = [base + ti as i64, base + hi as i64, base + wi as i64];
                    for (axis, v) in pos.iter_mut().zip(p) {
                        axis.push(v);
                        max = max.max(v);
                    }
                }
            }
        }
        next = max + 1;
        st = ed + t * lh * lw;
        if st > input_ids.len() || input_ids[ed..st].iter().any(|&id| id != image) {
            candle_core::bail!("image at token {ed} needs {} image tokens", t * lh * lw);
        }
    }
    for i in 0..(input_ids.len() - st) as i64 {
        for axis in &mut pos {
            axis.push(next + i);
        }
    }
    let max = pos
        .iter()
        .flat_map(|a| a.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok((pos, max + 1 - padded_len as i64))
}
