//! The parent's view of tasks: which served task a call names, whether
//! the workers serve it with the caller's signature, and whether they hold
//! the state it takes. Pure checks over the task list of the handshake,
//! made at submit, before anything is sent.

use procpool_protocol::{StateUse, TaskInfo};

use crate::error::{Error, ErrorKind};

/// The state type recorded, in the parent's table, for an initializer the
/// workers serve but this pool does not run: it makes no state here.
const NOT_RUN_HERE: &str = "";

/// The parent's table of tasks, from the first worker's list: the same
/// tasks at the same indices (the indices are task ids on the wire), with
/// one change: the pool's own initializer keeps its `Makes(type)`, and
/// every other initializer is recorded as making nothing here. So the
/// table alone tells a call which state the workers hold, and that an
/// initializer, the pool's or not, is no task.
pub(crate) fn for_pool(mut tasks: Vec<TaskInfo>, init: Option<u32>) -> Vec<TaskInfo> {
    for (i, t) in tasks.iter_mut().enumerate() {
        if matches!(t.state, StateUse::Makes(_)) && init != Some(i as u32) {
            t.state = StateUse::Makes(NOT_RUN_HERE.to_owned());
        }
    }
    tasks
}

/// The state the pool's workers hold: its initializer's name and the
/// state's type name.
fn pool_state(tasks: &[TaskInfo]) -> Option<(&str, &str)> {
    tasks.iter().find_map(|t| match &t.state {
        StateUse::Makes(state) if state != NOT_RUN_HERE => Some((t.name.as_str(), state.as_str())),
        _ => None,
    })
}

/// The index in `tasks` (the parent's table, see [`for_pool`]) of the task
/// a call names `name`, with the argument and result types `arg_type` and
/// `output_type`, if the workers serve it so and hold the state it takes.
pub(crate) fn lookup(
    tasks: &[TaskInfo],
    name: &str,
    arg_type: &str,
    output_type: &str,
) -> Result<usize, Error> {
    let Some(index) = tasks.iter().position(|t| t.name == name) else {
        return Err(Error::new(ErrorKind::UnknownTask {
            name: name.to_owned(),
            available: tasks
                .iter()
                .filter(|t| !matches!(t.state, StateUse::Makes(_)))
                .map(|t| t.name.clone())
                .collect(),
        }));
    };
    let served = &tasks[index];
    if let StateUse::Makes(_) = served.state {
        return Err(Error::new(ErrorKind::InvalidCall {
            detail: format!(
                "`{name}` is a state-making initializer: each worker runs it once, before its \
                 first task, when the pool names it in Builder::worker_state; it cannot be \
                 called as a task"
            ),
        }));
    }
    if served.arg_type != arg_type || served.output_type != output_type {
        return Err(Error::new(ErrorKind::Signature {
            name: name.to_owned(),
            expected: format!("fn({arg_type}) -> {output_type}"),
            served: format!("fn({}) -> {}", served.arg_type, served.output_type),
        }));
    }
    if let StateUse::Takes(needs) = &served.state {
        match pool_state(tasks) {
            Some((_, holds)) if holds == needs => {}
            holds => {
                return Err(Error::new(ErrorKind::MissingState {
                    task: name.to_owned(),
                    needs: needs.clone(),
                    holds: holds.map(|(init, state)| (init.to_owned(), state.to_owned())),
                }));
            }
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, state: StateUse) -> TaskInfo {
        TaskInfo {
            name: name.into(),
            arg_type: "f64".into(),
            output_type: "f64".into(),
            state,
        }
    }

    /// A worker serving two state makers, a task for each state, and a
    /// plain task; the pool runs initializer `init`.
    fn table(init: Option<u32>) -> Vec<TaskInfo> {
        let makes = |t: &str| StateUse::Makes(t.into());
        let takes = |t: &str| StateUse::Takes(t.into());
        for_pool(
            vec![
                info("load_model", makes("app::Model")),
                info("open_db", makes("app::Db")),
                info("predict", takes("app::Model")),
                info("query", takes("app::Db")),
                info("square", StateUse::None),
            ],
            init,
        )
    }

    fn call(table: &[TaskInfo], name: &str) -> Result<usize, Error> {
        lookup(table, name, "f64", "f64")
    }

    #[test]
    fn a_task_taking_state_runs_only_where_the_workers_hold_that_state() {
        let models = table(Some(0));
        assert_eq!(call(&models, "predict").unwrap(), 2);
        assert_eq!(call(&models, "square").unwrap(), 4);
        let err = call(&models, "query").unwrap_err();
        assert!(err.is_missing_state(), "{err}");
        assert_eq!(err.task_name(), Some("query"));
        assert_eq!(
            err.to_string(),
            "task `query` takes the worker state `app::Db`, but this pool's workers hold \
             `app::Model` (made by `load_model`): register an initializer returning `app::Db` \
             with Registry::initializer (or Registry::try_initializer) and give it to \
             Builder::worker_state"
        );

        let stateless = table(None);
        let err = call(&stateless, "predict").unwrap_err();
        assert!(err.is_missing_state(), "{err}");
        assert!(
            err.to_string()
                .contains("this pool's workers hold no state"),
            "{err}"
        );
        assert_eq!(call(&table(Some(1)), "query").unwrap(), 3);
    }

    #[test]
    fn initializers_are_not_tasks() {
        for init in [None, Some(0), Some(1)] {
            let t = table(init);
            for name in ["load_model", "open_db"] {
                let err = call(&t, name).unwrap_err();
                assert!(err.is_invalid_call(), "{err}");
                assert!(
                    err.to_string().contains("cannot be called as a task"),
                    "{err}"
                );
            }
            let err = call(&t, "nope").unwrap_err();
            assert!(err.is_unknown_task(), "{err}");
            assert!(
                err.to_string()
                    .ends_with("(they serve: predict, query, square)"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_signature_is_checked_before_the_state() {
        let err = lookup(&table(None), "predict", "u64", "f64").unwrap_err();
        assert!(err.is_unknown_task() && !err.is_missing_state(), "{err}");
    }
}
