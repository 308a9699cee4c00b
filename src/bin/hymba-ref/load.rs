//! Loading a model with the time of each step: what `generate`'s timing line and
//! `bench --from-disk` report.

use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::Hymba;
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
}

/// Load the checkpoint in `dir`, timing the weights and the meta-token prefix apart.
pub fn load_model(dir: &Path) -> Result<LoadedModel> {
    let start = Instant::now();
    let config = HymbaConfig::from_file(&dir.join("config.json"))?;
    let weights = HymbaWeights::load(&config, dir)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let model = Hymba::new(config, weights);
    Ok(LoadedModel { model, load_seconds, meta_prefix_seconds: start.elapsed().as_secs_f64() })
}

impl LoadedModel {
    /// `load: 0.812 s | meta prefix: 0.004 s`
    pub fn timing(&self) -> String {
        format!("load: {:.3} s | meta prefix: {:.3} s", self.load_seconds, self.meta_prefix_seconds)
    }
}
