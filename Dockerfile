# skor in a container. Build with every sink (the default):
#   docker build -t skor .
# or pick the optional sinks:
#   docker build --build-arg FEATURES=amqp -t skor-amqp .
#   docker build --build-arg FEATURES= -t skor-webhook .
# Run with a config file:
#   docker run -v $PWD/skor.toml:/etc/skor/skor.toml -e SKOR_CONFIG=/etc/skor/skor.toml skor
# or, like the original image, with DBNAME, PGUSER, PGPASS, PGHOST, PGPORT,
# WEBHOOKURL and LOG_LEVEL and no config file.

FROM rust:1-bookworm AS build
ARG FEATURES="amqp,kafka,nats,redis,mqtt,pubsub"
# rdkafka compiles librdkafka (cmake) with TLS (libssl) and OAuth (libcurl).
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --features "${FEATURES}"

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin skor
COPY --from=build /src/target/release/skor /usr/local/bin/skor
USER 10001
# The admin endpoint, when the config has `[admin] listen = "0.0.0.0:9187"`.
EXPOSE 9187
# Exec form: skor is PID 1 and receives SIGTERM itself, then drains its queues.
ENTRYPOINT ["/usr/local/bin/skor"]
