//! Where a pass spends its time: a [`Profile`] adds up the wall time of each [`Phase`] of the
//! layers (summed over layers and passes), so `hymba-ref bench --profile` can show which phases
//! scale with threads and which run on one.
//!
//! A profile is a value, kept in the call's [`super::Scratch`] and passed to the pass and its
//! layers `&mut`, which time each phase at its boundary: the functions of the model's concepts
//! (norms, attention, SSM, fusion, MLP) never see it. It is off by default; off, [`Profile::time`] only calls its closure (no clock read, nothing
//! allocated). A layer's attention and SSM branches run side by side, the SSM branch timed by a
//! profile of its own ([`Profile::fork`], [`Profile::join`]): their phases' times then overlap,
//! by [`Profile::overlap_seconds`] in all.

use crate::kernels::matrix::RowKind;
use std::time::{Duration, Instant};

/// The phases of a pass. Every timed region of the layers belongs to exactly one. The layer times
/// each step of its figure as a whole, at its boundary (see [`super::layer::hymba_layer`]): the
/// SSM heads and the MLP are one phase each, not their inner products and loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The layer's input and output projections, in_proj and out_proj (matvec or GEMM, bf16
    /// widened on the fly inside them, not timed apart), with the bias their tasks add.
    Projections,
    /// Attention scores, softmax and the weighted sum of values.
    Attention,
    /// The K/V caches' upkeep: a producer's new keys rotated and appended, with their values,
    /// to each sequence's cache, and the rows evicted from window caches after a pass.
    KvCache,
    /// The SSM heads, whole: the causal conv and its SiLU, x_proj and the Δ/B/C norms, dt_proj
    /// and Δ's softplus, the selective scan and its y ⊙ SiLU(z) gate.
    Ssm,
    /// The MLP, whole: its products (up and gate together, then down) and the activation their
    /// tasks apply (SiLU gate or relu²).
    Mlp,
    /// Everything else element- or row-wise: embeddings, RMSNorms, head split, q/k norm, RoPE
    /// (its angles once a pass, the rotation of q), fusion, residual adds.
    Elementwise,
    /// The final norm and `lm_head` of the kept rows.
    Output,
}

impl Phase {
    pub const ALL: [Phase; 7] =
        [Phase::Projections, Phase::Attention, Phase::KvCache, Phase::Ssm, Phase::Mlp, Phase::Elementwise, Phase::Output];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Projections => "projections",
            Phase::Attention => "attention",
            Phase::KvCache => "kv cache",
            Phase::Ssm => "ssm",
            Phase::Mlp => "mlp",
            Phase::Elementwise => "elementwise",
            Phase::Output => "output",
        }
    }

    /// Whether every section of the phase starts with a parallel region, whatever the pass: the
    /// projections, attention and the MLP. (The K/V upkeep, the SSM's conv and the element-wise
    /// work run on one thread in decoding one sequence; the output's norm comes before its
    /// parallel product.)
    pub fn always_parallel(self) -> bool {
        matches!(self, Phase::Projections | Phase::Attention | Phase::Mlp)
    }

    /// How the phase's code uses the threads, for a pass of `rows` rows of the kind `kind` (a
    /// statement about the code, kept next to it; the measured speed-up says how well it works).
    pub fn threading(self, kind: RowKind, rows: usize) -> &'static str {
        let parallel_rows = rows >= super::parallel::PARALLEL_ROWS;
        let one_per_sequence = kind == RowKind::OnePerSequence && rows > 1;
        match self {
            Phase::Projections | Phase::Attention | Phase::Mlp => "parallel",
            Phase::Output => "norm serial, lm_head parallel",
            Phase::Ssm if parallel_rows => "parallel",
            Phase::Ssm if one_per_sequence => "parallel, conv over sequences",
            Phase::Ssm => "parallel, conv one thread",
            Phase::KvCache if one_per_sequence => "parallel over sequences",
            Phase::KvCache => "one thread",
            Phase::Elementwise if parallel_rows => "parallel over rows",
            Phase::Elementwise => "one thread",
        }
    }

    /// The parallel regions (a fork and a join of the threads) one timed section of the phase
    /// opens, for a pass of `rows` rows of the kind `kind`: one for a product, the attention of
    /// the pass's parts, the K/V upkeep across sequences or a row-wise loop over many rows; none
    /// for one-thread work; and for the phases timed whole, the MLP's two products, and the
    /// SSM's x_proj, dt_proj and scan, with its conv and SiLU when they run in parallel. (The
    /// SSM's Δ/B/C norms, in configs that have them, add regions over many rows: not counted.)
    pub fn parallel_regions(self, kind: RowKind, rows: usize) -> u64 {
        let parallel_rows = rows >= super::parallel::PARALLEL_ROWS;
        let parallel_conv = parallel_rows || (kind == RowKind::OnePerSequence && rows > 1);
        match self {
            Phase::Mlp => 2,
            Phase::Ssm => 3 + u64::from(parallel_conv) + u64::from(parallel_rows),
            _ if self.threading(kind, rows) == "one thread" => 0,
            _ => 1,
        }
    }
}

/// A stretch without a parallel region long enough that the pool's idle threads have likely gone
/// to sleep by its end, so that the next region must wake them: rayon puts a thread to sleep
/// once it has found no work for a while, about 14 µs on this project's 2-core VM (measured by
/// `hymba-ref bench --profile`'s region costs; other machines differ).
pub const LONG_STRETCH: Duration = Duration::from_micros(15);

/// Seconds spent in each [`Phase`], summed over every timed region since the profile was made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    on: bool,
    seconds: [f64; Phase::ALL.len()],
    /// Timed sections per phase: each opens [`Phase::parallel_regions`] parallel regions (a fork
    /// and a join of the threads), which is what synchronisation costs are counted in.
    sections: [u64; Phase::ALL.len()],
    /// Sections of the [`Phase::always_parallel`] phases that began more than [`LONG_STRETCH`]
    /// after the previous one ended: regions that likely had to wake the threads.
    after_long_stretch: u64,
    /// When the last such section ended.
    last_region_end: Option<Instant>,
    /// Seconds of the phases' time that ran at once with other phases' (two branches side by
    /// side, [`Profile::fork`]): the phases add up to the call's time plus this.
    overlap: f64,
    /// Between [`Profile::fork`] and [`Profile::join`]: when the branches began, and the seconds
    /// this profile had recorded by then.
    forked: Option<(Instant, f64)>,
    /// While forked: the parallel sections timed, (start, end), counted at the join against both
    /// branches' sections (a region that starts while the other branch's runs wakes no thread).
    forked_regions: Vec<(Instant, Instant)>,
}

impl Profile {
    /// A profile that records.
    pub fn recording() -> Profile {
        Profile { on: true, ..Profile::default() }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Run `f`, adding its wall time to `phase` when recording.
    #[inline]
    pub fn time<R>(&mut self, phase: Phase, f: impl FnOnce() -> R) -> R {
        if !self.on {
            return f();
        }
        let start = Instant::now();
        let result = f();
        self.record(phase, start, Instant::now());
        result
    }

    /// Add a section of `phase` that ran from `start` to `end`.
    fn record(&mut self, phase: Phase, start: Instant, end: Instant) {
        self.seconds[phase as usize] += (end - start).as_secs_f64();
        self.sections[phase as usize] += 1;
        if phase.always_parallel() {
            match self.forked {
                Some(_) => self.forked_regions.push((start, end)),
                None => self.count_region(start, end),
            }
        }
    }

    /// Count a parallel section from `start` to `end` that began after every one counted before.
    fn count_region(&mut self, start: Instant, end: Instant) {
        let idle = |last: Instant| start.saturating_duration_since(last) > LONG_STRETCH;
        self.after_long_stretch += u64::from(self.last_region_end.is_some_and(idle));
        self.last_region_end = self.last_region_end.max(Some(end));
    }

    /// Before two branches run side by side (`rayon::join`), this profile timing one: the
    /// profile for the other, recording if this one is. [`Profile::join`] adds it back.
    pub fn fork(&mut self) -> Profile {
        if !self.on {
            return Profile::default();
        }
        debug_assert!(self.forked.is_none(), "one fork at a time");
        let now = Instant::now();
        self.forked = Some((now, self.seconds.iter().sum()));
        Profile { on: true, last_region_end: self.last_region_end, forked: Some((now, 0.0)), ..Profile::default() }
    }

    /// After the branches: add the other branch's `branch` (from [`Profile::fork`]) to this one.
    /// The time the two branches' phases overlapped is their seconds beyond the branches' wall
    /// time; their parallel sections are counted in order of their start, each against every
    /// section of either branch that started before it.
    pub fn join(&mut self, branch: Profile) {
        let Some((start, seconds_before)) = self.forked.take() else { return };
        let wall = start.elapsed().as_secs_f64();
        let inside = self.seconds.iter().sum::<f64>() - seconds_before + branch.seconds.iter().sum::<f64>();
        self.overlap += (inside - wall).max(0.0);
        for phase in 0..Phase::ALL.len() {
            self.seconds[phase] += branch.seconds[phase];
            self.sections[phase] += branch.sections[phase];
        }
        let mut regions = std::mem::take(&mut self.forked_regions);
        regions.extend(branch.forked_regions);
        regions.sort_by_key(|&(start, _)| start);
        for &(start, end) in &regions {
            self.count_region(start, end);
        }
        regions.clear();
        self.forked_regions = regions; // its capacity, for the next fork
    }

    /// Seconds the phases ran at once with others (branches side by side): the phases' seconds
    /// add up to the calls' time plus this.
    pub fn overlap_seconds(&self) -> f64 {
        self.overlap
    }

    /// Sections of the [`Phase::always_parallel`] phases (parallel regions) that began more than
    /// [`LONG_STRETCH`] after the previous one ended.
    pub fn regions_after_long_stretch(&self) -> u64 {
        self.after_long_stretch
    }

    /// Seconds recorded for `phase`.
    pub fn seconds(&self, phase: Phase) -> f64 {
        self.seconds[phase as usize]
    }

    /// Sections timed as `phase` (calls of [`Profile::time`]).
    pub fn sections(&self, phase: Phase) -> u64 {
        self.sections[phase as usize]
    }

    /// Zero every phase, keeping the profile on or off.
    pub fn clear(&mut self) {
        *self = Profile { on: self.on, ..Profile::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_on() {
        let mut off = Profile::default();
        assert_eq!(off.time(Phase::Ssm, || 7), 7);
        assert_eq!((off.seconds(Phase::Ssm), off.sections(Phase::Ssm)), (0.0, 0));
        let mut on = Profile::recording();
        on.time(Phase::Ssm, || std::thread::sleep(std::time::Duration::from_millis(2)));
        on.time(Phase::Ssm, || ());
        assert!(on.seconds(Phase::Ssm) >= 0.002, "{on:?}");
        assert_eq!((on.sections(Phase::Ssm), on.sections(Phase::Projections)), (2, 0));
        assert_eq!(on.seconds(Phase::Attention), 0.0);
        on.clear();
        assert!(on.is_on() && on.seconds(Phase::Ssm) == 0.0 && on.sections(Phase::Ssm) == 0);
    }

    /// A parallel region that starts more than LONG_STRETCH after the last one ended counts; one
    /// started right after, or after one-thread phases only as long, does not. (Sections at given
    /// instants, µs after t0, so that the test does not depend on the machine's timing.)
    #[test]
    fn counts_regions_after_a_long_stretch_without_one() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let mut p = Profile::recording();
        p.record(Phase::Projections, at(0), at(1)); // the first region: nothing before it to measure
        p.record(Phase::Attention, at(2), at(3)); // right after
        p.record(Phase::Elementwise, at(3), at(40)); // one-thread work in between
        p.record(Phase::Mlp, at(41), at(42)); // after a long stretch
        p.record(Phase::Projections, at(100), at(101)); // after untimed work, which counts as much
        p.record(Phase::KvCache, at(101), at(140)); // one-thread work: not a region
        assert_eq!(p.regions_after_long_stretch(), 2);
        p.clear();
        assert_eq!(p.regions_after_long_stretch(), 0);
        p.record(Phase::Mlp, at(500), at(501)); // the first region after a clear: nothing before it
        assert_eq!(p.regions_after_long_stretch(), 0);
    }

    /// Two branches timed side by side (on two threads of their own here): their phases add up,
    /// and the time they ran at once is the overlap.
    #[test]
    fn branches_side_by_side_add_up_and_count_their_overlap() {
        let mut p = Profile::recording();
        let (pause, ms) = (std::thread::sleep, Duration::from_millis);
        let mut branch = p.fork();
        std::thread::scope(|s| {
            s.spawn(|| p.time(Phase::Attention, || pause(ms(100))));
            s.spawn(|| {
                pause(ms(20)); // one-thread work in this branch, while the other's region runs
                branch.time(Phase::Ssm, || pause(ms(30)));
            });
        });
        p.join(branch);
        assert!(p.seconds(Phase::Attention) >= 0.100 && p.seconds(Phase::Ssm) >= 0.030, "{p:?}");
        assert_eq!((p.sections(Phase::Attention), p.sections(Phase::Ssm)), (1, 1));
        // The scan's 30 ms ran inside the attention's 100: about 30 ms overlapped (less the time
        // the threads took to start, which counts in the branches' wall time but in no phase).
        assert!(p.overlap_seconds() > 0.015 && p.overlap_seconds() < 0.060, "{p:?}");
        // Not recording: a fork is an empty profile and the join adds nothing.
        let mut off = Profile::default();
        let branch = off.fork();
        assert!(!branch.is_on());
        off.join(branch);
        assert_eq!(off, Profile::default());
    }

    /// A region of one branch that starts while the other branch's runs wakes no thread: it does
    /// not count as after a long stretch, however long its own branch went without one.
    /// (Sections at given instants, so that the test does not depend on the machine's timing.)
    #[test]
    fn a_region_while_the_other_branch_runs_is_not_after_a_long_stretch() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        for (attention_ends, counted) in [(60_000, 0), (10_000, 1)] {
            let mut p = Profile::recording();
            p.record(Phase::Projections, at(0), at(1)); // the last region before the branches
            let mut branch = p.fork();
            p.record(Phase::Attention, at(5), at(attention_ends));
            branch.record(Phase::Mlp, at(20_000), at(25_000)); // 20 ms after its branch's last region
            p.join(branch);
            assert_eq!(p.regions_after_long_stretch(), counted, "attention until {attention_ends} µs");
            let after = attention_ends.max(25_000) + 2;
            p.record(Phase::Projections, at(after), at(after + 1)); // right after the branches
            assert_eq!(p.regions_after_long_stretch(), counted);
        }
    }
}
