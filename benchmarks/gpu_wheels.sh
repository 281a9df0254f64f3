#!/usr/bin/env bash
# Prepare, on a machine with PyPI, the Python 3.12 wheels that the GPU machine lacks
# (it has CUDA torch and no internet), into .whl/ (git-ignored). Then run
# benchmarks/gpu_check.sh there with .whl carried along. Ray's wheel is trimmed (jars,
# dashboard build, rllib) to keep the carried tree under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# fedloom's runtime needs that the GPU image does not hold (or holds in a version flwr refuses).
PACKAGES=(
  flwr==1.41.0 ray==2.55.1 opacus==1.6.0 tenseal==0.3.18
  "protobuf<7" "packaging<26" "rich<15" "typer<0.21"
  grpcio-health-checking pycryptodome cryptography iterators tomli tomli-w uv prompt-toolkit
  sqlalchemy alembic mako greenlet jsonschema jsonschema-specifications referencing rpds-py
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
for wheel in .whl/ray-*.whl; do
  work=$(mktemp -d)
  (cd "$work" && unzip -q "$OLDPWD/$wheel" && rm -rf ray/jars ray/dashboard/client/build ray/rllib \
     && rm "$OLDPWD/$wheel" && zip -qr "$OLDPWD/$wheel" .)
  rm -rf "$work"
done
du -sh .whl
