//! Micro-benchmarks of the pieces that decide the master's throughput, each on its own:
//! engine submit and dispatch of a batch, the results of a batch, `apply`, journal records
//! and snapshots, both ways.
//!
//! `cargo bench --bench pieces` (add `-- <filter>` for one group). Figures go to
//! `docs/benchmarks.md`.

// The criterion macros generate functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mawex::testing::pieces::{
    decode_record, decode_snapshot, encode_records, encode_snapshot, EngineBench,
};
use mawex::testing::{Event, MasterState};
use mawex::{GroupName, TaskSpec};

/// Tasks per batch: about what one core turn holds under load.
const BATCH: usize = 1_000;
/// Tasks in the state a snapshot is taken of.
const SNAPSHOT_TASKS: usize = 100_000;

fn group() -> GroupName {
    GroupName::new("bench").expect("a valid group name")
}

fn specs(n: usize) -> Vec<TaskSpec> {
    (0..n)
        .map(|_| TaskSpec::new(group(), "noop", &b"16-byte payload!"[..]))
        .collect()
}

/// The events of one busy turn: a batch submitted, dispatched, and the previous batch's
/// results recorded.
fn turn_events() -> Vec<Event> {
    let mut engine = EngineBench::new(&group(), 2, BATCH as u32);
    let mut events = engine.submit_and_dispatch(specs(BATCH)).expect("submit");
    events.extend(engine.finish_leased());
    events
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("submit_and_dispatch_1000", |b| {
        b.iter_batched(
            || (EngineBench::new(&group(), 2, BATCH as u32), specs(BATCH)),
            |(mut engine, specs)| black_box(engine.submit_and_dispatch(specs).expect("submit")),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("finish_1000", |b| {
        b.iter_batched(
            || {
                let mut engine = EngineBench::new(&group(), 2, BATCH as u32);
                engine.submit_and_dispatch(specs(BATCH)).expect("submit");
                engine
            },
            |mut engine| black_box(engine.finish_leased()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    let events = turn_events();
    let mut g = c.benchmark_group("state");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("apply_turn", |b| {
        b.iter_batched(
            MasterState::new,
            |mut state| {
                for event in &events {
                    state.apply(event);
                }
                state
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn records(c: &mut Criterion) {
    let events = turn_events();
    let records = encode_records(1, &events).expect("encode");
    let bytes: usize = records.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("records");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("encode_turn", |b| {
        b.iter(|| black_box(encode_records(1, black_box(&events)).expect("encode")))
    });
    g.bench_function("decode_turn", |b| {
        b.iter(|| {
            for record in &records {
                black_box(decode_record(1, black_box(record)).expect("decode"));
            }
        })
    });
    g.finish();
}

fn snapshots(c: &mut Criterion) {
    let mut engine = EngineBench::new(&group(), 2, 0);
    for _ in 0..SNAPSHOT_TASKS / BATCH {
        engine.submit_and_dispatch(specs(BATCH)).expect("submit");
    }
    let state = engine.state().clone();
    let snapshot = encode_snapshot(1, &state).expect("encode");
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.throughput(Throughput::Elements(SNAPSHOT_TASKS as u64));
    g.bench_function("encode_100k_pending", |b| {
        b.iter(|| black_box(encode_snapshot(1, black_box(&state)).expect("encode")))
    });
    g.bench_function("decode_100k_pending", |b| {
        b.iter(|| black_box(decode_snapshot(black_box(&snapshot)).expect("decode")))
    });
    g.finish();
}

criterion_group!(benches, engine, apply, records, snapshots);
criterion_main!(benches);
