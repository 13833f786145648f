//! Criterion benchmarks of the request scanner and the reply path.
//!
//! Figures to read: `request_scan/pipeline16` per element is per 16
//! commands; `redis_protocol_decode/pipeline16` decodes the same bytes with
//! the `redis-protocol` crate for comparison. `request_rewrite/*` is the
//! per-command cost of isolation (namespace prefix) and TTL governance
//! (default TTL) on SET and GET, against `request_rewrite/*_unprefixed`,
//! what a service without a namespace pays.
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keygate::command::{self, CommandSpec};
use keygate::config::ServiceConfig;
use keygate::policy::namespace::Rewritten;
use keygate::policy::service::Service;
use keygate::protocol::reply::ReplyScanner;
use keygate::protocol::request::{Request, RequestScanner, ScanLimits};
use std::time::SystemTime;

/// Sixteen alternating SET and GET commands, as redis-benchmark -P 16 sends.
fn pipeline16() -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..8 {
        let key = format!("key:{i:012}");
        bytes.extend_from_slice(Request::from_args(&["SET", key.as_str(), "xxx"]).frame());
        bytes.extend_from_slice(Request::from_args(&["GET", key.as_str()]).frame());
    }
    bytes
}

fn request_scan(c: &mut Criterion) {
    let input = pipeline16();
    let mut group = c.benchmark_group("request_scan");
    group.throughput(Throughput::Elements(16));
    group.bench_function("pipeline16", |b| {
        let mut scanner = RequestScanner::new(ScanLimits::default());
        b.iter_batched_ref(
            || BytesMut::from(&input[..]),
            |buf| {
                let mut n = 0;
                while let Ok(Some(req)) = scanner.scan(buf) {
                    n += req.argc();
                    black_box(&req);
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("redis_protocol_decode");
    group.throughput(Throughput::Elements(16));
    group.bench_function("pipeline16", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&input[..]),
            |buf| {
                let mut n = 0;
                while let Ok(Some((frame, _, _))) =
                    redis_protocol::resp2::decode::decode_bytes_mut(buf)
                {
                    black_box(&frame);
                    n += 1;
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn prefix_args(c: &mut Criterion) {
    let set = Request::from_args(&["SET", "user:1000:session", "some-session-value"]);
    c.bench_function("prefix_args/set", |b| {
        b.iter(|| black_box(&set).prefix_args(&[1], b"svc-a:"))
    });
}

/// A service from its `[[service]]` TOML body.
fn service(toml_body: &str) -> Service {
    let config: ServiceConfig = toml::from_str(toml_body).expect("service config");
    Service::from_config(0, &config)
}

/// The request as the namespace stage forwards it.
fn isolate(service: &Service, spec: &'static CommandSpec, req: &Request) -> Request {
    match &service.namespace {
        None => req.clone(),
        Some(ns) => match ns.rewrite(spec, req, service) {
            Ok(Rewritten::Forward { request, .. }) => request,
            other => panic!("not forwarded: {other:?}"),
        },
    }
}

fn request_rewrite(c: &mut Criterion) {
    let set = Request::from_args(&["SET", "key:000000012345", "xxx"]);
    let get = Request::from_args(&["GET", "key:000000012345"]);
    let set_spec = command::lookup(&set).expect("set");
    let get_spec = command::lookup(&get).expect("get");
    let plain = service("name = \"default\"\nprefix = \"\"\nisolation = false");
    let prefixed = service("name = \"svc\"\nprefix = \"svc:\"");
    let ttl = service("name = \"svc\"\nprefix = \"svc:\"\ndefault_ttl = \"1h\"");
    let mut group = c.benchmark_group("request_rewrite");
    for (name, spec, req) in [("set", set_spec, &set), ("get", get_spec, &get)] {
        group.bench_function(format!("{name}_unprefixed"), |b| {
            b.iter(|| isolate(&plain, spec, black_box(req)))
        });
        group.bench_function(format!("{name}_prefix"), |b| {
            b.iter(|| isolate(&prefixed, spec, black_box(req)))
        });
        group.bench_function(format!("{name}_prefix_default_ttl"), |b| {
            b.iter(|| {
                let req = isolate(&ttl, spec, black_box(req));
                ttl.ttl
                    .govern(spec, &req, SystemTime::now())
                    .expect("governed")
            })
        });
    }
    group.finish();
}

fn reply_scan(c: &mut Criterion) {
    let payload = vec![b'v'; 3_400_000];
    let mut reply = format!("${}\r\n", payload.len()).into_bytes();
    reply.extend_from_slice(&payload);
    reply.extend_from_slice(b"\r\n");
    let mut group = c.benchmark_group("reply_scan");
    group.throughput(Throughput::Bytes(reply.len() as u64));
    group.bench_function("bulk_3.4MB_64KiB_reads", |b| {
        let mut scanner = ReplyScanner::new(32);
        let mut buf = BytesMut::with_capacity(reply.len());
        b.iter(|| {
            buf.clear();
            for chunk in reply.chunks(64 * 1024) {
                buf.extend_from_slice(chunk);
                if let Ok(Some((frame, kind))) = scanner.scan(&mut buf) {
                    black_box((frame.len(), kind));
                }
            }
        })
    });
    group.bench_function("bulk_3.4MB_64KiB_reads_scan_only", |b| {
        let mut scanner = ReplyScanner::new(32);
        b.iter(|| {
            let mut arrived = 0;
            while arrived < reply.len() {
                arrived = (arrived + 64 * 1024).min(reply.len());
                if let Ok(Some(found)) = scanner.next_frame(&reply[..arrived]) {
                    scanner.consume(found.end);
                    black_box(found);
                }
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    request_scan,
    prefix_args,
    request_rewrite,
    reply_scan
);
criterion_main!(benches);
