//! Micro-benchmarks of the render path (BENCHMARKS.md, "Micro-benchmarks"): schema
//! validation, routing, correlation keys, render contexts, and every shipped template for every
//! event, against the seed sample and its hostile variants. Each reports elements per second.
//!
//!   cargo bench --bench render                     # everything (about 15 minutes)
//!   cargo bench --bench render -- --quick          # the short form (a few minutes)
//!   cargo bench --bench render -- 'render/jira/'   # one group or connector (a regex)
//!   python3 benches/summary.py [BASELINE]          # the table of elements/s from target/criterion

#[path = "../tests/support/hostile.rs"]
mod hostile;

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use incident_gateway::config::Config;
use incident_gateway::connector::{Connector, Target};
use incident_gateway::deliver::prepare::{self, AttemptFacts};
use incident_gateway::model::{Completion, Event, TicketFacts};
use incident_gateway::render::{IncidentContext, Renderer};
use incident_gateway::schema::IncidentSchema;
use incident_gateway::{cli, route, ticket};
use serde_json::Value;

const EVENTS: [Event; 3] = [Event::Created, Event::Updated, Event::Completed];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A shipped config with the variables it requires set; every other `${…}` takes its default.
fn load(path: &Path) -> (Config, Renderer) {
    let config = Config::load_with_env(path, |name| match name {
        "IGW_ADMIN_TOKEN" => Some("bench-admin-token-0123456789".into()),
        "IGW_SOURCE_KEY" => Some("bench-source-key-0123456789".into()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{} loads: {e}", path.display()));
    let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors)
        .unwrap_or_else(|e| panic!("{} compiles: {e}", path.display()));
    (config, renderer)
}

/// The shipped configs: the ticketing connectors, the gateway example (two generic
/// envelopes), and the email connector of the fuzz target (the shipped email templates).
fn configs() -> Vec<(Config, Renderer)> {
    [
        "examples/connectors.toml",
        "examples/gateway.toml",
        "fuzz/configs/email.toml",
    ]
    .iter()
    .map(|p| load(&repo().join(p)))
    .collect()
}

fn sample() -> Value {
    let text = std::fs::read_to_string(repo().join("examples/incidents/sample.json"))
        .expect("the seed sample is readable");
    serde_json::from_str(&text).expect("the seed sample is JSON")
}

/// The seed sample and its hostile variants (tests/connectors.rs renders the same).
fn incidents() -> Vec<(String, Value)> {
    let sample = sample();
    let mut all = vec![("sample".to_string(), sample.clone())];
    all.extend(
        hostile::hostile_variants(&sample)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v)),
    );
    all
}

/// The facts a delivery of `event` carries, fixed (as the golden tests fix them).
fn facts(incident: &Value, connector: &Connector, event: Event) -> AttemptFacts {
    let key = incident
        .get("incidentId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ticket = match (event, &connector.target) {
        (Event::Created, _) => TicketFacts {
            key,
            id: None,
            url: None,
            reopened: false,
        },
        (_, Target::Smtp(_)) => TicketFacts {
            key,
            id: Some("<root@example.com>".into()),
            url: None,
            reopened: false,
        },
        (_, Target::Http(_)) => TicketFacts {
            key,
            id: Some("TICKET-BENCH-1".into()),
            url: Some("https://tickets.example.com/TICKET-BENCH-1".into()),
            reopened: false,
        },
    };
    AttemptFacts {
        event,
        delivery_id: "msg_bench".into(),
        attempt: 1,
        received_at_ms: 1_767_225_600_000,
        ticket,
        completion: (event == Event::Completed).then(|| Completion {
            reason_code: "threat_not_valid".into(),
            notes: Some("Closed in the ticketing system: expected scanner traffic".into()),
            status_change_time: "2026-01-02T09:30:00.000Z".into(),
        }),
        collected: None,
    }
}

fn bench_schema(c: &mut Criterion, incidents: &[(String, Value)]) {
    let schema = IncidentSchema::shipped().expect("the shipped schema compiles");
    let mut g = c.benchmark_group("schema");
    g.throughput(Throughput::Elements(1));
    for (name, incident) in incidents {
        g.bench_with_input(BenchmarkId::new("validate", name), incident, |b, i| {
            b.iter(|| schema.violations(i, ""))
        });
    }
    g.finish();
}

fn bench_route(c: &mut Criterion, configs: &[(Config, Renderer)], sample: &Value) {
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    for (file, (config, _)) in ["connectors", "gateway"].iter().zip(configs) {
        g.bench_function(*file, |b| {
            b.iter(|| route::route(&config.connectors, sample).len())
        });
    }
    g.finish();
}

/// The key of each connector, at ingest (one element: one connector's key).
fn bench_keys(c: &mut Criterion, configs: &[(Config, Renderer)], incidents: &[(String, Value)]) {
    let mut g = c.benchmark_group("correlation_key");
    g.throughput(Throughput::Elements(1));
    let (config, renderer) = &configs[0];
    for (name, incident) in incidents {
        let connector = &config.connectors[0];
        g.bench_with_input(BenchmarkId::new("route_for", name), incident, |b, i| {
            b.iter(|| ticket::route_for(renderer, connector, i).key)
        });
    }
    // Every connector of connectors.toml for the sample: one element per connector.
    let sample = &incidents[0].1;
    g.throughput(Throughput::Elements(config.connectors.len() as u64));
    g.bench_function("all_connectors/sample", |b| {
        b.iter(|| {
            config
                .connectors
                .iter()
                .map(|c| ticket::route_for(renderer, c, sample).key.len())
                .sum::<usize>()
        })
    });
    g.bench_function("routes_for/sample", |b| {
        b.iter(|| ticket::routes_for(renderer, &config.connectors, sample).len())
    });
    // A key that needs the render context (a derived field): one context for all connectors.
    let (path, keyed) = with_key("{{threat_rating}}-{{incidentId}}");
    let keyed_renderer = Renderer::new(keyed.partials_dir.as_deref(), &keyed.connectors)
        .expect("the shipped templates compile");
    g.bench_function("routes_for_rendered_key/sample", |b| {
        b.iter(|| ticket::routes_for(&keyed_renderer, &keyed.connectors, sample).len())
    });
    drop(path);
    g.finish();
}

/// The context of one attempt, from the incident version it carries; and as `check` and
/// `render` build it (with the correlation key).
fn bench_context(c: &mut Criterion, configs: &[(Config, Renderer)], incidents: &[(String, Value)]) {
    let mut g = c.benchmark_group("context");
    g.throughput(Throughput::Elements(1));
    let (config, renderer) = &configs[0];
    let connector = &config.connectors[0];
    for (name, incident) in incidents {
        let facts = facts(incident, connector, Event::Updated);
        g.bench_with_input(BenchmarkId::new("attempt", name), incident, |b, i| {
            b.iter(|| prepare::attempt_context(connector, i, &facts))
        });
        // From the incident version's part, computed once and shared.
        let shared = IncidentContext::new(incident);
        g.bench_function(BenchmarkId::new("facts", name), |b| {
            b.iter(|| prepare::template_context(connector, &shared, &facts))
        });
    }
    let sample_context = IncidentContext::new(&incidents[0].1);
    let created = facts(&incidents[0].1, connector, Event::Created);
    let mut reused = prepare::template_context(connector, &sample_context, &created);
    let updated = facts(&incidents[0].1, connector, Event::Updated);
    g.bench_function("set_facts/sample", |b| {
        b.iter(|| prepare::set_facts(&mut reused, connector, &updated))
    });
    // As an attempt gets it (prepare): the context of an incident version prepared lately,
    // with this attempt's facts.
    let sample = &incidents[0].1;
    g.bench_function("recent/sample", |b| {
        b.iter(|| {
            prepare::recent_context(connector, sample, &updated)
                .data()
                .is_object()
        })
    });
    let sample = &incidents[0].1;
    g.bench_function("preview/sample", |b| {
        b.iter(|| cli::preview_context(renderer, sample, connector, Event::Updated))
    });
    g.finish();
}

/// Every shipped template, every event, every incident: `Renderer::render` (HTTP) or
/// `render_email` (SMTP) with the context prepared beforehand.
fn bench_render(c: &mut Criterion, configs: &[(Config, Renderer)], incidents: &[(String, Value)]) {
    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Elements(1));
    for (config, renderer) in configs {
        for connector in &config.connectors {
            for event in EVENTS {
                if !connector.sends(event) {
                    continue;
                }
                for (name, incident) in incidents {
                    let facts = facts(incident, connector, event);
                    let context = prepare::template_context(
                        connector,
                        &IncidentContext::new(incident),
                        &facts,
                    );
                    let id = format!("{}/{}/{name}", connector.name, event.as_str());
                    match &connector.target {
                        Target::Http(_) => {
                            if let Err(e) = renderer.render(connector, event, &context) {
                                eprintln!("{id}: not measured, it does not render: {e}");
                                continue;
                            }
                            g.bench_function(&id, |b| {
                                b.iter(|| renderer.render(connector, event, &context))
                            });
                        }
                        Target::Smtp(_) => {
                            if let Err(e) = renderer.render_email(connector, event, &context) {
                                eprintln!("{id}: not measured, it does not render: {e}");
                                continue;
                            }
                            g.bench_function(&id, |b| {
                                b.iter(|| renderer.render_email(connector, event, &context))
                            });
                        }
                    }
                }
            }
        }
    }
    g.finish();
    // The first render of an incident version: its context built, nothing kept yet.
    let mut g = c.benchmark_group("render_first");
    g.throughput(Throughput::Elements(1));
    let sample = &incidents[0].1;
    for (config, renderer) in configs {
        for connector in &config.connectors {
            let facts = facts(sample, connector, Event::Created);
            g.bench_function(format!("{}/created/sample", connector.name), |b| {
                b.iter(|| {
                    let context = prepare::attempt_context(connector, sample, &facts);
                    match &connector.target {
                        Target::Http(_) => {
                            renderer.render(connector, Event::Created, &context).is_ok()
                        }
                        Target::Smtp(_) => renderer
                            .render_email(connector, Event::Created, &context)
                            .is_ok(),
                    }
                })
            });
        }
    }
    g.finish();
    // A whole attempt, context included (prepare: render, stamp, sign), for the sample.
    let mut g = c.benchmark_group("attempt");
    g.throughput(Throughput::Elements(1));
    let sample = &incidents[0].1;
    for (config, renderer) in configs {
        for connector in &config.connectors {
            let facts = facts(sample, connector, Event::Created);
            g.bench_function(format!("{}/created/sample", connector.name), |b| {
                b.iter(|| prepare::prepare(renderer, connector, sample, &facts, 1_767_225_600))
            });
        }
    }
    g.finish();
}

/// examples/connectors.toml with every connector's correlation key set to `key` (a temporary
/// copy beside the original, so that its relative paths resolve the same).
fn with_key(key: &str) -> (tempfile::TempPath, Config) {
    let original = std::fs::read_to_string(repo().join("examples/connectors.toml"))
        .expect("examples/connectors.toml is readable");
    let keyed = original.replace(
        "\nkind = \"http\"\n",
        &format!("\nkind = \"http\"\ncorrelation_key = {key:?}\n"),
    );
    let file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile_in(repo().join("examples"))
        .expect("a temporary config beside the example");
    std::fs::write(file.path(), keyed).expect("the temporary config is written");
    let path = file.into_temp_path();
    let (config, _) = load(&path);
    (path, config)
}

fn all(c: &mut Criterion) {
    let configs = configs();
    let incidents = incidents();
    bench_schema(c, &incidents);
    bench_route(c, &configs, &incidents[0].1);
    bench_keys(c, &configs, &incidents);
    bench_context(c, &configs, &incidents);
    bench_render(c, &configs, &incidents);
}

criterion_group! {
    name = benches;
    // Short samples: there are some 600 benchmarks, most of them microseconds long.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(700));
    targets = all
}
criterion_main!(benches);
