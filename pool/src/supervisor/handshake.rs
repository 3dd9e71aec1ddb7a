//! What a starting worker must show before it gets work: its task list
//! (the same as every other worker's) and, when the pool has one, its
//! initializer's success. Pure judgements over what the worker said; the
//! dispatcher reads the frames and carries the verdicts out.

use procpool_protocol::{Outcome, TaskInfo};

/// Judges an initializer's encoded result: `Err(message)` if it failed.
pub(crate) type InitCheck = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// The initializer: a registered task with its encoded argument, and how
/// to judge its encoded result.
pub(crate) struct Initializer {
    pub(crate) name: String,
    pub(crate) signature: (String, String),
    pub(crate) arg: Vec<u8>,
    pub(crate) check: InitCheck,
}

/// Why a worker's `Hello` is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The initializer cannot run in it (a start-up error for the pool).
    Initializer(String),
    /// It serves other tasks than the first worker did.
    OtherTasks,
}

/// Judges a worker's task list. `known`: what the first worker announced
/// (`None` for the first). `Ok(index)`: the initializer's task index in the
/// list, when the pool has an initializer.
pub(crate) fn check_hello(
    known: Option<&[TaskInfo]>,
    tasks: &[TaskInfo],
    init: Option<&Initializer>,
) -> Result<Option<u32>, Refusal> {
    if let Some(known) = known {
        if known != tasks {
            return Err(Refusal::OtherTasks);
        }
    }
    let Some(init) = init else {
        return Ok(None);
    };
    let Some(idx) = tasks.iter().position(|t| t.name == init.name) else {
        return Err(Refusal::Initializer(format!(
            "the workers do not serve the initializer task `{}`",
            init.name
        )));
    };
    let t = &tasks[idx];
    if (&t.arg_type, &t.output_type) != (&init.signature.0, &init.signature.1) {
        return Err(Refusal::Initializer(format!(
            "the initializer `{}` is served as fn({}) -> {}, called as fn({}) -> {}",
            init.name, t.arg_type, t.output_type, init.signature.0, init.signature.1
        )));
    }
    Ok(Some(idx as u32))
}

/// The initializer's outcome as a verdict.
pub(crate) fn judge_init(init: Option<&Initializer>, outcome: &Outcome<'_>) -> Result<(), String> {
    let Some(init) = init else {
        return Err("an initializer result nobody asked for".into());
    };
    match outcome {
        Outcome::Ok(bytes) => (init.check)(bytes),
        Outcome::Panicked { message, location } => Err(match location {
            Some(l) => format!("panicked at {}:{}:{}: {message}", l.file, l.line, l.column),
            None => format!("panicked: {message}"),
        }),
        Outcome::ArgDecode(m) => Err(format!("cannot decode its argument: {m}")),
        Outcome::OutputEncode(m) => Err(format!("cannot encode its result: {m}")),
        Outcome::Cancelled => Err("a worker reported its initializer as cancelled".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, arg: &str) -> TaskInfo {
        TaskInfo {
            name: name.into(),
            arg_type: arg.into(),
            output_type: "()".into(),
        }
    }

    fn init(name: &str, arg: &str) -> Initializer {
        Initializer {
            name: name.into(),
            signature: (arg.into(), "()".into()),
            arg: Vec::new(),
            check: Box::new(|_| Ok(())),
        }
    }

    #[test]
    fn the_first_worker_sets_the_list_and_the_rest_must_match_it() {
        let list = [task("a", "u64"), task("setup", "String")];
        assert_eq!(check_hello(None, &list, None), Ok(None));
        assert_eq!(check_hello(Some(&list), &list, None), Ok(None));
        assert_eq!(
            check_hello(Some(&list), &list[..1], None),
            Err(Refusal::OtherTasks)
        );
    }

    #[test]
    fn the_initializer_must_be_served_with_its_signature() {
        let list = [task("a", "u64"), task("setup", "String")];
        assert_eq!(
            check_hello(None, &list, Some(&init("setup", "String"))),
            Ok(Some(1))
        );
        let missing = check_hello(None, &list, Some(&init("other", "String")));
        assert!(matches!(missing, Err(Refusal::Initializer(m)) if m.contains("do not serve")));
        let typed = check_hello(None, &list, Some(&init("setup", "u32")));
        assert!(matches!(typed, Err(Refusal::Initializer(m)) if m.contains("fn(String) -> ()")));
    }

    #[test]
    fn an_initializer_panic_names_its_location() {
        let outcome = Outcome::Panicked {
            message: "no config".into(),
            location: Some(procpool_protocol::Location {
                file: "src/main.rs".into(),
                line: 3,
                column: 5,
            }),
        };
        assert_eq!(
            judge_init(Some(&init("setup", "String")), &outcome),
            Err("panicked at src/main.rs:3:5: no config".into())
        );
    }
}
