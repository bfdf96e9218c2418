#!/usr/bin/env python3
"""Fail when modules of src/ include each other in a circle.

A module is a source path under src/ without its extension: src/a.c and src/a.h are one
module "a", src/shared/shared_map.c is "shared/shared_map". Module A depends on module B
when a file of A has `#include "..."` naming a file of B (resolved against the including
file's folder, then src/). Includes of <...> and of files outside src/ are ignored.
Prints every cycle found (one per strongly connected component, as a path A -> B -> A)
and exits 1; prints the module count and exits 0 when there is none.

Usage: include_cycles.py [SRC_DIR]   (default: the src/ beside this script's folder)
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def modules(src):
    files = {}
    for folder, _, names in os.walk(src):
        for n in names:
            if n.endswith((".c", ".h", ".cu", ".cuh")):
                path = os.path.join(folder, n)
                rel = os.path.relpath(path, src)
                files[os.path.normpath(rel)] = os.path.splitext(rel)[0].replace(os.sep, "/")
    return files


def graph(src):
    files = modules(src)
    deps = {m: set() for m in files.values()}
    for rel, mod in files.items():
        with open(os.path.join(src, rel), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        here = os.path.dirname(rel)
        for inc in INCLUDE.findall(text):
            for cand in (os.path.normpath(os.path.join(here, inc)), os.path.normpath(inc)):
                if cand in files:
                    target = files[cand]
                    if target != mod:
                        deps[mod].add(target)
                    break
    return deps


def cycles(deps):
    """Tarjan's strongly connected components; one cycle path per component of size > 1."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        # iterative DFS to stay clear of the recursion limit
        work = [(v, iter(sorted(deps[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(deps[w]))))
                    advanced = True
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for v in sorted(deps):
        if v not in index:
            visit(v)
    return out


def path_in(comp, deps):
    """A concrete cycle through the component's first module, by breadth-first search."""
    members = set(comp)
    start = comp[0]
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(deps[v]):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp + [start]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "src")
    deps = graph(src)
    found = cycles(deps)
    if not found:
        print("include_cycles: %d modules under %s, no include cycle" % (len(deps), src))
        return 0
    for comp in found:
        print("include cycle: " + " -> ".join(path_in(comp, deps)), file=sys.stderr)
        print("  (modules in this circle: %s)" % ", ".join(comp), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
