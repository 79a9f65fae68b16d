//! Where a nearest-neighbour statement's time goes before any data is
//! touched: parsing, SQL → logical plan, optimisation, physical planning.
//! Runs an embedded standalone engine on a temporary data directory.
//!
//!     cargo run --release -p quiver-cmd --example query_overhead

use std::time::Instant;

use quiver_frontend::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let engine = quiver_cmd::standalone::start(&config).await?;
    let session = engine.new_session();
    let run = |sql: String| {
        let engine = engine.clone();
        let session = &session;
        async move {
            let statement = engine
                .parse_one(&sql)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            engine
                .execute(session, statement)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))
        }
    };
    run("CREATE TABLE t (id bigint PRIMARY KEY, embedding vector(384))".into()).await?;
    let q = format!(
        "[{}]",
        (0..384)
            .map(|i| format!("{:.6}", (i as f32).sin()))
            .collect::<Vec<_>>()
            .join(",")
    );
    let sql = format!("SELECT id FROM t ORDER BY embedding <-> '{q}' LIMIT 10");
    let n = 300;
    let t = Instant::now();
    for _ in 0..n {
        engine
            .parse_one(&sql)
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let parse = t.elapsed() / n;
    let statement = engine
        .parse_one(&sql)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let t = Instant::now();
    for _ in 0..n {
        engine
            .plan(&session, statement.clone())
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let logical = t.elapsed() / n;
    let plan = engine
        .plan(&session, statement.clone())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let state = session.ctx.state();
    let t = Instant::now();
    for _ in 0..n {
        state.optimize(&plan)?;
    }
    let optimize = t.elapsed() / n;
    let optimized = state.optimize(&plan)?;
    let t = Instant::now();
    for _ in 0..n {
        state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await?;
    }
    let physical = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        let _ = session.ctx.state();
    }
    let clone = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        run(sql.clone()).await?;
    }
    let total = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        run("SELECT 1".into()).await?;
    }
    let select_one = t.elapsed() / n;
    println!("SELECT 1: {select_one:?}");
    println!(
        "per statement: parse {parse:?}, SQL->logical {logical:?}, optimize {optimize:?}, physical {physical:?}, SessionState clone {clone:?}; whole execute {total:?} (empty table)"
    );
    Ok(())
}
