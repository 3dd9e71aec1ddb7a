//! The compiler's errors for tasks that cannot be tasks say what to write
//! instead: each case below is a tiny program, checked by `cargo check`,
//! whose error must contain the key words of procpool's
//! `#[diagnostic::on_unimplemented]` messages (and of the borrowed case's
//! lifetime error, which names `OwnedData`).
//!
//! `compile_fail` doctests prove that such code does not compile, but not
//! what the compiler says; this test pins that. One crate of one binary
//! per case, checked once, offline, in a target directory of its own kept
//! between runs (so only the first run compiles procpool's dependencies).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use procpool_tests::watchdog;

/// One program that must not compile, and what its error must say.
struct Case {
    name: &'static str,
    items: &'static str,
    main: &'static str,
    says: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "borrowed_parameter",
        items: "fn shout(s: &str) -> String { s.to_uppercase() }",
        main: "let _ = procpool::Registry::new().task(shout);",
        says: &["OwnedData", "`&str` must implement"],
    },
    Case {
        name: "borrowed_parameter_among_several",
        items: "fn repeat(n: u64, s: &str) -> String { s.repeat(n as usize) }",
        main: "let _ = procpool::Registry::new().task(repeat);",
        says: &["OwnedData", "`(u64, &str)` must implement"],
    },
    Case {
        name: "argument_not_deserialize",
        items: "fn size(_: Opaque) -> u64 { 0 }",
        main: "let _ = procpool::Registry::new().task(size);",
        says: &[
            "`Opaque` cannot be a task's argument",
            "derive `serde::Deserialize`",
            "take `String`",
        ],
    },
    Case {
        name: "argument_not_deserialize_among_several",
        items: "fn size(_: u64, _: Opaque) -> u64 { 0 }",
        main: "let _ = procpool::Registry::new().task(size);",
        says: &[
            "`(u64, Opaque)` cannot be a task's argument",
            "several arguments travel as one tuple",
        ],
    },
    Case {
        name: "result_not_serialize",
        items: "fn make(_: u64) -> Opaque { Opaque }",
        main: "let _ = procpool::Registry::new().task(make);",
        says: &[
            "`Opaque` cannot be a task's result",
            "derive `serde::Serialize`",
        ],
    },
    Case {
        name: "five_arguments",
        items: "fn five(a: u8, b: u8, c: u8, d: u8, e: u8) -> u8 { a + b + c + d + e }",
        main: "let _ = procpool::Registry::new().task(five);",
        says: &[
            "cannot be a task",
            "0 to 4 arguments",
            "one tuple or struct",
        ],
    },
    Case {
        name: "capturing_closure",
        items: "",
        main: "let v = vec![1u64]; \
               let _ = procpool::Registry::new().task_named(\"t\", move |x: u64| x + v[0]);",
        says: &["cannot be a task", "captures nothing"],
    },
    Case {
        name: "state_task_registered_as_plain",
        items: "struct Model; fn predict(_: &mut Model, x: f64) -> f64 { x }",
        main: "let _ = procpool::Registry::new().task(predict);",
        says: &["cannot be a task's argument", "Registry::task_with_state"],
    },
    Case {
        name: "plain_task_registered_with_state",
        items: "fn square(x: u64) -> u64 { x * x }",
        main: "let _ = procpool::Registry::new().task_with_state(square);",
        says: &["cannot be a task taking worker state", "Registry::task`"],
    },
    Case {
        name: "state_maker_as_plain_initializer",
        items: "struct Model; fn load(_: String) -> Model { Model }",
        main: "let _ = procpool::Pool::builder().initializer(load, String::new());",
        says: &[
            "`Model` cannot be the result of an initializer given to `Builder::initializer`",
            "Builder::worker_state",
            "Registry::initializer",
        ],
    },
    Case {
        name: "argument_not_serialize",
        items: "struct Model; fn load(_: Opaque) -> Model { Model }",
        main: "let _ = procpool::Pool::builder().worker_state(load, Opaque);",
        says: &[
            "`Opaque` cannot be sent as a task's argument",
            "derive `serde::Serialize`",
        ],
    },
    Case {
        name: "not_a_task",
        items: "",
        main: "let pool = procpool::Pool::builder().build().unwrap(); \
               let _: Result<u64, _> = pool.apply(42u8, 1u64);",
        says: &["`u8` cannot be called as a task", "0 to 4 arguments"],
    },
    Case {
        name: "several_arguments_not_as_a_tuple",
        items: "fn add(a: u64, b: u64) -> u64 { a + b }",
        main: "let pool = procpool::Pool::builder().build().unwrap(); \
               let _ = pool.apply(add, 2);",
        says: &["expected `(u64, u64)`"],
    },
    Case {
        name: "result_not_deserialize",
        items: "fn make(_: u64) -> Opaque { Opaque }",
        main: "let pool = procpool::Pool::builder().build().unwrap(); \
               let _ = pool.map(make, [1u64]);",
        says: &[
            "`Opaque` cannot be received as a task's result",
            "derive `serde::Deserialize`",
        ],
    },
    Case {
        name: "borrowed_result",
        items: "fn name(_: u64) -> &'static str { \"x\" }",
        main: "let pool = procpool::Pool::builder().build().unwrap(); \
               let _ = pool.map(name, [1u64]);",
        says: &["OwnedData", "`&str` must implement"],
    },
    Case {
        name: "call_argument_not_serialize",
        items: "",
        main: "let pool = procpool::Pool::builder().build().unwrap(); \
               let task: procpool::Task<Opaque, u64> = procpool::Task::named(\"t\"); \
               let _ = pool.apply(task, Opaque);",
        says: &[
            "`Opaque` cannot be sent as a task's argument",
            "derive `serde::Serialize`",
        ],
    },
];

/// The workspace's root: the parent of this package.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package is in the workspace")
        .to_owned()
}

/// The target directory this test runs from (`<target>/debug/deps/..`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.ancestors()
        .nth(3)
        .expect("a test binary lives in <target>/<profile>/deps")
        .to_owned()
}

/// Writes the crate of `CASES` into `dir`.
fn write_crate(dir: &Path) {
    let pool = workspace().join("pool");
    std::fs::create_dir_all(dir.join("src/bin")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"procpool-diagnostics\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             publish = false\n\n[dependencies]\nprocpool = {{ path = {pool:?} }}\n\n[workspace]\n"
        ),
    )
    .unwrap();
    // The workspace's versions, so that nothing needs the network.
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    for case in CASES {
        std::fs::write(
            dir.join("src/bin").join(format!("{}.rs", case.name)),
            format!(
                "#![allow(unused)]\nstruct Opaque;\n{}\nfn main() {{\n    {}\n}}\n",
                case.items, case.main
            ),
        )
        .unwrap();
    }
}

/// The errors of `output` about the program `src/bin/<name>.rs`: every
/// diagnostic block (from one `error` line to the next) that points into it.
fn errors_of(output: &str, name: &str) -> String {
    let file = format!("src/bin/{name}.rs:");
    let mut blocks = Vec::new();
    let mut block = String::new();
    for line in output.lines() {
        if line.starts_with("error") || line.starts_with("warning") {
            blocks.push(std::mem::take(&mut block));
        }
        block.push_str(line);
        block.push('\n');
    }
    blocks.push(block);
    blocks
        .into_iter()
        .filter(|b| b.starts_with("error") && b.contains(&file))
        .collect()
}

#[test]
fn the_compiler_says_what_to_write_instead() {
    let _w = watchdog(
        "the_compiler_says_what_to_write_instead",
        Duration::from_secs(600),
    );
    let target = target_dir();
    let dir = target.join("procpool-diagnostics");
    let _ = std::fs::remove_dir_all(dir.join("src"));
    write_crate(&dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "check",
            "--offline",
            "--bins",
            "--keep-going",
            "--color=never",
        ])
        .current_dir(&dir)
        // A directory of its own: the one running this test may be locked.
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .output()
        .expect("run cargo check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "every case must fail:\n{stderr}");
    let mut missing = Vec::new();
    for case in CASES {
        let errors = errors_of(&stderr, case.name);
        if errors.is_empty() {
            missing.push(format!("{}: no error at all", case.name));
            continue;
        }
        for words in case.says {
            if !errors.contains(words) {
                missing.push(format!("{}: {words:?} not in\n{errors}", case.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}\n\nthe whole output:\n{stderr}",
        missing.join("\n")
    );
}
