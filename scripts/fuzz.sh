#!/usr/bin/env bash
# Fuzzes what the services take from outside with cargo fuzz (libFuzzer):
# the site-list parsers (CSV, JSON) and the consumer's message decoder, each
# for FUZZ_SECONDS (default 60). A crash stops the run and leaves its input in
# fuzz/artifacts/TARGET/; replay it with `cargo +nightly fuzz run TARGET FILE`
# and turn it into a unit test beside the code it broke.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

seconds=${FUZZ_SECONDS:-60}
# libFuzzer's instrumentation needs a nightly compiler.
toolchain=${FUZZ_TOOLCHAIN:-nightly}
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "fuzz: needs a nightly toolchain: rustup toolchain install $toolchain" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

targets=("$@")
((${#targets[@]})) || targets=(targets_csv targets_json decode)
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  echo "fuzz: $target for ${seconds}s" >&2
  # The seeds are read, never written; new inputs go to the corpus.
  cargo +"$toolchain" fuzz run "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
done
