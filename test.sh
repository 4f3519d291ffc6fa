#!/usr/bin/env bash
# Every test, as the README says: the examples and the conformance command a newcomer would
# run, `cargo test --workspace --release`, the C API and the integrations (each its own crate),
# then the lints. The machine's Rust toolchain and a C compiler are all it needs; it installs
# nothing. CI (`.ci/run`) runs exactly this script.
set -euo pipefail
cd "$(dirname "$0")"

for example in dynasm iced cranelift many_small tiering; do
    cargo run --release -p progpack --example "$example"
done
cargo run --release -- conformance --engine both crates/progpack-bpf/tests/conformance

cargo test --workspace --release

# The C API: its committed header is what cbindgen generates (its own crate, to keep cbindgen
# out of the workspace build); the tiny JIT example and sljit's hooks, with the system C compiler.
(cd crates/progpack-capi/header-check && cargo test --release && cargo fmt --check)
make -C examples/c run
make -C integrations/sljit check
# Integrations, each its own crate so PCRE2 and wasmtime stay out of the workspace.
(cd integrations/pcre2 && cargo test --release && cargo fmt --check)
(cd integrations/wasmtime && cargo test --release && cargo fmt --check)

# progpack-bpf's JIT exists only on x86-64: where the aarch64 target is installed, the crate
# must build for it, and with qemu-user and a cross linker its architecture gate runs there.
if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    if command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null; then
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
            cargo test --release --target aarch64-unknown-linux-gnu -p progpack-bpf --test jit_arch
    else
        cargo check --release --target aarch64-unknown-linux-gnu -p progpack-bpf
    fi
fi

# The fuzz targets run with cargo-fuzz on nightly; here they must at least compile (they share
# the reliability model with the tests, and would rot unseen otherwise).
(cd fuzz && cargo check --bins)

cargo clippy --workspace --all-targets -- -D warnings
cargo fmt --all --check
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
