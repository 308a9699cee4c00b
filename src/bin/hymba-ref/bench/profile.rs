//! `bench --profile`: the time of each phase of a pass ([`Phase`]) at one thread and at the
//! requested count, and from the two the speed-up of each phase and the serial share of the
//! whole (Amdahl's law), so what does not scale shows on any machine.
//!
//! Amdahl: a pass taking t₁ on one thread and t_N on N, with a fraction s of t₁ that cannot run
//! in parallel, has t_N = t₁·(s + (1 − s)/N), so s = (N·t_N/t₁ − 1)/(N − 1). The same formula per
//! phase, over the pass's t₁, gives each phase's part of s (the parts add up to s): its share of
//! the serial time that is left.

use hymba_ref::kernels::matrix::RowKind;
use hymba_ref::model::profile::LONG_STRETCH;
use hymba_ref::model::{Phase, Profile};
use serde_json::{json, Value};
use super::regions::RegionCost;

/// The seconds of `calls` calls (one prefill, or the steps of a decode): in total (as the caller
/// measured it) and per phase, and the sections timed per phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseTimes {
    pub total: f64,
    pub phases: [f64; Phase::ALL.len()],
    pub sections: [u64; Phase::ALL.len()],
    /// Parallel regions that began a long stretch after the previous one
    /// ([`Profile::regions_after_long_stretch`]).
    pub after_long_stretch: u64,
    /// Seconds the phases overlapped (the attention and SSM branches side by side,
    /// [`Profile::overlap_seconds`]): the phases, less this, plus `other`, are `total`.
    pub overlap: f64,
    pub calls: usize,
}

impl PhaseTimes {
    /// `calls` calls that took `total` seconds, of which `profile` recorded per phase.
    pub fn of(total: f64, profile: &Profile, calls: usize) -> PhaseTimes {
        PhaseTimes {
            total,
            phases: Phase::ALL.map(|phase| profile.seconds(phase)),
            sections: Phase::ALL.map(|phase| profile.sections(phase)),
            after_long_stretch: profile.regions_after_long_stretch(),
            overlap: profile.overlap_seconds(),
            calls,
        }
    }

    /// What no phase accounts for: the rest of the pass (splitting rows into passes, the layer
    /// loop, waiting for the slowest task of a parallel region outside a timed phase); the
    /// phases' overlap is taken off them first.
    fn other(&self) -> f64 {
        self.total - (self.phases.iter().sum::<f64>() - self.overlap)
    }
}

/// `(N·t_N − t₁) / ((N − 1)·t₁_pass)`: a part's contribution to the pass's serial share.
fn serial_share(one: f64, many: f64, pass_one: f64, threads: usize) -> Option<f64> {
    (threads > 1 && pass_one > 0.0).then(|| (threads as f64 * many - one) / ((threads - 1) as f64 * pass_one))
}

/// Each figure's median over runs (a shared machine's load comes and goes: a median keeps the
/// runs it did not disturb).
/// The sections and calls are the same in every run: the first's.
fn median_times(runs: &[PhaseTimes]) -> PhaseTimes {
    let field = |f: &dyn Fn(&PhaseTimes) -> f64| super::median(&runs.iter().map(f).collect::<Vec<_>>());
    let first = runs.first().cloned().unwrap_or_default();
    let phases = std::array::from_fn(|i| field(&|r| r.phases[i]));
    PhaseTimes { total: field(&|r| r.total), phases, overlap: field(&|r| r.overlap), ..first }
}

/// The parallel regions a call opens: each phase's timed sections times the regions a section
/// of it opens ([`Phase::parallel_regions`]: one for most, none for one-thread work, more for the
/// SSM heads and the MLP, timed whole).
fn parallel_regions_per_call(times: &PhaseTimes, kind: RowKind, rows: usize) -> f64 {
    let regions: u64 = (Phase::ALL.iter().zip(times.sections)).map(|(phase, sections)| sections * phase.parallel_regions(kind, rows)).sum();
    regions as f64 / times.calls.max(1) as f64
}

/// The profile of one kind of call (prefill or decode) as JSON, from its runs at one thread and
/// at `threads`, passes of `rows` rows of the kind `kind`: the median seconds of the call and of
/// each phase, each phase's speed-up and its part of the serial share; and, given what one
/// parallel region costs on the pool ([`RegionCost`]), the synchronisation of a call: its
/// parallel regions times that, as a fraction of its time, with the pool's idle threads awake at
/// each region and with them asleep (the truth is between: a region after a long stretch of
/// one-thread work wakes them).
pub fn summary(one: &[PhaseTimes], many: &[PhaseTimes], threads: usize, kind: RowKind, rows: usize, region: Option<RegionCost>) -> Value {
    let (one, many) = (&median_times(one), &median_times(many));
    let mut phases: Vec<Value> = Phase::ALL
        .iter()
        .enumerate()
        .map(|(i, phase)| (phase.name(), phase.threading(kind, rows), one.phases[i], many.phases[i]))
        .chain([
            // Negative: the phases' time that ran at once, which the phases above count twice.
            ("overlap", "attention and SSM side by side", 0.0 - one.overlap, 0.0 - many.overlap),
            ("other", "-", one.other(), many.other()),
        ])
        .map(|(name, threading, t1, tn)| {
            json!({
                "phase": name,
                "threading": threading,
                "seconds_1_thread": t1,
                "seconds_n_threads": tn,
                "fraction_of_1_thread": t1 / one.total,
                "speedup": (t1 > 0.0 && tn > 0.0).then(|| t1 / tn),
                "serial_share": serial_share(t1, tn, one.total, threads),
            })
        })
        .collect();
    for (phase, sections) in phases.iter_mut().zip(many.sections) {
        phase["sections_per_call"] = json!(sections as f64 / many.calls.max(1) as f64);
    }
    phases.retain(|p| p["seconds_1_thread"].as_f64() != Some(0.0) || p["seconds_n_threads"].as_f64() != Some(0.0));
    let regions = parallel_regions_per_call(many, kind, rows);
    let call_seconds = many.total / many.calls.max(1) as f64;
    let share = |region_seconds: f64| regions * region_seconds / call_seconds;
    // Those that came a long stretch after the previous region pay the cost of waking the threads.
    let after_long = (many.after_long_stretch as f64 / many.calls.max(1) as f64).min(regions);
    let estimate = |r: RegionCost| ((regions - after_long) * r.awake + after_long * r.after_idle) / call_seconds;
    json!({
        "rows_per_pass": rows,
        "calls": many.calls,
        "parallel_regions_per_call": regions,
        "parallel_regions_after_long_stretch_per_call": after_long,
        "synchronisation_share_estimate": region.map(estimate),
        "parallel_region_seconds": region.map(|r| r.awake),
        "parallel_region_seconds_after_idle": region.map(|r| r.after_idle),
        "synchronisation_share": region.map(|r| share(r.awake)),
        "synchronisation_share_after_idle": region.map(|r| share(r.after_idle)),
        "seconds_1_thread": one.total,
        "seconds_n_threads": many.total,
        "speedup": one.total / many.total,
        "serial_share": serial_share(one.total, many.total, one.total, threads),
        "phases": phases,
    })
}

/// The profile of one config × context × batch size as text, from the bench's JSON of that
/// context (`c`): its `profile` (`threads`, and a [`summary`] each for `prefill`, of one
/// sequence, absent with `--synthetic-cache`, and `decode`, of the batch) and the CPU the timed
/// runs used (`prefill_cpu`, `decode_cpu`, see [`super::cpu_time`]).
pub fn table(config: &str, c: &Value) -> String {
    let (context, batch_size, profile) = (c["context"].as_u64().unwrap_or(0), c["batch_size"].as_u64().unwrap_or(0), &c["profile"]);
    let threads = profile["threads"].as_u64().unwrap_or(0);
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let pct = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let mut out = String::new();
    let kinds = [("prefill", "prefill of one sequence".to_string()), ("decode", format!("decode of a batch of {batch_size}"))];
    for (kind, what) in kinds.iter().filter(|(kind, _)| profile[kind].is_object()) {
        let p = &profile[kind];
        out += &format!(
            "\nprofile {config} ctx {context} {what} ({} rows a pass): 1 thread {:.4} s, {threads} threads {:.4} s, speed-up {:.2}, serial share {}\n",
            p["rows_per_pass"],
            num(&p["seconds_1_thread"]),
            num(&p["seconds_n_threads"]),
            num(&p["speedup"]),
            pct(&p["serial_share"]),
        );
        let cpu = &c[format!("{kind}_cpu")];
        if cpu.is_object() {
            out += &format!(
                "  timed runs at {threads} threads: threads busy {} of the time ({:.2} user, {:.2} system CPU seconds), {} minor page faults\n",
                pct(&cpu["threads_busy"]),
                num(&cpu["user_seconds"]),
                num(&cpu["system_seconds"]),
                cpu["minor_page_faults"],
            );
        }
        if p["synchronisation_share"].is_number() {
            out += &format!(
                "  synchronisation: {:.1} parallel regions a {}, {:.1} of them more than {} µs after the one before; each at {threads} threads (one task a thread, measured apart) {:.1} µs with the idle threads awake, {:.1} µs after 50 µs of one-thread work (asleep): {} of the {threads}-thread time if those {:.1} woke the threads ({} to {})\n",
                num(&p["parallel_regions_per_call"]),
                if *kind == "prefill" { "prefill" } else { "step" },
                num(&p["parallel_regions_after_long_stretch_per_call"]),
                LONG_STRETCH.as_micros(),
                num(&p["parallel_region_seconds"]) * 1e6,
                num(&p["parallel_region_seconds_after_idle"]) * 1e6,
                pct(&p["synchronisation_share_estimate"]),
                num(&p["parallel_regions_after_long_stretch_per_call"]),
                pct(&p["synchronisation_share"]),
                pct(&p["synchronisation_share_after_idle"]),
            );
        }
        out += &format!(
            "  {:<12} {:<31} {:>12} {:>12} {:>9} {:>9} {:>13}\n",
            "phase", "threading", "1 thread s", format!("{threads} threads s"), "% of 1t", "speed-up", "serial share"
        );
        for phase in p["phases"].as_array().into_iter().flatten() {
            out += &format!(
                "  {:<12} {:<31} {:>12.4} {:>12.4} {:>9} {:>9} {:>13}\n",
                phase["phase"].as_str().unwrap_or("?"),
                phase["threading"].as_str().unwrap_or("?"),
                num(&phase["seconds_1_thread"]),
                num(&phase["seconds_n_threads"]),
                pct(&phase["fraction_of_1_thread"]),
                phase["speedup"].as_f64().map_or("-".to_string(), |x| format!("{x:.2}")),
                pct(&phase["serial_share"]),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amdahl_serial_share_of_a_pass_and_its_phases() {
        // A pass of 10 s on one thread: 8 s parallel that halves, 2 s serial. On 2 threads: 6 s.
        let sections = [3, 0, 0, 0, 0, 5, 0];
        let one = PhaseTimes { total: 10.0, phases: [8.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0], sections, after_long_stretch: 0, overlap: 0.0, calls: 1 };
        let two = PhaseTimes { total: 6.0, phases: [4.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0], sections, after_long_stretch: 0, overlap: 0.0, calls: 1 };
        let s = summary(std::slice::from_ref(&one), std::slice::from_ref(&two), 2, RowKind::Chunk, 512, None);
        assert!((s["serial_share"].as_f64().unwrap() - 0.2).abs() < 1e-12);
        assert!((s["speedup"].as_f64().unwrap() - 10.0 / 6.0).abs() < 1e-12);
        let phases = s["phases"].as_array().unwrap();
        let names: Vec<&str> = phases.iter().map(|p| p["phase"].as_str().unwrap()).collect();
        assert_eq!(names, ["projections", "elementwise"], "phases with no time are left out, `other` is 0 here");
        assert_eq!(phases[0]["serial_share"].as_f64(), Some(0.0));
        assert!((phases[1]["serial_share"].as_f64().unwrap() - 0.2).abs() < 1e-12);
        assert_eq!((phases[0]["sections_per_call"].as_f64(), phases[1]["sections_per_call"].as_f64()), (Some(3.0), Some(5.0)));
        assert!(s["synchronisation_share"].is_null(), "no region cost measured");
        // Branches side by side: 7 s of phases in 6 s, 1 s of them at once. The overlap is a
        // row of its own, negative, so that the rows still add up to the call and its shares to s.
        let overlapped = PhaseTimes { phases: [4.5, 1.0, 0.0, 0.0, 0.0, 1.5, 0.0], overlap: 1.0, ..two.clone() };
        let s = summary(std::slice::from_ref(&one), &[overlapped], 2, RowKind::Chunk, 512, None);
        let phases = s["phases"].as_array().unwrap();
        let names: Vec<&str> = phases.iter().map(|p| p["phase"].as_str().unwrap()).collect();
        assert_eq!(names, ["projections", "attention", "elementwise", "overlap"], "`other` is 0 again");
        assert_eq!((phases[3]["seconds_n_threads"].as_f64(), phases[3]["speedup"].as_f64()), (Some(-1.0), None));
        let shares: f64 = phases.iter().map(|p| p["serial_share"].as_f64().unwrap()).sum();
        assert!((shares - s["serial_share"].as_f64().unwrap()).abs() < 1e-12, "{s}");
        let text = table("1.5b", &json!({ "profile": { "threads": 2, "prefill": s } }));
        assert!(text.contains("overlap      attention and SSM side by side        0.0000      -1.0000"), "{text}");
        // One thread only: no share can be inferred.
        assert!(summary(std::slice::from_ref(&one), std::slice::from_ref(&one), 1, RowKind::Chunk, 512, None)["serial_share"].is_null());
    }

    #[test]
    fn synchronisation_is_the_parallel_regions_times_what_one_costs() {
        // 4 decode steps of one row, 0.8 s in all: per step 10 projections and 2 attention
        // regions (parallel), 3 K/V appends or evictions and 30 element-wise sections (one
        // thread: not regions).
        // 3 regions a step start a long stretch after the one before.
        let times = PhaseTimes { total: 0.8, phases: [0.5, 0.1, 0.02, 0.0, 0.0, 0.1, 0.0], sections: [40, 8, 12, 0, 0, 120, 0], after_long_stretch: 12, overlap: 0.0, calls: 4 };
        let region = Some(RegionCost { awake: 20e-6, after_idle: 50e-6 });
        let s = summary(std::slice::from_ref(&times), std::slice::from_ref(&times), 16, RowKind::OnePerSequence, 1, region);
        assert_eq!(s["parallel_regions_per_call"].as_f64(), Some(12.0));
        // 12 regions × 20 µs (or 50 µs, the threads asleep) over 0.2 s a step
        assert!((s["synchronisation_share"].as_f64().unwrap() - 12.0 * 20e-6 / 0.2).abs() < 1e-12, "{s}");
        assert!((s["synchronisation_share_after_idle"].as_f64().unwrap() - 12.0 * 50e-6 / 0.2).abs() < 1e-12, "{s}");
        // 9 regions awake, 3 waking the threads
        assert_eq!(s["parallel_regions_after_long_stretch_per_call"].as_f64(), Some(3.0));
        assert!((s["synchronisation_share_estimate"].as_f64().unwrap() - (9.0 * 20e-6 + 3.0 * 50e-6) / 0.2).abs() < 1e-12, "{s}");
        assert!(table("1.5b", &json!({ "profile": { "threads": 16, "decode": s } })).contains("20.0 µs with the idle threads awake, 50.0 µs after"));
        // A prefill of 512 rows runs its element-wise work in parallel: those sections count.
        let prefill = summary(std::slice::from_ref(&times), std::slice::from_ref(&times), 16, RowKind::Chunk, 512, region);
        assert_eq!(prefill["parallel_regions_per_call"].as_f64(), Some(42.0));
        // A batch of 4 runs its K/V upkeep in parallel across its sequences, its element-wise
        // work on one thread.
        let batch = summary(std::slice::from_ref(&times), std::slice::from_ref(&times), 16, RowKind::OnePerSequence, 4, region);
        assert_eq!(batch["parallel_regions_per_call"].as_f64(), Some(15.0));
        // The SSM heads and the MLP are timed whole, a section a layer each: 5 layers a step.
        // Decoding one sequence, an SSM section opens x_proj, dt_proj and the scan (its conv and
        // SiLU on one thread), an MLP section its two products: 48 / 4 + 5 · (3 + 2) = 37.
        let whole = PhaseTimes { sections: [40, 8, 12, 20, 20, 120, 0], ..times };
        let s = summary(std::slice::from_ref(&whole), std::slice::from_ref(&whole), 16, RowKind::OnePerSequence, 1, region);
        assert_eq!(s["parallel_regions_per_call"].as_f64(), Some(37.0));
        // A batch of 4: its conv runs across the sequences, one region more a layer.
        let s = summary(std::slice::from_ref(&whole), std::slice::from_ref(&whole), 16, RowKind::OnePerSequence, 4, region);
        assert_eq!(s["parallel_regions_per_call"].as_f64(), Some(15.0 + 5.0 * (4.0 + 2.0)));
        // A prefill of 512 rows: the conv and the SiLU over rows too, two more.
        let s = summary(std::slice::from_ref(&whole), std::slice::from_ref(&whole), 16, RowKind::Chunk, 512, region);
        assert_eq!(s["parallel_regions_per_call"].as_f64(), Some(42.0 + 5.0 * (5.0 + 2.0)));
    }
}
