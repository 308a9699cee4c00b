//! What a parallel region costs by itself on the current thread pool: the time from handing out
//! one task per thread to every thread having finished it, less the task's own work. A pass pays
//! it once per parallel region (see `Profile::sections`), on top of its phases' work, so on many
//! threads this, times the regions of a pass, is the pass's synchronisation.

use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Work in each task: long enough that every thread takes one (a shorter task is done by the
/// first threads before the others wake).
const TASK: Duration = Duration::from_micros(20);
/// Work on one thread between regions: a short stretch, as between a pass's back-to-back
/// products, after which the pool's idle threads are still looking for work; and a long one, as
/// the one-thread work between some of decode's regions (a conv, a K/V append), after which they
/// have gone to sleep (rayon puts an idle thread to sleep once it has found no work for a while:
/// about 14 µs on this project's 2-core VM) and the region must wake them.
const SHORT_GAP: Duration = Duration::from_micros(2);
const LONG_GAP: Duration = Duration::from_micros(50);
const REGIONS: usize = 2000;

/// What a parallel region of one task a thread costs on the current pool beyond the task's work
/// (fork, the slowest thread's start, join), in seconds: the median over many regions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionCost {
    /// After [`SHORT_GAP`] of one-thread work: the idle threads still awake.
    pub awake: f64,
    /// After [`LONG_GAP`]: the idle threads asleep.
    pub after_idle: f64,
}

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The median cost in seconds of a region of one task per thread after `gap` on one thread. On
/// a worker of the pool, as a pass runs (`model::pass`), so that a region's work goes to the
/// other workers directly rather than being queued from outside the pool.
fn median_cost(threads: usize, gap: Duration) -> f64 {
    let costs: Vec<f64> = rayon::scope(|_| {
        (0..REGIONS)
            .map(|_| {
                spin(gap);
                let start = Instant::now();
                (0..threads).into_par_iter().for_each(|_| spin(TASK));
                (start.elapsed().saturating_sub(TASK)).as_secs_f64()
            })
            .collect()
    });
    super::median(&costs)
}

/// What a parallel region costs on the current pool, its threads awake and asleep; `None` on one
/// thread.
pub fn region_cost() -> Option<RegionCost> {
    let threads = rayon::current_num_threads();
    (threads > 1).then(|| RegionCost { awake: median_cost(threads, SHORT_GAP), after_idle: median_cost(threads, LONG_GAP) })
}
