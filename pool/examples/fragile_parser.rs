//! Isolating a crash-prone parser: every document is parsed in a worker
//! process; the ones that crash the parser (here, as a C library would,
//! with a segmentation fault) cost only themselves.
//!
//! ```sh
//! cargo run --release -p procpool --example fragile_parser -- [DOCUMENTS]
//! ```

/// A "parser" with a memory-safety bug: a document holding `}}{{` sends
/// it through a wild pointer, which ends the process with SIGSEGV.
fn parse(doc: String) -> Result<usize, String> {
    if doc.contains("}}{{") {
        // SAFETY: restores SIGSEGV's default action in this worker process
        // and raises it, standing in for the C library's wild write.
        unsafe {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
        }
    }
    if !doc.starts_with('{') {
        return Err(format!("not a document: {:?}", &doc[..doc.len().min(12)]));
    }
    Ok(doc.matches(':').count())
}

fn document(i: u64) -> String {
    match i % 97 {
        13 => format!("{{\"id\": {i}, \"oops\": }}}}{{{{ }}"),
        41 => format!("garbage {i}"),
        _ => format!("{{\"id\": {i}, \"name\": \"doc {i}\", \"tags\": [\"a\"]}}"),
    }
}

fn main() -> Result<(), procpool::Error> {
    let tasks = procpool::Registry::new().task(parse);
    procpool::serve_if_worker(&tasks);
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);

    let pool = procpool::Pool::builder().build()?;
    let (mut fields, mut rejected, mut crashed) = (0usize, 0, 0);
    // A deadline makes outcomes exact: a crash costs only the document
    // that caused it, never its neighbours in the same chunk.
    let deadline = std::time::Duration::from_secs(10);
    for (i, outcome) in pool
        .with_timeout(deadline)
        .imap(parse, (0..n).map(document))?
        .enumerate()
    {
        match outcome {
            Ok(Ok(count)) => fields += count,
            Ok(Err(_)) => rejected += 1,
            Err(e) if e.is_worker_died() => {
                crashed += 1;
                if crashed <= 3 {
                    println!("  document {i}: {e}");
                }
            }
            Err(e) => return Err(e),
        }
    }
    let stats = pool.stats();
    println!(
        "{n} documents: {fields} fields parsed, {rejected} rejected by the parser, \
         {crashed} crashed it; {} workers replaced, the program never noticed",
        stats.worker_deaths
    );
    Ok(())
}
