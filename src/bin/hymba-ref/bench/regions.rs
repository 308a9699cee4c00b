//! What a parallel region costs by itself on the current thread pool: the time from handing out
//! one task per thread to every thread having finished it, less the task's own work. A pass pays
//! it once per parallel region (see `Profile::sections`), on top of its phases' work, so on many
//! threads this, times the regions of a pass, is the pass's synchronisation.

use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Work in each task: long enough that every thread takes one (a shorter task is done by the
/// first threads before the others wake).
const TASK: Duration = Duration::from_micros(20);
/// Work on one thread between regions, as a pass's element-wise work between its products.
const GAP: Duration = Duration::from_micros(10);
const REGIONS: usize = 2000;

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The median cost in seconds of a parallel region of one task per thread of the current pool
/// (fork, the slowest thread's start, join), beyond the task's work; `None` on one thread.
pub fn region_seconds() -> Option<f64> {
    let threads = rayon::current_num_threads();
    if threads == 1 {
        return None;
    }
    let costs: Vec<f64> = (0..REGIONS)
        .map(|_| {
            spin(GAP);
            let start = Instant::now();
            (0..threads).into_par_iter().for_each(|_| spin(TASK));
            (start.elapsed().saturating_sub(TASK)).as_secs_f64()
        })
        .collect();
    Some(super::median(&costs))
}
