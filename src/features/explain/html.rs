//! The [`Report`] as one self-contained page (`hymba-ref explain --html FILE`): inline SVG
//! heatmaps and bar charts, no scripts, nothing fetched. The page is well-formed XML (XHTML):
//! every text is escaped, every element closed.

use super::attention::AttentionMap;
use super::memory::HALF_LIFE_BUCKETS;
use super::{span_name, LayerReport, Report};
use crate::state::cache_plan::ScalarType;
use crate::config::{AttentionSpan, KvSource};
use std::fmt::Write;

/// What the page says about where the report came from.
pub struct PageInfo<'a> {
    pub model: &'a str,
    pub prompt: &'a str,
    /// One text piece per prompt id.
    pub tokens: &'a [String],
}

/// Width of the charts, in pixels.
const WIDTH: f64 = 1100.0;
/// Side of an attention map's plot, in pixels.
const MAP_SIDE: f64 = 320.0;
/// Colours: attention maps and histograms go from white to this blue.
const BLUE: (f64, f64, f64) = (8.0, 48.0, 107.0);
const META: &str = "#d95f02";
const FIRST: &str = "#7570b3";
const WINDOW: &str = "#1b9e77";
const ATTENTION: &str = "#1f78b4";
const SSM: &str = "#e31a1c";

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1150px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}\
p.note{color:#555;font-size:13px}table{border-collapse:collapse;font-size:12px}\
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}.tokens{font-family:monospace;font-size:12px;color:#444}\
.maps{display:flex;flex-wrap:wrap;gap:12px}svg text{font-size:11px}";

/// The whole page.
pub fn to_html(report: &Report, info: &PageInfo) -> String {
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"utf-8\"/>");
    let _ = write!(page, "<title>hymba-ref explain</title><style>{STYLE}</style></head><body>");
    header(&mut page, report, info);
    maps_section(&mut page, report);
    shares_section(&mut page, report);
    branches_section(&mut page, report);
    memory_section(&mut page, report);
    if let Some(ablation) = &report.ablation {
        ablation_section(&mut page, report, ablation);
    }
    cache_section(&mut page, report);
    page.push_str("</body></html>\n");
    page
}

/// `text` safe inside XML text and attribute values: the five special characters escaped,
/// characters XML forbids (most control characters) replaced by U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn header(page: &mut String, report: &Report, info: &PageInfo) {
    let n = report.ids.len();
    let window = report.window.map_or("none".to_string(), |w| w.to_string());
    let _ = write!(
        page,
        "<h1>What Hymba does with this prompt</h1><p>Model <code>{}</code>, {n} prompt tokens after {} meta \
         tokens, sliding window W = {window}. Mean log-probability of each token after the first: {:.3} nats \
         (perplexity {:.2}).</p><p><b>Prompt:</b> {}</p><details><summary>The {n} tokens</summary><p class=\"tokens\">",
        escape(info.model),
        report.num_meta,
        report.mean_log_prob,
        (-report.mean_log_prob).exp(),
        escape(info.prompt)
    );
    const SHOWN: usize = 300;
    for (i, token) in info.tokens.iter().take(SHOWN).enumerate() {
        let _ = write!(page, "{i}:{} ", escape(token));
    }
    if info.tokens.len() > SHOWN {
        let _ = write!(page, "… ({} more)", info.tokens.len() - SHOWN);
    }
    page.push_str("</p></details>");
}

/// "global", "window 64", and ", K/V of layer j" for a reusing layer.
fn layer_kind(l: &LayerReport) -> String {
    let span = span_name(l.span);
    match l.kv {
        KvSource::Own => span,
        KvSource::ReuseFrom(j) => format!("{span}, K/V of {j}"),
    }
}

fn shares_section(page: &mut String, report: &Report) {
    let _ = write!(
        page,
        "<h2>2. Where attention goes</h2><p class=\"note\">Per layer, the mean over heads and prompt tokens of \
         the share of each query's attention on the {} meta tokens, on the first token, and on real tokens at \
         most W positions back (what a window keeps; in a global layer, what a window would have kept). The \
         shares overlap: the first token is inside the window for the first W tokens.</p>",
        report.num_meta
    );
    let rows: Vec<Row> = report
        .layers
        .iter()
        .map(|l| {
            let shares = l.mean_shares();
            Row {
                label: format!("layer {} ({})", l.index, layer_kind(l)),
                bars: vec![
                    Bar::new(shares.meta, META, "meta"),
                    Bar::new(shares.first_token, FIRST, "first token"),
                    Bar::new(shares.window, WINDOW, "window"),
                ],
            }
        })
        .collect();
    grouped_bars(page, &rows, |v| format!("{:.0}%", 100.0 * v));
    page.push_str("<p class=\"note\">Meta-token share per head:</p><table><tr><th>layer</th>");
    for h in 0..report.layers.first().map_or(0, |l| l.heads.len()) {
        let _ = write!(page, "<th>head {h}</th>");
    }
    page.push_str("</tr>");
    for l in &report.layers {
        let _ = write!(page, "<tr><td>{}</td>", l.index);
        for s in &l.heads {
            let _ = write!(page, "<td style=\"background:{}\">{:.0}%</td>", ramp(s.meta * 0.6), 100.0 * s.meta);
        }
        page.push_str("</tr>");
    }
    page.push_str("</table>");
}

fn maps_section(page: &mut String, report: &Report) {
    page.push_str(
        "<h2>1. Attention maps</h2><p class=\"note\">Rows: prompt tokens (queries), first at the top. Columns: \
         every position, the meta tokens left of the orange line. Darker: more attention (square-root scale). \
         The green line is the window's edge: a window layer's queries see only the meta tokens and the keys \
         between it and the diagonal. Long prompts are averaged into bins.</p><div class=\"maps\">",
    );
    for map in &report.maps {
        attention_map(page, map);
    }
    page.push_str("</div>");
}

/// One map as an SVG heatmap: a rect per run of equal-coloured cells in a row.
fn attention_map(page: &mut String, map: &AttentionMap) {
    let (rows, cols) = map.cells.dim();
    let cell = MAP_SIDE / rows.max(cols) as f64;
    let (w, h) = (cols as f64 * cell, rows as f64 * cell);
    let (left, top) = (30.0, 34.0);
    let span = span_name(map.span);
    let _ = write!(
        page,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{:.0}\">\
         <text x=\"{left}\" y=\"14\">layer {} ({span}), head {}</text>\
         <text x=\"{left}\" y=\"28\" fill=\"#777\">keys →</text>\
         <text x=\"12\" y=\"{:.0}\" fill=\"#777\" transform=\"rotate(-90 12 {:.0})\">queries →</text>\
         <rect x=\"{left}\" y=\"{top}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"#fff\" stroke=\"#999\"/>",
        left + w + 6.0,
        top + h + 6.0,
        map.layer,
        map.head,
        top + 40.0,
        top + 40.0
    );
    // One path per colour level, a unit square per cell (in a group scaled to the cell size),
    // runs of equal cells in a row merged: a small page even for a 256 × 256 map.
    const LEVELS: usize = 24;
    let level = |v: f32| (f64::from(v).max(0.0).sqrt() * LEVELS as f64).round().min(LEVELS as f64) as usize;
    let mut paths = vec![String::new(); LEVELS + 1];
    for (r, row) in map.cells.rows().into_iter().enumerate() {
        let mut c = 0;
        while c < cols {
            let lv = level(row[c]);
            let run = (c..cols).take_while(|&k| level(row[k]) == lv).count();
            if lv > 0 {
                let _ = write!(paths[lv], "M{c} {r}h{run}v1h-{run}z");
            }
            c += run;
        }
    }
    let _ = write!(page, "<g transform=\"translate({left} {top}) scale({cell:.4})\">");
    for (lv, path) in paths.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        let _ = write!(page, "<path fill=\"{}\" d=\"{path}\"/>", ramp(lv as f64 / LEVELS as f64));
    }
    page.push_str("</g>");
    // The meta tokens' edge, the causal diagonal, and the window's edge, in positions.
    let x_of = |position: f64| left + position / map.key_bin as f64 * cell;
    let y_of = |token: f64| top + token / map.query_bin as f64 * cell;
    let (m, n) = (map.num_meta as f64, map.tokens as f64);
    let _ = write!(page, "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"{META}\"/>", x_of(m), top + h);
    let _ = write!(
        page,
        "<line x1=\"{:.1}\" y1=\"{top}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"2,2\"/>",
        x_of(m + 1.0),
        x_of(m + n),
        top + h
    );
    if let AttentionSpan::SlidingWindow(window) = map.span {
        // Query token t (position M + t) sees real keys from position M + t − W on.
        let first = window as f64; // the first token whose window edge is past the first real token
        if first < n {
            let _ = write!(
                page,
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{WINDOW}\"/>",
                x_of(m),
                y_of(first),
                x_of(m + n - first),
                y_of(n)
            );
        }
    }
    page.push_str("</svg>");
}

fn branches_section(page: &mut String, report: &Report) {
    page.push_str(
        "<h2>3. Branch balance</h2><p class=\"note\">The fusion adds β1 ⊙ RMSNorm(attention heads) and \
         β2 ⊙ RMSNorm(SSM heads) (then halves). Bars: the median over prompt tokens of each term's size \
         (RMS over channels), whiskers from the 10th to the 90th percentile. The larger term carries the layer.</p>",
    );
    let rows: Vec<Row> = report
        .layers
        .iter()
        .map(|l| {
            let (a, s) = (&l.branches.attention, &l.branches.ssm);
            Row {
                label: format!("layer {} (attention {:.0}%)", l.index, 100.0 * l.branches.attention_share.p50),
                bars: vec![
                    Bar { whisker: Some((a.p10, a.p90)), ..Bar::new(a.p50, ATTENTION, "attention") },
                    Bar { whisker: Some((s.p10, s.p90)), ..Bar::new(s.p50, SSM, "SSM") },
                ],
            }
        })
        .collect();
    grouped_bars(page, &rows, |v| format!("{v:.3}"));
}

fn memory_section(page: &mut String, report: &Report) {
    let window = report.window.map_or("no window".to_string(), |w| format!("W = {w}"));
    page.push_str(
        "<h2>4. SSM memory</h2><p class=\"note\">Each step multiplies an SSM state by exp(Δ·A). Per layer, the \
         (channel, state) pairs by half-life in tokens, ln 2 / (mean Δ · −A), Δ averaged over the prompt; \
         darker: longer memory.</p>",
    );
    let mut labels: Vec<String> = vec!["< 1".into()];
    labels.extend(HALF_LIFE_BUCKETS.windows(2).map(|b| format!("{}–{}", b[0], b[1])));
    labels.push(format!("≥ {}", HALF_LIFE_BUCKETS[HALF_LIFE_BUCKETS.len() - 1]));
    let colours: Vec<String> = (0..labels.len()).map(|i| ramp((i + 1) as f64 / labels.len() as f64)).collect();
    let rows: Vec<(String, Vec<f64>)> = report
        .layers
        .iter()
        .map(|l| {
            let label = format!(
                "layer {}: median {:.1}, {:.0}% past {window}",
                l.index,
                l.memory.half_life.p50,
                100.0 * l.memory.beyond_window
            );
            (label, l.memory.half_life_histogram.clone())
        })
        .collect();
    stacked_bars(page, &rows, &colours, &labels, 1.0, None);
}

fn ablation_section(page: &mut String, report: &Report, ablation: &[super::ablation::LayerAblation]) {
    let _ = write!(
        page,
        "<h2>5. Ablation</h2><p class=\"note\">How much the prompt's mean log-probability drops (nats; baseline \
         {:.3}) when one layer's attention heads, or its SSM heads, are removed from the fusion (β set to 0). \
         Longer bar: a more important branch on this prompt.</p>",
        report.mean_log_prob
    );
    let rows: Vec<Row> = ablation
        .iter()
        .map(|a| Row {
            label: format!("layer {}", a.layer),
            bars: vec![
                Bar::new(report.mean_log_prob - a.without_attention, ATTENTION, "without attention"),
                Bar::new(report.mean_log_prob - a.without_ssm, SSM, "without SSM"),
            ],
        })
        .collect();
    grouped_bars(page, &rows, |v| format!("{v:+.3}"));
}

fn cache_section(page: &mut String, report: &Report) {
    let (hybrid, dense) = (&report.cache.size, &report.cache.dense_equivalent);
    let mib = |elements: usize| (elements * ScalarType::F32.bytes()) as f64 / (1024.0 * 1024.0);
    let _ = write!(
        page,
        "<h2>6. The cache this prompt needs</h2><p class=\"note\">After the {} prompt tokens, in f32: K/V (meta \
         rows included; window layers keep at most W positions, reusing layers none), SSM states and conv states, \
         against a plain transformer of the same size (every layer its own global K/V, no meta tokens): \
         {:.3} MiB against {:.3} MiB, {:.2}× {}.</p>",
        report.cache.context,
        mib(hybrid.total_elements()),
        mib(dense.total_elements()),
        report.cache.dense_ratio().max(1.0 / report.cache.dense_ratio()),
        if report.cache.dense_ratio() >= 1.0 { "smaller" } else { "larger (short prompts pay for the fixed SSM state and meta rows)" }
    );
    let sizes = |s: &crate::state::cache_plan::CacheSize| {
        vec![mib(s.kv_cache_elements), mib(s.ssm_state_elements), mib(s.conv_state_elements)]
    };
    let rows = vec![("Hymba".to_string(), sizes(hybrid)), ("dense attention".to_string(), sizes(dense))];
    let max = mib(hybrid.total_elements().max(dense.total_elements()));
    let colours = [ATTENTION.to_string(), SSM.to_string(), "#fdbf6f".to_string()];
    let labels = ["K/V".to_string(), "SSM state".to_string(), "conv state".to_string()];
    stacked_bars(page, &rows, &colours, &labels, max, Some("MiB"));
}

/// A bar of a grouped chart.
struct Bar {
    value: f64,
    colour: &'static str,
    name: &'static str,
    /// A line from .0 to .1 (a percentile range).
    whisker: Option<(f64, f64)>,
}

impl Bar {
    fn new(value: f64, colour: &'static str, name: &'static str) -> Bar {
        Bar { value, colour, name, whisker: None }
    }
}

/// A labelled group of bars.
struct Row {
    label: String,
    bars: Vec<Bar>,
}

const LABEL_WIDTH: f64 = 300.0;
const BAR_HEIGHT: f64 = 11.0;

/// Horizontal bars, one group per row, from a zero line (values may be negative), each with
/// its value written after it, and a legend.
fn grouped_bars(page: &mut String, rows: &[Row], format: impl Fn(f64) -> String) {
    let values = rows.iter().flat_map(|r| r.bars.iter().flat_map(|b| [Some(b.value), b.whisker.map(|w| w.1)]).flatten());
    let (lo, hi) = values.fold((0f64, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(1e-12);
    let plot = WIDTH - LABEL_WIDTH - 70.0;
    let x = |v: f64| LABEL_WIDTH + (v - lo) / span * plot;
    let per_row = rows.first().map_or(0, |r| r.bars.len()) as f64 * BAR_HEIGHT + 8.0;
    let height = rows.len() as f64 * per_row + 30.0;
    let _ = write!(page, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\">");
    for (i, row) in rows.iter().enumerate() {
        let y0 = 20.0 + i as f64 * per_row;
        let _ = write!(page, "<text x=\"0\" y=\"{:.1}\">{}</text>", y0 + per_row / 2.0, escape(&row.label));
        for (k, bar) in row.bars.iter().enumerate() {
            let y = y0 + k as f64 * BAR_HEIGHT;
            let (a, b) = (x(0.0).min(x(bar.value)), x(0.0).max(x(bar.value)));
            let _ = write!(
                page,
                "<rect x=\"{a:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                b - a,
                BAR_HEIGHT - 2.0,
                bar.colour
            );
            if let Some((p10, p90)) = bar.whisker {
                let mid = y + (BAR_HEIGHT - 2.0) / 2.0;
                let _ = write!(page, "<line x1=\"{:.1}\" y1=\"{mid:.1}\" x2=\"{:.1}\" y2=\"{mid:.1}\" stroke=\"#333\"/>", x(p10), x(p90));
            }
            let text_x = x(bar.value.max(bar.whisker.map_or(bar.value, |w| w.1)).max(0.0)) + 4.0;
            let _ = write!(page, "<text x=\"{text_x:.1}\" y=\"{:.1}\">{}</text>", y + BAR_HEIGHT - 3.0, escape(&format(bar.value)));
        }
    }
    let _ = write!(page, "<line x1=\"{0:.1}\" y1=\"14\" x2=\"{0:.1}\" y2=\"{1:.0}\" stroke=\"#999\"/>", x(0.0), height - 12.0);
    if let Some(first) = rows.first() {
        let legend: Vec<(&str, String)> = first.bars.iter().map(|b| (b.name, b.colour.to_string())).collect();
        self::legend(page, &legend, 10.0);
    }
    page.push_str("</svg>");
}

/// Horizontal stacked bars: row i's segments `values` end to end, on a scale where `max` fills
/// the plot, with the row's total in `unit` if given; a legend naming the segments.
fn stacked_bars(page: &mut String, rows: &[(String, Vec<f64>)], colours: &[String], labels: &[String], max: f64, unit: Option<&str>) {
    let plot = WIDTH - LABEL_WIDTH - 70.0;
    let scale = plot / max.max(1e-12);
    let per_row = 16.0;
    let height = rows.len() as f64 * per_row + 34.0;
    let _ = write!(page, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\">");
    for (i, (label, values)) in rows.iter().enumerate() {
        let y = 20.0 + i as f64 * per_row;
        let _ = write!(page, "<text x=\"0\" y=\"{:.1}\">{}</text>", y + 10.0, escape(label));
        let mut x = LABEL_WIDTH;
        for (v, colour) in values.iter().zip(colours) {
            let w = v * scale;
            let _ = write!(page, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"12\" fill=\"{colour}\"/>");
            x += w;
        }
        if let Some(unit) = unit {
            let total: f64 = values.iter().sum();
            let _ = write!(page, "<text x=\"{:.1}\" y=\"{:.1}\">{total:.3} {}</text>", x + 4.0, y + 10.0, escape(unit));
        }
    }
    let legend: Vec<(&str, String)> = labels.iter().map(String::as_str).zip(colours.iter().cloned()).collect();
    self::legend(page, &legend, 10.0);
    page.push_str("</svg>");
}

/// Coloured squares with names, in a line at the top right, `y` their baseline.
fn legend(page: &mut String, entries: &[(&str, String)], y: f64) {
    let mut x = LABEL_WIDTH;
    for (name, colour) in entries {
        let _ = write!(page, "<rect x=\"{x:.0}\" y=\"{:.0}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>", y - 9.0);
        let _ = write!(page, "<text x=\"{:.0}\" y=\"{y:.0}\">{}</text>", x + 14.0, escape(name));
        x += 24.0 + 7.0 * name.chars().count() as f64;
    }
}

/// White (0) to dark blue (1), as `rgb(r,g,b)`.
fn ramp(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let mix = |c: f64| (255.0 + (c - 255.0) * t).round();
    format!("rgb({},{},{})", mix(BLUE.0), mix(BLUE.1), mix(BLUE.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_forbidden_characters() {
        assert_eq!(escape("a<b>&\"c'\u{1}\n"), "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}\n");
        assert_eq!(ramp(0.0), "rgb(255,255,255)");
        assert_eq!(ramp(1.0), "rgb(8,48,107)");
    }
}
