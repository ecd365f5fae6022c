//! `sluice-rr`: TCP request/response benchmark, the substitute for
//! netperf's TCP_RR and TCP_CRR (netperf is not packaged on Debian). The
//! `net` group of `sluice-bench` runs the server in one pod namespace and
//! the client in another, each pinned to its own CPU.
//!
//! - `server --listen ADDR`: serves one connection at a time (the client
//!   runs one transaction stream at a time, so a thread per connection
//!   would only add a thread spawn to every CRR transaction). For each
//!   1-byte request it writes a 1-byte response; on EOF it closes.
//! - `client --connect ADDR --mode rr --seconds S`: one connection with
//!   TCP_NODELAY, 1-byte request / 1-byte response, for S seconds.
//! - `client --connect ADDR --mode crr --seconds S`: every transaction is
//!   connect, 1-byte request, 1-byte response, close. The client half-closes
//!   after the response and waits for the server's FIN before closing, so
//!   the server closes first and TIME_WAIT lands on the server side: the
//!   client's ephemeral ports are free again at once and do not run out
//!   (a new SYN that meets a server-side TIME_WAIT of the same 4-tuple is
//!   accepted, thanks to TCP timestamps). That keeps the full FIN teardown
//!   on the wire, unlike an RST from SO_LINGER 0.
//!
//! The client prints one JSON object: transactions, transactions/s, p50 and
//! p99 latency (µs) of a transaction, failed transactions.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

#[derive(Parser)]
#[command(name = "sluice-rr", about = "TCP_RR / TCP_CRR client and server")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer every 1-byte request with 1 byte, one connection at a time.
    Server {
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
    },
    /// Run transactions against a server and print JSON.
    Client {
        #[arg(long, value_name = "ADDR")]
        connect: SocketAddr,
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// One connection, request/response on it.
    Rr,
    /// A new connection for every transaction.
    Crr,
}

/// A connection that stays silent this long is given up, so a client that
/// died never wedges the server.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout of one CRR transaction.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn serve(listener: &TcpListener) -> ! {
    loop {
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        // Errors end this connection only (a reset from the client, the
        // idle timeout); the server goes on with the next.
        let _ = answer(conn);
    }
}

fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => conn.write_all(&byte)?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One request/response on `conn`.
fn transact(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut byte = [b'r'];
    conn.write_all(&byte)?;
    conn.read_exact(&mut byte)
}

/// One CRR transaction: connect, request, response, close (server first).
fn connect_transact(addr: &SocketAddr) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IDLE_TIMEOUT))?;
    transact(&mut conn)?;
    // Half-close: the server sees EOF and closes, then we read its FIN.
    conn.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 1];
    while conn.read(&mut rest)? != 0 {}
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank, as crate::stats in sluice-bench.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn client(addr: SocketAddr, mode: Mode, seconds: f64) -> anyhow::Result<serde_json::Value> {
    if seconds.is_nan() || seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    let run_for = Duration::from_secs_f64(seconds);
    // Nanoseconds per transaction; a few hundred thousand at most.
    let mut latencies: Vec<u64> = Vec::with_capacity(1 << 16);
    let mut failed = 0u64;
    let mut first_error: Option<String> = None;
    let started;
    match mode {
        Mode::Rr => {
            let mut conn = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .with_context(|| format!("connecting to {addr}"))?;
            conn.set_nodelay(true)?;
            conn.set_read_timeout(Some(IDLE_TIMEOUT))?;
            started = Instant::now();
            while started.elapsed() < run_for {
                let t = Instant::now();
                transact(&mut conn).context("request/response")?;
                latencies.push(t.elapsed().as_nanos() as u64);
            }
        }
        Mode::Crr => {
            started = Instant::now();
            while started.elapsed() < run_for {
                let t = Instant::now();
                match connect_transact(&addr) {
                    Ok(()) => latencies.push(t.elapsed().as_nanos() as u64),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        // A failing server is not hammered in a tight loop.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if latencies.is_empty() {
        bail!(
            "no transaction completed in {elapsed:.1} s ({failed} failed: {})",
            first_error.unwrap_or_default()
        );
    }
    let transactions = latencies.len();
    latencies.sort_unstable();
    Ok(json!({
        "mode": match mode { Mode::Rr => "rr", Mode::Crr => "crr" },
        "seconds": elapsed,
        "transactions": transactions,
        "transactions_per_second": transactions as f64 / elapsed,
        "p50_us": percentile(&latencies, 50.0),
        "p99_us": percentile(&latencies, 99.0),
        "failed": failed,
        "first_error": first_error,
    }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Server { listen } => match TcpListener::bind(listen) {
            Ok(listener) => serve(&listener),
            Err(e) => Err(anyhow::Error::new(e).context(format!("listening on {listen}"))),
        },
        Cmd::Client {
            connect,
            mode,
            seconds,
        } => client(connect, mode, seconds).map(|v| println!("{v}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-rr: {e:#}");
            ExitCode::FAILURE
        }
    }
}
