//! Loading a model with the time of each step: what `generate`'s timing line and
//! `bench --from-disk` report. The meta-token prefix comes from the user's prefix cache when it
//! holds a valid one for these weights ([`PrefixCache`]), else it is computed and stored there.

use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::Hymba;
use hymba_ref::features::prefix_cache::PrefixCache;
use hymba_ref::kernels::quant::QuantType;
use hymba_ref::{Error, ErrorKind, Result};
use std::path::Path;
use std::time::Instant;

/// A model and how long it took to get it ready.
pub struct LoadedModel {
    pub model: Hymba,
    /// Reading config.json and the weights (mapping, checking, converting what must be).
    pub load_seconds: f64,
    /// Quantizing the weights at load (`--weights q8_0|q4_0`): the format and the seconds it took.
    pub quantized: Option<(QuantType, f64)>,
    /// Getting the sequence state after the meta tokens.
    pub meta_prefix_seconds: f64,
    /// Whether that state was read from the prefix cache (else computed).
    pub prefix_from_cache: bool,
}

/// Load the checkpoint in `dir`, timing the weights and the meta-token prefix apart. With
/// `prefix_cache`, the prefix is read from (or written to) the user's cache directory; problems
/// with the cache are warnings on stderr, never failures. With `quantize_to` (`--weights`), the
/// matrices are quantized after loading ([`quantize_at_load`]); the prefix cache, keyed by the
/// checkpoint on disk, is then not used.
pub fn load_model(dir: &Path, prefix_cache: bool, quantize_to: Option<QuantType>) -> Result<LoadedModel> {
    let start = Instant::now();
    let config = HymbaConfig::from_file(&dir.join("config.json"))?;
    let weights = HymbaWeights::load(&config, dir)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let (config, weights, quantized) = match quantize_to {
        Some(kind) => {
            let start = Instant::now();
            let (config, weights) = quantize_at_load(config, weights, kind, dir)?;
            (config, weights, Some((kind, start.elapsed().as_secs_f64())))
        }
        None => (config, weights, None),
    };
    let start = Instant::now();
    let (model, prefix_from_cache) = match PrefixCache::user_default().filter(|_| prefix_cache && quantized.is_none()) {
        Some(cache) => {
            let built = cache.build_model(dir, config, weights)?;
            for warning in &built.warnings {
                eprintln!("warning: {warning}");
            }
            (built.model, built.read_from_cache)
        }
        None => (Hymba::new(config, weights), false),
    };
    let meta_prefix_seconds = start.elapsed().as_secs_f64();
    Ok(LoadedModel { model, load_seconds, quantized, meta_prefix_seconds, prefix_from_cache })
}

/// `--weights q8_0|q4_0`: a float checkpoint's matrices quantized to `kind` as they would be by
/// `hymba-ref quantize` (the same bits), the config marked as quantized. A checkpoint that is
/// quantized already is refused (a usage error naming `--weights`).
pub fn quantize_at_load(mut config: HymbaConfig, weights: HymbaWeights, kind: QuantType, dir: &Path) -> Result<(HymbaConfig, HymbaWeights)> {
    if let Some(stored) = config.quantization {
        let message = format!("--weights {kind}: {} is already quantized ({stored}); give a bf16 or f32 checkpoint", dir.display());
        return Err(Error::new(ErrorKind::Usage, message));
    }
    let weights = weights.quantized(kind)?;
    config.quantization = Some(kind);
    Ok((config, weights))
}

/// The value parser of `--weights`: `q8_0` or `q4_0` (clap names the flag and exits with 2 on
/// anything else).
pub fn weights_format(text: &str) -> std::result::Result<QuantType, String> {
    QuantType::from_name(text).ok_or_else(|| {
        let names = QuantType::ALL.map(QuantType::name).join(", ");
        format!("{text:?} is not a weight format to quantize to (expected one of {names})")
    })
}

/// Load `dir` as [`hymba_ref::model::Hymba::from_dir`] does, quantizing at load with `quantize_to`.
pub fn load_plain(dir: &Path, quantize_to: Option<QuantType>) -> Result<Hymba> {
    Ok(load_model(dir, false, quantize_to)?.model)
}

impl LoadedModel {
    /// `load: 0.812 s | meta prefix: 0.004 s (cached)`, with `| quantize to q8_0: 0.120 s` after
    /// the load when quantizing at load.
    pub fn timing(&self) -> String {
        let source = if self.prefix_from_cache { "cached" } else { "computed" };
        let quantize = match self.quantized {
            Some((kind, seconds)) => format!(" | quantize to {kind}: {seconds:.3} s"),
            None => String::new(),
        };
        format!("load: {:.3} s{quantize} | meta prefix: {:.3} s ({source})", self.load_seconds, self.meta_prefix_seconds)
    }
}
