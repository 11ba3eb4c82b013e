#!/usr/bin/env bash
# Fetches the wheels for `experiments/gpu/check.sh --wheels DIR` on a GPU machine that reaches no package
# registry but has PyTorch, Lightning, transformers, timm, peft, pandas, ... in its own python3 (this workplace's
# H200 image: .library/device/KINDS.md lists its packages): what vlmlab imports beyond those, at the versions of
# constraints.txt, for CPython 3.12 on x86-64 (the image's). About 25 MB.
#
#   experiments/gpu/wheels.sh [DIR]        # default .whl (git-ignored); run where the registry is reachable
#
# The list was found by running the dry run in an environment holding only the image's packages plus these.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.whl}
packages=(
    hydra-core omegaconf antlr4-python3-runtime                             # configs
    mlflow-skinny mlflow-tracing sqlalchemy alembic mako sqlparse           # MLflow and its sqlite store
    cachetools databricks-sdk google-auth pyasn1 pyasn1-modules gitpython gitdb smmap importlib-metadata
    opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
    pydantic pydantic-core annotated-types typing-inspection annotated-doc python-dotenv
    fastapi starlette uvicorn cryptography cffi
)
pins=()
for name in "${packages[@]}"; do
    pattern=$(echo "$name" | sed 's/[-_]/[-_]/g')
    pin=$(grep -i "^$pattern==" constraints.txt) || { echo "wheels.sh: $name is not in constraints.txt" >&2 && exit 2; }
    pins+=("$pin")
done
mkdir -p "$dir"
binary=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
for pin in "${pins[@]}"; do
    if [[ $pin == antlr4-python3-runtime* ]]; then  # Hydra's pin has no wheel on the registry: build it (pure Python)
        python3 -m pip wheel --quiet --no-deps --wheel-dir "$dir" "$pin"
    else
        python3 -m pip download --quiet --no-deps "${binary[@]}" "${platforms[@]}" --dest "$dir" "$pin"
    fi
done
du -sh "$dir"
