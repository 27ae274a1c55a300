# The participant, GPU variant: burn's wgpu backend over Vulkan. The NVIDIA container toolkit
# mounts the driver and its Vulkan ICD when NVIDIA_DRIVER_CAPABILITIES includes `graphics`
# (the chart sets it); the image brings the Vulkan loader. No shell is needed at run time.
#   docker build -f docker/participant-gpu.Dockerfile -t cairn-participant:gpu .
# A CUDA build (`--features cuda`) is possible too, but burn's cuda feature downloads a
# prebuilt LLVM while building, so it needs network access beyond the crate registry.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cairn-participant --features wgpu \
 && cp target/release/cairn-participant /cairn-participant

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvulkan1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /bin/sh /usr/bin/sh /bin/bash /usr/bin/bash
COPY --from=build /cairn-participant /usr/local/bin/cairn-participant
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cairn-participant"]
CMD ["--help"]
