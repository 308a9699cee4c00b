//! `explain` on the bundled demo model (M = 16 meta tokens, window W = 64, global layers 0, 4, 7):
//! the attention weights it reports obey the mask and equal a plain recomputation from
//! `model::plain`'s cache; the shares are fractions; ablating nothing reproduces the log-probability
//! of `forward`; the page is well-formed XML; the JSON and the command have what they promise.

mod common;

use hymba_ref::config::AttentionSpan;
use hymba_ref::features::explain::ablation::{mean_log_prob, without_branches, Branch};
use hymba_ref::features::explain::html::{to_html, PageInfo};
use hymba_ref::features::explain::json::to_json;
use hymba_ref::features::explain::{explain, Options, Report};
use hymba_ref::model::attention::is_visible;
use hymba_ref::model::{plain, Hymba, LayerTrace};
use ndarray::{Array2, Array3};
use std::process::Output;
use std::sync::OnceLock;

fn model() -> &'static Hymba {
    static MODEL: OnceLock<Hymba> = OnceLock::new();
    MODEL.get_or_init(|| Hymba::from_dir(std::path::Path::new(hymba_ref::DEFAULT_MODEL_DIR)).unwrap())
}

/// BOS and `n − 1` ids spread over the vocabulary.
fn ids(n: usize) -> Vec<u32> {
    std::iter::once(1).chain((1..n as u32).map(|i| 3 + (i * 389) % 3990)).collect()
}

/// Every layer and head, one row and column per token and position (no bins).
fn every_map(n: usize) -> Options {
    let cfg = &model().config;
    Options {
        layers: Some((0..cfg.num_hidden_layers).collect()),
        heads: Some((0..cfg.num_attention_heads).collect()),
        ablate: false,
        max_map_bins: cfg.num_memory_tokens + n,
    }
}

/// 100 tokens: past M + W, so the window layers' queries at the end cannot see the first tokens.
fn report_100() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| explain(model(), &ids(100), &every_map(100)).unwrap())
}

#[test]
fn attention_rows_sum_to_one_and_are_zero_exactly_where_the_mask_hides_keys() {
    let (report, m) = (report_100(), model().config.num_memory_tokens);
    assert_eq!(report.maps.len(), 8 * 4);
    let mut hidden = 0;
    for map in &report.maps {
        assert_eq!((map.query_bin, map.key_bin, map.cells.dim()), (1, 1, (100, m + 100)));
        for (t, row) in map.cells.rows().into_iter().enumerate() {
            let i = m + t; // the query's position
            assert!((row.sum() - 1.0).abs() < 1e-5, "layer {} head {} token {t}: sum {}", map.layer, map.head, row.sum());
            for (j, &w) in row.iter().enumerate() {
                let visible = is_visible(i, j, map.span, m);
                assert_eq!(w > 0.0, visible, "layer {} head {} query {i} key {j}: {w}", map.layer, map.head);
                hidden += usize::from(!visible && j <= i);
            }
            for j in 0..m {
                assert!(row[j] > 0.0, "meta key {j} is always visible");
            }
        }
    }
    // The window hid keys: in each window layer, the queries at positions > M + W lose the first tokens.
    assert!(hidden > 0);
}

#[test]
fn shares_are_fractions_and_a_window_layer_spends_everything_on_meta_tokens_and_its_window() {
    let report = report_100();
    assert_eq!(report.layers.len(), 8);
    for layer in &report.layers {
        assert_eq!(layer.heads.len(), 4);
        for s in &layer.heads {
            for v in [s.meta, s.first_token, s.window] {
                assert!((0.0..=1.0 + 1e-9).contains(&v), "layer {}: {s:?}", layer.index);
            }
            assert!(s.meta + s.window <= 1.0 + 1e-6);
            if let AttentionSpan::SlidingWindow(_) = layer.span {
                assert!((s.meta + s.window - 1.0).abs() < 1e-5, "layer {}: {s:?}", layer.index);
            }
        }
        for summary in [&layer.branches.attention, &layer.branches.ssm, &layer.memory.decay] {
            assert_eq!(summary.count, if summary == &layer.memory.decay { 256 * 16 } else { 100 });
            assert!(summary.min <= summary.p50 && summary.p50 <= summary.max && summary.min > 0.0);
        }
        assert!(layer.memory.decay.max < 1.0, "A < 0 and Δ > 0: every state decays");
        assert!((layer.memory.half_life_histogram.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    // The meta tokens' share in each map equals the layer's per-head mean from the same weights.
    for map in &report.maps {
        let meta: f64 = map.cells.rows().into_iter().map(|r| r.iter().take(16).map(|&w| f64::from(w)).sum::<f64>()).sum::<f64>() / 100.0;
        let want = report.layers[map.layer].heads[map.head].meta;
        assert!((meta - want).abs() < 1e-5, "layer {} head {}: {meta} vs {want}", map.layer, map.head);
    }
}

#[test]
fn ablating_nothing_reproduces_the_log_probability_of_forward() {
    let (model, ids) = (model(), ids(100));
    let report = report_100();
    let forward = mean_log_prob(model.forward(&ids).unwrap().view(), &ids);
    assert_eq!(report.mean_log_prob, forward, "the observed pass is the pass of forward");
    let unchanged = without_branches(model, &[]).forward(&ids).unwrap();
    assert_eq!(mean_log_prob(unchanged.view(), &ids), forward);
    // Removing a branch changes the score, and removing both of a layer equals removing the
    // layer's mixer: its fusion is then zero, whatever the attention and SSM heads computed.
    let without = |removed: &[(usize, Branch)]| mean_log_prob(without_branches(model, removed).forward(&ids).unwrap().view(), &ids);
    assert_ne!(without(&[(3, Branch::Attention)]), forward);
    assert_ne!(without(&[(3, Branch::Ssm)]), forward);
    let both = [(3, Branch::Attention), (3, Branch::Ssm)];
    let without_both = without_branches(model, &both);
    // In the pass itself: layer 3's fusion and mixer output are exactly zero (the demo model has
    // no out_proj bias), so the layer's output is its input plus its MLP alone.
    let mut checked = 0;
    let mut observer = |t: &LayerTrace| {
        if t.plan.index == 3 {
            assert!(t.fused_heads.iter().all(|&v| v == 0.0), "removing both branches leaves a fusion");
            assert!(t.mixer_output.iter().all(|&v| v == 0.0), "removing both branches leaves a mixer output");
            checked += 1;
        }
    };
    let logits_without_both = without_both.forward_observed(&ids, &mut observer).unwrap();
    assert_eq!(checked, 1, "layer 3 observed once");
    // Against an independent oracle: plain.rs with layer 3's mixer removed (out_proj zeroed,
    // everything else as loaded) gives the same logits, to the agreement of the two paths.
    let mut plain_weights = plain::Weights::from_loaded(&model.weights);
    let out_proj = &mut plain_weights.layers[3].out_proj;
    out_proj.weight.iter_mut().for_each(|row| row.fill(0.0));
    out_proj.bias.iter_mut().for_each(|b| b.fill(0.0));
    let plain_logits = plain::forward(&model.config, &plain_weights, &ids); // (n, V)
    let plain_logits = Array2::from_shape_vec((plain_logits.len(), plain_logits[0].len()), plain_logits.concat()).unwrap();
    let max_diff = (&plain_logits - &logits_without_both).iter().fold(0f32, |m, d| m.max(d.abs()));
    assert!(max_diff <= 1e-4, "removing both branches vs removing the mixer: max |Δ| logits = {max_diff}");
    let plain_score = mean_log_prob(plain_logits.view(), &ids);
    assert!((plain_score - without(&both)).abs() <= 1e-5, "{plain_score} vs {}", without(&both));
    assert_ne!(without(&both), forward);
    // A check that the weights were copied, not changed: the model still scores as before.
    assert_eq!(mean_log_prob(model.forward(&ids).unwrap().view(), &ids), forward);
}

#[test]
fn ablation_report_scores_each_branch_of_each_layer() {
    let (model, ids) = (model(), ids(40));
    let report = explain(model, &ids, &Options { ablate: true, ..Options::default() }).unwrap();
    let ablation = report.ablation.as_ref().unwrap();
    assert_eq!(ablation.len(), 8);
    for a in ablation {
        let want = mean_log_prob(without_branches(model, &[(a.layer, Branch::Ssm)]).forward(&ids).unwrap().view(), &ids);
        assert_eq!(a.without_ssm, want);
        assert!(a.without_attention != report.mean_log_prob && a.without_ssm != report.mean_log_prob);
    }
}

/// Per layer, what the fast path's observer saw: the queries (T, nh, dqk) and attention output (T, D).
fn observed(ids: &[u32]) -> Vec<(Array3<f32>, Array2<f32>)> {
    let mut seen = Vec::new();
    let mut observer = |t: &LayerTrace| seen.push((t.q.to_owned(), t.attn.to_owned()));
    model().forward_observed(ids, &mut observer).unwrap();
    seen
}

#[test]
fn attention_weights_equal_a_plain_recomputation_from_plain_rs() {
    // plain.rs's cache holds every position's rotated keys and values, computed its own way.
    let (model, n) = (model(), 100);
    let cfg = &model.config;
    let (m, nh, nkv, dqk) = (cfg.num_memory_tokens, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim_qk());
    let ids = ids(n);
    let (cache, _) = plain::prefill(cfg, &plain::Weights::from_loaded(&model.weights), &ids);
    let report = report_100();
    let (mut max_weight_error, mut max_output_error) = (0f32, 0f32);
    for (layer, (q, attn)) in observed(&ids).iter().enumerate() {
        let plan = cfg.layers[layer];
        let producer = match plan.kv {
            hymba_ref::config::KvSource::Own => layer,
            hymba_ref::config::KvSource::ReuseFrom(j) => j,
        };
        let (keys, values) = (&cache.keys[producer], &cache.values[producer]); // (S, nkv, dqk), (S, nkv, dv)
        for h in 0..nh {
            let g = h / (nh / nkv);
            let map = report.maps.iter().find(|mp| mp.layer == layer && mp.head == h).unwrap();
            for t in 0..n {
                let i = m + t; // row i of the observed pass (meta rows first)
                let visible: Vec<usize> = (0..=i).filter(|&j| is_visible(i, j, plan.attention, m)).collect();
                let scores: Vec<f32> = visible
                    .iter()
                    .map(|&j| (0..dqk).map(|d| q[[i, h, d]] * keys[j][g][d]).sum::<f32>() / (dqk as f32).sqrt())
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = scores.iter().map(|s| (s - max).exp()).sum();
                for (&j, s) in visible.iter().zip(&scores) {
                    max_weight_error = max_weight_error.max(((s - max).exp() / z - map.cells[[t, j]]).abs());
                }
                // Σ_j w_j · v_j with the reported weights and plain's values is the fast path's output.
                let dv = values[0][g].len();
                for c in 0..dv {
                    let out: f32 = (0..=i).map(|j| map.cells[[t, j]] * values[j][g][c]).sum();
                    max_output_error = max_output_error.max((out - attn[[i, h * dv + c]]).abs());
                }
            }
        }
    }
    println!("max |weight − plain| = {max_weight_error:e}, max |Σ w·v − attention output| = {max_output_error:e}");
    assert!(max_weight_error < 1e-5, "weights: {max_weight_error}");
    assert!(max_output_error < 1e-4, "outputs: {max_output_error}");
}

#[test]
fn long_prompts_are_binned_and_run_over_several_passes() {
    // 700 tokens: two passes of the layers (512 rows at most), maps of at most 256 × 256 cells.
    let report = explain(model(), &ids(700), &Options::default()).unwrap();
    assert_eq!(report.maps.len(), 4 * 4, "default: global layers 0, 4, 7 and window layer 1, heads 0-3");
    for map in &report.maps {
        assert_eq!((map.query_bin, map.key_bin, map.cells.dim()), (3, 3, (234, 239)));
        for row in map.cells.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-4, "layer {}: {}", map.layer, row.sum());
        }
    }
    for layer in &report.layers {
        assert_eq!(layer.branches.attention.count, 700);
        for s in &layer.heads {
            assert!(s.meta > 0.0 && s.meta + s.window <= 1.0 + 1e-6);
        }
    }
}

/// A strict check that `text` is well-formed XML: one root element, tags balanced and properly
/// nested, attributes quoted, only the five predefined entities and character references, no
/// `<` or `&` in text or attribute values.
fn check_well_formed(text: &str) -> Result<usize, String> {
    let entity_ok = |rest: &str| {
        let end = rest.find(';').ok_or("& without ;")?;
        let name = &rest[1..end];
        let ok = ["amp", "lt", "gt", "quot", "apos"].contains(&name)
            || name.strip_prefix("#x").is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
            || name.strip_prefix('#').is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
        if ok { Ok(end + 1) } else { Err(format!("bad entity &{name};")) }
    };
    let check_text = |t: &str| -> Result<(), String> {
        let mut rest = t;
        while let Some(k) = rest.find('&') {
            let used = entity_ok(&rest[k..])?;
            rest = &rest[k + used..];
        }
        Ok(())
    };
    let mut stack: Vec<String> = Vec::new();
    let (mut rest, mut elements, mut roots) = (text.trim_start(), 0, 0);
    if let Some(after) = rest.strip_prefix("<!DOCTYPE html>") {
        rest = after;
    }
    while !rest.is_empty() {
        let Some(open) = rest.find('<') else {
            check_text(rest)?;
            if !stack.is_empty() || !rest.trim().is_empty() {
                return Err(format!("text outside the root or unclosed {stack:?}"));
            }
            break;
        };
        check_text(&rest[..open])?;
        if stack.is_empty() && !rest[..open].trim().is_empty() {
            return Err("text outside the root element".into());
        }
        rest = &rest[open..];
        let close = rest.find('>').ok_or("unterminated tag")?;
        let tag = &rest[1..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
            if open != name {
                return Err(format!("</{name}> closes <{open}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
        let name = &tag[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
            return Err(format!("bad element name in <{tag}>"));
        }
        // Attributes: name="value" pairs, each name once.
        let mut attrs = tag[name_end..].trim();
        let mut names = Vec::new();
        while !attrs.is_empty() {
            let eq = attrs.find('=').ok_or(format!("attribute without value in <{tag}>"))?;
            let attr = attrs[..eq].trim();
            if names.contains(&attr) {
                return Err(format!("attribute {attr} twice in <{tag}>"));
            }
            names.push(attr);
            let value = attrs[eq + 1..].strip_prefix('"').ok_or(format!("unquoted attribute in <{tag}>"))?;
            let end = value.find('"').ok_or("unterminated attribute")?;
            if value[..end].contains('<') {
                return Err(format!("< in an attribute of <{tag}>"));
            }
            check_text(&value[..end])?;
            attrs = value[end + 1..].trim_start();
        }
        elements += 1;
        if stack.is_empty() {
            roots += 1;
        }
        if !self_closing {
            stack.push(name.to_string());
        }
    }
    if roots != 1 || !stack.is_empty() {
        return Err(format!("{roots} root elements, unclosed {stack:?}"));
    }
    Ok(elements)
}

#[test]
fn the_page_is_well_formed_xml_with_the_prompt_escaped() {
    let (model, n) = (model(), 80);
    let report = explain(model, &ids(n), &Options { ablate: true, ..Options::default() }).unwrap();
    let tokens: Vec<String> = (0..n).map(|i| format!("<t{i}&\"'>")).collect();
    let prompt = "if (a < b && c > d) { print(\"x\"); } \u{7}";
    let page = to_html(&report, &PageInfo { model: "demo <model>", prompt, tokens: &tokens });
    let elements = check_well_formed(&page).unwrap_or_else(|e| panic!("{e}"));
    println!("{elements} elements, {} bytes", page.len());
    // Each heatmap draws its cells as one path per colour level, several levels per map.
    assert!(page.matches("<path").count() > 2 * report.maps.len());
    assert!(page.contains("if (a &lt; b &amp;&amp; c &gt; d) { print(&quot;x&quot;); } \u{FFFD}"));
    // One heatmap per map, five charts, and each section.
    assert_eq!(page.matches("<svg").count(), report.maps.len() + 5);
    for section in ["Where attention goes", "Attention maps", "Branch balance", "SSM memory", "Ablation", "cache"] {
        assert!(page.contains(section), "{section}");
    }
    for fetch_or_run in ["<script", "src=", "href=", "url("] {
        assert!(!page.contains(fetch_or_run), "{fetch_or_run}: no scripts, nothing fetched");
    }
    // The checker is strict enough to catch what escaping prevents.
    assert!(check_well_formed("<a><b></a></b>").is_err());
    assert!(check_well_formed("<a>x < y</a>").is_err());
    assert!(check_well_formed("<a t=\"&nbsp;\"/>").is_err());
    assert!(check_well_formed("<a>&amp;</a>").is_ok());
}

#[test]
fn json_has_every_field() {
    let report = explain(model(), &ids(30), &Options { ablate: true, ..Options::default() }).unwrap();
    let tokens: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    let json = to_json(&report, &tokens);
    let text = json.to_string();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["ids"].as_array().unwrap().len(), 30);
    assert_eq!(back["tokens"][29], "29");
    assert_eq!((back["num_meta_tokens"].as_u64(), back["sliding_window"].as_u64()), (Some(16), Some(64)));
    assert_eq!(back["mean_log_prob"].as_f64().unwrap(), report.mean_log_prob);
    let layers = back["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 8);
    assert_eq!(layers[0]["attention"], "global");
    assert_eq!(layers[1]["attention"]["window"], 64);
    assert_eq!(layers[2]["kv"]["reuses_layer"], 1);
    for l in layers {
        assert_eq!(l["heads"].as_array().unwrap().len(), 4);
        for key in ["meta", "first_token", "window"] {
            assert!(l["heads"][0][key].is_f64(), "{key}");
        }
        for key in ["attention", "ssm", "attention_share"] {
            assert!(l["branches"][key]["p50"].is_f64(), "{key}");
        }
        assert!(l["ssm_memory"]["half_life_tokens"]["p90"].is_f64());
        assert_eq!(l["ssm_memory"]["half_life_histogram"].as_array().unwrap().len(), 7);
    }
    let map = &back["attention_maps"][0];
    assert_eq!(map["cells"].as_array().unwrap().len(), 30);
    assert_eq!(map["cells"][0].as_array().unwrap().len(), 46);
    assert_eq!(back["cache"]["context"], 30);
    assert!(back["cache"]["dense_ratio"].is_f64());
    assert_eq!(back["ablation"].as_array().unwrap().len(), 8);
}

fn run(args: &[&str]) -> Output {
    common::cli_command().args(args).output().expect("the binary runs")
}

#[test]
fn the_command_writes_the_page_and_prints_json() {
    let dir = common::TempDir::new("explain");
    let page = dir.join("page.html");
    let out = run(&["explain", "--prompt", "A journey of a thousand miles", "--layers", "0,1", "--heads", "1", "--json", "--html", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let maps: Vec<(u64, u64)> = json["attention_maps"].as_array().unwrap().iter().map(|m| (m["layer"].as_u64().unwrap(), m["head"].as_u64().unwrap())).collect();
    assert_eq!(maps, vec![(0, 1), (1, 1)]);
    assert_eq!(json["tokens"][0], "<s>");
    let html = std::fs::read_to_string(&page).unwrap();
    check_well_formed(&html).unwrap();

    let out = run(&["explain", "--prompt", "Hello there"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success() && text.contains("mean log-prob") && text.lines().count() >= 8 + 4, "{text}");
}

#[test]
fn the_command_names_bad_input() {
    // A layer or head that does not exist is a usage error (2) naming the flag; a prompt too
    // short or a missing model is not (1).
    let cases: [(&[&str], &str, i32); 5] = [
        (&["explain", "--prompt", "Hello", "--layers", "0,9"], "--layers 9: there is no layer 9: the model has 8 layers (0 to 7)", 2),
        (&["explain", "--prompt", "Hello", "--heads", "7"], "--heads 7: there is no attention head 7: the model has 4 attention heads (0 to 3)", 2),
        (&["explain", "--prompt", "Hello", "--heads", "x"], "--heads x: \"x\" is not an index", 2),
        (&["explain", "--prompt", ""], "--prompt \"\": the prompt is empty", 2),
        (&["explain", "--prompt", "Hello", "--model", "/nonexistent/model"], "/nonexistent/model", 1),
    ];
    for (args, message, code) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
