//! Checks on `bench`'s flags before anything is allocated, so that a value too large for this
//! machine is an error naming the flag, not an allocation failure (an abort, "signal 6") in a
//! child process.
//!
//! Memory is compared with `MemAvailable` from `/proc/meminfo` ([`available_memory`]; elsewhere
//! it is not checked).
//! The estimate of what a config × context needs errs low, so it only refuses runs that cannot
//! fit: f32 weights, the cache at the context plus the decoded tokens, and a few activation rows
//! per prefilled token (projections, MLP, logits and the SSM scan's `D·N` per token).

use crate::available_memory::available_memory;
use hymba_ref::state::cache_plan::{CachePlan, ScalarType};
use hymba_ref::config::HymbaConfig;
use hymba_ref::{Error, Result};

/// `3.2 GiB`, or `49.2 MiB` below a GiB.
fn gib(bytes: u128) -> String {
    let b = bytes as f64;
    if b < (1u64 << 30) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    }
}

/// Ok if a `mib`-MiB bandwidth buffer fits in `available` bytes; the error names the flag.
pub fn check_bandwidth_buffer(mib: usize, available: Option<u64>) -> Result<()> {
    let bytes = (mib as u128) << 20;
    match available {
        Some(avail) if bytes > u128::from(avail) => Err(Error::usage(
            "--bandwidth-mib",
            mib,
            format!("a {} buffer does not fit in the {} of memory available (0 skips the measurement)", gib(bytes), gib(u128::from(avail))),
        )),
        _ => Ok(()),
    }
}

/// Ok if config `name` fits in `available` bytes at every context; the error names `--configs`
/// when the weights alone do not fit, else `--contexts` and the context.
pub fn check_config_fits(
    name: &str,
    cfg: &HymbaConfig,
    params: u64,
    contexts: &[usize],
    decode_tokens: usize,
    available: Option<u64>,
) -> Result<()> {
    let Some(avail) = available.map(u128::from) else { return Ok(()) };
    let weights = u128::from(params) * 4;
    if weights > avail {
        let problem = format!("its {params} parameters need {} as f32, but only {} of memory is available", gib(weights), gib(avail));
        return Err(Error::usage("--configs", name, problem));
    }
    for &context in contexts {
        let too_big = |needed: Option<u128>| {
            let needed = needed.map_or_else(|| "more memory than can be counted".to_string(), gib);
            let problem = format!(
                "config {name} needs about {needed} at this context (weights {}, cache, activations), \
                 but only {} of memory is available",
                gib(weights),
                gib(avail)
            );
            Error::usage("--contexts", context, problem)
        };
        let cache = context
            .checked_add(decode_tokens)
            .and_then(|c| CachePlan::new(cfg, c).ok())
            .map(|plan| plan.size.bytes(ScalarType::F32) as u128);
        let row = cfg.in_proj_rows(&cfg.layers[0])
            + 2 * cfg.intermediate_size
            + cfg.vocab_size
            + cfg.d_inner() * cfg.mamba_d_state;
        let needed = cache.map(|c| weights + c + context as u128 * row as u128 * 4);
        match needed {
            Some(n) if n <= avail => {}
            other => return Err(too_big(other)),
        }
    }
    Ok(())
}

/// Every check above for a whole `bench` invocation, before the first allocation.
pub fn check_run(specs: &[super::ConfigSpec], args: &super::BenchArgs) -> Result<()> {
    let available = available_memory();
    check_bandwidth_buffer(args.bandwidth_mib, available)?;
    for spec in specs {
        let cfg = HymbaConfig::from_json_str(&spec.json)?;
        let params = cfg.parameter_count() as u64;
        check_config_fits(&spec.name, &cfg, params, &args.contexts, args.decode_tokens, available)?;
    }
    Ok(())
}
