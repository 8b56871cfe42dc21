//! Query expansion (αQE, Radenović et al.): a query is averaged with its `n` best
//! neighbours, each weighted by its similarity to the power α, and searched again. Images of
//! the query's category that are far from it but near its neighbours rise; the indexed
//! vectors stay as they are, and a query never meets itself (leave-one-out evaluations drop
//! it from its own neighbours first).

/// How a query is expanded before the search that answers it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Expansion {
    /// Neighbours averaged into the query; 0 turns expansion off.
    pub n: usize,
    /// Each neighbour's weight is its similarity to the query to this power (and 0 when the
    /// similarity is not positive).
    pub alpha: f32,
}

/// The weighting exponent by default: α = 3 lifted Tux Paint-8's MAP@10 most.
pub const DEFAULT_ALPHA: f32 = 3.0;
/// Most neighbours a query may be expanded with.
pub const MAX_N: usize = 100;
/// Largest weighting exponent accepted.
pub const MAX_ALPHA: f32 = 100.0;

impl Default for Expansion {
    fn default() -> Self {
        Self::off()
    }
}

impl Expansion {
    /// No expansion: the query is searched as it is.
    pub fn off() -> Self {
        Self {
            n: 0,
            alpha: DEFAULT_ALPHA,
        }
    }

    /// Expansion with `n` neighbours and the default α.
    pub fn with(n: usize) -> Self {
        Self {
            n,
            alpha: DEFAULT_ALPHA,
        }
    }

    pub fn is_off(&self) -> bool {
        self.n == 0
    }

    /// Checks the limits: `n` at most [`MAX_N`], α a number from 0 to [`MAX_ALPHA`]. The
    /// error names the field (`qe` or `qe_alpha`) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.n > MAX_N {
            return Err(("qe", format!("must be 0 to {MAX_N}, got {}", self.n)));
        }
        if !self.alpha.is_finite() || !(0.0..=MAX_ALPHA).contains(&self.alpha) {
            return Err((
                "qe_alpha",
                format!("must be a number from 0 to {MAX_ALPHA}, got {}", self.alpha),
            ));
        }
        Ok(())
    }

    /// The expanded query: `query` plus each of the first `n` `(vector, similarity)`
    /// neighbours weighted by similarity^α, L2-normalised. The query's own weight is 1 (its
    /// similarity to itself).
    pub fn expand<'a>(
        &self,
        query: &[f32],
        neighbours: impl IntoIterator<Item = (&'a [f32], f32)>,
    ) -> Vec<f32> {
        let mut out = query.to_vec();
        for (v, s) in neighbours.into_iter().take(self.n) {
            let w = s.max(0.0).powf(self.alpha);
            out.iter_mut().zip(v).for_each(|(o, x)| *o += w * x);
        }
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|x| *x /= norm);
        }
        out
    }
}

/// How a search re-ranks: the query expanded by its neighbours (`qe`) and the indexed
/// images augmented by theirs (`dba`, database-side augmentation: each indexed vector replaced
/// by [`Expansion::expand`] of itself with its `dba.n` nearest other indexed images, computed
/// once for the whole set). Both off: a plain search.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rerank {
    pub qe: Expansion,
    pub dba: Expansion,
}

impl Rerank {
    /// Query expansion only.
    pub fn qe(qe: Expansion) -> Self {
        Self {
            qe,
            dba: Expansion::off(),
        }
    }

    /// Checks both against [`Expansion::validate`]'s limits; the error names the field
    /// (`qe`, `qe_alpha`, `dba` or `dba_alpha`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.qe.validate()?;
        self.dba.validate().map_err(|(field, why)| {
            let field = if field == "qe" { "dba" } else { "dba_alpha" };
            (field, why)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_weights_neighbours_by_similarity_to_the_power_alpha() {
        let q = [1.0, 0.0];
        let a = [0.0f32, 1.0];
        let b = [-1.0f32, 0.0];
        // a at similarity 0.5 adds 0.125 × a; b (negative similarity) and anything past n
        // add nothing.
        let e = Expansion { n: 2, alpha: 3.0 }
            .expand(&q, [(&a[..], 0.5), (&b[..], -0.2), (&a[..], 0.9)]);
        let n = (1.0f32 + 0.125 * 0.125).sqrt();
        assert!(
            (e[0] - 1.0 / n).abs() < 1e-6 && (e[1] - 0.125 / n).abs() < 1e-6,
            "{e:?}"
        );
        assert_eq!(Expansion::off().expand(&q, [(&a[..], 1.0)]), q);
        let linear = Expansion { n: 1, alpha: 1.0 }.expand(&q, [(&a[..], 0.5)]);
        assert!(
            linear[1] > e[1],
            "a smaller α weighs the same neighbour more"
        );
    }

    #[test]
    fn rerank_errors_name_their_own_field() {
        let bad = Expansion { n: 101, alpha: 3.0 };
        assert_eq!(Rerank::qe(bad).validate().unwrap_err().0, "qe");
        let dba = |dba| Rerank {
            qe: Expansion::off(),
            dba,
        };
        assert_eq!(dba(bad).validate().unwrap_err().0, "dba");
        let nan = Expansion {
            n: 1,
            alpha: f32::NAN,
        };
        assert_eq!(dba(nan).validate().unwrap_err().0, "dba_alpha");
        assert!(dba(Expansion::with(5)).validate().is_ok());
    }
}
