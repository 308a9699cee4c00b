//! How work is cut into the tasks of a parallel region: a helper the weight products
//! ([`crate::kernels::matrix`]) and the model's parallel loops ([`crate::model::parallel`]) share. It lives
//! below both, so that `matrix` imports nothing from `model`.

/// How many of `items` equal items (weight rows, channels) each task of a parallel region takes,
/// so that the tasks balance on `threads` threads: a whole number of tasks per thread (where 25
/// tasks on 16 threads take two rounds for 1.6 rounds of work, 32 take two full ones), of at
/// least `min` items each (a smaller task costs more to hand out than it saves), or one task
/// per thread at most when there are fewer than `min` items a thread. Which thread computes an
/// item never changes what it computes, so results do not depend on this.
pub fn items_per_task(items: usize, min: usize, threads: usize) -> usize {
    let (min, threads) = (min.max(1), threads.max(1));
    let tasks = match items / (min * threads) {
        0 => items.div_ceil(min), // fewer than `threads`
        rounds => rounds * threads,
    };
    items.div_ceil(tasks.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::items_per_task;

    #[test]
    fn tasks_come_in_whole_rounds_of_the_threads() {
        for threads in 1..=40 {
            for min in [1, 7, 64] {
                assert_eq!(items_per_task(0, min, threads), 1, "no items: a valid chunk length all the same");
                for items in 1..3000 {
                    let per_task = items_per_task(items, min, threads);
                    let tasks = items.div_ceil(per_task);
                    let rounds = tasks.div_ceil(threads); // the most tasks one thread runs
                    let case = format!("{items} items, min {min}, {threads} threads: {tasks} tasks of {per_task}");
                    if items >= min * threads {
                        assert!(per_task >= min, "{case}");
                        // The slowest thread does at most one item per round more than its share.
                        assert!(rounds * per_task <= items.div_ceil(threads) + rounds, "{case}");
                    } else {
                        assert!(tasks <= threads && per_task <= min, "{case}");
                        assert!(per_task * tasks - items < tasks, "tasks of equal size ±1: {case}");
                    }
                }
            }
        }
        // The 1.5B's out_proj (1,600 rows) on 16 threads: 16 tasks, one round, where tasks of a
        // fixed 64 rows made 25, two rounds.
        assert_eq!(items_per_task(1600, 64, 16), 100);
        assert_eq!(items_per_task(1600, 64, 2), 67);
    }
}
