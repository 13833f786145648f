# keygate container image.
#
#   docker build -t keygate .
#   docker run --rm -p 6380:6380 -p 9121:9121 -v "$PWD/my.toml:/etc/keygate/keygate.toml:ro" keygate
#
# Stage 1 builds the release binary; stage 2 is a slim runtime with only it.

FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, against placeholder sources, so this layer stays cached
# until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/protocol.rs \
    && cargo build --release --locked --bin keygate \
    && rm -rf src benches target/release/.fingerprint/keygate-* \
        target/release/deps/keygate-* target/release/deps/libkeygate-* target/release/keygate

# The real sources. The placeholders' fingerprints were removed above, so
# cargo rebuilds keygate whatever the copied files' timestamps are.
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin keygate \
    && cp target/release/keygate /usr/local/bin/keygate

FROM debian:bookworm-slim
RUN groupadd --system keygate \
    && useradd --system --gid keygate --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin keygate
COPY --from=builder /usr/local/bin/keygate /usr/local/bin/keygate
COPY conf/docker.toml /etc/keygate/keygate.toml
USER keygate
EXPOSE 6380 9121
# GET /health/live on the admin port with bash's /dev/tcp: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9121 && printf 'GET /health/live HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["keygate"]
CMD ["--config", "/etc/keygate/keygate.toml"]
