//! Review s3: `map` reserves its output from the input's lower size hint.

use procpool_tests::{panic_with_number, square, watchdog};

use crate::{LIMIT, pool};

/// Yields `n` items but claims at least `usize::MAX` (a buggy adapter; std
/// says a wrong size_hint must not cause anything worse than a wrong
/// reservation).
struct Lying(u64);

impl Iterator for Lying {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        let n = self.0.checked_sub(1)?;
        self.0 = n;
        Some(n)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

/// `map` over an unbounded input ends at the first error (its documented
/// contract: "every result in input order, or the first error to arrive").
/// `(0u32..)` says its lower bound is `usize::MAX`: the up-front reserve
/// panics "capacity overflow" before any item is sent. (std's own
/// `collect::<Result<Vec<_>, _>>()` reserves nothing from the lower
/// bound, through `GenericShunt`, and ends at the first error too.)
#[test]
fn map_over_an_unbounded_input_ends_at_its_first_error() {
    let _w = watchdog("map_over_an_unbounded_input_ends_at_its_first_error", LIMIT);
    let pool = pool(2);
    let std_way: Result<Vec<u64>, u32> = (0u32..).map(Err).collect();
    assert_eq!(std_way, Err(0));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.map(panic_with_number, 0u32..)
    }));
    let r = r.expect("map panicked (capacity overflow from the input's size hint)");
    assert!(r.unwrap_err().is_panic());
}

/// A lying lower bound: the results are right, as before.
#[test]
fn map_over_an_iterator_with_a_lying_lower_bound_returns_its_results() {
    let _w = watchdog(
        "map_over_an_iterator_with_a_lying_lower_bound_returns_its_results",
        LIMIT,
    );
    let pool = pool(2);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.map(square, Lying(3))));
    let r = r.expect("map panicked (capacity overflow from the input's size hint)");
    assert_eq!(r.unwrap(), vec![4, 1, 0]);
    // An empty input, even: std's collect reserves only once an item came.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.map(square, Lying(0))));
    assert_eq!(
        r.expect("map panicked on an empty input").unwrap(),
        Vec::<u64>::new()
    );
    let collected: Vec<u64> = Lying(0).collect();
    assert!(collected.is_empty());
}

/// A finite but large input whose first item fails: before, `Err` at once;
/// now the up-front reserve asks for `u32::MAX` results (34 GB of `u64`)
/// and, where that cannot be had, the process aborts
/// (`handle_alloc_error`), taking the caller's whole program down. Run in
/// a child process of its own (`huge_range_child`).
#[test]
fn map_over_a_huge_range_that_fails_early_does_not_abort() {
    let _w = watchdog(
        "map_over_a_huge_range_that_fails_early_does_not_abort",
        LIMIT,
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "review_s3::huge_range_child",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by map_over_a_huge_range_that_fails_early_does_not_abort"]
fn huge_range_child() {
    let pool = pool(2);
    let r = pool.map(panic_with_number, 0u32..u32::MAX);
    assert!(r.unwrap_err().is_panic());
}
