# akidb as a container image: `docker build -t akidb .`
#
# The build stage runs the README's build through scripts/package-release.sh (cargo build --release
# --locked; build.rs fetches ONNX Runtime's official wheel from PyPI with pip), and unpacks the
# release tarball: the binary with libonnxruntime.so.1 beside it, found through its $ORIGIN rpath.
# The runtime stage is distroless (glibc, libstdc++, libgcc; no shell, no package manager), so
# nothing at run time needs a shell: probes use HTTP or `akidb health`.

FROM rust:1.92-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/package-release.sh --dist /dist \
 && mkdir -p /opt \
 && tar -xzf /dist/akidb-*.tar.gz -C /opt \
 && mv /opt/akidb-* /opt/akidb

# Debian 12 like the build stage, so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /opt/akidb /opt/akidb
# Models and akidb's graph cache live on a volume; Kubernetes mounts one there (deploy/kubernetes).
ENV HF_HOME=/models/hf \
    AKIDB_CACHE_DIR=/models/akidb \
    AKIDB_HOST=0.0.0.0 \
    AKIDB_PORT=8080
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s CMD ["/opt/akidb/akidb", "health"]
ENTRYPOINT ["/opt/akidb/akidb"]
CMD ["serve"]
