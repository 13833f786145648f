//! The near-cache load generator (issue 17, "Speed"): a read-heavy workload
//! that redis-benchmark cannot produce, because its keys are uniform.
//!
//! Keys follow Zipf(s) over `--keys` keys (s = 0.99 by default: the hottest
//! key takes about 7% of the reads at 1M keys) or a uniform distribution;
//! each request is a GET with probability `--get-ratio` (0.95) and a SET of a
//! `--value-size`-byte value otherwise. `--connections` connections each keep
//! `--pipeline` requests in flight (written in one write, their replies read
//! before the next batch, as redis-benchmark's `-P` does), for `--warmup`
//! seconds not measured and then `--duration` seconds measured. Its own RESP
//! client: no client library sits between the clock and the socket.
//!
//! The result is one line on stdout, `nearload key=value ...` (ops_per_sec,
//! p50_us, p99_us, ...), for scripts/bench to read. `--prefill` instead SETs
//! every key once, pipelined, and exits. `--delay-line L` instead relays
//! 127.0.0.1:L to the target with a fixed delay each way.
//!
//! Run by `cargo bench --bench nearload -- --port P ...`; without `--port`
//! (as `cargo test --all-targets` runs it, with whatever arguments) it only
//! checks its Zipf sampler and reply parser.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one reply may take before the run is declared failed: a stalled
/// target ends the run instead of hanging it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// SETs per pipelined batch when pre-filling.
const PREFILL_BATCH: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Dist {
    Zipf,
    Uniform,
}

#[derive(Parser, Debug)]
#[command(about = "Zipf/uniform GET/SET load generator for keygate's near cache")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Target port; without it only the sampler self-check runs.
    #[arg(long)]
    port: Option<u16>,
    /// AUTH arguments, space separated: "password" or "service password".
    #[arg(long)]
    auth: Option<String>,
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    #[arg(long, value_enum, default_value_t = Dist::Zipf)]
    dist: Dist,
    /// The Zipf exponent s.
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    #[arg(long, default_value_t = 0.95)]
    get_ratio: f64,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds run before measuring (fills caches, opens connections).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value = "nl:")]
    key_prefix: String,
    /// SET every key once (pipelined) and exit.
    #[arg(long)]
    prefill: bool,
    /// Echoed in the result line.
    #[arg(long, default_value = "-")]
    label: String,
    /// Instead of loading: relay 127.0.0.1:<this port> to --host:--port,
    /// holding every chunk --delay-us in each direction (a distant Redis
    /// where the kernel has no netem qdisc). Runs until killed.
    #[arg(long)]
    delay_line: Option<u16>,
    /// One-way delay of --delay-line, microseconds.
    #[arg(long, default_value_t = 500)]
    delay_us: u64,
    /// Seed of the connections' key streams. By default each run takes a
    /// new one from the clock: a run after another (the measured run after
    /// a warm-up) must not replay its keys, or a cache looks better than
    /// the workload makes it.
    #[arg(long)]
    seed: Option<u64>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `--delay-line`: a TCP relay that delays each direction by `delay`. A
/// reader thread stamps every chunk with the time it is due; a writer
/// thread sleeps until then and writes it, so chunks keep their order and
/// spacing and a pipelined stream is delayed, not throttled.
fn delay_line(host: &str, port: u16, listen: u16, delay: Duration) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", listen))
        .with_context(|| format!("binding the delay line on 127.0.0.1:{listen}"))?;
    for down in listener.incoming() {
        let down = down?;
        let up = std::net::TcpStream::connect((host, port))
            .with_context(|| format!("connecting the delay line to {host}:{port}"))?;
        down.set_nodelay(true)?;
        up.set_nodelay(true)?;
        delay_direction(down.try_clone()?, up.try_clone()?, delay);
        delay_direction(up, down, delay);
    }
    Ok(())
}

fn delay_direction(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Key index sampler: Zipf by inverse transform over a precomputed CDF
/// (8 bytes a key; exact, and a binary search is cheap next to a round trip),
/// or uniform.
enum Sampler {
    Zipf(Vec<f64>),
    Uniform(u64),
}

impl Sampler {
    fn new(dist: Dist, keys: u64, s: f64) -> Self {
        match dist {
            Dist::Uniform => Sampler::Uniform(keys),
            Dist::Zipf => {
                let mut cdf = Vec::with_capacity(keys as usize);
                let mut sum = 0.0;
                for rank in 1..=keys {
                    sum += (rank as f64).powf(-s);
                    cdf.push(sum);
                }
                for c in &mut cdf {
                    *c /= sum;
                }
                Sampler::Zipf(cdf)
            }
        }
    }

    /// A key index in `0..keys`; index 0 is the hottest under Zipf.
    fn sample(&self, rng: &mut Rng) -> u64 {
        match self {
            Sampler::Uniform(keys) => rng.next_u64() % keys,
            Sampler::Zipf(cdf) => {
                let u = rng.unit();
                let i = cdf.partition_point(|&c| c < u);
                i.min(cdf.len() - 1) as u64
            }
        }
    }
}

/// splitmix64: fast, seedable, good enough to pick keys.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn push_bulk(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

fn push_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        push_bulk(out, arg);
    }
}

fn key_name(prefix: &str, index: u64, key: &mut Vec<u8>) {
    key.clear();
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ok,
    Nil,
    Bulk,
    Error(String),
    Other,
}

/// One complete reply at the start of `buf`: its kind and length, or None
/// when more bytes are needed.
fn parse_reply(buf: &[u8]) -> anyhow::Result<Option<(Reply, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[1..end];
    let after = end + 2;
    match buf[0] {
        b'+' => Ok(Some((Reply::Ok, after))),
        b'-' => Ok(Some((
            Reply::Error(String::from_utf8_lossy(line).into_owned()),
            after,
        ))),
        b':' | b'_' => Ok(Some((Reply::Other, after))),
        b'$' => {
            let len: i64 = std::str::from_utf8(line)?.parse()?;
            if len < 0 {
                return Ok(Some((Reply::Nil, after)));
            }
            let total = after + len as usize + 2;
            Ok((buf.len() >= total).then_some((Reply::Bulk, total)))
        }
        b'*' => {
            let count: i64 = std::str::from_utf8(line)?.parse()?;
            let mut at = after;
            for _ in 0..count.max(0) {
                match parse_reply(&buf[at..])? {
                    Some((_, used)) => at += used,
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Other, at)))
        }
        other => bail!("unexpected reply type byte {other:#x}"),
    }
}

/// A client connection: writes commands, reads whole replies.
struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    start: usize,
}

impl Conn {
    async fn open(args: &Args, port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect((args.host.as_str(), port))
            .await
            .with_context(|| format!("connect to {}:{port}", args.host))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            inbuf: Vec::with_capacity(64 * 1024),
            start: 0,
        };
        if let Some(auth) = &args.auth {
            let mut cmd = Vec::new();
            let mut words: Vec<&[u8]> = vec![b"AUTH"];
            words.extend(auth.split_whitespace().map(str::as_bytes));
            push_command(&mut cmd, &words);
            conn.stream.write_all(&cmd).await?;
            match conn.read_reply().await? {
                Reply::Ok => {}
                other => bail!("AUTH refused: {other:?}"),
            }
        }
        Ok(conn)
    }

    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.inbuf[self.start..])? {
                self.start += used;
                if self.start == self.inbuf.len() {
                    self.inbuf.clear();
                    self.start = 0;
                }
                return Ok(reply);
            }
            if self.start > 0 {
                self.inbuf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .context("no reply within the reply timeout")??;
            if n == 0 {
                bail!("connection closed by the target");
            }
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[derive(Default)]
struct Stats {
    /// Replies read, the warm-up's included (what CPU time is divided by).
    all: u64,
    gets: u64,
    sets: u64,
    nils: u64,
    errors: u64,
    first_error: Option<String>,
}

struct ConnResult {
    stats: Stats,
    hist: Histogram<u64>,
}

fn new_hist() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds")
}

async fn run_conn(
    args: Arc<Args>,
    port: u16,
    sampler: Arc<Sampler>,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<ConnResult> {
    let mut conn = Conn::open(&args, port).await?;
    let mut rng = Rng(seed);
    let value = vec![b'v'; args.value_size];
    let mut out = Vec::with_capacity(args.pipeline * (args.value_size + 64));
    let mut key = Vec::new();
    let mut is_get = vec![false; args.pipeline];
    let mut stats = Stats::default();
    let mut hist = new_hist();
    loop {
        if Instant::now() >= end {
            break;
        }
        out.clear();
        for slot in is_get.iter_mut() {
            key_name(&args.key_prefix, sampler.sample(&mut rng), &mut key);
            *slot = rng.unit() < args.get_ratio;
            if *slot {
                push_command(&mut out, &[b"GET", &key]);
            } else {
                push_command(&mut out, &[b"SET", &key, &value]);
            }
        }
        let sent = Instant::now();
        conn.stream.write_all(&out).await?;
        let measured = sent >= measure_from;
        for &get in &is_get {
            let reply = conn.read_reply().await?;
            stats.all += 1;
            if !measured {
                continue;
            }
            let took = sent.elapsed().as_nanos() as u64;
            hist.saturating_record(took.max(1));
            if get {
                stats.gets += 1;
            } else {
                stats.sets += 1;
            }
            match reply {
                Reply::Nil => stats.nils += 1,
                Reply::Error(e) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert(e);
                }
                _ => {}
            }
        }
    }
    Ok(ConnResult { stats, hist })
}

async fn run(args: Arc<Args>, port: u16) -> anyhow::Result<()> {
    let sampler = Arc::new(Sampler::new(args.dist, args.keys, args.zipf_s));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let base = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5EED_0000_0000, |d| d.as_nanos() as u64)
    });
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let seed = Rng(base ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407)).next_u64();
        tasks.push(tokio::spawn(run_conn(
            args.clone(),
            port,
            sampler.clone(),
            seed,
            measure_from,
            end,
        )));
    }
    let mut total = Stats::default();
    let mut hist = new_hist();
    for task in tasks {
        let r = task.await.context("connection task")??;
        total.all += r.stats.all;
        total.gets += r.stats.gets;
        total.sets += r.stats.sets;
        total.nils += r.stats.nils;
        total.errors += r.stats.errors;
        if total.first_error.is_none() {
            total.first_error = r.stats.first_error;
        }
        hist.add(&r.hist)?;
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let ops = total.gets + total.sets;
    if let Some(e) = &total.first_error {
        eprintln!("nearload: {} error replies, the first: {e}", total.errors);
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "nearload label={} target={}:{} dist={:?} keys={} connections={} pipeline={} \
         duration_s={:.2} ops={} ops_per_sec={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} \
         gets={} sets={} get_nil={} errors={} all_ops={} seed={}",
        args.label,
        args.host,
        port,
        args.dist,
        args.keys,
        args.connections,
        args.pipeline,
        elapsed,
        ops,
        ops as f64 / elapsed,
        us(0.5),
        us(0.99),
        us(0.999),
        total.gets,
        total.sets,
        total.nils,
        total.errors,
        total.all,
        base
    );
    Ok(())
}

/// SETs keys `0..keys`, a few connections each taking a share, pipelined.
async fn prefill(args: Arc<Args>, port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    let conns = 4u64;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&args, port).await?;
            let value = vec![b'v'; args.value_size];
            let (mut out, mut key) = (Vec::new(), Vec::new());
            let mut next = c * PREFILL_BATCH;
            while next < args.keys {
                out.clear();
                let last = (next + PREFILL_BATCH).min(args.keys);
                for i in next..last {
                    key_name(&args.key_prefix, i, &mut key);
                    push_command(&mut out, &[b"SET", &key, &value]);
                }
                conn.stream.write_all(&out).await?;
                for _ in next..last {
                    if let Reply::Error(e) = conn.read_reply().await? {
                        bail!("SET refused while pre-filling: {e}");
                    }
                }
                next += conns * PREFILL_BATCH;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("prefill task")??;
    }
    println!(
        "nearload prefill keys={} value_size={} seconds={:.2}",
        args.keys,
        args.value_size,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Without a target: a Zipf(0.99) stream over 1M keys puts its hottest key
/// near the analytic share (1 / H(1M, 0.99), about 6.6%), and ranks in order.
fn self_check() -> anyhow::Result<()> {
    let sampler = Sampler::new(Dist::Zipf, 1_000_000, 0.99);
    let mut rng = Rng(1);
    let mut counts = [0u64; 4];
    let draws = 200_000;
    for _ in 0..draws {
        let i = sampler.sample(&mut rng);
        if let Some(c) = counts.get_mut(i as usize) {
            *c += 1;
        }
    }
    let top = counts[0] as f64 / draws as f64;
    let replies_ok = parse_reply(b"$3\r\nab")?.is_none()
        && parse_reply(b"$3\r\nabc\r\n+")? == Some((Reply::Bulk, 9))
        && parse_reply(b"*2\r\n$1\r\na\r\n:1\r\n")? == Some((Reply::Other, 15))
        && parse_reply(b"$-1\r\n")? == Some((Reply::Nil, 5));
    if !replies_ok {
        bail!("reply parser off");
    }
    if !((0.055..0.08).contains(&top) && counts[0] > counts[1] && counts[1] > counts[3]) {
        bail!("Zipf sampler off: top share {top:.4}, counts {counts:?}");
    }
    println!("nearload: sampler self-check ok (top key share {top:.4}); pass --port to run");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets [filter] [-- flags]` runs this binary with
    // the test harness's arguments: without a target it ignores them all.
    let asked = std::env::args()
        .skip(1)
        .any(|a| a.starts_with("--port") || a == "--help" || a == "-h");
    if !asked {
        return self_check();
    }
    let args = Args::parse();
    let Some(port) = args.port else {
        return self_check();
    };
    if let Some(listen) = args.delay_line {
        return delay_line(
            &args.host,
            port,
            listen,
            Duration::from_micros(args.delay_us),
        );
    }
    if args.keys == 0 || args.connections == 0 || args.pipeline == 0 || args.threads == 0 {
        bail!("--keys, --connections, --pipeline and --threads must be positive");
    }
    let args = Arc::new(args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    if args.prefill {
        runtime.block_on(prefill(args, port))
    } else {
        runtime.block_on(run(args, port))
    }
}
