//! Loading a model with the time of each step: what `generate`'s timing line and
//! `bench --from-disk` report. The meta-token prefix comes from the user's prefix cache when it
//! holds a valid one for these weights ([`PrefixCache`]), else it is computed and stored there.

use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::Hymba;
use hymba_ref::prefix_cache::PrefixCache;
use hymba_ref::Result;
use std::path::Path;
use std::time::Instant;

/// A model and how long it took to get it ready.
pub struct LoadedModel {
    pub model: Hymba,
    /// Reading config.json and the weights (mapping, checking, converting what must be).
    pub load_seconds: f64,
    /// Getting the sequence state after the meta tokens.
    pub meta_prefix_seconds: f64,
    /// Whether that state was read from the prefix cache (else computed).
    pub prefix_from_cache: bool,
}

/// Load the checkpoint in `dir`, timing the weights and the meta-token prefix apart. With
/// `prefix_cache`, the prefix is read from (or written to) the user's cache directory; problems
/// with the cache are warnings on stderr, never failures.
pub fn load_model(dir: &Path, prefix_cache: bool) -> Result<LoadedModel> {
    let start = Instant::now();
    let config = HymbaConfig::from_file(&dir.join("config.json"))?;
    let weights = HymbaWeights::load(&config, dir)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (model, prefix_from_cache) = match PrefixCache::user_default().filter(|_| prefix_cache) {
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
    Ok(LoadedModel { model, load_seconds, meta_prefix_seconds, prefix_from_cache })
}

impl LoadedModel {
    /// `load: 0.812 s | meta prefix: 0.004 s (cached)`
    pub fn timing(&self) -> String {
        let source = if self.prefix_from_cache { "cached" } else { "computed" };
        format!("load: {:.3} s | meta prefix: {:.3} s ({source})", self.load_seconds, self.meta_prefix_seconds)
    }
}
