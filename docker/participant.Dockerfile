# The participant, CPU variant (burn's flex backend): distroless, no shell, runs as nonroot.
#   docker build -f docker/participant.Dockerfile -t cairn-participant .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cairn-participant \
 && cp target/release/cairn-participant /cairn-participant

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cairn-participant /usr/local/bin/cairn-participant
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cairn-participant"]
CMD ["--help"]
