# txengine: multi-stage build, small non-root runtime image.
# The Rust version is the one the tests run on (CI checks they match).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
# librdkafka is built from source by rdkafka-sys.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The same package, profile and features the tests and load runs build.
RUN cargo build --release --locked -p txengine \
 && cp target/release/txengine /usr/local/bin/txengine

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home txengine
COPY --from=build /usr/local/bin/txengine /usr/local/bin/txengine
USER 10001
# API on 8080; a consumer's metrics on 9100 (TXENGINE_METRICS_LISTEN).
EXPOSE 8080 9100
ENTRYPOINT ["txengine"]
CMD ["all"]
