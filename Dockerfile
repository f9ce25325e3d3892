# postgame: build a release binary, then run it on a slim Debian.
#
#   docker build -t postgame .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=postgres://… -e POSTGAME_SECRET=… postgame
#
# The build needs no database: the SQL queries are checked against the committed `.sqlx/`
# data (SQLX_OFFLINE=true), and the migrations under `migrations/` are embedded in the binary.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN SQLX_OFFLINE=true cargo build --release --locked

FROM debian:bookworm-slim
# curl: for compose.yaml's health checks (GET /readyz, /healthz).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin postgame
COPY --from=builder /src/target/release/postgame /usr/local/bin/postgame
USER postgame
EXPOSE 8080
ENTRYPOINT ["postgame"]
# The default listen address is 127.0.0.1, which is unreachable from outside a container.
# On 0.0.0.0 postgame refuses to start unless POSTGAME_SECRET is set to at least 32 bytes
# (never the development secret): there is deliberately no default secret in this image.
CMD ["serve", "--listen", "0.0.0.0:8080"]
