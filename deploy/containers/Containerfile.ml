# The `ml` command-line client. Build from the repository root:
#   podman build -f deploy/containers/Containerfile.ml -t fetchml-ml .
#   podman run --rm -e FETCHML_API=https://fetchml.example.org -e FETCHML_API_KEY fetchml-ml list
# It talks HTTP and WebSocket to the api only (rustls, no OpenSSL).

FROM docker.io/library/rust:1.94-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fetchml-cli --bin ml

# Distroless with glibc and the CA bundle, as user 65532 (nonroot): the
# binary needs nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ml /usr/local/bin/ml
USER nonroot
ENTRYPOINT ["/usr/local/bin/ml"]
