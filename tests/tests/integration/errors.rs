use procpool::Task;
use procpool_tests::{
    EvenOnly, NoOdd, even_only, no_odd, panic_with, parse_int, square, unencodable, watchdog,
};

use crate::{LIMIT, pool};

#[test]
fn a_panic_reaches_the_caller_with_message_and_location() {
    let _w = watchdog(
        "a_panic_reaches_the_caller_with_message_and_location",
        LIMIT,
    );
    let pool = pool(1);
    let pid = pool.worker_pids()[0];
    let err = pool
        .apply(panic_with, "the sky fell".to_owned())
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("the sky fell"));
    let loc = err.panic_location().expect("a location");
    assert!(loc.file.ends_with("tests/src/lib.rs"), "{loc}");
    assert_eq!(err.task_name(), Some("procpool_tests::panic_with"));
    assert_eq!(err.worker_pid(), Some(pid));
    assert!(err.to_string().contains("the sky fell"), "{err}");
    // The worker survived its task's panic.
    assert_eq!(pool.worker_pids(), vec![pid]);
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    assert_eq!(pool.stats().worker_deaths, 0);
}

#[test]
fn a_panic_fails_only_its_own_item() {
    let _w = watchdog("a_panic_fails_only_its_own_item", LIMIT);
    let pool = pool(2);
    let input: Vec<String> = (0..50).map(|i| format!("{i}")).collect();
    let results: Vec<_> = pool.imap(parse_int, input).unwrap().collect();
    assert_eq!(results.len(), 50);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Ok(i as i64));
    }
    let mixed: Vec<_> = pool
        .with_chunksize(10)
        .imap(
            panic_with,
            (0..30).map(|i| {
                if i % 3 == 0 {
                    format!("boom {i}")
                } else {
                    String::new()
                }
            }),
        )
        .unwrap()
        .collect();
    assert_eq!(mixed.len(), 30);
    for (i, r) in mixed.iter().enumerate() {
        // Every item panics (that is the task); each reports its own message.
        let err = r.as_ref().unwrap_err();
        let expected = if i % 3 == 0 {
            format!("boom {i}")
        } else {
            String::new()
        };
        assert_eq!(err.panic_message(), Some(expected.as_str()));
    }
}

#[test]
fn map_fails_with_the_first_error() {
    let _w = watchdog("map_fails_with_the_first_error", LIMIT);
    let pool = pool(2);
    let err = pool.map(panic_with, vec!["first".to_owned()]).unwrap_err();
    assert_eq!(err.panic_message(), Some("first"));
    assert_eq!(pool.map(square, 0..3u64).unwrap(), vec![0, 1, 4]);
}

#[test]
fn a_task_error_is_a_typed_value() {
    let _w = watchdog("a_task_error_is_a_typed_value", LIMIT);
    let pool = pool(1);
    let r: Result<i64, String> = pool.apply(parse_int, "forty-two".to_owned()).unwrap();
    assert_eq!(
        r.unwrap_err(),
        "cannot parse `forty-two`: invalid digit found in string"
    );
    assert_eq!(pool.apply(parse_int, " 42 ".to_owned()).unwrap(), Ok(42));
}

#[test]
fn an_unknown_task_is_refused_at_submit() {
    let _w = watchdog("an_unknown_task_is_refused_at_submit", LIMIT);
    let pool = pool(1);
    let ghost: Task<u64, u64> = Task::named("no_such_task");
    let err = pool.apply(ghost.clone(), 1).unwrap_err();
    assert!(err.is_unknown_task(), "{err}");
    assert!(err.to_string().contains("no_such_task"), "{err}");
    assert!(
        err.to_string().contains("procpool_tests::square"),
        "lists what is served: {err}"
    );
    assert!(
        pool.map(ghost.clone(), 0..10)
            .unwrap_err()
            .is_unknown_task()
    );
    assert!(
        pool.imap_unordered(ghost, 0..10)
            .unwrap_err()
            .is_unknown_task()
    );
    // A function this binary has that the workers do not serve.
    fn local_only(x: u64) -> u64 {
        x
    }
    assert!(pool.apply(local_only, 1).unwrap_err().is_unknown_task());
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
}

#[test]
fn a_task_called_with_other_types_is_refused() {
    let _w = watchdog("a_task_called_with_other_types_is_refused", LIMIT);
    let pool = pool(1);
    let wrong: Task<String, u64> = Task::named("procpool_tests::square");
    let err = pool.apply(wrong, "x".to_owned()).unwrap_err();
    assert!(err.is_unknown_task(), "{err}");
    assert!(err.to_string().contains("fn(u64) -> u64"), "{err}");
    let right: Task<u64, u64> = Task::named("procpool_tests::square");
    assert_eq!(pool.apply(right, 9).unwrap(), 81);
}

#[test]
fn an_unencodable_result_fails_that_task_only() {
    let _w = watchdog("an_unencodable_result_fails_that_task_only", LIMIT);
    let pool = pool(1);
    let err = pool.apply(unencodable, ()).unwrap_err();
    assert!(err.is_serialization(), "{err}");
    // postcard keeps no custom message; the error names task and phase.
    assert!(
        err.to_string()
            .contains("cannot encode the result of task `procpool_tests::unencodable`"),
        "{err}"
    );
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
}

#[test]
fn a_result_that_fails_to_decode_fails_its_own_item() {
    let _w = watchdog("a_result_that_fails_to_decode_fails_its_own_item", LIMIT);
    let pool = pool(2);
    let results: Vec<_> = pool
        .with_chunksize(4)
        .imap(even_only, 0..20u64)
        .unwrap()
        .collect();
    for (i, r) in results.into_iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(r.unwrap(), EvenOnly(i as u64));
        } else {
            let err = r.unwrap_err();
            assert!(err.is_serialization(), "{err}");
            assert!(
                err.to_string().contains("as `procpool_tests::EvenOnly`"),
                "{err}"
            );
        }
    }
    let stats = pool.stats();
    assert_eq!((stats.tasks_succeeded, stats.tasks_failed), (10, 10));
}

#[test]
fn a_panic_with_a_non_string_payload_is_reported_too() {
    let _w = watchdog("a_panic_with_a_non_string_payload_is_reported_too", LIMIT);
    let pool = pool(1);
    let err = pool
        .apply(procpool_tests::panic_with_number, 7)
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("panic with a non-string payload"));
    assert!(err.panic_location().is_some());
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
}

#[test]
fn an_argument_that_cannot_be_encoded_fails_alone_and_in_its_place() {
    let _w = watchdog("argument_that_cannot_be_encoded", LIMIT);
    let pool = pool(2);
    let input = [0u64, 2, 3, 4, 6, 7, 8];
    let got: Vec<Result<u64, procpool::Error>> = pool
        .with_chunksize(10)
        .imap(no_odd, input.iter().map(|&x| NoOdd(x)))
        .unwrap()
        .collect();
    assert_eq!(got.len(), input.len());
    for (x, r) in input.iter().zip(got) {
        match r {
            Ok(v) => assert_eq!(v, *x),
            Err(e) => {
                assert_eq!(x % 2, 1, "{x}: {e}");
                // (postcard keeps no message of a custom serde error.)
                assert!(e.to_string().contains("cannot encode the argument"), "{e}");
            }
        }
    }
}
