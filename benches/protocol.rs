//! Criterion benchmarks of the request scanner and the reply path.
//!
//! Figures to read: `request_scan/pipeline16` per element is per 16
//! commands; `redis_protocol_decode/pipeline16` decodes the same bytes with
//! the `redis-protocol` crate for comparison.
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keygate::protocol::reply::ReplyScanner;
use keygate::protocol::request::{Request, RequestScanner, ScanLimits};

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

criterion_group!(benches, request_scan, prefix_args, reply_scan);
criterion_main!(benches);
