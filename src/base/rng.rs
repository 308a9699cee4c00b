//! SplitMix64: a tiny, good-enough PRNG shared by random weights and sampling, so we need no
//! extra crate. Deterministic: the same seed gives the same stream on every platform.

/// The generator's whole state is one `u64` (the seed, advanced by a constant per draw).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

/// What each draw adds to the state.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The generator as it will be `draws` draws from now, in one step: a draw only adds
    /// `GAMMA` to the state, so any part of the stream can be drawn without the draws before it.
    pub fn skipped(&self, draws: u64) -> SplitMix64 {
        SplitMix64(self.0.wrapping_add(GAMMA.wrapping_mul(draws)))
    }

    /// Uniform in [−1, 1), with 24 random bits.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in [0, 1), with 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_draws_lands_where_drawing_them_does() {
        let mut drawn = SplitMix64(42);
        for draws in 0..100u64 {
            let mut skipped = SplitMix64(42).skipped(draws);
            assert_eq!(skipped.next_u64(), drawn.next_u64(), "draw {draws}");
        }
        assert_eq!(SplitMix64(7).skipped(3).skipped(4).0, SplitMix64(7).skipped(7).0);
    }
}
