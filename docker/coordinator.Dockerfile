# The coordinator: a static-enough release binary on distroless (no shell, runs as nonroot).
#   docker build -f docker/coordinator.Dockerfile -t cairn-coordinator .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cairn-coordinator \
 && cp target/release/cairn-coordinator /cairn-coordinator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cairn-coordinator /usr/local/bin/cairn-coordinator
USER 65532:65532
EXPOSE 7443 9464
ENTRYPOINT ["/usr/local/bin/cairn-coordinator"]
CMD ["--help"]
