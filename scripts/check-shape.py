#!/usr/bin/env python3
"""The shape of the code, checked in CI (issue 10):

- no import cycle among the server's modules: an edge A -> B for every `crate::B...` path
  that module A names outside its tests (a `use`, or a path in code or docs), a module's
  own submodules aside; the arrows must go one way (handshake -> session -> broker ->
  engine, never back);
- no server file over 700 lines, counted up to its `#[cfg(test)]` module;
- no Rust file anywhere outside vendor/ and target/ over 900 lines, tests included.

Usage: check-shape.py [ROOT]. Prints what it finds; exit 1 on any violation."""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
SRC = os.path.join(ROOT, "src")
SERVER_MAX, ANY_MAX = 700, 900
SKIP_DIRS = {"vendor", "target", ".git", "node_modules"}


def module_files():
    """Module path ("broker::shard") -> file, for the library under src/ (src/bin aside)."""
    mods = {}
    for dirpath, dirs, files in os.walk(SRC):
        dirs[:] = [d for d in dirs if not (dirpath == SRC and d == "bin")]
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            parts = os.path.relpath(path, SRC)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            mods["::".join(parts)] = path
    return mods


def without_tests(text):
    return text.split("#[cfg(test)]")[0]


PATH = re.compile(r"crate::([A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)(?:::\{([^}]*)\})?")


def edges(mods):
    def owner(path):
        parts = path.split("::")
        for k in range(len(parts), 0, -1):
            m = "::".join(parts[:k])
            if m in mods:
                return m
        return None

    out = {m: set() for m in mods}
    for m, path in mods.items():
        if m == "":
            continue  # lib.rs declares every module
        text = without_tests(open(path, encoding="utf-8").read())
        for base, group in PATH.findall(text):
            targets = [base]
            if group:
                targets = [base + "::" + t.strip().split()[0] for t in group.split(",") if t.strip()]
            for t in targets:
                o = owner(t)
                # A module may use its own children; a child naming its parent is an edge.
                if o and o != m and not o.startswith(m + "::") and o != "":
                    out[m].add(o)
    return out


def cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def lines(path, tests):
    text = open(path, encoding="utf-8").read()
    return (text if tests else without_tests(text)).count("\n")


def main():
    bad = []
    mods = module_files()
    for comp in cycles(edges(mods)):
        bad.append("import cycle: " + " <-> ".join(comp))
    for m, path in sorted(mods.items()):
        n = lines(path, tests=False)
        if n > SERVER_MAX:
            bad.append(f"{os.path.relpath(path, ROOT)}: {n} lines without tests (max {SERVER_MAX})")
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                n = lines(path, tests=True)
                if n > ANY_MAX:
                    bad.append(f"{os.path.relpath(path, ROOT)}: {n} lines (max {ANY_MAX} for any Rust file)")
    for b in bad:
        print(b)
    largest = max((lines(p, tests=False), os.path.relpath(p, ROOT)) for p in mods.values())
    print(f"shape: {len(mods)} modules, {len(bad)} problems; largest server file {largest[1]} ({largest[0]} lines)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
