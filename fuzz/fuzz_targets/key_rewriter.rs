//! Fuzz target: the namespace key rewriter.
//!
//! Invariants checked: for any prefix and key, `strip(prefix(k)) == k` (and
//! the same for channels); for an arbitrary request of any command or
//! subcommand of the table, `Namespace::rewrite` never panics, and every key
//! of the forwarded request, at the positions keygate found in the client's
//! request *and* at the positions the backend will find in the rewritten
//! one, starts with the prefix.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use keygate::command::keys::key_positions;
use keygate::command::{all, lookup, CommandSpec};
use keygate::config::Config;
use keygate::policy::confinement::{rule, Rule};
use keygate::policy::namespace::{Namespace, Rewritten};
use keygate::policy::service::Service;
use keygate::protocol::request::Request;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    prefix: Vec<u8>,
    key: Vec<u8>,
    /// Index into every command and subcommand of the table.
    command: u16,
    /// Arguments after the command (and subcommand) name.
    args: Vec<Vec<u8>>,
    /// Replace some arguments with a keyword the command knows.
    keyword_at: Vec<(u8, u8)>,
    allow_scripts: bool,
}

/// Every command and subcommand: (name words, spec).
fn commands() -> &'static Vec<(Vec<&'static str>, &'static CommandSpec)> {
    static COMMANDS: OnceLock<Vec<(Vec<&'static str>, &'static CommandSpec)>> = OnceLock::new();
    COMMANDS.get_or_init(|| {
        let mut out = Vec::new();
        for spec in all() {
            out.push((vec![spec.name], spec));
            for sub in spec.subcommands {
                let word = sub.name.split('|').nth(1).unwrap_or(sub.name);
                out.push((vec![spec.name, word], sub));
            }
        }
        out
    })
}

/// Words that steer key-spec searches and command parsers.
const KEYWORDS: &[&str] = &[
    "STREAMS",
    "STORE",
    "STOREDIST",
    "KEYS",
    "BY",
    "GET",
    "COUNT",
    "BLOCK",
    "DB",
    "LIMIT",
    "0",
    "1",
    "2",
    "3",
    "-1",
    "AUTH",
    "AUTH2",
    "COPY",
    "REPLACE",
    "MATCH",
    "TYPE",
    "WEIGHTS",
    "AGGREGATE",
    "LEFT",
    "RIGHT",
    "ASC",
    "DESC",
    "ALPHA",
    "__keyspace@0__:k",
    "__keyevent@0__:k",
];

/// The two services (scripts off and on) the rewrite consults.
fn services() -> &'static [Service; 2] {
    static SERVICES: OnceLock<[Service; 2]> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let service = |allow: bool| {
            let config = Config::parse(&format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\n[backend]\naddress = \"127.0.0.1:1\"\n\
                 [[service]]\nname = \"svc\"\nprefix = \"svc:\"\npassword = \"x\"\nallow_scripts = {allow}\n"
            ))
            .expect("fuzz config parses");
            Service::from_config(0, &config.services[0])
        };
        [service(false), service(true)]
    })
}

fuzz_target!(|input: Input| {
    // Round trip of the name rewrite.
    let ns = Namespace::new("svc", &input.prefix);
    assert_eq!(ns.strip(&ns.prefix(&input.key)), Some(&input.key[..]));
    assert_eq!(
        ns.strip_pattern(&ns.prefix_pattern(&input.key)),
        Some(&input.key[..])
    );
    if let Ok(channel) = ns.channel(&input.key) {
        assert_eq!(ns.strip_channel(&channel).as_deref(), Some(&input.key[..]));
    }
    if input.prefix.is_empty() {
        return; // Isolation needs a prefix; an empty one confines nothing.
    }

    // The request rewrite.
    let list = commands();
    let Some((words, _)) = list.get(usize::from(input.command) % list.len()) else {
        return;
    };
    let mut args: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    args.extend(input.args.iter().take(24).cloned());
    for &(at, word) in &input.keyword_at {
        let at = usize::from(at) % args.len();
        if at >= words.len() {
            args[at] = KEYWORDS[usize::from(word) % KEYWORDS.len()]
                .as_bytes()
                .to_vec();
        }
    }
    let req = Request::from_args(&args);
    let Ok(spec) = lookup(&req) else {
        return;
    };
    let service = &services()[usize::from(input.allow_scripts)];
    let Ok(Rewritten::Forward { request: out, .. }) = ns.rewrite(spec, &req, service) else {
        return;
    };
    let prefix = ns.prefix_bytes();
    if matches!(
        rule(spec.name),
        Rule::Keys | Rule::Sort | Rule::Copy | Rule::Script
    ) {
        // Keys where keygate found them: exactly the prefix put in front,
        // every other argument untouched.
        let positions = key_positions(spec, &req).expect("rewrite located the keys");
        assert_eq!(out.argc(), req.argc());
        for i in 0..req.argc() {
            let (Some(before), Some(after)) = (req.get(i), out.get(i)) else {
                panic!("argument {i} lost");
            };
            if positions.contains(&i) {
                assert_eq!(after, [prefix, before].concat(), "key {i} prefixed");
            } else {
                assert_eq!(after, before, "non-key {i} untouched");
            }
        }
    }
    // Keys where the backend will find them in what keygate sends.
    if let Ok(out_spec) = lookup(&out) {
        if let Ok(positions) = key_positions(out_spec, &out) {
            for i in positions {
                let key = out.get(i).unwrap_or_default();
                assert!(
                    key.starts_with(prefix),
                    "{}: key {i} of the forwarded request {:?} lacks the prefix",
                    spec.name,
                    String::from_utf8_lossy(out.frame())
                );
            }
        }
    }
});
