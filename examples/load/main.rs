//! The load tool: a benchmark anyone can re-run (see BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release --example load -- all            # every scenario, ~4 minutes
//! cargo run --release --example load -- ingest --duration 5 --connections 64
//! cargo run --release --example load -- backlog --backlog 1000000
//! ```
//!
//! It builds the release gateway (`cargo build --release --bin incident-gateway`, a no-op
//! when it is fresh), starts it as a child process on an ephemeral port with a config of its
//! own, drives it over N keep-alive connections — flat out (closed loop) or at a fixed rate
//! (open loop) — with a built-in counting receiver as the connectors' destination, and
//! measures the four baselines (parse-only, storing-nothing relay, durable ingest, durable
//! relay) on the same load, built from the same crates. Every figure is printed with its
//! baseline, the ratio, the issue's target and whether it is met.

mod bench;

use std::process::ExitCode;

fn main() -> ExitCode {
    match bench::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
