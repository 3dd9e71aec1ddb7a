//! What a starting worker must show before it gets work: its task list
//! (the same as every other worker's) and, when the pool has one, its
//! initializer's success. Pure judgements over what the worker said; the
//! dispatcher reads the frames and carries the verdicts out.

use procpool_protocol::value::take_value;
use procpool_protocol::{Outcome, StateUse, TaskInfo};

/// Judges an initializer's encoded result: `Err(message)` if it failed.
pub(crate) type InitCheck = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// The initializer: a registered task with its encoded argument, and how
/// to judge its encoded result.
pub(crate) struct Initializer {
    pub(crate) name: String,
    pub(crate) signature: (String, String),
    pub(crate) arg: Vec<u8>,
    /// How to judge a plain task's result (`Builder::initializer`);
    /// `None` for a state-making initializer (`Builder::worker_state`),
    /// which judges its own result in the worker.
    pub(crate) check: Option<InitCheck>,
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
    if let Some(known) = known
        && known != tasks
    {
        return Err(Refusal::OtherTasks);
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
    match (&t.state, &init.check) {
        (StateUse::Takes(state), _) => {
            return Err(Refusal::Initializer(format!(
                "`{}` takes the worker state `{state}`, so it cannot be the initializer that \
                 makes it",
                init.name
            )));
        }
        (StateUse::None, None) => {
            return Err(Refusal::Initializer(format!(
                "`{}` is registered as a plain task, so its result would not stay in the \
                 worker: register it with Registry::initializer (or Registry::try_initializer) \
                 to make it the workers' state",
                init.name
            )));
        }
        (StateUse::None, Some(_)) | (StateUse::Makes(_), _) => {}
    }
    // The result of a state maker never reaches the parent, so only its
    // argument must match (a parent naming it with `Task::named` may not
    // even have the state's type).
    let result_matters = init.check.is_some();
    if t.arg_type != init.signature.0 || (result_matters && t.output_type != init.signature.1) {
        return Err(Refusal::Initializer(format!(
            "the initializer `{}` is served as fn({}) -> {}, called as fn({}) -> {}",
            init.name, t.arg_type, t.output_type, init.signature.0, init.signature.1
        )));
    }
    Ok(Some(idx as u32))
}

/// The initializer's outcome as a verdict. `served`: the initializer as
/// the worker announced it.
pub(crate) fn judge_init(
    init: Option<&Initializer>,
    served: Option<&TaskInfo>,
    outcome: &Outcome<'_>,
) -> Result<(), String> {
    let Some(init) = init else {
        return Err("an initializer result nobody asked for".into());
    };
    match outcome {
        Outcome::Ok(bytes) => match (served.map(|t| &t.state), &init.check) {
            // A state-making initializer keeps its state and answers
            // whether it made it.
            (Some(StateUse::Makes(_)), _) => match take_value::<Result<(), String>>(bytes) {
                Ok((verdict, [])) => verdict,
                Ok((_, rest)) => Err(format!(
                    "cannot decode its verdict: {} bytes left over",
                    rest.len()
                )),
                Err(e) => Err(format!("cannot decode its verdict: {e}")),
            },
            (_, Some(check)) => check(bytes),
            (_, None) => Err("it is not a state-making initializer".into()),
        },
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
            state: StateUse::None,
        }
    }

    fn with_state(mut t: TaskInfo, state: StateUse) -> TaskInfo {
        t.state = state;
        t
    }

    fn init(name: &str, arg: &str) -> Initializer {
        Initializer {
            name: name.into(),
            signature: (arg.into(), "()".into()),
            arg: Vec::new(),
            check: Some(Box::new(|_| Ok(()))),
        }
    }

    /// `Builder::worker_state`'s initializer.
    fn state_init(name: &str, arg: &str) -> Initializer {
        Initializer {
            check: None,
            ..init(name, arg)
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
            judge_init(Some(&init("setup", "String")), None, &outcome),
            Err("panicked at src/main.rs:3:5: no config".into())
        );
    }

    #[test]
    fn state_is_made_by_initializers_registered_to_make_it() {
        let model = || StateUse::Makes("app::Model".into());
        let list = [
            with_state(task("load", "String"), model()),
            with_state(task("predict", "f64"), StateUse::Takes("app::Model".into())),
            task("setup", "String"),
        ];
        // Either builder method may name a state maker; worker_state, with
        // any result type.
        assert_eq!(
            check_hello(None, &list, Some(&state_init("load", "String"))),
            Ok(Some(0))
        );
        let mut any_result = state_init("load", "String");
        any_result.signature.1 = "app::Model".into();
        assert_eq!(check_hello(None, &list, Some(&any_result)), Ok(Some(0)));
        let wrong_arg = check_hello(None, &list, Some(&state_init("load", "u32")));
        assert!(matches!(wrong_arg, Err(Refusal::Initializer(m)) if m.contains("fn(String)")));
        assert_eq!(
            check_hello(None, &list, Some(&init("load", "String"))),
            Ok(Some(0))
        );
        // A plain task makes no state; a task taking state cannot make it.
        let plain = check_hello(None, &list, Some(&state_init("setup", "String")));
        assert!(
            matches!(plain, Err(Refusal::Initializer(m)) if m.contains("Registry::initializer"))
        );
        let taker = check_hello(None, &list, Some(&init("predict", "f64")));
        assert!(
            matches!(taker, Err(Refusal::Initializer(m)) if m.contains("cannot be the initializer"))
        );
    }

    #[test]
    fn a_state_maker_answers_with_its_own_verdict() {
        let served = with_state(task("load", "String"), StateUse::Makes("app::Model".into()));
        let verdict = |r: Result<(), String>| {
            let bytes = postcard::to_stdvec(&r).unwrap();
            let outcome = Outcome::Ok(procpool_protocol::Bytes::new(&bytes));
            judge_init(Some(&state_init("load", "String")), Some(&served), &outcome)
        };
        assert_eq!(verdict(Ok(())), Ok(()));
        assert_eq!(
            verdict(Err("no model file".into())),
            Err("no model file".into())
        );
    }
}
