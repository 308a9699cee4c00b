//! The [`Report`] as JSON (`hymba-ref explain --json`).

use super::attention::{AttentionMap, Shares};
use super::stats::Summary;
use super::{LayerReport, Report};
use crate::state::cache_plan::{CacheSize, ScalarType};
use crate::config::{AttentionSpan, KvSource};
use serde_json::{json, Value};

/// The report, with `tokens` (one text piece per id) beside the ids.
pub fn to_json(report: &Report, tokens: &[String]) -> Value {
    json!({
        "ids": report.ids,
        "tokens": tokens,
        "num_meta_tokens": report.num_meta,
        "sliding_window": report.window,
        "mean_log_prob": report.mean_log_prob,
        "layers": report.layers.iter().map(layer).collect::<Vec<_>>(),
        "attention_maps": report.maps.iter().map(map).collect::<Vec<_>>(),
        "cache": {
            "context": report.cache.context,
            "hybrid": cache_size(&report.cache.size),
            "dense_equivalent": cache_size(&report.cache.dense_equivalent),
            "dense_ratio": report.cache.dense_ratio(),
        },
        "ablation": report.ablation.as_ref().map(|layers| layers.iter().map(|a| json!({
            "layer": a.layer,
            "without_attention": a.without_attention,
            "without_ssm": a.without_ssm,
        })).collect::<Vec<_>>()),
    })
}

fn layer(l: &LayerReport) -> Value {
    json!({
        "layer": l.index,
        "attention": span(l.span),
        "kv": match l.kv {
            KvSource::Own => json!("own"),
            KvSource::ReuseFrom(j) => json!({ "reuses_layer": j }),
        },
        "heads": l.heads.iter().map(shares).collect::<Vec<_>>(),
        "branches": {
            "attention": summary(&l.branches.attention),
            "ssm": summary(&l.branches.ssm),
            "attention_share": summary(&l.branches.attention_share),
        },
        "ssm_memory": {
            "decay": summary(&l.memory.decay),
            "half_life_tokens": summary(&l.memory.half_life),
            "beyond_window": l.memory.beyond_window,
            "half_life_histogram": l.memory.half_life_histogram,
        },
    })
}

fn span(s: AttentionSpan) -> Value {
    match s {
        AttentionSpan::Global => json!("global"),
        AttentionSpan::SlidingWindow(w) => json!({ "window": w }),
    }
}

fn shares(s: &Shares) -> Value {
    json!({ "meta": s.meta, "first_token": s.first_token, "window": s.window })
}

fn summary(s: &Summary) -> Value {
    json!({ "count": s.count, "mean": s.mean, "min": s.min, "p10": s.p10, "p50": s.p50, "p90": s.p90, "max": s.max })
}

fn map(m: &AttentionMap) -> Value {
    json!({
        "layer": m.layer,
        "head": m.head,
        "attention": span(m.span),
        "tokens_per_row": m.query_bin,
        "positions_per_column": m.key_bin,
        "cells": m.cells.rows().into_iter().map(|row| row.to_vec()).collect::<Vec<_>>(),
    })
}

fn cache_size(s: &CacheSize) -> Value {
    json!({
        "kv_elements": s.kv_cache_elements,
        "ssm_state_elements": s.ssm_state_elements,
        "conv_state_elements": s.conv_state_elements,
        "f32_bytes": s.bytes(ScalarType::F32),
    })
}
