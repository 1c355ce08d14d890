//! Heap allocations per operation of the render path, counted by a counting global allocator
//! (no timing): where a render's time goes when a profile shows malloc and free on top.
//!
//!   cargo bench --bench allocs

#[path = "../tests/support/hostile.rs"]
mod hostile;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use incident_gateway::config::Config;
use incident_gateway::connector::Target;
use incident_gateway::deliver::prepare::{self, AttemptFacts};
use incident_gateway::model::{Completion, Event, TicketFacts};
use incident_gateway::render::Renderer;
use serde_json::Value;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes allocated by one call of `f` (the mean of a few).
fn count<T>(mut f: impl FnMut() -> T) -> (u64, u64) {
    const RUNS: u64 = 5;
    drop(f());
    let (a, b) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    for _ in 0..RUNS {
        drop(f());
    }
    (
        (ALLOCS.load(Relaxed) - a) / RUNS,
        (BYTES.load(Relaxed) - b) / RUNS,
    )
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load_with_env(&repo.join("examples/connectors.toml"), |name| match name {
        "IGW_ADMIN_TOKEN" => Some("bench-admin-token-0123456789".into()),
        "IGW_SOURCE_KEY" => Some("bench-source-key-0123456789".into()),
        _ => None,
    })
    .expect("examples/connectors.toml loads");
    let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors)
        .expect("the shipped templates compile");
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("examples/incidents/sample.json"))
            .expect("the sample is readable"),
    )
    .expect("the sample is JSON");
    let mut incidents = vec![("sample", sample.clone())];
    incidents.extend(hostile::hostile_variants(&sample));
    // Renders are of an incident version rendered before (what it keeps is kept).
    println!(
        "{:<44} {:>10} {:>14} {:>12}",
        "operation", "allocs", "bytes", "body bytes"
    );
    for (name, incident) in &incidents {
        for connector in &config.connectors {
            let Target::Http(_) = connector.target else {
                continue;
            };
            let event = Event::Created;
            let facts = AttemptFacts {
                event,
                delivery_id: "msg_bench".into(),
                attempt: 1,
                received_at_ms: 1_767_225_600_000,
                ticket: TicketFacts {
                    key: "k".into(),
                    id: None,
                    url: None,
                    reopened: false,
                },
                completion: None::<Completion>,
                collected: None,
            };
            let context = prepare::attempt_context(connector, incident, &facts);
            let (a, b) = count(|| renderer.render(connector, event, &context));
            let body = renderer
                .render(connector, event, &context)
                .map(|r| r.body.len())
                .unwrap_or(0);
            println!(
                "{:<44} {a:>10} {b:>14} {body:>12}",
                format!("render/{}/created/{name}", connector.name)
            );
        }
        let connector = &config.connectors[0];
        let facts = AttemptFacts {
            event: Event::Updated,
            delivery_id: "msg_bench".into(),
            attempt: 1,
            received_at_ms: 1_767_225_600_000,
            ticket: TicketFacts::default(),
            completion: None,
            collected: None,
        };
        let (a, b) = count(|| prepare::attempt_context(connector, incident, &facts));
        println!("{:<44} {a:>10} {b:>14}", format!("context/attempt/{name}"));
        let (a, b) = count(|| incident_gateway::ticket::route_for(&renderer, connector, incident));
        println!("{:<44} {a:>10} {b:>14}", format!("correlation_key/{name}"));
    }
}
