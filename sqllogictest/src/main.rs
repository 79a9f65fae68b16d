//! `quiver-slt`: a sqllogictest runner that talks to a running Quiver server
//! (or any PostgreSQL-wire-compatible server) over the simple query protocol.
//!
//! Usage:
//!
//! ```text
//! quiver-slt --port 5488 sqllogictest/test_files/*.slt
//! quiver-slt --port 5488 --restart-cmd './restart-server.sh' sqllogictest/test_files/restart.slt
//! quiver-slt --port 5488 --port 5489 sqllogictest/test_files/*.slt
//! ```
//!
//! Every file runs on its own fresh connection(s). With several `--port`s
//! (proxies of one cluster), each new connection goes to the next port in
//! turn, so a file's connections and consecutive files alternate proxies. Values come back as text
//! (simple query protocol); SQL `NULL` is rendered as `NULL` and the empty
//! string as `(empty)`.
//!
//! Server restarts: a comment line that is exactly `# quiver: restart` splits a
//! file. When the runner reaches it, it closes its connections, runs the
//! `--restart-cmd` shell command (`sh -c`), waits until the server accepts
//! connections and answers `SELECT 1`, and continues with the rest of the file
//! on new connections.
//!
//! The last line printed is `N passed, M failed` (counted in files); the exit
//! code is non-zero if any file failed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use clap::Parser;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Record, Runner};
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The comment text (after `#`) that marks a server restart point in a file.
const RESTART_MARKER: &str = "quiver: restart";

/// Prefix of the failure message when the server cannot be reached.
const SERVER_DOWN: &str = "server unreachable";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "quiver-slt",
    about = "Run sqllogictest files against a Quiver (PostgreSQL wire protocol) server"
)]
struct Args {
    /// Server host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Server port; repeat to spread connections over several proxies.
    #[arg(long = "port", default_values_t = [5488])]
    ports: Vec<u16>,

    /// User name.
    #[arg(long, default_value = "postgres")]
    user: String,

    /// Database name.
    #[arg(long, default_value = "postgres")]
    dbname: String,

    /// Password (the Quiver default is trust authentication, i.e. none).
    #[arg(long)]
    password: Option<String>,

    /// Shell command (run with `sh -c`) that restarts the server on the same
    /// data directory and port. Used for `# quiver: restart` lines.
    #[arg(long)]
    restart_cmd: Option<String>,

    /// Seconds to wait for the server to become ready (at start-up of each file
    /// and after a restart).
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,

    /// Per-statement timeout in seconds (0 = none).
    #[arg(long, default_value_t = 120)]
    statement_timeout: u64,

    /// Extra labels for `skipif` / `onlyif` conditions (the engine name `quiver`
    /// is always set).
    #[arg(long = "label")]
    labels: Vec<String>,

    /// Stop after the first failing file.
    #[arg(long)]
    fail_fast: bool,

    /// Test files or glob patterns (`*`, `?` in the file name part).
    #[arg(required = true)]
    files: Vec<String>,
}

// ---------------------------------------------------------------------------
// Error type
// ---------------------------------------------------------------------------

/// Error returned by [`Postgres`]. Its text includes the server message and the
/// SQLSTATE so that both `statement error (22P02)` (SQLSTATE match) and
/// `statement error <regex>` (message match) work.
#[derive(Debug)]
struct PgError {
    sqlstate: Option<String>,
    text: String,
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for PgError {}

impl PgError {
    fn other(text: impl Into<String>) -> Self {
        PgError {
            sqlstate: None,
            text: text.into(),
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let mut text = format!(
                    "db error: {}: {} (SQLSTATE {})",
                    db.severity(),
                    db.message(),
                    db.code().code()
                );
                if let Some(detail) = db.detail() {
                    text.push_str("\nDETAIL: ");
                    text.push_str(detail);
                }
                if let Some(hint) = db.hint() {
                    text.push_str("\nHINT: ");
                    text.push_str(hint);
                }
                PgError {
                    sqlstate: Some(db.code().code().to_string()),
                    text,
                }
            }
            None => {
                // Include the cause chain (e.g. the io error) for diagnostics.
                let mut text = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    src = s.source();
                }
                PgError {
                    sqlstate: e.code().map(|c| c.code().to_string()),
                    text,
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Connection / AsyncDB implementation
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ConnParams {
    host: String,
    ports: Vec<u16>,
    /// Connections made so far: picks the next port.
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    user: String,
    dbname: String,
    password: Option<String>,
    statement_timeout: Option<Duration>,
}

impl ConnParams {
    fn next_port(&self) -> u16 {
        let n = self
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ports[n % self.ports.len()]
    }

    fn config(&self, port: u16) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("quiver-slt")
            .connect_timeout(Duration::from_secs(10));
        if let Some(pw) = &self.password {
            cfg.password(pw);
        }
        cfg
    }
}

struct Postgres {
    client: tokio_postgres::Client,
    conn_task: tokio::task::JoinHandle<()>,
    statement_timeout: Option<Duration>,
}

impl Postgres {
    async fn connect(params: ConnParams) -> Result<Self, PgError> {
        let port = params.next_port();
        Self::connect_to(params, port).await
    }

    async fn connect_to(params: ConnParams, port: u16) -> Result<Self, PgError> {
        let (client, connection) = params.config(port).connect(NoTls).await?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("quiver-slt: connection error: {e}");
            }
        });
        Ok(Postgres {
            client,
            conn_task,
            statement_timeout: params.statement_timeout,
        })
    }

    async fn simple(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, PgError> {
        let fut = self.client.simple_query(sql);
        match self.statement_timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r.map_err(PgError::from),
                Err(_) => Err(PgError::other(format!(
                    "statement timed out after {}s",
                    t.as_secs()
                ))),
            },
            None => fut.await.map_err(PgError::from),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

/// Renders one text value the way sqllogictest files expect it.
fn render_value(v: Option<&str>) -> String {
    match v {
        None => "NULL".to_string(),
        Some("") => "(empty)".to_string(),
        Some(s) => s.to_string(),
    }
}

#[async_trait]
impl AsyncDB for Postgres {
    type Error = PgError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let messages = self.simple(sql).await?;

        // With several statements in one record, the rows of all statements
        // that return rows are concatenated; otherwise the last command count
        // is reported.
        let mut saw_rows = false;
        let mut ncols = 0usize;
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut last_count = 0u64;
        for msg in messages {
            match msg {
                SimpleQueryMessage::RowDescription(cols) => {
                    saw_rows = true;
                    ncols = ncols.max(cols.len());
                }
                SimpleQueryMessage::Row(row) => {
                    saw_rows = true;
                    ncols = ncols.max(row.len());
                    let values = (0..row.len())
                        .map(|i| render_value(row.get(i)))
                        .collect::<Vec<_>>();
                    rows.push(values);
                }
                SimpleQueryMessage::CommandComplete(n) => last_count = n,
                _ => {}
            }
        }

        if saw_rows {
            // The simple query protocol carries no type information we can use
            // portably, so every column is reported as `Any`; the default
            // column validator does not compare types.
            Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; ncols],
                rows,
            })
        } else {
            Ok(DBOutput::StatementComplete(last_count))
        }
    }

    async fn shutdown(&mut self) {
        self.conn_task.abort();
    }

    fn engine_name(&self) -> &str {
        "quiver"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }

    async fn run_command(command: std::process::Command) -> std::io::Result<std::process::Output> {
        tokio::process::Command::from(command).output().await
    }

    fn error_sql_state(err: &Self::Error) -> Option<String> {
        err.sqlstate.clone()
    }
}

// ---------------------------------------------------------------------------
// File expansion (minimal glob support without extra dependencies)
// ---------------------------------------------------------------------------

/// Matches `name` against a pattern with `*` (any run) and `?` (any one char).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn expand_files(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for pat in patterns {
        let path = Path::new(pat);
        let fname = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if fname.contains('*') || fname.contains('?') {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let mut matched: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading directory {}", dir.display()))?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter(|e| wildcard_match(&fname, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect();
            matched.sort();
            if matched.is_empty() {
                bail!("pattern {pat} matched no files");
            }
            out.extend(matched);
        } else {
            if !path.is_file() {
                bail!("no such test file: {pat}");
            }
            out.push(path.to_path_buf());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Running files
// ---------------------------------------------------------------------------

type ConnFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Postgres, PgError>> + Send>>;
type MakeConn = Box<dyn FnMut() -> ConnFuture + Send>;
type PgRunner = Runner<Postgres, MakeConn>;

fn new_runner(params: &ConnParams, labels: &[String]) -> PgRunner {
    let params = params.clone();
    let make: MakeConn = Box::new(move || {
        let p = params.clone();
        Box::pin(async move { Postgres::connect(p).await }) as ConnFuture
    });
    let mut runner = Runner::new(make);
    for l in labels {
        runner.add_label(l);
    }
    runner
}

/// Waits until every server accepts a connection and answers `SELECT 1`.
async fn wait_ready(params: &ConnParams, timeout: Duration) -> Result<()> {
    for &port in &params.ports {
        wait_port_ready(params, port, timeout).await?;
    }
    Ok(())
}

async fn wait_port_ready(params: &ConnParams, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err: String;
    loop {
        match Postgres::connect_to(params.clone(), port).await {
            Ok(db) => match db.client.simple_query("SELECT 1").await {
                Ok(_) => return Ok(()),
                Err(e) => last_err = PgError::from(e).to_string(),
            },
            Err(e) => last_err = e.to_string(),
        }
        if Instant::now() >= deadline {
            bail!(
                "server at {}:{} not ready after {}s: {last_err}",
                params.host,
                port,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_restart(cmd: &str) -> Result<()> {
    eprintln!("quiver-slt: restarting server: {cmd}");
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("spawning restart command {cmd:?}"))?;
    if !status.success() {
        bail!("restart command {cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_restart_marker(record: &Record<DefaultColumnType>) -> bool {
    match record {
        Record::Comment(lines) => lines.iter().any(|l| l.trim() == RESTART_MARKER),
        _ => false,
    }
}

/// Runs one file. Returns `Ok(())` on success or `Err(message)` describing the
/// failure (including the expected/actual diff for result mismatches).
async fn run_file(
    args: &Args,
    params: &ConnParams,
    path: &Path,
    ready_timeout: Duration,
) -> Result<(), String> {
    let records = sqllogictest::parse_file::<DefaultColumnType>(path)
        .map_err(|e| format!("parse error: {e}"))?;

    if args.restart_cmd.is_none() && records.iter().any(is_restart_marker) {
        return Err(format!(
            "file contains `# {RESTART_MARKER}` but no --restart-cmd was given"
        ));
    }

    wait_ready(params, ready_timeout)
        .await
        .map_err(|e| format!("{SERVER_DOWN}: {e:#}"))?;

    let mut runner = new_runner(params, &args.labels);
    let mut restarts = 0usize;
    for record in records {
        if let Record::Halt { .. } = record {
            break;
        }
        if is_restart_marker(&record) {
            let Some(cmd) = args.restart_cmd.as_deref() else {
                unreachable!("checked before running the file");
            };
            // Close all connections of this part before the server goes away.
            runner.shutdown_async().await;
            drop(runner);
            run_restart(cmd).await.map_err(|e| format!("{e:#}"))?;
            wait_ready(params, Duration::from_secs(args.ready_timeout))
                .await
                .map_err(|e| format!("{SERVER_DOWN} after restart: {e:#}"))?;
            restarts += 1;
            runner = new_runner(params, &args.labels);
            continue;
        }
        if let Err(e) = runner.run_async(record).await {
            runner.shutdown_async().await;
            return Err(e.display(false).to_string());
        }
    }
    runner.shutdown_async().await;
    if restarts > 0 {
        eprintln!(
            "quiver-slt: {} restarted the server {restarts} time(s)",
            path.display()
        );
    }
    Ok(())
}

async fn real_main() -> Result<bool> {
    let mut args = Args::parse();
    if !args.labels.iter().any(|l| l == "quiver") {
        args.labels.push("quiver".to_string());
    }
    let params = ConnParams {
        host: args.host.clone(),
        ports: args.ports.clone(),
        connections: Default::default(),
        user: args.user.clone(),
        dbname: args.dbname.clone(),
        password: args.password.clone(),
        statement_timeout: (args.statement_timeout > 0)
            .then(|| Duration::from_secs(args.statement_timeout)),
    };
    let files = expand_files(&args.files)?;
    if files.is_empty() {
        return Err(anyhow!("no test files given"));
    }

    let mut failures: Vec<PathBuf> = Vec::new();
    let mut passed = 0usize;
    let mut failed = 0usize;
    // Once the server was found unreachable, later files only wait briefly.
    let mut ready_timeout = Duration::from_secs(args.ready_timeout);
    for file in &files {
        let started = Instant::now();
        match run_file(&args, &params, file, ready_timeout).await {
            Ok(()) => {
                passed += 1;
                println!(
                    "PASS {} ({:.2}s)",
                    file.display(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(msg) => {
                failed += 1;
                println!(
                    "FAIL {} ({:.2}s)",
                    file.display(),
                    started.elapsed().as_secs_f64()
                );
                println!("{msg}");
                if msg.starts_with(SERVER_DOWN) {
                    ready_timeout = ready_timeout.min(Duration::from_secs(5));
                }
                failures.push(file.clone());
                if args.fail_fast {
                    break;
                }
            }
        }
    }

    if !failures.is_empty() {
        println!();
        println!("failed files:");
        for f in &failures {
            println!("  {}", f.display());
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

#[tokio::main]
async fn main() -> ExitCode {
    match real_main().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("quiver-slt: {e:#}");
            println!("0 passed, 1 failed");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard() {
        assert!(wildcard_match("*.slt", "ddl.slt"));
        assert!(wildcard_match("d?l.slt", "ddl.slt"));
        assert!(wildcard_match("*", "x"));
        assert!(!wildcard_match("*.slt", "ddl.sql"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn values() {
        assert_eq!(render_value(None), "NULL");
        assert_eq!(render_value(Some("")), "(empty)");
        assert_eq!(render_value(Some("[1,2,3]")), "[1,2,3]");
    }

    #[test]
    fn restart_marker_parses_as_comment() {
        let script = "statement ok\nSELECT 1\n\n# quiver: restart\n\nquery I\nSELECT 1\n----\n1\n";
        let records = sqllogictest::parse::<DefaultColumnType>(script).unwrap();
        assert_eq!(records.iter().filter(|r| is_restart_marker(r)).count(), 1);
    }
}
