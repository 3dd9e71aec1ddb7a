//! Edges found in review: closures as tasks.

use procpool_tests::{square, watchdog};

use crate::{LIMIT, pool};

#[test]
fn a_closure_is_refused_at_submit() {
    let _w = watchdog("a_closure_is_refused_at_submit", LIMIT);
    let pool = pool(1);
    // Every closure in this function has the same type name: had a worker
    // served one, this would have run it instead.
    let err = pool.map(|x: u64| x * 100, 0..3).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    assert!(err.is_unknown_task(), "{err}");
    let message = err.to_string();
    assert!(message.contains("is a closure"), "{message}");
    assert!(message.contains("name a `fn`"), "{message}");
    assert!(message.contains("{{closure}}"), "{message}");
    let err = pool.apply(|x: u64| x + 1, 1).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    let p: fn(u64) -> u64 = square;
    let err = pool.apply(p, 2).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    assert!(err.to_string().contains("a function pointer"), "{err}");
    // The function itself, by name, is fine.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}
